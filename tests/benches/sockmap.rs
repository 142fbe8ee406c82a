//! The app -> ztunnel loopback hop with the `sk_msg` shortcut on vs off, measured
//! side by side in one run on one testbed, against a no-mesh baseline.
//!
//! Path: a client in an enrolled pod -> (loopback, sockmap on or off) -> ztunnel
//! -> a server in a non-enrolled pod of the same node. Each scenario runs
//! `ROUNDS` times, alternating, and the median is reported. Needs root.
//!
//! `cargo bench -p ambit-tests --bench sockmap` (after `cargo xtask build`).

use std::{net::SocketAddr, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions},
    privileged,
};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const ROUNDS: usize = 3;
const BULK_SECONDS: &str = "2";
const RR_COUNT: &str = "5000";

#[derive(Debug, Default, Clone)]
struct Sample {
    gbps_64k: f64,
    rr1_p50: f64,
    rr1_p99: f64,
    rr1k_p50: f64,
    rr1k_p99: f64,
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn run(bed: &Testbed, pod: &str, args: &[&str]) -> String {
    let mut cmd = bed.pod_command(pod, TESTBIN);
    cmd.args(args);
    let out = bed
        .run(cmd, Duration::from_secs(60))
        .expect("load tool runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn measure(bed: &Testbed, pod: &str, dst: SocketAddr) -> Sample {
    let dst = dst.to_string();
    let bulk = run(bed, pod, &["bulk", &dst, BULK_SECONDS, "65536"]);
    let rr1 = run(bed, pod, &["rr", &dst, RR_COUNT, "1"]);
    let rr1k = run(bed, pod, &["rr", &dst, RR_COUNT, "1024"]);
    Sample {
        gbps_64k: field(&bulk, "gbps"),
        rr1_p50: field(&rr1, "p50_us"),
        rr1_p99: field(&rr1, "p99_us"),
        rr1k_p50: field(&rr1k, "p50_us"),
        rr1k_p99: field(&rr1k, "p99_us"),
    }
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    if !privileged("sockmap benchmark") {
        return;
    }
    let bed = Testbed::builder("bench_sockmap")
        .node("a")
        .pod("client", "a")
        .pod("plainclient", "a")
        .pod("server", "a")
        .build()
        .expect("testbed builds");
    let config = bed.workdir().join("mesh.yaml");
    MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", false)
        .pod("client", "demo")
        .pod("plainclient", "plain")
        .pod("server", "plain")
        .write(&bed, &config)
        .expect("config written");
    let mut server = bed.pod_command("server", TESTBIN);
    server.args(["sink", "0.0.0.0:7100"]);
    let server = bed.spawn(server).expect("sink starts");
    server
        .wait_for_line("listening", Duration::from_secs(10))
        .expect("sink listens");
    let dst = SocketAddr::from((bed.pod("server").ipv4(), 7100));

    let mut results: Vec<(&str, Vec<Sample>)> = vec![
        ("baseline", vec![]),
        ("sockmap_on", vec![]),
        ("sockmap_off", vec![]),
    ];
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        results[0].1.push(measure(&bed, "plainclient", dst));
        for (index, sockmap) in [(1, true), (2, false)] {
            let options = ZtunnelOptions {
                sockmap,
                drain: Duration::from_secs(1),
                ..ZtunnelOptions::default()
            };
            let mut zt = Ztunnel::start(&bed, "a", &config, &options).expect("ztunnel starts");
            results[index].1.push(measure(&bed, "client", dst));
            zt.stop(Duration::from_secs(10)).expect("ztunnel stops");
        }
    }

    println!("scenario      64KiB-writes Gbit/s (min-max)   1B rr p50/p99 us   1KiB rr p50/p99 us");
    let mut medians = Vec::new();
    for (name, samples) in &results {
        let g = median(samples.iter().map(|s| s.gbps_64k).collect());
        let r1 = (
            median(samples.iter().map(|s| s.rr1_p50).collect()).0,
            median(samples.iter().map(|s| s.rr1_p99).collect()).0,
        );
        let rk = (
            median(samples.iter().map(|s| s.rr1k_p50).collect()).0,
            median(samples.iter().map(|s| s.rr1k_p99).collect()).0,
        );
        println!(
            "{name:<13} {:>8.2} ({:.2}-{:.2})          {:>6.1} / {:>6.1}      {:>6.1} / {:>6.1}",
            g.0, g.1, g.2, r1.0, r1.1, rk.0, rk.1
        );
        medians.push((g.0, r1, rk));
    }
    let (on, off) = (&medians[1], &medians[2]);
    println!(
        "sockmap on/off: throughput x{:.2}, 1B rr p50 x{:.2} p99 x{:.2}, 1KiB rr p50 x{:.2} p99 x{:.2} (latency: <1 is faster)",
        on.0 / off.0,
        on.1.0 / off.1.0,
        on.1.1 / off.1.1,
        on.2.0 / off.2.0,
        on.2.1 / off.2.1
    );
}
