//! Opening HBONE tunnels. HTTP/2 connections are pooled per (source identity,
//! destination identity, destination address): streams of one connection share
//! its TLS session, at most [`settings::HBONE_MAX_STREAMS`] at once (beyond that
//! a further connection opens), a broken connection is replaced for the next
//! stream (a CONNECT that fails on a reused connection is retried once on a
//! new one), HTTP/2 PINGs notice a peer that vanished silently, and a
//! connection without streams for [`settings::HBONE_POOL_IDLE`] is closed.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use h2::client::SendRequest;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::Mutex,
};
use tracing::Instrument;

use super::Error;
pub use super::stream::Tunnel;
use super::stream::{Chunk, SendBudget};
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

/// A client connection's handle for new streams and its send budget.
#[derive(Debug, Clone)]
struct Conn {
    sender: SendRequest<Chunk>,
    budget: SendBudget,
}

#[derive(Debug)]
struct Pooled {
    conn: Conn,
    /// Set by the connection's task when the connection ended.
    closed: Arc<AtomicBool>,
    /// Streams open on this connection.
    active: Arc<AtomicUsize>,
    /// Streams ever opened on it (the idle reaper's sign of use).
    opened: Arc<AtomicUsize>,
}

/// The connections to one key; locked across a handshake so that concurrent
/// first streams to the same destination share one connection, while other
/// destinations go on.
type Slot = Arc<Mutex<Vec<Pooled>>>;

/// HBONE client connections open in this process, all pools together.
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// Client streams (tunnels) open in this process.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// The HBONE client connections and streams open in this process now (the
/// `ambit_hbone_*` gauges).
pub fn pool_usage() -> (usize, usize) {
    (
        CONNECTIONS.load(Ordering::Relaxed),
        STREAMS.load(Ordering::Relaxed),
    )
}

/// Counts one open client stream until dropped.
#[derive(Debug)]
pub(super) struct StreamCount;

impl StreamCount {
    fn new() -> Self {
        STREAMS.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool of HBONE connections of one ztunnel.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    slots: Arc<std::sync::Mutex<Slots>>,
}

#[derive(Debug, Default)]
struct Slots {
    by_key: HashMap<PoolKey, Slot>,
    /// Size at which keys without live connections are swept out next
    /// (doubling, so sweeping stays O(1) per tunnel on average).
    sweep_at: usize,
}

impl Pool {
    /// Opens a tunnel to `authority` through the server of `key`, reusing a
    /// pooled connection when one is alive. `connect` dials a new TCP connection
    /// and returns it with the TLS configuration to use (it runs only when no
    /// pooled connection can be reused). A CONNECT that fails on a reused
    /// connection (it broke since its last use) is retried once on a new one.
    pub async fn tunnel<F, Fut>(
        &self,
        key: PoolKey,
        authority: SocketAddr,
        trace: Option<&crate::trace::TraceContext>,
        connect: F,
    ) -> Result<Tunnel, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
    {
        self.tunnel_with_data(key, authority, trace, Bytes::new(), connect)
            .await
    }

    /// [`Pool::tunnel`], with `early`, bytes the client already sent, queued
    /// on the stream right behind the CONNECT: they leave in the same write
    /// (one TLS record and TCP segment fewer per connection) and reach the
    /// destination a round trip sooner, instead of after the server's 200.
    /// The server holds them unread until it has authorized the stream and
    /// connected (a refused stream's are discarded there); a retry on a new
    /// connection sends them again.
    pub async fn tunnel_with_data<F, Fut>(
        &self,
        key: PoolKey,
        authority: SocketAddr,
        trace: Option<&crate::trace::TraceContext>,
        early: Bytes,
        connect: F,
    ) -> Result<Tunnel, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
    {
        let slot = self.slot(&key);
        let (conn, active, reused) = stream_slot(&slot, &key, &connect, true).await?;
        match send_connect(conn, active.clone(), authority, trace, &early).await {
            Err(Error::H2(error)) if reused => {
                tracing::debug!(%error, dst = %key.addr, "pooled HBONE connection broken; replacing it");
                evict(&slot, &active).await;
                let (conn, active, _) = stream_slot(&slot, &key, &connect, false).await?;
                send_connect(conn, active, authority, trace, &early).await
            }
            result => result,
        }
    }

    fn slot(&self, key: &PoolKey) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.by_key.len() >= slots.sweep_at {
            // Keys whose connections are all gone are dropped.
            slots
                .by_key
                .retain(|k, slot| k == key || Arc::strong_count(slot) > 1 || !slot_is_empty(slot));
            slots.sweep_at = (slots.by_key.len() * 2).max(16);
        }
        slots.by_key.entry(key.clone()).or_default().clone()
    }

    /// Number of pooled connections (live or not yet noticed dead).
    pub async fn len(&self) -> usize {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_key
            .values()
            .cloned()
            .collect();
        let mut total = 0;
        for slot in slots {
            total += slot
                .lock()
                .await
                .iter()
                .filter(|p| !p.closed.load(Ordering::Relaxed))
                .count();
        }
        total
    }

    /// Whether the pool holds no connection.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

/// Whether a slot holds no live connection (without waiting for its lock:
/// a slot being used is not empty).
fn slot_is_empty(slot: &Slot) -> bool {
    slot.try_lock()
        .is_ok_and(|conns| conns.iter().all(|p| p.closed.load(Ordering::Relaxed)))
}

/// Sends the CONNECT for `authority` on a stream slot already counted in
/// `active`, and `early` behind it, and waits for the tunnel.
async fn send_connect(
    conn: Conn,
    active: Arc<AtomicUsize>,
    authority: SocketAddr,
    trace: Option<&crate::trace::TraceContext>,
    early: &Bytes,
) -> Result<Tunnel, Error> {
    // Counted from here, released by the Tunnel (or now, on failure).
    let guard = StreamGuard(Some(active));
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.to_string());
    let mut request = request.body(()).map_err(Error::Request)?;
    if let Some(trace) = trace {
        trace.insert_into(request.headers_mut());
    }
    // The early data's share of the budget first, so that nothing between
    // queuing the CONNECT and its data lets the connection's task write the
    // one without the other.
    let share = match early.len() {
        0 => None,
        n => Some(conn.budget.share(n).await?),
    };
    let mut sender = conn.sender.ready().await.map_err(Error::H2)?;
    let (response, mut send) = sender.send_request(request, false).map_err(Error::H2)?;
    if let Some(share) = share {
        send.send_data(Chunk::budgeted(early.clone(), share), false)
            .map_err(Error::H2)?;
    }
    let response = response.await.map_err(Error::H2)?;
    if response.status() != StatusCode::OK {
        return Err(Error::Refused {
            status: response.status(),
        });
    }
    Ok(guard.into_tunnel(send, response.into_body(), &conn.budget))
}

/// A stream slot on a live pooled connection with room (when `reuse`), or
/// on a new one; the flag tells whether the connection was reused.
async fn stream_slot<F, Fut>(
    slot: &Slot,
    key: &PoolKey,
    connect: &F,
    reuse: bool,
) -> Result<(Conn, Arc<AtomicUsize>, bool), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
{
    let mut conns = slot.lock().await;
    conns.retain(|p| !p.closed.load(Ordering::Relaxed));
    let limit = settings::HBONE_MAX_STREAMS as usize;
    if let Some(p) = conns
        .iter()
        .find(|p| reuse && p.active.load(Ordering::Relaxed) < limit)
    {
        p.active.fetch_add(1, Ordering::Relaxed);
        p.opened.fetch_add(1, Ordering::Relaxed);
        return Ok((p.conn.clone(), p.active.clone(), true));
    }
    let (conn, active) = open(&mut conns, key, connect).await?;
    Ok((conn, active, false))
}

/// Removes the connection counted by `active` from the slot.
async fn evict(slot: &Slot, active: &Arc<AtomicUsize>) {
    slot.lock()
        .await
        .retain(|p| !Arc::ptr_eq(&p.active, active));
}

/// Dials, handshakes (TLS, then HTTP/2, within
/// [`settings::HBONE_HANDSHAKE_TIMEOUT`]) and pools a new connection with one
/// stream slot taken.
async fn open<F, Fut>(
    conns: &mut Vec<Pooled>,
    key: &PoolKey,
    connect: &F,
) -> Result<(Conn, Arc<AtomicUsize>), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
{
    let (tcp, config) = connect().await?;
    tcp.set_nodelay(true).map_err(Error::Io)?;
    // The pooled connection outlives the stream that opened it: its span
    // (and h2's, made in the handshake) must not be a child of that stream's,
    // which would then stay open, unexported, as long as the connection.
    let span =
        tracing::debug_span!(parent: None, "hbone_client", dst = %key.addr, identity = %key.dst);
    let handshake = async {
        let connector = tokio_rustls::TlsConnector::from(config);
        // The name is not checked (identities are URI SANs); any valid one does.
        let name = ServerName::IpAddress(key.addr.ip().into());
        let tls = connector
            .connect(name, super::CoalescedReads::new(tcp))
            .await
            .map_err(Error::Io)?;
        h2::client::Builder::new()
            .initial_window_size(settings::HBONE_STREAM_WINDOW)
            .initial_connection_window_size(settings::HBONE_CONNECTION_WINDOW)
            .max_frame_size(settings::HBONE_MAX_FRAME)
            .max_send_buffer_size(settings::HBONE_SEND_BUFFER)
            // The server answers a CONNECT with a status line and nothing more.
            .max_header_list_size(settings::HBONE_MAX_HEADER_LIST)
            .handshake::<_, Chunk>(tls)
            .await
            .map_err(Error::H2)
    };
    let (sender, connection) = tokio::time::timeout(
        settings::HBONE_HANDSHAKE_TIMEOUT,
        handshake.instrument(span.clone()),
    )
    .await
    .map_err(|_| Error::HandshakeTimeout(settings::HBONE_HANDSHAKE_TIMEOUT))??;
    let active = Arc::new(AtomicUsize::new(1));
    let opened = Arc::new(AtomicUsize::new(1));
    let closed = Arc::new(AtomicBool::new(false));
    let usage = (active.clone(), opened.clone(), closed.clone());
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(drive(connection, usage).instrument(span));
    let conn = Conn {
        sender,
        budget: SendBudget::new(settings::HBONE_CONNECTION_SEND_BUDGET),
    };
    conns.push(Pooled {
        conn: conn.clone(),
        closed,
        active: active.clone(),
        opened,
    });
    Ok((conn, active))
}

/// Runs a client connection until it ends, its peer stops answering PINGs,
/// or it has carried no stream for a whole [`settings::HBONE_POOL_IDLE`]
/// (then dropping it closes the connection); the pool then forgets it.
async fn drive<T>(
    mut connection: h2::client::Connection<T, Chunk>,
    (active, opened, closed): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicBool>),
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let keepalive = super::keepalive(connection.ping_pong());
    tokio::pin!(keepalive);
    let mut seen = opened.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HBONE connection ended");
                }
                break;
            }
            () = &mut keepalive => {
                tracing::debug!("HBONE peer stopped answering PINGs; closing");
                break;
            }
            () = tokio::time::sleep(settings::HBONE_POOL_IDLE) => {
                let now = opened.load(Ordering::Relaxed);
                if now == seen && active.load(Ordering::Relaxed) == 0 {
                    tracing::debug!("closing an idle pooled HBONE connection");
                    break;
                }
                seen = now;
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
}

/// A stream slot taken on a pooled connection, released on drop unless it
/// became a [`Tunnel`].
struct StreamGuard(Option<Arc<AtomicUsize>>);

impl StreamGuard {
    fn into_tunnel(
        mut self,
        send: h2::SendStream<Chunk>,
        recv: h2::RecvStream,
        budget: &SendBudget,
    ) -> Tunnel {
        let mut tunnel = Tunnel::new(send, recv, budget, self.0.take());
        tunnel.count = Some(StreamCount::new());
        tunnel
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(active) = self.0.take() {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
