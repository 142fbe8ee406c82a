//! Workloads (pods) and namespaces as the data path sees them.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use serde::{Serialize, Serializer};

use super::{Labels, Name};

/// A Kubernetes object uid. Real uids are UUIDs and are kept in 16 bytes; any
/// other string (a hand-written local file) is kept as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uid {
    /// A UUID in its canonical text form, stored as bytes.
    Uuid([u8; 16]),
    /// Any other non-empty string.
    Other(Box<str>),
}

impl Uid {
    /// Parses `s`, keeping canonical lowercase UUIDs compact.
    pub fn new(s: &str) -> Self {
        parse_uuid(s).map_or_else(|| Self::Other(s.into()), Self::Uuid)
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex only (so that printing it
/// back gives the same string).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let bytes = s.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = bytes.iter().filter(|&&b| b != b'-');
    for byte in &mut out {
        let hi = hex_value(*digits.next()?)?;
        let lo = hex_value(*digits.next()?)?;
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(s) => f.write_str(s),
            Self::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({self})")
    }
}

impl Serialize for Uid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The addresses of a pod: at most one per family (`status.podIPs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct PodIps {
    /// The IPv4 address, if any.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 address, if any.
    pub v6: Option<Ipv6Addr>,
}

impl PodIps {
    /// Both addresses, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
    }

    /// Whether the pod has no address yet.
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

/// What only the ztunnel of the pod's own node keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPod {
    /// `metadata.uid`: what names the pod to the CNI plugin and in the
    /// enrollment state; no use for a pod of another node.
    pub uid: Uid,
    /// The pod's network namespace (`/var/run/netns/<name>`), once known: in local
    /// mode from the `ambit.dev/netns` annotation, in Kubernetes from the CNI
    /// plugin.
    pub netns: Option<PathBuf>,
}

/// A pod as the data path needs it. Pods of other nodes carry only these fields
/// (the budget is < 300 bytes each on average); pods of the own node also carry
/// [`LocalPod`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// `metadata.name`: a box, not an `Arc`, to spare the 16-byte counts
    /// per pod ([`Self::object_key`] copies it).
    pub name: Box<str>,
    /// `metadata.namespace`.
    pub namespace: Name,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: Name,
    /// `spec.nodeName`.
    pub node: Name,
    /// `status.podIPs`.
    pub ips: PodIps,
    /// `metadata.labels`.
    pub labels: Arc<Labels>,
    /// `spec.hostNetwork`: such pods share the node's addresses and are never
    /// enrolled.
    pub host_network: bool,
    /// The `Ready` condition is true.
    pub ready: bool,
    /// Present for pods of the registry's own node.
    pub local: Option<Box<LocalPod>>,
}

impl Workload {
    /// The workload's key: (namespace, pod name).
    pub fn object_key(&self) -> super::ObjectKey {
        super::ObjectKey {
            namespace: self.namespace.clone(),
            name: Arc::from(&*self.name),
        }
    }

    /// `metadata.uid`, kept for the pods of the registry's own node only.
    pub fn uid(&self) -> Option<&Uid> {
        self.local.as_ref().map(|l| &l.uid)
    }

    /// The pod's network namespace path, when known.
    pub fn netns(&self) -> Option<&PathBuf> {
        self.local.as_ref().and_then(|l| l.netns.as_ref())
    }
}

/// A namespace: its labels decide enrollment and the default waypoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: Name,
    /// `metadata.labels`.
    pub labels: Arc<Labels>,
}

/// One enrolled pod of a node, as the capture module needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPod {
    /// The pod's uid.
    pub uid: Uid,
    /// Namespace of the pod.
    pub namespace: Name,
    /// Name of the pod.
    pub name: Arc<str>,
    /// The pod's service account (its identity).
    pub service_account: Name,
    /// The network namespace to enter, when known.
    pub netns: Option<PathBuf>,
    /// The pod's addresses.
    pub ips: PodIps,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_uids_round_trip_and_stay_small() {
        let text = "3f2a9c1e-0b4d-4e6f-8a7b-112233445566";
        let uid = Uid::new(text);
        assert!(matches!(uid, Uid::Uuid(_)));
        assert_eq!(uid.to_string(), text);
        let upper = Uid::new("3F2A9C1E-0B4D-4E6F-8A7B-112233445566");
        assert!(
            matches!(upper, Uid::Other(_)),
            "uppercase would not round-trip"
        );
        assert_eq!(Uid::new("pod-a").to_string(), "pod-a");
        assert!(size_of::<Uid>() <= 24);
    }

    #[test]
    fn workload_stays_within_its_budget() {
        // The fixed part of a remote workload; names and indexes come on top.
        assert!(size_of::<Workload>() <= 80, "{}", size_of::<Workload>());
    }
}
