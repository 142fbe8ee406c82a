//! The workload registry: namespaces, workloads (pods), services and their
//! endpoints, security policies, waypoints and the zones of nodes, indexed for the data path's
//! lookups (by pod IP, by service VIP and port, by service account, policies by
//! namespace and selector).
//!
//! Pure data, no Kubernetes types: the sources in `config` convert at the edge and
//! feed [`Change`]s here. Readers never wait for writers: each applied batch builds
//! a new [`Snapshot`] that is swapped in atomically ([`Registry::load`] is a few
//! atomic operations), and subscribers learn of every new snapshot through
//! [`Registry::subscribe`].

mod apply;
mod labels;
mod node;
pub mod policy;
mod service;
mod sharded;
mod snapshot;
mod workload;

use std::{fmt, sync::Arc};

use arc_swap::{ArcSwap, Guard};
use serde::{Serialize, Serializer};
use tokio::sync::watch;

pub(crate) use labels::Interner;
pub use labels::{Labels, Name};
pub use node::Node;
pub use policy::{
    Action, AuthorizationPolicy, Cidr, MtlsMode, PeerAuthentication, RequestAuthentication,
    Waypoint, WaypointFor, WaypointPolicies, WorkloadPolicies, WorkloadSelector,
};
pub use service::{
    Endpoint, EndpointPort, EndpointSet, Protocol, Service, ServicePort, TargetPort,
};
pub use snapshot::{Dump, Snapshot};
pub use workload::{EnrolledPod, LocalPod, Namespace, PodIps, Uid, Workload};

/// Label that enrolls a namespace (`ambient`) or opts a pod out (`none`).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// [`DATAPLANE_MODE_LABEL`] value that enrolls a namespace.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// [`DATAPLANE_MODE_LABEL`] (and [`USE_WAYPOINT_LABEL`]) value that opts out.
pub const DATAPLANE_MODE_NONE: &str = "none";
/// Label on a namespace, service or pod naming its waypoint (`none`: no waypoint).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label naming the namespace of the waypoint named by [`USE_WAYPOINT_LABEL`].
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint's Gateway saying which traffic it takes (`service`,
/// `workload`, `all`, `none`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// Label on a waypoint's pods naming its Gateway (in the pod's namespace).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Namespace and name of an object (namespace empty for cluster-scoped kinds).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// `metadata.namespace`.
    pub namespace: Name,
    /// `metadata.name`.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The kinds of object the registry stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[non_exhaustive]
pub enum Kind {
    /// `v1` Namespace.
    Namespace,
    /// `v1` Pod.
    Workload,
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSet,
    /// `v1` ServiceAccount.
    ServiceAccount,
    /// `security.istio.io/v1` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io/v1` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io/v1` RequestAuthentication.
    RequestAuthentication,
    /// `gateway.networking.k8s.io/v1` Gateway of class `istio-waypoint`.
    Waypoint,
    /// `v1` Node (its zone only).
    Node,
}

impl Kind {
    /// The Kubernetes kind a user writes (`Pod`, not `Workload`).
    pub fn kubernetes_kind(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Workload => "Pod",
            Self::Service => "Service",
            Self::EndpointSet => "EndpointSlice",
            Self::ServiceAccount => "ServiceAccount",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::Waypoint => "Gateway",
            Self::Node => "Node",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kubernetes_kind())
    }
}

/// One object, converted and validated by a source.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(missing_docs)] // one variant per kind
pub enum Object {
    Namespace(Namespace),
    Workload(Workload),
    Service(Service),
    EndpointSet(EndpointSet),
    ServiceAccount(ObjectKey),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    Waypoint(Waypoint),
    Node(Node),
}

impl Object {
    /// The kind of the object.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Namespace(_) => Kind::Namespace,
            Self::Workload(_) => Kind::Workload,
            Self::Service(_) => Kind::Service,
            Self::EndpointSet(_) => Kind::EndpointSet,
            Self::ServiceAccount(_) => Kind::ServiceAccount,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::PeerAuthentication(_) => Kind::PeerAuthentication,
            Self::RequestAuthentication(_) => Kind::RequestAuthentication,
            Self::Waypoint(_) => Kind::Waypoint,
            Self::Node(_) => Kind::Node,
        }
    }

    /// Why a policy failed validation (it is kept in a fail-closed form);
    /// empty for valid policies and for every other kind.
    pub fn problems(&self) -> &[Box<str>] {
        match self {
            Self::AuthorizationPolicy(p) => &p.problems,
            Self::PeerAuthentication(p) => &p.problems,
            Self::RequestAuthentication(p) => &p.problems,
            _ => &[],
        }
    }

    /// Namespace and name.
    pub fn key(&self) -> ObjectKey {
        match self {
            Self::Namespace(ns) => ObjectKey {
                namespace: "".into(),
                name: Arc::from(&*ns.name),
            },
            Self::Workload(w) => w.object_key(),
            Self::Service(s) => s.key.clone(),
            Self::EndpointSet(s) => s.key.clone(),
            Self::ServiceAccount(k) => k.clone(),
            Self::AuthorizationPolicy(p) => p.key.clone(),
            Self::PeerAuthentication(p) => p.key.clone(),
            Self::RequestAuthentication(p) => p.key.clone(),
            Self::Waypoint(w) => w.key.clone(),
            Self::Node(n) => ObjectKey {
                namespace: "".into(),
                name: Arc::from(&*n.name),
            },
        }
    }
}

/// One update event; sources emit the same events whatever they read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Add or replace the object with this kind and key.
    Upsert(Object),
    /// Remove the object with this kind and key (no-op when absent).
    Delete(Kind, ObjectKey),
}

/// How a registry is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The node whose pods are kept in full (netns path); `None` keeps none.
    pub node: Option<String>,
    /// The root namespace of the mesh (mesh-wide policies).
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node: None,
            root_namespace: crate::settings::ROOT_NAMESPACE_DEFAULT.to_owned(),
        }
    }
}

/// The writer's state: only one batch is applied at a time.
#[derive(Debug, Default)]
struct Writer {
    interner: Interner,
    /// Snapshots replaced but maybe still read: the writer frees them once it is
    /// their last holder, so a data-path reader never pays for freeing one.
    retired: Vec<Arc<Snapshot>>,
}

/// The registry handle: cheap to share (`Arc<Registry>`), lock-free to read.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    writer: std::sync::Mutex<Writer>,
    notify: watch::Sender<Arc<Snapshot>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(options: Options) -> Self {
        let empty = Arc::new(Snapshot::empty(
            options.node.map(Arc::from),
            Arc::from(options.root_namespace),
        ));
        Self {
            current: ArcSwap::new(Arc::clone(&empty)),
            writer: std::sync::Mutex::default(),
            notify: watch::Sender::new(empty),
        }
    }

    /// The current snapshot, for a short lookup (no reference count touched).
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot, to keep.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver that sees every new snapshot (the latest one when it lags).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.notify.subscribe()
    }

    /// Applies `changes` as one batch: readers see all of it or none of it.
    /// Returns the new generation.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        // A poisoned lock only means a panic mid-batch in another thread; that
        // batch was never published, so the state behind it is still consistent.
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.current.load());
        for change in changes {
            next.apply(change, &mut writer.interner);
        }
        next.generation += 1;
        let generation = next.generation;
        let next = Arc::new(next);
        let old = self.current.swap(Arc::clone(&next));
        writer.retired.retain(|s| Arc::strong_count(s) > 1);
        writer.retired.push(old);
        writer.interner.maybe_purge();
        drop(writer);
        self.notify.send_replace(next);
        generation
    }
}

/// How the enrolled pods of a node changed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollmentDiff {
    /// Newly enrolled pods, or pods whose netns or addresses changed.
    pub added: Vec<EnrolledPod>,
    /// Pods no longer enrolled, or the previous state of changed ones.
    pub removed: Vec<EnrolledPod>,
}

impl EnrollmentDiff {
    /// The difference in enrolled pods of `node` from `old` to `new`.
    pub fn between(old: &Snapshot, new: &Snapshot, node: &str) -> Self {
        let before = old.enrolled_pods(node);
        let after = new.enrolled_pods(node);
        Self {
            added: after
                .iter()
                .filter(|p| !before.contains(p))
                .cloned()
                .collect(),
            removed: before.into_iter().filter(|p| !after.contains(p)).collect(),
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests;
