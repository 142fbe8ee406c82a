//! Opening HBONE tunnels. HTTP/2 connections are pooled per (source identity,
//! destination identity, destination address): streams of one connection share
//! its TLS session, and a broken connection is replaced for the next stream.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc};

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

/// An HBONE tunnel: bytes in and out of one CONNECT stream.
pub type Tunnel = TokioIo<Upgraded>;

/// The pool of HBONE connections of one ztunnel.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    conns: Arc<Mutex<HashMap<PoolKey, SendRequest<Empty<Bytes>>>>>,
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
        let mut sender = self.sender(&key, connect).await?;
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
        Ok(TokioIo::new(upgraded))
    }

    async fn sender<F, Fut>(
        &self,
        key: &PoolKey,
        connect: F,
    ) -> Result<SendRequest<Empty<Bytes>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(TcpStream, Arc<rustls::ClientConfig>), Error>>,
    {
        // Held across the handshake so concurrent first streams share one
        // connection instead of racing to open several.
        let mut conns = self.conns.lock().await;
        if let Some(sender) = conns.get(key)
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let (tcp, config) = connect().await?;
        tcp.set_nodelay(true).map_err(Error::Io)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        // The name is not checked (identities are URI SANs); any valid one does.
        let name = ServerName::IpAddress(key.addr.ip().into());
        let tls = connector.connect(name, tcp).await.map_err(Error::Io)?;
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
        conns.insert(key.clone(), sender.clone());
        Ok(sender)
    }

    /// Number of pooled connections (live or not yet noticed dead).
    pub async fn len(&self) -> usize {
        self.conns.lock().await.len()
    }

    /// Whether the pool holds no connection.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}
