//! The readiness endpoint (`/healthz/ready` on the readiness port, 15021),
//! which the kubelet probes: a waypoint is ready once it can serve, a ztunnel
//! once the node's ambient pods are enrolled. The same flag answers the
//! admin endpoint's `/healthz/ready`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use tokio::net::TcpListener;

/// The path the kubelet probes.
pub const READY_PATH: &str = "/healthz/ready";

/// Errors of the readiness server: those of binding its listener, as the
/// admin endpoint binds its own.
pub use crate::admin::Error;

/// Whether the process is ready to take traffic; shared with the parts that
/// decide it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the process is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A bound readiness server; [`Server::run`] serves it.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    readiness: Readiness,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> Result<Self, Error> {
        // SO_REUSEPORT: a ztunnel and its successor (a DaemonSet surge, both
        // on the host network) both answer while they overlap.
        let listener = crate::admin::bind(addr)?;
        Ok(Self {
            listener,
            readiness,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until the task is dropped.
    pub async fn run(self) {
        let readiness = self.readiness;
        crate::accept::serve_http1(self.listener, "readiness", move |request| {
            respond(request, readiness.get())
        })
        .await;
    }
}

/// 200 on `GET /healthz/ready` when ready, 503 when not, 404 elsewhere.
fn respond(req: &Request<Incoming>, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, READY_PATH) if ready => (StatusCode::OK, "ready\n"),
        (&Method::GET, READY_PATH) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    crate::accept::reply(status, "text/plain", body.to_owned())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn reports_readiness_as_it_changes() {
        let readiness = Readiness::default();
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), readiness.clone())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let task = tokio::spawn(server.run());

        assert!(get(addr, READY_PATH).await.starts_with("HTTP/1.1 503"));
        readiness.set(true);
        assert!(get(addr, READY_PATH).await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
