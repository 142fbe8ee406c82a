//! The HTTP workload of `mesh_http` and `mesh_waypoint`: the mesh objects it
//! needs (the Service `demo/api` through the waypoint `demo/wp`, a
//! RequestAuthentication with an inline key set, one L7 ALLOW policy), the
//! waypoint process, and one round of h2load runs from the client pod.
//!
//! A round, for both protocols: a short warm-up at the fixed rate (tunnels,
//! pooled upstream connections, the verified-token cache), then latency at
//! the fixed rate while the waypoint's RSS is sampled and its and the
//! ztunnels' CPU time is counted, then requests/s as fast as it goes. The
//! fixed-rate runs come first, so the RSS at 1,000 requests/s is not what a
//! saturating run left behind.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::{
    Settings,
    h2load::{self, ClosedLoop, Protocol},
    host,
    report::{
        HTTP1_P50, HTTP1_P99, HTTP1_RPS, HTTP2_P50, HTTP2_P99, HTTP2_RPS, WAYPOINT_CORES_AT_MAX,
        WAYPOINT_CPU_PER_1K, WAYPOINT_HTTP1_PER_CORE, WAYPOINT_HTTP2_PER_CORE, WAYPOINT_RSS,
        WAYPOINT_RSS_ANON, ZTUNNEL_CPU_PER_1K,
    },
    scenario::Route,
};
use crate::{Testbed, jwt::Issuer, mesh::READY_TIMEOUT, testbed::Process};

/// The pod that runs httpbin (node b), selected by the Service `demo/api`.
pub const API_POD: &str = "api";
/// The waypoint's pod (node a), an instance of the Gateway `demo/wp`.
pub const WAYPOINT_POD: &str = "wp";
/// The port httpbin listens on in the api pod; both Service ports target it.
pub const API_POD_PORT: u16 = 8080;
/// The Gateway the waypoint process is.
const GATEWAY: &str = "demo/wp";
/// The VIP of the Service `demo/api`.
const API_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
/// The Service port named `http`: the waypoint speaks HTTP/1.1 to the
/// endpoint.
const HTTP1_PORT: u16 = 80;
/// The Service port named `http2`: the waypoint speaks HTTP/2 (h2c) to the
/// endpoint.
const HTTP2_PORT: u16 = 81;
/// The `iss` of the bench's tokens.
const ISSUER: &str = "https://idp.bench";
/// The `sub` of the bench's token: the policy admits this request principal
/// only.
const SUBJECT: &str = "bench-client";
/// What h2load requests; the policy allows GET under `/api/`.
const PATH: &str = "/api/items";
/// How often the waypoint's RSS is read during a fixed-rate run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The closed-loop runs' warm-up: new connections, pools filling.
const WARM_UP_MS: u32 = 500;
/// A token that outlives any run.
const TOKEN_TTL_SECS: i64 = 24 * 3600;

/// The bench's JWT issuer and the token every request carries.
pub struct Credentials {
    issuer: Issuer,
    /// `authorization: Bearer <token>`.
    header: String,
    token: String,
}

impl Credentials {
    /// A fresh signing key and a token for [`SUBJECT`].
    pub fn generate() -> Self {
        let issuer = Issuer::generate(ISSUER, "bench");
        let token = issuer.token_for(SUBJECT, &["bench"], TOKEN_TTL_SECS);
        Self {
            header: format!("authorization: Bearer {token}"),
            token,
            issuer,
        }
    }

    /// `text` without the token: command lines end up in error messages, and
    /// a raw JWT is never written out.
    fn redact(&self, text: &str) -> String {
        text.replace(&self.token, "<token>")
    }
}

/// The mesh objects of the HTTP scenarios: the Service, the Gateway, the
/// RequestAuthentication (keys inline: no JWKS server to run) and the ALLOW
/// policy, all but the Service attached to the Gateway.
pub fn documents(credentials: &Credentials) -> Vec<String> {
    let service = format!(
        r"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: demo
  labels:
    istio.io/use-waypoint: wp
spec:
  clusterIP: {API_VIP}
  selector:
    app: {API_POD}
  ports:
  - name: http
    port: {HTTP1_PORT}
    targetPort: {API_POD_PORT}
  - name: http2
    port: {HTTP2_PORT}
    targetPort: {API_POD_PORT}"
    );
    let target =
        "  targetRefs:\n  - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: wp";
    // A JWK Set is JSON without single quotes: a single-quoted YAML scalar.
    let authentication = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: idp\n  \
         namespace: demo\nspec:\n{target}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'",
        credentials.issuer.jwks_json()
    );
    let policy = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: api-read\n  \
         namespace: demo\nspec:\n{target}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        \
         requestPrincipals: [\"{ISSUER}/{SUBJECT}\"]\n    to:\n    - operation:\n        \
         methods: [GET]\n        paths: [\"/api/*\"]"
    );
    vec![
        service,
        crate::waypoint::GATEWAY.to_owned(),
        authentication,
        policy,
    ]
}

/// Starts the waypoint of `demo/wp` in its pod with one worker thread
/// (`AMBIT_WORKER_THREADS=1`: the issue's throughput target is per thread),
/// as a client of the mesh CA the ztunnels started, and waits until it logs
/// `ready`. It logs at info level, an access log line per request, as in the
/// end-to-end tests.
pub fn start_waypoint(bed: &Testbed, config: &Path) -> Result<Process, String> {
    let ca = bed
        .mesh_ca()
        .ok_or("Bug: the waypoint starts after the ztunnels, which start the mesh CA")?;
    let token = ca
        .token_file(&format!("demo/{WAYPOINT_POD}"))
        .map_err(|e| format!("waypoint CA token: {e}"))?;
    let mut cmd = bed.pod_command(WAYPOINT_POD, crate::waypoint::waypoint_binary());
    cmd.arg("--config")
        .arg(config)
        .args(["--gateway", GATEWAY, "--node", bed.pod(WAYPOINT_POD).node()])
        .env(ztunnel::settings::WORKER_THREADS_ENV, "1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .env("AMBIT_DRAIN_TIMEOUT_SECONDS", "1");
    ca.client_env(&mut cmd, &token);
    let process = bed.spawn(cmd).map_err(|e| format!("waypoint: {e}"))?;
    let ready = r#""message":"ready""#;
    let line = process
        .wait_for_stderr(READY_TIMEOUT, |l| {
            l.contains(ready) || l.starts_with("Error:") || l.starts_with("error:")
        })
        .map_err(|e| format!("waypoint: {e}"))?;
    if !line.contains(ready) {
        // The rest of the error chain follows the first line.
        std::thread::sleep(Duration::from_millis(100));
        return Err(format!(
            "the waypoint failed to start:\n{}",
            process.stderr().join("\n")
        ));
    }
    Ok(process)
}

/// The processes whose CPU time and memory a round reads.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The waypoint's pid, when it runs.
    pub waypoint: Option<u32>,
    /// Both ztunnels' pids.
    pub ztunnels: Vec<u32>,
}

impl Watched {
    fn cpu(&self) -> Result<(f64, f64), String> {
        let waypoint = self.waypoint.map_or(Ok(0.0), host::cpu_seconds)?;
        let ztunnels = self
            .ztunnels
            .iter()
            .map(|&pid| host::cpu_seconds(pid))
            .sum::<Result<f64, String>>()?;
        Ok((waypoint, ztunnels))
    }
}

/// One round of the HTTP workload in one scenario.
pub struct Round<'a> {
    /// The testbed.
    pub bed: &'a Testbed,
    /// Rates, counts and durations.
    pub settings: &'a Settings,
    /// The token.
    pub credentials: &'a Credentials,
    /// The pod h2load runs in.
    pub client: &'a str,
    /// Where the requests go.
    pub route: Route,
    /// Whose CPU and memory count.
    pub watched: Watched,
    /// The waypoint process, for its access log when requests fail.
    pub waypoint: Option<&'a Process>,
}

/// What one round measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Metric values of this round.
    pub values: Vec<(&'static str, f64)>,
    /// The latencies of each fixed-rate run, nanoseconds.
    pub latency: Vec<(Protocol, Histogram<u64>)>,
    /// Workloads that failed: what, and why.
    pub failures: Vec<(String, String)>,
    /// A short summary for the progress line.
    pub line: String,
}

/// One fixed-rate run.
struct FixedRun {
    log: h2load::RequestLog,
    requests: u64,
    waypoint_cpu: f64,
    ztunnel_cpu: f64,
    /// The largest (VmRSS, RssAnon) seen, KiB.
    peak_rss_kib: Option<(u64, u64)>,
}

impl Round<'_> {
    /// Runs the round; a failed step is reported in `failures` and leaves its
    /// values out.
    pub fn run(&self) -> Measured {
        let mut out = Measured::default();
        let rate = self.settings.http_rate;
        let mut working = Vec::new();
        for protocol in Protocol::ALL {
            match self.fixed(protocol, (rate / 5).max(20), false) {
                Ok(_) => working.push(protocol),
                Err(e) => out
                    .failures
                    .push((format!("{} requests", protocol.label()), e)),
            }
        }
        let (mut requests, mut waypoint_cpu, mut ztunnel_cpu) = (0, 0.0, 0.0);
        let mut peak: Option<(u64, u64)> = None;
        let mut all_fixed = !working.is_empty() && working.len() == Protocol::ALL.len();
        for &protocol in &working {
            match self.fixed(protocol, self.settings.http_requests, true) {
                Ok(run) => {
                    let latency = super::latency::from_histogram(run.log.histogram);
                    let (p50, p99) = match protocol {
                        Protocol::Http1 => (HTTP1_P50, HTTP1_P99),
                        Protocol::Http2 => (HTTP2_P50, HTTP2_P99),
                    };
                    out.values.push((p50, latency.p50_us));
                    out.values.push((p99, latency.p99_us));
                    out.line.push_str(&format!(
                        " {} p50/p99={:.0}/{:.0}us",
                        protocol.label(),
                        latency.p50_us,
                        latency.p99_us
                    ));
                    out.latency.push((protocol, latency.histogram));
                    requests += run.requests;
                    waypoint_cpu += run.waypoint_cpu;
                    ztunnel_cpu += run.ztunnel_cpu;
                    peak = max_rss(peak, run.peak_rss_kib);
                }
                Err(e) => {
                    all_fixed = false;
                    out.failures
                        .push((format!("{} at {rate} requests/s", protocol.label()), e));
                }
            }
        }
        // CPU per request pooled over both protocols: only when both ran, so
        // the rounds stay comparable.
        if all_fixed && requests > 0 {
            let per_1k = |cpu: f64| cpu / (requests as f64 / 1000.0);
            out.values.push((ZTUNNEL_CPU_PER_1K, per_1k(ztunnel_cpu)));
            if self.watched.waypoint.is_some() && self.route == Route::Service {
                out.values.push((WAYPOINT_CPU_PER_1K, per_1k(waypoint_cpu)));
                out.line
                    .push_str(&format!(" waypoint cpu={:.3}s/1k", per_1k(waypoint_cpu)));
            }
        }
        if let Some((rss, anon)) = peak.filter(|_| self.route == Route::Service) {
            out.values.push((WAYPOINT_RSS, rss as f64 / 1024.0));
            out.values.push((WAYPOINT_RSS_ANON, anon as f64 / 1024.0));
            out.line
                .push_str(&format!(" waypoint rss={:.1}MiB", rss as f64 / 1024.0));
        }
        self.closed_loops(&working, &mut out);
        out
    }

    /// Requests/s as fast as it goes, per protocol, and the cores the
    /// waypoint kept busy meanwhile.
    fn closed_loops(&self, working: &[Protocol], out: &mut Measured) {
        let (mut busy, mut wall, mut runs) = (0.0, 0.0, 0);
        for &protocol in working {
            let load = ClosedLoop {
                seconds: self.settings.http_seconds,
                warm_up_ms: WARM_UP_MS,
            };
            let before = self.watched.cpu();
            let started = Instant::now();
            let result = self.h2load(protocol, load);
            let elapsed = started.elapsed().as_secs_f64();
            match result.and_then(|stdout| {
                let summary = h2load::parse_summary(&stdout)?;
                summary.check(None).map_err(|e| self.explain(e))?;
                Ok(summary.requests_per_s)
            }) {
                Ok(rps) => {
                    let (key, per_core) = match protocol {
                        Protocol::Http1 => (HTTP1_RPS, WAYPOINT_HTTP1_PER_CORE),
                        Protocol::Http2 => (HTTP2_RPS, WAYPOINT_HTTP2_PER_CORE),
                    };
                    out.values.push((key, rps));
                    out.line
                        .push_str(&format!(" {} {rps:.0}/s", protocol.label()));
                    if let (Ok((b, _)), Ok((a, _))) = (before, self.watched.cpu()) {
                        busy += a - b;
                        wall += elapsed;
                        runs += 1;
                        // h2load's rate is over its measured duration; the
                        // CPU over the whole run: the warm-up's share of
                        // both is alike.
                        if self.route == Route::Service && a > b && elapsed > 0.0 {
                            let capacity = rps / ((a - b) / elapsed);
                            out.values.push((per_core, capacity));
                            out.line.push_str(&format!(" ({capacity:.0}/s per core)"));
                        }
                    }
                }
                Err(e) => out
                    .failures
                    .push((format!("{} requests/s (closed loop)", protocol.label()), e)),
            }
        }
        if runs == Protocol::ALL.len() && wall > 0.0 && self.route == Route::Service {
            out.values.push((WAYPOINT_CORES_AT_MAX, busy / wall));
        }
    }

    /// One fixed-rate run of `requests`; `measure` samples the waypoint's RSS
    /// and counts CPU time (the warm-up does neither).
    fn fixed(&self, protocol: Protocol, requests: u32, measure: bool) -> Result<FixedRun, String> {
        let log_file = self.log_file(protocol);
        let before = if measure {
            self.watched.cpu()?
        } else {
            (0.0, 0.0)
        };
        let (run, peak_rss_kib) = if measure {
            self.sampling_rss(|| self.paced(protocol, requests, &log_file))
        } else {
            (self.paced(protocol, requests, &log_file), None)
        };
        let after = if measure {
            self.watched.cpu()?
        } else {
            (0.0, 0.0)
        };
        let text = std::fs::read_to_string(&log_file);
        let _ = std::fs::remove_file(&log_file);
        run?;
        let text = text.map_err(|e| format!("{}: {e}", log_file.display()))?;
        let log = h2load::parse_log(&text)?;
        if log.not_ok > 0 || log.histogram.len() != u64::from(requests) {
            return Err(self.explain(format!(
                "the load's log has {} requests with a 2xx and {} without (the first: status {:?}) \
                 of {requests}",
                log.histogram.len(),
                log.not_ok,
                log.first_not_ok,
            )));
        }
        Ok(FixedRun {
            requests: u64::from(requests),
            log,
            waypoint_cpu: after.0 - before.0,
            ztunnel_cpu: after.1 - before.1,
            peak_rss_kib,
        })
    }

    /// Runs `work` while another thread reads the waypoint's RSS every
    /// [`SAMPLE_EVERY`]; returns its result and the largest reading.
    fn sampling_rss<T>(&self, work: impl FnOnce() -> T) -> (T, Option<(u64, u64)>) {
        let Some(pid) = self.watched.waypoint else {
            return (work(), None);
        };
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let done = &done;
            let sampler = scope.spawn(move || {
                let mut peak = None;
                while !done.load(Ordering::Relaxed) {
                    if let (Ok(rss), Ok(anon)) = (host::rss_kib(pid), host::rss_anon_kib(pid)) {
                        peak = max_rss(peak, Some((rss, anon)));
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
                peak
            });
            let result = work();
            done.store(true, Ordering::Relaxed);
            (result, sampler.join().unwrap_or(None))
        })
    }

    /// Runs `ambit-httpbin load` in the client pod: `requests` at the fixed
    /// rate, paced per request (see [`crate::load`]), each latency in
    /// `log_file`.
    fn paced(&self, protocol: Protocol, requests: u32, log_file: &Path) -> Result<(), String> {
        let (connections, _) = protocol.fixed_rate_shape();
        let (addr, path) = self
            .url(protocol)
            .strip_prefix("http://")
            .and_then(|rest| {
                rest.split_once('/')
                    .map(|(a, p)| (a.to_owned(), format!("/{p}")))
            })
            .ok_or_else(|| "the URL is not http://<addr>/<path>".to_owned())?;
        let version = match protocol {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
        };
        let rate = self.settings.http_rate;
        let mut cmd = self
            .bed
            .pod_command(self.client, crate::waypoint::httpbin_binary());
        cmd.args(["load", &addr, version])
            .arg(connections.to_string())
            .arg(rate.to_string())
            .arg(requests.to_string())
            .arg(log_file)
            .arg(&path)
            .arg(&self.credentials.header);
        let timeout = Duration::from_secs(u64::from(requests / rate.max(1)) + 30);
        self.bed
            .run(cmd, timeout)
            .map(drop)
            .map_err(|e| self.credentials.redact(&e.to_string()))
    }

    /// Runs h2load in the client pod; its stdout, or why it failed.
    fn h2load(&self, protocol: Protocol, load: ClosedLoop) -> Result<String, String> {
        let url = self.url(protocol);
        let args = h2load::args(protocol, load, &url, &self.credentials.header);
        let seconds = load.seconds + 1;
        let mut cmd = self.bed.pod_command(self.client, "h2load");
        cmd.args(&args);
        let timeout = Duration::from_secs(u64::from(seconds) + 30);
        match self.bed.run(cmd, timeout) {
            Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            Err(e) => Err(self.credentials.redact(&e.to_string())),
        }
    }

    /// Where `protocol`'s requests go on this round's route.
    fn url(&self, protocol: Protocol) -> String {
        match (self.route, protocol) {
            (Route::PodIp, _) => format!(
                "http://{}:{API_POD_PORT}{PATH}",
                self.bed.pod(API_POD).ipv4()
            ),
            (Route::Service, Protocol::Http1) => format!("http://{API_VIP}:{HTTP1_PORT}{PATH}"),
            (Route::Service, Protocol::Http2) => format!("http://{API_VIP}:{HTTP2_PORT}{PATH}"),
        }
    }

    fn log_file(&self, protocol: Protocol) -> PathBuf {
        let name = match protocol {
            Protocol::Http1 => "load-http1.log",
            Protocol::Http2 => "load-http2.log",
        };
        self.bed.workdir().join(name)
    }

    /// `error`, with the waypoint's first access log line of a refused or
    /// failed request, if any: what the waypoint decided and why.
    fn explain(&self, error: String) -> String {
        let Some(waypoint) = self.waypoint.filter(|_| self.route == Route::Service) else {
            return error;
        };
        let first = waypoint.stderr().into_iter().find(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|l| {
                l["target"] == "access"
                    && l["message"] == "request"
                    && l["status"]
                        .as_u64()
                        .or_else(|| l["status"].as_str()?.parse().ok())
                        .is_none_or(|s| s >= 300)
            })
        });
        match first {
            Some(line) => format!("{error}; the waypoint's first such request: {line}"),
            None => error,
        }
    }
}

/// The larger of two (VmRSS, RssAnon) readings, by VmRSS.
fn max_rss(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_reach_error_messages() {
        let credentials = Credentials::generate();
        let message = format!("`h2load -H {}` failed", credentials.header);
        let redacted = credentials.redact(&message);
        assert!(!redacted.contains(&credentials.token), "{redacted}");
        assert!(redacted.contains("Bearer <token>"), "{redacted}");
    }

    #[test]
    fn documents_are_yaml_attached_to_the_gateway() {
        let credentials = Credentials::generate();
        let documents = documents(&credentials);
        assert_eq!(documents.len(), 4);
        for document in &documents {
            let _: serde_json::Value =
                serde_yaml_ng::from_str(document).unwrap_or_else(|e| panic!("{e}: {document}"));
        }
        let authentication: serde_json::Value =
            serde_yaml_ng::from_str(&documents[2]).expect("yaml");
        let keys: serde_json::Value = serde_json::from_str(
            authentication["spec"]["jwtRules"][0]["jwks"]
                .as_str()
                .expect("inline jwks"),
        )
        .expect("a JWK Set");
        assert_eq!(keys["keys"][0]["kid"], "bench");
        let policy: serde_json::Value = serde_yaml_ng::from_str(&documents[3]).expect("yaml");
        assert_eq!(policy["spec"]["targetRefs"][0]["name"], "wp");
        assert_eq!(
            policy["spec"]["rules"][0]["from"][0]["source"]["requestPrincipals"][0],
            "https://idp.bench/bench-client"
        );
    }

    #[test]
    fn the_larger_rss_wins() {
        assert_eq!(max_rss(None, Some((5, 1))), Some((5, 1)));
        assert_eq!(max_rss(Some((7, 2)), Some((5, 3))), Some((7, 2)));
        assert_eq!(max_rss(None, None), None);
    }
}
