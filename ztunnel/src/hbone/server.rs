//! Accepting HBONE tunnels: TLS 1.3 with a required client certificate, then
//! HTTP/2 whose CONNECT streams are handed to a callback that decides and
//! connects to the target. The callback answers with the status to send: 200
//! and a connected target, or a refusal.
//!
//! An authenticated peer is still bounded: the handshakes have a deadline,
//! a connection carries at most `HBONE_MAX_STREAMS` streams whose header
//! lists are at most `HBONE_MAX_HEADER_LIST` bytes (a larger header block,
//! CONTINUATION floods included, ends the connection), streams reset before
//! they are accepted (rapid reset) and protocol errors end it past their
//! limits, and a CONNECT not decided and connected within
//! `HBONE_CONNECT_TIMEOUT` is answered 504.

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use hyper::{Method, Request, Response, StatusCode};
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
    /// The stream's trace context (the CONNECT's `traceparent`, with its
    /// `tracestate` and `baggage`), if it carried a valid one.
    pub trace: Option<crate::trace::TraceContext>,
}

/// Serves one accepted TCP connection as HBONE until the client closes it or
/// stops answering PINGs. For each CONNECT stream, `on_stream(source,
/// authority)` decides: `Err(status)` refuses the stream, `Ok(future)` accepts
/// it and runs the future with the tunnel.
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
    let handshake = async {
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(super::CoalescedReads::new(tcp))
            .await
            .map_err(Error::Io)?;
        let identity = tls::peer_identity(tls.get_ref().1.peer_certificates())?;
        let connection = h2::server::Builder::new()
            .initial_window_size(settings::HBONE_STREAM_WINDOW)
            .initial_connection_window_size(settings::HBONE_CONNECTION_WINDOW)
            .max_concurrent_streams(settings::HBONE_MAX_STREAMS)
            .max_frame_size(settings::HBONE_MAX_FRAME)
            .max_send_buffer_size(settings::HBONE_SEND_BUFFER)
            .max_header_list_size(settings::HBONE_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(settings::HBONE_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(settings::HBONE_MAX_LOCAL_ERROR_RESETS))
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(Error::H2)?;
        Ok::<_, Error>((identity, connection))
    };
    let (identity, mut connection) =
        tokio::time::timeout(settings::HBONE_HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| Error::HandshakeTimeout(settings::HBONE_HANDSHAKE_TIMEOUT))??;
    let source = StreamSource {
        identity,
        addr,
        trace: None,
    };
    let keepalive = super::keepalive(connection.ping_pong());
    tokio::pin!(keepalive);
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                None => return Ok(()),
                Some(Err(error)) => return Err(Error::H2(error)),
                Some(Ok((request, respond))) => {
                    tokio::spawn(handle(request, respond, source.clone(), on_stream.clone()));
                }
            },
            () = &mut keepalive => {
                tracing::debug!(peer = %addr, "HBONE client stopped answering PINGs; closing");
                return Ok(());
            }
        }
    }
}

async fn handle<F, Fut, G>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    mut source: StreamSource,
    on_stream: F,
) where
    F: Fn(StreamSource, SocketAddr) -> Fut,
    Fut: Future<Output = Result<G, StatusCode>>,
    G: FnOnce(Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    let refuse = |respond: &mut SendResponse<Bytes>, code: StatusCode| {
        let mut response = Response::new(());
        *response.status_mut() = code;
        if let Err(error) = respond.send_response(response, true) {
            tracing::debug!(%error, "cannot answer an HBONE stream");
        }
    };
    if request.method() != Method::CONNECT {
        return refuse(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(authority) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return refuse(&mut respond, StatusCode::BAD_REQUEST);
    };
    source.trace = crate::trace::TraceContext::from_headers(request.headers());
    let decided = tokio::time::timeout(
        settings::HBONE_CONNECT_TIMEOUT,
        on_stream(source, authority),
    );
    match decided.await {
        Ok(Ok(run)) => match respond.send_response(Response::new(()), false) {
            Ok(send) => run(Tunnel::new(send, request.into_body(), None)).await,
            Err(error) => tracing::debug!(%error, "HBONE stream closed before the answer"),
        },
        Ok(Err(code)) => refuse(&mut respond, code),
        Err(_) => refuse(&mut respond, StatusCode::GATEWAY_TIMEOUT),
    }
}
