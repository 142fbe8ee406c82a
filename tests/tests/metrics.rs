//! Observability end to end. ztunnel's connection metrics: after a known set
//! of connections (HBONE between two nodes, passthrough to a pod outside the
//! mesh), both ztunnels' `/metrics` show exactly the expected counts and byte
//! totals under Istio's names and labels, from the source and the
//! destination reporter; a long connection's bytes show while it runs; the
//! exposition parses as Prometheus text. The log filter changes through the
//! admin endpoint's `/logging` without a restart, and only by a POST.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{
        MeshConfig, Ztunnel, ZtunnelOptions, client_and_server, node_metrics, send, start_server,
        testbin_binary,
    },
    privileged,
};

const WAIT: Duration = Duration::from_secs(10);
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/demo/sa/server";

/// The samples of one scrape of `node`'s ztunnel, parsed.
fn scrape(bed: &Testbed, node: &str) -> Vec<prometheus_parse::Sample> {
    let text = node_metrics(bed, node);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{text}"))
        .samples
}

/// The value of `metric` in the series whose labels include `want`; 0 when
/// there is none, a panic when several match.
fn value(samples: &[prometheus_parse::Sample], metric: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a number"),
        })
        .collect();
    assert!(found.len() <= 1, "{metric} {want:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

/// What a `send` moved: the bytes the client wrote (its line) and read
/// (the echo server's line), each with its newline.
fn exchange(bed: &Testbed, to: SocketAddr, message: &str) -> (f64, f64) {
    let out = send(bed, "client", to, message).expect("the client gets a reply");
    let line = out
        .strip_prefix("reply ")
        .and_then(|rest| rest.split(" peer=").next())
        .unwrap_or_else(|| panic!("unexpected reply {out}"));
    ((message.len() + 1) as f64, (line.len() + 1) as f64)
}

#[test]
fn both_reporters_count_connections_and_bytes_with_istio_labels() {
    if !privileged("both_reporters_count_connections_and_bytes_with_istio_labels") {
        return;
    }
    let bed = Testbed::builder("metrics")
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("outsider", "a")
        .pod("server", "b")
        .build()
        .expect("testbed builds");
    let config = MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", false)
        .pod("client", "demo")
        .pod("server", "demo")
        .pod("outsider", "plain")
        .document(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: no-7001, namespace: demo}\n\
             spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [\"7001\"]}\n",
        );
    let path = bed.workdir().join("mesh.yaml");
    config.write(&bed, &path).expect("config written");
    let options = ZtunnelOptions::default();
    let _zt_a = Ztunnel::start(&bed, "a", &path, &options).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &path, &options).expect("ztunnel b");
    let _echo = start_server(&bed, "server", "echo", "[::]:7000");
    let _outside = start_server(&bed, "outsider", "echo", "[::]:7000");
    let server = SocketAddr::from((bed.pod("server").ipv4(), 7000));
    let outsider = SocketAddr::from((bed.pod("outsider").ipv4(), 7000));

    let mesh: HashMap<&str, &str> = [
        ("source_workload", "client"),
        ("source_workload_namespace", "demo"),
        ("source_principal", CLIENT),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "demo"),
        ("destination_principal", SERVER),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "tcp"),
        ("destination_service", "unknown"),
        ("response_flags", "-"),
    ]
    .into();
    let labels = |reporter: &'static str| -> Vec<(&str, &str)> {
        let mut l: Vec<(&str, &str)> = mesh.iter().map(|(k, v)| (*k, *v)).collect();
        l.push(("reporter", reporter));
        l
    };

    // A long connection: its bytes show before it ends.
    let mut session = bed.pod_command("client", testbin_binary());
    session.args(["session", &server.to_string(), "30", "100"]);
    let session = bed.spawn(session).expect("session starts");
    session
        .wait_for_line("reply ", WAIT)
        .expect("the session gets a first reply");
    std::thread::sleep(Duration::from_millis(300));
    for (node, reporter) in [("a", "source"), ("b", "destination")] {
        let samples = scrape(&bed, node);
        let l = labels(reporter);
        assert_eq!(
            value(&samples, "istio_tcp_connections_opened_total", &l),
            1.0,
            "{node}"
        );
        assert_eq!(
            value(&samples, "istio_tcp_connections_closed_total", &l),
            0.0,
            "{node}: the session is still open"
        );
        assert!(
            value(&samples, "istio_tcp_received_bytes_total", &l) > 0.0
                && value(&samples, "istio_tcp_sent_bytes_total", &l) > 0.0,
            "{node}: bytes of the open session are counted as they move"
        );
        assert_eq!(
            value(
                &samples,
                "ambit_connections_active",
                &[("reporter", reporter)]
            ),
            1.0,
            "{node}"
        );
        if node == "a" {
            assert_eq!(value(&samples, "ambit_hbone_connections", &[]), 1.0);
            assert_eq!(value(&samples, "ambit_hbone_streams", &[]), 1.0);
        }
    }
    // The admin endpoint lists it, with its identities, bytes and age.
    let (code, body) = admin(&bed, "a", "GET", "/debug/connections");
    assert_eq!(code, 200, "{body}");
    let open: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let open = open.as_array().expect("a list");
    assert_eq!(open.len(), 1, "{body}");
    let session_line = &open[0];
    assert_eq!(session_line["direction"], "outbound");
    assert_eq!(session_line["mode"], "hbone");
    assert_eq!(session_line["src_identity"], CLIENT);
    assert_eq!(session_line["dst_identity"], SERVER);
    assert_eq!(session_line["dst"], server.to_string());
    assert!(session_line["bytes_sent"].as_u64() > Some(0), "{body}");
    assert!(session_line["age_ms"].as_u64() > Some(100), "{body}");
    session
        .wait(Duration::from_secs(15))
        .expect("the session ends");
    let (_, body) = admin(&bed, "a", "GET", "/debug/connections");
    assert_eq!(body, "[]", "the ended session left the table");

    // Known exchanges on top of the session's.
    let before: Vec<Vec<prometheus_parse::Sample>> = ["a", "b"].map(|n| scrape(&bed, n)).into();
    let mut expected = (0.0, 0.0);
    for i in 0..3 {
        let (up, down) = exchange(
            &bed,
            server,
            &format!("metrics-{i}-{}", "x".repeat(i * 100)),
        );
        expected.0 += up;
        expected.1 += down;
    }
    let (out_up, out_down) = exchange(&bed, outsider, "to-the-outside");
    for ((node, reporter), before) in [("a", "source"), ("b", "destination")]
        .into_iter()
        .zip(&before)
    {
        let after = scrape(&bed, node);
        let l = labels(reporter);
        let delta = |metric: &str| value(&after, metric, &l) - value(before, metric, &l);
        assert_eq!(delta("istio_tcp_connections_opened_total"), 3.0, "{node}");
        assert_eq!(delta("istio_tcp_connections_closed_total"), 3.0, "{node}");
        assert_eq!(
            delta("istio_tcp_received_bytes_total"),
            expected.0,
            "{node}: the client's bytes"
        );
        assert_eq!(
            delta("istio_tcp_sent_bytes_total"),
            expected.1,
            "{node}: the server's bytes"
        );
    }
    // Passthrough, reported by the source only, without mutual TLS.
    let a = scrape(&bed, "a");
    let passthrough = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_workload", "outsider"),
        ("destination_workload_namespace", "plain"),
        ("destination_principal", "unknown"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(
        value(&a, "istio_tcp_connections_opened_total", &passthrough),
        1.0
    );
    assert_eq!(
        value(&a, "istio_tcp_connections_closed_total", &passthrough),
        1.0
    );
    assert_eq!(
        value(&a, "istio_tcp_received_bytes_total", &passthrough),
        out_up
    );
    assert_eq!(
        value(&a, "istio_tcp_sent_bytes_total", &passthrough),
        out_down
    );
    // ambit's own: pods, certificates, decisions, failures.
    let b = scrape(&bed, "b");
    assert_eq!(
        value(&a, "ambit_enrolled_pods", &[]),
        1.0,
        "the outsider is not enrolled"
    );
    assert_eq!(value(&b, "ambit_enrolled_pods", &[]), 1.0);
    assert_eq!(
        value(&a, "ambit_connections_active", &[("reporter", "source")]),
        0.0
    );
    // The eBPF maps' occupancy (read every few seconds) and the enrolled
    // pods, in the metrics and in /config_dump.
    let enrolled_entries = || {
        value(
            &scrape(&bed, "a"),
            "ambit_ebpf_map_entries",
            &[("map", "ENROLLED")],
        )
    };
    let deadline = std::time::Instant::now() + WAIT;
    while enrolled_entries() < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(enrolled_entries(), 1.0, "one pod of node a is enrolled");
    let a_now = scrape(&bed, "a");
    assert_eq!(
        value(&a_now, "ambit_ebpf_map_capacity", &[("map", "ENROLLED")]),
        4096.0
    );
    assert!(
        value(&a_now, "ambit_ebpf_map_entries", &[("map", "LISTENERS")]) >= 1.0,
        "the client's listeners are registered"
    );
    let (code, body) = admin(&bed, "a", "GET", "/config_dump");
    assert_eq!(code, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let pods = dump["capture"]["enrolled_pods"]
        .as_array()
        .expect("the enrolled pods");
    assert_eq!(pods.len(), 1, "{body}");
    assert_eq!(pods[0]["pod"], "demo/client");
    assert_eq!(pods[0]["identity"], CLIENT);
    let maps = dump["capture"]["maps"].as_array().expect("the maps");
    assert!(
        maps.iter()
            .any(|m| m["name"] == "ENROLLED" && m["entries"] == 1 && m["capacity"] == 4096),
        "{body}"
    );
    let expiry = value(
        &a,
        "ambit_certificate_expiry_seconds",
        &[("identity", CLIENT)],
    );
    assert!(expiry > 3600.0 && expiry <= 7.0 * 86400.0, "{expiry}");
    let allowed = [("action", "none"), ("result", "allowed")];
    assert!(
        value(&b, "ambit_policy_decisions_total", &allowed) >= 4.0,
        "the session and three exchanges were authorized at b"
    );
    // A denied connection: counted as opened and closed with the DENY flag
    // by the destination, which refused it, and as a CONNECT failure by the
    // source, whose tunnel was refused.
    assert!(
        send(
            &bed,
            "client",
            SocketAddr::from((bed.pod("server").ipv4(), 7001)),
            "no"
        )
        .is_err()
    );
    let refused = |node: &str, reporter: &'static str, flag: &'static str| {
        let samples = scrape(&bed, node);
        let mut l = labels(reporter);
        l.retain(|(k, _)| *k != "response_flags");
        l.push(("response_flags", flag));
        (
            value(&samples, "istio_tcp_connections_opened_total", &l),
            value(&samples, "istio_tcp_connections_closed_total", &l),
            value(&samples, "istio_tcp_received_bytes_total", &l),
        )
    };
    assert_eq!(refused("b", "destination", "DENY"), (1.0, 1.0, 0.0));
    assert_eq!(refused("a", "source", "CONNECT"), (1.0, 1.0, 0.0));
    assert_eq!(
        value(
            &scrape(&bed, "b"),
            "ambit_policy_decisions_total",
            &[("action", "DENY"), ("result", "denied")]
        ),
        1.0
    );
    // A server that resets: a failure at both ends, by reason.
    let _resetter = start_server(&bed, "server", "resetter", "[::]:7002");
    let mut cmd = bed.pod_command("client", testbin_binary());
    cmd.args([
        "await-end",
        &SocketAddr::from((bed.pod("server").ipv4(), 7002)).to_string(),
        "hi",
    ]);
    let out = bed.run(cmd, WAIT).expect("the client runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ended=reset"));
    for node in ["a", "b"] {
        let reset = || {
            value(
                &scrape(&bed, node),
                "ambit_connection_failures_total",
                &[("reason", "reset")],
            )
        };
        let deadline = std::time::Instant::now() + WAIT;
        while reset() < 1.0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(reset(), 1.0, "{node}");
    }
    // A closed port is refused at once (the pod's RST finds its way back to
    // ztunnel), and counted at the destination.
    let started = std::time::Instant::now();
    let closed_port = SocketAddr::from((bed.pod("server").ipv4(), 7999));
    assert!(send(&bed, "client", closed_port, "nobody").is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a closed port took {:?} to refuse",
        started.elapsed()
    );
    assert_eq!(
        value(
            &scrape(&bed, "b"),
            "ambit_connection_failures_total",
            &[("reason", "connect")]
        ),
        1.0
    );
    assert_eq!(refused("b", "destination", "CONNECT"), (1.0, 1.0, 0.0));
    assert_eq!(refused("a", "source", "CONNECT"), (2.0, 2.0, 0.0));
    // A configuration that does not parse is refused, counted, and changes
    // nothing that runs.
    let good = std::fs::read_to_string(&path).expect("the config");
    std::fs::write(&path, "apiVersion: v1\nkind: [not, a, kind\n").expect("writable");
    let refused = || {
        value(
            &scrape(&bed, "a"),
            "ambit_config_rejected_updates_total",
            &[],
        )
    };
    let deadline = std::time::Instant::now() + WAIT;
    while refused() < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused() >= 1.0, "the bad configuration was counted");
    send(&bed, "client", server, "still-works").expect("the last good configuration runs");
    std::fs::write(&path, good).expect("writable");
    // Every series names workloads, never an address or a port.
    for sample in a.iter().filter(|s| s.metric.starts_with("istio_tcp_")) {
        for (key, value) in sample.labels.iter() {
            assert!(
                !value.contains(&bed.pod("client").ipv4().to_string()),
                "{key}={value}: an address in a label"
            );
        }
    }
}

/// `curl` on node `node`: the status code and the body.
fn admin(bed: &Testbed, node: &str, method: &str, path: &str) -> (u16, String) {
    let mut cmd = bed.node_command(node, "curl");
    cmd.args([
        "-s",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:15000{path}"),
    ]);
    let out = bed.run(cmd, WAIT).expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status code");
    (
        code.trim().parse().expect("a number"),
        body.trim().to_owned(),
    )
}

#[test]
fn the_log_level_changes_at_run_time_by_post_only() {
    if !privileged("the_log_level_changes_at_run_time_by_post_only") {
        return;
    }
    let (bed, path) = client_and_server("logging", &[]);
    let options = ZtunnelOptions::default();
    let zt_a = Ztunnel::start(&bed, "a", &path, &options).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &path, &options).expect("ztunnel b");
    let _quiet = start_server(&bed, "server", "echo", "[::]:7000");
    let _loud = start_server(&bed, "server", "echo", "[::]:7001");
    let server = |port| SocketAddr::from((bed.pod("server").ipv4(), port));

    assert_eq!(
        admin(&bed, "a", "GET", "/logging"),
        (200, "level=info".into())
    );
    // A GET never changes it, whatever it asks.
    let (code, body) = admin(&bed, "a", "GET", "/logging?level=access%3Doff%2Cinfo");
    assert_eq!(code, 405, "{body}");
    assert_eq!(admin(&bed, "a", "GET", "/logging").1, "level=info");
    // An invalid filter changes nothing and says why.
    let (code, body) = admin(&bed, "a", "POST", "/logging?level=access%3Dloud");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid log level"), "{body}");
    assert_eq!(admin(&bed, "a", "POST", "/logging").0, 400);

    // Access lines off: a connection now leaves none; back on: the next does.
    let (code, body) = admin(&bed, "a", "POST", "/logging?level=access%3Doff%2Cinfo");
    assert_eq!((code, body.as_str()), (200, "level=access=off,info"));
    send(&bed, "client", server(7000), "unlogged").expect("a reply");
    assert_eq!(admin(&bed, "a", "POST", "/logging?level=info").0, 200);
    send(&bed, "client", server(7001), "logged").expect("a reply");
    let to = |port: u16| {
        move |l: &serde_json::Value| {
            l["target"] == "access"
                && l["dst.addr"]
                    .as_str()
                    .is_some_and(|d| d.ends_with(&format!(":{port}")))
        }
    };
    zt_a.wait_for_log(WAIT, to(7001))
        .expect("access lines are back without a restart");
    assert!(
        !zt_a.logs().iter().any(to(7000)),
        "the connection made while access lines were off was logged"
    );

    // Raised to debug, ztunnel says how it routed each connection, with the
    // connection's id, the same as in its access line.
    assert_eq!(
        admin(&bed, "a", "POST", "/logging?level=ztunnel%3Ddebug%2Cinfo").0,
        200
    );
    send(&bed, "client", server(7000), "traced").expect("a reply");
    let line = zt_a.wait_for_log(WAIT, to(7000)).expect("the access line");
    let id = line["conn_id"].clone();
    assert!(id.is_u64(), "{line}");
    let routed = zt_a
        .wait_for_log(WAIT, |l| l["message"] == "routed" && l["conn_id"] == id)
        .expect("the debug line of the route");
    assert_eq!(routed["level"], "DEBUG", "{routed}");
    assert_eq!(admin(&bed, "a", "POST", "/logging?level=info").0, 200);
}

#[test]
fn access_lines_are_sampled_but_failures_are_always_written() {
    if !privileged("access_lines_are_sampled_but_failures_are_always_written") {
        return;
    }
    let (bed, path) = client_and_server("sampling", &[]);
    let sampled = ZtunnelOptions {
        env: vec![("AMBIT_ACCESS_LOG_SAMPLE".into(), "0".into())],
        ..ZtunnelOptions::default()
    };
    let zt_a = Ztunnel::start(&bed, "a", &path, &sampled).expect("ztunnel a");
    let zt_b = Ztunnel::start(&bed, "b", &path, &ZtunnelOptions::default()).expect("ztunnel b");
    let _echo = start_server(&bed, "server", "echo", "[::]:7000");
    let server = |port| SocketAddr::from((bed.pod("server").ipv4(), port));
    for i in 0..5 {
        send(&bed, "client", server(7000), &format!("sampled-{i}")).expect("a reply");
    }
    // A failure: always written.
    assert!(send(&bed, "client", server(7999), "closed").is_err());
    let failed = zt_a
        .wait_for_log(WAIT, |l| l["target"] == "access" && l["error"] != "")
        .expect("the failed connection is written at a");
    assert!(
        failed["dst.addr"]
            .as_str()
            .is_some_and(|d| d.ends_with(":7999")),
        "{failed}"
    );
    // Node b (every line) wrote all five; node a (none) wrote no success.
    let complete = |zt: &Ztunnel| {
        zt.logs()
            .iter()
            .filter(|l| l["target"] == "access" && l["error"] == "")
            .count()
    };
    zt_b.wait_for_log(WAIT, |_| complete(&zt_b) >= 5)
        .expect("node b logged every connection");
    assert_eq!(complete(&zt_a), 0, "node a sampled at 0");
    // The metrics still count every connection.
    let a = scrape(&bed, "a");
    assert_eq!(
        value(
            &a,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", "server"),
                ("response_flags", "-")
            ]
        ),
        5.0
    );
}

#[test]
fn spans_are_exported_over_otlp_in_the_connections_trace() {
    if !privileged("spans_are_exported_over_otlp_in_the_connections_trace") {
        return;
    }
    let (bed, path) = client_and_server("otlp", &[]);
    // The collector, in the control plane (reachable from both nodes).
    let collector_addr = SocketAddr::from((ambit_tests::testbed::CONTROL_PLANE_V4, 4317));
    let mut cmd = bed.control_plane_command(ambit_tests::waypoint::httpbin_binary());
    cmd.args(["otlp-collector", &collector_addr.to_string()]);
    let collector = bed.spawn(cmd).expect("the collector starts");
    collector
        .wait_for_line("listening", WAIT)
        .expect("the collector listens");
    let options = ZtunnelOptions {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{collector_addr}"),
            ),
            // Batches leave every 200 ms instead of 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ],
        ..ZtunnelOptions::default()
    };
    let zt_a = Ztunnel::start(&bed, "a", &path, &options).expect("ztunnel a");
    let _zt_b = Ztunnel::start(&bed, "b", &path, &options).expect("ztunnel b");
    let _echo = start_server(&bed, "server", "echo", "[::]:7000");
    let server = SocketAddr::from((bed.pod("server").ipv4(), 7000));
    send(&bed, "client", server, "traced").expect("a reply");
    let access = zt_a
        .wait_for_log(WAIT, |l| {
            l["target"] == "access" && l["direction"] == "outbound"
        })
        .expect("the outbound access line");
    let trace_id = access["trace_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(trace_id.len(), 32, "{access}");
    // The spans of the connection, from both nodes, in its trace: the
    // client's connection span (a child of the trace's root, which the
    // CONNECT started), its tunnel span, and the destination's connection
    // span, a child of the tunnel's.
    let mut spans: Vec<serde_json::Value> = Vec::new();
    let wanted = |spans: &[serde_json::Value]| {
        let find = |name: &str, direction: Option<&str>| {
            spans
                .iter()
                .find(|s| {
                    s["name"] == name && direction.is_none_or(|d| s["attributes"]["direction"] == d)
                })
                .cloned()
        };
        Some((
            find("connection", Some("outbound"))?,
            find("tunnel", None)?,
            find("connection", Some("inbound"))?,
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (outbound, tunnel, inbound) = loop {
        if let Some(found) = wanted(&spans) {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection's spans were not all exported: {spans:#?}"
        );
        let line = collector
            .wait_for_line("span ", Duration::from_secs(20))
            .unwrap_or_else(|e| {
                panic!(
                    "no span: {e}\ncollector: {:?}\n{}",
                    collector.stderr(),
                    zt_a.stderr()
                        .lines()
                        .filter(|l| !l.contains("ztunnel::"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
        let span: serde_json::Value =
            serde_json::from_str(line.trim_start_matches("span ")).expect("JSON");
        if span["trace_id"] == trace_id.as_str() {
            spans.push(span);
        }
    };
    assert_eq!(outbound["service"], "ztunnel", "{outbound}");
    assert_eq!(
        outbound["attributes"]["conn_id"],
        access["conn_id"].to_string(),
        "the span is the access line's connection: {outbound}"
    );
    assert_eq!(
        outbound["attributes"]["dst"],
        server.to_string(),
        "{outbound}"
    );
    assert_eq!(tunnel["parent_span_id"], outbound["span_id"], "{tunnel}");
    assert_eq!(
        inbound["parent_span_id"], tunnel["span_id"],
        "the destination's span is the tunnel's child: {inbound}"
    );
}
