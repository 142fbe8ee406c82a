//! Access logs: one line per proxied connection, on the `access` target, with
//! dotted fields (`src.addr`, `src.identity`, `dst.addr`, `bytes_sent`, ...).
//! With `LOG_FORMAT=json` each is one JSON object.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use serde::Serialize;

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
    metrics: OnceLock<TcpConnection>,
}

impl crate::relay::Meter for Traffic {
    fn moved(&self, forward: u64, backward: u64) {
        self.forward.fetch_add(forward, Ordering::Relaxed);
        self.backward.fetch_add(backward, Ordering::Relaxed);
        if let Some(metrics) = self.metrics.get() {
            if forward > 0 {
                metrics.received(forward);
            }
            if backward > 0 {
                metrics.sent(backward);
            }
        }
    }
}

/// The connections being proxied now, for the admin endpoint's
/// `/debug/connections`.
#[derive(Debug, Default, Clone)]
pub struct OpenConnections(Arc<OpenInner>);

#[derive(Debug, Default)]
struct OpenInner {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Open>>,
}

#[derive(Debug)]
struct Open {
    direction: Direction,
    mode: &'static str,
    workload: String,
    src: SocketAddr,
    src_identity: String,
    dst: String,
    dst_identity: String,
    started: Instant,
    traffic: Arc<Traffic>,
}

/// One open connection, as `/debug/connections` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OpenConnection {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `hbone`, `passthrough` or `plaintext`.
    pub mode: &'static str,
    /// The pod of this node it belongs to.
    pub workload: String,
    /// The client.
    pub src: String,
    /// The client's identity, if any.
    pub src_identity: String,
    /// The destination.
    pub dst: String,
    /// The destination's identity, if any.
    pub dst_identity: String,
    /// Bytes from the client so far.
    pub bytes_sent: u64,
    /// Bytes to the client so far.
    pub bytes_received: u64,
    /// Since it was accepted, milliseconds.
    pub age_ms: u64,
}

impl OpenConnections {
    fn insert(&self, open: Open) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, open);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Open>> {
        self.0.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every open connection, oldest first.
    pub fn snapshot(&self) -> Vec<OpenConnection> {
        self.lock()
            .values()
            .map(|o| OpenConnection {
                direction: o.direction.as_str(),
                mode: o.mode,
                workload: o.workload.clone(),
                src: o.src.to_string(),
                src_identity: o.src_identity.clone(),
                dst: o.dst.clone(),
                dst_identity: o.dst_identity.clone(),
                bytes_sent: o.traffic.forward.load(Ordering::Relaxed),
                bytes_received: o.traffic.backward.load(Ordering::Relaxed),
                age_ms: u64::try_from(o.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
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

    /// Istio's `reporter` for a connection seen this way: the client's
    /// ztunnel reports outbound connections, the server's inbound ones.
    pub fn reporter(self) -> &'static str {
        match self {
            Self::Outbound => "source",
            Self::Inbound => "destination",
        }
    }
}

/// Connection ids, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection being proxied; [`Connection::finish`] writes its log line.
#[derive(Debug)]
pub struct Connection {
    /// Unique in this process: in its access line (`conn_id`) and in the
    /// debug spans of its steps.
    pub id: u64,
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
    pub traffic: Arc<Traffic>,
    /// Its connection metric labels, once its peers are known: counted from
    /// [`count`](Self::count), or, if it is refused before that, counted as
    /// opened and closed with the refusal's `response_flags`.
    pub labels: Option<TcpLabels>,
    metrics: ProxyMetrics,
    open: OpenConnections,
    flows: crate::flows::FlowLog,
    /// Its entry in `open`, once counted.
    open_id: Option<u64>,
    started: Instant,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(id) = self.open_id.take() {
            self.open.remove(id);
        }
    }
}

impl Connection {
    /// Starts the record of a connection accepted now; `mesh`'s metrics
    /// count it, and its table of open connections lists it while it runs.
    pub fn new(
        direction: Direction,
        workload: String,
        src: SocketAddr,
        mesh: &super::Mesh,
    ) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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
            traffic: Arc::default(),
            labels: None,
            metrics: mesh.metrics.clone(),
            open: mesh.open.clone(),
            flows: mesh.flows.clone(),
            open_id: None,
            started: Instant::now(),
        }
    }

    /// Counts the connection in the connection metrics under its
    /// [`labels`](Self::labels) (`reporter` unknown if unset), from now until
    /// the record is dropped.
    pub fn count(&mut self) {
        let labels = self
            .labels
            .get_or_insert_with(|| TcpLabels::new(self.direction.reporter()));
        let _ = self.traffic.metrics.set(self.metrics.open(labels));
        self.open_id = Some(self.open.insert(Open {
            direction: self.direction,
            mode: self.mode,
            workload: self.workload.clone(),
            src: self.src,
            src_identity: self.src_identity.clone().unwrap_or_default(),
            dst: self.dst.map(|d| d.to_string()).unwrap_or_default(),
            dst_identity: self.dst_identity.clone().unwrap_or_default(),
            started: self.started,
            traffic: self.traffic.clone(),
        }));
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
            if let (None, Some(labels), Some(flag)) =
                (self.open_id, &self.labels, error.response_flag())
            {
                self.metrics.refused(labels, flag);
            }
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
                    conn_id = self.id,
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
        self.record_flow(result, bytes_sent, bytes_received, duration_ms);
    }

    /// Adds the connection to the recent flows of the traffic view, with its
    /// ends as the metrics name them (workload and namespace, else the
    /// address).
    fn record_flow(
        &self,
        result: &Result<(u64, u64), ConnectionError>,
        bytes_sent: u64,
        bytes_received: u64,
        duration_ms: u64,
    ) {
        // The ends as the metrics named them ("unknown": not a workload).
        let named = |workload: &str, namespace: &str| {
            (workload != "unknown" && namespace != "unknown")
                .then(|| (namespace.to_owned(), workload.to_owned()))
        };
        let peers = self.labels.as_ref().map(|l| &l.peers);
        let src = crate::flows::Endpoint::new(
            peers.and_then(|p| named(&p.source_workload, &p.source_workload_namespace)),
            Some(self.src),
            self.src_identity.as_deref().unwrap_or_default(),
        );
        let dst = crate::flows::Endpoint::new(
            peers.and_then(|p| named(&p.destination_workload, &p.destination_workload_namespace)),
            self.dst,
            self.dst_identity.as_deref().unwrap_or_default(),
        );
        let (decision, policy) = match result {
            Ok(_) => ("allow", self.decision.clone().unwrap_or_default()),
            Err(ConnectionError::Denied(reason)) => ("deny", reason.clone()),
            Err(ConnectionError::Strict(_)) => (
                "deny",
                "PeerAuthentication STRICT: plaintext refused".to_owned(),
            ),
            Err(ConnectionError::Hbone {
                source: crate::hbone::Error::Refused { status },
                ..
            }) if *status == hyper::StatusCode::FORBIDDEN => (
                "deny",
                "refused by the destination's policy (403)".to_owned(),
            ),
            Err(_) => ("error", String::new()),
        };
        let waypoint = self
            .waypoint
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        self.flows.record(crate::flows::Flow {
            direction: self.direction.as_str(),
            src,
            dst,
            route: if waypoint.is_empty() {
                self.mode.to_owned()
            } else {
                "waypoint".to_owned()
            },
            waypoint,
            security: if self.mode == "hbone" {
                "mtls"
            } else {
                "plaintext"
            },
            decision,
            policy,
            bytes_sent,
            bytes_received,
            duration_ms,
            error: result
                .as_ref()
                .err()
                .map(|e| super::error_chain(e))
                .unwrap_or_default(),
            trace_id: self.trace_id.clone().unwrap_or_default(),
            ..crate::flows::Flow::default()
        });
    }
}
