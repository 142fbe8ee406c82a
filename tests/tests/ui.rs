//! The traffic view (`/ui` on ztunnel's admin endpoint) in a real browser:
//! Debian's headless Chromium, driven by Playwright (tests/ui/inspect.mjs),
//! inside the destination's node after one allowed mTLS connection and one
//! that a DENY policy refused. The graph must show both workloads and an
//! edge of each colour, the flow table the denial with its policy, the
//! workload panel the server's identity, policy and last denial; the page
//! must ask nothing of another origin and poll at most once a second. A
//! screenshot is kept in `target/ui/traffic-view.png`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ambit_tests::{
    mesh::{Ztunnel, ZtunnelOptions, client_and_server, send, start_server},
    privileged,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const SERVER: &str = "spiffe://cluster.local/ns/demo/sa/server";

/// Refuses port 7001 of the server.
const DENY_7001: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-7001, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - to:
    - operation: {ports: ["7001"]}"#;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// Whether the browser and its driver are installed (`cargo xtask test`
/// installs them); with `CI` set, their absence fails the test.
fn browser_present(test: &str) -> bool {
    let missing: Vec<String> = [
        PathBuf::from("/usr/bin/chromium"),
        workspace().join("tests/ui/node_modules/playwright-core/package.json"),
    ]
    .into_iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "{} missing: run `cargo xtask bootstrap`",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {reason}; CI is set, so this fails instead of skipping"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

#[test]
fn the_traffic_view_shows_the_graph_flows_and_denials_in_a_browser() {
    let test = "the_traffic_view_shows_the_graph_flows_and_denials_in_a_browser";
    if !privileged(test) || !browser_present(test) {
        return;
    }
    let (bed, path) = client_and_server("ui", &[DENY_7001]);
    let options = ZtunnelOptions::default();
    let _zt_a = Ztunnel::start(&bed, "a", &path, &options).expect("ztunnel a");
    let zt_b = Ztunnel::start(&bed, "b", &path, &options).expect("ztunnel b");
    let _echo = start_server(&bed, "server", "echo", "[::]:7000");
    let server = bed.pod("server").ipv4();
    send(&bed, "client", SocketAddr::from((server, 7000)), "allowed").expect("a reply");
    assert!(
        send(&bed, "client", SocketAddr::from((server, 7001)), "denied").is_err(),
        "port 7001 is denied"
    );
    zt_b.wait_for_log(WAIT, |l| {
        l["target"] == "access"
            && l["decision"]
                .as_str()
                .is_some_and(|d| d.contains("no-7001"))
    })
    .expect("node b refused the second connection");

    let out_dir = workspace().join("target/ui");
    std::fs::create_dir_all(&out_dir).expect("target/ui");
    let screenshot = out_dir.join("traffic-view.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut cmd = bed.node_command("b", "node");
    cmd.arg(workspace().join("tests/ui/inspect.mjs"))
        .arg("http://127.0.0.1:15000/ui")
        .arg("demo/server")
        .arg(&screenshot);
    let out = bed
        .run(cmd, Duration::from_secs(90))
        .expect("the browser loads the page");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the driver printed no JSON ({e}): {stdout}"));
    let context = serde_json::to_string_pretty(&seen).unwrap_or_default();

    // The graph: both workloads, an mTLS edge (green) and a denied one (red).
    let nodes: Vec<&str> = seen["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        nodes.contains(&"demo/client") && nodes.contains(&"demo/server"),
        "{context}"
    );
    let edge = |security: &str| {
        seen["edges"].as_array().and_then(|edges| {
            edges.iter().find(|e| {
                e["source"] == "demo/client"
                    && e["target"] == "demo/server"
                    && e["security"] == security
            })
        })
    };
    assert_eq!(
        edge("mtls").map(|e| e["stroke"].clone()),
        Some(Value::from("#2e7d32")),
        "{context}"
    );
    assert_eq!(
        edge("denied").map(|e| e["stroke"].clone()),
        Some(Value::from("#c62828")),
        "{context}"
    );
    // The table: the allowed flow and the denial with its policy.
    let rows = seen["rows"].as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r["decision"] == "allow"
            && r["src"]
                .as_str()
                .is_some_and(|s| s.starts_with("demo/client"))),
        "{context}"
    );
    assert!(
        rows.iter().any(|r| r["decision"] == "deny"
            && r["policy"]
                .as_str()
                .is_some_and(|p| p.contains("demo/no-7001"))),
        "{context}"
    );
    // The workload panel.
    let panel = seen["workload"].as_str().unwrap_or_default();
    assert!(panel.contains(SERVER), "{context}");
    assert!(
        panel.contains("AuthorizationPolicy demo/no-7001 (DENY)"),
        "{context}"
    );
    assert!(
        seen["denials"][0]
            .as_str()
            .is_some_and(|d| d.contains("demo/client") && d.contains("demo/no-7001")),
        "{context}"
    );
    // Nothing from another origin, at most one poll a second, no script error.
    let requests: Vec<&str> = seen["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        requests
            .iter()
            .all(|r| r.starts_with("http://127.0.0.1:15000/")),
        "{context}"
    );
    let polls = requests.iter().filter(|r| r.contains("/api/")).count() as f64;
    let seconds = seen["seconds"].as_f64().unwrap_or_default();
    assert!(
        polls <= seconds.ceil() + 1.0,
        "{polls} API requests in {seconds} s: {context}"
    );
    assert_eq!(seen["errors"], Value::Array(Vec::new()), "{context}");
    let size = std::fs::metadata(&screenshot).map_or(0, |m| m.len());
    assert!(size > 10_000, "a screenshot of {size} bytes");
}
