//! End-to-end tests of Service VIP endpoint selection on a three-node testbed:
//! the nearest ready endpoints take the connections (same node, then same zone
//! by the Nodes' `topology.kubernetes.io/zone` labels, then any).

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, WEB_SERVICE, Ztunnel, ZtunnelOptions, send, start_server},
    privileged,
    testbed::Process,
};

const WAIT: Duration = Duration::from_secs(10);

/// `count` requests from `client` to the web VIP: how many each server
/// address answered.
fn served_by(bed: &Testbed, client: &str, count: usize) -> BTreeMap<String, usize> {
    let vip: SocketAddr = "198.19.0.10:80".parse().expect("address");
    let mut out = BTreeMap::new();
    for i in 0..count {
        let reply = send(bed, client, vip, &format!("zone-{i}")).expect("the service answers");
        // "to=<server address>" is what the server saw as its own address.
        let server = reply
            .split_whitespace()
            .find_map(|f| f.strip_prefix("to="))
            .unwrap_or_else(|| panic!("no to= in the reply {reply:?}"));
        // The server listens on [::]: IPv4 peers appear v4-mapped.
        let ip = server
            .parse::<SocketAddr>()
            .map_or_else(|_| server.to_owned(), |a| a.ip().to_canonical().to_string());
        *out.entry(ip).or_default() += 1;
    }
    out
}

fn write(bed: &Testbed, config: &MeshConfig, path: &Path) {
    config.write(bed, path).expect("config written");
}

#[test]
fn a_service_vip_prefers_an_endpoint_in_the_same_zone_then_any_ready_one() {
    if !privileged("a_service_vip_prefers_an_endpoint_in_the_same_zone_then_any_ready_one") {
        return;
    }
    let bed = Testbed::builder("service_zone")
        .node("a")
        .node("b")
        .node("c")
        .pod("client", "a")
        .pod("near", "b")
        .pod("far", "c")
        .build()
        .expect("testbed builds");
    // No endpoint on the client's node a; near's node b shares its zone.
    let config = MeshConfig::default()
        .namespace("demo", true)
        .node("a", Some("z1"))
        .node("b", Some("z1"))
        .node("c", Some("z2"))
        .pod("client", "demo")
        .pod("near", "demo")
        .pod("far", "demo")
        .label("near", "svc", "web")
        .label("far", "svc", "web")
        .document(WEB_SERVICE);
    let path = bed.workdir().join("mesh.yaml");
    write(&bed, &config, &path);
    let zts: Vec<Ztunnel> = ["a", "b", "c"]
        .iter()
        .map(|node| {
            Ztunnel::start(&bed, node, &path, &ZtunnelOptions::default()).expect("ztunnel starts")
        })
        .collect();
    let _servers: Vec<Process> = ["near", "far"]
        .iter()
        .map(|pod| start_server(&bed, pod, "echo", "[::]:7000"))
        .collect();
    let near = bed.pod("near").ipv4().to_string();
    let far = bed.pod("far").ipv4().to_string();

    assert_eq!(
        served_by(&bed, "client", 8),
        BTreeMap::from([(near.clone(), 8)]),
        "every connection goes to the endpoint in the client's zone"
    );

    // near is no longer ready: the other zone's endpoint takes over.
    zts[0]
        .after_update(WAIT, || {
            write(&bed, &config.clone().not_ready("near"), &path);
        })
        .expect("ztunnel a applies the update");
    assert_eq!(
        served_by(&bed, "client", 8),
        BTreeMap::from([(far.clone(), 8)]),
        "a not-ready endpoint is never picked"
    );

    // Without zone labels, near is ready again and no zone is preferred.
    let no_zones = config.node("a", None).node("b", None).node("c", None);
    zts[0]
        .after_update(WAIT, || write(&bed, &no_zones, &path))
        .expect("ztunnel a applies the update");
    assert_eq!(
        served_by(&bed, "client", 8),
        BTreeMap::from([(far, 4), (near, 4)]),
        "no zone: round robin over the ready endpoints"
    );
}
