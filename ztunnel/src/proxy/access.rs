//! Access logs: one line per proxied connection, on the `access` target, with
//! dotted fields (`src.addr`, `dst.addr`, `bytes_sent`, ...). With
//! `LOG_FORMAT=json` each is one JSON object.

use std::{net::SocketAddr, time::Instant};

use super::{ConnectionError, FORWARDING};

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
    /// The original destination, once known.
    pub dst: Option<SocketAddr>,
    started: Instant,
}

impl Connection {
    /// Starts the record of a connection accepted now.
    pub fn new(direction: Direction, workload: String, src: SocketAddr) -> Self {
        Self {
            direction,
            workload,
            src,
            dst: None,
            started: Instant::now(),
        }
    }

    /// Logs the outcome: bytes each way on success, the error otherwise.
    pub fn finish(&self, result: &Result<(u64, u64), ConnectionError>) {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let dst = self.dst.map(|d| d.to_string()).unwrap_or_default();
        let (src_workload, dst_workload) = match self.direction {
            Direction::Outbound => (self.workload.as_str(), ""),
            Direction::Inbound => ("", self.workload.as_str()),
        };
        match result {
            Ok((sent, received)) => tracing::info!(
                target: "access",
                direction = self.direction.as_str(),
                mode = FORWARDING,
                src.addr = %self.src,
                src.workload = src_workload,
                dst.addr = dst,
                dst.workload = dst_workload,
                bytes_sent = sent,
                bytes_received = received,
                duration_ms,
                "connection complete"
            ),
            Err(error) => tracing::warn!(
                target: "access",
                direction = self.direction.as_str(),
                mode = FORWARDING,
                src.addr = %self.src,
                src.workload = src_workload,
                dst.addr = dst,
                dst.workload = dst_workload,
                duration_ms,
                error = %super::error_chain(error),
                "connection failed"
            ),
        }
    }
}
