//! Prometheus metrics, served as OpenMetrics text on `settings::STATS_PORT`
//! (`GET /metrics`).
//!
//! Metrics are created once, in [`Metrics::new`], and updated where things
//! happen; label values come from small fixed sets (no per-connection or
//! per-client labels), so the cardinality is bounded.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `ambit_config_generation` | gauge | | the registry generation in force |
//! | `ambit_config_invalid_policies` | gauge | `kind` | policies that failed validation and are enforced fail-closed |
//! | `istio_tcp_connections_opened_total` | counter | [`TcpLabels`] | connections proxied (once authorized and connected) |
//! | `istio_tcp_connections_closed_total` | counter | [`TcpLabels`] | of those, the ones that ended |
//! | `istio_tcp_received_bytes_total` | counter | [`TcpLabels`] | bytes from the client to the server, counted as they move |
//! | `istio_tcp_sent_bytes_total` | counter | [`TcpLabels`] | bytes from the server to the client, counted as they move |
//!
//! | `ambit_connections_active` | gauge | `reporter` | connections being proxied now |
//! | `ambit_connection_failures_total` | counter | `reason` | connections that failed or were refused |
//! | `ambit_policy_decisions_total` | counter | `action`, `result` | authorization decisions |
//! | `ambit_enrolled_pods` | gauge | | pods of the node whose traffic is captured |
//! | `ambit_certificate_expiry_seconds` | gauge | `identity` | until each local identity's certificate expires |
//! | `ambit_hbone_connections`, `ambit_hbone_streams` | gauge | | HBONE client connections and streams open |
//! | `ambit_hbone_send_queued_bytes` | gauge | | bytes queued in HTTP/2 for HBONE peers, all connections |
//! | `ambit_hbone_send_budget_waits_total` | counter | | tunnel writes that waited for their connection's send budget |
//! | `ambit_config_rejected_updates_total` | counter | | configuration updates refused, the last good version kept |
//!
//! The `istio_tcp_*` metrics carry Istio's names and labels, so existing
//! dashboards read them: `reporter="source"` from the client's ztunnel,
//! `reporter="destination"` from the server's.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    accept::reply,
    registry::{Snapshot, Workload},
};

/// The `kind` label: a Kubernetes kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `AuthorizationPolicy`, `PeerAuthentication`, ...
    pub kind: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    config_generation: Gauge,
    invalid_policies: Family<KindLabel, Gauge>,
    proxy: ProxyMetrics,
    /// Run before each encoding, to read gauges that are cheaper to read
    /// than to keep up to date (certificate expiry, enrolled pods).
    on_scrape: std::sync::Mutex<Vec<Box<dyn Fn() + Send>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let config_generation = Gauge::default();
        registry.register(
            "ambit_config_generation",
            "The configuration (registry) generation in force",
            config_generation.clone(),
        );
        let invalid_policies = Family::<KindLabel, Gauge>::default();
        registry.register(
            "ambit_config_invalid_policies",
            "Security policies that failed validation and are enforced fail-closed",
            invalid_policies.clone(),
        );
        registry.register(
            "ambit_config_rejected_updates",
            "Configuration updates refused (the last good version stayed in force)",
            crate::config::rejected_updates().clone(),
        );
        let proxy = ProxyMetrics::register(&mut registry);
        Self {
            registry,
            config_generation,
            invalid_policies,
            proxy,
            on_scrape: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The proxy's metrics.
    pub fn proxy(&self) -> &ProxyMetrics {
        &self.proxy
    }

    /// Runs `update` before every scrape.
    pub fn on_scrape(&self, update: impl Fn() + Send + 'static) {
        self.on_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(update));
    }

    /// Records what a new registry snapshot holds.
    pub fn observe_snapshot(&self, snapshot: &Snapshot) {
        self.config_generation
            .set(i64::try_from(snapshot.generation()).unwrap_or(i64::MAX));
        for (kind, count) in snapshot.invalid_policies() {
            self.invalid_policies
                .get_or_create(&KindLabel {
                    kind: kind.kubernetes_kind(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The registry, for a process that adds metrics of its own (the
    /// waypoint's request metrics) before it shares this.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        for update in self
            .on_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            update();
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A workload's canonical name, revision and app as Istio derives them from
/// its labels (`service.istio.io/canonical-name`, `app.kubernetes.io/name`,
/// `app`, else the pod's name; revision `latest` when none says).
pub fn workload_names(workload: &Workload) -> (String, String, String) {
    let labels = &workload.labels;
    let name = labels
        .get("service.istio.io/canonical-name")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .or_else(|| labels.get("app"))
        .unwrap_or(&workload.name)
        .to_owned();
    let version = labels
        .get("service.istio.io/canonical-revision")
        .or_else(|| labels.get("app.kubernetes.io/version"))
        .or_else(|| labels.get("version"))
        .unwrap_or("latest")
        .to_owned();
    let app = labels.get("app").unwrap_or(&name).to_owned();
    (name, version, app)
}

/// Who connected to whom, with Istio's label names: the part that the
/// connection metrics ([`TcpLabels`]) and the waypoint's request metrics share
/// (each flattens it into its own labels). Every value names a workload,
/// service or identity (never a pod address or a client port), so the series
/// are bounded by the mesh's size.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct PeerLabels {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_app: String,
    pub destination_version: String,
}

impl PeerLabels {
    /// Every value `unknown`, as Istio writes what it does not know.
    pub fn unknown() -> Self {
        let unknown = || "unknown".to_owned();
        Self {
            source_workload: unknown(),
            source_workload_namespace: unknown(),
            source_principal: unknown(),
            source_app: unknown(),
            source_version: unknown(),
            destination_workload: unknown(),
            destination_workload_namespace: unknown(),
            destination_principal: unknown(),
            destination_service: unknown(),
            destination_service_name: unknown(),
            destination_service_namespace: unknown(),
            destination_app: unknown(),
            destination_version: unknown(),
        }
    }

    /// The client: its workload (when the registry knows the address) and
    /// identity (when it has one).
    pub fn source(&mut self, workload: Option<&Workload>, principal: Option<&str>) {
        if let Some(workload) = workload {
            let (name, version, app) = workload_names(workload);
            self.source_workload = name;
            self.source_version = version;
            self.source_app = app;
            self.source_workload_namespace = workload.namespace.to_string();
        }
        if let Some(principal) = principal {
            self.source_principal = principal.to_owned();
        }
    }

    /// The server: its workload and identity, when known.
    pub fn destination(&mut self, workload: Option<&Workload>, principal: Option<&str>) {
        if let Some(workload) = workload {
            let (name, version, app) = workload_names(workload);
            self.destination_workload = name;
            self.destination_version = version;
            self.destination_app = app;
            self.destination_workload_namespace = workload.namespace.to_string();
        }
        if let Some(principal) = principal {
            self.destination_principal = principal.to_owned();
        }
    }

    /// The Service `namespace/name` the client addressed.
    pub fn service(&mut self, namespace: &str, name: &str) {
        self.destination_service = format!("{name}.{namespace}.svc.cluster.local");
        self.destination_service_name = name.to_owned();
        self.destination_service_namespace = namespace.to_owned();
    }
}

/// The labels of a proxied connection, as Istio names them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct TcpLabels {
    pub reporter: &'static str,
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    /// `reporter` (`source` or `destination`), the peers `unknown`, protocol
    /// `tcp`, no flags, no mutual TLS.
    pub fn new(reporter: &'static str) -> Self {
        Self {
            reporter,
            peers: PeerLabels::unknown(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: "none",
        }
    }
}

/// `reporter` alone.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReporterLabel {
    /// `source` or `destination`.
    pub reporter: &'static str,
}

/// Why a connection failed (`ConnectionError::reason`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A short fixed word: `denied`, `strict`, `no_endpoint`, `connect`, ...
    pub reason: &'static str,
}

/// An authorization decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The action of the policy that decided: `ALLOW`, `DENY`, `CUSTOM`, or
    /// `none` when no policy did (the default).
    pub action: &'static str,
    /// `allowed` or `denied`.
    pub result: &'static str,
}

/// A workload identity.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabel {
    /// The SPIFFE URI.
    pub identity: String,
}

/// An eBPF map.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    /// Its name (`ENROLLED`, `LOOPBACK_SOCKS`, ...).
    pub map: &'static str,
}

/// How full the capture's eBPF maps are (ztunnel only; read periodically
/// off the data path, see `capture::map_occupancy`).
#[derive(Debug, Clone, Default)]
pub struct MapMetrics {
    entries: Family<MapLabel, Gauge>,
    capacity: Family<MapLabel, Gauge>,
    shortcut_bytes: Family<ShortcutLabel, Counter>,
    shortcut_switches: Family<SwitchLabel, Counter>,
    shortcut_seen: Arc<std::sync::Mutex<Option<[u64; 5]>>>,
    tcp_pressure: Gauge,
}

/// Where a shortcut connection's sends switched to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabel {
    /// `tcp` or `redirect`.
    pub to: &'static str,
}

/// A path of the loopback shortcut.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShortcutLabel {
    /// `redirect` (straight into ztunnel's socket) or `tcp` (loopback TCP).
    pub path: &'static str,
}

impl MapMetrics {
    /// Creates the gauges and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "ambit_ebpf_map_entries",
            "Entries in each eBPF map of the capture",
            metrics.entries.clone(),
        );
        registry.register(
            "ambit_ebpf_map_capacity",
            "Maximum entries of each eBPF map of the capture",
            metrics.capacity.clone(),
        );
        registry.register(
            "ambit_sockmap_bytes",
            "Bytes applications sent over shortcut connections, by the path they took \
             (redirect: straight into ztunnel's socket; tcp: loopback TCP)",
            metrics.shortcut_bytes.clone(),
        );
        registry.register(
            "ambit_sockmap_switches",
            "Times a shortcut connection's sends switched path, by the path switched to \
             (tcp: ztunnel was the cap behind, or TCP memory was under pressure; \
             redirect: ztunnel had read everything sent; off: a bulk transfer left the \
             shortcut for good)",
            metrics.shortcut_switches.clone(),
        );
        registry.register(
            "ambit_sockmap_tcp_pressure",
            "1 while the node's TCP memory is past tcp_mem[0] and the shortcut redirects nothing",
            metrics.tcp_pressure.clone(),
        );
        metrics
    }

    /// Records the shortcut's counters: bytes redirected, bytes sent by
    /// TCP, switches to TCP and back (totals since the map was created, read
    /// from it), and bulk connections taken off the shortcut (this process's
    /// count). The metrics count from this ztunnel's first reading.
    pub fn observe_shortcut(&self, now: [u64; 5]) {
        let mut seen = self
            .shortcut_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = seen.unwrap_or(now);
        let grown = |i: usize| now[i].saturating_sub(before[i]);
        // One get_or_create per statement: its guard holds the family's lock
        // until the statement ends, and creating the next label needs it.
        for (path, i) in [("redirect", 0), ("tcp", 1)] {
            self.shortcut_bytes
                .get_or_create(&ShortcutLabel { path })
                .inc_by(grown(i));
        }
        for (to, i) in [("tcp", 2), ("redirect", 3), ("off", 4)] {
            self.shortcut_switches
                .get_or_create(&SwitchLabel { to })
                .inc_by(grown(i));
        }
        *seen = Some(now);
    }

    /// Records whether the shortcut is held off by TCP memory pressure.
    pub fn observe_tcp_pressure(&self, on: bool) {
        self.tcp_pressure.set(i64::from(on));
    }

    /// Records that `map` holds `entries` of at most `capacity`.
    pub fn observe(&self, map: &'static str, entries: u64, capacity: u32) {
        let label = MapLabel { map };
        self.entries
            .get_or_create(&label)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.capacity.get_or_create(&label).set(i64::from(capacity));
    }
}

/// The proxy's metrics: Istio's connection metrics and ambit's own.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    active: Family<ReporterLabel, Gauge>,
    failures: Family<ReasonLabel, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    /// Enrolled pods of the node.
    pub enrolled_pods: Gauge,
    /// Seconds until each local identity's certificate expires.
    pub certificate_expiry: Family<IdentityLabel, Gauge>,
    hbone_connections: Gauge,
    hbone_streams: Gauge,
    /// HBONE peers refused or cut off by the server, by reason
    /// (`hbone::guard::Rejection`).
    pub hbone_rejections: Family<ReasonLabel, Counter>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // prometheus-client appends `_total` to counters.
        for (name, help, family) in [
            (
                "istio_tcp_connections_opened",
                "TCP connections opened",
                &metrics.opened,
            ),
            (
                "istio_tcp_connections_closed",
                "TCP connections closed",
                &metrics.closed,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the client (the request), counted as they move",
                &metrics.received,
            ),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent to the client (the response), counted as they move",
                &metrics.sent,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "ambit_connections_active",
            "Connections being proxied now",
            metrics.active.clone(),
        );
        registry.register(
            "ambit_connection_failures",
            "Connections that failed or were refused, by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "ambit_policy_decisions",
            "Authorization decisions, by the action that decided and the result",
            metrics.decisions.clone(),
        );
        registry.register(
            "ambit_enrolled_pods",
            "Pods of this node whose traffic is captured",
            metrics.enrolled_pods.clone(),
        );
        registry.register(
            "ambit_hbone_connections",
            "HBONE client connections open (the pools of every pod)",
            metrics.hbone_connections.clone(),
        );
        registry.register(
            "ambit_hbone_streams",
            "HBONE client streams (tunnels) open",
            metrics.hbone_streams.clone(),
        );
        registry.register(
            "ambit_hbone_rejections",
            "HBONE connections the server refused or ended for what the peer did, by reason",
            metrics.hbone_rejections.clone(),
        );
        registry.register(
            "ambit_hbone_send_queued_bytes",
            "Bytes queued in HTTP/2 for HBONE peers (written by the proxy, not yet to TLS), all connections",
            crate::hbone::SEND_QUEUED.clone(),
        );
        registry.register(
            "ambit_hbone_send_budget_waits",
            "Tunnel writes that waited for their HBONE connection's send budget (the peer reads slower than its streams are written)",
            crate::hbone::SEND_BUDGET_WAITS.clone(),
        );
        registry.register(
            "ambit_certificate_expiry_seconds",
            "Seconds until the certificate of each local identity expires (negative: expired)",
            metrics.certificate_expiry.clone(),
        );
        metrics
    }

    /// Reads the HBONE pools' usage into their gauges (before a scrape).
    pub fn observe_pools(&self) {
        let (connections, streams) = crate::hbone::client::pool_usage();
        self.hbone_connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        self.hbone_streams
            .set(i64::try_from(streams).unwrap_or(i64::MAX));
    }

    /// Counts a failed or refused connection.
    pub fn failed(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts an authorization decision.
    pub fn decided(&self, action: &'static str, allowed: bool) {
        let result = if allowed { "allowed" } else { "denied" };
        self.decisions
            .get_or_create(&DecisionLabels { action, result })
            .inc();
    }

    /// Counts a connection refused before it carried a byte (by policy, or
    /// because its destination could not be reached) as opened and closed at
    /// once under `labels` with `response_flags` set to `flag`, as Istio does:
    /// dashboards see refusals per source and destination.
    pub fn refused(&self, labels: &TcpLabels, flag: &'static str) {
        let labels = TcpLabels {
            response_flags: flag,
            ..labels.clone()
        };
        self.opened.get_or_create(&labels).inc();
        self.closed.get_or_create(&labels).inc();
    }

    /// Counts a connection opened with `labels`; the handle counts its bytes
    /// and its close.
    pub fn open(&self, labels: &TcpLabels) -> TcpConnection {
        self.opened.get_or_create(labels).inc();
        let active = self
            .active
            .get_or_create(&ReporterLabel {
                reporter: labels.reporter,
            })
            .clone();
        active.inc();
        TcpConnection {
            received: self.received.get_or_create(labels).clone(),
            sent: self.sent.get_or_create(labels).clone(),
            closed: self.closed.get_or_create(labels).clone(),
            active,
        }
    }
}

/// The series of one open connection.
#[derive(Debug)]
pub struct TcpConnection {
    received: Counter,
    sent: Counter,
    closed: Counter,
    active: Gauge,
}

impl TcpConnection {
    /// Bytes moved from the client to the server.
    pub fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    /// Bytes moved from the server to the client.
    pub fn sent(&self, bytes: u64) {
        self.sent.inc_by(bytes);
    }
}

impl Drop for TcpConnection {
    /// However the connection ended, it is counted closed.
    fn drop(&mut self) {
        self.closed.inc();
        self.active.dec();
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    crate::accept::serve_http1(listener, "metrics", move |request| {
        respond(request, &metrics)
    })
    .await;
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics" | "/stats/prometheus") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /metrics (or /stats/prometheus)\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_policies_are_counted_by_kind() {
        let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec: {rules: [{to: [{operation: {ports: [http]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: good, namespace: shop}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad, namespace: shop}
spec: {portLevelMtls: {\"8080\": {mode: DISABLE}}}
";
        let mesh = crate::config::file::test_registry(yaml).unwrap();
        let metrics = Metrics::new();
        metrics.observe_snapshot(&mesh.snapshot());
        assert_lines(
            &metrics.encode(),
            &[
                "ambit_config_invalid_policies{kind=\"AuthorizationPolicy\"} 1",
                "ambit_config_invalid_policies{kind=\"PeerAuthentication\"} 1",
                "ambit_config_invalid_policies{kind=\"RequestAuthentication\"} 0",
                "ambit_config_generation 1",
            ],
        );
    }

    #[test]
    fn shortcut_counters_count_from_the_first_reading() {
        let mut metrics = Metrics::new();
        let maps = MapMetrics::register(metrics.registry_mut());
        // Totals a previous ztunnel left in the pinned map: the origin.
        maps.observe_shortcut([100, 200, 3, 4, 0]);
        maps.observe_shortcut([150, 260, 5, 4, 1]);
        assert_lines(
            &metrics.encode(),
            &[
                "ambit_sockmap_bytes_total{path=\"redirect\"} 50",
                "ambit_sockmap_bytes_total{path=\"tcp\"} 60",
                "ambit_sockmap_switches_total{to=\"tcp\"} 2",
                "ambit_sockmap_switches_total{to=\"redirect\"} 0",
                "ambit_sockmap_switches_total{to=\"off\"} 1",
            ],
        );
    }

    /// Asserts that each of `lines` is a whole line of the exposition `text`.
    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "{line} in:\n{text}");
        }
    }
}
