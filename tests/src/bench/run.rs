//! Running the scenarios on a testbed and writing the report.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::{
    Settings,
    h2load::Protocol,
    host::{self, Machine},
    http::{self, API_POD, API_POD_PORT, Credentials, WAYPOINT_POD},
    iperf,
    latency::{self, LatencyRun},
    output,
    report::{
        CPU_PER_GIB, CPU_PER_GIB_P4, CPU_PER_GIB_P16, CRR, LOAD_CONNECTIONS, LOAD_RATES, Outcome,
        RR_P50, RR_P90, RR_P99, RR_P999, RR_STEAL_MS, RR1_P50, RR1_P90, RR1_P99, RR1_P999,
        RSS_AFTER_RELEASE, RSS_HELD, RSS_IDLE, RSS_IDLE_ANON, RSS_PER_CONN, Report, Runs,
        SATURATED_BELOW, SLOW_MIB, SLOW_TCP_MEM_PEAK, ScenarioReport, THROUGHPUT, THROUGHPUT_P4,
        THROUGHPUT_P16,
    },
    scenario::{Dataplane, MESH_NO_SOCKMAP, MESH_VARIANT, Route, SCENARIOS, Scenario, Workload},
};
use crate::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions, testbin_binary},
    testbed::Process,
    waypoint::{GATEWAY_NAME_LABEL, httpbin_binary},
};

/// Ports of the servers in every server pod.
const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7100;
/// `ambit-testbin crr-server`: the connection-rate workload's server.
const CRR_PORT: u16 = 7200;
/// `ambit-testbin hold-server`, started for each memory reading.
const HOLD_PORT: u16 = 7300;
const IPERF_PORT: u16 = 5201;
/// How long memory and CPU readings wait for ztunnel to settle.
const SETTLE: Duration = Duration::from_millis(500);
/// Concurrent clients of the connection-rate runs (the rate of new
/// connections from many clients, not one client's round trips).
const CRR_CLIENTS: u32 = 16;
/// 1 GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// ztunnel RSS, each node's (KiB), before any connection is held, while
/// holding each count of connections, and [`AFTER_RELEASE`] after the last
/// were closed.
struct HeldMemory {
    before: Vec<u64>,
    held: Vec<(u32, Vec<u64>)>,
    after: Vec<u64>,
}

/// How long after the held connections close ztunnel's memory is read again:
/// one heap check of ztunnel (every 10 s, `ztunnel::heap`) and some.
const AFTER_RELEASE: Duration = Duration::from_secs(12);

/// What one scenario collected over the rounds.
#[derive(Default)]
pub(super) struct Collected {
    pub(super) runs: Runs,
    pub(super) latency_1k: Vec<Histogram<u64>>,
    pub(super) latency_1b: Vec<Histogram<u64>>,
    /// The fixed-rate HTTP runs' latencies, per protocol.
    pub(super) latency_http: Vec<(Protocol, Histogram<u64>)>,
    /// Per failed workload: in how many rounds, and the first error.
    failures: BTreeMap<String, (usize, String)>,
}

impl Collected {
    fn failed(&mut self, what: &str, error: String) {
        self.failures
            .entry(what.to_owned())
            .and_modify(|(count, _)| *count += 1)
            .or_insert((1, error));
    }

    /// "<what> failed in <n> of <rounds> rounds: <first error>" lines.
    fn failure_lines(&self, rounds: usize) -> Vec<String> {
        self.failures
            .iter()
            .map(|(what, (count, error))| {
                format!("{what} failed in {count} of {rounds} rounds: {error}")
            })
            .collect()
    }
}

/// The ztunnels (and waypoint) of one dataplane, while they run.
pub(super) struct Nodes {
    dataplane: Dataplane,
    ztunnels: Vec<Ztunnel>,
    waypoint: Option<Process>,
    /// RSS of each ztunnel right after it started (pods enrolled, no
    /// traffic), KiB.
    idle_rss_kib: Vec<u64>,
    /// Of which anonymous (heap, stacks), KiB.
    idle_anon_kib: Vec<u64>,
}

impl Nodes {
    /// Starts what `dataplane` needs; `variant` is the environment of a
    /// variant dataplane's ztunnels (`--variant`).
    pub(super) fn start(
        bed: &Testbed,
        config: &Path,
        dataplane: Dataplane,
        variant: &[(String, String)],
    ) -> Result<Self, String> {
        let mut ztunnels = Vec::new();
        let mut waypoint = None;
        if let Dataplane::Mesh {
            sockmap,
            waypoint: with_waypoint,
            variant: with_variant,
        } = dataplane
        {
            let mut options = ztunnel_options(sockmap);
            if with_variant {
                options.env.extend(variant.iter().cloned());
            }
            for node in ["a", "b"] {
                ztunnels.push(
                    Ztunnel::start(bed, node, config, &options)
                        .map_err(|e| format!("ztunnel on node {node}: {e}"))?,
                );
            }
            if with_waypoint {
                waypoint = Some(http::start_waypoint(bed, config)?);
            }
        }
        std::thread::sleep(SETTLE);
        let idle_rss_kib = ztunnels
            .iter()
            .map(|z| host::rss_kib(z.pid()))
            .collect::<Result<_, _>>()?;
        let idle_anon_kib = ztunnels
            .iter()
            .map(|z| host::rss_anon_kib(z.pid()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            dataplane,
            ztunnels,
            waypoint,
            idle_rss_kib,
            idle_anon_kib,
        })
    }

    pub(super) fn stop(mut self) {
        if let Some(mut waypoint) = self.waypoint.take()
            && let Err(error) = waypoint.terminate(Duration::from_secs(10))
        {
            eprintln!("ambit-bench: stopping the waypoint: {error}");
        }
        for ztunnel in &mut self.ztunnels {
            if let Err(error) = ztunnel.stop(Duration::from_secs(10)) {
                eprintln!("ambit-bench: stopping ztunnel: {error}");
            }
        }
    }

    /// The ztunnels' process ids, node a's first.
    pub(super) fn ztunnel_pids(&self) -> Vec<u32> {
        self.ztunnels.iter().map(Ztunnel::pid).collect()
    }

    /// The waypoint's process id, if it runs.
    pub(super) fn waypoint_pid(&self) -> Option<u32> {
        self.waypoint.as_ref().map(Process::pid)
    }

    fn cpu_seconds(&self) -> Result<f64, String> {
        self.ztunnels
            .iter()
            .map(|z| host::cpu_seconds(z.pid()))
            .sum()
    }

    fn rss_kib(&self) -> Result<Vec<u64>, String> {
        self.ztunnels
            .iter()
            .map(|z| host::rss_kib(z.pid()))
            .collect()
    }
}

/// The testbed, its servers and the mesh configuration.
pub(super) struct Bench {
    bed: Testbed,
    config: std::path::PathBuf,
    settings: Settings,
    credentials: Credentials,
    _servers: Vec<Process>,
}

/// The bench's testbed (client pods on node a, server pods on node b, in
/// and out of the mesh, a waypoint and an API pod) and its mesh
/// configuration, written to `mesh.yaml` in the testbed's directory: what
/// the benchmark runs and what the code-layout profile replays.
pub(super) fn bench_mesh(
    name: &str,
    credentials: &Credentials,
) -> Result<(Testbed, std::path::PathBuf), String> {
    let bed = Testbed::builder(name)
        .node("a")
        .node("b")
        .pod("client", "a")
        .pod("plainclient", "a")
        .pod("localserver", "a")
        .pod(WAYPOINT_POD, "a")
        .pod("server", "b")
        .pod("plainserver", "b")
        .pod(API_POD, "b")
        .build()
        .map_err(|e| format!("testbed: {e}"))?;
    let config = bed.workdir().join("mesh.yaml");
    let mut mesh = MeshConfig::default()
        .namespace("demo", true)
        .namespace("plain", false)
        .pod("client", "demo")
        .pod("server", "demo")
        .pod(API_POD, "demo")
        .pod(WAYPOINT_POD, "demo")
        .label(WAYPOINT_POD, GATEWAY_NAME_LABEL, WAYPOINT_POD)
        .pod("plainclient", "plain")
        .pod("plainserver", "plain")
        .pod("localserver", "plain");
    for document in http::documents(credentials) {
        mesh = mesh.document(&document);
    }
    mesh.write(&bed, &config)
        .map_err(|e| format!("mesh configuration: {e}"))?;
    Ok((bed, config))
}

/// The ztunnel options of a mesh scenario: with the shortcut, it is measured
/// itself (the load tools read without blocking, or retry EAGAIN).
pub(super) fn ztunnel_options(sockmap: bool) -> ZtunnelOptions {
    let options = ZtunnelOptions {
        drain: Duration::from_secs(1),
        ..ZtunnelOptions::default()
    };
    if sockmap {
        options.force_sockmap()
    } else {
        options
    }
}

impl Bench {
    pub(super) fn new(settings: &Settings) -> Result<Self, String> {
        check_binaries()?;
        let credentials = Credentials::generate();
        let (bed, config) = bench_mesh("bench", &credentials)?;
        let mut servers = Vec::new();
        let mut cmd = bed.pod_command(API_POD, httpbin_binary());
        cmd.args(["serve", &format!("0.0.0.0:{API_POD_PORT}"), API_POD]);
        let httpbin = bed.spawn(cmd).map_err(|e| e.to_string())?;
        httpbin
            .wait_for_line("listening", Duration::from_secs(10))
            .map_err(|e| format!("httpbin in {API_POD}: {e}"))?;
        servers.push(httpbin);
        for pod in ["server", "plainserver", "localserver"] {
            for (mode, port) in [
                ("sink", SINK_PORT),
                ("echo", ECHO_PORT),
                ("crr-server", CRR_PORT),
            ] {
                let mut cmd = bed.pod_command(pod, testbin_binary());
                cmd.args([mode, &format!("0.0.0.0:{port}")]);
                let server = bed.spawn(cmd).map_err(|e| e.to_string())?;
                server
                    .wait_for_line("listening", Duration::from_secs(10))
                    .map_err(|e| format!("{mode} server in {pod}: {e}"))?;
                servers.push(server);
            }
            let mut cmd = bed.pod_command(pod, "iperf3");
            cmd.args(["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"]);
            let server = bed.spawn(cmd).map_err(|e| e.to_string())?;
            server
                .wait_for_line("Server listening", Duration::from_secs(10))
                .map_err(|e| format!("iperf3 server in {pod}: {e}"))?;
            servers.push(server);
        }
        Ok(Self {
            bed,
            config,
            settings: settings.clone(),
            credentials,
            _servers: servers,
        })
    }

    pub(super) fn bed(&self) -> &Testbed {
        &self.bed
    }

    pub(super) fn config(&self) -> &Path {
        &self.config
    }

    fn ip(&self, pod: &str) -> IpAddr {
        IpAddr::V4(self.bed.pod(pod).ipv4())
    }

    fn testbin(&self, pod: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
        let mut cmd = self.bed.pod_command(pod, testbin_binary());
        cmd.args(args).env("AMBIT_TESTBIN_TIMEOUT_MS", "10000");
        let out = self.bed.run(cmd, timeout).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One iperf3 run from `client` to the iperf3 server of `server`.
    pub(super) fn bulk(
        &self,
        client: &str,
        server: &str,
        streams: u32,
    ) -> Result<iperf::Transfer, String> {
        let seconds = self.settings.bulk_seconds;
        let mut cmd = self.bed.pod_command(client, "iperf3");
        cmd.args(["-c", &self.ip(server).to_string()])
            .args(["-p", &IPERF_PORT.to_string()])
            .args(["-P", &streams.to_string()])
            .args([
                "-t",
                &seconds.to_string(),
                "-J",
                "--connect-timeout",
                "5000",
            ]);
        match self
            .bed
            .run(cmd, Duration::from_secs(u64::from(seconds) + 30))
        {
            Ok(out) => iperf::parse(&String::from_utf8_lossy(&out.stdout)),
            // iperf3 exits non-zero with its JSON report (and error) on stdout.
            Err(crate::Error::Failed { stdout, stderr, .. }) => {
                Err(iperf::parse(&stdout).err().unwrap_or(stderr))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Bulk transfer into a reader that sleeps, for the settings'
    /// `slow_seconds`, while the node's TCP memory is sampled: its peak rise
    /// (MiB) and the MiB transferred.
    fn slow_receiver(&self, client: &str, server: &str) -> Result<(f64, f64), String> {
        let seconds = self.settings.slow_seconds;
        let dst = SocketAddr::new(self.ip(server), SINK_PORT).to_string();
        let pages = || ztunnel::capture::TcpMemory::pages().map_err(|e| e.to_string());
        let before = pages()?;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(now) = ztunnel::capture::TcpMemory::pages() {
                        peak = peak.max(now);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            })
        };
        let mut cmd = self.bed.pod_command(client, testbin_binary());
        cmd.args(["bulk", &dst, &seconds.to_string(), "65536", "slow"]);
        let result = self
            .bed
            .run(cmd, Duration::from_secs(u64::from(seconds) + 60));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().map_err(|_| "the sampler panicked")?;
        let out = result.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&out.stdout);
        let bytes: f64 = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no bytes= in {line:?}"))?;
        let page_mib = 4096.0 / (1024.0 * 1024.0);
        Ok((
            peak.saturating_sub(before) as f64 * page_mib,
            bytes / (1024.0 * 1024.0),
        ))
    }

    /// One open-loop latency run of `size`-byte requests.
    pub(super) fn latency(
        &self,
        client: &str,
        server: &str,
        size: u32,
    ) -> Result<LatencyRun, String> {
        let s = &self.settings;
        let dst = SocketAddr::new(self.ip(server), SINK_PORT).to_string();
        let timeout = Duration::from_secs(u64::from(s.rr_count / s.rr_rate.max(1)) + 30);
        let out = self.testbin(
            client,
            &[
                "rr",
                &dst,
                &s.rr_count.to_string(),
                &size.to_string(),
                &s.rr_rate.to_string(),
            ],
            timeout,
        )?;
        latency::parse(&out)
    }

    /// One open-loop run of 1 KiB requests at `rate` per second in all, over
    /// [`LOAD_CONNECTIONS`] connections, for the settings' `load_seconds`:
    /// its latencies and the requests answered per second.
    pub(super) fn load_latency(
        &self,
        client: &str,
        server: &str,
        rate: u32,
    ) -> Result<(LatencyRun, f64), String> {
        let seconds = self.settings.load_seconds;
        let dst = SocketAddr::new(self.ip(server), SINK_PORT).to_string();
        let out = self.testbin(
            client,
            &[
                "rr",
                &dst,
                &(rate * seconds).to_string(),
                "1024",
                &rate.to_string(),
                &LOAD_CONNECTIONS.to_string(),
            ],
            Duration::from_secs(u64::from(seconds) + 30),
        )?;
        Ok((latency::parse(&out)?, field(&out, "achieved")?))
    }

    /// Connections per second: connect, one request, close, `crr_count`
    /// times, from [`CRR_CLIENTS`] client threads at once.
    pub(super) fn crr(&self, client: &str, server: &str) -> Result<f64, String> {
        let dst = SocketAddr::new(self.ip(server), CRR_PORT).to_string();
        let out = self.testbin(
            client,
            &[
                "crr",
                &dst,
                &self.settings.crr_count.to_string(),
                &CRR_CLIENTS.to_string(),
            ],
            Duration::from_secs(120),
        )?;
        field(&out, "per_s")
    }

    /// ztunnel RSS (each node's, KiB) while holding each of the settings'
    /// `held_connections` counts of idle proxied connections, one count after
    /// the other, and the RSS before the first (a tunnel between the nodes
    /// open, no connection held).
    fn held_memory(&self, nodes: &Nodes, client: &str, server: &str) -> Result<HeldMemory, String> {
        let dst = SocketAddr::new(self.ip(server), HOLD_PORT).to_string();
        let sh_raising_nofile = |pod: &str| {
            // Soft open-file limit up to the hard one (ambit-testbin forbids
            // the unsafe code setrlimit needs, and raising the hard limit may
            // not be allowed).
            let mut cmd = self.bed.pod_command(pod, "sh");
            cmd.args(["-c", r#"ulimit -Sn "$(ulimit -Hn)" && exec "$0" "$@""#])
                .arg(testbin_binary());
            cmd
        };
        // One connection first, so the tunnel between the nodes (TLS session,
        // HTTP/2 connection, certificates) exists: what follows is per
        // connection only.
        let echo = SocketAddr::new(self.ip(server), ECHO_PORT).to_string();
        self.testbin(client, &["send", &echo, "warm-up"], Duration::from_secs(30))?;
        std::thread::sleep(SETTLE);
        let before = nodes.rss_kib()?;
        let mut readings = Vec::new();
        for &count in &self.settings.held_connections {
            // A server per count: one that outlived its clients would keep
            // their connections half open in ztunnel.
            let mut cmd = sh_raising_nofile(server);
            cmd.args(["hold-server", &format!("0.0.0.0:{HOLD_PORT}")]);
            let holder_server = self.bed.spawn(cmd).map_err(|e| e.to_string())?;
            holder_server
                .wait_for_line("listening", Duration::from_secs(10))
                .map_err(|e| format!("hold server in {server}: {e}"))?;
            let mut cmd = sh_raising_nofile(client);
            cmd.args(["hold", &dst, &count.to_string(), "300"]);
            let holder = self.bed.spawn(cmd).map_err(|e| e.to_string())?;
            if let Err(e) = holder.wait_for_line("held", Duration::from_secs(120)) {
                return Err(format!(
                    "holding {count} connections: {e}: {}",
                    holder.stderr().join("\n")
                ));
            }
            std::thread::sleep(SETTLE);
            readings.push((count, nodes.rss_kib()?));
            drop(holder);
            drop(holder_server);
            // Let the ztunnels see the connections close before the next.
            std::thread::sleep(SETTLE);
        }
        std::thread::sleep(AFTER_RELEASE.saturating_sub(SETTLE));
        Ok(HeldMemory {
            before,
            held: readings,
            after: nodes.rss_kib()?,
        })
    }

    /// One round of the HTTP workload from `client` along `route`.
    pub(super) fn http(&self, client: &str, route: Route, nodes: &Nodes) -> http::Measured {
        http::Round {
            bed: &self.bed,
            settings: &self.settings,
            credentials: &self.credentials,
            client,
            route,
            watched: http::Watched {
                waypoint: nodes.waypoint.as_ref().map(Process::pid),
                ztunnels: nodes.ztunnels.iter().map(Ztunnel::pid).collect(),
            },
            waypoint: nodes.waypoint.as_ref(),
        }
        .run()
    }

    /// Runs `scenario` once on `nodes` (its dataplane), adding its values to
    /// `collected`; a failed workload is reported and leaves its value out.
    fn measure(
        &self,
        scenario: &Scenario,
        nodes: &Nodes,
        collected: &mut Collected,
        first_round: bool,
    ) {
        let (client, server) = (scenario.client, scenario.server);
        let mut failures = Vec::new();
        let mut failed = |what: &str, error: String| {
            eprintln!("ambit-bench: {}: {what} failed: {error}", scenario.name);
            failures.push((what.to_owned(), error));
        };
        let mut line = format!("  {:<16}", scenario.name);
        for workload in scenario.workloads {
            match workload {
                Workload::Memory => {
                    if let Some(max) = nodes.idle_rss_kib.iter().max() {
                        let mib = *max as f64 / 1024.0;
                        collected.runs.push(RSS_IDLE, mib);
                        line.push_str(&format!(" rss_idle={mib:.1}MiB"));
                    }
                    if let Some(max) = nodes.idle_anon_kib.iter().max() {
                        let mib = *max as f64 / 1024.0;
                        collected.runs.push(RSS_IDLE_ANON, mib);
                        line.push_str(&format!(" (anon {mib:.1}MiB)"));
                    }
                    if !nodes.ztunnels.is_empty() && !self.settings.held_connections.is_empty() {
                        match self.held_memory(nodes, client, server) {
                            Ok(HeldMemory {
                                before,
                                held: readings,
                                after,
                            }) => {
                                for (count, rss) in &readings {
                                    let largest = rss.iter().max().copied().unwrap_or(0);
                                    let mib = largest as f64 / 1024.0;
                                    if let Some(&(_, key)) =
                                        RSS_HELD.iter().find(|(n, _)| n == count)
                                    {
                                        collected.runs.push(key, mib);
                                    }
                                    line.push_str(&format!(" rss@{count}={mib:.1}MiB"));
                                }
                                if let Some((count, rss)) = readings.last() {
                                    let kib = per_connection_kib(&before, rss, *count);
                                    collected.runs.push(RSS_PER_CONN, kib);
                                    line.push_str(&format!(" rss/conn={kib:.1}KiB"));
                                }
                                if let Some(largest) = after.iter().max() {
                                    let mib = *largest as f64 / 1024.0;
                                    collected.runs.push(RSS_AFTER_RELEASE, mib);
                                    line.push_str(&format!(" rss_after={mib:.1}MiB"));
                                }
                            }
                            Err(e) => failed("memory with held connections", e),
                        }
                    }
                }
                Workload::Bulk | Workload::ParallelBulk => {
                    let runs: &[(u32, &str, &str)] = if *workload == Workload::Bulk {
                        &[(1, THROUGHPUT, CPU_PER_GIB)]
                    } else {
                        &[
                            (4, THROUGHPUT_P4, CPU_PER_GIB_P4),
                            (16, THROUGHPUT_P16, CPU_PER_GIB_P16),
                        ]
                    };
                    for &(streams, throughput, cpu) in runs {
                        let cpu_before = nodes.cpu_seconds();
                        match self.bulk(client, server, streams) {
                            Ok(transfer) => {
                                collected.runs.push(throughput, transfer.gbps);
                                line.push_str(&format!(" P{streams}:{:.2}Gbit/s", transfer.gbps));
                                if !nodes.ztunnels.is_empty()
                                    && let (Ok(before), Ok(after)) =
                                        (cpu_before, nodes.cpu_seconds())
                                {
                                    let per_gib = (after - before) / (transfer.bytes as f64 / GIB);
                                    collected.runs.push(cpu, per_gib);
                                    line.push_str(&format!(" cpu={per_gib:.2}s/GiB"));
                                }
                            }
                            Err(e) => failed("bulk", e),
                        }
                    }
                }
                Workload::Latency => {
                    let steal_before = host::steal_ms();
                    for size in [1024, 1] {
                        match self.latency(client, server, size) {
                            Ok(run) => {
                                let keys = if size == 1 {
                                    [RR1_P50, RR1_P90, RR1_P99, RR1_P999]
                                } else {
                                    [RR_P50, RR_P90, RR_P99, RR_P999]
                                };
                                for (key, value) in keys.into_iter().zip([
                                    run.p50_us,
                                    run.p90_us,
                                    run.p99_us,
                                    run.p999_us,
                                ]) {
                                    collected.runs.push(key, value);
                                }
                                line.push_str(&format!(
                                    " rr{size}B p50/p99={:.0}/{:.0}us",
                                    run.p50_us, run.p99_us
                                ));
                                if size == 1 {
                                    collected.latency_1b.push(run.histogram);
                                } else {
                                    collected.latency_1k.push(run.histogram);
                                }
                            }
                            Err(e) => failed(&format!("{size}-byte latency"), e),
                        }
                    }
                    if let (Ok(before), Ok(after)) = (steal_before, host::steal_ms()) {
                        let stolen = after - before;
                        collected.runs.push(RR_STEAL_MS, stolen);
                        line.push_str(&format!(" steal={stolen:.0}ms"));
                    }
                }
                Workload::LoadLatency => {
                    // Rising rates until one saturates (answered below the
                    // offered rate): beyond it, latency only says how long
                    // the queue grew.
                    for keys in &LOAD_RATES {
                        match self.load_latency(client, server, keys.rate) {
                            Ok((run, achieved)) => {
                                for (key, value) in [
                                    (keys.p50, run.p50_us),
                                    (keys.p99, run.p99_us),
                                    (keys.p999, run.p999_us),
                                    (keys.achieved, achieved),
                                ] {
                                    collected.runs.push(key, value);
                                }
                                line.push_str(&format!(
                                    " load{}k p50/p99={:.0}/{:.0}us",
                                    keys.rate / 1000,
                                    run.p50_us,
                                    run.p99_us
                                ));
                                if achieved < f64::from(keys.rate) * SATURATED_BELOW {
                                    line.push_str(&format!(" (saturated: {achieved:.0}/s)"));
                                    break;
                                }
                            }
                            Err(e) => {
                                failed(&format!("latency at {} requests/s", keys.rate), e);
                                break;
                            }
                        }
                    }
                }
                Workload::SlowReceiver if first_round => match self.slow_receiver(client, server) {
                    Ok((peak, mib)) => {
                        collected.runs.push(SLOW_TCP_MEM_PEAK, peak);
                        collected.runs.push(SLOW_MIB, mib);
                        line.push_str(&format!(" slow: tcp_mem+{peak:.1}MiB of {mib:.0}MiB"));
                    }
                    Err(e) => failed("slow receiver", e),
                },
                Workload::SlowReceiver => {}
                Workload::ConnectionRate => match self.crr(client, server) {
                    Ok(rate) => {
                        collected.runs.push(CRR, rate);
                        line.push_str(&format!(" crr={rate:.0}/s"));
                    }
                    Err(e) => failed("connection rate", e),
                },
                Workload::Http(route) => {
                    let measured = self.http(client, *route, nodes);
                    for (key, value) in measured.values {
                        collected.runs.push(key, value);
                    }
                    collected.latency_http.extend(measured.latency);
                    line.push_str(&measured.line);
                    for (what, error) in measured.failures {
                        failed(&what, error);
                    }
                }
            }
        }
        eprintln!("{line}");
        for (what, error) in failures {
            collected.failed(&what, error);
        }
    }
}

/// Fails early, with the command that builds them, when a binary the run
/// needs besides ztunnel is missing.
fn check_binaries() -> Result<(), String> {
    let dir = testbin_binary();
    for (binary, build) in [
        (
            "ambit-testbin",
            "cargo build --release -p ambit-tests --bins",
        ),
        (
            "ambit-httpbin",
            "cargo build --release -p ambit-tests --bins",
        ),
        ("waypoint", "cargo build --release -p waypoint --bins"),
    ] {
        let path = dir.with_file_name(binary);
        if !path.is_file() {
            return Err(format!(
                "{} is missing: `cargo xtask bench` builds it (or `{build}`)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The larger ztunnel's RSS growth per connection, KiB.
fn per_connection_kib(before: &[u64], after: &[u64], count: u32) -> f64 {
    before
        .iter()
        .zip(after)
        .map(|(&b, &a)| (a as f64 - b as f64) / f64::from(count.max(1)))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `<key>=<number>` in a line of output.
fn field(output: &str, key: &str) -> Result<f64, String> {
    output
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {output:?}"))
}

/// The order in which round `round` (from 1) runs [`SCENARIOS`], as
/// indices: as listed, except that every second round runs `mesh_variant`
/// right before `mesh_no_sockmap` instead of after it (and `loopback_off`),
/// so that neither side of an A/B always runs second.
fn round_order(round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..SCENARIOS.len()).collect();
    let position = |name: &str| SCENARIOS.iter().position(|s| s.name == name);
    if round.is_multiple_of(2)
        && let (Some(variant), Some(reference)) =
            (position(MESH_VARIANT), position(MESH_NO_SOCKMAP))
    {
        let moved = order.remove(variant);
        order.insert(reference, moved);
    }
    order
}

/// The names of the scenarios, for `--only`.
pub(super) fn scenario_names() -> impl Iterator<Item = &'static str> {
    SCENARIOS.iter().map(|s| s.name)
}

/// Runs every round of every scenario, writes the report into `settings.out`
/// and returns `bench.md`.
pub(super) fn run(settings: &Settings) -> Result<String, String> {
    let started = Instant::now();
    let mut machine = Machine::current();
    let bench = Bench::new(settings)?;
    let mut collected: Vec<Collected> = SCENARIOS.iter().map(|_| Collected::default()).collect();
    for round in 1..=settings.rounds {
        eprintln!(
            "ambit-bench: round {round}/{} ({:.0} s so far)",
            settings.rounds,
            started.elapsed().as_secs_f64()
        );
        let mut nodes: Option<Nodes> = None;
        for index in round_order(round) {
            let (scenario, collected) = (&SCENARIOS[index], &mut collected[index]);
            if scenario.unavailable.is_some() || !settings.selects(scenario.name) {
                continue;
            }
            if nodes.as_ref().map(|n| n.dataplane) != Some(scenario.dataplane) {
                if let Some(old) = nodes.take() {
                    old.stop();
                }
                nodes = Some(Nodes::start(
                    &bench.bed,
                    &bench.config,
                    scenario.dataplane,
                    &settings.variant,
                )?);
            }
            let current = nodes.as_ref().expect("just started");
            bench.measure(scenario, current, collected, round == 1);
        }
        if let Some(old) = nodes.take() {
            old.stop();
        }
    }
    machine.load_after = host::load_average();
    let notes = vec![
        "HTTP (mesh_http, mesh_waypoint): from the client pod to ambit-httpbin in the api pod, \
         GET /api/items with one bearer token; mesh_http addresses the pod's IP (both ztunnels, no \
         waypoint), mesh_waypoint the Service (client ztunnel -> waypoint -> server ztunnel), on the \
         same ztunnels and waypoint process (sk_msg off). The waypoint runs one worker thread \
         (AMBIT_WORKER_THREADS=1), validates the token (verified tokens are cached until exp, so \
         after the first request of a token validation is a cache hit) and evaluates one ALLOW \
         policy; it logs a JSON access line per request."
            .to_owned(),
        "HTTP latency is at a fixed 1,000 requests/s, open loop and paced per request \
         (ambit-httpbin load: request i due at i ms, its latency counted from then; HTTP/1.1 on 10 \
         keep-alive connections in turn, HTTP/2 a stream per request on one connection). \
         Requests/s is h2load, closed loop (HTTP/1.1: 16 connections; \
         HTTP/2: 4 connections x 4 streams) on a machine whose cores also run h2load, httpbin and \
         both ztunnels: waypoint_cores_at_max says how busy the waypoint was meanwhile."
            .to_owned(),
        "baseline runs between twin pods (plainclient -> plainserver) on the same two nodes, with the same \
         veth and bridge path: enrolled pods stay captured through the pinned maps while no ztunnel runs, \
         so they cannot carry plain traffic."
            .to_owned(),
        "Latency is open loop at a fixed rate, counted from each request's intended send time (no \
         coordinated omission), one connection; ztunnel logs at info level (a JSON access log line per \
         connection), as in the end-to-end tests."
            .to_owned(),
    ];
    let scenarios: Vec<ScenarioReport> = SCENARIOS
        .iter()
        .zip(&collected)
        .map(|(scenario, collected)| ScenarioReport {
            name: scenario.name,
            description: scenario.description,
            outcome: match scenario.unavailable {
                Some(reason) => Outcome::Skipped(reason.to_owned()),
                None if scenario.name == MESH_VARIANT && settings.variant.is_empty() => {
                    Outcome::Skipped("runs only with --variant KEY=VALUE,...".to_owned())
                }
                None => Outcome::Measured(collected.runs.clone()),
            },
            failures: collected.failure_lines(settings.rounds),
        })
        .collect();
    let report = Report {
        machine,
        commit: host::git_commit(Path::new(env!("CARGO_MANIFEST_DIR"))),
        settings: serde_json::to_value(settings).map_err(|e| e.to_string())?,
        duration_s: started.elapsed().as_secs_f64(),
        scenarios,
        notes,
        variant: settings.variant_text(),
    };
    output::write(&settings.out, &report, &collected)?;
    Ok(report.to_markdown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection_takes_the_larger_ztunnel() {
        let kib = per_connection_kib(&[10_000, 20_000], &[15_000, 40_000], 1000);
        assert!((kib - 20.0).abs() < 1e-9, "{kib}");
    }

    #[test]
    fn failures_are_counted_per_workload() {
        let mut c = Collected::default();
        c.failed("bulk", "ENOMEM".to_owned());
        c.failed("bulk", "EPIPE".to_owned());
        c.failed("1-byte latency", "timeout".to_owned());
        assert_eq!(
            c.failure_lines(5),
            [
                "1-byte latency failed in 1 of 5 rounds: timeout",
                "bulk failed in 2 of 5 rounds: ENOMEM"
            ]
        );
    }

    #[test]
    fn the_variant_and_its_reference_take_turns_to_run_first() {
        let position = |round: usize, name: &str| {
            round_order(round)
                .iter()
                .position(|&i| SCENARIOS[i].name == name)
                .expect(name)
        };
        for round in 1..=4 {
            let mut order = round_order(round);
            order.sort_unstable();
            assert_eq!(order, (0..SCENARIOS.len()).collect::<Vec<_>>(), "each once");
            let (variant, reference) = (
                position(round, MESH_VARIANT),
                position(round, MESH_NO_SOCKMAP),
            );
            assert_eq!(variant < reference, round % 2 == 0, "round {round}");
        }
        // Only the variant moves; the scenarios that share ztunnels stay
        // next to each other.
        assert_eq!(
            position(2, crate::bench::scenario::LOOPBACK_OFF),
            position(2, MESH_NO_SOCKMAP) + 1
        );
    }

    #[test]
    fn fields_of_testbin_output() {
        assert_eq!(field("crr count=300 per_s=812.5\n", "per_s"), Ok(812.5));
        assert!(field("crr count=300", "per_s").is_err());
        assert!(field("crr xper_s=3", "per_s").is_err());
    }
}
