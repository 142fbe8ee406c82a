//! The first eBPF program, proven end to end: built by xtask, embedded in ztunnel,
//! loaded, attached to one simulated node's cgroup, and read back from its map.

use std::{net::SocketAddr, time::Duration};

use ambit_tests::{Testbed, privileged};
use ztunnel::capture::{Capture, CaptureConfig, netns_cookie};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const WAIT: Duration = Duration::from_secs(10);

/// For loading only: the capture programs are not attached in this test.
fn config(bed: &Testbed) -> CaptureConfig {
    CaptureConfig {
        pin_dir: bed.node("a").pin_dir().to_owned(),
        cgroup: bed.node("a").cgroup().to_owned(),
        own_cgroup: bed.node("a").ztunnel_cgroup(),
        probe_cgroup: None,
        sockmap: false,
        shortcut_cap: ztunnel::settings::SOCKMAP_CAP_DEFAULT,
        shortcut_bulk: ztunnel::settings::SOCKMAP_BULK_DEFAULT,
        sockmap_ignore_read_check: false,
        outbound_port: 15001,
        hbone_port: 15008,
        inbound_plaintext_port: 15006,
        excluded_nets: Vec::new(),
    }
}

#[test]
fn connect4_counts_connects_per_pod_on_the_attached_node_only() {
    if !privileged("connect4_counts_connects_per_pod_on_the_attached_node_only") {
        return;
    }
    let bed = Testbed::builder("connect4")
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("idle", "a")
        .pod("server", "b")
        .pod("remote", "b")
        .build()
        .expect("testbed builds");
    let mut capture = Capture::load(config(&bed)).expect("the embedded eBPF object loads");
    capture
        .attach_connect_counter(bed.node("a").cgroup())
        .expect("attaches to node a's cgroup");

    let mut server = bed.pod_command("server", TESTBIN);
    server.args(["echo", "0.0.0.0:7000"]);
    let server = bed.spawn(server).expect("server starts");
    server
        .wait_for_line("listening", WAIT)
        .expect("server listens");
    let target = SocketAddr::from((bed.pod("server").ipv4(), 7000)).to_string();

    let mut client = bed.pod_command("client", TESTBIN);
    client.args(["send", &target, "counted", "3"]);
    let out = bed.run(client, WAIT).expect("client connects three times");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);

    // A pod of node b connects too, but node b's cgroup has no program attached.
    let mut remote = bed.pod_command("remote", TESTBIN);
    remote.args(["send", &target, "not-counted", "2"]);
    bed.run(remote, WAIT).expect("remote client connects");

    let count = |pod: &str| {
        let cookie = netns_cookie(&bed.pod(pod).netns_path()).expect("netns cookie");
        capture.connect_count(cookie).expect("map reads")
    };
    assert_eq!(count("client"), 3, "three connects from the client pod");
    assert_eq!(count("idle"), 0, "no connect from the idle pod");
    assert_eq!(count("server"), 0, "accepting is not connecting");
    assert_eq!(count("remote"), 0, "node b is not attached");

    // Dropping the capture detaches and unloads it; a new one starts from an
    // empty map and counts only what follows.
    drop(capture);
    let mut client = bed.pod_command("client", TESTBIN);
    client.args(["send", &target, "while-detached"]);
    bed.run(client, WAIT)
        .expect("client connects without the program");
    let mut second = Capture::load(config(&bed)).expect("loads again");
    second
        .attach_connect_counter(bed.node("a").cgroup())
        .expect("attaches again");
    let mut client = bed.pod_command("client", TESTBIN);
    client.args(["send", &target, "after-reload"]);
    bed.run(client, WAIT).expect("client connects");
    let cookie = netns_cookie(&bed.pod("client").netns_path()).expect("netns cookie");
    assert_eq!(
        second.connect_count(cookie).expect("map reads"),
        1,
        "only the new connect is counted"
    );
}
