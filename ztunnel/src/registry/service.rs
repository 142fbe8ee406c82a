//! Services and their endpoints (EndpointSlices).

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{Labels, Name, ObjectKey};

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

/// A Service's `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per endpoint from its EndpointSlice.
    Name(Box<str>),
}

/// One entry of a Service's `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    /// `name` (required when the Service has more than one port).
    pub name: Option<Box<str>>,
    /// `port`: the port on the VIP.
    pub port: u16,
    /// `targetPort` (defaults to `port`).
    pub target_port: TargetPort,
    /// `protocol`.
    pub protocol: Protocol,
    /// `appProtocol` (`http`, `http2`, `grpc`, `kubernetes.io/h2c`, ...): what
    /// a waypoint parses the port's traffic as, before the port's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<Box<str>>,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.clusterIPs` (empty for headless Services).
    pub vips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.selector` (`None`: endpoints are managed by hand).
    pub selector: Option<Labels>,
    /// `metadata.labels` (e.g. `istio.io/use-waypoint`).
    pub labels: Arc<Labels>,
}

impl Service {
    /// The port definition for `port` on a VIP.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointPort {
    /// `name` (matches the Service port's name; empty for unnamed).
    pub name: Option<Box<str>>,
    /// `port`: the resolved target port.
    pub port: u16,
    /// `protocol`.
    pub protocol: Protocol,
}

/// An endpoint's `addresses`. Kubernetes allows up to 100 and its consumers
/// use the first; in practice there is one, kept inline: a million endpoints
/// then hold no allocation each for their address.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// None: the endpoint is never picked.
    #[default]
    None,
    /// One.
    One(IpAddr),
    /// More than one.
    Many(Box<[IpAddr]>),
}

impl Addresses {
    /// Every address, in order.
    pub fn as_slice(&self) -> &[IpAddr] {
        match self {
            Self::None => &[],
            Self::One(ip) => std::slice::from_ref(ip),
            Self::Many(ips) => ips,
        }
    }

    /// The first address: the one connections go to.
    pub fn first(&self) -> Option<&IpAddr> {
        self.as_slice().first()
    }
}

impl From<Vec<IpAddr>> for Addresses {
    fn from(ips: Vec<IpAddr>) -> Self {
        match ips.as_slice() {
            [] => Self::None,
            [ip] => Self::One(*ip),
            _ => Self::Many(ips.into_boxed_slice()),
        }
    }
}

impl FromIterator<IpAddr> for Addresses {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(ips: I) -> Self {
        Vec::from_iter(ips).into()
    }
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `addresses` (one per endpoint in practice).
    pub addresses: Addresses,
    /// `conditions.ready` (`None` in Kubernetes counts as ready).
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `targetRef` when it names a Pod: (namespace, name).
    pub pod: Option<ObjectKey>,
    /// `nodeName`.
    pub node: Option<Name>,
    /// `zone` (`None`: not given; the zone of `node`, if known, stands in, see
    /// [`Snapshot::endpoint_zone`](super::Snapshot::endpoint_zone)).
    pub zone: Option<Name>,
}

/// An EndpointSlice: endpoints of one Service and the ports they listen on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSet {
    /// Namespace and name of the slice.
    pub key: ObjectKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Arc<str>,
    /// `ports`.
    pub ports: Vec<EndpointPort>,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// The key of the Service it belongs to.
    pub fn service_key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.key.namespace.clone(),
            name: Arc::clone(&self.service),
        }
    }

    /// The port on these endpoints that serves `port` of the Service: the slice
    /// port of the same name (both unnamed for a single-port Service).
    pub fn target_port(&self, port: &ServicePort) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
            .map(|p| p.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_port_matches_by_name() {
        let set = EndpointSet {
            key: ObjectKey::new("ns", "web-abc"),
            service: "web".into(),
            ports: vec![
                EndpointPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                EndpointPort {
                    name: Some("grpc".into()),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
            endpoints: vec![],
        };
        let port = |name: &str| ServicePort {
            name: Some(name.into()),
            port: 80,
            target_port: TargetPort::Name(name.into()),
            protocol: Protocol::Tcp,
            app_protocol: None,
        };
        assert_eq!(set.target_port(&port("grpc")), Some(9090));
        assert_eq!(set.target_port(&port("admin")), None);
        assert_eq!(set.service_key(), ObjectKey::new("ns", "web"));
    }

    #[test]
    fn one_address_is_kept_inline_and_every_form_reads_back() {
        let ips: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert_eq!(Addresses::from(vec![]), Addresses::None);
        assert_eq!(Addresses::from(vec![ips[0]]), Addresses::One(ips[0]));
        let many: Addresses = ips.iter().copied().collect();
        assert_eq!(many.as_slice(), ips.as_slice());
        assert_eq!(many.first(), Some(&ips[0]));
        assert_eq!(Addresses::None.first(), None);
        assert_eq!(
            serde_json::to_string(&many).unwrap(),
            r#"["198.18.0.1","fd00::1"]"#
        );
        // No larger than the Vec it replaces.
        assert!(size_of::<Addresses>() <= size_of::<Vec<IpAddr>>());
    }
}
