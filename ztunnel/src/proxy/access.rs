//! Access logs: one line per proxied connection, on the `access` target, with
//! dotted fields (`src.addr`, `src.identity`, `dst.addr`, `bytes_sent`, ...).
//! With `LOG_FORMAT=json` each is one JSON object.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use super::ConnectionError;
use crate::metrics::{ProxyMetrics, TcpConnection, TcpLabels};

/// The bytes of one connection, counted as they move: into the access log
/// line however the connection ends, and into the connection metrics while
/// it runs.
#[derive(Debug, Default)]
pub struct Traffic {
    /// From the client to the server.
    forward: AtomicU64,
    /// From the server to the client.
    backward: AtomicU64,
    /// Its series, once it is counted.
    metrics: Option<TcpConnection>,
}

impl crate::relay::Meter for Traffic {
    fn moved(&self, forward: u64, backward: u64) {
        self.forward.fetch_add(forward, Ordering::Relaxed);
        self.backward.fetch_add(backward, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            if forward > 0 {
                metrics.received(forward);
            }
            if backward > 0 {
                metrics.sent(backward);
            }
        }
    }
}

/// Which listener took the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the pod's application, to anywhere.
    Outbound,
    /// From outside the pod, to its application.
    Inbound,
}

impl Direction {
    /// How the direction is written in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// A connection being proxied; [`Connection::finish`] writes its log line.
#[derive(Debug)]
pub struct Connection {
    /// Which way it goes.
    pub direction: Direction,
    /// The pod it belongs to on this node, as namespace/name.
    pub workload: String,
    /// The client.
    pub src: SocketAddr,
    /// The client's authenticated identity, when it has one.
    pub src_identity: Option<String>,
    /// The original destination, once known.
    pub dst: Option<SocketAddr>,
    /// The destination's identity, when it is reached through HBONE.
    pub dst_identity: Option<String>,
    /// How the bytes travel: `hbone`, `passthrough` or `plaintext`.
    pub mode: &'static str,
    /// The waypoint the connection goes through, if any.
    pub waypoint: Option<crate::registry::ObjectKey>,
    /// The authorization decision and what took it (at the destination).
    pub decision: Option<String>,
    /// The connection's trace id (the CONNECT's `traceparent`), over HBONE.
    pub trace_id: Option<String>,
    /// Its bytes: the relay's [`Meter`](crate::relay::Meter).
    pub traffic: Traffic,
    metrics: ProxyMetrics,
    started: Instant,
}

impl Connection {
    /// Starts the record of a connection accepted now; `metrics` count it.
    pub fn new(
        direction: Direction,
        workload: String,
        src: SocketAddr,
        metrics: &ProxyMetrics,
    ) -> Self {
        Self {
            direction,
            workload,
            src,
            src_identity: None,
            dst: None,
            dst_identity: None,
            mode: "plaintext",
            waypoint: None,
            decision: None,
            trace_id: None,
            traffic: Traffic::default(),
            metrics: metrics.clone(),
            started: Instant::now(),
        }
    }

    /// Counts the connection in the connection metrics under `labels`, from
    /// now until the record is dropped.
    pub fn count(&mut self, labels: &TcpLabels) {
        self.traffic.metrics = Some(self.metrics.open(labels));
    }

    /// Logs the outcome: the bytes each way (what moved, also when it ended
    /// in an error) and the error.
    pub fn finish(&self, result: &Result<(u64, u64), ConnectionError>) {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (src_workload, dst_workload) = match self.direction {
            Direction::Outbound => (self.workload.as_str(), ""),
            Direction::Inbound => ("", self.workload.as_str()),
        };
        let bytes_sent = self.traffic.forward.load(Ordering::Relaxed);
        let bytes_received = self.traffic.backward.load(Ordering::Relaxed);
        if let Err(error) = result {
            self.metrics.failed(error.reason());
        }
        let error = result.as_ref().err().map(|e| super::error_chain(e));
        let decision = match result {
            Err(ConnectionError::Denied(reason)) => reason.as_str(),
            _ => self.decision.as_deref().unwrap_or(""),
        };
        let line = (
            self.dst.map(|d| d.to_string()).unwrap_or_default(),
            self.src_identity.as_deref().unwrap_or(""),
            self.dst_identity.as_deref().unwrap_or(""),
            self.waypoint
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        macro_rules! access {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    target: "access",
                    direction = self.direction.as_str(),
                    mode = self.mode,
                    src.addr = %self.src,
                    src.workload = src_workload,
                    src.identity = line.1,
                    dst.addr = line.0,
                    dst.workload = dst_workload,
                    dst.identity = line.2,
                    waypoint = line.3,
                    decision,
                    trace_id = self.trace_id.as_deref().unwrap_or(""),
                    bytes_sent,
                    bytes_received,
                    duration_ms,
                    error = error.as_deref().unwrap_or(""),
                    $message
                )
            };
        }
        if error.is_some() {
            access!(warn, "connection failed");
        } else if crate::telemetry::sample_access() {
            access!(info, "connection complete");
        }
    }
}
