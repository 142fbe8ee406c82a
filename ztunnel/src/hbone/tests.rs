//! The HBONE client pool against a real HBONE server on loopback: reuse,
//! replacement of a broken connection, and the handshake deadline.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinHandle,
};

use super::{
    Error, Pool, PoolKey,
    client::Tunnel,
    stream::{Chunk, SendBudget},
};
use crate::identity::{Identity, TrustBundle, TrustDomain, WorkloadCert, ca::RootCa, testing};

struct Mesh {
    bundle: TrustBundle,
    client: WorkloadCert,
    server: WorkloadCert,
}

fn identity(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa).unwrap()
}

/// A guard with the default limits, counting for no registry.
fn guard() -> Arc<super::Guard> {
    Arc::new(super::Guard::new(Default::default(), Default::default()))
}

fn mesh() -> Mesh {
    let root = RootCa::generate(&TrustDomain::default(), Duration::from_secs(3600)).unwrap();
    let bundle = TrustBundle::from_pem(root.cert_pem().as_bytes(), "test").unwrap();
    let ca = testing::ca(root);
    Mesh {
        client: testing::leaf(&ca, &identity("client"), &bundle),
        server: testing::leaf(&ca, &identity("server"), &bundle),
        bundle,
    }
}

fn echo(tunnel: Tunnel) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(echo_stream(tunnel))
}

/// Sends back what `stream` receives, then ends it.
async fn echo_stream(stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite) {
    let (mut r, mut w) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// An HBONE server whose streams echo; counts connections and keeps their
/// tasks so a test can cut them.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// A stream's handler on the test server.
type Handler = fn(Tunnel) -> Pin<Box<dyn Future<Output = ()> + Send>>;

impl Server {
    async fn start(mesh: &Mesh) -> Self {
        Self::start_with(mesh, echo).await
    }

    /// A server whose streams are served by `handler`.
    async fn start_with(mesh: &Mesh, handler: Handler) -> Self {
        let config = super::server_config(&mesh.server, &mesh.bundle).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (count, tasks) = (accepted.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                let task = tokio::spawn(async move {
                    let _ =
                        super::server::serve(
                            tcp,
                            config,
                            &guard(),
                            move |_source, _authority| async move {
                                Ok::<_, hyper::StatusCode>(handler)
                            },
                        )
                        .await;
                });
                tasks.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            accepted,
            connections,
        }
    }

    /// Drops every open HBONE connection, as a restarted peer would.
    fn cut(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A tunnel from the mesh's client to its server at `addr`, through `pool`,
/// with `early` sent along with the CONNECT.
async fn open(
    pool: &Pool,
    mesh: &Mesh,
    addr: SocketAddr,
    early: bytes::Bytes,
) -> Result<Tunnel, Error> {
    let key = PoolKey {
        src: mesh.client.identity().clone(),
        dst: mesh.server.identity().clone(),
        addr,
    };
    let config = super::client_config(&mesh.client, &mesh.bundle, mesh.server.identity())?;
    let dial = || async {
        Ok((
            TcpStream::connect(addr).await.map_err(Error::Io)?,
            config.clone(),
        ))
    };
    pool.tunnel_with_data(key, "198.18.0.1:80".parse().unwrap(), None, early, dial)
        .await
}

async fn round_trip(pool: &Pool, mesh: &Mesh, addr: SocketAddr, text: &[u8]) -> Result<(), Error> {
    let mut tunnel = open(pool, mesh, addr, bytes::Bytes::new()).await?;
    tunnel.write_all(text).await.map_err(Error::Io)?;
    let mut back = vec![0u8; text.len()];
    tunnel.read_exact(&mut back).await.map_err(Error::Io)?;
    assert_eq!(back, text, "the tunnel echoes");
    Ok(())
}

#[tokio::test]
async fn streams_share_a_connection_and_a_broken_one_is_replaced() {
    let mesh = mesh();
    let server = Server::start(&mesh).await;
    let pool = Pool::default();
    round_trip(&pool, &mesh, server.addr, b"one").await.unwrap();
    round_trip(&pool, &mesh, server.addr, b"two").await.unwrap();
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "the second stream reused the connection"
    );
    assert_eq!(pool.len().await, 1);

    // The peer drops the connection; the next stream goes through at once, on
    // a new connection, and the dead one is gone from the pool.
    for attempt in 0..5u8 {
        server.cut();
        round_trip(&pool, &mesh, server.addr, &[attempt; 3])
            .await
            .unwrap_or_else(|e| panic!("stream {attempt} after the cut: {e}"));
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 6);
    assert_eq!(pool.len().await, 1, "only the live connection is pooled");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_completes_the_handshake_times_out() {
    let mesh = mesh();
    // Accepts TCP, then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let error = round_trip(&Pool::default(), &mesh, addr, b"x")
        .await
        .expect_err("no tunnel through a silent peer");
    assert!(matches!(error, Error::HandshakeTimeout(_)), "{error:?}");
}

/// The application behind a server's stream: an echo, reached through the
/// relay (as ztunnel's inbound side reaches its pods).
fn relayed_echo(mut tunnel: Tunnel) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let (mut app, echo) = tokio::io::duplex(crate::relay::MAX_BUFFER);
        tokio::spawn(echo_stream(echo));
        let _ = crate::relay::relay(&mut tunnel, &mut app, Duration::from_secs(30)).await;
    })
}

#[tokio::test]
async fn the_relay_moves_bulk_and_small_writes_through_tunnels_intact_both_ways() {
    let mesh = mesh();
    let server = Server::start_with(&mesh, relayed_echo).await;
    let pool = Pool::default();
    let mut tunnel = open(&pool, &mesh, server.addr, bytes::Bytes::new())
        .await
        .unwrap();
    // The client's application, relayed into the tunnel as ztunnel's
    // outbound side does.
    let (app, mut side) = tokio::io::duplex(crate::relay::MAX_BUFFER);
    let relay = tokio::spawn(async move {
        crate::relay::relay(&mut side, &mut tunnel, Duration::from_secs(30)).await
    });
    let (mut from_app, mut to_app) = tokio::io::split(app);
    // Bulk (full reads: chunks handed over whole), then single bytes (small
    // reads: copied), then bulk again, every byte numbered.
    let mut sent = Vec::new();
    let mut push = |n: usize| {
        let start = sent.len();
        sent.extend((start..start + n).map(|i| (i % 253) as u8));
        start..start + n
    };
    let plan = [push(8 << 20), push(1), push(1), push(1), push(3 << 20)];
    let data = sent.clone();
    let writer = tokio::spawn(async move {
        for (i, range) in plan.into_iter().enumerate() {
            to_app.write_all(&data[range]).await.unwrap();
            if (1..=3).contains(&i) {
                // Each single byte is read on its own.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        to_app.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    from_app.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), sent.len(), "every byte came back");
    assert!(back == sent, "in order and unchanged");
    let (out, back_count) = relay.await.unwrap().unwrap();
    assert_eq!((out, back_count), (sent.len() as u64, sent.len() as u64));
}

/// A TCP relay in front of `upstream` that can go silent: while `frozen`, it
/// keeps both connections open but forwards nothing, as a peer behind a
/// network partition would look.
async fn freezable_relay(upstream: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, frozen.clone()));
            tokio::spawn(pump(server_read, client_write, frozen.clone()));
        }
    });
    addr
}

/// Copies `from` to `to`, dropping what it reads while `frozen`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if !frozen.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_goes_silent_is_noticed_by_pings_and_replaced() {
    let mesh = mesh();
    let server = Server::start(&mesh).await;
    let frozen = Arc::new(AtomicBool::new(false));
    let addr = freezable_relay(server.addr, frozen.clone()).await;
    let pool = Pool::default();
    round_trip(&pool, &mesh, addr, b"before").await.unwrap();
    assert_eq!(pool.len().await, 1);

    // The path goes silent: no FIN, no RST. Within one PING interval plus the
    // PING timeout the pool drops the connection.
    frozen.store(true, Ordering::SeqCst);
    tokio::time::sleep(
        crate::settings::HBONE_KEEPALIVE_INTERVAL
            + crate::settings::HBONE_KEEPALIVE_TIMEOUT
            + Duration::from_secs(1),
    )
    .await;
    assert_eq!(pool.len().await, 0, "the silent connection was closed");

    // Once the path is back, the next stream opens a new connection.
    frozen.store(false, Ordering::SeqCst);
    round_trip(&pool, &mesh, addr, b"after").await.unwrap();
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pooled_connection_without_streams_is_closed_after_the_pool_idle_time() {
    let mesh = mesh();
    let server = Server::start(&mesh).await;
    let pool = Pool::default();
    round_trip(&pool, &mesh, server.addr, b"once")
        .await
        .unwrap();
    tokio::time::sleep(crate::settings::HBONE_POOL_IDLE / 2).await;
    assert_eq!(pool.len().await, 1, "kept while recently used");
    tokio::time::sleep(crate::settings::HBONE_POOL_IDLE * 2).await;
    assert_eq!(
        pool.len().await,
        0,
        "closed once idle for the pool idle time"
    );
}

/// A tunnel (client side) whose peer answers the CONNECT with 200, then
/// `data` (with or without END_STREAM) and RST_STREAM(NO_ERROR), all in one
/// write of raw HTTP/2 frames: the reset is in before the client reads, as
/// from a fast or hostile peer.
/// A bare HBONE server (TLS and HTTP/2, none of ztunnel's server) that
/// answers a CONNECT only once the stream's first DATA has arrived (504 if
/// none comes within a second), then echoes.
async fn server_wanting_data_before_its_answer(mesh: &Mesh) -> SocketAddr {
    let config = super::server_config(&mesh.server, &mesh.bundle).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .unwrap();
        let mut connection = h2::server::handshake(tls).await.unwrap();
        let (request, mut respond) = connection.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        let mut body = request.into_body();
        let first = tokio::time::timeout(Duration::from_secs(1), body.data()).await;
        let Ok(Some(Ok(first))) = first else {
            let mut refused = hyper::Response::new(());
            *refused.status_mut() = hyper::StatusCode::GATEWAY_TIMEOUT;
            respond.send_response(refused, true).unwrap();
            return;
        };
        let mut send = respond
            .send_response(hyper::Response::new(()), false)
            .unwrap();
        send.send_data(first, false).unwrap();
        while let Some(Ok(data)) = body.data().await {
            send.send_data(data, false).unwrap();
        }
        send.send_data(bytes::Bytes::new(), true).unwrap();
    });
    addr
}

#[tokio::test]
async fn early_data_goes_out_with_the_connect_before_the_answer_and_first() {
    let mesh = mesh();
    let addr = server_wanting_data_before_its_answer(&mesh).await;
    let early = bytes::Bytes::from_static(b"hello");
    let mut tunnel = open(&Pool::default(), &mesh, addr, early)
        .await
        .expect("the server got the data before it answered");
    tunnel.write_all(b", world").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello, world", "the early bytes come first");
}

#[tokio::test]
async fn a_refused_connect_with_early_data_is_refused_and_its_connection_lives_on() {
    let mesh = mesh();
    let config = super::server_config(&mesh.server, &mesh.bundle).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let config = config.clone();
            tokio::spawn(async move {
                let _ = super::server::serve(tcp, config, &guard(), |_source, _authority| async {
                    // Refused: the data that came with the CONNECT is dropped unread.
                    Err::<fn(Tunnel) -> Pin<Box<dyn Future<Output = ()> + Send>>, _>(
                        hyper::StatusCode::FORBIDDEN,
                    )
                })
                .await;
            });
        }
    });
    let pool = Pool::default();
    for attempt in 0..3 {
        let early = bytes::Bytes::from(vec![attempt; 8 * 1024]);
        let refused = open(&pool, &mesh, addr, early).await;
        assert!(
            matches!(&refused, Err(Error::Refused { status }) if *status == hyper::StatusCode::FORBIDDEN),
            "attempt {attempt}: {refused:?}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the discarded data did not break the connection"
    );
}

async fn tunnel_ended_by(data: &'static [u8], end_stream: bool) -> Tunnel {
    let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut out = vec![len[1], len[2], len[3], kind, flags];
            out.extend(stream.to_be_bytes());
            out.extend(payload);
            out
        }
        // The client's preface, then its frames until the CONNECT's HEADERS.
        let mut preface = [0u8; 24];
        server_io.read_exact(&mut preface).await.unwrap();
        loop {
            let mut head = [0u8; 9];
            server_io.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            server_io.read_exact(&mut payload).await.unwrap();
            if head[3] == 0x1 {
                break;
            }
        }
        let mut out = frame(0x4, 0, 0, &[]); // SETTINGS
        out.extend(frame(0x4, 0x1, 0, &[])); // SETTINGS ACK
        out.extend(frame(0x1, 0x4, 1, &[0x88])); // HEADERS :status 200
        out.extend(frame(0x0, u8::from(end_stream), 1, data)); // DATA
        out.extend(frame(0x3, 0, 1, &0u32.to_be_bytes())); // RST_STREAM NO_ERROR
        server_io.write_all(&out).await.unwrap();
        // Keep the pipe open (and drain it) until the client is done.
        let mut sink = [0u8; 1024];
        while matches!(server_io.read(&mut sink).await, Ok(1..)) {}
    });
    let (sender, connection) = h2::client::Builder::new()
        .handshake::<_, Chunk>(client_io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut sender = sender.ready().await.unwrap();
    let request = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri("198.18.1.20:7000")
        .body(())
        .unwrap();
    let (response, send) = sender.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    Tunnel::new(send, response.into_body(), &SendBudget::new(1 << 20), None)
}

/// Writes zeros into `tunnel` until it fails or `end` is set (then ends it
/// cleanly), adding what each write took to `taken`.
async fn flood(mut tunnel: Tunnel, taken: Arc<AtomicUsize>, end: Arc<AtomicBool>) {
    let zeros = vec![0u8; 64 * 1024];
    while !end.load(Ordering::SeqCst) {
        match tunnel.write(&zeros).await {
            Ok(n) => taken.fetch_add(n, Ordering::SeqCst),
            Err(_) => return,
        };
    }
    let _ = tunnel.shutdown().await;
}

/// Waits, checking every 10 ms, until `done` or `limit` has passed (the
/// caller asserts what it waited for).
async fn until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `taken` once it has not moved for 300 ms.
async fn settled(taken: &AtomicUsize) -> usize {
    let mut last = usize::MAX;
    loop {
        let now = taken.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_peer_that_opens_streams_and_never_reads_holds_only_its_connections_budget() {
    const BUDGET: usize = 1 << 20;
    const STREAMS: usize = 20;
    // A 64 KiB pipe stands for the TCP connection (no kernel buffers).
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let budget = SendBudget::new(BUDGET as u32);
    let (tunnels, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let server_budget = budget.clone();
    let server = tokio::spawn(async move {
        let mut connection = h2::server::Builder::new()
            .max_send_buffer_size(crate::settings::HBONE_SEND_BUFFER)
            .handshake::<_, Chunk>(server_io)
            .await
            .unwrap();
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let send = respond
                .send_response(hyper::Response::new(()), false)
                .unwrap();
            let tunnel = Tunnel::new(send, request.into_body(), &server_budget, None);
            if tunnels.send(tunnel).is_err() {
                break;
            }
        }
    });
    // The peer grants all the window it can, stops reading once its streams
    // are answered, and reads again (dropping what it gets) when told to.
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(i32::MAX as u32)
        .initial_connection_window_size(i32::MAX as u32)
        .handshake::<_, bytes::Bytes>(client_io)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        tokio::select! {
            _ = &mut connection => return,
            _ = stopped => {}
        }
        let _ = resumed.await;
        let _ = connection.await;
    });
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut ready = sender.clone().ready().await.unwrap();
        let (response, send) = ready
            .send_request(connect_to("198.18.1.20:7000"), false)
            .unwrap();
        streams.push((response.await.unwrap(), send));
    }
    stop.send(()).unwrap();
    let waits = super::SEND_BUDGET_WAITS.get();
    let (taken, end) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut writers = Vec::new();
    for _ in 0..STREAMS {
        let tunnel = accepted.recv().await.unwrap();
        writers.push(tokio::spawn(flood(tunnel, taken.clone(), end.clone())));
    }
    // Without the budget h2 would queue HBONE_SEND_BUFFER (1 MiB) per
    // stream: 20 MiB. With it: the budget, the pipe and one frame in flight.
    let held = settled(&taken).await;
    assert!(
        (BUDGET..BUDGET + 64 * 1024 + 256 * 1024).contains(&held),
        "the server took {held} bytes for a peer that reads nothing"
    );
    assert!(budget.queued() <= BUDGET);
    assert!(
        super::SEND_BUDGET_WAITS.get() > waits,
        "the writes that waited for the budget are counted"
    );
    // Half the streams reset: their queued data waits in h2 (with its share)
    // until the connection can send the resets, so nothing more is taken.
    for writer in writers.drain(..STREAMS / 2) {
        writer.abort();
        let _ = writer.await;
    }
    assert_eq!(
        settled(&taken).await,
        held,
        "a reset let the server take more"
    );
    // The others end cleanly; once the peer reads again, every queued byte is
    // sent or dropped with its reset, and each share is back.
    end.store(true, Ordering::SeqCst);
    resume.send(()).unwrap();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("a writer did not end once the peer read again")
            .unwrap();
    }
    until(Duration::from_secs(5), || budget.queued() == 0).await;
    assert_eq!(budget.queued(), 0, "shares outlived their bytes");
    drop(streams);
    peer.abort();
    server.abort();
}

#[tokio::test]
async fn a_reset_with_no_error_before_end_stream_reads_as_a_reset() {
    let mut tunnel = tunnel_ended_by(b"partial", false).await;
    let mut got = Vec::new();
    let error = tunnel
        .read_to_end(&mut got)
        .await
        .expect_err("a stream cut short must not look complete");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    assert_eq!(
        got, b"partial",
        "what arrived before the reset is delivered"
    );
}

#[tokio::test]
async fn a_reset_with_no_error_after_end_stream_keeps_the_orderly_end() {
    let mut tunnel = tunnel_ended_by(b"complete", true).await;
    let mut got = Vec::new();
    tunnel
        .read_to_end(&mut got)
        .await
        .expect("END_STREAM came first: an orderly end");
    assert_eq!(got, b"complete");
}

#[tokio::test]
async fn the_trace_context_travels_in_the_connect() {
    let mesh = mesh();
    let config = super::server_config(&mesh.server, &mesh.bundle).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, seen_tx) = (config.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let _ = super::server::serve(tcp, config, &guard(), move |source, _authority| {
                    let _ = seen_tx.send(source.trace);
                    async { Ok::<_, hyper::StatusCode>(echo) }
                })
                .await;
            });
        }
    });
    let key = PoolKey {
        src: mesh.client.identity().clone(),
        dst: mesh.server.identity().clone(),
        addr,
    };
    let client = super::client_config(&mesh.client, &mesh.bundle, mesh.server.identity()).unwrap();
    let open = |trace: Option<crate::trace::TraceContext>| {
        let (pool, key, client) = (Pool::default(), key.clone(), client.clone());
        async move {
            let dial = || async {
                Ok((
                    TcpStream::connect(addr).await.map_err(Error::Io)?,
                    client.clone(),
                ))
            };
            pool.tunnel(key, "198.18.0.1:80".parse().unwrap(), trace.as_ref(), dial)
                .await
                .unwrap()
        }
    };
    let sent = crate::trace::TraceContext {
        parent: crate::trace::TraceParent::new_root(),
        state: Some(hyper::http::HeaderValue::from_static("ambit=1,other=x")),
        baggage: Some(hyper::http::HeaderValue::from_static("tenant=a,user=b")),
    };
    let _tunnel = open(Some(sent.clone())).await;
    assert_eq!(seen.recv().await.unwrap(), Some(sent.clone()));
    // Without a context, the stream has none.
    let _tunnel = open(None).await;
    assert_eq!(seen.recv().await.unwrap(), None);
}

/// A client that trusts any server: these tests are about what the server
/// accepts.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A leaf for `sans` (URIs, or `dns:` names) signed by `issuer`, valid
/// `from`..`to` seconds from now.
fn hostile_leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    sans: &[&str],
    from: i64,
    to: i64,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.strip_prefix("dns:") {
            Some(name) => rcgen::SanType::DnsName(name.try_into().unwrap()),
            None => rcgen::SanType::URI((*san).try_into().unwrap()),
        })
        .collect();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(to);
    let cert = params.signed_by(&key, issuer).unwrap();
    (
        cert.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

#[tokio::test]
async fn clients_without_a_valid_spiffe_identity_are_refused_with_the_reason() {
    let td = TrustDomain::default();
    let root = RootCa::generate(&td, Duration::from_secs(3600)).unwrap();
    let (root_pem, key_pem) = (root.cert_pem().to_owned(), root.key_pem());
    let bundle = TrustBundle::from_pem(root_pem.as_bytes(), "test").unwrap();
    let ca = testing::ca(RootCa::from_pem(&root_pem, &key_pem).unwrap());
    let server = testing::leaf(&ca, &identity("server"), &bundle);
    let config = super::server_config(&server, &bundle).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&root_pem, rcgen::KeyPair::from_pem(&key_pem).unwrap())
            .unwrap();
    // Another mesh's root (another subject): its leaves chain to nothing here.
    let foreign = RootCa::generate(
        &TrustDomain::new("foreign.example").unwrap(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let foreign_issuer = rcgen::Issuer::from_ca_cert_pem(
        foreign.cert_pem(),
        rcgen::KeyPair::from_pem(&foreign.key_pem()).unwrap(),
    )
    .unwrap();
    let good = "spiffe://cluster.local/ns/demo/sa/client";
    let cases = [
        (
            "no URI SAN",
            hostile_leaf(&issuer, &["dns:client.demo"], -60, 3600),
            "no URI SAN",
        ),
        (
            "two URI SANs",
            hostile_leaf(
                &issuer,
                &[good, "spiffe://cluster.local/ns/demo/sa/admin"],
                -60,
                3600,
            ),
            "2 URI SANs",
        ),
        (
            "another trust domain",
            hostile_leaf(
                &issuer,
                &["spiffe://other.example/ns/demo/sa/client"],
                -60,
                3600,
            ),
            "trust domain other.example, not this mesh's cluster.local",
        ),
        (
            "a URI that is no SPIFFE ID",
            hostile_leaf(&issuer, &["https://evil.example/client"], -60, 3600),
            "is not a SPIFFE ID",
        ),
        (
            "expired",
            hostile_leaf(&issuer, &[good], -7200, -3600),
            "xpired",
        ),
        (
            "an unknown root",
            hostile_leaf(&foreign_issuer, &[good], -60, 3600),
            "UnknownIssuer",
        ),
    ];
    for (case, (cert, key), expected) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = config.clone();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            super::server::serve(tcp, config, &guard(), |_source, _authority| async {
                Ok::<_, hyper::StatusCode>(echo)
            })
            .await
        });
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        // The client may finish its half of the handshake; the server refuses.
        let _ = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await;
        let error = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .unwrap_or_else(|_| panic!("{case}: the server did not refuse in time"))
            .unwrap()
            .expect_err(case);
        let chain = crate::identity::error_chain(&error);
        assert!(chain.contains(expected), "{case}: {chain}");
    }
}

/// An HBONE server held to `limits` whose streams to port 1 take `slow` to
/// decide (a slow connect to the application) and count the decisions
/// started and dropped; streams to any other port echo.
struct GuardedServer {
    addr: SocketAddr,
    guard: Arc<super::Guard>,
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

/// Counts a decision dropped (finished or cancelled).
struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl GuardedServer {
    async fn start(mesh: &Mesh, limits: super::Limits, slow: Duration) -> Self {
        let config = super::server_config(&mesh.server, &mesh.bundle).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let guard = Arc::new(super::Guard::new(limits, Default::default()));
        let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (g, s, d) = (guard.clone(), started.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (config, guard, started, dropped) =
                    (config.clone(), g.clone(), s.clone(), d.clone());
                tokio::spawn(async move {
                    let _ = super::server::serve(tcp, config, &guard, move |_source, target| {
                        let (started, dropped) = (started.clone(), dropped.clone());
                        async move {
                            if target.port() == 1 {
                                started.fetch_add(1, Ordering::SeqCst);
                                let _counted = CountDrop(dropped);
                                tokio::time::sleep(slow).await;
                            }
                            Ok::<_, hyper::StatusCode>(echo)
                        }
                    })
                    .await;
                });
            }
        });
        Self {
            addr,
            guard,
            started,
            dropped,
        }
    }
}

/// An HTTP/2 connection over mutual TLS to `addr` as the mesh's client,
/// from the local address `from`; the connection's task is returned too.
async fn h2_client(
    mesh: &Mesh,
    from: std::net::IpAddr,
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let config = super::client_config(&mesh.client, &mesh.bundle, mesh.server.identity()).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    (sender, tokio::spawn(connection))
}

fn connect_to(target: &str) -> hyper::Request<()> {
    hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(target)
        .body(())
        .unwrap()
}

/// A CONNECT through `sender` whose tunnel echoes `text`.
async fn echoed(sender: &mut h2::client::SendRequest<bytes::Bytes>, text: &'static [u8]) -> bool {
    let Ok(mut ready) = sender.clone().ready().await else {
        return false;
    };
    let Ok((response, mut send)) = ready.send_request(connect_to("198.18.0.1:2"), false) else {
        return false;
    };
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), response).await else {
        return false;
    };
    if response.status() != hyper::StatusCode::OK
        || send
            .send_data(bytes::Bytes::from_static(text), true)
            .is_err()
    {
        return false;
    }
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got == text
}

/// What a reset flood got.
struct Flood {
    /// Streams sent (and reset) before the connection took no more.
    sent: usize,
    /// Whether a tunnel opened on the same connection before the flood still
    /// carried bytes afterwards (`paced` floods only).
    tunnel_survived: bool,
}

/// Opens up to 1,000 streams to port 1 on a new connection and resets each,
/// once the server started deciding it (`paced`) or at once, and waits for
/// the server to end the connection. A paced flood first opens a tunnel
/// (port 2, echo) on the same connection and checks it afterwards.
async fn reset_flood(mesh: &Mesh, server: &GuardedServer, paced: bool) -> Flood {
    let (mut attacker, attack) = h2_client(mesh, "127.0.0.1".parse().unwrap(), server.addr).await;
    let mut tunnel = None;
    if paced {
        let (response, send) = attacker
            .send_request(connect_to("198.18.0.1:2"), false)
            .expect("a tunnel");
        let response = response.await.expect("the tunnel is answered");
        assert_eq!(response.status(), hyper::StatusCode::OK);
        tunnel = Some((send, response.into_body()));
    }
    let mut sent = 0;
    for _ in 0..1000 {
        let Ok(ready) = attacker.clone().ready().await else {
            break;
        };
        attacker = ready;
        let started = server.started.load(Ordering::SeqCst);
        let Ok((_response, mut send)) = attacker.send_request(connect_to("198.18.0.1:1"), false)
        else {
            break;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while paced
            && server.started.load(Ordering::SeqCst) == started
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        send.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let mut tunnel_survived = false;
    if let Some((mut send, mut body)) = tunnel
        && send
            .send_data(bytes::Bytes::from_static(b"still here"), true)
            .is_ok()
    {
        let mut got = Vec::new();
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), body.data()).await
        {
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        tunnel_survived = got == b"still here";
    }
    // The attacker's handle stays open until the server ended the connection:
    // closing first could reset it before the server read the flood (the
    // client has unread frames), and the server would see no flood at all.
    tokio::time::timeout(Duration::from_secs(5), attack)
        .await
        .expect("the server ends the attacker's connection")
        .expect("the connection task")
        .ok();
    drop(attacker);
    Flood {
        sent,
        tunnel_survived,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_stops_its_streams_work_and_loses_the_connection_and_others_are_served()
{
    let mesh = mesh();
    let limits = super::Limits {
        max_early_resets: 50,
        ..Default::default()
    };
    let server = GuardedServer::start(&mesh, limits, Duration::from_secs(30)).await;
    let local = "127.0.0.1".parse().unwrap();
    let (mut polite, _polite_task) = h2_client(&mesh, local, server.addr).await;
    assert!(echoed(&mut polite, b"before").await);

    // Each stream starts a decision that would take 30 s (a slow connect to
    // the application), and is reset as soon as the server works on it.
    use super::guard::Rejection;
    let flood = reset_flood(&mesh, &server, true).await;
    assert!(
        flood.sent > 50 && flood.sent < 1000,
        "the connection took no more streams past the limit ({} sent)",
        flood.sent
    );
    assert!(
        flood.tunnel_survived,
        "a tunnel already open on that connection finishes (GOAWAY is graceful)"
    );
    assert_eq!(server.guard.rejected(Rejection::RapidReset), 1);
    // A burst: streams reset before the server took them end the
    // connection by h2's own limit, those it took by the guard's (the
    // client may have written them all before the server read the first).
    // The server counts the end after the client saw it: wait for the count.
    let burst = reset_flood(&mesh, &server, false).await;
    let ended =
        || server.guard.rejected(Rejection::Flood) + server.guard.rejected(Rejection::RapidReset);
    until(Duration::from_secs(5), || ended() >= 2).await;
    assert_eq!(
        ended(),
        2,
        "the burst's connection was ended too ({} sent, {} for protocol errors)",
        burst.sent,
        server.guard.rejected(Rejection::Protocol)
    );
    // No decision outlives its reset stream.
    until(Duration::from_secs(2), || {
        server.dropped.load(Ordering::SeqCst) >= server.started.load(Ordering::SeqCst)
    })
    .await;
    let (started, dropped) = (
        server.started.load(Ordering::SeqCst),
        server.dropped.load(Ordering::SeqCst),
    );
    assert!(started > 0, "the streams reached the server");
    assert_eq!(
        dropped, started,
        "every reset stream's work stopped with it"
    );
    assert!(
        echoed(&mut polite, b"after").await,
        "a well-behaved connection of the same peer is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stalling_its_handshakes_is_held_to_its_share_and_another_is_served() {
    let mesh = mesh();
    let limits = super::Limits {
        max_handshakes_per_peer: 4,
        handshake_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let server = GuardedServer::start(&mesh, limits, Duration::ZERO).await;
    // Four connections from 127.0.0.1 that never send a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fifth is closed at once, with no handshake.
    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut buf))
        .await
        .expect("the fifth connection is closed at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    // Another peer address is not held to 127.0.0.1's share.
    let (mut other, _task) = h2_client(&mesh, "127.0.0.2".parse().unwrap(), server.addr).await;
    assert!(echoed(&mut other, b"served").await);
    // The stalled handshakes are cut at the deadline, and free their slots.
    for mut tcp in stalled {
        let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
            .await
            .expect("a stalled handshake is cut at its deadline");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    use super::guard::Rejection;
    let counted = || {
        (
            server.guard.rejected(Rejection::HandshakesPerPeer),
            server.guard.rejected(Rejection::HandshakeTimeout),
        )
    };
    // The socket closes as the handshake is dropped, just before the count.
    until(Duration::from_secs(1), || counted() == (1, 4)).await;
    assert_eq!(
        counted(),
        (1, 4),
        "(handshakes_per_peer, handshake_timeout)"
    );
    let (mut again, _task) = h2_client(&mesh, "127.0.0.1".parse().unwrap(), server.addr).await;
    assert!(echoed(&mut again, b"again").await, "the slots were freed");
}
