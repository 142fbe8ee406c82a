//! The outbound listener (15001, loopback, inside the pod): connections the
//! capture redirected away from their destination. The registry decides the
//! route: HBONE into the mesh, plain TCP out of it.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    ConnectionError,
    access::{Connection, Direction},
    inbound::connect,
    pods::PodContext,
};
use crate::{
    hbone::{self, PoolKey},
    metrics::TcpLabels,
    route::Route,
};

/// Proxies one accepted connection and writes its access log line.
pub async fn handle(app: TcpStream, peer: SocketAddr, pod: Arc<PodContext>) {
    // With the sk_msg shortcut, what is read from the application is
    // reported, so the redirect can go on while ztunnel keeps up.
    let counter = match (&pod.inputs.shortcut_reads, app.local_addr()) {
        (Some(reads), Ok(local)) => Some(reads.counter(pod.cookie, local, peer)),
        _ => None,
    };
    let mut app = CountedReads {
        inner: app,
        counter,
    };
    let mut record = Connection::new(
        Direction::Outbound,
        pod.name.clone(),
        peer,
        &pod.inputs.mesh,
    );
    record.src_identity = Some(pod.identity.to_string());
    // A trace per connection (the destination's lines carry it too, over
    // HBONE); the connection's span, exported with OTLP, is its root.
    let trace = crate::trace::TraceContext::new_root();
    let connection = tracing::debug_span!(
        "connection",
        conn_id = record.id,
        direction = "outbound",
        src = %peer,
        dst = tracing::field::Empty,
    );
    crate::telemetry::set_trace_parent(&connection, &trace.parent);
    let result = async {
        // A proxy must not add Nagle's delay to small writes.
        app.inner
            .set_nodelay(true)
            .map_err(ConnectionError::Relay)?;
        let dst = pod
            .inputs
            .orig_dst
            .lookup(pod.cookie, peer)
            .map_err(ConnectionError::Capture)?
            .ok_or(ConnectionError::NoOriginalDestination)?;
        record.dst = Some(dst);
        connection.record("dst", tracing::field::display(dst));
        if dst.ip().is_loopback() || dst.ip().is_unspecified() {
            return Err(ConnectionError::Loop(dst));
        }
        let mesh = &pod.inputs.mesh;
        let snapshot = mesh.registry.snapshot();
        let route = tracing::debug_span!("route", conn_id = record.id, dst = %dst).in_scope(|| {
            mesh.router.route(
                &snapshot,
                &mesh.node,
                &mesh.trust_domain,
                pod.inputs.hbone_port,
                dst,
            )
        });
        tracing::debug!(conn_id = record.id, dst = %dst, route = ?route, "routed");
        // The source's ztunnel reports the connection: this pod to what it
        // addressed (a Service's VIP, or a workload).
        let mut labels = TcpLabels::new("source");
        labels.peers.source(
            snapshot.workload(&pod.key).map(|w| &**w),
            Some(&pod.identity.to_string()),
        );
        if let Some(service) = snapshot.service_by_vip(dst.ip()) {
            labels
                .peers
                .service(&service.key.namespace, &service.key.name);
        }
        match route {
            Route::Passthrough(target) => {
                record.mode = "passthrough";
                record.dst = Some(target);
                labels.peers.destination(snapshot.workload_by_ip(target.ip()).map(|w| &**w), None);
                record.labels = Some(labels);
                let mut upstream = connect(&pod, target, None)
                    .instrument(tracing::debug_span!("connect", conn_id = record.id, dst = %target))
                    .await?;
                record.count();
                crate::relay::relay_metered(
                    &mut app,
                    &mut upstream,
                    pod.inputs.idle_timeout,
                    &*record.traffic,
                )
                .await
                .map_err(ConnectionError::from)
            }
            Route::Hbone {
                gateway,
                target,
                identity,
                waypoint,
            } => {
                record.mode = "hbone";
                record.dst = Some(target);
                record.dst_identity = Some(identity.to_string());
                record.waypoint = waypoint;
                let principal = identity.to_string();
                record.trace_id = Some(trace.parent.trace_id());
                labels.peers.destination(
                    snapshot.workload_by_ip(target.ip()).map(|w| &**w),
                    Some(&principal),
                );
                labels.connection_security_policy = "mutual_tls";
                record.labels = Some(labels);
                let span = tracing::debug_span!("tunnel", conn_id = record.id, gateway = %gateway, dst = %target);
                // The CONNECT names the tunnel's span as the parent of the
                // next hop's (when spans are exported).
                let next = crate::trace::TraceContext {
                    parent: crate::telemetry::next_hop(&span, &trace.parent),
                    ..trace.clone()
                };
                let early = early_data(&app.inner).map_err(ConnectionError::Relay)?;
                if let Some(counter) = &mut app.counter {
                    counter.add(early.len());
                }
                // Boxed: opening a tunnel (dialling, the TLS handshake) is the
                // largest state this task ever holds, and a task is allocated
                // at its largest for its whole life. On the heap only while
                // it runs, it leaves a long-lived connection's task at a
                // third of the size (memory per held connection).
                let mut tunnel = Box::pin(
                    open_tunnel(&pod, gateway, target, identity, &next, early.clone())
                        .instrument(span),
                )
                .await?;
                record.count();
                if !early.is_empty() {
                    crate::relay::Meter::moved(&*record.traffic, early.len() as u64, 0);
                }
                crate::relay::relay_metered(
                    &mut app,
                    &mut tunnel,
                    pod.inputs.idle_timeout,
                    &*record.traffic,
                )
                .await
                .map_err(ConnectionError::from)
            }
            Route::NoEndpoint => {
                record.labels = Some(labels);
                Err(ConnectionError::NoEndpoint(dst))
            }
            Route::NoWaypoint(waypoint) => {
                record.labels = Some(labels);
                record.waypoint = Some(waypoint.clone());
                Err(ConnectionError::NoWaypoint { dst, waypoint })
            }
        }
    }
    .instrument(connection.clone())
    .await;
    connection.in_scope(|| record.finish(&result));
}

/// The application's side of a connection, counting what is read from it
/// for the sk_msg shortcut (when it is on).
struct CountedReads {
    inner: TcpStream,
    counter: Option<crate::capture::ReadCounter>,
}

impl tokio::io::AsyncRead for CountedReads {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(counter) = &mut this.counter {
            match &poll {
                std::task::Poll::Ready(Ok(())) => counter.add(buf.filled().len() - before),
                // Pending: the socket was read dry.
                std::task::Poll::Pending => counter.drained(),
                std::task::Poll::Ready(Err(_)) => {}
            }
        }
        poll
    }
}

impl tokio::io::AsyncWrite for CountedReads {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl crate::relay::Side for CountedReads {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

/// The most read from the application before its tunnel opens: a first
/// message (a request, a TLS ClientHello) fits.
const EARLY_DATA_MAX: usize = 16 * 1024;

/// What the application has sent already, without waiting (nothing, for a
/// protocol whose server speaks first): it goes out with the CONNECT. Read
/// from the socket itself: tokio learns of a socket's readiness only at its
/// next poll of the kernel, and this one was just accepted.
fn early_data(app: &TcpStream) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut buf = [0u8; EARLY_DATA_MAX];
    let socket = socket2::SockRef::from(app);
    loop {
        match (&*socket).read(&mut buf) {
            Ok(n) => return Ok(Bytes::copy_from_slice(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Bytes::new()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A CONNECT stream to `target` through the HBONE server at `gateway`, which
/// must present `identity`, carrying `early` right behind the CONNECT.
async fn open_tunnel(
    pod: &PodContext,
    gateway: SocketAddr,
    target: SocketAddr,
    identity: crate::identity::Identity,
    trace: &crate::trace::TraceContext,
    early: Bytes,
) -> Result<hbone::client::Tunnel, ConnectionError> {
    let mesh = &pod.inputs.mesh;
    let key = PoolKey {
        src: pod.identity.clone(),
        dst: identity.clone(),
        addr: gateway,
    };
    let dial = || async {
        let cert = mesh.certs.fetch(&pod.identity).await.map_err(|source| {
            hbone::Error::Io(std::io::Error::other(super::error_chain(
                &ConnectionError::Certificate {
                    identity: pod.identity.to_string(),
                    source,
                },
            )))
        })?;
        let config = hbone::client_config(&cert, &mesh.bundle, &identity)?;
        let tcp = connect(pod, gateway, None)
            .await
            .map_err(|e| hbone::Error::Io(std::io::Error::other(super::error_chain(&e))))?;
        Ok((tcp, config))
    };
    pod.pool
        .tunnel_with_data(key, target, Some(trace), early, dial)
        .await
        .map_err(|source| ConnectionError::Hbone { gateway, source })
}
