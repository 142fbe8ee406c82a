//! End-to-end tests of the eBPF capture: ztunnel processes on testbed nodes,
//! unmodified clients and servers in pods.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions, send, start_server},
    privileged,
    testbed::Process,
};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const WAIT: Duration = Duration::from_secs(10);

/// Two nodes; `client` and `outsider` on a, `server` and `plainserver` on b.
fn two_nodes(tag: &str) -> Testbed {
    Testbed::builder(tag)
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("outsider", "a")
        .pod("server", "b")
        .pod("plainserver", "b")
        .build()
        .expect("testbed builds")
}

/// `demo` is ambient with client and server; `plain` (ambient or not) holds
/// outsider and plainserver.
fn mesh(plain_ambient: bool) -> MeshConfig {
    MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", plain_ambient)
        .pod("client", "demo")
        .pod("server", "demo")
        .pod("outsider", "plain")
        .pod("plainserver", "plain")
}

fn write_config(bed: &Testbed, config: &MeshConfig) -> PathBuf {
    let path = bed.workdir().join("mesh.yaml");
    config.write(bed, &path).expect("config written");
    path
}

/// ztunnel's options, with the sk_msg shortcut on or off (these tests'
/// clients read small answers).
fn options(sockmap: bool) -> ZtunnelOptions {
    if sockmap {
        ZtunnelOptions::default().force_sockmap()
    } else {
        ZtunnelOptions::default()
    }
}

fn captured_both_ways(sockmap: bool, tag: &str) {
    let bed = two_nodes(tag);
    let config = write_config(&bed, &mesh(false));
    let options = options(sockmap);
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let (client, server) = (bed.pod("client"), bed.pod("server"));

    for (dst, src_ip) in [
        (
            SocketAddr::from((server.ipv4(), 7000)),
            client.ipv4().to_string(),
        ),
        (
            SocketAddr::from((server.ipv6(), 7000)),
            client.ipv6().to_string(),
        ),
    ] {
        let reply = send(&bed, "client", dst, "through-the-mesh").unwrap_or_else(|e| {
            panic!(
                "the client gets a reply: {e}\nztunnel a:\n{}\nztunnel b:\n{}",
                zt_a.stderr(),
                zt_b.stderr()
            )
        });
        // The application sees the original destination, never 127.0.0.1:15001.
        assert!(
            reply.contains(&format!("peer={dst}")),
            "getpeername shows the original destination: {reply}"
        );
        // The server sees the client pod's real address (transparent inbound).
        assert!(
            reply.contains(&src_ip),
            "the server sees the client pod IP {src_ip}: {reply}"
        );
        assert!(reply.contains("msg=through-the-mesh"), "{reply}");

        let out = zt_a
            .wait_for_log(WAIT, |l| {
                l["target"] == "access" && l["dst.addr"] == dst.to_string()
            })
            .unwrap_or_else(|e| panic!("node a logged the outbound connection: {e}"));
        assert_eq!(out["direction"], "outbound", "{out}");
        assert_eq!(out["src.workload"], "demo/client", "{out}");
        // Between enrolled pods the bytes travel in HBONE, with secure naming.
        assert_eq!(out["mode"], "hbone", "{out}");
        assert_eq!(
            out["dst.identity"], "spiffe://cluster.local/ns/demo/sa/server",
            "{out}"
        );
        assert!(out["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{out}");
        let inbound = zt_b
            .wait_for_log(WAIT, |l| {
                l["target"] == "access" && l["dst.addr"] == dst.to_string()
            })
            .unwrap_or_else(|e| panic!("node b logged the inbound connection: {e}"));
        assert_eq!(inbound["direction"], "inbound", "{inbound}");
        assert_eq!(inbound["dst.workload"], "demo/server", "{inbound}");
        assert_eq!(inbound["mode"], "hbone", "{inbound}");
        assert_eq!(
            inbound["src.identity"], "spiffe://cluster.local/ns/demo/sa/client",
            "{inbound}"
        );
        assert!(
            inbound["src.addr"]
                .as_str()
                .is_some_and(|s| s.contains(&src_ip)),
            "{inbound}"
        );
    }
}

#[test]
fn outbound_and_inbound_are_captured_with_sockmap() {
    if !privileged("outbound_and_inbound_are_captured_with_sockmap") {
        return;
    }
    captured_both_ways(true, "capture_sockmap");
}

#[test]
fn outbound_and_inbound_are_captured_without_sockmap() {
    if !privileged("outbound_and_inbound_are_captured_without_sockmap") {
        return;
    }
    captured_both_ways(false, "capture_no_sockmap");
}

/// Access log lines of `zt` whose destination is `dst`.
fn access_to(zt: &Ztunnel, dst: SocketAddr) -> Vec<serde_json::Value> {
    zt.access_logs()
        .into_iter()
        .filter(|l| l["dst.addr"] == dst.to_string())
        .collect()
}

/// A long-lived connection: `count` exchanges `interval_ms` apart.
fn start_session(
    bed: &Testbed,
    pod: &str,
    dst: SocketAddr,
    count: u32,
    interval_ms: u32,
) -> Process {
    let mut cmd = bed.pod_command(pod, TESTBIN);
    cmd.args([
        "session",
        &dst.to_string(),
        &count.to_string(),
        &interval_ms.to_string(),
    ]);
    let session = bed.spawn(cmd).expect("session starts");
    session
        .wait_for_line("reply", WAIT)
        .expect("the session's first exchange");
    session
}

/// Waits for the session to end and asserts every exchange got its reply.
fn assert_session_complete(session: Process, count: usize) {
    let out = session
        .wait(Duration::from_secs(30))
        .expect("the session ends");
    let replies = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("reply"))
        .count();
    // The first reply was consumed by start_session.
    assert!(
        out.status.success(),
        "the long-lived connection was cut: {out:?}"
    );
    assert_eq!(replies + 1, count, "every exchange was answered: {out:?}");
}

#[test]
fn non_enrolled_pods_bypass_and_enrollment_toggles_at_runtime() {
    if !privileged("non_enrolled_pods_bypass_and_enrollment_toggles_at_runtime") {
        return;
    }
    let bed = two_nodes("toggle");
    let config = write_config(&bed, &mesh(false));
    let options = ZtunnelOptions::default();
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "plainserver", "echo", "0.0.0.0:7000");
    let dst = SocketAddr::from((bed.pod("plainserver").ipv4(), 7000));
    let outsider_ip = bed.pod("outsider").ipv4().to_string();

    // Not enrolled: straight to the server, no ztunnel involved.
    let reply = send(&bed, "outsider", dst, "bypass").expect("outsider reaches the server");
    assert!(reply.contains(&format!("from={outsider_ip}:")), "{reply}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        access_to(&zt_a, dst).is_empty() && access_to(&zt_b, dst).is_empty(),
        "no ztunnel saw it"
    );

    // A connection that lives across the enrollment change.
    let session = start_session(&bed, "outsider", dst, 30, 100);

    // Enroll the namespace at runtime: new connections are captured.
    mesh(true).write(&bed, &config).expect("config rewritten");
    for (zt, pod) in [(&zt_a, "plain/outsider"), (&zt_b, "plain/plainserver")] {
        zt.wait_for_log(WAIT, |l| l["message"] == "pod enrolled" && l["pod"] == pod)
            .unwrap_or_else(|e| panic!("{pod} enrolled at runtime: {e}"));
    }
    let reply = send(&bed, "outsider", dst, "captured").expect("outsider still reaches the server");
    assert!(reply.contains(&format!("from={outsider_ip}:")), "{reply}");
    let out = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["dst.addr"] == dst.to_string()
        })
        .expect("node a captured the new connection");
    assert_eq!(out["src.workload"], "plain/outsider");
    zt_b.wait_for_log(WAIT, |l| {
        l["target"] == "access" && l["dst.workload"] == "plain/plainserver"
    })
    .expect("node b captured it inbound");

    // Enrolling did not cut the connection opened before it.
    assert_session_complete(session, 30);

    // Unenroll again: new connections bypass ztunnel once more.
    mesh(false).write(&bed, &config).expect("config rewritten");
    zt_a.wait_for_log(WAIT, |l| {
        l["message"] == "pod unenrolled" && l["pod"] == "plain/outsider"
    })
    .expect("outsider unenrolled at runtime");
    let before = access_to(&zt_a, dst).len();
    send(&bed, "outsider", dst, "bypass-again").expect("outsider reaches the server");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        access_to(&zt_a, dst).len(),
        before,
        "node a no longer captures the outsider"
    );
}

#[test]
fn restart_keeps_a_long_lived_connection_and_reuses_pinned_state() {
    if !privileged("restart_keeps_a_long_lived_connection_and_reuses_pinned_state") {
        return;
    }
    restart_keeps_a_long_lived_connection(false, "restart");
}

/// With the sk_msg shortcut on, the long-lived connection's bytes go on being
/// redirected after the new ztunnel attached its own program to the pinned
/// map (the connection's socket keeps the program it joined the map with),
/// until the old ztunnel drained it; new connections take the new program.
#[test]
fn restart_with_the_shortcut_keeps_the_connections_on_it() {
    if !privileged("restart_with_the_shortcut_keeps_the_connections_on_it") {
        return;
    }
    restart_keeps_a_long_lived_connection(true, "restart_sockmap");
}

fn redirected_bytes(pin_dir: &std::path::Path) -> u64 {
    ztunnel::capture::shortcut_stats(pin_dir)
        .expect("the shortcut's counters are readable")
        .redirected_bytes
}

fn restart_keeps_a_long_lived_connection(sockmap: bool, tag: &str) {
    let bed = two_nodes(tag);
    let config = write_config(&bed, &mesh(false));
    let options = options(sockmap);
    let mut old = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = SocketAddr::from((bed.pod("server").ipv4(), 7000));
    let pin_dir = bed.node("a").pin_dir().to_owned();
    let enrolled_map = pin_dir.join("maps/ENROLLED");
    let map_inode =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&enrolled_map).expect("pinned map"));

    let session = start_session(&bed, "client", dst, 40, 100);
    // The new ztunnel starts next to the old one (a DaemonSet surge), then the old
    // one is told to stop and drains.
    let new = Ztunnel::start(&bed, "a", &config, &options).expect("the new ztunnel starts");
    if sockmap {
        // The session's next exchanges, under the new ztunnel's program.
        let before = redirected_bytes(&pin_dir);
        std::thread::sleep(Duration::from_millis(500));
        let after = redirected_bytes(&pin_dir);
        assert!(
            after > before,
            "the old connection is still redirected ({before} -> {after} bytes)"
        );
    }
    let status = old
        .stop(Duration::from_secs(30))
        .expect("the old ztunnel drains and exits");
    assert!(
        status.success(),
        "clean exit after draining: {status}\n{}",
        old.stderr()
    );
    assert!(
        old.logs()
            .iter()
            .any(|l| l["message"] == "draining connections"),
        "the old ztunnel drained the long-lived connection:\n{}",
        old.stderr()
    );
    assert_session_complete(session, 40);

    // New connections go through the new ztunnel.
    let before = sockmap.then(|| redirected_bytes(&pin_dir));
    let reply =
        send(&bed, "client", dst, "after-restart").expect("new connections work after restart");
    assert!(reply.contains(&format!("peer={dst}")), "{reply}");
    new.wait_for_log(WAIT, |l| {
        l["target"] == "access" && l["dst.addr"] == dst.to_string()
    })
    .expect("the new ztunnel proxied it");
    if let Some(before) = before {
        let after = redirected_bytes(&pin_dir);
        assert!(
            after > before,
            "a new connection is redirected too ({before} -> {after} bytes)"
        );
    }

    // The pinned maps were reused, not recreated, and still enroll the pod.
    let inode =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&enrolled_map).expect("pinned map"));
    assert_eq!(inode, map_inode, "the same pinned map");
    let cookie = ztunnel::capture::netns_cookie(&bed.pod("client").netns_path()).expect("cookie");
    let enrolled = ztunnel::capture::pinned_enrollment(&pin_dir).expect("pinned map reads");
    assert!(
        enrolled.contains(&cookie),
        "the client stays enrolled: {enrolled:?}"
    );
}

/// The readiness port of node `node`, as the kubelet probes it.
fn probe_ready(bed: &Testbed, node: &str) -> String {
    let mut cmd = bed.node_command(node, "curl");
    cmd.args(["-s", "http://127.0.0.1:15021/healthz/ready"]);
    String::from_utf8_lossy(&bed.run(cmd, WAIT).expect("curl runs").stdout)
        .trim()
        .to_owned()
}

#[test]
fn replaced_three_times_under_load_without_a_failed_connection() {
    if !privileged("replaced_three_times_under_load_without_a_failed_connection") {
        return;
    }
    let bed = two_nodes("replace3");
    let config = write_config(&bed, &mesh(false));
    let options = ZtunnelOptions {
        drain: Duration::from_secs(30),
        ..ZtunnelOptions::default()
    };
    let mut current = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = SocketAddr::from((bed.pod("server").ipv4(), 7000));

    // Ten long-lived streams, and new connections one after the other, as
    // fast as they go, for the whole time.
    let sessions: Vec<Process> = (0..10)
        .map(|_| start_session(&bed, "client", dst, 60, 100))
        .collect();
    let mut churn = bed.pod_command("client", TESTBIN);
    churn.args(["crr", &dst.to_string(), "3000"]);
    let churn = bed.spawn(churn).expect("the connection churn starts");

    for round in 0..3 {
        // A DaemonSet surge: the new one starts beside the old, takes the
        // node, and the old one is stopped and drains.
        let next = Ztunnel::start(&bed, "a", &config, &options)
            .unwrap_or_else(|e| panic!("replacement {round} starts: {e}"));
        current
            .wait_for_log(WAIT, |l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("a newer ztunnel takes over"))
            })
            .unwrap_or_else(|e| panic!("round {round}: the old one steps aside: {e}"));
        assert_eq!(probe_ready(&bed, "a"), "ready", "round {round}");
        let status = current
            .stop(Duration::from_secs(40))
            .expect("the old ztunnel drains and exits");
        assert!(
            status.success(),
            "round {round}: {status}\n{}",
            current.stderr()
        );
        current = next;
    }
    for session in sessions {
        assert_session_complete(session, 60);
    }
    let out = churn
        .wait(Duration::from_secs(120))
        .expect("the churn ends");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("crr count=3000"),
        "a new connection failed while ztunnel was replaced: {out:?}"
    );
}

#[test]
fn connections_fail_instead_of_leaking_while_ztunnel_is_down() {
    if !privileged("connections_fail_instead_of_leaking_while_ztunnel_is_down") {
        return;
    }
    let bed = two_nodes("fail_closed");
    let config = write_config(&bed, &mesh(false));
    let options = ZtunnelOptions::default();
    let mut zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let mut zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = SocketAddr::from((bed.pod("server").ipv4(), 7000));
    send(&bed, "client", dst, "while-up").expect("works while ztunnel runs");
    server
        .wait_for_line("accepted", WAIT)
        .expect("the server saw it");

    // Outbound: ztunnel a crashes. The client's connects are still redirected
    // (the links stay pinned) and refused; nothing leaves in plaintext.
    zt_a.kill();
    let error = send(&bed, "client", dst, "must-not-arrive").expect_err("the connect fails");
    assert!(error.contains("Connection refused"), "{error}");

    // Inbound: ztunnel b crashes. A non-enrolled client's connection to the
    // enrolled server is refused rather than delivered around the mesh.
    zt_b.kill();
    let error = send(&bed, "outsider", dst, "must-not-arrive").expect_err("the connect fails");
    assert!(error.contains("Connection refused"), "{error}");
    assert!(
        server.next_line(Duration::from_millis(500)).is_err(),
        "the server saw no connection while ztunnel was down"
    );

    // Back up: new connections work again.
    let _zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a restarts");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b restarts");
    let reply = send(&bed, "client", dst, "back").expect("works after restart");
    assert!(reply.contains("msg=back"), "{reply}");
}

#[test]
fn ztunnel_refuses_to_start_without_privileges() {
    if !privileged("ztunnel_refuses_to_start_without_privileges") {
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(ambit_tests::mesh::ztunnel_binary())
        .args([
            "--config",
            "/dev/null",
            "--node",
            "a",
            "--pin-dir",
            "/sys/fs/bpf/ambit-tests-never",
        ])
        .args([
            "--node-cgroup",
            "/sys/fs/cgroup",
            "--ca-dir",
            "/nonexistent/ambit-ca",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("setpriv runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing privileges CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn a_pod_that_left_the_mesh_while_ztunnel_was_down_is_released_at_restart() {
    if !privileged("a_pod_that_left_the_mesh_while_ztunnel_was_down_is_released_at_restart") {
        return;
    }
    let bed = two_nodes("stale");
    let config = write_config(&bed, &mesh(true));
    let options = ZtunnelOptions::default();
    let mut zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let pin_dir = bed.node("a").pin_dir().to_owned();
    let cookie =
        |pod: &str| ztunnel::capture::netns_cookie(&bed.pod(pod).netns_path()).expect("cookie");
    let enrolled = || ztunnel::capture::pinned_enrollment(&pin_dir).expect("pinned map reads");
    assert!(enrolled().contains(&cookie("outsider")), "{:?}", enrolled());

    // ztunnel stops (its pods stay enrolled: their connects fail while it is
    // down), and meanwhile the outsider's namespace leaves the mesh.
    zt_a.stop(Duration::from_secs(30)).expect("ztunnel a stops");
    write_config(&bed, &mesh(false));
    let _plain = start_server(&bed, "plainserver", "echo", "[::]:7000");
    let plain = SocketAddr::from((bed.pod("plainserver").ipv4(), 7000));
    send(&bed, "outsider", plain, "while-down")
        .expect_err("still enrolled while no ztunnel runs: refused");

    // The next ztunnel releases it: the outsider is no longer captured, and
    // reaches a server outside the mesh directly.
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a restarts");
    zt_a.wait_for_log(WAIT, |l| l["message"] == "released stale enrollments")
        .expect("the stale enrollment is released");
    let now = enrolled();
    assert!(!now.contains(&cookie("outsider")), "{now:?}");
    assert!(now.contains(&cookie("client")), "the client stays: {now:?}");
    let reply = send(&bed, "outsider", plain, "released").expect("the outsider connects");
    assert!(reply.contains("msg=released"), "{reply}");
    assert!(
        !zt_a
            .access_logs()
            .iter()
            .any(|l| l["src.workload"] == "plain/outsider"),
        "not through ztunnel"
    );
}

#[test]
fn a_departed_pods_certificate_is_dropped_and_the_trust_bundle_is_followed() {
    if !privileged("a_departed_pods_certificate_is_dropped_and_the_trust_bundle_is_followed") {
        return;
    }
    let bed = two_nodes("forget");
    let config = write_config(&bed, &mesh(true));
    let zt_a =
        Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a starts");
    let certs = || {
        let mut curl = bed.node_command("a", "curl");
        curl.args(["-sS", "--max-time", "5", "http://127.0.0.1:15000/certs"]);
        let out = bed.run(curl, WAIT).expect("the admin endpoint answers");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let has = |json: &serde_json::Value, sa: &str| {
        json.as_array().is_some_and(|ids| {
            ids.iter().any(|i| {
                i["identity"].as_str() == Some(&format!("spiffe://cluster.local/ns/plain/sa/{sa}"))
            })
        })
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !has(&certs(), "outsider") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(has(&certs(), "outsider"), "{}", certs());

    // The outsider's namespace leaves the mesh: its certificate is no longer
    // kept or renewed.
    zt_a.after_update(WAIT, || write_config(&bed, &mesh(false)))
        .expect("the change applies");
    assert!(!has(&certs(), "outsider"), "{}", certs());
    zt_a.wait_for_log(WAIT, |l| l["message"] == "certificate dropped")
        .expect("logged");

    // A second root appears in the bundle (a rotation starts): ztunnel
    // reloads it without a restart.
    let bundle = bed.workdir().join("ca").join("bundle.pem");
    let before = std::fs::read_to_string(&bundle).expect("the bundle exists");
    let root = ztunnel::identity::ca::RootCa::generate(
        &ztunnel::identity::TrustDomain::default(),
        Duration::from_secs(3600),
    )
    .expect("a root");
    let staging = bundle.with_extension("new");
    std::fs::write(&staging, format!("{before}{}", root.cert_pem())).expect("written");
    std::fs::rename(&staging, &bundle).expect("replaced");
    zt_a.wait_for_log(Duration::from_secs(20), |l| {
        l["message"] == "trust bundle reloaded" && l["roots"] == 2
    })
    .expect("the new root is trusted");
}

/// One connection of the load: when it started, how long it took, whether
/// it got its echo.
#[derive(Debug)]
struct Attempt {
    at: std::time::SystemTime,
    took: Duration,
    ok: bool,
}

/// The attempts of an `ambit-testbin churn` run, from its output.
fn attempts(stdout: &[u8]) -> Vec<Attempt> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.strip_prefix("attempt ")?.split(' ');
            let at: u64 = fields.next()?.parse().ok()?;
            let took: u64 = fields.next()?.parse().ok()?;
            Some(Attempt {
                at: std::time::UNIX_EPOCH + Duration::from_millis(at),
                took: Duration::from_micros(took),
                ok: fields.next()? == "ok",
            })
        })
        .collect()
}

#[test]
fn a_crash_under_load_leaks_no_plaintext_fails_fast_and_recovers_within_a_second() {
    if !privileged("a_crash_under_load_leaks_no_plaintext_fails_fast_and_recovers_within_a_second")
    {
        return;
    }
    let bed = two_nodes("crash_load");
    let config = write_config(&bed, &mesh(false));
    let options = ZtunnelOptions::default();
    let mut zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = SocketAddr::from((bed.pod("server").ipv4(), 7000));
    send(&bed, "client", dst, "warm-up").expect("served");
    let fds_b = ambit_tests::bench::host::open_fds(zt_b.pid());
    let heap_b = ambit_tests::bench::host::rss_anon_kib(zt_b.pid()).expect("ztunnel b's memory");
    let dump = bed
        .capture_fabric("fabric", "tcp")
        .expect("tcpdump starts (cargo xtask bootstrap installs it)");
    let marker = "CRASH-PLAINTEXT-5b7e";

    // Two clients open connections in a loop, one marked message on each,
    // while ztunnel a is killed and, two seconds later, started again.
    let loaders: Vec<Process> = (0..2)
        .map(|_| {
            let mut cmd = bed.pod_command("client", TESTBIN);
            cmd.args(["churn", &dst.to_string(), marker, "6", "5"])
                .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
            bed.spawn(cmd).expect("the load starts")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let killing = std::time::SystemTime::now();
    zt_a.kill();
    let killed = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_secs(2));
    let restarting = std::time::SystemTime::now();
    let _zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a restarts");
    let ready = std::time::SystemTime::now();
    let attempts: Vec<Attempt> = loaders
        .into_iter()
        .flat_map(|l| {
            attempts(
                &l.wait(Duration::from_secs(20))
                    .expect("the load ends")
                    .stdout,
            )
        })
        .collect();
    let bytes = dump.stop();
    assert!(bytes.len() > 24, "tcpdump captured packets");
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "no byte of the pods' traffic crossed the fabric in plaintext"
    );
    // Connections open when the process died are cut with it.
    let before: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.at + a.took < killing)
        .collect();
    let down: Vec<&Attempt> = attempts
        .iter()
        // Until the new process starts: it serves a little before the test
        // sees its "ready" line.
        .filter(|a| a.at > killed + Duration::from_millis(100) && a.at + a.took < restarting)
        .collect();
    let after: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.at > ready + Duration::from_secs(1))
        .collect();
    let failed = |list: &[&Attempt]| list.iter().filter(|a| !a.ok).count();
    assert!(
        !before.is_empty() && failed(&before) == 0,
        "served before the crash: {} of {} failed",
        failed(&before),
        before.len()
    );
    assert!(!down.is_empty(), "connections were tried during the outage");
    let slow = down
        .iter()
        .filter(|a| a.took >= Duration::from_secs(1))
        .count();
    assert!(
        failed(&down) == down.len() && slow == 0,
        "during the outage every connect is refused within a second: {} of {} served, {slow} took a second or more",
        down.len() - failed(&down),
        down.len()
    );
    let first_ok = attempts
        .iter()
        .filter(|a| a.at >= ready && a.ok)
        .map(|a| a.at + a.took)
        .min()
        .expect("a connection succeeded after the restart");
    assert!(
        first_ok < ready + Duration::from_secs(1),
        "served within a second of the restart ({:?})",
        first_ok.duration_since(ready)
    );
    assert!(
        !after.is_empty() && failed(&after) == 0,
        "every connection is served once ztunnel is back: {} of {} failed",
        failed(&after),
        after.len()
    );
    // The surviving ztunnel holds no descriptor of the connections the crash
    // cut (the HBONE connection from node a closed with the process).
    let fds = ambit_tests::bench::host::open_fds_settled(zt_b.pid(), fds_b + 2);
    assert!(
        fds <= fds_b + 2,
        "ztunnel b's descriptors are back to their baseline: {fds_b} before, {fds} after"
    );
    // And its memory: relay buffers are freed after a quiet second; what the
    // allocator keeps for reuse stays within a couple of MiB.
    std::thread::sleep(Duration::from_secs(2));
    let heap = ambit_tests::bench::host::rss_anon_kib(zt_b.pid()).expect("ztunnel b's memory");
    eprintln!("ztunnel b RssAnon: {heap_b} KiB before, {heap} KiB after");
    assert!(
        heap <= heap_b + 2048,
        "ztunnel b's memory is back to its baseline: {heap_b} KiB before, {heap} KiB after"
    );
}

#[test]
fn a_node_rebooted_with_its_pinned_state_gone_captures_its_pods_from_their_first_connect() {
    if !privileged(
        "a_node_rebooted_with_its_pinned_state_gone_captures_its_pods_from_their_first_connect",
    ) {
        return;
    }
    let bed = two_nodes("reboot");
    let config = write_config(&bed, &mesh(false));
    let options = ZtunnelOptions::default();
    let mut zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = SocketAddr::from((bed.pod("server").ipv4(), 7000));
    send(&bed, "client", dst, "before").expect("served before the reboot");

    // The reboot: ztunnel dies and the BPF filesystem loses the node's pins
    // (its maps and the links that keep the programs attached).
    zt_a.kill();
    let pin_dir = bed.node("a").pin_dir().to_owned();
    std::fs::remove_dir_all(&pin_dir).expect("the pins are removed");
    // Nothing captures the client now: its connection goes out in plaintext,
    // which the STRICT-free server takes; this is the state a node boots in.
    let reply = send(&bed, "client", dst, "uncaptured").expect("plain while nothing runs");
    assert!(reply.contains("msg=uncaptured"), "{reply}");

    // ztunnel starts on the empty node: fresh pins, and the client's very
    // next connect is captured and carried over HBONE.
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts again");
    assert!(
        pin_dir.join("maps/ENROLLED").exists(),
        "the maps are pinned again"
    );
    let reply = send(&bed, "client", dst, "first-after").expect("served after the reboot");
    assert!(reply.contains("msg=first-after"), "{reply}");
    let line = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["dst.addr"] == dst.to_string()
        })
        .expect("the first connection after the reboot went through ztunnel");
    assert_eq!(line["mode"], "hbone", "{line}");
}
