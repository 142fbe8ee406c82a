//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS 1.3, between
//! ztunnels (port 15008), wire-compatible with Istio's ztunnel: ALPN `h2`,
//! `CONNECT` with `:authority` = the original destination `ip:port`, SPIFFE URI
//! SANs as identities.
//!
//! `tls` builds the rustls configurations and checks peer identities (secure
//! naming); `client` opens tunnels over pooled connections; `server` accepts
//! them and hands each stream to a callback that connects to the target;
//! `coalesce` batches the small reads rustls makes from the socket.

pub mod client;
mod coalesce;
pub mod guard;
pub mod server;
mod stream;
pub mod tls;

#[cfg(test)]
mod tests;

pub use client::{Pool, PoolKey};
pub(crate) use coalesce::CoalescedReads;
pub use guard::{Guard, Limits};
pub use stream::{SEND_BUDGET_WAITS, SEND_QUEUED};
pub use tls::{client_config, peer_identity, server_config};

use crate::settings;

/// Errors of the HBONE layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// TCP or TLS I/O failed.
    #[error("HBONE connection failed")]
    Io(#[source] std::io::Error),
    /// The TLS configuration could not be built.
    #[error("HBONE TLS configuration")]
    Tls(#[source] rustls::Error),
    /// The peer's certificate does not carry a SPIFFE identity.
    #[error("the peer presented no SPIFFE identity")]
    NoPeerIdentity,
    /// The TLS or HTTP/2 handshake took too long.
    #[error("HBONE handshake did not finish within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The peer is past a per-peer limit of the server.
    #[error("{0}")]
    PeerLimit(guard::Rejection),
    /// The peer reset more streams than allowed before they were answered.
    #[error(
        "the peer reset more than {0} streams before they were answered within 10s (rapid reset); the connection takes no new stream (GOAWAY) and closes once its open streams end"
    )]
    RapidReset(u32),
    /// The HTTP/2 layer failed.
    #[error("HBONE HTTP/2")]
    H2(#[source] h2::Error),
    /// The peer refused the CONNECT.
    #[error("the peer answered CONNECT with {status}")]
    Refused {
        /// The HTTP status.
        status: hyper::StatusCode,
    },
    /// A request could not be built (a bug: the authority is an address).
    #[error("Bug: cannot build the CONNECT request")]
    Request(#[source] hyper::http::Error),
}

/// Sends a PING every [`settings::HBONE_KEEPALIVE_INTERVAL`]; returns when
/// one goes unanswered for [`settings::HBONE_KEEPALIVE_TIMEOUT`] (the peer is
/// gone). Never returns without a PING handle.
pub(crate) async fn keepalive(ping_pong: Option<h2::PingPong>) {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(settings::HBONE_KEEPALIVE_INTERVAL).await;
        let ping = ping_pong.ping(h2::Ping::opaque());
        match tokio::time::timeout(settings::HBONE_KEEPALIVE_TIMEOUT, ping).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "HBONE PING failed");
                return;
            }
            Err(_) => return,
        }
    }
}
