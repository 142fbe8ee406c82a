//! End-to-end tests of the eBPF capture: ztunnel processes on testbed nodes,
//! unmodified clients and servers in pods.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions},
    privileged,
    testbed::Process,
};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const WAIT: Duration = Duration::from_secs(10);

/// Two nodes; `client` and `outsider` on a, `server` on b.
fn two_nodes(tag: &str) -> Testbed {
    Testbed::builder(tag)
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("outsider", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds")
}

/// `demo` is ambient with client and server; `plain` is not, with outsider.
fn mesh(plain_ambient: bool) -> MeshConfig {
    MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", plain_ambient)
        .pod("client", "demo")
        .pod("server", "demo")
        .pod("outsider", "plain")
}

fn write_config(bed: &Testbed, config: &MeshConfig) -> PathBuf {
    let path = bed.workdir().join("mesh.yaml");
    config.write(bed, &path).expect("config written");
    path
}

fn start_server(bed: &Testbed, pod: &str, listen: &str) -> Process {
    let mut cmd = bed.pod_command(pod, TESTBIN);
    cmd.args(["echo", listen]);
    let server = bed.spawn(cmd).expect("server starts");
    server
        .wait_for_line("listening", WAIT)
        .expect("server listens");
    server
}

/// One request from `pod` to `dst`; the line the client printed.
fn send(bed: &Testbed, pod: &str, dst: SocketAddr, message: &str) -> Result<String, String> {
    let mut cmd = bed.pod_command(pod, TESTBIN);
    cmd.args(["send", &dst.to_string(), message])
        .env("AMBIT_TESTBIN_TIMEOUT_MS", "3000");
    match bed.run(cmd, WAIT) {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

fn captured_both_ways(sockmap: bool, tag: &str) {
    let bed = two_nodes(tag);
    let config = write_config(&bed, &mesh(false));
    let options = ZtunnelOptions {
        sockmap,
        ..ZtunnelOptions::default()
    };
    let zt_a = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel a starts");
    let zt_b = Ztunnel::start(&bed, "b", &config, &options).expect("ztunnel b starts");
    let _server = start_server(&bed, "server", "[::]:7000");
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
        assert!(out["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{out}");
        let inbound = zt_b
            .wait_for_log(WAIT, |l| {
                l["target"] == "access" && l["dst.addr"] == dst.to_string()
            })
            .unwrap_or_else(|e| panic!("node b logged the inbound connection: {e}"));
        assert_eq!(inbound["direction"], "inbound", "{inbound}");
        assert_eq!(inbound["dst.workload"], "demo/server", "{inbound}");
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
