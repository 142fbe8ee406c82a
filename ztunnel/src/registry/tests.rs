//! Registry tests: indexes stay consistent through upserts and deletes, and
//! subscribers see enrollment changes.

use std::{net::IpAddr, sync::Arc};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Arc<Labels> {
    Arc::new(pairs.iter().copied().collect())
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Workload {
    let mut ips = PodIps::default();
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => ips.v4 = Some(v4),
        IpAddr::V6(v6) => ips.v6 = Some(v6),
    }
    Workload {
        name: name.into(),
        namespace: ns.into(),
        service_account: "default".into(),
        node: node.into(),
        ips,
        labels: labels(&[("app", name)]),
        host_network: false,
        ready: true,
        local: Some(Box::new(LocalPod {
            uid: Uid::new(&format!("{ns}-{name}")),
            netns: Some(format!("/var/run/netns/{name}").into()),
        })),
    }
}

fn namespace(name: &str, pairs: &[(&str, &str)]) -> Change {
    Change::Upsert(Object::Namespace(Namespace {
        name: name.into(),
        labels: labels(pairs),
    }))
}

fn registry() -> Registry {
    Registry::new(Options {
        node: Some("node-a".into()),
        ..Options::default()
    })
}

#[test]
fn lookups_by_ip_service_account_and_key() {
    let reg = registry();
    reg.apply([
        Change::Upsert(Object::Workload(pod("shop", "web", "node-a", "198.18.1.2"))),
        Change::Upsert(Object::Workload(pod("shop", "db", "node-b", "fd00::5"))),
    ]);
    let snap = reg.load();
    let web = snap.workload_by_ip("198.18.1.2".parse().unwrap()).unwrap();
    assert_eq!(&*web.name, "web");
    assert_eq!(web.netns().unwrap().to_str(), Some("/var/run/netns/web"));
    let db = snap.workload_by_ip("fd00::5".parse().unwrap()).unwrap();
    assert!(db.local.is_none(), "pods of other nodes are reduced");
    let sa = ObjectKey::new("shop", "default");
    assert_eq!(snap.workloads_on_node("node-b").len(), 1);
    assert!(snap.service_account_on_node(&sa, "node-b"));
    assert!(!snap.service_account_on_node(&sa, "node-c"));
    let other_namespace = ObjectKey::new("bank", "default");
    assert!(!snap.service_account_on_node(&other_namespace, "node-b"));
    let other_account = ObjectKey::new("shop", "web");
    assert!(!snap.service_account_on_node(&other_account, "node-b"));
    assert_eq!(snap.generation(), 1);
}

#[test]
fn updates_and_deletes_leave_no_stale_index_entries() {
    let reg = registry();
    reg.apply([Change::Upsert(Object::Workload(pod(
        "shop",
        "web",
        "node-a",
        "198.18.1.2",
    )))]);
    // The pod moves to a new address: the old one must be gone.
    reg.apply([Change::Upsert(Object::Workload(pod(
        "shop",
        "web",
        "node-a",
        "198.18.1.3",
    )))]);
    let snap = reg.snapshot();
    assert!(snap.workload_by_ip("198.18.1.2".parse().unwrap()).is_none());
    assert!(snap.workload_by_ip("198.18.1.3".parse().unwrap()).is_some());
    reg.apply([Change::Delete(
        Kind::Workload,
        ObjectKey::new("shop", "web"),
    )]);
    let snap = reg.snapshot();
    for (index, size) in apply::index_sizes(&snap) {
        assert_eq!(size, 0, "index {index} keeps a deleted workload");
    }
}

#[test]
fn readers_keep_their_snapshot_while_writers_move_on() {
    let reg = registry();
    reg.apply([Change::Upsert(Object::Workload(pod(
        "shop",
        "web",
        "node-a",
        "198.18.1.2",
    )))]);
    let before = reg.snapshot();
    reg.apply([Change::Delete(
        Kind::Workload,
        ObjectKey::new("shop", "web"),
    )]);
    assert!(
        before
            .workload_by_ip("198.18.1.2".parse().unwrap())
            .is_some()
    );
    assert!(
        reg.load()
            .workload_by_ip("198.18.1.2".parse().unwrap())
            .is_none()
    );
}

#[test]
fn enrollment_follows_namespace_and_pod_labels() {
    let reg = registry();
    let mut opted_out = pod("shop", "batch", "node-a", "198.18.1.4");
    opted_out.labels = labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE)]);
    let mut host = pod("shop", "agent", "node-a", "198.18.0.1");
    host.host_network = true;
    reg.apply([
        namespace("shop", &[]),
        Change::Upsert(Object::Workload(pod("shop", "web", "node-a", "198.18.1.2"))),
        Change::Upsert(Object::Workload(opted_out)),
        Change::Upsert(Object::Workload(host)),
        Change::Upsert(Object::Workload(pod("shop", "far", "node-b", "198.18.2.2"))),
    ]);
    let mut rx = reg.subscribe();
    let before = reg.snapshot();
    assert!(before.enrolled_pods("node-a").is_empty());

    reg.apply([namespace(
        "shop",
        &[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)],
    )]);
    assert!(rx.has_changed().unwrap());
    let after = rx.borrow_and_update().clone();
    let diff = EnrollmentDiff::between(&before, &after, "node-a");
    let names: Vec<_> = diff.added.iter().map(|p| &*p.name).collect();
    assert_eq!(
        names,
        ["web"],
        "only the plain pod of this node is captured"
    );
    assert_eq!(
        diff.added[0].netns.as_deref().and_then(|p| p.to_str()),
        Some("/var/run/netns/web")
    );
    assert!(diff.removed.is_empty());
    // Another node's pods are not kept in full (no uid, no namespace path).
    assert!(after.enrolled_pods("node-b").is_empty());

    reg.apply([namespace("shop", &[(DATAPLANE_MODE_LABEL, "other")])]);
    let released = EnrollmentDiff::between(&after, &rx.borrow_and_update(), "node-a");
    assert_eq!(released.removed.len(), 1);
    assert!(released.added.is_empty());
}

fn authz(ns: &str, name: &str, selector: Option<&[(&str, &str)]>) -> AuthorizationPolicy {
    AuthorizationPolicy {
        key: ObjectKey::new(ns, name),
        selector: selector.map(|s| WorkloadSelector {
            match_labels: s.iter().copied().collect(),
        }),
        target_refs: vec![],
        action: Action::Allow,
        provider: None,
        rules: vec![],
        problems: vec![],
    }
}

fn peer(ns: &str, name: &str, created: &str, selector: bool) -> PeerAuthentication {
    PeerAuthentication {
        key: ObjectKey::new(ns, name),
        created: Some(created.into()),
        selector: selector.then(|| WorkloadSelector {
            match_labels: [("app", "web")].into_iter().collect(),
        }),
        mtls: Some(MtlsMode::Strict),
        port_level_mtls: Default::default(),
        problems: vec![],
    }
}

#[test]
fn policies_are_selected_by_root_namespace_namespace_and_labels() {
    let reg = registry();
    reg.apply([
        Change::Upsert(Object::Workload(pod("shop", "web", "node-a", "198.18.1.2"))),
        Change::Upsert(Object::AuthorizationPolicy(authz(
            "istio-system",
            "mesh",
            None,
        ))),
        Change::Upsert(Object::AuthorizationPolicy(authz("shop", "ns-wide", None))),
        Change::Upsert(Object::AuthorizationPolicy(authz(
            "shop",
            "web-only",
            Some(&[("app", "web")]),
        ))),
        Change::Upsert(Object::AuthorizationPolicy(authz(
            "shop",
            "db-only",
            Some(&[("app", "db")]),
        ))),
        Change::Upsert(Object::AuthorizationPolicy(authz("bank", "other-ns", None))),
        Change::Upsert(Object::PeerAuthentication(peer(
            "istio-system",
            "mesh",
            "2024-01-01T00:00:00Z",
            false,
        ))),
        Change::Upsert(Object::PeerAuthentication(peer(
            "shop",
            "newer",
            "2024-03-01T00:00:00Z",
            true,
        ))),
        Change::Upsert(Object::PeerAuthentication(peer(
            "shop",
            "older",
            "2024-02-01T00:00:00Z",
            true,
        ))),
    ]);
    let snap = reg.snapshot();
    let web = snap.workload(&ObjectKey::new("shop", "web")).unwrap();
    let selected = snap.policies_for(web);
    let mut names: Vec<_> = selected
        .authorization
        .iter()
        .map(|p| p.key.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["istio-system/mesh", "shop/ns-wide", "shop/web-only"]
    );
    assert_eq!(selected.peer_mesh.len(), 1);
    let order: Vec<_> = selected
        .peer_workload
        .iter()
        .map(|p| &*p.key.name)
        .collect();
    assert_eq!(
        order,
        ["older", "newer"],
        "the oldest applies first, as in Istio"
    );

    reg.apply([Change::Delete(
        Kind::AuthorizationPolicy,
        ObjectKey::new("shop", "web-only"),
    )]);
    let snap = reg.snapshot();
    let web = snap.workload(&ObjectKey::new("shop", "web")).unwrap();
    assert_eq!(snap.policies_for(web).authorization.len(), 2);
}

#[test]
fn services_resolve_by_vip_and_port_and_find_their_waypoint() {
    let reg = registry();
    let svc = Service {
        key: ObjectKey::new("shop", "web"),
        vips: vec!["198.19.0.10".parse().unwrap()],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
            app_protocol: None,
        }],
        selector: Some([("app", "web")].into_iter().collect()),
        labels: labels(&[(USE_WAYPOINT_LABEL, "wp")]),
    };
    let set = EndpointSet {
        key: ObjectKey::new("shop", "web-x1"),
        service: "web".into(),
        ports: vec![EndpointPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: vec![],
    };
    let waypoint = Waypoint {
        key: ObjectKey::new("shop", "wp"),
        class: "istio-waypoint".into(),
        addresses: vec![],
        ports: vec![15008],
        traffic: WaypointFor::Service,
    };
    reg.apply([
        Change::Upsert(Object::Service(svc)),
        Change::Upsert(Object::EndpointSet(set)),
        Change::Upsert(Object::Waypoint(waypoint)),
    ]);
    let snap = reg.snapshot();
    let (service, port) = snap
        .service_port("198.19.0.10:80".parse().unwrap())
        .unwrap();
    assert_eq!(port.port, 80);
    assert!(
        snap.service_port("198.19.0.10:81".parse().unwrap())
            .is_none()
    );
    let sets = snap.endpoint_sets(&service.key);
    assert_eq!(sets[0].target_port(port), Some(8080));
    assert_eq!(&*snap.waypoint_for_service(service).unwrap().key.name, "wp");
    reg.apply([Change::Delete(Kind::Service, ObjectKey::new("shop", "web"))]);
    assert!(
        reg.load()
            .service_by_vip("198.19.0.10".parse().unwrap())
            .is_none()
    );
}

fn node(name: &str, zone: Option<&str>) -> Change {
    Change::Upsert(Object::Node(Node {
        name: name.into(),
        zone: zone.map(Name::new),
    }))
}

fn endpoint(node: Option<&str>, zone: Option<&str>) -> Endpoint {
    Endpoint {
        address: "198.18.2.2".parse().unwrap(),
        ready: true,
        serving: true,
        terminating: false,
        node: node.map(Name::new),
        zone: zone.map(Name::new),
    }
}

#[test]
fn node_zones_are_stored_replaced_and_deleted() {
    let reg = registry();
    reg.apply([node("node-a", Some("z1")), node("node-b", None)]);
    let snap = reg.snapshot();
    assert_eq!(snap.node_zone("node-a").map(Name::as_str), Some("z1"));
    assert_eq!(snap.node_zone("node-b"), None, "a node without a zone");
    assert_eq!(snap.node_zone("node-c"), None, "an unknown node");
    assert_eq!(snap.dump().nodes.len(), 2);

    reg.apply([node("node-a", Some("z2"))]);
    assert_eq!(reg.load().node_zone("node-a").map(Name::as_str), Some("z2"));
    reg.apply([Change::Delete(Kind::Node, ObjectKey::new("", "node-a"))]);
    assert_eq!(reg.load().node_zone("node-a"), None);
    assert_eq!(reg.load().dump().nodes.len(), 1);
}

#[test]
fn an_endpoint_zone_falls_back_to_its_node_zone() {
    let reg = registry();
    reg.apply([node("node-b", Some("z1")), node("node-c", None)]);
    let snap = reg.snapshot();
    let zone = |node, zone| {
        snap.endpoint_zone(&endpoint(node, zone))
            .map(|z| z.as_str().to_owned())
    };
    assert_eq!(
        zone(Some("node-b"), None).as_deref(),
        Some("z1"),
        "the node's"
    );
    assert_eq!(
        zone(Some("node-b"), Some("z9")).as_deref(),
        Some("z9"),
        "the endpoint's own zone wins"
    );
    assert_eq!(zone(Some("node-c"), None), None, "node without a zone");
    assert_eq!(zone(Some("node-x"), None), None, "unknown node");
    assert_eq!(zone(None, None), None, "no node");
}

#[test]
fn endpoint_node_and_zone_names_are_interned() {
    let reg = registry();
    let set = |name: &str| {
        Change::Upsert(Object::EndpointSet(EndpointSet {
            key: ObjectKey::new("shop", name),
            service: "web".into(),
            ports: vec![],
            endpoints: vec![endpoint(Some("node-b"), Some("z1"))],
        }))
    };
    reg.apply([set("web-1"), set("web-2"), node("node-b", Some("z1"))]);
    let snap = reg.snapshot();
    let sets = snap.endpoint_sets(&ObjectKey::new("shop", "web"));
    let [one, two] = sets else {
        panic!("two sets: {sets:?}")
    };
    let (a, b) = (&one.endpoints[0], &two.endpoints[0]);
    let ptr = |n: &Option<Name>| n.as_ref().map(|n| n.as_str().as_ptr());
    assert_eq!(ptr(&a.node), ptr(&b.node));
    assert_eq!(ptr(&a.zone), ptr(&b.zone));
    assert_eq!(
        ptr(&a.zone),
        snap.node_zone("node-b").map(|z| z.as_str().as_ptr()),
        "one copy of the zone name for endpoints and nodes"
    );
}

#[test]
fn waypoints_serve_what_their_gateway_takes_and_their_pods_are_never_captured() {
    let yaml = |waypoint_for: &str| {
        format!(
            "
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: shop{waypoint_for}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: wp-1, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: wp}}}}
spec: {{nodeName: node-a, serviceAccountName: wp, containers: [{{name: w, image: w}}]}}
status: {{podIP: 198.18.1.9}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: node-a, containers: [{{name: w, image: w}}]}}
status: {{podIP: 198.18.1.10}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 198.19.0.10, selector: {{app: web}}, ports: [{{port: 80}}]}}
"
        )
    };
    let web = ObjectKey::new("shop", "web");
    let web_1 = ObjectKey::new("shop", "web-1");
    let wp = ObjectKey::new("shop", "wp");
    for (label, service, workload) in [
        ("", true, false),
        (", labels: {istio.io/waypoint-for: service}", true, false),
        (", labels: {istio.io/waypoint-for: workload}", false, true),
        (", labels: {istio.io/waypoint-for: all}", true, true),
        (", labels: {istio.io/waypoint-for: none}", false, false),
    ] {
        let snap = crate::config::file::test_registry(&yaml(label))
            .unwrap()
            .snapshot();
        let svc = snap.service(&web).unwrap();
        let pod = snap.workload(&web_1).unwrap();
        assert_eq!(snap.waypoint_for_service(svc).is_some(), service, "{label}");
        assert_eq!(
            snap.waypoint_for_workload(pod).is_some(),
            workload,
            "{label}"
        );
        let dump = snap.dump();
        assert_eq!(
            dump.service_waypoints.get(&web) == Some(&wp),
            service,
            "{label}"
        );
        assert_eq!(
            dump.workload_waypoints.get(&web_1) == Some(&wp),
            workload,
            "{label}"
        );
        // The waypoint's pod is its instance, and never captured.
        let instances: Vec<_> = snap
            .waypoint_instances(&wp)
            .iter()
            .map(|w| &*w.name)
            .collect();
        assert_eq!(instances, ["wp-1"]);
        let enrolled: Vec<_> = snap
            .enrolled_pods("node-a")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(enrolled, [Arc::from("web-1")], "{label}");
    }
    let err = crate::config::file::parse(
        &yaml(", labels: {istio.io/waypoint-for: everything}"),
        std::path::Path::new("m.yaml"),
    )
    .unwrap_err();
    assert!(
        crate::config::ErrorChain(&err)
            .to_string()
            .contains("\"everything\" is not one of service, workload, all, none"),
        "{err}"
    );
}

#[test]
fn waypoint_policies_are_those_attached_to_its_gateway_class_or_service() {
    let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-gateway, namespace: shop}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-other-gateway, namespace: shop}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-web, namespace: shop}
spec: {targetRefs: [{kind: Service, name: web}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-class, namespace: istio-system}
spec: {targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-class-elsewhere, namespace: shop}
spec: {targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: shop}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec: {targetRefs: [{kind: Pod, name: web-1}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ns-jwt, namespace: shop}
spec: {jwtRules: [{issuer: https://issuer.example}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh-jwt, namespace: istio-system}
spec: {jwtRules: [{issuer: https://mesh.example}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: web-jwt, namespace: shop}
spec: {targetRefs: [{kind: Service, name: web}], jwtRules: [{issuer: https://web.example}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: selected-jwt, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, jwtRules: [{issuer: https://selected.example}]}
";
    let snap = crate::config::file::test_registry(yaml).unwrap().snapshot();
    let wp = snap.waypoint(&ObjectKey::new("shop", "wp")).unwrap();
    let names = |p: &WaypointPolicies| {
        let mut authz: Vec<String> = p.authorization.iter().map(|p| p.key.to_string()).collect();
        let mut authn: Vec<String> = (p.request_authentication.iter())
            .map(|p| p.key.to_string())
            .collect();
        authz.sort();
        authn.sort();
        (authz, authn)
    };
    let web = ObjectKey::new("shop", "web");
    let (authz, authn) = names(&snap.policies_for_waypoint(wp, Some(&web)));
    assert_eq!(
        authz,
        [
            "istio-system/on-class",
            "shop/broken",
            "shop/on-gateway",
            "shop/on-web"
        ]
    );
    assert_eq!(
        authn,
        ["istio-system/mesh-jwt", "shop/ns-jwt", "shop/web-jwt"]
    );
    // Another service, or a workload's own address: nothing attached to web.
    let (authz, authn) = names(&snap.policies_for_waypoint(wp, None));
    assert_eq!(
        authz,
        ["istio-system/on-class", "shop/broken", "shop/on-gateway"]
    );
    assert_eq!(authn, ["istio-system/mesh-jwt", "shop/ns-jwt"]);
}
