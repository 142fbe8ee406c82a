//! The waypoint's access log: one JSON line (target `access`) per request,
//! written when its response ends (body included) or is abandoned, and one
//! per TCP connection forwarded at L4. Field names follow ztunnel's
//! (`src.identity`, `dst.addr`, ...), so one query reads both.

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use ztunnel::{
    flows::{Endpoint, Flow},
    registry::Snapshot,
};

use super::metrics::{LabelCache, Outcome, RequestLabels, RequestMetrics, fill_workloads};

/// What is known of one request, filled in as it is handled.
#[derive(Debug)]
pub struct RequestLog {
    started: Instant,
    /// The client's SPIFFE identity (from the tunnel).
    pub src_identity: String,
    /// The client's address (the HBONE peer).
    pub src_addr: SocketAddr,
    /// The original destination (the CONNECT authority).
    pub dst: SocketAddr,
    /// The Service, `namespace/name`, when addressed to one.
    pub service: String,
    /// The endpoint the request was sent to.
    pub endpoint: Option<SocketAddr>,
    /// `:method`.
    pub method: String,
    /// The normalized path (no query), or the target as received when it
    /// did not normalize.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'static str,
    /// `x-request-id` as forwarded.
    pub request_id: String,
    /// `allow`, `deny`, `unauthenticated` (a rejected JWT), `invalid` (a
    /// malformed request) or `error` (no upstream).
    pub decision: &'static str,
    /// The policy and rule that decided, or why nothing did.
    pub policy: String,
    /// `iss/sub` of the verified JWT.
    pub request_principal: String,
    /// The response status.
    pub status: u16,
    /// `grpc-status` of a gRPC response (trailers or headers).
    pub grpc_status: String,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// What went wrong, if anything.
    pub error: String,
    /// The endpoint's identity.
    pub dst_identity: String,
    /// Whether it is a gRPC request.
    pub grpc: bool,
    /// The request body's declared length (0 when not declared).
    pub request_bytes: u64,
    /// Where the request is counted, once the destination is known.
    pub recorder: Option<Recorder>,
}

/// What the request metrics of one request need.
#[derive(Debug)]
pub struct Recorder {
    /// The waypoint's metrics.
    pub metrics: RequestMetrics,
    /// The configuration the request was handled with (workload names).
    pub snapshot: Arc<Snapshot>,
    /// The series the other requests of its stream were counted in.
    pub cache: Arc<LabelCache>,
    /// The traffic view's flows.
    pub flows: ztunnel::flows::FlowLog,
}

impl RequestLog {
    /// A record for a request from `src_identity` at `src_addr` to `dst`.
    pub fn start(src_identity: String, src_addr: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            started: Instant::now(),
            src_identity,
            src_addr,
            dst,
            service: String::new(),
            endpoint: None,
            method: String::new(),
            path: String::new(),
            protocol: "",
            request_id: String::new(),
            decision: "",
            policy: String::new(),
            request_principal: String::new(),
            status: 0,
            grpc_status: String::new(),
            bytes_sent: 0,
            error: String::new(),
            dst_identity: String::new(),
            grpc: false,
            request_bytes: 0,
            recorder: None,
        }
    }

    /// Writes the line and counts the request.
    pub fn emit(&self) {
        let elapsed = self.started.elapsed();
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Some(recorder) = &self.recorder {
            self.record(recorder, elapsed.as_secs_f64() * 1000.0);
            recorder
                .flows
                .record(self.flow(&recorder.snapshot, duration_ms));
        }
        let endpoint = self.endpoint.map(|e| e.to_string()).unwrap_or_default();
        macro_rules! access {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    endpoint,
                    src.identity = self.src_identity.as_str(),
                    src.addr = %self.src_addr,
                    dst.addr = %self.dst,
                    dst.service = self.service.as_str(),
                    method = self.method.as_str(),
                    path = self.path.as_str(),
                    protocol = self.protocol,
                    request_id = self.request_id.as_str(),
                    decision = self.decision,
                    policy = self.policy.as_str(),
                    request_principal = self.request_principal.as_str(),
                    status = self.status,
                    grpc_status = self.grpc_status.as_str(),
                    bytes_sent = self.bytes_sent,
                    duration_ms,
                    error = self.error.as_str(),
                    "request"
                )
            };
        }
        if self.status >= 500 || self.decision == "error" {
            access!(warn);
        } else if self.decision != "allow" || self.status >= 400 {
            // Denials and refusals are always written.
            access!(info);
        } else if ztunnel::telemetry::sample_access() {
            access!(info);
        }
    }
}

/// A flow end: the workload at `addr` as the metrics name it, else the
/// address.
pub(crate) fn flow_end(snapshot: &Snapshot, addr: SocketAddr, identity: &str) -> Endpoint {
    let workload = snapshot.workload_by_ip(addr.ip().to_canonical());
    Endpoint::of(workload.map(|w| &**w), addr, identity)
}

impl RequestLog {
    /// The request as a flow of the traffic view: to the endpoint's
    /// workload, or to the Service when no endpoint was chosen.
    fn flow(&self, snapshot: &Snapshot, duration_ms: u64) -> Flow {
        let dst = match (self.endpoint, self.service.split_once('/')) {
            (Some(endpoint), _) => flow_end(snapshot, endpoint, &self.dst_identity),
            (None, Some((namespace, name))) => Endpoint::new(
                Some((namespace.to_owned(), name.to_owned())),
                Some(self.dst),
                "",
            ),
            (None, None) => flow_end(snapshot, self.dst, ""),
        };
        let decision = match self.decision {
            "allow" if self.status < 500 => "allow",
            "deny" | "unauthenticated" => "deny",
            _ => "error",
        };
        Flow {
            direction: "request",
            src: flow_end(snapshot, self.src_addr, &self.src_identity),
            dst,
            route: format!("{} {} {}", self.protocol, self.method, self.path),
            security: "mtls",
            decision,
            policy: if self.decision == "unauthenticated" {
                format!("RequestAuthentication: {}", self.error)
            } else {
                self.policy.clone()
            },
            bytes_sent: self.request_bytes,
            bytes_received: self.bytes_sent,
            duration_ms,
            error: self.error.clone(),
            ..Flow::default()
        }
    }

    fn record(&self, recorder: &Recorder, duration_ms: f64) {
        let flags = match self.decision {
            "error" if self.status == 504 => "UT",
            "error" if self.endpoint.is_none() => "NR",
            "error" => "UF",
            _ => "-",
        };
        let outcome = Outcome {
            endpoint: self.endpoint.map(|e| e.ip()),
            destination_principal: &self.dst_identity,
            status: self.status,
            grpc_status: &self.grpc_status,
            grpc: self.grpc,
            flags,
        };
        recorder.metrics.record_cached(
            &recorder.cache,
            (recorder.snapshot.generation(), outcome),
            || self.labels(&recorder.snapshot, flags),
            (duration_ms, self.request_bytes, self.bytes_sent),
        );
    }

    fn labels(&self, snapshot: &Snapshot, flags: &'static str) -> RequestLabels {
        let mut labels = RequestLabels::unknown();
        fill_workloads(
            &mut labels,
            snapshot,
            self.src_addr.ip().to_canonical(),
            self.endpoint.map(|e| e.ip()),
        );
        labels.peers.source_principal.clone_from(&self.src_identity);
        if !self.dst_identity.is_empty() {
            labels
                .peers
                .destination_principal
                .clone_from(&self.dst_identity);
        }
        if let Some((namespace, name)) = self.service.split_once('/') {
            labels.peers.service(namespace, name);
        }
        labels.request_protocol = if self.grpc { "grpc" } else { "http" };
        labels.response_code = self.status.to_string();
        labels.grpc_response_status.clone_from(&self.grpc_status);
        labels.response_flags = flags;
        labels
    }
}

/// A response body that counts what it yields, reads `grpc-status` from the
/// trailers, and writes the access log line when it is dropped (at its end,
/// or when the client went away).
pub struct Logged<B> {
    inner: B,
    log: RequestLog,
}

impl<B> Logged<B> {
    /// `inner`, logged as `log` once done.
    pub fn new(inner: B, log: RequestLog) -> Self {
        Self { inner, log }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.log.emit();
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes_sent += data.len() as u64;
                } else if let Some(status) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                {
                    status.clone_into(&mut this.log.grpc_status);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                "response body failed".clone_into(&mut this.log.error);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body type of the waypoint.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// `body` as a [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    body.boxed_unsync()
}
