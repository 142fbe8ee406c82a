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
                addresses: vec![address(i)],
                ready,
                serving: ready,
                terminating: false,
                pod: None,
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
