//! One immutable, fully indexed view of the mesh. The data path reads it without
//! locks; the writer builds the next one and swaps it in (see `Registry`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

use super::{
    AuthorizationPolicy, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE,
    Endpoint, EndpointSet, EnrolledPod, GATEWAY_NAME_LABEL, Name, Namespace, Node, ObjectKey,
    PeerAuthentication, RequestAuthentication, Service, ServicePort, USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL, Waypoint, WaypointPolicies, Workload, WorkloadPolicies,
    policy::{TargetRef, WorkloadSelector, selects},
    sharded::{AddressTable, Addressed, IpMap, Keyed, KeyedMap, ShardedMap},
};

/// The policies of one namespace, sorted by name.
#[derive(Debug, Clone, Default)]
pub(super) struct NamespacePolicies {
    pub(super) authorization: Vec<Arc<AuthorizationPolicy>>,
    pub(super) peer: Vec<Arc<PeerAuthentication>>,
    pub(super) request: Vec<Arc<RequestAuthentication>>,
}

/// The mesh as seen by one ztunnel at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(super) generation: u64,
    pub(super) node: Option<Arc<str>>,
    pub(super) root_namespace: Arc<str>,
    pub(super) namespaces: ShardedMap<Name, Arc<Namespace>>,
    pub(super) workloads: KeyedMap<Arc<Workload>>,
    pub(super) by_ip: AddressTable<Arc<Workload>>,
    /// The pods of each node: what the CA's node authorization asks, a
    /// short list (Kubernetes allows 110 pods a node by default).
    pub(super) by_node: ShardedMap<Name, Vec<Arc<Workload>>>,
    pub(super) local: BTreeMap<ObjectKey, Arc<Workload>>,
    pub(super) services: KeyedMap<Arc<Service>>,
    pub(super) by_vip: IpMap<Arc<Service>>,
    pub(super) endpoint_sets: KeyedMap<Arc<EndpointSet>>,
    pub(super) sets_by_service: ShardedMap<ObjectKey, Vec<Arc<EndpointSet>>>,
    pub(super) service_accounts: ShardedMap<ObjectKey, ()>,
    pub(super) authorization: ShardedMap<ObjectKey, Arc<AuthorizationPolicy>>,
    pub(super) peer: ShardedMap<ObjectKey, Arc<PeerAuthentication>>,
    pub(super) request: ShardedMap<ObjectKey, Arc<RequestAuthentication>>,
    pub(super) policies_by_namespace: ShardedMap<Name, NamespacePolicies>,
    pub(super) waypoints: ShardedMap<ObjectKey, Arc<Waypoint>>,
    /// The pods of each waypoint (by the Gateway they name), whether or not
    /// the Gateway exists yet.
    pub(super) waypoint_instances: ShardedMap<ObjectKey, Vec<Arc<Workload>>>,
    pub(super) nodes: ShardedMap<Name, Node>,
}

impl Snapshot {
    /// An empty snapshot for `node` (the node whose pods are kept in full).
    pub(super) fn empty(node: Option<Arc<str>>, root_namespace: Arc<str>) -> Self {
        Self {
            generation: 0,
            node,
            root_namespace,
            namespaces: ShardedMap::default(),
            workloads: KeyedMap::default(),
            by_ip: AddressTable::default(),
            by_node: ShardedMap::default(),
            local: BTreeMap::new(),
            services: KeyedMap::default(),
            by_vip: IpMap::default(),
            endpoint_sets: KeyedMap::default(),
            sets_by_service: ShardedMap::default(),
            service_accounts: ShardedMap::default(),
            authorization: ShardedMap::default(),
            peer: ShardedMap::default(),
            request: ShardedMap::default(),
            policies_by_namespace: ShardedMap::default(),
            waypoints: ShardedMap::default(),
            waypoint_instances: ShardedMap::default(),
            nodes: ShardedMap::default(),
        }
    }

    /// Increases by one with every applied batch.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The node whose pods are kept in full, if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The root namespace (mesh-wide policies).
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    // === workloads ===

    /// The workload with address `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(ip)
    }

    /// The workload named `key` (namespace, pod name).
    pub fn workload(&self, key: &ObjectKey) -> Option<&Arc<Workload>> {
        self.workloads.get(&(&key.namespace, &key.name))
    }

    /// All workloads, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// Number of workloads.
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// The workloads on `node`.
    pub fn workloads_on_node(&self, node: &str) -> &[Arc<Workload>] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }

    /// Whether service account `key` has a pod on `node` (the CA's node
    /// authorization).
    pub fn service_account_on_node(&self, key: &ObjectKey, node: &str) -> bool {
        self.workloads_on_node(node)
            .iter()
            .any(|w| w.namespace == key.namespace && *w.service_account == *key.name)
    }

    /// Whether a ServiceAccount object `key` exists.
    pub fn has_service_account(&self, key: &ObjectKey) -> bool {
        self.service_accounts.contains_key(key)
    }

    /// The namespace `name`.
    pub fn namespace(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(name)
    }

    /// Whether `workload` is in the mesh: its namespace has
    /// `istio.io/dataplane-mode=ambient`, the pod does not opt out with
    /// `istio.io/dataplane-mode=none`, it does not use the host network, and it
    /// is not a waypoint's (a waypoint speaks HBONE itself: capturing it would
    /// send its traffic back through ztunnel, and maybe to itself).
    pub fn is_enrolled(&self, workload: &Workload) -> bool {
        if workload.host_network
            || workload.labels.get(DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_NONE)
            || workload.labels.get(GATEWAY_NAME_LABEL).is_some()
        {
            return false;
        }
        self.is_namespace_enrolled(&workload.namespace)
    }

    /// Whether the namespace `name` has `istio.io/dataplane-mode=ambient`.
    pub fn is_namespace_enrolled(&self, name: &str) -> bool {
        self.namespaces.get(name).is_some_and(|ns| is_ambient(ns))
    }

    /// The names of the enrolled namespaces, sorted.
    pub fn enrolled_namespaces(&self) -> Vec<&str> {
        let mut names: Vec<&str> = (self.namespaces.iter())
            .filter(|(_, ns)| is_ambient(ns))
            .map(|(name, _)| &**name)
            .collect();
        names.sort_unstable();
        names
    }

    /// The pod of `node` whose uid is `uid`: only the registry's own node's
    /// pods keep their uid.
    pub fn pod_by_uid(&self, node: &str, uid: &str) -> Option<&Arc<Workload>> {
        if self.node.as_deref() != Some(node) {
            return None;
        }
        (self.local.values()).find(|w| w.uid().is_some_and(|u| u.to_string() == uid))
    }

    /// The enrolled pods of the registry's own node `node`, sorted by
    /// namespace and name. Another node's pods are not kept in full (no uid,
    /// no network namespace): for any other node the list is empty.
    pub fn enrolled_pods(&self, node: &str) -> Vec<EnrolledPod> {
        if self.node.as_deref() != Some(node) {
            return Vec::new();
        }
        let to_pod = |w: &Arc<Workload>| {
            let local = w.local.as_deref()?;
            Some(EnrolledPod {
                uid: local.uid.clone(),
                namespace: w.namespace.clone(),
                name: Arc::from(&*w.name),
                service_account: w.service_account.clone(),
                netns: local.netns.clone(),
                ips: w.ips,
            })
        };
        (self.local.values())
            .filter(|w| self.is_enrolled(w))
            .filter_map(to_pod)
            .collect()
    }

    // === services ===

    /// The Service with VIP `ip`.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(ip)
    }

    /// The Service and port for a connection to `addr` (VIP and port).
    pub fn service_port(&self, addr: SocketAddr) -> Option<(&Arc<Service>, &ServicePort)> {
        let service = self.by_vip.get(addr.ip())?;
        Some((service, service.port(addr.port())?))
    }

    /// All Services, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The Service named `key`.
    pub fn service(&self, key: &ObjectKey) -> Option<&Arc<Service>> {
        self.services.get(&(&key.namespace, &key.name))
    }

    /// The endpoint sets (EndpointSlices) of Service `key`, sorted by name.
    pub fn endpoint_sets(&self, key: &ObjectKey) -> &[Arc<EndpointSet>] {
        self.sets_by_service.get(key).map_or(&[], Vec::as_slice)
    }

    /// The zone of endpoint `endpoint`: its own `zone`, else the zone of its
    /// node.
    pub fn endpoint_zone<'a>(&'a self, endpoint: &'a Endpoint) -> Option<&'a Name> {
        (endpoint.zone.as_ref()).or_else(|| self.node_zone(endpoint.node.as_deref()?))
    }

    // === nodes ===

    /// The Node object named `name` (name and zone).
    pub fn node_object(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The zone of node `name`, when a Node object says it.
    pub fn node_zone(&self, name: &str) -> Option<&Name> {
        self.node_object(name)?.zone.as_ref()
    }

    // === policies ===

    /// The policies that apply to `workload` by namespace and selector.
    pub fn policies_for(&self, workload: &Workload) -> WorkloadPolicies {
        let mut out = WorkloadPolicies::default();
        let root = &*self.root_namespace;
        let target = (&*workload.namespace, &*workload.labels);
        let mut levels = vec![root];
        if &*workload.namespace != root {
            levels.push(&workload.namespace);
        }
        for ns in levels {
            let Some(policies) = self.policies_by_namespace.get(ns) else {
                continue;
            };
            let applies = |selector: Option<&WorkloadSelector>, attached: bool| {
                selects(ns, selector, attached, target, root)
            };
            out.authorization.extend(
                (policies.authorization.iter())
                    .filter(|p| applies(p.selector.as_ref(), !p.target_refs.is_empty()))
                    .cloned(),
            );
            out.request_authentication.extend(
                (policies.request.iter())
                    .filter(|p| applies(p.selector.as_ref(), !p.target_refs.is_empty()))
                    .cloned(),
            );
            // Istio's levels: a selector without labels is no selector (the
            // namespace, or in the root namespace the mesh); a selector in the
            // root namespace is ignored.
            for pa in &policies.peer {
                let selector = pa.selector.as_ref().filter(|s| !s.match_labels.is_empty());
                match selector {
                    Some(_) if ns == root => {}
                    Some(s) if s.matches(&workload.labels) => {
                        out.peer_workload.push(Arc::clone(pa));
                    }
                    Some(_) => {}
                    None if ns == root => out.peer_mesh.push(Arc::clone(pa)),
                    None => out.peer_namespace.push(Arc::clone(pa)),
                }
            }
        }
        for level in [
            &mut out.peer_mesh,
            &mut out.peer_namespace,
            &mut out.peer_workload,
        ] {
            level.sort_by(|a, b| {
                (a.created.is_none(), &a.created, &a.key).cmp(&(
                    b.created.is_none(),
                    &b.created,
                    &b.key,
                ))
            });
        }
        out
    }

    /// The policies the waypoint `waypoint` enforces for traffic addressed to
    /// `service` (`None`: to a workload's own address), as Istio attaches
    /// them to waypoints:
    ///
    /// - `targetRefs` naming the waypoint's `Gateway` (policy in the
    ///   waypoint's namespace), its `GatewayClass` (policy in the root
    ///   namespace), or the Service (policy in the Service's namespace);
    /// - a RequestAuthentication without selector and targetRefs in the
    ///   waypoint's namespace or the root namespace (namespace- and mesh-wide
    ///   token validation);
    /// - an AuthorizationPolicy that failed validation before its scope could
    ///   be read (no selector, no targetRefs left) in one of those
    ///   namespaces: enforced fail-closed here too.
    ///
    /// Selector policies are for ztunnel (L4), never attached to a waypoint.
    pub fn policies_for_waypoint(
        &self,
        waypoint: &Waypoint,
        service: Option<&ObjectKey>,
    ) -> WaypointPolicies {
        let root = &*self.root_namespace;
        let wp_ns = &*waypoint.key.namespace;
        let attached = |ns: &str, refs: &[TargetRef]| {
            refs.iter().any(|r| match &*r.kind {
                "Gateway" => {
                    ns == wp_ns && gateway_group(&r.group) && *r.name == *waypoint.key.name
                }
                "GatewayClass" => ns == root && gateway_group(&r.group) && r.name == waypoint.class,
                "Service" => service.is_some_and(|svc| {
                    ns == &*svc.namespace && r.group.is_empty() && *r.name == *svc.name
                }),
                _ => false,
            })
        };
        let mut namespaces = vec![wp_ns, root];
        if let Some(svc) = service {
            namespaces.push(&svc.namespace);
        }
        namespaces.sort_unstable();
        namespaces.dedup();
        let mut out = WaypointPolicies::default();
        for ns in namespaces {
            let Some(policies) = self.policies_by_namespace.get(ns) else {
                continue;
            };
            let namespace_wide = ns == wp_ns || ns == root;
            out.authorization.extend(
                (policies.authorization.iter())
                    .filter(|p| {
                        attached(ns, &p.target_refs)
                            || (namespace_wide
                                && !p.problems.is_empty()
                                && p.selector.is_none()
                                && p.target_refs.is_empty())
                    })
                    .cloned(),
            );
            out.request_authentication.extend(
                (policies.request.iter())
                    .filter(|p| {
                        attached(ns, &p.target_refs)
                            || (namespace_wide && p.selector.is_none() && p.target_refs.is_empty())
                    })
                    .cloned(),
            );
        }
        out
    }

    /// How many policies of each security kind failed validation (and are
    /// enforced fail-closed): AuthorizationPolicy, PeerAuthentication,
    /// RequestAuthentication.
    pub fn invalid_policies(&self) -> [(super::Kind, usize); 3] {
        [
            (
                super::Kind::AuthorizationPolicy,
                (self.authorization.values())
                    .filter(|p| !p.problems.is_empty())
                    .count(),
            ),
            (
                super::Kind::PeerAuthentication,
                (self.peer.values())
                    .filter(|p| !p.problems.is_empty())
                    .count(),
            ),
            (
                super::Kind::RequestAuthentication,
                (self.request.values())
                    .filter(|p| !p.problems.is_empty())
                    .count(),
            ),
        ]
    }

    /// The AuthorizationPolicy named `key`.
    pub fn authorization_policy(&self, key: &ObjectKey) -> Option<&Arc<AuthorizationPolicy>> {
        self.authorization.get(key)
    }

    /// The PeerAuthentication named `key`.
    pub fn peer_authentication(&self, key: &ObjectKey) -> Option<&Arc<PeerAuthentication>> {
        self.peer.get(key)
    }

    /// The RequestAuthentication named `key`.
    pub fn request_authentication(&self, key: &ObjectKey) -> Option<&Arc<RequestAuthentication>> {
        self.request.get(key)
    }

    // === waypoints ===

    /// The waypoint named `key`.
    pub fn waypoint(&self, key: &ObjectKey) -> Option<&Arc<Waypoint>> {
        self.waypoints.get(key)
    }

    /// The waypoint that takes traffic addressed to `workload` (its pod IP):
    /// named by the pod's own `istio.io/use-waypoint` label, else its
    /// namespace's (`none` opts out), and taking workload traffic
    /// (`istio.io/waypoint-for: workload` or `all`).
    pub fn waypoint_for_workload(&self, workload: &Workload) -> Option<&Arc<Waypoint>> {
        self.waypoint_by_labels(&workload.namespace, &workload.labels)
            .filter(|w| w.traffic.workloads())
    }

    /// The waypoint that takes traffic addressed to `service` (its VIP): named
    /// by the Service's own `istio.io/use-waypoint` label, else its
    /// namespace's (`none` opts out), and taking service traffic (the
    /// default, or `all`).
    pub fn waypoint_for_service(&self, service: &Service) -> Option<&Arc<Waypoint>> {
        self.waypoint_by_labels(&service.key.namespace, &service.labels)
            .filter(|w| w.traffic.services())
    }

    /// The pods of the waypoint `key` (labelled with its Gateway's name), in no
    /// particular order.
    pub fn waypoint_instances(&self, key: &ObjectKey) -> &[Arc<Workload>] {
        self.waypoint_instances.get(key).map_or(&[], Vec::as_slice)
    }

    fn waypoint_by_labels(
        &self,
        namespace: &Name,
        labels: &super::Labels,
    ) -> Option<&Arc<Waypoint>> {
        let ns_labels = self.namespaces.get(namespace).map(|ns| &*ns.labels);
        let (name, waypoint_ns) = match labels.get(USE_WAYPOINT_LABEL) {
            Some(name) => (name, labels.get(USE_WAYPOINT_NAMESPACE_LABEL)),
            None => {
                let ns_labels = ns_labels?;
                (
                    ns_labels.get(USE_WAYPOINT_LABEL)?,
                    ns_labels.get(USE_WAYPOINT_NAMESPACE_LABEL),
                )
            }
        };
        if name == DATAPLANE_MODE_NONE {
            return None;
        }
        let key = ObjectKey::new(waypoint_ns.unwrap_or(namespace), name);
        self.waypoints.get(&key)
    }

    /// Every object, sorted: for `/config_dump` and for comparing registries.
    pub fn dump(&self) -> Dump {
        fn sorted<V: Clone>(map: &ShardedMap<ObjectKey, V>) -> BTreeMap<ObjectKey, V> {
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Dump {
            namespaces: (self.namespaces.iter())
                .map(|(k, v)| (k.to_string(), Arc::clone(v)))
                .collect(),
            workloads: (self.workloads.values())
                .map(|w| (w.object_key(), Arc::clone(w)))
                .collect(),
            services: (self.services.values())
                .map(|s| (s.key.clone(), Arc::clone(s)))
                .collect(),
            endpoint_sets: (self.endpoint_sets.values())
                .map(|s| (s.key.clone(), Arc::clone(s)))
                .collect(),
            service_accounts: self
                .service_accounts
                .iter()
                .map(|(k, ())| k.clone())
                .collect(),
            authorization_policies: sorted(&self.authorization),
            peer_authentications: sorted(&self.peer),
            request_authentications: sorted(&self.request),
            waypoints: sorted(&self.waypoints),
            nodes: (self.nodes.iter())
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            service_waypoints: (self.services.values())
                .filter_map(|s| Some((s.key.clone(), self.waypoint_for_service(s)?.key.clone())))
                .collect(),
            workload_waypoints: (self.workloads.values())
                .filter_map(|w| Some((w.object_key(), self.waypoint_for_workload(w)?.key.clone())))
                .collect(),
        }
    }
}

/// Whether `ns` has `istio.io/dataplane-mode=ambient`.
fn is_ambient(ns: &Namespace) -> bool {
    ns.labels.get(DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_AMBIENT)
}

/// Every object of a snapshot, sorted by key; equal dumps mean equal registries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // one field per kind
pub struct Dump {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub workloads: BTreeMap<ObjectKey, Arc<Workload>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_sets: BTreeMap<ObjectKey, Arc<EndpointSet>>,
    pub service_accounts: std::collections::BTreeSet<ObjectKey>,
    pub authorization_policies: BTreeMap<ObjectKey, Arc<AuthorizationPolicy>>,
    pub peer_authentications: BTreeMap<ObjectKey, Arc<PeerAuthentication>>,
    pub request_authentications: BTreeMap<ObjectKey, Arc<RequestAuthentication>>,
    pub waypoints: BTreeMap<ObjectKey, Arc<Waypoint>>,
    pub nodes: BTreeMap<String, Node>,
    /// The waypoint each Service's traffic goes through, when it uses one.
    pub service_waypoints: BTreeMap<ObjectKey, ObjectKey>,
    /// The waypoint each workload's (pod-IP) traffic goes through.
    pub workload_waypoints: BTreeMap<ObjectKey, ObjectKey>,
}

/// Whether a targetRef group names the Gateway API (empty is accepted too,
/// as Istio does for its own kinds).
fn gateway_group(group: &str) -> bool {
    group.is_empty() || group == "gateway.networking.k8s.io"
}

impl Keyed for Arc<Workload> {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl Keyed for Arc<Service> {
    fn key(&self) -> (&str, &str) {
        (&self.key.namespace, &self.key.name)
    }
}

impl Keyed for Arc<EndpointSet> {
    fn key(&self) -> (&str, &str) {
        (&self.key.namespace, &self.key.name)
    }
}

/// A host-network pod has the node's addresses: they do not name it.
impl Addressed<std::net::Ipv4Addr> for Arc<Workload> {
    fn address(&self) -> Option<std::net::Ipv4Addr> {
        self.ips.v4.filter(|_| !self.host_network)
    }
}

impl Addressed<std::net::Ipv6Addr> for Arc<Workload> {
    fn address(&self) -> Option<std::net::Ipv6Addr> {
        self.ips.v6.filter(|_| !self.host_network)
    }
}
