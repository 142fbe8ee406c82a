//! What a benchmark run found: per-scenario medians and runs, the ratios
//! against the baseline, the targets, and their renderings (`bench.json`,
//! `bench.md`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    host::Machine,
    scenario::{
        BASELINE, LOOPBACK_OFF, LOOPBACK_ON, MESH, MESH_HTTP, MESH_NO_SOCKMAP, MESH_VARIANT,
        MESH_WAYPOINT,
    },
    stats,
};

/// A measured quantity, keyed by its `bench.json` field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The field name in `bench.json` (its runs are under `<key>_runs`).
    pub key: &'static str,
    /// What it is, for the table.
    pub label: &'static str,
    /// Decimals shown in the table.
    pub decimals: usize,
}

/// Single-stream bulk throughput (iperf3), Gbit/s.
pub const THROUGHPUT: &str = "throughput_gbps";
/// Bulk throughput of 4 parallel iperf3 streams together, Gbit/s.
pub const THROUGHPUT_P4: &str = "throughput_p4_gbps";
/// The same with 16 streams.
pub const THROUGHPUT_P16: &str = "throughput_p16_gbps";
/// 1 KiB request/response latency at a fixed rate, percentiles in µs.
pub const RR_P50: &str = "rr_p50_us";
/// See [`RR_P50`].
pub const RR_P90: &str = "rr_p90_us";
/// See [`RR_P50`].
pub const RR_P99: &str = "rr_p99_us";
/// See [`RR_P50`].
pub const RR_P999: &str = "rr_p999_us";
/// 1-byte request/response latency at a fixed rate, percentiles in µs.
pub const RR1_P50: &str = "rr_1b_p50_us";
/// See [`RR1_P50`].
pub const RR1_P90: &str = "rr_1b_p90_us";
/// See [`RR1_P50`].
pub const RR1_P99: &str = "rr_1b_p99_us";
/// See [`RR1_P50`].
pub const RR1_P999: &str = "rr_1b_p999_us";
/// New connections per second (connect, one request, close).
pub const CRR: &str = "crr_per_s";
/// HTTP/1.1 keep-alive requests per second, closed loop (h2load, 16
/// connections).
pub const HTTP1_RPS: &str = "http1_rps";
/// HTTP/2 requests per second, closed loop (h2load, 4 connections of 4
/// streams).
pub const HTTP2_RPS: &str = "http2_rps";
/// HTTP/1.1 keep-alive latency at a fixed 1,000 requests/s, percentiles in
/// µs.
pub const HTTP1_P50: &str = "http1_p50_us";
/// See [`HTTP1_P50`].
pub const HTTP1_P99: &str = "http1_p99_us";
/// HTTP/2 latency at a fixed 1,000 requests/s, percentiles in µs.
pub const HTTP2_P50: &str = "http2_p50_us";
/// See [`HTTP2_P50`].
pub const HTTP2_P99: &str = "http2_p99_us";
/// CPU seconds (user + system) of both ztunnels per 1,000 HTTP requests,
/// over the fixed-rate runs of both protocols.
pub const ZTUNNEL_CPU_PER_1K: &str = "ztunnel_cpu_s_per_1k_req";
/// CPU seconds of the waypoint per 1,000 HTTP requests, over the fixed-rate
/// runs of both protocols.
pub const WAYPOINT_CPU_PER_1K: &str = "waypoint_cpu_s_per_1k_req";
/// Cores the waypoint kept busy during the closed-loop runs (CPU seconds
/// per second; near 1 with one worker thread means the waypoint was the
/// bottleneck).
pub const WAYPOINT_CORES_AT_MAX: &str = "waypoint_cores_at_max";
/// HTTP/1.1 requests/s per core the waypoint kept busy in the closed-loop
/// run: the rate one worker thread sustains when the waypoint alone is the
/// limit. On this 2-core machine the load tool, httpbin and both ztunnels
/// share the cores with it, so the closed loop itself stops short of that.
pub const WAYPOINT_HTTP1_PER_CORE: &str = "waypoint_http1_rps_per_core";
/// The same for HTTP/2.
pub const WAYPOINT_HTTP2_PER_CORE: &str = "waypoint_http2_rps_per_core";
/// The waypoint's largest resident memory during the fixed-rate runs, MiB.
pub const WAYPOINT_RSS: &str = "waypoint_rss_mib";
/// Its anonymous part (heap and stacks), MiB.
pub const WAYPOINT_RSS_ANON: &str = "waypoint_rss_anon_mib";
/// ztunnel CPU seconds (both nodes, user + system) per GiB of bulk transfer.
pub const CPU_PER_GIB: &str = "cpu_s_per_gib";
/// The same with 4 parallel streams.
pub const CPU_PER_GIB_P4: &str = "cpu_s_per_gib_p4";
/// The same with 16 parallel streams.
pub const CPU_PER_GIB_P16: &str = "cpu_s_per_gib_p16";
/// ztunnel resident memory with enrolled pods and no traffic (the larger
/// node's), MiB.
pub const RSS_IDLE: &str = "rss_idle_mib";
/// Of [`RSS_IDLE`], the anonymous part (heap and stacks; the rest is the
/// binary's pages mapped from the page cache, shared and reclaimable), MiB.
pub const RSS_IDLE_ANON: &str = "rss_idle_anon_mib";
/// ztunnel resident memory per idle proxied connection (the larger node's),
/// KiB.
pub const RSS_PER_CONN: &str = "rss_kib_per_conn";
/// ztunnel resident memory (the larger node's) while holding this many idle
/// proxied connections, MiB: the counts a run holds, in order.
pub const RSS_HELD: [(u32, &str); 4] = [
    (1, "rss_mib_1_conn"),
    (100, "rss_mib_100_conns"),
    (1_000, "rss_mib_1000_conns"),
    (10_000, "rss_mib_10000_conns"),
];

/// Connections of the latency-under-load runs.
pub const LOAD_CONNECTIONS: u32 = 16;
/// The latency-under-load runs: (offered requests/s, its p50, p99 and p99.9
/// keys in µs, the requests/s answered), each rate run only while the one
/// before did not saturate.
pub const LOAD_RATES: [LoadKeys; 3] = [
    LoadKeys {
        rate: 1_000,
        p50: "load_1k_p50_us",
        p99: "load_1k_p99_us",
        p999: "load_1k_p999_us",
        achieved: "load_1k_achieved_per_s",
    },
    LoadKeys {
        rate: 5_000,
        p50: "load_5k_p50_us",
        p99: "load_5k_p99_us",
        p999: "load_5k_p999_us",
        achieved: "load_5k_achieved_per_s",
    },
    LoadKeys {
        rate: 20_000,
        p50: "load_20k_p50_us",
        p99: "load_20k_p99_us",
        p999: "load_20k_p999_us",
        achieved: "load_20k_achieved_per_s",
    },
];

/// The metric keys of one offered rate of the latency-under-load runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadKeys {
    /// Offered requests per second, over all connections.
    pub rate: u32,
    /// p50 from the intended send time, µs.
    pub p50: &'static str,
    /// p99, µs.
    pub p99: &'static str,
    /// p99.9, µs.
    pub p999: &'static str,
    /// Requests answered per second.
    pub achieved: &'static str,
}

/// A run answered fewer than this share of the offered rate: saturated.
pub const SATURATED_BELOW: f64 = 0.9;

/// ztunnel resident memory (the larger node's) 12 s after the largest count
/// of held connections closed, MiB: what a burst leaves behind.
pub const RSS_AFTER_RELEASE: &str = "rss_mib_after_release";

/// Bulk transfer into a reader that sleeps (16 KiB per millisecond), the
/// first round only: how far the node's TCP memory (`/proc/net/sockstat`,
/// `TCP: mem`) rose above where it was, at its peak, MiB.
pub const SLOW_TCP_MEM_PEAK: &str = "slow_receiver_tcp_mem_peak_mib";
/// The same transfer: MiB the slow reader took.
pub const SLOW_MIB: &str = "slow_receiver_mib";

/// CPU time the hypervisor ran something else on the machine's virtual CPUs
/// (`steal` of `/proc/stat`, all CPUs) during the 1 KiB and 1 B
/// request/response runs, ms: a round whose p99 stands out with much of it
/// measured the machine.
pub const RR_STEAL_MS: &str = "rr_steal_ms";

/// Every metric, in table order.
pub const METRICS: [Metric; 51] = [
    metric(THROUGHPUT, "bulk throughput, Gbit/s", 2),
    metric(THROUGHPUT_P4, "bulk throughput, 4 streams, Gbit/s", 2),
    metric(THROUGHPUT_P16, "bulk throughput, 16 streams, Gbit/s", 2),
    metric(RR_P50, "1 KiB RR p50, µs", 1),
    metric(RR_P90, "1 KiB RR p90, µs", 1),
    metric(RR_P99, "1 KiB RR p99, µs", 1),
    metric(RR_P999, "1 KiB RR p99.9, µs", 1),
    metric(RR1_P50, "1 B RR p50, µs", 1),
    metric(RR1_P90, "1 B RR p90, µs", 1),
    metric(RR1_P99, "1 B RR p99, µs", 1),
    metric(RR1_P999, "1 B RR p99.9, µs", 1),
    metric(
        RR_STEAL_MS,
        "CPU stolen by the hypervisor during the RR runs, ms",
        0,
    ),
    metric(LOAD_RATES[0].p50, "1 KiB RR x16 conns at 1k/s, p50 µs", 1),
    metric(LOAD_RATES[0].p99, "1 KiB RR x16 conns at 1k/s, p99 µs", 1),
    metric(
        LOAD_RATES[0].p999,
        "1 KiB RR x16 conns at 1k/s, p99.9 µs",
        1,
    ),
    metric(
        LOAD_RATES[0].achieved,
        "1 KiB RR x16 conns at 1k/s, answered/s",
        0,
    ),
    metric(LOAD_RATES[1].p50, "1 KiB RR x16 conns at 5k/s, p50 µs", 1),
    metric(LOAD_RATES[1].p99, "1 KiB RR x16 conns at 5k/s, p99 µs", 1),
    metric(
        LOAD_RATES[1].p999,
        "1 KiB RR x16 conns at 5k/s, p99.9 µs",
        1,
    ),
    metric(
        LOAD_RATES[1].achieved,
        "1 KiB RR x16 conns at 5k/s, answered/s",
        0,
    ),
    metric(LOAD_RATES[2].p50, "1 KiB RR x16 conns at 20k/s, p50 µs", 1),
    metric(LOAD_RATES[2].p99, "1 KiB RR x16 conns at 20k/s, p99 µs", 1),
    metric(
        LOAD_RATES[2].p999,
        "1 KiB RR x16 conns at 20k/s, p99.9 µs",
        1,
    ),
    metric(
        LOAD_RATES[2].achieved,
        "1 KiB RR x16 conns at 20k/s, answered/s",
        0,
    ),
    metric(CRR, "new connections/s", 0),
    metric(HTTP1_RPS, "HTTP/1.1 requests/s, closed loop", 0),
    metric(HTTP2_RPS, "HTTP/2 requests/s, closed loop", 0),
    metric(HTTP1_P50, "HTTP/1.1 p50 at 1,000 req/s, µs", 1),
    metric(HTTP1_P99, "HTTP/1.1 p99 at 1,000 req/s, µs", 1),
    metric(HTTP2_P50, "HTTP/2 p50 at 1,000 req/s, µs", 1),
    metric(HTTP2_P99, "HTTP/2 p99 at 1,000 req/s, µs", 1),
    metric(CPU_PER_GIB, "ztunnel CPU s/GiB", 2),
    metric(CPU_PER_GIB_P4, "ztunnel CPU s/GiB, 4 streams", 2),
    metric(CPU_PER_GIB_P16, "ztunnel CPU s/GiB, 16 streams", 2),
    metric(
        ZTUNNEL_CPU_PER_1K,
        "ztunnel CPU s per 1,000 HTTP requests",
        3,
    ),
    metric(RSS_IDLE, "ztunnel RSS idle, MiB", 1),
    metric(RSS_IDLE_ANON, "of which anonymous, MiB", 1),
    metric(RSS_PER_CONN, "ztunnel RSS per idle conn, KiB", 1),
    metric(RSS_HELD[0].1, "ztunnel RSS, 1 idle conn, MiB", 1),
    metric(RSS_HELD[1].1, "ztunnel RSS, 100 idle conns, MiB", 1),
    metric(RSS_HELD[2].1, "ztunnel RSS, 1,000 idle conns, MiB", 1),
    metric(RSS_HELD[3].1, "ztunnel RSS, 10,000 idle conns, MiB", 1),
    metric(
        RSS_AFTER_RELEASE,
        "ztunnel RSS 12 s after the 10,000 closed, MiB",
        1,
    ),
    metric(
        SLOW_TCP_MEM_PEAK,
        "slow reader: peak rise of the node's TCP memory, MiB",
        1,
    ),
    metric(SLOW_MIB, "slow reader: MiB transferred", 0),
    metric(WAYPOINT_CPU_PER_1K, "waypoint CPU s per 1,000 requests", 3),
    metric(WAYPOINT_CORES_AT_MAX, "waypoint cores busy, closed loop", 2),
    metric(
        WAYPOINT_HTTP1_PER_CORE,
        "waypoint HTTP/1.1 requests/s per busy core",
        0,
    ),
    metric(
        WAYPOINT_HTTP2_PER_CORE,
        "waypoint HTTP/2 requests/s per busy core",
        0,
    ),
    metric(WAYPOINT_RSS, "waypoint RSS at 1,000 req/s, MiB", 1),
    metric(WAYPOINT_RSS_ANON, "of which anonymous, MiB", 1),
];

const fn metric(key: &'static str, label: &'static str, decimals: usize) -> Metric {
    Metric {
        key,
        label,
        decimals,
    }
}

/// The runs of one scenario: every metric's value per round.
#[derive(Debug, Clone, Default)]
pub struct Runs(BTreeMap<&'static str, Vec<f64>>);

impl Runs {
    /// Adds one round's value of `key`.
    pub fn push(&mut self, key: &'static str, value: f64) {
        debug_assert!(METRICS.iter().any(|m| m.key == key), "unknown metric {key}");
        self.0.entry(key).or_default().push(value);
    }

    /// Every value of `key` so far.
    pub fn values(&self, key: &str) -> &[f64] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// The median of `key`, when measured.
    pub fn median(&self, key: &str) -> Option<f64> {
        stats::median(self.values(key))
    }
}

/// How a scenario of the run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Measured: its runs.
    Measured(Runs),
    /// Not measured, and why.
    Skipped(String),
}

/// One scenario of the report.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Its name (the key in `bench.json`).
    pub name: &'static str,
    /// What it measures.
    pub description: &'static str,
    /// Its runs, or why there are none.
    pub outcome: Outcome,
    /// Workloads that failed in some rounds (those rounds have no value for
    /// them): "<workload> failed in <n> of <rounds> rounds: <first error>".
    pub failures: Vec<String>,
}

/// The comparisons the targets are about, from the medians of one run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Ratios {
    /// Mesh bulk throughput / baseline.
    pub mesh_throughput_vs_baseline: Option<f64>,
    /// Mesh (sk_msg off) throughput of 4 parallel streams / baseline's.
    pub mesh_throughput_p4_vs_baseline: Option<f64>,
    /// The same with 16 streams.
    pub mesh_throughput_p16_vs_baseline: Option<f64>,
    /// Mesh 1 KiB RR p50 - baseline p50, µs (the two ztunnel hops).
    pub mesh_added_p50_us: Option<f64>,
    /// Mesh 1 KiB RR p99 - baseline p99, µs.
    pub mesh_added_p99_us: Option<f64>,
    /// The largest round's mesh 1 KiB RR p99 / the median round's: how
    /// stable the p99 is.
    pub mesh_p99_largest_vs_median_round: Option<f64>,
    /// The same for the baseline: how stable the machine was.
    pub baseline_p99_largest_vs_median_round: Option<f64>,
    /// Mesh new connections/s / baseline.
    pub mesh_crr_vs_baseline: Option<f64>,
    /// Loopback-hop bulk throughput with sk_msg on / off.
    pub sockmap_speedup: Option<f64>,
    /// Cross-node mesh bulk throughput with sk_msg on / off.
    pub sockmap_speedup_cross_node: Option<f64>,
    /// Mesh bulk throughput with sk_msg off / baseline.
    pub mesh_no_sockmap_throughput_vs_baseline: Option<f64>,
    /// Mesh (sk_msg off) 1 KiB RR p99 - baseline p99, µs.
    pub mesh_no_sockmap_added_p99_us: Option<f64>,
    /// Mesh (sk_msg off) p99 - baseline p99 of 1 KiB RR over 16 connections
    /// at 1,000 requests/s, µs.
    pub mesh_no_sockmap_load_1k_added_p99_us: Option<f64>,
    /// The same at 5,000 requests/s.
    pub mesh_no_sockmap_load_5k_added_p99_us: Option<f64>,
    /// The same at 20,000 requests/s.
    pub mesh_no_sockmap_load_20k_added_p99_us: Option<f64>,
    /// HTTP/1.1 p50 at 1,000 requests/s through the waypoint - straight
    /// through the ztunnels, µs.
    pub waypoint_added_http1_p50_us: Option<f64>,
    /// The same at p99.
    pub waypoint_added_http1_p99_us: Option<f64>,
    /// HTTP/2 p50 at 1,000 requests/s through the waypoint - straight
    /// through the ztunnels, µs.
    pub waypoint_added_http2_p50_us: Option<f64>,
    /// The same at p99.
    pub waypoint_added_http2_p99_us: Option<f64>,
    /// HTTP/1.1 requests/s through the waypoint / straight through the
    /// ztunnels.
    pub waypoint_http1_rps_vs_mesh: Option<f64>,
    /// The same for HTTP/2.
    pub waypoint_http2_rps_vs_mesh: Option<f64>,
}

/// The median of `key` in scenario `name`, when measured.
fn median_of(scenarios: &[ScenarioReport], name: &str, key: &str) -> Option<f64> {
    runs_of(scenarios, name)?.median(key)
}

/// The largest round's value of `key` in scenario `name` / the median
/// round's, when measured.
fn largest_vs_median(scenarios: &[ScenarioReport], name: &str, key: &str) -> Option<f64> {
    let runs = runs_of(scenarios, name)?;
    let largest = runs.values(key).iter().copied().reduce(f64::max)?;
    match runs.median(key)? {
        0.0 => None,
        median => Some(largest / median),
    }
}

/// The runs of scenario `name`, when measured.
fn runs_of<'a>(scenarios: &'a [ScenarioReport], name: &str) -> Option<&'a Runs> {
    scenarios
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match &s.outcome {
            Outcome::Measured(runs) => Some(runs),
            Outcome::Skipped(_) => None,
        })
}

impl Ratios {
    /// From the scenarios' medians; a ratio whose inputs are missing is `None`.
    pub fn compute(scenarios: &[ScenarioReport]) -> Self {
        let median = |name: &str, key: &str| median_of(scenarios, name, key);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Self {
            mesh_throughput_vs_baseline: ratio(
                median(MESH, THROUGHPUT),
                median(BASELINE, THROUGHPUT),
            ),
            mesh_throughput_p4_vs_baseline: ratio(
                median(MESH_NO_SOCKMAP, THROUGHPUT_P4),
                median(BASELINE, THROUGHPUT_P4),
            ),
            mesh_throughput_p16_vs_baseline: ratio(
                median(MESH_NO_SOCKMAP, THROUGHPUT_P16),
                median(BASELINE, THROUGHPUT_P16),
            ),
            mesh_added_p50_us: diff(median(MESH, RR_P50), median(BASELINE, RR_P50)),
            mesh_added_p99_us: diff(median(MESH, RR_P99), median(BASELINE, RR_P99)),
            mesh_p99_largest_vs_median_round: largest_vs_median(scenarios, MESH, RR_P99),
            baseline_p99_largest_vs_median_round: largest_vs_median(scenarios, BASELINE, RR_P99),
            mesh_crr_vs_baseline: ratio(median(MESH, CRR), median(BASELINE, CRR)),
            sockmap_speedup: ratio(
                median(LOOPBACK_ON, THROUGHPUT),
                median(LOOPBACK_OFF, THROUGHPUT),
            ),
            sockmap_speedup_cross_node: ratio(
                median(MESH, THROUGHPUT),
                median(MESH_NO_SOCKMAP, THROUGHPUT),
            ),
            mesh_no_sockmap_throughput_vs_baseline: ratio(
                median(MESH_NO_SOCKMAP, THROUGHPUT),
                median(BASELINE, THROUGHPUT),
            ),
            mesh_no_sockmap_added_p99_us: diff(
                median(MESH_NO_SOCKMAP, RR_P99),
                median(BASELINE, RR_P99),
            ),
            mesh_no_sockmap_load_1k_added_p99_us: diff(
                median(MESH_NO_SOCKMAP, LOAD_RATES[0].p99),
                median(BASELINE, LOAD_RATES[0].p99),
            ),
            mesh_no_sockmap_load_5k_added_p99_us: diff(
                median(MESH_NO_SOCKMAP, LOAD_RATES[1].p99),
                median(BASELINE, LOAD_RATES[1].p99),
            ),
            mesh_no_sockmap_load_20k_added_p99_us: diff(
                median(MESH_NO_SOCKMAP, LOAD_RATES[2].p99),
                median(BASELINE, LOAD_RATES[2].p99),
            ),
            waypoint_added_http1_p50_us: diff(
                median(MESH_WAYPOINT, HTTP1_P50),
                median(MESH_HTTP, HTTP1_P50),
            ),
            waypoint_added_http1_p99_us: diff(
                median(MESH_WAYPOINT, HTTP1_P99),
                median(MESH_HTTP, HTTP1_P99),
            ),
            waypoint_added_http2_p50_us: diff(
                median(MESH_WAYPOINT, HTTP2_P50),
                median(MESH_HTTP, HTTP2_P50),
            ),
            waypoint_added_http2_p99_us: diff(
                median(MESH_WAYPOINT, HTTP2_P99),
                median(MESH_HTTP, HTTP2_P99),
            ),
            waypoint_http1_rps_vs_mesh: ratio(
                median(MESH_WAYPOINT, HTTP1_RPS),
                median(MESH_HTTP, HTTP1_RPS),
            ),
            waypoint_http2_rps_vs_mesh: ratio(
                median(MESH_WAYPOINT, HTTP2_RPS),
                median(MESH_HTTP, HTTP2_RPS),
            ),
        }
    }
}

/// One target of the issue and where this run stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Target {
    /// What is compared (a `ratios` field, or `<scenario>.<metric>`).
    pub name: String,
    /// The target in words.
    pub description: &'static str,
    /// `>=` or `<=`.
    pub comparison: &'static str,
    /// The limit.
    pub limit: f64,
    /// This run's value, when measured.
    pub value: Option<f64>,
    /// `pass`, `miss` or `not measured`.
    pub status: &'static str,
}

impl Target {
    fn new(
        name: &str,
        description: &'static str,
        at_least: bool,
        limit: f64,
        value: Option<f64>,
    ) -> Self {
        let status = match value {
            None => "not measured",
            Some(v) if (at_least && v >= limit) || (!at_least && v <= limit) => "pass",
            Some(_) => "miss",
        };
        Self {
            name: name.to_owned(),
            description,
            comparison: if at_least { ">=" } else { "<=" },
            limit,
            value,
            status,
        }
    }
}

/// The targets, against this run's ratios and the `mesh` and
/// `mesh_waypoint` scenarios.
pub fn targets(scenarios: &[ScenarioReport], ratios: &Ratios) -> Vec<Target> {
    let mesh = |key: &str| median_of(scenarios, MESH, key);
    let waypoint = |key: &str| median_of(scenarios, MESH_WAYPOINT, key);
    vec![
        Target::new(
            "mesh_throughput_vs_baseline",
            "mesh single-stream throughput, cross node, at least 0.5x the baseline",
            true,
            0.5,
            ratios.mesh_throughput_vs_baseline,
        ),
        Target::new(
            "mesh_added_p50_us",
            "p50 added by the two ztunnel hops at 1 KiB RR, 2,000 req/s, at most 80 µs",
            false,
            80.0,
            ratios.mesh_added_p50_us,
        ),
        Target::new(
            "mesh_added_p99_us",
            "p99 added by the two ztunnel hops at 1 KiB RR, 2,000 req/s, at most 150 µs",
            false,
            150.0,
            ratios.mesh_added_p99_us,
        ),
        Target::new(
            "mesh_p99_largest_vs_median_round",
            "the 1 KiB RR p99 stable: the largest round's at most 1.5x the median round's",
            false,
            1.5,
            ratios.mesh_p99_largest_vs_median_round,
        ),
        Target::new(
            "mesh_crr_vs_baseline",
            "new connections/s at least 0.4x the baseline",
            true,
            0.4,
            ratios.mesh_crr_vs_baseline,
        ),
        Target::new(
            &format!("{MESH}.{CPU_PER_GIB}"),
            "CPU of both ztunnels at most 2.0 s per GiB of bulk transfer",
            false,
            2.0,
            mesh(CPU_PER_GIB),
        ),
        Target::new(
            &format!("{MESH}.{RSS_IDLE}"),
            "ztunnel RSS idle at most 14 MiB",
            false,
            14.0,
            mesh(RSS_IDLE),
        ),
        Target::new(
            &format!("{MESH}.{RSS_PER_CONN}"),
            "ztunnel RSS at most 8 KiB per idle proxied connection (10,000 held)",
            false,
            8.0,
            mesh(RSS_PER_CONN),
        ),
        Target::new(
            "sockmap_speedup",
            "sk_msg speedup of loopback-hop bulk transfer at least 1.5x",
            true,
            1.5,
            ratios.sockmap_speedup,
        ),
        Target::new(
            "waypoint_added_http1_p99_us",
            "p99 added by the waypoint to HTTP/1.1 keep-alive requests at 1,000 req/s, at most 0.5 ms",
            false,
            500.0,
            ratios.waypoint_added_http1_p99_us,
        ),
        Target::new(
            "waypoint_added_http2_p99_us",
            "p99 added by the waypoint to HTTP/2 requests at 1,000 req/s, at most 0.5 ms",
            false,
            500.0,
            ratios.waypoint_added_http2_p99_us,
        ),
        Target::new(
            &format!("{MESH_WAYPOINT}.{WAYPOINT_HTTP1_PER_CORE}"),
            "one waypoint worker thread sustains at least 20,000 HTTP/1.1 requests/s with JWT validation (closed-loop requests/s per core the waypoint kept busy)",
            true,
            20_000.0,
            waypoint(WAYPOINT_HTTP1_PER_CORE),
        ),
        Target::new(
            &format!("{MESH_WAYPOINT}.{WAYPOINT_HTTP2_PER_CORE}"),
            "one waypoint worker thread sustains at least 20,000 HTTP/2 requests/s with JWT validation (closed-loop requests/s per core the waypoint kept busy)",
            true,
            20_000.0,
            waypoint(WAYPOINT_HTTP2_PER_CORE),
        ),
        Target::new(
            &format!("{MESH_WAYPOINT}.{WAYPOINT_RSS}"),
            "waypoint RSS at 1,000 req/s at most 30 MiB",
            false,
            30.0,
            waypoint(WAYPOINT_RSS),
        ),
    ]
}

/// What `--variant` compares, round by round: `mesh_variant` against
/// `mesh_no_sockmap`.
pub const VARIANT_METRICS: [&str; 8] = [
    THROUGHPUT,
    CPU_PER_GIB,
    RR_P50,
    RR_P99,
    RR1_P50,
    CRR,
    RSS_IDLE,
    RSS_PER_CONN,
];

/// One metric of `mesh_variant` against `mesh_no_sockmap`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VariantRow {
    /// The metric's key.
    pub metric: &'static str,
    /// `mesh_no_sockmap`'s median.
    pub reference: Option<f64>,
    /// `mesh_variant`'s median.
    pub variant: Option<f64>,
    /// variant / reference of each round; empty when the two do not pair up
    /// round by round (a workload failed in some round of one of them).
    pub per_round: Vec<f64>,
}

impl VariantRow {
    /// Every [`VARIANT_METRICS`] row, when both scenarios were measured.
    pub fn compute(scenarios: &[ScenarioReport]) -> Vec<Self> {
        let (Some(reference), Some(variant)) = (
            runs_of(scenarios, MESH_NO_SOCKMAP),
            runs_of(scenarios, MESH_VARIANT),
        ) else {
            return Vec::new();
        };
        VARIANT_METRICS
            .iter()
            .map(|&metric| {
                let (a, b) = (reference.values(metric), variant.values(metric));
                let per_round = if a.len() == b.len() {
                    a.iter()
                        .zip(b)
                        .filter(|(a, _)| **a != 0.0)
                        .map(|(a, b)| b / a)
                        .collect()
                } else {
                    Vec::new()
                };
                Self {
                    metric,
                    reference: reference.median(metric),
                    variant: variant.median(metric),
                    per_round,
                }
            })
            .collect()
    }
}

/// Everything `bench.json` and `bench.md` say.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The commit measured, when known.
    pub commit: Option<String>,
    /// The run's settings (rounds, durations, rates), as JSON.
    pub settings: Value,
    /// How long the run took, in seconds.
    pub duration_s: f64,
    /// Every scenario, in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// Things a reader should know (what is not measured yet, and why).
    pub notes: Vec<String>,
    /// `--variant` ("KEY=VALUE, ..."; empty when not given).
    pub variant: String,
}

impl Report {
    /// The ratios of this run.
    pub fn ratios(&self) -> Ratios {
        Ratios::compute(&self.scenarios)
    }

    /// `bench.json`: per scenario each metric's median (`null` when not
    /// measured) and its runs under `<metric>_runs`, then the ratios and the
    /// targets.
    pub fn to_json(&self) -> Value {
        let mut scenarios = serde_json::Map::new();
        let mut skipped = serde_json::Map::new();
        for scenario in &self.scenarios {
            let entry = match &scenario.outcome {
                Outcome::Skipped(reason) => {
                    skipped.insert(scenario.name.to_owned(), json!(reason));
                    Value::Null
                }
                Outcome::Measured(runs) => {
                    let mut fields = serde_json::Map::new();
                    fields.insert("description".to_owned(), json!(scenario.description));
                    fields.insert("failures".to_owned(), json!(scenario.failures));
                    for metric in &METRICS {
                        let values = runs.values(metric.key);
                        fields.insert(metric.key.to_owned(), json!(runs.median(metric.key)));
                        fields.insert(format!("{}_runs", metric.key), json!(values));
                        if let Some(spread) = stats::spread(values) {
                            fields.insert(format!("{}_spread", metric.key), json!(spread));
                        }
                    }
                    Value::Object(fields)
                }
            };
            scenarios.insert(scenario.name.to_owned(), entry);
        }
        let ratios = self.ratios();
        json!({
            "machine": self.machine,
            "commit": self.commit,
            "settings": self.settings,
            "duration_s": self.duration_s,
            "scenarios": scenarios,
            "skipped": skipped,
            "ratios": ratios,
            "targets": targets(&self.scenarios, &ratios),
            "variant": (!self.variant.is_empty()).then(|| json!({
                "environment": self.variant,
                "against": MESH_NO_SOCKMAP,
                "metrics": VariantRow::compute(&self.scenarios),
            })),
            "notes": self.notes,
        })
    }

    /// `bench.md`: the machine, a metrics × scenarios table (median, and the
    /// range of the runs), the ratios, the targets and the notes.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# ambit benchmark\n\n");
        let m = &self.machine;
        md.push_str(&format!(
            "{} on Linux {}, {} cores ({}), {:.1} GiB; load average {:.2} before, {:.2} after; \
             commit {}; {} rounds per scenario, median and [min–max] of the rounds; took {:.0} s.\n\n",
            m.date,
            m.kernel,
            m.cores,
            m.cpu_model,
            m.memory_gib,
            m.load_before,
            m.load_after,
            self.commit.as_deref().unwrap_or("unknown"),
            self.settings["rounds"],
            self.duration_s,
        ));
        md.push_str("| metric |");
        for scenario in &self.scenarios {
            md.push_str(&format!(" {} |", scenario.name));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(self.scenarios.len()));
        md.push('\n');
        for metric in &METRICS {
            md.push_str(&format!("| {} |", metric.label));
            for scenario in &self.scenarios {
                let cell = match &scenario.outcome {
                    Outcome::Skipped(_) => "not measured".to_owned(),
                    Outcome::Measured(runs) => cell(runs.values(metric.key), metric.decimals),
                };
                md.push_str(&format!(" {cell} |"));
            }
            md.push('\n');
        }
        let skipped: Vec<_> = self
            .scenarios
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Skipped(reason) => {
                    Some(format!("- `{}` is not measured: {reason}\n", s.name))
                }
                Outcome::Measured(_) => None,
            })
            .collect();
        if !skipped.is_empty() {
            md.push('\n');
            md.push_str(&skipped.concat());
        }
        md.push_str("\n## Scenarios\n\n");
        for scenario in &self.scenarios {
            md.push_str(&format!(
                "- `{}`: {}\n",
                scenario.name, scenario.description
            ));
            for failure in &scenario.failures {
                md.push_str(&format!("  - **{failure}**\n"));
            }
        }
        let ratios = self.ratios();
        md.push_str("\n## Targets (ratios against the baseline of this run)\n\n");
        md.push_str("| target | limit | this run | status |\n|---|---:|---:|---|\n");
        for target in targets(&self.scenarios, &ratios) {
            md.push_str(&format!(
                "| {} (`{}`) | {} {} | {} | {} |\n",
                target.description,
                target.name,
                target.comparison,
                target.limit,
                target.value.map_or("-".to_owned(), |v| format!("{v:.2}")),
                target.status,
            ));
        }
        let show =
            |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
        md.push_str(&format!(
            "\nAlso: mesh added p50 at 1 KiB RR {}; with sk_msg off, throughput {} of the baseline and \
             added p99 {}; sk_msg speedup on the cross-node mesh path {}.\n",
            show(ratios.mesh_added_p50_us, " µs"),
            show(ratios.mesh_no_sockmap_throughput_vs_baseline, "x"),
            show(ratios.mesh_no_sockmap_added_p99_us, " µs"),
            show(ratios.sockmap_speedup_cross_node, "x"),
        ));
        md.push_str(&format!(
            "Latency under load (1 KiB over 16 connections, sk_msg off), added p99 at 1k/5k/20k \
             requests/s: {} / {} / {} (a rate that saturated in a round has no value there, nor \
             do the rates above it).\n",
            show(ratios.mesh_no_sockmap_load_1k_added_p99_us, " µs"),
            show(ratios.mesh_no_sockmap_load_5k_added_p99_us, " µs"),
            show(ratios.mesh_no_sockmap_load_20k_added_p99_us, " µs"),
        ));
        md.push_str(&format!(
            "Waypoint against the ztunnels alone: added p50 at 1,000 req/s {} (HTTP/1.1) and {} \
             (HTTP/2); requests/s {} (HTTP/1.1) and {} (HTTP/2).\n",
            show(ratios.waypoint_added_http1_p50_us, " µs"),
            show(ratios.waypoint_added_http2_p50_us, " µs"),
            show(ratios.waypoint_http1_rps_vs_mesh, "x"),
            show(ratios.waypoint_http2_rps_vs_mesh, "x"),
        ));
        if !self.variant.is_empty() {
            md.push_str(&self.variant_markdown());
        }
        if !self.notes.is_empty() {
            md.push_str("\n## Notes\n\n");
            for note in &self.notes {
                md.push_str(&format!("- {note}\n"));
            }
        }
        md
    }

    /// The `--variant` section: each [`VARIANT_METRICS`] median of both
    /// scenarios and the variant's ratio round by round.
    fn variant_markdown(&self) -> String {
        let mut md = format!(
            "\n## Variant: `{MESH_VARIANT}` ({}) against `{MESH_NO_SOCKMAP}`\n\n\
             Both ran in every round, one after the other (the variant second in odd rounds, \
             first in even ones); the ratio is taken in each round \
             (variant / {MESH_NO_SOCKMAP}), which the machine's drift between rounds does not \
             reach.\n\n\
             | metric | {MESH_NO_SOCKMAP} | {MESH_VARIANT} | per round, median [min–max] |\n\
             |---|---:|---:|---:|\n",
            self.variant
        );
        for row in VariantRow::compute(&self.scenarios) {
            let Some(metric) = METRICS.iter().find(|m| m.key == row.metric) else {
                continue;
            };
            let value = |v: Option<f64>| {
                v.map_or("-".to_owned(), |v| {
                    format!("{v:.prec$}", prec = metric.decimals)
                })
            };
            let ratio = if row.per_round.is_empty() {
                "rounds do not pair up".to_owned()
            } else {
                cell_in(&row.per_round, 2, "x")
            };
            md.push_str(&format!(
                "| {} | {} | {} | {ratio} |\n",
                metric.label,
                value(row.reference),
                value(row.variant)
            ));
        }
        md
    }
}

/// "median [min–max]", or "-" when not measured.
fn cell(values: &[f64], decimals: usize) -> String {
    cell_in(values, decimals, "")
}

/// "median`unit` [min–max]" (the range only for more than one value), or
/// "-" when not measured.
fn cell_in(values: &[f64], decimals: usize, unit: &str) -> String {
    match (stats::median(values), stats::spread(values)) {
        (Some(median), Some(spread)) if values.len() > 1 => format!(
            "{median:.decimals$}{unit} [{:.decimals$}–{:.decimals$}]",
            spread.min, spread.max
        ),
        (Some(median), _) => format!("{median:.decimals$}{unit}"),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scenario that cannot run yet, for the skipped-scenario paths.
    const FUTURE: &str = "future";

    fn measured(name: &'static str, values: &[(&'static str, &[f64])]) -> ScenarioReport {
        let mut runs = Runs::default();
        for (key, vs) in values {
            for v in *vs {
                runs.push(key, *v);
            }
        }
        ScenarioReport {
            name,
            description: "test",
            outcome: Outcome::Measured(runs),
            failures: Vec::new(),
        }
    }

    fn scenarios() -> Vec<ScenarioReport> {
        vec![
            measured(
                BASELINE,
                &[
                    (THROUGHPUT, &[10.0, 12.0, 11.0]),
                    (RR_P50, &[30.0, 31.0, 29.0]),
                    (RR_P99, &[60.0, 80.0, 70.0]),
                    (LOAD_RATES[0].p99, &[90.0, 100.0, 95.0]),
                    (LOAD_RATES[2].p99, &[400.0]),
                    (CRR, &[4000.0, 4200.0, 3800.0]),
                ],
            ),
            measured(
                MESH,
                &[
                    (THROUGHPUT, &[5.0, 6.0, 7.0]),
                    (RR_P50, &[100.0, 90.0, 95.0]),
                    (RR_P99, &[300.0, 200.0, 250.0]),
                    (CRR, &[1000.0, 900.0, 1100.0]),
                    (RSS_IDLE, &[12.0, 13.0, 14.0]),
                    (RSS_PER_CONN, &[20.0, 30.0, 25.0]),
                ],
            ),
            measured(
                MESH_NO_SOCKMAP,
                &[
                    (THROUGHPUT, &[4.0, 4.0, 4.0]),
                    (LOAD_RATES[0].p99, &[200.0, 300.0, 250.0]),
                ],
            ),
            measured(LOOPBACK_ON, &[(THROUGHPUT, &[15.0, 16.0, 14.0])]),
            measured(LOOPBACK_OFF, &[(THROUGHPUT, &[10.0, 10.0, 10.0])]),
            measured(
                MESH_HTTP,
                &[
                    (HTTP1_P50, &[200.0, 210.0, 190.0]),
                    (HTTP1_P99, &[400.0, 500.0, 450.0]),
                    (HTTP2_P99, &[300.0, 300.0, 300.0]),
                    (HTTP1_RPS, &[30_000.0, 31_000.0, 29_000.0]),
                    (HTTP2_RPS, &[40_000.0, 40_000.0, 40_000.0]),
                ],
            ),
            measured(
                MESH_WAYPOINT,
                &[
                    (HTTP1_P50, &[400.0, 420.0, 380.0]),
                    (HTTP1_P99, &[900.0, 1000.0, 1100.0]),
                    (HTTP2_P99, &[600.0, 700.0, 650.0]),
                    (HTTP1_RPS, &[15_000.0, 16_000.0, 14_000.0]),
                    (HTTP2_RPS, &[22_000.0, 21_000.0, 20_000.0]),
                    (WAYPOINT_HTTP1_PER_CORE, &[18_000.0, 19_000.0, 25_000.0]),
                    (WAYPOINT_HTTP2_PER_CORE, &[22_000.0, 21_000.0, 20_000.0]),
                    (WAYPOINT_RSS, &[20.0, 21.0, 22.0]),
                ],
            ),
            ScenarioReport {
                name: FUTURE,
                description: "test",
                outcome: Outcome::Skipped("not yet".to_owned()),
                failures: Vec::new(),
            },
        ]
    }

    fn report() -> Report {
        let mut scenarios = scenarios();
        scenarios[1]
            .failures
            .push("bulk failed in 1 of 3 rounds: ENOMEM".to_owned());
        Report {
            machine: Machine::current(),
            commit: Some("abc".to_owned()),
            settings: json!({"rounds": 3}),
            duration_s: 1.0,
            scenarios,
            notes: vec!["a note".to_owned()],
            variant: String::new(),
        }
    }

    #[test]
    fn ratios_come_from_the_medians() {
        let r = Ratios::compute(&scenarios());
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(r.mesh_throughput_vs_baseline, 6.0 / 11.0), "{r:?}");
        assert!(close(r.mesh_added_p50_us, 95.0 - 30.0), "{r:?}");
        assert!(close(r.mesh_added_p99_us, 250.0 - 70.0), "{r:?}");
        // The largest round's p99 over the median round's.
        assert!(
            close(r.mesh_p99_largest_vs_median_round, 300.0 / 250.0),
            "{r:?}"
        );
        assert!(
            close(r.baseline_p99_largest_vs_median_round, 80.0 / 70.0),
            "{r:?}"
        );
        assert!(close(r.mesh_crr_vs_baseline, 1000.0 / 4000.0), "{r:?}");
        assert!(close(r.sockmap_speedup, 1.5), "{r:?}");
        assert!(close(r.sockmap_speedup_cross_node, 1.5), "{r:?}");
        assert!(
            close(r.mesh_no_sockmap_throughput_vs_baseline, 4.0 / 11.0),
            "{r:?}"
        );
        assert_eq!(r.mesh_no_sockmap_added_p99_us, None);
        assert!(
            close(r.mesh_no_sockmap_load_1k_added_p99_us, 250.0 - 95.0),
            "{r:?}"
        );
        // The mesh saturated below 20k/s in every round: no value, no ratio.
        assert_eq!(r.mesh_no_sockmap_load_20k_added_p99_us, None);
        assert!(close(r.waypoint_added_http1_p50_us, 200.0), "{r:?}");
        assert!(
            close(r.waypoint_added_http1_p99_us, 1000.0 - 450.0),
            "{r:?}"
        );
        assert!(close(r.waypoint_added_http2_p99_us, 350.0), "{r:?}");
        assert_eq!(r.waypoint_added_http2_p50_us, None);
        assert!(close(r.waypoint_http1_rps_vs_mesh, 0.5), "{r:?}");
        assert!(close(r.waypoint_http2_rps_vs_mesh, 21.0 / 40.0), "{r:?}");
    }

    #[test]
    fn ratios_without_inputs_are_missing() {
        let r = Ratios::compute(&scenarios()[1..]);
        assert_eq!(r.mesh_throughput_vs_baseline, None);
        assert_eq!(r.mesh_added_p99_us, None);
        assert_eq!(r.baseline_p99_largest_vs_median_round, None);
        assert!(r.mesh_p99_largest_vs_median_round.is_some());
        assert!(r.sockmap_speedup.is_some());
    }

    #[test]
    fn targets_pass_miss_or_are_not_measured() {
        let scenarios = scenarios();
        let list = targets(&scenarios, &Ratios::compute(&scenarios));
        let status = |name: &str| {
            list.iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("no target {name}"))
                .status
        };
        // 6/11 = 0.545 >= 0.5.
        assert_eq!(status("mesh_throughput_vs_baseline"), "pass");
        // 65 µs <= 80; 180 µs > 150.
        assert_eq!(status("mesh_added_p50_us"), "pass");
        assert_eq!(status("mesh_added_p99_us"), "miss");
        // 300 / 250 = 1.2 <= 1.5.
        assert_eq!(status("mesh_p99_largest_vs_median_round"), "pass");
        // 0.25 < 0.4.
        assert_eq!(status("mesh_crr_vs_baseline"), "miss");
        // Not in the test's scenarios.
        assert_eq!(status("mesh.cpu_s_per_gib"), "not measured");
        // 13 <= 14.
        assert_eq!(status("mesh.rss_idle_mib"), "pass");
        // 25 > 8.
        assert_eq!(status("mesh.rss_kib_per_conn"), "miss");
        assert_eq!(status("sockmap_speedup"), "pass");
        // 550 µs > 500; 350 µs <= 500.
        assert_eq!(status("waypoint_added_http1_p99_us"), "miss");
        assert_eq!(status("waypoint_added_http2_p99_us"), "pass");
        // Medians: 19,000 < 20,000; 21,000 >= 20,000.
        assert_eq!(status("mesh_waypoint.waypoint_http1_rps_per_core"), "miss");
        assert_eq!(status("mesh_waypoint.waypoint_http2_rps_per_core"), "pass");
        assert_eq!(status("mesh_waypoint.waypoint_rss_mib"), "pass");
        let none = targets(&[], &Ratios::compute(&[]));
        assert!(none.iter().all(|t| t.status == "not measured"));
        assert_eq!(Target::new("x", "", true, 1.0, Some(1.0)).status, "pass");
        assert_eq!(Target::new("x", "", false, 1.0, Some(1.0)).status, "pass");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let json = report().to_json();
        for key in [
            "machine",
            "commit",
            "settings",
            "scenarios",
            "skipped",
            "ratios",
            "targets",
            "notes",
        ] {
            assert!(json.get(key).is_some(), "no {key}");
        }
        let mesh = &json["scenarios"][MESH];
        for key in [
            "throughput_gbps",
            "rr_p50_us",
            "rr_p99_us",
            "crr_per_s",
            "cpu_s_per_gib",
            "rss_idle_mib",
            "rss_kib_per_conn",
            "throughput_gbps_runs",
        ] {
            assert!(mesh.get(key).is_some(), "mesh has no {key}: {mesh}");
        }
        assert_eq!(mesh["throughput_gbps"], json!(6.0));
        assert_eq!(mesh["throughput_gbps_runs"], json!([5.0, 6.0, 7.0]));
        assert_eq!(mesh["throughput_gbps_spread"]["min"], json!(5.0));
        assert_eq!(mesh["cpu_s_per_gib"], Value::Null);
        assert_eq!(
            mesh["failures"],
            json!(["bulk failed in 1 of 3 rounds: ENOMEM"])
        );
        assert_eq!(json["scenarios"][BASELINE]["failures"], json!([]));
        assert_eq!(json["scenarios"][FUTURE], Value::Null);
        assert_eq!(json["skipped"][FUTURE], json!("not yet"));
        assert_eq!(
            json["scenarios"][MESH_WAYPOINT]["http1_rps"],
            json!(15_000.0)
        );
        assert!(json["ratios"]["waypoint_added_http1_p99_us"].is_number());
        for key in [
            "mesh_throughput_vs_baseline",
            "mesh_added_p50_us",
            "mesh_added_p99_us",
            "mesh_crr_vs_baseline",
            "sockmap_speedup",
        ] {
            assert!(json["ratios"][key].is_number(), "ratio {key}");
        }
        for key in ["kernel", "cores", "cpu_model", "date"] {
            assert!(json["machine"].get(key).is_some(), "machine has no {key}");
        }
        let target = &json["targets"][0];
        for key in ["name", "comparison", "limit", "value", "status"] {
            assert!(target.get(key).is_some(), "target has no {key}");
        }
    }

    #[test]
    fn markdown_lists_scenarios_metrics_and_targets() {
        let md = report().to_markdown();
        assert!(md.contains("| metric | baseline | mesh |"), "{md}");
        assert!(
            md.contains("| bulk throughput, Gbit/s | 11.00 [10.00–12.00] | 6.00 [5.00–7.00] |"),
            "{md}"
        );
        assert!(md.contains("not measured"), "{md}");
        assert!(md.contains("`future` is not measured: not yet"), "{md}");
        assert!(md.contains("| miss |") && md.contains("| pass |"), "{md}");
        assert!(md.contains("a note"), "{md}");
        assert!(
            md.contains("added p50 at 1,000 req/s 200.00 µs (HTTP/1.1)"),
            "{md}"
        );
        assert!(md.contains("| HTTP/1.1 requests/s, closed loop |"), "{md}");
        assert!(
            md.contains("**bulk failed in 1 of 3 rounds: ENOMEM**"),
            "{md}"
        );
    }

    #[test]
    fn a_variant_is_compared_with_mesh_no_sockmap_round_by_round() {
        let mut report = report();
        // No variant: no section, no rows.
        assert!(!report.to_markdown().contains("## Variant"));
        assert!(report.to_json()["variant"].is_null());
        report.variant = "AMBIT_X=1".to_owned();
        // The reference is slower in round 2 only: the per-round ratios see
        // through it, the medians alone would not.
        report.scenarios.push(measured(
            MESH_VARIANT,
            &[
                (THROUGHPUT, &[4.4, 2.2, 4.4]),
                (LOAD_RATES[0].p99, &[200.0, 300.0]),
            ],
        ));
        for scenario in &mut report.scenarios {
            if scenario.name == MESH_NO_SOCKMAP {
                *scenario = measured(
                    MESH_NO_SOCKMAP,
                    &[(THROUGHPUT, &[4.0, 2.0, 4.0]), (CRR, &[1000.0])],
                );
            }
        }
        let rows = VariantRow::compute(&report.scenarios);
        let throughput = rows.iter().find(|r| r.metric == THROUGHPUT).expect("a row");
        assert_eq!(throughput.reference, Some(4.0));
        assert_eq!(throughput.variant, Some(4.4));
        assert!(
            throughput.per_round.iter().all(|r| (r - 1.1).abs() < 1e-9),
            "{throughput:?}"
        );
        // Measured in one round of the reference and none of the variant.
        let crr = rows.iter().find(|r| r.metric == CRR).expect("a row");
        assert!(crr.per_round.is_empty() && crr.variant.is_none(), "{crr:?}");
        let md = report.to_markdown();
        assert!(
            md.contains("## Variant: `mesh_variant` (AMBIT_X=1) against `mesh_no_sockmap`"),
            "{md}"
        );
        assert!(
            md.contains("| bulk throughput, Gbit/s | 4.00 | 4.40 | 1.10x [1.10–1.10] |"),
            "{md}"
        );
        assert!(md.contains("rounds do not pair up"), "{md}");
        let json = report.to_json();
        assert_eq!(json["variant"]["environment"], "AMBIT_X=1");
        assert_eq!(json["variant"]["metrics"][0]["metric"], THROUGHPUT);
    }

    #[test]
    fn cells_show_median_and_range() {
        assert_eq!(cell(&[1.0, 3.0, 2.0], 1), "2.0 [1.0–3.0]");
        assert_eq!(cell(&[2.0], 0), "2");
        assert_eq!(cell(&[], 2), "-");
        assert_eq!(cell_in(&[1.0, 1.2], 2, "x"), "1.10x [1.00–1.20]");
        assert_eq!(cell_in(&[0.9], 2, "x"), "0.90x");
    }
}
