//! Configuration sources: where the registry's objects come from.
//!
//! Two sources read the same Kubernetes objects and emit the same
//! [`registry::Change`](crate::registry::Change)s: the Kubernetes API
//! ([`kubernetes::KubeSource`], kube-rs watchers) and a local multi-document YAML
//! file ([`file::FileSource`]). This is the only module that uses kube and
//! k8s-openapi types; it converts them to the registry's own at the edge
//! ([`Resource::to_change`]), validating what Istio would reject.

mod convert;
pub mod crd;
pub mod file;
pub mod kubernetes;
mod validate;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{ResourceExt, core::PartialObjectMeta};

use crate::registry::{Change, Kind, ObjectKey};

/// Pod annotation naming the pod's network namespace in local mode (the file
/// source only: in Kubernetes a pod's author writes its annotations).
pub const NETNS_ANNOTATION: &str = "ambit.dev/netns";
/// GatewayClass of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Node label naming the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The deprecated node label naming the zone, read when [`ZONE_LABEL`] is not
/// set.
pub const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";

/// Displays an error with its sources, `: `-separated, for log lines.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// An object that cannot be used: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// Path of the field, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`.
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// What is wrong with a field; the wording follows Istio's validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is missing or empty.
    #[error("is required")]
    Required,
    /// A list entry or string that must not be empty is.
    #[error("must not be empty")]
    Empty,
    /// Not an address or CIDR.
    #[error("{0:?} is not an IP address or CIDR")]
    Cidr(String),
    /// Not an address.
    #[error("{0:?} is not an IP address")]
    Ip(String),
    /// Not a port number.
    #[error("{0:?} is not a port number (1-65535)")]
    Port(String),
    /// Not a Kubernetes label key.
    #[error("{0:?} is not a valid label key")]
    LabelKey(String),
    /// Not a Kubernetes label value.
    #[error("{0:?} is not a valid label value")]
    LabelValue(String),
    /// A wildcard in the middle of a string.
    #[error("{0:?}: `*` is only allowed alone, at the start or at the end")]
    Wildcard(String),
    /// `action: CUSTOM` without `provider`.
    #[error("action CUSTOM requires provider.name")]
    CustomWithoutProvider,
    /// `provider` with another action.
    #[error("provider is only allowed with action CUSTOM")]
    ProviderWithoutCustom,
    /// Both `selector` and `targetRef(s)`.
    #[error("only one of selector and targetRefs may be set")]
    SelectorAndTargetRefs,
    /// A `when` key Istio does not know.
    #[error("{0:?} is not a supported condition key")]
    ConditionKey(String),
    /// A `when` entry with neither `values` nor `notValues`.
    #[error("needs values or notValues")]
    NoValues,
    /// `portLevelMtls` without a workload selector.
    #[error("portLevelMtls requires a selector with matchLabels")]
    PortLevelWithoutSelector,
    /// A `targetRefs` kind policies cannot attach to.
    #[error("{0:?} is not a supported target kind (Gateway, GatewayClass, Service, ServiceEntry)")]
    TargetKind(String),
    /// A URI that is not http(s).
    #[error("{0:?} is not an http(s) URI")]
    Uri(String),
    /// Not TCP, UDP or SCTP.
    #[error("{0:?} is not a protocol (TCP, UDP, SCTP)")]
    Protocol(String),
    /// `serviceAccounts` together with `principals` or `namespaces`.
    #[error("cannot be combined with principals or namespaces")]
    ServiceAccountsExclusive,
    /// Not `<name>` or `<namespace>/<name>`.
    #[error("{0:?} is not a service account (<name> or <namespace>/<name>, no wildcards)")]
    ServiceAccount(String),
    /// A list longer than Istio allows.
    #[error("has more than {0} entries")]
    TooMany(usize),
    /// More than one address of one family.
    #[error("more than one {0} address")]
    SecondAddress(&'static str),
    /// A path template with `{*}`/`{**}` not as whole segments, or an
    /// operator after `{**}`.
    #[error(
        "{0:?} is not a path template: `{{*}}` and `{{**}}` must be whole segments, `{{**}}` the last operator"
    )]
    PathTemplate(String),
    /// An `istio.io/waypoint-for` value Istio does not know.
    #[error("{0:?} is not one of service, workload, all, none")]
    WaypointFor(String),
}

/// One Kubernetes object of a kind the sources read.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[allow(missing_docs)]
// one variant per kind
// Transient: each one is converted and dropped, so boxing would only add an
// allocation per object.
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    ServiceAccount(ServiceAccount),
    PeerAuthentication(crd::PeerAuthentication),
    RequestAuthentication(crd::RequestAuthentication),
    AuthorizationPolicy(crd::AuthorizationPolicy),
    Gateway(crd::Gateway),
    /// Metadata only: a ztunnel needs a node's zone label, not its status.
    Node(PartialObjectMeta<Node>),
}

impl Resource {
    /// The registry kind the object becomes.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Namespace(_) => Kind::Namespace,
            Self::Pod(_) => Kind::Workload,
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSet,
            Self::ServiceAccount(_) => Kind::ServiceAccount,
            Self::PeerAuthentication(_) => Kind::PeerAuthentication,
            Self::RequestAuthentication(_) => Kind::RequestAuthentication,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::Gateway(_) => Kind::Waypoint,
            Self::Node(_) => Kind::Node,
        }
    }

    /// Namespace (empty for Namespaces and Nodes; `default` when unset) and
    /// name.
    pub fn key(&self) -> ObjectKey {
        let (ns, name) = match self {
            Self::Namespace(o) => (None, o.name_any()),
            Self::Pod(o) => (o.namespace(), o.name_any()),
            Self::Service(o) => (o.namespace(), o.name_any()),
            Self::EndpointSlice(o) => (o.namespace(), o.name_any()),
            Self::ServiceAccount(o) => (o.namespace(), o.name_any()),
            Self::PeerAuthentication(o) => (o.namespace(), o.name_any()),
            Self::RequestAuthentication(o) => (o.namespace(), o.name_any()),
            Self::AuthorizationPolicy(o) => (o.namespace(), o.name_any()),
            Self::Gateway(o) => (o.namespace(), o.name_any()),
            Self::Node(o) => (None, o.name_any()),
        };
        let ns = match (self, ns) {
            (Self::Namespace(_) | Self::Node(_), _) => String::new(),
            (_, Some(ns)) => ns,
            (_, None) => "default".to_owned(),
        };
        ObjectKey::new(&ns, &name)
    }

    /// The registry change this object makes: an upsert, or a delete when the
    /// object is not one the data path uses (a finished or unscheduled pod, a
    /// Gateway of another class). Fails when Istio would reject the object,
    /// except for security policies: those are kept in a fail-closed form with
    /// their [`problems`](crate::registry::Object::problems), so that a
    /// mistake never widens access.
    pub fn to_change(&self) -> Result<Change, Invalid> {
        let key = self.key();
        if key.name.is_empty() {
            return Err(Invalid::new("metadata.name", Problem::Required));
        }
        let object = match self {
            Self::Namespace(o) => Some(convert::namespace(o, &key)?),
            Self::Pod(o) => convert::pod(o, &key)?,
            Self::Service(o) => Some(convert::service(o, key.clone())?),
            Self::EndpointSlice(o) => convert::endpoint_slice(o, key.clone())?,
            Self::ServiceAccount(_) => Some(crate::registry::Object::ServiceAccount(key.clone())),
            Self::PeerAuthentication(o) => Some(validate::peer_authentication(o, key.clone())),
            Self::RequestAuthentication(o) => {
                Some(validate::request_authentication(&o.spec, key.clone()))
            }
            Self::AuthorizationPolicy(o) => {
                Some(validate::authorization_policy(&o.spec, key.clone()))
            }
            Self::Gateway(o) => convert::gateway(o, key.clone())?,
            Self::Node(o) => Some(convert::node(o, &key)?),
        };
        Ok(object.map_or_else(|| Change::Delete(self.kind(), key), Change::Upsert))
    }
}

/// Configuration updates refused (a file that does not parse or validate, an
/// invalid Kubernetes object): the last good version stayed in force. The
/// `ambit_config_rejected_updates_total` counter.
pub fn rejected_updates() -> &'static prometheus_client::metrics::counter::Counter {
    static REJECTED: std::sync::OnceLock<prometheus_client::metrics::counter::Counter> =
        std::sync::OnceLock::new();
    REJECTED.get_or_init(Default::default)
}
