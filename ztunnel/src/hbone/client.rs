//! Opening HBONE tunnels. HTTP/2 connections are pooled per (source identity,
//! destination identity, destination address): streams of one connection share
//! its TLS session, at most [`settings::HBONE_MAX_STREAMS`] at once (beyond that
//! a further connection opens), and a broken connection is replaced for the
//! next stream.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{
    Method, Request, StatusCode, Version, client::conn::http2::SendRequest, upgrade::Upgraded,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::{net::TcpStream, sync::Mutex};
use tracing::Instrument;

use super::Error;
use crate::{identity::Identity, settings};

/// What a pooled connection is shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the client presents (the source workload's).
    pub src: Identity,
    /// The identity the server must present.
    pub dst: Identity,
    /// The server's HBONE address (`pod ip:15008`).
    pub addr: SocketAddr,
}

/// An HBONE tunnel: bytes in and out of one CONNECT stream. While it lives it
/// counts against its connection's stream budget.
#[derive(Debug)]
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    active: Option<Arc<AtomicUsize>>,
}

impl Tunnel {
    /// A tunnel over an upgraded stream, counted in `active` (the server side
    /// does not count).
    pub(crate) fn new(io: TokioIo<Upgraded>, active: Option<Arc<AtomicUsize>>) -> Self {
        Self { io, active }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(active) = &self.active {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct Pooled {
    sender: SendRequest<Empty<Bytes>>,
    /// Streams open on this connection.
    active: Arc<AtomicUsize>,
}

/// The pool of HBONE connections of one ztunnel.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    conns: Arc<Mutex<HashMap<PoolKey, Vec<Pooled>>>>,
}

impl Pool {
    /// Opens a tunnel to `authority` through the server of `key`, reusing a
    /// pooled connection when one is alive. `connect` dials a new TCP connection
    /// and returns it with the TLS configuration to use (it runs only when no
    /// pooled connection can be reused).
    pub async fn tunnel<F, Fut>(
        &self,
        key: PoolKey,
        authority: SocketAddr,
        connect: F,
    ) -> Result<Tunnel, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
    {
        let (mut sender, active) = self.sender(&key, connect).await?;
        // Counted from here, released by the Tunnel (or now, on failure).
        let guard = Tunnel::new_guard(active);
        let request = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(authority.to_string())
            .body(Empty::new())
            .map_err(Error::Request)?;
        let response = sender.send_request(request).await.map_err(Error::Http)?;
        if response.status() != StatusCode::OK {
            return Err(Error::Refused {
                status: response.status(),
            });
        }
        let upgraded = hyper::upgrade::on(response).await.map_err(Error::Http)?;
        Ok(guard.into_tunnel(TokioIo::new(upgraded)))
    }

    async fn sender<F, Fut>(
        &self,
        key: &PoolKey,
        connect: F,
    ) -> Result<(SendRequest<Empty<Bytes>>, Arc<AtomicUsize>), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
    {
        // Held across the handshake so concurrent first streams share one
        // connection instead of racing to open several.
        let mut conns = self.conns.lock().await;
        let pooled = conns.entry(key.clone()).or_default();
        pooled.retain(|p| !p.sender.is_closed());
        let limit = settings::HBONE_MAX_STREAMS as usize;
        if let Some(p) = pooled
            .iter()
            .find(|p| p.active.load(Ordering::Relaxed) < limit)
        {
            p.active.fetch_add(1, Ordering::Relaxed);
            return Ok((p.sender.clone(), p.active.clone()));
        }
        let (tcp, config) = connect().await?;
        tcp.set_nodelay(true).map_err(Error::Io)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        // The name is not checked (identities are URI SANs); any valid one does.
        let name = ServerName::IpAddress(key.addr.ip().into());
        let tls = connector
            .connect(name, super::CoalescedReads::new(tcp))
            .await
            .map_err(Error::Io)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(settings::HBONE_STREAM_WINDOW)
            .initial_connection_window_size(settings::HBONE_CONNECTION_WINDOW)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(Error::Http)?;
        let span = tracing::debug_span!("hbone_client", dst = %key.addr, identity = %key.dst);
        tokio::spawn(
            async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "HBONE connection ended");
                }
            }
            .instrument(span),
        );
        let active = Arc::new(AtomicUsize::new(1));
        conns.entry(key.clone()).or_default().push(Pooled {
            sender: sender.clone(),
            active: active.clone(),
        });
        Ok((sender, active))
    }

    /// Number of pooled connections (live or not yet noticed dead).
    pub async fn len(&self) -> usize {
        self.conns.lock().await.values().map(Vec::len).sum()
    }

    /// Whether the pool holds no connection.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

/// A stream slot taken on a pooled connection, released on drop unless it
/// became a [`Tunnel`].
struct StreamGuard(Option<Arc<AtomicUsize>>);

impl Tunnel {
    fn new_guard(active: Arc<AtomicUsize>) -> StreamGuard {
        StreamGuard(Some(active))
    }
}

impl StreamGuard {
    fn into_tunnel(mut self, io: TokioIo<Upgraded>) -> Tunnel {
        Tunnel::new(io, self.0.take())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(active) = self.0.take() {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
