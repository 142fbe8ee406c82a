//! The waypoint's connections to the endpoints it forwards requests to:
//! HTTP/1.1 or HTTP/2 inside an HBONE tunnel (the waypoint's identity
//! presented, the endpoint's checked), or over plain TCP to a destination
//! outside the mesh.
//!
//! Each key (endpoint, route, HTTP version) keeps idle HTTP/1.1 connections
//! (at most [`MAX_IDLE_HTTP1`]) or one shared HTTP/2 connection, each closed
//! once unused for [`IDLE_TIMEOUT`] ([`Pool::close_idle`]). The router
//! picks the endpoint per request, so the requests of one client connection,
//! HTTP/2 included, spread over the endpoints.
//!
//! Retries: a request is sent again on a new connection only when hyper gives
//! it back unsent (the pooled connection had closed) and its method is
//! idempotent, at most [`MAX_ATTEMPTS`] times in all; a connection that fails
//! before the request is handed to it is replaced whatever the method.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::{
    Method, Request, Response,
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use ztunnel::{identity::Identity, relay::Side};

/// Idle HTTP/1.1 connections kept per key.
pub const MAX_IDLE_HTTP1: usize = 32;

/// A pooled connection unused for this long is closed (as the HBONE pool's
/// connections are): it holds a tunnel and the destination ztunnel's
/// connection to the application.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Tries of one request, the first included.
pub const MAX_ATTEMPTS: usize = 3;

/// The HTTP version spoken to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (h2c inside the tunnel).
    Http2,
}

/// How the endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    /// An HBONE tunnel through `gateway`, which must present `identity`.
    Hbone {
        /// The endpoint's HBONE address.
        gateway: SocketAddr,
        /// Its expected identity.
        identity: Identity,
    },
    /// Plain TCP (outside the mesh).
    Plain,
}

/// What connections are shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The endpoint.
    pub target: SocketAddr,
    /// The way there.
    pub via: Via,
    /// The HTTP version.
    pub version: Version,
}

/// A byte stream to an endpoint.
pub trait Io: AsyncRead + AsyncWrite + Side + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Side + Send + Unpin + 'static> Io for T {}

/// A connection to an endpoint, boxed.
pub type BoxIo = Box<dyn Io>;

impl Side for BoxIo {
    fn abort(&mut self) {
        (**self).abort();
    }

    fn chunks(&mut self) -> Option<&mut dyn ztunnel::relay::Chunks> {
        (**self).chunks()
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the endpoint could be made.
    #[error("cannot connect to the endpoint")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP handshake with the endpoint failed.
    #[error("HTTP handshake with the endpoint failed")]
    Handshake(#[source] hyper::Error),
    /// The request failed once sent (or could not be sent again).
    #[error("the endpoint did not answer")]
    Send(#[source] hyper::Error),
}

/// A request on its way: its response, or the request back when unsent.
type Sending = Pin<
    Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<Incoming>>>> + Send>,
>;

enum Sender {
    Http1(http1::SendRequest<Incoming>),
    Http2(http2::SendRequest<Incoming>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::Http1(s) => s.is_closed(),
            Self::Http2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Self::Http1(s) => s.ready().await,
            Self::Http2(s) => s.ready().await,
        }
    }

    fn send(&mut self, request: Request<Incoming>) -> Sending {
        match self {
            Self::Http1(s) => Box::pin(s.try_send_request(request)),
            Self::Http2(s) => Box::pin(s.try_send_request(request)),
        }
    }
}

/// A pooled connection and when it was last used.
struct Pooled {
    sender: Sender,
    used: Instant,
}

/// The pool of one waypoint.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<Pooled>>>,
}

impl Pool {
    /// Sends `request` to the endpoint of `key` and returns its response head.
    /// `connect` opens a new byte stream when no pooled connection is ready.
    pub async fn send<C, F>(
        &self,
        key: &Key,
        mut request: Request<Incoming>,
        connect: C,
    ) -> Result<Response<Incoming>, Error>
    where
        C: Fn() -> F,
        F: Future<Output = Result<BoxIo, Error>>,
    {
        let idempotent = is_idempotent(request.method());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut sender = match self.take(key) {
                Some(sender) => sender,
                None => handshake(key.version, connect().await?).await?,
            };
            // Not handed over yet: a connection that is not ready is replaced
            // whatever the method.
            if let Err(error) = sender.ready().await {
                if attempt < MAX_ATTEMPTS {
                    continue;
                }
                return Err(Error::Send(error));
            }
            match sender.send(request).await {
                Ok(response) => {
                    self.put(key, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if idempotent && attempt < MAX_ATTEMPTS => {
                        tracing::debug!(endpoint = %key.target, error = %error.error(), "request not sent; retrying on a new connection");
                        request = unsent;
                    }
                    _ => return Err(Error::Send(error.into_error())),
                },
            }
        }
    }

    fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let senders = idle.get_mut(key)?;
        senders.retain(|p| !p.sender.is_closed());
        let found = match key.version {
            // The shared connection stays pooled; its use is now.
            Version::Http2 => senders.first_mut().and_then(|p| match &p.sender {
                Sender::Http2(s) => {
                    p.used = Instant::now();
                    Some(Sender::Http2(s.clone()))
                }
                Sender::Http1(_) => None,
            }),
            Version::Http1 => senders
                .iter()
                .position(|p| matches!(&p.sender, Sender::Http1(s) if s.is_ready()))
                .map(|i| senders.swap_remove(i).sender),
        };
        if senders.is_empty() {
            idle.remove(key);
        }
        found
    }

    fn put(&self, key: &Key, sender: Sender) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let senders = idle.entry(key.clone()).or_default();
        let room = match sender {
            Sender::Http2(_) => senders.is_empty(),
            Sender::Http1(_) => senders.len() < MAX_IDLE_HTTP1,
        };
        if room {
            senders.push(Pooled {
                sender,
                used: Instant::now(),
            });
        }
    }

    /// Closes the pooled connections unused for [`IDLE_TIMEOUT`] at `now`
    /// (and forgets those already closed); returns how many it closed.
    /// Requests still in flight on a shared HTTP/2 connection finish first.
    pub fn close_idle(&self, now: Instant) -> usize {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut closed = 0;
        idle.retain(|_, senders| {
            senders.retain(|p| {
                let keep = !p.sender.is_closed() && now.duration_since(p.used) < IDLE_TIMEOUT;
                closed += usize::from(!keep);
                keep
            });
            !senders.is_empty()
        });
        closed
    }

    /// Pooled connections now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE (RFC 9110 section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn handshake(version: Version, io: BoxIo) -> Result<Sender, Error> {
    let io = TokioIo::new(io);
    match version {
        Version::Http1 => {
            let (sender, connection) = http1::handshake(io).await.map_err(Error::Handshake)?;
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "upstream HTTP/1.1 connection ended with an error");
                }
            });
            Ok(Sender::Http1(sender))
        }
        Version::Http2 => {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(Error::Handshake)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
                }
            });
            Ok(Sender::Http2(sender))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn connections_unused_for_the_idle_timeout_are_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let key = Key {
            target: addr,
            via: Via::Plain,
            version: Version::Http1,
        };
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut server, _) = server.unwrap();
        let io: BoxIo = Box::new(client.unwrap());
        let sender = handshake(Version::Http1, io).await.unwrap();
        pool.put(&key, sender);
        assert_eq!(pool.len(), 1);
        let now = Instant::now();
        assert_eq!(pool.close_idle(now), 0, "just used: kept");
        assert_eq!(
            pool.close_idle(now + IDLE_TIMEOUT),
            1,
            "unused for the timeout"
        );
        assert_eq!(pool.len(), 0);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the endpoint sees the connection close");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
