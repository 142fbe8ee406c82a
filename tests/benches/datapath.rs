//! The data path measured side by side in one run on one testbed, as ratios
//! against a no-mesh baseline (this machine is shared and noisy).
//!
//! Scenarios, each `ROUNDS` times, alternating, medians reported:
//! - `baseline`: plain TCP from a pod on node a to a pod on node b;
//! - `mesh`: the same pods enrolled: capture + HBONE (mTLS) through both ztunnels;
//! - `mesh_no_sockmap`: the same with the sk_msg loopback shortcut off;
//! - `loopback_on` / `loopback_off`: an enrolled client to a non-enrolled server
//!   on its own node, isolating the app -> ztunnel hop (sockmap on vs off).
//!
//! `cargo bench -p ambit-tests --bench datapath` (needs root and a release
//! ztunnel: `cargo build --release -p ztunnel`).

use std::{net::SocketAddr, path::Path, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions},
    privileged,
};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
const ROUNDS: usize = 3;
const BULK_SECONDS: &str = "2";
const RR_COUNT: &str = "3000";
const CRR_COUNT: &str = "500";
const RR_RATE: &str = "2000";

#[derive(Debug, Clone, Copy)]
struct Sample {
    gbps: f64,
    rr1k_p50: f64,
    rr1k_p99: f64,
    rr1_p50: f64,
    crr: f64,
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
        .run(cmd, Duration::from_secs(120))
        .expect("load tool runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn measure(bed: &Testbed, pod: &str, sink: SocketAddr, echo: SocketAddr) -> Sample {
    let (sink, echo) = (sink.to_string(), echo.to_string());
    let bulk = run(bed, pod, &["bulk", &sink, BULK_SECONDS, "65536"]);
    let rr1k = run(bed, pod, &["rr", &sink, RR_COUNT, "1024", RR_RATE]);
    let rr1 = run(bed, pod, &["rr", &sink, RR_COUNT, "1", RR_RATE]);
    let crr = run(bed, pod, &["crr", &echo, CRR_COUNT]);
    Sample {
        gbps: field(&bulk, "gbps"),
        rr1k_p50: field(&rr1k, "p50_us"),
        rr1k_p99: field(&rr1k, "p99_us"),
        rr1_p50: field(&rr1, "p50_us"),
        crr: field(&crr, "per_s"),
    }
}

fn median(samples: &[Sample], pick: fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(pick).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn with_ztunnels<T>(bed: &Testbed, config: &Path, sockmap: bool, f: impl FnOnce() -> T) -> T {
    let options = ZtunnelOptions {
        sockmap,
        drain: Duration::from_secs(1),
        ..ZtunnelOptions::default()
    };
    let mut zts: Vec<Ztunnel> = ["a", "b"]
        .iter()
        .map(|n| Ztunnel::start(bed, n, config, &options).expect("ztunnel starts"))
        .collect();
    let result = f();
    for zt in &mut zts {
        zt.stop(Duration::from_secs(10)).expect("ztunnel stops");
    }
    result
}

fn main() {
    if !privileged("datapath benchmark") {
        return;
    }
    let bed = Testbed::builder("bench_datapath")
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("plainclient", "a")
        .pod("localserver", "a")
        .pod("server", "b")
        .pod("plainserver", "b")
        .build()
        .expect("testbed builds");
    let config = bed.workdir().join("mesh.yaml");
    MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", false)
        .pod("client", "demo")
        .pod("server", "demo")
        .pod("plainclient", "plain")
        .pod("plainserver", "plain")
        .pod("localserver", "plain")
        .write(&bed, &config)
        .expect("config written");
    let mut servers = Vec::new();
    for pod in ["server", "plainserver", "localserver"] {
        for (mode, port) in [("sink", "7100"), ("echo", "7000")] {
            let mut cmd = bed.pod_command(pod, TESTBIN);
            cmd.args([mode, &format!("0.0.0.0:{port}")]);
            let server = bed.spawn(cmd).expect("server starts");
            server
                .wait_for_line("listening", Duration::from_secs(10))
                .expect("server listens");
            servers.push(server);
        }
    }
    let addr = |pod: &str, port: u16| SocketAddr::from((bed.pod(pod).ipv4(), port));

    let names = [
        "baseline",
        "mesh",
        "mesh_no_sockmap",
        "loopback_on",
        "loopback_off",
    ];
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        // The baseline runs with no ztunnel at all.
        results[0].push(measure(
            &bed,
            "plainclient",
            addr("plainserver", 7100),
            addr("plainserver", 7000),
        ));
        for (sockmap, mesh_index, loop_index) in [(true, 1, 3), (false, 2, 4)] {
            with_ztunnels(&bed, &config, sockmap, || {
                results[mesh_index].push(measure(
                    &bed,
                    "client",
                    addr("server", 7100),
                    addr("server", 7000),
                ));
                results[loop_index].push(measure(
                    &bed,
                    "client",
                    addr("localserver", 7100),
                    addr("localserver", 7000),
                ));
            });
        }
    }

    println!("scenario          Gbit/s(64KiB)  1KiB-rr p50/p99 us   1B-rr p50 us   conn/s");
    for (name, samples) in names.iter().zip(&results) {
        println!(
            "{name:<17} {:>8.2}      {:>7.1} / {:>7.1}   {:>9.1}   {:>8.0}",
            median(samples, |s| s.gbps),
            median(samples, |s| s.rr1k_p50),
            median(samples, |s| s.rr1k_p99),
            median(samples, |s| s.rr1_p50),
            median(samples, |s| s.crr),
        );
    }
    let m = |i: usize, pick: fn(&Sample) -> f64| median(&results[i], pick);
    println!(
        "mesh vs baseline: throughput x{:.2}, added 1KiB rr p50 {:+.1} us, p99 {:+.1} us, connections/s x{:.2}",
        m(1, |s| s.gbps) / m(0, |s| s.gbps),
        m(1, |s| s.rr1k_p50) - m(0, |s| s.rr1k_p50),
        m(1, |s| s.rr1k_p99) - m(0, |s| s.rr1k_p99),
        m(1, |s| s.crr) / m(0, |s| s.crr),
    );
    println!(
        "sockmap on/off (loopback hop): throughput x{:.2}, 1B rr p50 x{:.2}; (cross-node mesh): throughput x{:.2}",
        m(3, |s| s.gbps) / m(4, |s| s.gbps),
        m(3, |s| s.rr1_p50) / m(4, |s| s.rr1_p50),
        m(1, |s| s.gbps) / m(2, |s| s.gbps),
    );
}
