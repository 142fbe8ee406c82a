//! Security policies as validated plain data, mirroring Istio's
//! `security.istio.io/v1` fields. The policy engine compiles and evaluates them;
//! here they are only stored and selected.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr, sync::Arc};

use serde::{Serialize, Serializer};

use super::{Labels, ObjectKey};

/// `selector.matchLabels` of a policy: the workloads it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadSelector {
    /// `matchLabels`.
    pub match_labels: Labels,
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        labels.contains_all(&self.match_labels)
    }
}

/// `targetRefs[]`: a Gateway, Service or ServiceEntry the policy is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetRef {
    /// `group` (empty for core).
    pub group: Box<str>,
    /// `kind`.
    pub kind: Box<str>,
    /// `name`.
    pub name: Box<str>,
}

/// An address range: `ipBlocks` entries (`10.0.0.0/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// A string that is not an address or CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR")]
pub struct CidrError(pub String);

impl Cidr {
    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(ip.to_bits()), self.prefix_len, 32) == u128::from(net.to_bits())
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(ip.to_bits(), self.prefix_len, 128) == net.to_bits()
            }
            _ => false,
        }
    }
}

/// Clears all but the first `prefix` of `width` bits.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u128::MAX << (128 - u32::from(prefix));
    ((bits << (128 - u32::from(width))) & keep) >> (128 - u32::from(width))
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => width,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or_else(err)?,
            Some(_) => return Err(err()),
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let bits = mask(u128::from(a.to_bits()), prefix_len, 32);
                IpAddr::V4(u32::try_from(bits).expect("masked to 32 bits").into())
            }
            IpAddr::V6(a) => IpAddr::V6(mask(a.to_bits(), prefix_len, 128).into()),
        };
        Ok(Self { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `action` of an AuthorizationPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching requests (the default).
    Allow,
    /// Deny matching requests.
    Deny,
    /// Log matching requests only.
    Audit,
    /// Delegate to an extension provider (`provider.name`).
    Custom,
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // the fields are Istio's, one to one
pub struct Source {
    /// The source failed validation (its policy's `problems` say why): it is
    /// enforced fail-closed, as a source that cannot be evaluated.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    pub principals: Vec<Box<str>>,
    pub not_principals: Vec<Box<str>>,
    pub request_principals: Vec<Box<str>>,
    pub not_request_principals: Vec<Box<str>>,
    pub namespaces: Vec<Box<str>>,
    pub not_namespaces: Vec<Box<str>>,
    /// `serviceAccounts` as `<namespace>/<name>` (a bare `<name>` is resolved to
    /// the policy's namespace when validated).
    pub service_accounts: Vec<Box<str>>,
    /// `notServiceAccounts`, resolved like `service_accounts`.
    pub not_service_accounts: Vec<Box<str>>,
    pub ip_blocks: Vec<Cidr>,
    pub not_ip_blocks: Vec<Cidr>,
    pub remote_ip_blocks: Vec<Cidr>,
    pub not_remote_ip_blocks: Vec<Cidr>,
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // the fields are Istio's, one to one
pub struct Operation {
    /// The operation failed validation: enforced fail-closed, like
    /// [`Source::invalid`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    pub hosts: Vec<Box<str>>,
    pub not_hosts: Vec<Box<str>>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<Box<str>>,
    pub not_methods: Vec<Box<str>>,
    pub paths: Vec<Box<str>>,
    pub not_paths: Vec<Box<str>>,
}

/// `rules[].when[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// `key`, e.g. `source.ip` or `request.auth.claims[iss]`.
    pub key: Box<str>,
    /// `values`.
    pub values: Vec<Box<str>>,
    /// `notValues`.
    pub not_values: Vec<Box<str>>,
    /// The condition failed validation: enforced fail-closed, like
    /// [`Source::invalid`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
}

/// One entry of `rules`: all present parts must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `from[].source`: any entry may match.
    pub from: Vec<Source>,
    /// `to[].operation`: any entry may match.
    pub to: Vec<Operation>,
    /// `when`: all conditions must match.
    pub when: Vec<Condition>,
}

/// An `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizationPolicy {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `selector` (`None`: every workload of the namespace, or of the mesh in the
    /// root namespace).
    pub selector: Option<WorkloadSelector>,
    /// `targetRefs` (exclusive with `selector`).
    pub target_refs: Vec<TargetRef>,
    /// `action`.
    pub action: Action,
    /// `provider.name` (only with `action: CUSTOM`).
    pub provider: Option<Box<str>>,
    /// `rules` (empty: an ALLOW policy matches nothing, so it denies all).
    pub rules: Vec<Rule>,
    /// Why the policy failed validation, one `field: problem` each; empty
    /// for a valid policy. An invalid policy is kept fail-closed rather than
    /// dropped (see `docs/policy.md`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Box<str>>,
}

/// `mtls.mode` of a PeerAuthentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent level.
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

/// A `PeerAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerAuthentication {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.creationTimestamp`: when several apply at one level, Istio uses
    /// the oldest.
    pub created: Option<Box<str>>,
    /// `selector`.
    pub selector: Option<WorkloadSelector>,
    /// `mtls.mode` (`None` when `mtls` is absent, same as UNSET).
    pub mtls: Option<MtlsMode>,
    /// `portLevelMtls` (requires a selector).
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
    /// Why the policy failed validation; an invalid PeerAuthentication is
    /// enforced as STRICT for every port of its scope.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Box<str>>,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtHeader {
    /// `name`.
    pub name: Box<str>,
    /// `prefix`, e.g. `Bearer `.
    pub prefix: Option<Box<str>>,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimToHeader {
    /// `header`.
    pub header: Box<str>,
    /// `claim`.
    pub claim: Box<str>,
}

/// One entry of `jwtRules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // the fields are Istio's, one to one
pub struct JwtRule {
    pub issuer: Box<str>,
    pub audiences: Vec<Box<str>>,
    pub jwks_uri: Option<Box<str>>,
    pub jwks: Option<Box<str>>,
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<Box<str>>,
    pub from_cookies: Vec<Box<str>>,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<Box<str>>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A `RequestAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestAuthentication {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `selector`.
    pub selector: Option<WorkloadSelector>,
    /// `targetRefs`.
    pub target_refs: Vec<TargetRef>,
    /// `jwtRules` (those that passed validation).
    pub jwt_rules: Vec<JwtRule>,
    /// Why the policy failed validation. A waypoint refuses every request
    /// carrying a token to a workload that such a policy selects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Box<str>>,
}

/// Which traffic a waypoint takes (`istio.io/waypoint-for` on its Gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaypointFor {
    /// Traffic addressed to a Service (its VIP): the default.
    #[default]
    Service,
    /// Traffic addressed to a workload (a pod IP).
    Workload,
    /// Both.
    All,
    /// Neither (declared, not used).
    None,
}

impl WaypointFor {
    /// Whether the waypoint takes traffic addressed to a Service.
    pub fn services(self) -> bool {
        matches!(self, Self::Service | Self::All)
    }

    /// Whether the waypoint takes traffic addressed to a workload.
    pub fn workloads(self) -> bool {
        matches!(self, Self::Workload | Self::All)
    }
}

/// A waypoint: a Gateway API `Gateway` of class `istio-waypoint`. Its
/// instances are the pods of its namespace labelled
/// `gateway.networking.k8s.io/gateway-name: <name>` (what Istio's waypoint
/// Deployment carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.gatewayClassName`.
    pub class: Box<str>,
    /// IP addresses from `spec.addresses` and `status.addresses`.
    pub addresses: Vec<IpAddr>,
    /// `spec.listeners[].port`.
    pub ports: Vec<u16>,
    /// `istio.io/waypoint-for`.
    pub traffic: WaypointFor,
}

/// Whether a policy with `selector` and `target_refs` in namespace `policy_ns`
/// applies to a workload in `workload_ns` with `labels`: root-namespace policies
/// apply mesh-wide, others to their own namespace; policies attached with
/// `targetRefs` apply to what they name, never by workload.
pub(crate) fn selects(
    policy_ns: &str,
    selector: Option<&WorkloadSelector>,
    has_target_refs: bool,
    workload: (&str, &Labels),
    root_namespace: &str,
) -> bool {
    if has_target_refs || (policy_ns != root_namespace && policy_ns != workload.0) {
        return false;
    }
    selector.is_none_or(|s| s.matches(workload.1))
}

/// Policies a waypoint enforces for one destination.
#[derive(Debug, Clone, Default)]
pub struct WaypointPolicies {
    /// AuthorizationPolicies (any order; the engine orders them).
    pub authorization: Vec<Arc<AuthorizationPolicy>>,
    /// RequestAuthentications.
    pub request_authentication: Vec<Arc<RequestAuthentication>>,
}

/// Policies that apply to one workload, split by level for PeerAuthentication.
#[derive(Debug, Clone, Default)]
pub struct WorkloadPolicies {
    /// AuthorizationPolicies (any order; the engine orders by action).
    pub authorization: Vec<Arc<AuthorizationPolicy>>,
    /// RequestAuthentications.
    pub request_authentication: Vec<Arc<RequestAuthentication>>,
    /// PeerAuthentication of the mesh (root namespace, no selector or one
    /// without labels), oldest first.
    pub peer_mesh: Vec<Arc<PeerAuthentication>>,
    /// PeerAuthentication of the workload's namespace, no selector or one
    /// without labels, oldest first.
    pub peer_namespace: Vec<Arc<PeerAuthentication>>,
    /// PeerAuthentication selecting the workload by labels (never one of the
    /// root namespace, which Istio ignores), oldest first.
    pub peer_workload: Vec<Arc<PeerAuthentication>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalize_and_match() {
        let net: Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert!(net.contains("10.1.200.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        let v6: Cidr = "fd00::1/8".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00::/8");
        assert!(v6.contains("fdff::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/",
            "abc",
            "::/129",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_by_namespace_selector_and_target_refs() {
        let labels: Labels = [("app", "web")].into_iter().collect();
        let sel = WorkloadSelector {
            match_labels: [("app", "web")].into_iter().collect(),
        };
        let other = WorkloadSelector {
            match_labels: [("app", "db")].into_iter().collect(),
        };
        let w = ("shop", &labels);
        assert!(selects("shop", None, false, w, "istio-system"));
        assert!(selects(
            "istio-system",
            Some(&sel),
            false,
            w,
            "istio-system"
        ));
        assert!(!selects("shop", Some(&other), false, w, "istio-system"));
        assert!(!selects("bank", None, false, w, "istio-system"));
        assert!(!selects("shop", None, true, w, "istio-system"));
    }
}
