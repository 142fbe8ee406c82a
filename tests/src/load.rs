//! An open-loop HTTP load at a fixed rate, paced per request: request `i` is
//! due at `start + i / rate` and its latency counts from then (wrk2's
//! intended-time latency: a stall delays every request behind it, and they
//! all count it). `ambit-httpbin load` runs it in a pod for the benchmark.
//!
//! Why not h2load's `--rps`: it sends on a libev timer that fires about
//! every 10 ms, so 1,000 requests/s arrive as bursts of ten within a few
//! microseconds, and it counts latency from the actual send. A proxy with one
//! thread then queues the burst, and the benchmark measures h2load's pacing
//! more than the proxy.
//!
//! HTTP/1.1 spreads the requests over keep-alive connections in turn (one
//! request at a time on each: a request whose connection is still busy waits,
//! and its latency shows it); HTTP/2 sends all on one connection, each
//! request on its own stream.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    Request,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::mpsc};

/// How long before a send the pacer stops sleeping and spins: a sleep can
/// overshoot by the timer slack (50 us), and the spin costs a little CPU.
const PACE_SPIN: Duration = Duration::from_micros(60);

/// Sleeps, then spins, until `deadline`.
pub fn pace_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > PACE_SPIN {
            std::thread::sleep(left - PACE_SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// HTTP/1.1 or HTTP/2 (prior knowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Keep-alive connections, one request at a time on each.
    Http1,
    /// One connection, a stream per request.
    Http2,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// Path and query of every request (a GET).
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The protocol.
    pub version: Version,
    /// HTTP/1.1 connections (HTTP/2 uses one).
    pub connections: usize,
    /// Requests per second, all connections together.
    pub rate: f64,
    /// Requests in all.
    pub count: u32,
    /// How long one request may take.
    pub timeout: Duration,
}

/// One request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// When it was due, microseconds since the epoch.
    pub due_unix_us: u128,
    /// Its status, or `None` when no response came (refused, reset, timed out).
    pub status: Option<u16>,
    /// From when it was due to the end of its response (or its failure).
    pub latency: Duration,
    /// From when it was due to when this generator handed it to its
    /// connection: the generator's own lateness (a descheduled pacer or
    /// runtime), part of `latency`.
    pub late: Duration,
}

/// The outcomes in h2load's `--log-file` format: a line per request, tab
/// separated: due time (µs since the epoch), status (-1 for none), latency
/// in µs; then a fourth field h2load does not have, the generator's own
/// lateness in µs.
pub fn log_lines(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| {
            format!(
                "{}\t{}\t{}\t{}\n",
                o.due_unix_us,
                o.status.map_or(-1, i32::from),
                o.latency.as_micros(),
                o.late.as_micros()
            )
        })
        .collect()
}

type Done = mpsc::UnboundedSender<(u32, Option<u16>, Instant)>;

/// Runs `plan`; every request gets an outcome, in order of due time.
pub async fn run(plan: &Plan) -> Result<Vec<Outcome>, String> {
    if plan.count == 0 || plan.rate.is_nan() || plan.rate <= 0.0 || plan.connections == 0 {
        return Err("count, rate and connections must be positive".to_owned());
    }
    let request = |plan: &Plan| -> Result<Request<Empty<Bytes>>, String> {
        let mut builder = Request::get(plan.path.as_str());
        builder = match plan.version {
            Version::Http1 => builder.header(hyper::header::HOST, plan.addr.to_string()),
            Version::Http2 => builder.uri(format!("http://{}{}", plan.addr, plan.path)),
        };
        for (name, value) in &plan.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))
    };
    request(plan)?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    // Connected before the clock starts.
    let mut lanes = Vec::new();
    let mut h2 = None;
    match plan.version {
        Version::Http1 => {
            for _ in 0..plan.connections {
                let io = connect(plan.addr).await?;
                let (sender, connection) = http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(connection);
                let (tx, rx) = mpsc::unbounded_channel::<(u32, Request<Empty<Bytes>>)>();
                tokio::spawn(http1_lane(sender, rx, done_tx.clone(), plan.timeout));
                lanes.push(tx);
            }
        }
        Version::Http2 => {
            let io = connect(plan.addr).await?;
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(connection);
            h2 = Some(sender);
        }
    }
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now() + Duration::from_millis(20);
    let start_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_millis(20);
    // The pacer sleeps and spins on a thread of its own; the requests go out
    // from this runtime as each comes due.
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<u32>();
    let count = plan.count;
    let pacer = std::thread::spawn(move || {
        for i in 0..count {
            pace_until(start + interval * i);
            if due_tx.send(i).is_err() {
                return;
            }
        }
    });
    let mut late = vec![Duration::ZERO; plan.count as usize];
    while let Some(i) = due_rx.recv().await {
        if let Some(slot) = late.get_mut(i as usize) {
            *slot = Instant::now().saturating_duration_since(start + interval * i);
        }
        let req = request(plan)?;
        match (&h2, plan.version) {
            (Some(sender), _) => {
                let sender = sender.clone();
                let done = done_tx.clone();
                let timeout = plan.timeout;
                tokio::spawn(async move {
                    let status = http2_request(sender, req, timeout).await;
                    let _ = done.send((i, status, Instant::now()));
                });
            }
            _ => {
                let lane = &lanes[i as usize % lanes.len()];
                if lane.send((i, req)).is_err() {
                    let _ = done_tx.send((i, None, Instant::now()));
                }
            }
        }
    }
    let _ = pacer.join();
    drop(done_tx);
    drop(lanes);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; plan.count as usize];
    while let Some((i, status, end)) = done_rx.recv().await {
        let due = start + interval * i;
        if let Some(slot) = outcomes.get_mut(i as usize) {
            *slot = Some(Outcome {
                due_unix_us: (start_unix + interval * i).as_micros(),
                status,
                latency: end.saturating_duration_since(due),
                late: late.get(i as usize).copied().unwrap_or_default(),
            });
        }
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.ok_or_else(|| format!("request {i} has no outcome")))
        .collect()
}

async fn connect(addr: SocketAddr) -> Result<TokioIo<TcpStream>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(TokioIo::new(stream))
}

/// One HTTP/1.1 connection: its requests one after the other.
async fn http1_lane(
    mut sender: http1::SendRequest<Empty<Bytes>>,
    mut requests: mpsc::UnboundedReceiver<(u32, Request<Empty<Bytes>>)>,
    done: Done,
    timeout: Duration,
) {
    while let Some((i, req)) = requests.recv().await {
        let exchange = async {
            sender.ready().await.ok()?;
            sender.send_request(req).await.ok()
        };
        let status = complete(exchange, timeout).await;
        let _ = done.send((i, status, Instant::now()));
    }
}

async fn http2_request(
    mut sender: http2::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
    timeout: Duration,
) -> Option<u16> {
    let exchange = async {
        sender.ready().await.ok()?;
        sender.send_request(req).await.ok()
    };
    complete(exchange, timeout).await
}

/// The status of the response `exchange` brings, once its body is read, or
/// `None` when it fails or `timeout` passes first.
async fn complete(
    exchange: impl Future<Output = Option<hyper::Response<hyper::body::Incoming>>>,
    timeout: Duration,
) -> Option<u16> {
    tokio::time::timeout(timeout, async {
        let response = exchange.await?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_what_h2loads_parser_reads() {
        let outcomes = [
            Outcome {
                due_unix_us: 1_000,
                status: Some(200),
                latency: Duration::from_micros(850),
                late: Duration::from_micros(3),
            },
            Outcome {
                due_unix_us: 2_000,
                status: None,
                latency: Duration::from_millis(10),
                late: Duration::ZERO,
            },
        ];
        let log = crate::bench::h2load::parse_log(&log_lines(&outcomes)).expect("parses");
        assert_eq!(log.histogram.len(), 1);
        assert_eq!(log.not_ok, 1);
        assert_eq!(log.first_not_ok, Some(-1));
        let p50 = log.histogram.value_at_quantile(0.5);
        assert!((849_000..=851_000).contains(&p50), "{p50}");
    }
}
