//! Endpoint selection for Service VIPs: tiers (same node, same zone, the
//! rest), zone fallback from endpoint to node, round robin within a tier, and
//! readiness.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use test_case::test_case;

use super::*;
use crate::registry::{
    Change, EndpointPort, Labels, Name, Node, Object, Options, Protocol, Registry, Service,
    ServicePort,
};

/// One endpoint of the test service: its node, its own `zone`, readiness.
type Ep = (&'static str, Option<&'static str>, bool);

const READY: bool = true;
const NOT_READY: bool = false;

/// Service shop/web (198.19.0.10:80 to the port named http) with `endpoints`
/// (198.18.0.1, .2, ...); nodes a and b in zone z1, c in z2, d without a zone;
/// x has no Node object.
fn snapshot(endpoints: &[Ep]) -> Arc<Snapshot> {
    let registry = Registry::new(Options::default());
    let node = |name: &str, zone: Option<&str>| {
        Change::Upsert(Object::Node(Node {
            name: name.into(),
            zone: zone.map(Name::new),
        }))
    };
    let set = EndpointSet {
        key: ObjectKey::new("shop", "web-1"),
        service: "web".into(),
        ports: vec![EndpointPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: (endpoints.iter().enumerate())
            .map(|(i, &(node, zone, ready))| Endpoint {
                address: address(i),
                ready,
                serving: ready,
                terminating: false,
                node: Some(node.into()),
                zone: zone.map(Name::new),
            })
            .collect(),
    };
    let service = Service {
        key: ObjectKey::new("shop", "web"),
        vips: vec!["198.19.0.10".parse().unwrap()],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
            app_protocol: None,
        }],
        selector: None,
        labels: Arc::new(Labels::empty()),
    };
    registry.apply([
        Change::Upsert(Object::Service(service)),
        node("a", Some("z1")),
        node("b", Some("z1")),
        node("c", Some("z2")),
        node("d", None),
        Change::Upsert(Object::EndpointSet(set)),
    ]);
    registry.snapshot()
}

fn address(i: usize) -> IpAddr {
    IpAddr::from([198, 18, 0, u8::try_from(i + 1).unwrap()])
}

/// How often each endpoint (by index) is picked in `count` picks for a client
/// on node `client`.
fn picks(client: &str, endpoints: &[Ep], count: usize) -> BTreeMap<usize, usize> {
    let snapshot = snapshot(endpoints);
    let router = Router::default();
    let service = ObjectKey::new("shop", "web");
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let addr = router
            .pick_endpoint(
                &snapshot,
                client,
                &service,
                &TargetPort::Name("http".into()),
                Some("http"),
            )
            .expect("an endpoint is picked");
        assert_eq!(addr.port(), 8080, "the named target port is resolved");
        let index = (0..endpoints.len())
            .find(|&i| address(i) == addr.ip())
            .expect("a known endpoint");
        *out.entry(index).or_default() += 1;
    }
    out
}

#[test_case("a", &[("a", None, READY), ("b", None, READY), ("c", None, READY)], &[0] ; "same node first")]
#[test_case("a", &[("c", None, READY), ("b", None, READY)], &[1] ; "same zone next, zone from the node")]
#[test_case("a", &[("b", None, READY), ("c", None, READY), ("b", None, READY)], &[0, 2] ; "round robin within the zone tier")]
#[test_case("a", &[("d", Some("z1"), READY), ("b", Some("z2"), READY), ("c", None, READY)], &[0] ; "the endpoint's own zone wins over its node's")]
#[test_case("a", &[("x", Some("z1"), READY), ("c", None, READY)], &[0] ; "own zone on an endpoint of an unknown node")]
#[test_case("d", &[("b", None, READY), ("c", None, READY)], &[0, 1] ; "client node without zone: plain round robin")]
#[test_case("x", &[("d", None, READY), ("b", None, READY)], &[0, 1] ; "two unknown zones are not the same zone")]
#[test_case("a", &[("d", None, READY), ("x", None, READY)], &[0, 1] ; "endpoints without zone: plain round robin")]
#[test_case("a", &[("a", None, NOT_READY), ("b", None, READY), ("c", None, READY)], &[1] ; "a not-ready local endpoint is skipped")]
#[test_case("a", &[("b", None, NOT_READY), ("c", None, READY), ("d", None, READY)], &[1, 2] ; "a not-ready zone endpoint leaves the rest")]
fn tiers(client: &str, endpoints: &[Ep], expected: &[usize]) {
    let rounds = 4;
    let got = picks(client, endpoints, rounds * expected.len());
    let want: BTreeMap<usize, usize> = expected.iter().map(|&i| (i, rounds)).collect();
    assert_eq!(got, want, "endpoint index -> times picked");
}

#[test]
fn no_ready_endpoint_means_none() {
    let snapshot = snapshot(&[("a", None, NOT_READY), ("b", None, NOT_READY)]);
    let router = Router::default();
    let service = ObjectKey::new("shop", "web");
    let port = TargetPort::Number(8080);
    assert_eq!(
        router.pick_endpoint(&snapshot, "a", &service, &port, None),
        None
    );
}

#[test]
fn a_vip_routes_to_the_picked_endpoint() {
    let snapshot = snapshot(&[("c", None, READY), ("b", None, READY)]);
    let trust_domain: TrustDomain = "cluster.local".parse().unwrap();
    let route = Router::default().route(
        &snapshot,
        "a",
        &trust_domain,
        15008,
        "198.19.0.10:80".parse().unwrap(),
    );
    assert_eq!(
        route,
        Route::Passthrough(SocketAddr::new(address(1), 8080)),
        "the endpoint in the client's zone (not a workload of the mesh)"
    );
}

/// Service shop/web (198.19.0.10:80 -> 8080) with pod web-1 (198.18.1.10,
/// node b), in a namespace that uses waypoint shop/wp (`waypoint_for` its
/// `istio.io/waypoint-for`), whose pods are `waypoints` (name, node, ready).
fn waypoint_mesh(waypoint_for: &str, waypoints: &[(&str, &str, bool)]) -> Arc<Snapshot> {
    let mut yaml = format!(
        "
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: shop, labels: {{istio.io/waypoint-for: {waypoint_for}}}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: b, serviceAccountName: web, containers: [{{name: w, image: w}}]}}
status: {{podIP: 198.18.1.10, conditions: [{{type: Ready, status: \"True\"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 198.19.0.10, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"
    );
    for (i, (name, node, ready)) in waypoints.iter().enumerate() {
        let ready = if *ready { "True" } else { "False" };
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: wp}}}}
spec: {{nodeName: {node}, serviceAccountName: wp, containers: [{{name: w, image: w}}]}}
status: {{podIP: 198.18.2.{}, conditions: [{{type: Ready, status: \"{ready}\"}}]}}
",
            i + 1
        ));
    }
    crate::config::file::test_registry(&yaml)
        .unwrap()
        .snapshot()
}

fn route_from(snapshot: &Snapshot, node: &str, dst: &str) -> Route {
    let trust_domain: TrustDomain = "cluster.local".parse().unwrap();
    Router::default().route(snapshot, node, &trust_domain, 15008, dst.parse().unwrap())
}

fn through(waypoint_ip: &str, target: &str) -> Route {
    Route::Hbone {
        gateway: format!("{waypoint_ip}:15008").parse().unwrap(),
        target: target.parse().unwrap(),
        identity: "spiffe://cluster.local/ns/shop/sa/wp".parse().unwrap(),
        waypoint: Some(ObjectKey::new("shop", "wp")),
    }
}

#[test]
fn service_traffic_goes_to_the_waypoint_with_the_vip_as_authority() {
    let snapshot = waypoint_mesh("service", &[("wp-1", "c", true)]);
    assert_eq!(
        route_from(&snapshot, "a", "198.19.0.10:80"),
        through("198.18.2.1", "198.19.0.10:80")
    );
    // waypoint-for: service leaves pod-IP traffic alone.
    assert_eq!(
        route_from(&snapshot, "a", "198.18.1.10:8080"),
        Route::Hbone {
            gateway: "198.18.1.10:15008".parse().unwrap(),
            target: "198.18.1.10:8080".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap(),
            waypoint: None,
        }
    );
}

#[test]
fn workload_traffic_goes_to_the_waypoint_when_it_takes_workloads() {
    let snapshot = waypoint_mesh("workload", &[("wp-1", "c", true)]);
    assert_eq!(
        route_from(&snapshot, "a", "198.18.1.10:8080"),
        through("198.18.2.1", "198.18.1.10:8080")
    );
    // ... and then not Service traffic: the VIP resolves to the pod as before.
    assert!(matches!(
        route_from(&snapshot, "a", "198.19.0.10:80"),
        Route::Hbone { waypoint: None, .. }
    ));
    let all = waypoint_mesh("all", &[("wp-1", "c", true)]);
    assert!(matches!(
        route_from(&all, "a", "198.19.0.10:80"),
        Route::Hbone {
            waypoint: Some(_),
            ..
        }
    ));
    assert!(matches!(
        route_from(&all, "a", "198.18.1.10:8080"),
        Route::Hbone {
            waypoint: Some(_),
            ..
        }
    ));
}

#[test]
fn without_a_ready_waypoint_pod_the_connection_is_refused_not_sent_around_it() {
    let key = ObjectKey::new("shop", "wp");
    for waypoints in [&[][..], &[("wp-1", "a", false)][..]] {
        let snapshot = waypoint_mesh("all", waypoints);
        assert_eq!(
            route_from(&snapshot, "a", "198.19.0.10:80"),
            Route::NoWaypoint(key.clone())
        );
        assert_eq!(
            route_from(&snapshot, "a", "198.18.1.10:8080"),
            Route::NoWaypoint(key.clone())
        );
    }
}

#[test]
fn a_waypoint_pod_on_the_clients_node_is_preferred() {
    let snapshot = waypoint_mesh("service", &[("wp-1", "c", true), ("wp-2", "a", true)]);
    for _ in 0..4 {
        assert_eq!(
            route_from(&snapshot, "a", "198.19.0.10:80"),
            through("198.18.2.2", "198.19.0.10:80")
        );
    }
}

#[test]
fn past_the_waypoint_traffic_goes_to_the_endpoint_never_back_to_a_waypoint() {
    let trust_domain: TrustDomain = "cluster.local".parse().unwrap();
    let snapshot = waypoint_mesh("all", &[("wp-1", "c", true)]);
    let direct = Route::Hbone {
        gateway: "198.18.1.10:15008".parse().unwrap(),
        target: "198.18.1.10:8080".parse().unwrap(),
        identity: "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap(),
        waypoint: None,
    };
    for dst in ["198.19.0.10:80", "198.18.1.10:8080"] {
        let route = Router::default().past_waypoint(
            &snapshot,
            "c",
            &trust_domain,
            15008,
            dst.parse().unwrap(),
        );
        assert_eq!(route, direct, "{dst}");
    }
    // Even without a ready waypoint pod: the waypoint itself is past it.
    let snapshot = waypoint_mesh("all", &[]);
    let route = Router::default().past_waypoint(
        &snapshot,
        "c",
        &trust_domain,
        15008,
        "198.19.0.10:80".parse().unwrap(),
    );
    assert_eq!(route, direct);
}
