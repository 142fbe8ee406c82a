//! Accepting HBONE tunnels: TLS 1.3 with a required client certificate, then
//! HTTP/2 whose CONNECT streams are handed to a callback that decides and
//! connects to the target. The callback answers with the status to send: 200
//! and a connected target, or a refusal.
//!
//! A peer is held to the limits of a [`Guard`] (one per process): its
//! connections and handshakes at once, the handshakes' deadline, streams per
//! connection whose header lists are bounded (a larger header block,
//! CONTINUATION floods included, ends the connection), streams reset before
//! they are accepted or answered (rapid reset) and protocol errors end it
//! past their limits, and a CONNECT not decided and connected within
//! `HBONE_CONNECT_TIMEOUT` is answered 504. What each refusal costs the
//! peer is in `guard`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use h2::{RecvStream, server::SendResponse};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::{
    Error,
    client::Tunnel,
    guard::{Guard, Rejection, Running, StreamWork},
    stream::{Chunk, SendBudget},
    tls,
};
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
/// stops answering PINGs, holding the peer to `guard`'s limits (a refusal is
/// counted and logged there, and returned). For each CONNECT stream,
/// `on_stream(source, authority)` decides: `Err(status)` refuses the stream,
/// `Ok(future)` accepts it and runs the future with the tunnel.
pub async fn serve<F, Fut, G>(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    guard: &Arc<Guard>,
    on_stream: F,
) -> Result<(), Error>
where
    F: Fn(StreamSource, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<G, StatusCode>> + Send + 'static,
    G: FnOnce(Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    let addr = tcp.peer_addr().map_err(Error::Io)?;
    let local = tcp.local_addr().ok();
    let refuse = |reason: Rejection, error: Error| {
        guard.reject(addr, local, reason, &error);
        Err(error)
    };
    let mut slot = match guard.admit(addr.ip()) {
        Ok(slot) => slot,
        Err(reason) => return refuse(reason, Error::PeerLimit(reason)),
    };
    tcp.set_nodelay(true).map_err(Error::Io)?;
    let limits = guard.limits();
    let handshake = async {
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(super::CoalescedReads::new(tcp))
            .await
            .map_err(Error::Io)?;
        let identity = tls::peer_identity(tls.get_ref().1.peer_certificates())?;
        let connection = h2::server::Builder::new()
            .initial_window_size(settings::HBONE_STREAM_WINDOW)
            .initial_connection_window_size(settings::HBONE_CONNECTION_WINDOW)
            .max_concurrent_streams(limits.max_streams)
            .max_frame_size(settings::HBONE_MAX_FRAME)
            .max_send_buffer_size(settings::HBONE_SEND_BUFFER)
            .max_header_list_size(limits.max_header_list)
            .max_pending_accept_reset_streams(settings::HBONE_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(settings::HBONE_MAX_LOCAL_ERROR_RESETS))
            .handshake::<_, Chunk>(tls)
            .await
            .map_err(Error::H2)?;
        Ok::<_, Error>((identity, connection))
    };
    let (identity, mut connection) =
        match tokio::time::timeout(limits.handshake_timeout, handshake).await {
            Ok(Ok(established)) => established,
            Ok(Err(error)) => {
                return match handshake_rejection(&error) {
                    Some(reason) => refuse(reason, error),
                    None => Err(error),
                };
            }
            Err(_) => {
                return refuse(
                    Rejection::HandshakeTimeout,
                    Error::HandshakeTimeout(limits.handshake_timeout),
                );
            }
        };
    slot.established();
    let source = StreamSource {
        identity,
        addr,
        trace: None,
    };
    let work = Arc::new(StreamWork::new(limits));
    let budget = SendBudget::new(limits.max_send_buffer);
    // Open streams are bounded by h2; handlers of streams the peer reset
    // are not, until they notice the reset: past this many handlers at
    // once, new streams are refused and count as early resets.
    let max_running = 2 * limits.max_streams as usize;
    let mut shut_down = false;
    let keepalive = super::keepalive(connection.ping_pong());
    tokio::pin!(keepalive);
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                None => return Ok(()),
                // The connection ends as the GOAWAY below said.
                Some(Err(_)) if shut_down => return Ok(()),
                Some(Err(error)) => {
                    return match Rejection::of_h2(&error) {
                        Some(reason) => refuse(reason, Error::H2(error)),
                        None => Err(Error::H2(error)),
                    };
                }
                Some(Ok((request, mut respond))) => {
                    if work.running() >= max_running {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        work.early_reset();
                        continue;
                    }
                    let running = work.start();
                    tokio::spawn(handle(request, respond, source.clone(), budget.clone(), on_stream.clone(), running));
                }
            },
            () = work.exceeded.notified(), if !shut_down => {
                shut_down = true;
                guard.reject(
                    addr,
                    local,
                    Rejection::RapidReset,
                    &Error::RapidReset(limits.max_early_resets),
                );
                // Gracefully: no new stream on this connection, and the
                // tunnels open on it finish (a busy client's pooled
                // connection carries others' traffic too; it reconnects).
                connection.graceful_shutdown();
            }
            () = &mut keepalive => {
                tracing::debug!(peer = %addr, "HBONE client stopped answering PINGs; closing");
                return Ok(());
            }
        }
    }
}

/// The rejection a failed handshake stands for: the TLS layer refused the
/// peer (its certificate, its protocol), or h2 refused its preface. A peer
/// that closed the connection mid-handshake is no rejection.
fn handshake_rejection(error: &Error) -> Option<Rejection> {
    match error {
        Error::NoPeerIdentity => Some(Rejection::Tls),
        Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|_| Rejection::Tls),
        Error::H2(h2) => Rejection::of_h2(h2),
        _ => None,
    }
}

/// Decides and runs one stream. A stream the peer resets before it is
/// answered stops its decision and its connect to the target at once (the
/// work of a reset stream must not outlive it: rapid reset), and counts as
/// an early reset of its connection.
async fn handle<F, Fut, G>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Chunk>,
    mut source: StreamSource,
    budget: SendBudget,
    on_stream: F,
    running: Running,
) where
    F: Fn(StreamSource, SocketAddr) -> Fut,
    Fut: Future<Output = Result<G, StatusCode>>,
    G: FnOnce(Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    let refuse = |respond: &mut SendResponse<Chunk>, code: StatusCode| {
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
    // Boxed: deciding (policy, the connect to the target) is the largest
    // state of this task, which is allocated at its largest for as long as
    // the tunnel lives; on the heap only while it runs, it leaves a held
    // tunnel's task at a quarter of the size.
    let decided = tokio::time::timeout(
        settings::HBONE_CONNECT_TIMEOUT,
        Box::pin(on_stream(source, authority)),
    );
    let decided = {
        let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
        tokio::select! {
            decided = decided => Some(decided),
            reset = reset => {
                if reset.is_ok() {
                    running.early_reset();
                }
                None
            }
        }
    };
    let Some(decided) = decided else {
        return;
    };
    match decided {
        Ok(Ok(run)) => match respond.send_response(Response::new(()), false) {
            Ok(send) => run(Tunnel::new(send, request.into_body(), &budget, None)).await,
            Err(error) => tracing::debug!(%error, "HBONE stream closed before the answer"),
        },
        Ok(Err(code)) => refuse(&mut respond, code),
        Err(_) => refuse(&mut respond, StatusCode::GATEWAY_TIMEOUT),
    }
}
