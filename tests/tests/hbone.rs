//! End-to-end tests of the HBONE data path between two (or three) nodes: what
//! crosses the wire, secure naming, trust, PeerAuthentication, services, and
//! volume.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, WEB_SERVICE, Ztunnel, ZtunnelOptions, send, start_server},
    privileged,
    testbed::{Process, contains},
};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const WAIT: Duration = Duration::from_secs(10);

fn bed(tag: &str) -> Testbed {
    Testbed::builder(tag)
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("outsider", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds")
}

fn mesh() -> MeshConfig {
    MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", false)
        .pod("client", "demo")
        .pod("server", "demo")
        .pod("outsider", "plain")
}

fn write(bed: &Testbed, config: &MeshConfig, name: &str) -> PathBuf {
    let path = bed.workdir().join(name);
    config.write(bed, &path).expect("config written");
    path
}

fn server_addr(bed: &Testbed, port: u16) -> SocketAddr {
    SocketAddr::from((bed.pod("server").ipv4(), port))
}

#[test]
fn bytes_between_nodes_are_tls_with_the_client_identity() {
    if !privileged("bytes_between_nodes_are_tls_with_the_client_identity") {
        return;
    }
    let bed = bed("hbone_wire");
    let config = write(&bed, &mesh(), "mesh.yaml");
    let zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");

    // Watch the fabric, where node-to-node traffic crosses.
    let dump = bed
        .capture_fabric("fabric", "tcp")
        .expect("tcpdump starts (cargo xtask bootstrap installs it)");
    let marker = "PLAINTEXT-MARKER-6f1d2c";
    let reply =
        send(&bed, "client", server_addr(&bed, 7000), marker).expect("the client gets a reply");
    assert!(
        reply.contains(&format!("from=[::ffff:{}]:", bed.pod("client").ipv4())),
        "real client IP: {reply}"
    );
    dump.wait_for(&[&15008u16.to_be_bytes(), b"\x02h2"], WAIT);
    let bytes = dump.stop();
    let contains = |needle: &[u8]| contains(&bytes, needle);
    assert!(bytes.len() > 24, "tcpdump captured packets");
    assert!(
        !contains(marker.as_bytes()),
        "the payload never crosses between nodes in plaintext"
    );
    // A TLS handshake record (content type 22) to the HBONE port, with ALPN h2.
    assert!(
        contains(&[0x16, 0x03, 0x01]),
        "a TLS ClientHello crossed the fabric"
    );
    assert!(contains(&15008u16.to_be_bytes()), "to port 15008");
    assert!(contains(b"\x02h2"), "ALPN h2");

    let inbound = zt_b
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["direction"] == "inbound"
        })
        .expect("node b logged the connection");
    assert_eq!(
        inbound["src.identity"], "spiffe://cluster.local/ns/demo/sa/client",
        "{inbound}"
    );
    // Both ends' lines share the trace id the CONNECT carried.
    let trace_id = inbound["trace_id"].as_str().unwrap_or_default();
    assert_eq!(trace_id.len(), 32, "{inbound}");
    zt_a.wait_for_log(WAIT, |l| {
        l["target"] == "access" && l["direction"] == "outbound" && l["trace_id"] == trace_id
    })
    .expect("node a logged the same trace id");

    // The admin endpoint shows the node's certificates (never a key) and the
    // registry.
    let get = |path: &str| {
        let mut cmd = bed.node_command("a", "curl");
        cmd.args(["-sf", &format!("http://127.0.0.1:15000{path}")]);
        String::from_utf8_lossy(&bed.run(cmd, WAIT).expect("admin answers").stdout).into_owned()
    };
    let certs: serde_json::Value = serde_json::from_str(&get("/certs")).expect("JSON");
    let client = certs
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["identity"] == "spiffe://cluster.local/ns/demo/sa/client")
        })
        .unwrap_or_else(|| panic!("the client's certificate is listed: {certs}"));
    assert!(
        client["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{client}"
    );
    assert!(client["not_after"].is_string(), "{client}");
    assert!(
        !certs.to_string().contains("PRIVATE KEY"),
        "no key material"
    );
    assert!(
        get("/config_dump").contains("\"server\""),
        "the registry dump lists the pods"
    );
    assert_eq!(get("/healthz/ready").trim(), "ready");
}

#[test]
fn a_server_with_the_wrong_identity_is_refused() {
    if !privileged("a_server_with_the_wrong_identity_is_refused") {
        return;
    }
    let bed = bed("secure_naming");
    // Node a expects the server to be demo/server; node b gives it another
    // identity, as a compromised or misconfigured node would.
    let config_a = write(&bed, &mesh(), "a.yaml");
    let config_b = write(
        &bed,
        &mesh().service_account("server", "impostor"),
        "b.yaml",
    );
    let zt_a = Ztunnel::start(&bed, "a", &config_a, &ZtunnelOptions::default()).expect("ztunnel a");
    // The mesh CA would refuse node b the impostor identity (no such pod on
    // it, in its view): node b signs for itself with the mesh's root key, as
    // a node of the --ca-dir development mode could. Only secure naming at
    // the client stops it.
    let rogue = ZtunnelOptions {
        ca_dir: Some(
            bed.mesh_ca()
                .expect("node a started the mesh CA")
                .dir()
                .to_owned(),
        ),
        ..ZtunnelOptions::default()
    };
    let _zt_b = Ztunnel::start(&bed, "b", &config_b, &rogue).expect("ztunnel b");
    let server = start_server(&bed, "server", "echo", "[::]:7000");

    let error =
        send(&bed, "client", server_addr(&bed, 7000), "hi").expect_err("the connection is refused");
    assert!(
        // Depending on when the refusal lands, the client sees EOF, a reset, or
        // a write into a closed socket.
        error.contains("closed without a reply")
            || error.contains("reset")
            || error.contains("Broken pipe"),
        "{error}"
    );
    let line = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["message"] == "connection failed"
        })
        .expect("node a logged the refusal");
    let why = line["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("secure naming") && why.contains("sa/impostor"),
        "{line}"
    );
    assert!(
        server.next_line(Duration::from_millis(300)).is_err(),
        "the server saw nothing"
    );
}

#[test]
fn a_peer_from_an_untrusted_root_is_refused() {
    if !privileged("a_peer_from_an_untrusted_root_is_refused") {
        return;
    }
    let bed = bed("untrusted_root");
    let config = write(&bed, &mesh(), "mesh.yaml");
    let zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    // Node b's certificates come from another CA, which node a does not trust.
    let other_ca = ZtunnelOptions {
        ca_dir: Some(bed.workdir().join("other-ca")),
        ..ZtunnelOptions::default()
    };
    let zt_b = Ztunnel::start(&bed, "b", &config, &other_ca).expect("ztunnel b");
    // That in-process CA of --ca-dir is a development mode, and says so; a
    // client of the mesh CA does not.
    let warned = |zt: &Ztunnel| {
        zt.logs().iter().any(|l| {
            l["level"] == "WARN"
                && l["message"].as_str().is_some_and(|m| {
                    m.starts_with("--ca-dir runs the mesh CA inside this node process")
                })
        })
    };
    assert!(warned(&zt_b), "{}", zt_b.stderr());
    assert!(!warned(&zt_a), "{}", zt_a.stderr());
    let server = start_server(&bed, "server", "echo", "[::]:7000");

    send(&bed, "client", server_addr(&bed, 7000), "hi").expect_err("the connection is refused");
    let line = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["message"] == "connection failed"
        })
        .expect("node a logged the refusal");
    // Both roots carry the same name, so the chain is built to the trusted root
    // and its signature check fails: refused either way.
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid peer certificate"),
        "{line}"
    );
    assert!(
        server.next_line(Duration::from_millis(300)).is_err(),
        "the server saw nothing"
    );
}

const STRICT_NAMESPACE: &str = r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: demo
spec:
  mtls:
    mode: STRICT";

const PERMISSIVE_PORT: &str = r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: server-7001
  namespace: demo
spec:
  selector:
    matchLabels:
      app: server
  mtls:
    mode: STRICT
  portLevelMtls:
    7001:
      mode: PERMISSIVE";

const STRICT_MESH_PERMISSIVE_NAMESPACE: [&str; 2] = [
    r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT",
    r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: relaxed
  namespace: demo
spec:
  mtls:
    mode: PERMISSIVE",
];

#[test]
fn peer_authentication_strict_permissive_port_level_and_precedence() {
    if !privileged("peer_authentication_strict_permissive_port_level_and_precedence") {
        return;
    }
    let bed = bed("peer_authn");
    let config = write(&bed, &mesh(), "mesh.yaml");
    let zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let _s7000 = start_server(&bed, "server", "echo", "[::]:7000");
    let _s7001 = start_server(&bed, "server", "echo", "[::]:7001");
    let (p7000, p7001) = (server_addr(&bed, 7000), server_addr(&bed, 7001));
    let apply = |config_text: &MeshConfig| {
        zt_b.after_update(WAIT, || config_text.write(&bed, &config))
            .expect("node b applied the new configuration")
            .expect("config rewritten");
    };

    // Default PERMISSIVE: a plaintext client outside the mesh is accepted.
    send(&bed, "outsider", p7000, "permissive").expect("plaintext accepted under PERMISSIVE");

    // STRICT for the namespace: plaintext is refused, mTLS still works.
    apply(&mesh().document(STRICT_NAMESPACE));
    send(&bed, "outsider", p7000, "strict").expect_err("plaintext refused under STRICT");
    zt_b.wait_for_log(WAIT, |l| {
        l["target"] == "access" && l["error"].as_str().is_some_and(|e| e.contains("STRICT"))
    })
    .expect("the refusal is logged");
    send(&bed, "client", p7000, "mtls").expect("an enrolled client still gets through over HBONE");
    // Health probes from the kubelet are exempt from STRICT: they arrive from
    // the probe address, which the application sees.
    let mut probe = bed.kubelet_command("b", TESTBIN);
    probe
        .args(["send", &p7000.to_string(), "probe"])
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
    let out = bed
        .run(probe, WAIT)
        .expect("a kubelet probe gets through under STRICT");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("msg=probe"), "{reply}");
    assert!(reply.contains("169.254.7.127]:"), "{reply}");
    let probe6 = SocketAddr::from((bed.pod("server").ipv6(), 7000));
    let mut probe = bed.kubelet_command("b", TESTBIN);
    probe
        .args(["send", &probe6.to_string(), "probe6"])
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
    let out = bed
        .run(probe, WAIT)
        .expect("an IPv6 kubelet probe gets through under STRICT");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("from=[fd16:9254:7127:1337:ffff:ffff:ffff:ffff]"),
        "{reply}"
    );
    // Any other process of the node (a host-network pod, or NodePort traffic
    // SNATed to the node's address) is plaintext like any other: refused,
    // whatever the port, and it cannot take the probe address as its source.
    let node_ip = bed.node("b").ipv4().to_string();
    let server6 = SocketAddr::from((bed.pod("server").ipv6(), 7000));
    for (dst, bind) in [
        (server_addr(&bed, 7000), None),
        (server_addr(&bed, 7001), None),
        (server_addr(&bed, 7000), Some(node_ip.as_str())),
        (server_addr(&bed, 7000), Some("169.254.7.127")),
        (server6, Some("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")),
    ] {
        let port = dst.port();
        let mut host = bed.node_command("b", TESTBIN);
        host.args(["send", &dst.to_string(), "host"])
            .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
        if let Some(bind) = bind {
            host.env("AMBIT_TESTBIN_BIND", bind);
        }
        let error = bed.run(host, WAIT).expect_err(&format!(
            "plaintext from a node process to port {port} (from {bind:?}) is refused under STRICT"
        ));
        if bind.is_some_and(|b| b != node_ip) {
            assert!(
                error.to_string().contains("Operation not permitted"),
                "the probe address cannot be bound: {error}"
            );
        }
    }
    // Nor can a pod that gives itself the probe address.
    let mut add = bed.pod_command("outsider", "ip");
    add.args(["addr", "add", "169.254.7.127/32", "dev", "lo"]);
    bed.run(add, WAIT)
        .expect("the pod adds the address to its lo");
    let mut spoof = bed.pod_command("outsider", TESTBIN);
    spoof
        .args(["send", &p7000.to_string(), "spoofed-probe"])
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000")
        .env("AMBIT_TESTBIN_BIND", "169.254.7.127");
    let error = bed
        .run(spoof, WAIT)
        .expect_err("a pod cannot send from the probe address");
    assert!(
        error.to_string().contains("Operation not permitted"),
        "{error}"
    );

    // A workload policy: STRICT, with port 7001 PERMISSIVE.
    apply(&mesh().document(STRICT_NAMESPACE).document(PERMISSIVE_PORT));
    send(&bed, "outsider", p7001, "port-level").expect("port 7001 accepts plaintext");
    send(&bed, "outsider", p7000, "other-port").expect_err("port 7000 stays STRICT");

    // Namespace PERMISSIVE beats mesh-wide STRICT.
    let [mesh_wide, namespace] = STRICT_MESH_PERMISSIVE_NAMESPACE;
    apply(&mesh().document(mesh_wide));
    send(&bed, "outsider", p7000, "mesh-strict").expect_err("mesh-wide STRICT applies");
    apply(&mesh().document(mesh_wide).document(namespace));
    send(&bed, "outsider", p7000, "namespace-permissive").expect("the namespace's PERMISSIVE wins");
}

#[test]
fn a_pod_that_marks_its_socket_like_ztunnel_is_still_captured() {
    if !privileged("a_pod_that_marks_its_socket_like_ztunnel_is_still_captured") {
        return;
    }
    let bed = bed("marks");
    let config = write(&bed, &mesh().document(STRICT_NAMESPACE), "mesh.yaml");
    let zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = server_addr(&bed, 7000);
    // ztunnel's own marks, and one in the range the capture used to skip. The
    // server is STRICT: only a connection carried over HBONE gets through.
    for (round, mark) in ["0x539", "0x53a", "0x53f"].into_iter().enumerate() {
        let mut cmd = bed.pod_command("client", TESTBIN);
        cmd.args(["send", &dst.to_string(), &format!("marked-{mark}")])
            .env("AMBIT_TESTBIN_MARK", mark)
            .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
        let out = bed
            .run(cmd, WAIT)
            .unwrap_or_else(|e| panic!("mark {mark}: the connection is captured: {e}"));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("msg=marked-{mark}")),
            "{out:?}"
        );
        let line = zt_a
            .wait_for_log(WAIT, |l| {
                l["target"] == "access"
                    && l["direction"] == "outbound"
                    && l["src.workload"] == "demo/client"
            })
            .expect("node a proxied it");
        assert_eq!(line["mode"], "hbone", "round {round}: {line}");
    }
}

#[test]
fn a_gibibyte_arrives_intact_and_a_thousand_connections_complete() {
    if !privileged("a_gibibyte_arrives_intact_and_a_thousand_connections_complete") {
        return;
    }
    let bed = bed("volume");
    let config = write(&bed, &mesh(), "mesh.yaml");
    let _zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _sink = start_server(&bed, "server", "sink", "[::]:7100");
    let _echo = start_server(&bed, "server", "echo", "[::]:7000");

    let gib = 1u64 << 30;
    let mut cmd = bed.pod_command("client", TESTBIN);
    cmd.args([
        "checksum",
        &server_addr(&bed, 7100).to_string(),
        &gib.to_string(),
    ]);
    let out = bed
        .run(cmd, Duration::from_secs(300))
        .expect("the transfer completes");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        field("bytes"),
        gib.to_string(),
        "every byte arrived: {line}"
    );
    assert_eq!(
        field("sent"),
        field("received"),
        "the checksum matches: {line}"
    );

    // A thousand connections through one pair of ztunnels, all open at once.
    let mut cmd = bed.pod_command("client", "sh");
    cmd.args([
        "-c",
        r#"ulimit -n 8192 && exec "$0" concurrent "$1" 1000"#,
        TESTBIN,
    ])
    .arg(server_addr(&bed, 7000).to_string())
    .env("AMBIT_TESTBIN_TIMEOUT_MS", "20000");
    let out = bed
        .run(cmd, Duration::from_secs(120))
        .expect("the connections complete");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "concurrent ok=1000"
    );
}

#[test]
fn a_service_vip_spreads_over_ready_endpoints_and_prefers_the_local_node() {
    if !privileged("a_service_vip_spreads_over_ready_endpoints_and_prefers_the_local_node") {
        return;
    }
    let bed = Testbed::builder("service_lb")
        .node("a")
        .node("b")
        .node("c")
        .pod("localclient", "a")
        .pod("s1", "a")
        .pod("s2", "b")
        .pod("s3", "b")
        .pod("farclient", "c")
        .build()
        .expect("testbed builds");
    let config = MeshConfig::default()
        .namespace("demo", true)
        .pod("localclient", "demo")
        .pod("farclient", "demo")
        .pod("s1", "demo")
        .pod("s2", "demo")
        .pod("s3", "demo")
        .label("s1", "svc", "web")
        .label("s2", "svc", "web")
        .label("s3", "svc", "web")
        .not_ready("s3")
        .document(WEB_SERVICE);
    let path = write(&bed, &config, "mesh.yaml");
    let _zts: Vec<Ztunnel> = ["a", "b", "c"]
        .iter()
        .map(|node| {
            Ztunnel::start(&bed, node, &path, &ZtunnelOptions::default()).expect("ztunnel starts")
        })
        .collect();
    let _servers: Vec<Process> = ["s1", "s2", "s3"]
        .iter()
        .map(|pod| start_server(&bed, pod, "echo", "[::]:7000"))
        .collect();
    let vip: SocketAddr = "198.19.0.10:80".parse().expect("address");
    let served_by = |client: &str, count: usize| -> Vec<String> {
        (0..count)
            .map(|i| {
                let reply =
                    send(&bed, client, vip, &format!("lb-{i}")).expect("the service answers");
                // "to=<server address>" is what the server saw as its own address.
                reply
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("to="))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let ip_of = |pod: &str| bed.pod(pod).ipv4().to_string();

    let far: BTreeSet<String> = served_by("farclient", 8).into_iter().collect();
    assert!(
        far.iter().any(|a| a.contains(&ip_of("s1"))),
        "s1 served some: {far:?}"
    );
    assert!(
        far.iter().any(|a| a.contains(&ip_of("s2"))),
        "s2 served some: {far:?}"
    );
    assert!(
        !far.iter().any(|a| a.contains(&ip_of("s3"))),
        "the not-ready s3 served none: {far:?}"
    );

    let near = served_by("localclient", 6);
    assert!(
        near.iter().all(|a| a.contains(&ip_of("s1"))),
        "the local endpoint is preferred: {near:?}"
    );
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    if !privileged("an_idle_connection_is_closed_after_the_idle_timeout") {
        return;
    }
    let bed = bed("idle");
    let config = write(&bed, &mesh(), "mesh.yaml");
    // Only the client's node has the short idle timeout: were both sides to
    // have it, either could close first, and node a would then log the reset
    // the other side's timeout sent rather than a timeout of its own.
    let options = ZtunnelOptions {
        idle: Some(Duration::from_secs(1)),
        ..ZtunnelOptions::default()
    };
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    // Exchanges 2.5 s apart: the first one passes, then the connection goes
    // quiet for longer than the idle timeout and is closed.
    let mut cmd = bed.pod_command("client", TESTBIN);
    cmd.args(["session", &server_addr(&bed, 7000).to_string(), "3", "2500"]);
    let session = bed.spawn(cmd).expect("session starts");
    session
        .wait_for_line("reply", WAIT)
        .expect("the first exchange");
    let out = session
        .wait(Duration::from_secs(20))
        .expect("the session ends");
    assert!(
        !out.status.success(),
        "the idle connection was closed: {out:?}"
    );
    let line = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("idle timeout"))
        })
        .expect("the access log says why");
    assert_eq!(line["mode"], "hbone", "{line}");
}

#[test]
fn a_restarted_peer_is_reconnected_without_a_failed_connection() {
    if !privileged("a_restarted_peer_is_reconnected_without_a_failed_connection") {
        return;
    }
    let bed = bed("pool_replace");
    let config = write(&bed, &mesh(), "mesh.yaml");
    let options = ZtunnelOptions::default();
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a");
    let mut zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b");
    let _server = start_server(&bed, "server", "echo", "[::]:7000");
    let dst = server_addr(&bed, 7000);
    send(&bed, "client", dst, "before").expect("through the pooled connection");
    // The client has its reply once the echo is back, but the tunnel's
    // orderly end (END_STREAM both ways) may still be in flight: a crash of
    // node b now would cut that close handshake and fail the connection in the
    // log, although the client saw all of it. Wait until it is over.
    zt_a.wait_for_log(WAIT, |l| {
        l["target"] == "access" && l["direction"] == "outbound" && l["dst.addr"] == dst.to_string()
    })
    .expect("the first connection ended");

    // Node b's ztunnel crashes and comes back: node a's pooled HBONE
    // connection to it is dead. The very next connection must not fail.
    zt_b.kill();
    let _zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b restarts");
    for round in 0..3 {
        send(&bed, "client", dst, &format!("after-{round}"))
            .unwrap_or_else(|e| panic!("connection {round} after the restart: {e}"));
    }
    // Access lines are written when a connection ends, just after the client
    // got its reply: wait for the fourth.
    let outbound = || -> Vec<_> {
        zt_a.access_logs()
            .into_iter()
            .filter(|l| l["direction"] == "outbound" && l["dst.addr"] == dst.to_string())
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while outbound().len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let outbound = outbound();
    assert_eq!(outbound.len(), 4, "{outbound:?}");
    assert!(
        outbound
            .iter()
            .all(|l| l["error"].as_str().unwrap_or_default().is_empty()),
        "no connection failed: {outbound:?}"
    );
}

#[test]
fn a_reset_on_either_side_reaches_the_other_as_a_reset() {
    if !privileged("a_reset_on_either_side_reaches_the_other_as_a_reset") {
        return;
    }
    let bed = bed("resets");
    let config = write(&bed, &mesh(), "mesh.yaml");
    let zt_a = Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &config, &ZtunnelOptions::default()).expect("ztunnel b");
    let _resetter = start_server(&bed, "server", "resetter", "[::]:7000");
    let watcher = start_server(&bed, "server", "watch", "[::]:7001");

    // The server resets: the client must not take the truncated stream for a
    // complete one.
    let mut cmd = bed.pod_command("client", TESTBIN);
    cmd.args(["await-end", &server_addr(&bed, 7000).to_string(), "hello"]);
    let out = bed.run(cmd, WAIT).expect("the client runs");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("ended=reset"), "the client saw: {seen}");
    // The access log still counts what the connection carried: "hello\n"
    // out, "partial" back, then the reset.
    let port = format!(":{}", 7000);
    let line = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access"
                && l["direction"] == "outbound"
                && l["dst.addr"].as_str().is_some_and(|d| d.ends_with(&port))
        })
        .expect("node a logged the reset connection");
    assert!(
        line["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    assert_eq!(
        (line["bytes_sent"].as_u64(), line["bytes_received"].as_u64()),
        (Some(6), Some(7)),
        "{line}"
    );

    // The client resets: so does the server's side.
    let mut cmd = bed.pod_command("client", TESTBIN);
    cmd.args(["abort", &server_addr(&bed, 7001).to_string(), "hello"]);
    bed.run(cmd, WAIT).expect("the client runs");
    let line = watcher
        .wait_for_line("ended=", WAIT)
        .expect("the server saw the end");
    assert!(
        line.starts_with("ended=reset bytes=6"),
        "the server saw: {line}"
    );

    // And an orderly end stays orderly.
    let mut cmd = bed.pod_command("client", TESTBIN);
    // (The watcher never answers: the sender gives up after 0.5 s and closes.)
    cmd.env("AMBIT_TESTBIN_TIMEOUT_MS", "500").args([
        "send",
        &server_addr(&bed, 7001).to_string(),
        "bye",
    ]);
    let _ = bed.run(cmd, WAIT);
    let line = watcher
        .wait_for_line("ended=", WAIT)
        .expect("the server saw the end");
    assert!(
        line.starts_with("ended=eof bytes=4"),
        "the server saw: {line}"
    );
}
