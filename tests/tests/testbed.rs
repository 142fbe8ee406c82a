//! End-to-end tests of the testbed itself: pods reach each other across nodes over
//! IPv4 and IPv6, and nothing is left behind afterwards, even after a panic or a
//! crashed run.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ambit_tests::{Testbed, privileged, testbed};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const WAIT: Duration = Duration::from_secs(10);

fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        })
        .collect()
}

fn host_netns() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `message` from pod `client` to `addr` and returns the server's line.
fn send(bed: &Testbed, client: &str, addr: SocketAddr, message: &str) -> String {
    let mut cmd = bed.pod_command(client, TESTBIN);
    cmd.args(["send", &addr.to_string(), message]);
    let out = bed.run(cmd, WAIT).expect("the client gets a reply");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn pods_reach_each_other_across_and_within_nodes_over_ipv4_and_ipv6() {
    if !privileged("pods_reach_each_other_across_and_within_nodes_over_ipv4_and_ipv6") {
        return;
    }
    let bed = Testbed::builder("pod_to_pod")
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("neighbor", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds");
    let mut server = bed.pod_command("server", TESTBIN);
    server.args(["echo", "[::]:7000"]);
    let server = bed.spawn(server).expect("server starts");
    server
        .wait_for_line("listening", WAIT)
        .expect("server listens");

    let (client, neighbor, target) = (bed.pod("client"), bed.pod("neighbor"), bed.pod("server"));
    assert_ne!(client.ipv4(), target.ipv4());

    let reply = send(
        &bed,
        "client",
        SocketAddr::from((target.ipv4(), 7000)),
        "hello-v4",
    );
    assert!(reply.contains("msg=hello-v4"), "{reply}");
    // IPv4 reaches a dual-stack listener as a mapped address.
    assert!(
        reply.contains(&format!("from=[::ffff:{}]:", client.ipv4())),
        "the server sees the client pod IP: {reply}"
    );
    assert!(
        reply.contains(&format!("peer={}:7000", target.ipv4())),
        "{reply}"
    );

    let reply = send(
        &bed,
        "client",
        SocketAddr::from((target.ipv6(), 7000)),
        "hello-v6",
    );
    assert!(reply.contains("msg=hello-v6"), "{reply}");
    assert!(
        reply.contains(&format!("from=[{}]:", client.ipv6())),
        "the server sees the client pod IPv6: {reply}"
    );

    let reply = send(
        &bed,
        "neighbor",
        SocketAddr::from((target.ipv4(), 7000)),
        "same-node-sender",
    );
    assert!(
        reply.contains(&format!("from=[::ffff:{}]:", neighbor.ipv4())),
        "{reply}"
    );

    // Within one node, over the node's pod bridge.
    let mut local = bed.pod_command("neighbor", TESTBIN);
    local.args(["echo", "0.0.0.0:7001"]);
    let local = bed.spawn(local).expect("second server starts");
    local
        .wait_for_line("listening", WAIT)
        .expect("second server listens");
    let reply = send(
        &bed,
        "client",
        SocketAddr::from((neighbor.ipv4(), 7001)),
        "local",
    );
    assert!(
        reply.contains(&format!("from={}:", client.ipv4())),
        "{reply}"
    );
}

#[test]
fn processes_run_in_the_pod_netns_and_the_pod_cgroup_under_the_node() {
    if !privileged("processes_run_in_the_pod_netns_and_the_pod_cgroup_under_the_node") {
        return;
    }
    let bed = Testbed::builder("placement")
        .node("a")
        .pod("p", "a")
        .build()
        .expect("testbed builds");
    let mut cmd = bed.pod_command("p", "sh");
    cmd.args(["-c", "cat /proc/self/cgroup; ip -o -4 addr show dev eth0"]);
    let out = bed.run(cmd, WAIT).expect("command runs");
    let out = String::from_utf8_lossy(&out.stdout);
    let mount = ztunnel::capture::cgroup2_mount()
        .expect("mountinfo")
        .expect("cgroup v2");
    let pod = bed.pod("p");
    let relative = pod
        .cgroup()
        .strip_prefix(&mount)
        .expect("pod cgroup under the mount");
    assert!(
        pod.cgroup().starts_with(bed.node("a").cgroup()),
        "the pod's cgroup is under its node's"
    );
    assert!(
        pod.cgroup().ends_with(format!("kubepods/pod{}", pod.uid())),
        "named after the pod's uid, as a kubelet does: {}",
        pod.cgroup().display()
    );
    assert!(
        out.contains(&format!("0::/{}\n", relative.display())),
        "runs in the pod's cgroup: {out}"
    );
    assert!(
        out.contains(&bed.pod("p").ipv4().to_string()),
        "runs in the pod netns: {out}"
    );
}

#[test]
fn teardown_leaves_no_netns_veth_cgroup_or_process() {
    if !privileged("teardown_leaves_no_netns_veth_cgroup_or_process") {
        return;
    }
    let links_before = host_links();
    let bed = Testbed::builder("teardown")
        .node("a")
        .node("b")
        .pod("x", "a")
        .pod("y", "b")
        .build()
        .expect("builds");
    let names: Vec<String> = bed.netns_names().to_vec();
    assert_eq!(names.len(), 5, "fabric, two nodes, two pods: {names:?}");
    assert!(host_netns().is_superset(&names.iter().cloned().collect()));
    let cgroup = bed.cgroup_dir().to_owned();
    assert!(cgroup.join("a").is_dir());
    // A process the test forgot about, in a pod of each node.
    let mut orphans: Vec<_> = ["x", "y"]
        .iter()
        .map(|pod| {
            let mut cmd = bed.pod_command(pod, "sleep");
            cmd.arg("300");
            cmd.spawn().expect("sleep starts")
        })
        .collect();
    // The move into the cgroup happens in the child before it execs sleep;
    // each pod already holds its pause process.
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(bed.pod("x").cgroup().join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the process never joined the pod's cgroup"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        host_links(),
        links_before,
        "no interface ever appears in the host namespace"
    );

    bed.teardown().expect("teardown succeeds");

    let left = host_netns();
    for name in &names {
        assert!(!left.contains(name), "netns {name} left behind");
        assert!(
            !Path::new(testbed::NETNS_DIR).join(name).exists(),
            "netns file {name} left behind"
        );
    }
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    for orphan in &mut orphans {
        let status = orphan.wait().expect("reaped");
        assert!(
            !status.success(),
            "the orphan was killed, not finished: {status}"
        );
        assert!(
            !process_exists(orphan.id()),
            "process {} left behind",
            orphan.id()
        );
    }
    assert_eq!(
        host_links(),
        links_before,
        "no veth left in the host namespace"
    );
}

#[test]
fn a_panicking_test_still_tears_down() {
    if !privileged("a_panicking_test_still_tears_down") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let bed = Testbed::builder("panics")
            .node("a")
            .pod("p", "a")
            .build()
            .expect("builds");
        tx.send((bed.netns_names().to_vec(), bed.cgroup_dir().to_owned()))
            .expect("send");
        panic!("a test fails while its testbed is up");
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let (names, cgroup) = rx.recv().expect("names were sent");
    let left = host_netns();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "{names:?} left in {left:?}"
    );
    assert!(!cgroup.exists());
}

#[test]
fn leftovers_of_a_crashed_run_are_cleaned_and_live_ones_kept() {
    if !privileged("leftovers_of_a_crashed_run_are_cleaned_and_live_ones_kept") {
        return;
    }
    // A live testbed of this process must survive the cleanup.
    let live = Testbed::builder("live").node("a").build().expect("builds");
    // What a crashed run leaves: pid 4194305 is above any pid_max, so never alive.
    let stale = "amb-4194305-1-0-crashed";
    let stale_netns = format!("{stale}-fab");
    let status = Command::new("ip")
        .args(["netns", "add", &stale_netns])
        .status()
        .expect("ip runs");
    assert!(status.success());
    let mount = ztunnel::capture::cgroup2_mount()
        .expect("mountinfo")
        .expect("cgroup v2");
    let stale_cgroup = mount.join("ambit-tests").join(stale).join("a");
    std::fs::create_dir_all(&stale_cgroup).expect("stale cgroup");
    let mut sleeper = Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && exec sleep 300"#,
            "sh",
        ])
        .arg(&stale_cgroup)
        .spawn()
        .expect("sleep starts");

    // Parallel tests may clean the same leftovers at the same time; what counts is
    // the state afterwards.
    if let Err(error) = testbed::cleanup_stale() {
        eprintln!("cleanup reported: {error}");
    }

    assert!(!host_netns().contains(&stale_netns), "stale netns removed");
    assert!(
        !stale_cgroup.parent().expect("parent").exists(),
        "stale cgroup removed"
    );
    let status = sleeper.wait().expect("reaped");
    assert!(!status.success(), "the stale process was killed");
    assert!(
        live.netns_names().iter().all(|n| host_netns().contains(n)),
        "live testbed kept"
    );
    assert!(live.node("a").cgroup().is_dir(), "live cgroup kept");
}
