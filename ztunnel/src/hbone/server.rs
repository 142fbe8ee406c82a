//! Accepting HBONE tunnels: TLS 1.3 with a required client certificate, then
//! HTTP/2 whose CONNECT streams are handed to a callback that decides and
//! connects to the target. The callback answers with the status to send: 200
//! and a connected target, or a refusal.

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{Error, client::Tunnel, tls};
use crate::{identity::Identity, settings};

/// Where a CONNECT stream came from.
#[derive(Debug, Clone)]
pub struct StreamSource {
    /// The client's authenticated identity.
    pub identity: Identity,
    /// The TCP peer of the HBONE connection (the client pod's address).
    pub addr: SocketAddr,
}

/// Serves one accepted TCP connection as HBONE until the client closes it.
/// For each CONNECT stream, `on_stream(source, authority)` decides: `Err(status)`
/// refuses the stream, `Ok(future)` accepts it and runs the future with the
/// tunnel once the stream is upgraded.
pub async fn serve<F, Fut, G>(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    on_stream: F,
) -> Result<(), Error>
where
    F: Fn(StreamSource, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<G, StatusCode>> + Send + 'static,
    G: FnOnce(Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    let addr = tcp.peer_addr().map_err(Error::Io)?;
    tcp.set_nodelay(true).map_err(Error::Io)?;
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(super::CoalescedReads::new(tcp));
    let tls = tokio::time::timeout(settings::HBONE_HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| Error::HandshakeTimeout(settings::HBONE_HANDSHAKE_TIMEOUT))?
        .map_err(Error::Io)?;
    let identity = tls::peer_identity(tls.get_ref().1.peer_certificates())?;
    let source = StreamSource { identity, addr };
    let service = service_fn(move |request: Request<Incoming>| {
        let on_stream = on_stream.clone();
        let source = source.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, source, on_stream).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(settings::HBONE_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(settings::HBONE_KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(settings::HBONE_STREAM_WINDOW)
        .initial_connection_window_size(settings::HBONE_CONNECTION_WINDOW)
        .max_concurrent_streams(settings::HBONE_MAX_STREAMS)
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(Error::Http)
}

async fn handle<F, Fut, G>(
    request: Request<Incoming>,
    source: StreamSource,
    on_stream: F,
) -> Response<Empty<Bytes>>
where
    F: Fn(StreamSource, SocketAddr) -> Fut,
    Fut: Future<Output = Result<G, StatusCode>>,
    G: FnOnce(Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    if request.method() != Method::CONNECT {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(authority) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return status(StatusCode::BAD_REQUEST);
    };
    match on_stream(source, authority).await {
        Ok(run) => {
            tokio::spawn(async move {
                match hyper::upgrade::on(request).await {
                    Ok(upgraded) => run(Tunnel::new(TokioIo::new(upgraded), None)).await,
                    Err(error) => tracing::debug!(%error, "HBONE stream closed before the upgrade"),
                }
            });
            status(StatusCode::OK)
        }
        Err(code) => status(code),
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}
