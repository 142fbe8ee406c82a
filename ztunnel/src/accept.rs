//! The one accept loop of every listener (the per-pod proxy listeners, the
//! admin endpoint, the waypoint's readiness), and the small HTTP/1.1 server the
//! operator endpoints run on it.
//!
//! A failed `accept` (out of file descriptors, out of memory for a socket) is
//! not the listener's end, and retrying at once only spins: the loop pauses,
//! [`FIRST_PAUSE`] after the first failure, doubling up to [`MAX_PAUSE`]
//! while accepts keep failing, and back to no pause after a success. It logs
//! the first failure of a streak and then only when the pause grows.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// `addr` as the address it is: IPv4 peers of a dual-stack listener appear
/// as v4-mapped IPv6 addresses.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// How long an operator endpoint's client may take to send a request head:
/// a connection that sends nothing (or a byte at a time) is closed then.
pub const OPERATOR_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head an operator endpoint reads (431 past it); their
/// requests are a line and a few headers.
pub const OPERATOR_MAX_HEAD: usize = 64 * 1024;

/// The pause after the first failed accept of a streak.
pub const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between failed accepts.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Something connections are accepted from.
pub trait Accept {
    /// An accepted connection.
    type Conn;
    /// The next connection and its peer's address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Conn = TcpStream;

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Accepts from `listener` until `stop` completes, handing each connection to
/// `handle`; `name` says which listener in logs. Failed accepts pause the loop
/// (see the module docs).
pub async fn accept_loop<L, S, F>(listener: &L, name: &str, stop: S, mut handle: F)
where
    L: Accept,
    S: Future<Output = ()>,
    F: FnMut(L::Conn, SocketAddr),
{
    tokio::pin!(stop);
    let mut pause: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, peer)) => {
                pause = None;
                handle(conn, peer);
            }
            Err(error) => {
                let next = pause.map_or(FIRST_PAUSE, |p| (p * 2).min(MAX_PAUSE));
                if pause != Some(next) {
                    tracing::warn!(listener = name, %error, pause_ms = next.as_millis(), "accept failed; pausing before the next one");
                }
                pause = Some(next);
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(next) => {}
                }
            }
        }
    }
}

/// Serves HTTP/1.1 on `listener` until the task is dropped: each request is
/// answered by `respond` (operator endpoints: small, synchronous answers).
/// A client gets [`OPERATOR_HEADER_TIMEOUT`] to send each request head, of at
/// most [`OPERATOR_MAX_HEAD`] bytes.
pub async fn serve_http1<R>(listener: TcpListener, name: &'static str, respond: R)
where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    serve_http1_within(listener, name, respond, OPERATOR_HEADER_TIMEOUT).await;
}

async fn serve_http1_within<R>(
    listener: TcpListener,
    name: &'static str,
    respond: R,
    header_timeout: Duration,
) where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    accept_loop(&listener, name, std::future::pending(), |stream, peer| {
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(OPERATOR_MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(listener = name, %error, %peer, "HTTP connection ended with an error");
            }
        });
    })
    .await;
}

/// A response of `status` with `body` as `content_type`, for the operator
/// endpoints served by [`serve_http1`].
pub fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// Fails every accept until `fail_until` calls were made, then yields
    /// connections (a unit value) forever after.
    struct Flaky {
        calls: Arc<AtomicUsize>,
        fail_until: usize,
    }

    impl Accept for Flaky {
        type Conn = ();

        async fn accept(&self) -> io::Result<((), SocketAddr)> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            // A loop that retries without pausing would get here forever.
            assert!(n < 10_000, "the accept loop spins");
            if n < self.fail_until {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                // One connection per millisecond of (virtual) time.
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(((), "127.0.0.1:1".parse().expect("an address")))
            }
        }
    }

    #[tokio::test]
    async fn an_operator_endpoint_cuts_silent_clients_and_refuses_oversized_heads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_http1_within(
            listener,
            "test",
            |_request: &Request<Incoming>| reply(StatusCode::OK, "text/plain", "ok".to_owned()),
            Duration::from_millis(300),
        ));
        let exchange = |request: Vec<u8>| async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let _ = tcp.write_all(&request).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
                .await
                .expect("the server answers or closes");
            String::from_utf8_lossy(&answer).into_owned()
        };
        let ok = exchange(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec());
        assert!(
            ok.await.starts_with("HTTP/1.1 200"),
            "a request is answered"
        );
        // A client that never sends its head is cut at the timeout.
        let silent = exchange(Vec::new()).await;
        assert!(!silent.starts_with("HTTP/1.1 200"), "{silent}");
        // A head over the limit is refused.
        let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2 * OPERATOR_MAX_HEAD));
        big.extend_from_slice(b"\r\n\r\n");
        let refused = exchange(big).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off_instead_of_spinning_and_recover() {
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = Flaky {
            calls: calls.clone(),
            fail_until: usize::MAX,
        };
        let stop = tokio::time::sleep(Duration::from_secs(3));
        accept_loop(&listener, "test", stop, |(), _| {}).await;
        // 10 ms doubling to 1 s: 10+20+40+...+640 = 1.27 s, then 1 s each.
        let attempts = calls.load(Ordering::SeqCst);
        assert!(
            (9..=10).contains(&attempts),
            "{attempts} accepts in 3 s of failures"
        );

        // Once accepts work again, connections flow at once.
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = Flaky {
            calls: calls.clone(),
            fail_until: 5,
        };
        let accepted = AtomicUsize::new(0);
        let stop = tokio::time::sleep(Duration::from_secs(1));
        accept_loop(&listener, "test", stop, |(), _| {
            accepted.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        // Five failures pause 10+20+40+80+160 = 310 ms; the rest of the second
        // accepts one connection per millisecond.
        let accepted = accepted.load(Ordering::SeqCst);
        assert!((600..=700).contains(&accepted), "{accepted} accepted");
    }
}
