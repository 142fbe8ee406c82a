//! The waypoint's request metrics, with Istio's names and labels so that
//! existing dashboards read them unchanged (`reporter="waypoint"`):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `istio_requests_total` | counter | requests answered |
//! | `istio_request_duration_milliseconds` | histogram | from the request head to the end of the response |
//! | `istio_request_bytes` | histogram | request body bytes (as the request declared them; 0 when unknown) |
//! | `istio_response_bytes` | histogram | response body bytes sent |
//!
//! Labels name workloads, services and identities (by their canonical name
//! and revision, never a pod or a client port), the response code and gRPC
//! status: bounded by the mesh's size, not by its traffic.
//!
//! Building the 19 labels and finding their four series costs a dozen
//! allocations and four hashes of every label. The requests of one
//! downstream stream share most of them (client, destination service), so
//! each stream keeps a [`LabelCache`]: the series of the few outcomes
//! (endpoint, status, gRPC status, flags) its requests had, found by
//! comparing those few fields. It is emptied when the configuration changes
//! (workload names may have) and when it holds [`CACHED_OUTCOMES`].

use std::{net::IpAddr, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use ztunnel::{metrics::PeerLabels, registry::Snapshot};

/// Istio's duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's size buckets, in bytes (powers of ten up to 1 GB).
const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Outcomes a [`LabelCache`] keeps before it starts over.
pub const CACHED_OUTCOMES: usize = 16;

/// The labels of one request, as Istio names them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct RequestLabels {
    pub reporter: &'static str,
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The request metrics of one waypoint.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
}

impl RequestMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            request_bytes: Family::new_with_constructor(|| Histogram::new(BYTES_BUCKETS)),
            response_bytes: Family::new_with_constructor(|| Histogram::new(BYTES_BUCKETS)),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests handled by the waypoint",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from the request head to the end of the response",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes sent",
            metrics.response_bytes.clone(),
        );
        metrics
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, duration_ms: f64, request: u64, response: u64) {
        self.series(labels).observe(duration_ms, request, response);
    }

    /// Records one finished request of a stream whose `cache` may already
    /// know the series of `outcome` under configuration `generation`;
    /// `labels` builds the labels when it does not.
    pub fn record_cached(
        &self,
        cache: &LabelCache,
        key: (u64, Outcome<'_>),
        labels: impl FnOnce() -> RequestLabels,
        observed: (f64, u64, u64),
    ) {
        let (generation, outcome) = key;
        let (duration_ms, request, response) = observed;
        let mut cached = cache
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.generation != generation || cached.entries.len() >= CACHED_OUTCOMES {
            cached.generation = generation;
            cached.entries.clear();
        }
        if let Some((_, series)) = cached.entries.iter().find(|(o, _)| o.is(&outcome)) {
            series.observe(duration_ms, request, response);
            return;
        }
        let series = self.series(&labels());
        series.observe(duration_ms, request, response);
        cached.entries.push((outcome.to_owned(), series));
    }

    fn series(&self, labels: &RequestLabels) -> Series {
        Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }
}

/// The four series of one label set (handles on the families' values).
#[derive(Debug, Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Series {
    #[allow(clippy::cast_precision_loss)]
    fn observe(&self, duration_ms: f64, request: u64, response: u64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(request as f64);
        self.response_bytes.observe(response as f64);
    }
}

/// What sets a request's labels apart from the other requests of its
/// stream (the client and the destination are the stream's).
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The endpoint's address.
    pub endpoint: Option<IpAddr>,
    /// The endpoint's identity.
    pub destination_principal: &'a str,
    /// The response status.
    pub status: u16,
    /// `grpc-status`.
    pub grpc_status: &'a str,
    /// Whether it is gRPC.
    pub grpc: bool,
    /// Istio's response flags.
    pub flags: &'static str,
}

/// An [`Outcome`] kept in a cache.
#[derive(Debug)]
struct OwnedOutcome {
    endpoint: Option<IpAddr>,
    destination_principal: String,
    status: u16,
    grpc_status: String,
    grpc: bool,
    flags: &'static str,
}

impl Outcome<'_> {
    fn to_owned(self) -> OwnedOutcome {
        OwnedOutcome {
            endpoint: self.endpoint,
            destination_principal: self.destination_principal.to_owned(),
            status: self.status,
            grpc_status: self.grpc_status.to_owned(),
            grpc: self.grpc,
            flags: self.flags,
        }
    }
}

impl OwnedOutcome {
    fn is(&self, other: &Outcome<'_>) -> bool {
        self.endpoint == other.endpoint
            && self.status == other.status
            && self.grpc == other.grpc
            && self.flags == other.flags
            && self.grpc_status == other.grpc_status
            && self.destination_principal == other.destination_principal
    }
}

/// The series one downstream stream's requests were counted in; see the
/// module header.
#[derive(Debug, Default)]
pub struct LabelCache {
    inner: Mutex<CachedSeries>,
}

#[derive(Debug, Default)]
struct CachedSeries {
    generation: u64,
    entries: Vec<(OwnedOutcome, Series)>,
}

/// Fills the source and destination workload labels from `snapshot`: the
/// workloads at `source` and `endpoint` (unknown stays `unknown`, as in
/// Istio).
pub fn fill_workloads(
    labels: &mut RequestLabels,
    snapshot: &Snapshot,
    source: IpAddr,
    endpoint: Option<IpAddr>,
) {
    let workload = |ip| snapshot.workload_by_ip(ip).map(|w| &**w);
    labels.peers.source(workload(source), None);
    labels.peers.destination(endpoint.and_then(workload), None);
}

impl RequestLabels {
    /// Labels with every workload field `unknown`.
    pub fn unknown() -> Self {
        Self {
            reporter: "waypoint",
            peers: PeerLabels::unknown(),
            request_protocol: "http",
            response_code: "0".to_owned(),
            grpc_response_status: String::new(),
            response_flags: "-",
            connection_security_policy: "mutual_tls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_with_istio_names_and_labels() {
        let mut registry = Registry::default();
        let metrics = RequestMetrics::register(&mut registry);
        let mut labels = RequestLabels::unknown();
        labels.peers.destination_service_name = "api".to_owned();
        labels.response_code = "403".to_owned();
        metrics.record(&labels, 0.7, 0, 19);
        metrics.record(&labels, 3.0, 10, 19);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let total = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap_or_else(|| panic!("no istio_requests_total in:\n{text}"));
        for label in [
            r#"reporter="waypoint""#,
            r#"destination_service_name="api""#,
            r#"response_code="403""#,
            r#"response_flags="-""#,
            r#"connection_security_policy="mutual_tls""#,
        ] {
            assert!(total.contains(label), "{label} in {total}");
        }
        assert!(total.ends_with(" 2"), "{total}");
        // Both durations are at most 5 ms; one is at most 1 ms.
        assert!(
            text.lines().any(
                |l| l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains(r#"le="1.0""#)
                    && l.ends_with(" 1")
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 38.0")),
            "{text}"
        );
    }
}
