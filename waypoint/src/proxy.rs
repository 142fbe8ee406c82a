//! The waypoint's data path. HBONE on 15008 (mutual TLS with the waypoint's
//! own identity); each CONNECT stream is for a destination the waypoint
//! serves: a Service that uses it (`istio.io/use-waypoint`, traffic for
//! services), or a workload (traffic for workloads). Anything else is refused.
//!
//! A stream is HTTP when the Service port says so (`appProtocol`, else the
//! port name: `http`, `http2`, `grpc`, `h2c`, with or without a `-suffix`)
//! or, when the port says nothing, when its first bytes are the HTTP/2
//! preface or an HTTP/1 request line ([`SNIFF_TIMEOUT`] at most, for
//! protocols where the server speaks first). HTTP streams are served by
//! [`http`]: requests checked, authenticated (RequestAuthentication),
//! authorized (AuthorizationPolicy with HTTP attributes), and each sent to an
//! endpoint the router picks. Other streams are authorized at L4 and relayed.
//! Either way the waypoint reaches the endpoint over HBONE with its own
//! identity, and never through a waypoint again.

mod access;
mod http;
pub mod metrics;
mod policies;
mod prefixed;
mod upstream;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use std::future::Future;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use hyper::StatusCode;
pub use policies::{DestinationPolicies, PolicyTable};
pub use prefixed::Prefixed;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::watch,
};
use ztunnel::{
    config::ErrorChain,
    hbone::{self, PoolKey, client::Tunnel, server::StreamSource},
    identity::{CertManager, Identity, TrustBundle, TrustDomain},
    policy::{Attributes, Peer},
    registry::{ObjectKey, Registry, ServicePort, Snapshot},
    route::{Route, Router},
};

use crate::jwt::JwksCache;

/// How long a stream to a port of undeclared protocol waits for the client's
/// first bytes before it is taken for TCP.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the data path.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long a request may wait for its response's head.
    pub request_timeout: Duration,
    /// The idle timeout of TCP streams relayed at L4.
    pub idle_timeout: Duration,
    /// The HBONE port of the endpoints.
    pub hbone_port: u16,
    /// How long to wait for a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// What each HBONE peer may cost the listener.
    pub hbone_guard: Arc<hbone::Guard>,
}

/// One waypoint: its identity, the registry it routes by, its policies.
pub struct Waypoint {
    /// The Gateway it is.
    pub gateway: ObjectKey,
    /// Its SPIFFE identity (the service account of its pods).
    pub identity: Identity,
    /// The node it runs on (locality of endpoint choice), if known.
    pub node: String,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// The configuration.
    pub registry: Arc<Registry>,
    /// Its certificates.
    pub certs: CertManager,
    /// The roots it trusts.
    pub bundle: TrustBundle,
    /// Data path settings.
    pub config: ProxyConfig,
    router: Router,
    tunnels: hbone::Pool,
    upstreams: upstream::Pool,
    policies: ArcSwap<PolicyTable>,
    jwks: JwksCache,
    draining: watch::Sender<bool>,
    active: AtomicUsize,
    metrics: metrics::RequestMetrics,
    /// The recent requests and streams, for the traffic view.
    pub flows: ztunnel::flows::FlowLog,
}

/// A destination this waypoint serves.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    /// As the client addressed it (the CONNECT authority).
    pub addr: SocketAddr,
    /// The Service, when addressed to one.
    pub service: Option<ObjectKey>,
    /// What the port says its traffic is.
    pub protocol: Declared,
}

/// The protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declared {
    /// HTTP/1.1 to the endpoints (`http`).
    Http1,
    /// HTTP/2 to the endpoints (`http2`, `grpc`, `h2c`).
    Http2,
    /// Not HTTP (`tcp`, `tls`, `https`, ...).
    Tcp,
    /// Nothing said: sniffed.
    Undeclared,
}

impl Declared {
    /// What `port` declares: its `appProtocol`, else its name's prefix.
    pub(crate) fn of(port: &ServicePort) -> Self {
        if let Some(app) = port.app_protocol.as_deref() {
            return match app.to_ascii_lowercase().as_str() {
                "http" => Self::Http1,
                "http2" | "grpc" | "kubernetes.io/h2c" | "h2c" => Self::Http2,
                _ => Self::Tcp,
            };
        }
        let Some(name) = port.name.as_deref() else {
            return Self::Undeclared;
        };
        let prefix = name.split_once('-').map_or(name, |(p, _)| p);
        match prefix.to_ascii_lowercase().as_str() {
            "http" => Self::Http1,
            "http2" | "grpc" | "h2c" => Self::Http2,
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Self::Tcp,
            _ => Self::Undeclared,
        }
    }
}

/// Who is on the other end of one stream, and where it goes.
#[derive(Debug)]
pub(crate) struct Downstream {
    /// The client's identity as a URI.
    pub identity: String,
    /// The client's address (the HBONE peer).
    pub addr: SocketAddr,
    /// Where it goes.
    pub destination: Destination,
    /// The request metrics' series its requests were counted in.
    pub series: Arc<metrics::LabelCache>,
    /// The stream's trace (its CONNECT's `traceparent`, `tracestate` and
    /// `baggage`): requests that come without one continue it, and a TCP
    /// stream's next hop carries it on.
    pub trace: Option<ztunnel::trace::TraceContext>,
}

impl Downstream {
    /// The client as a policy peer.
    pub(crate) fn peer(&self) -> Option<Peer<'_>> {
        Peer::from_uri(&self.identity).ok()
    }
}

/// Decrements the count of active streams when dropped.
struct ActiveGuard<'a>(&'a AtomicUsize);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Waypoint {
    /// A waypoint for `gateway`, running as `identity`, with empty policies
    /// until [`update_policies`](Self::update_policies).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gateway: ObjectKey,
        identity: Identity,
        node: String,
        trust_domain: TrustDomain,
        registry: Arc<Registry>,
        certs: CertManager,
        bundle: TrustBundle,
        jwks: JwksCache,
        config: ProxyConfig,
        metrics: metrics::RequestMetrics,
    ) -> Arc<Self> {
        let waypoint = Arc::new(Self {
            gateway,
            identity,
            node,
            trust_domain,
            registry,
            certs,
            bundle,
            config,
            router: Router::default(),
            tunnels: hbone::Pool::default(),
            upstreams: upstream::Pool::default(),
            policies: ArcSwap::default(),
            jwks,
            draining: watch::Sender::new(false),
            active: AtomicUsize::new(0),
            metrics,
            flows: ztunnel::flows::FlowLog::default(),
        });
        waypoint.update_policies(&waypoint.registry.snapshot());
        waypoint
    }

    /// Closes the upstream connections unused for
    /// [`upstream::IDLE_TIMEOUT`]; run every few seconds.
    pub fn close_idle_upstreams(&self) -> usize {
        self.upstreams.close_idle(std::time::Instant::now())
    }

    /// Compiles the policies of `snapshot` and puts them in force for the
    /// next request. The old table is dropped only after the new one is
    /// built, so the JWKS it fetched carry over.
    pub fn update_policies(&self, snapshot: &Snapshot) {
        let table = PolicyTable::build(snapshot, &self.gateway, &self.jwks);
        self.policies.store(Arc::new(table));
    }

    /// Whether the Gateway of this waypoint is in the configuration.
    pub fn is_declared(&self) -> bool {
        self.registry.snapshot().waypoint(&self.gateway).is_some()
    }

    /// Serves HBONE on `listener` until [`drain`](Self::drain).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut draining = self.draining.subscribe();
        let stop = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        let waypoint = self.clone();
        ztunnel::accept::accept_loop(&listener, "hbone", stop, move |tcp, peer| {
            tokio::spawn(waypoint.clone().serve_connection(tcp, peer));
        })
        .await;
    }

    /// Stops accepting, and asks every HTTP connection to finish its
    /// requests and close.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Streams still being served.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    async fn serve_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let config = match self.certs.fetch(&self.identity).await {
            Ok(cert) => hbone::server_config(&cert, &self.bundle),
            Err(error) => {
                tracing::warn!(%peer, error = %ErrorChain(&error), "HBONE refused: no certificate");
                return;
            }
        };
        let config = match config {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%peer, error = %ErrorChain(&error), "HBONE refused: bad TLS configuration");
                return;
            }
        };
        let on_stream = {
            let waypoint = self.clone();
            move |source: StreamSource, authority: SocketAddr| {
                let waypoint = waypoint.clone();
                async move { waypoint.accept_stream(&source, authority) }
            }
        };
        // Refusals are counted and logged by the guard.
        if let Err(error) =
            hbone::server::serve(tcp, config, &self.config.hbone_guard, on_stream).await
        {
            tracing::debug!(%peer, error = %ErrorChain(&error), "HBONE connection ended");
        }
    }

    #[allow(clippy::type_complexity)]
    fn accept_stream(
        self: Arc<Self>,
        source: &StreamSource,
        authority: SocketAddr,
    ) -> Result<
        impl FnOnce(Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + 'static
        + use<>,
        StatusCode,
    > {
        if *self.draining.borrow() {
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        let snapshot = self.registry.snapshot();
        let Some(destination) = self.destination(&snapshot, authority) else {
            tracing::warn!(
                src.identity = %source.identity,
                src.addr = %source.addr,
                dst.addr = %authority,
                "HBONE stream refused: the destination does not use this waypoint"
            );
            return Err(StatusCode::BAD_REQUEST);
        };
        let downstream = Downstream {
            identity: source.identity.to_string(),
            addr: source.addr,
            destination,
            series: Arc::default(),
            trace: source.trace.clone(),
        };
        Ok(move |tunnel: Tunnel| {
            Box::pin(async move { self.serve_stream(downstream, tunnel).await })
                as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        })
    }

    /// What `addr` is to this waypoint, if it serves it.
    fn destination(&self, snapshot: &Snapshot, addr: SocketAddr) -> Option<Destination> {
        if let Some((service, port)) = snapshot.service_port(addr) {
            let mine = snapshot
                .waypoint_for_service(service)
                .is_some_and(|w| w.key == self.gateway);
            return mine.then(|| Destination {
                addr,
                service: Some(service.key.clone()),
                protocol: Declared::of(port),
            });
        }
        let workload = snapshot.workload_by_ip(addr.ip())?;
        let mine = snapshot
            .waypoint_for_workload(workload)
            .is_some_and(|w| w.key == self.gateway);
        mine.then_some(Destination {
            addr,
            service: None,
            protocol: Declared::Undeclared,
        })
    }

    async fn serve_stream(self: Arc<Self>, downstream: Downstream, mut tunnel: Tunnel) {
        self.active.fetch_add(1, Ordering::AcqRel);
        let _active = ActiveGuard(&self.active);
        let (sniffed, prefix) = match downstream.destination.protocol {
            Declared::Http1 | Declared::Http2 => (Sniffed::Http, Bytes::new()),
            Declared::Tcp => (Sniffed::Other, Bytes::new()),
            Declared::Undeclared => match sniff(&mut tunnel, SNIFF_TIMEOUT).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::debug!(%error, "stream ended before its protocol was known");
                    return;
                }
            },
        };
        let io = Prefixed::new(prefix, tunnel);
        let downstream = Arc::new(downstream);
        match sniffed {
            Sniffed::Http => {
                http::serve(self.clone(), downstream, io, self.draining.subscribe()).await;
            }
            Sniffed::Other => self.relay_tcp(&downstream, io).await,
        }
    }

    /// The policies of `destination`, from the table, or compiled now when the
    /// table is older than the destination; `None` when the Gateway left the
    /// configuration (the caller refuses: nothing says what to allow).
    pub(crate) fn policies_for(
        &self,
        destination: &Destination,
    ) -> Option<Arc<DestinationPolicies>> {
        if let Some(found) = self.policies.load().get(destination.service.as_ref()) {
            return Some(found);
        }
        let snapshot = self.registry.snapshot();
        let waypoint = snapshot.waypoint(&self.gateway)?;
        Some(Arc::new(policies::compile_one(
            &snapshot,
            waypoint,
            destination.service.as_ref(),
            &self.jwks,
        )))
    }

    /// Forwards a TCP stream at L4, after L4 authorization.
    async fn relay_tcp(&self, downstream: &Downstream, mut io: Prefixed<Tunnel>) {
        let destination = &downstream.destination;
        let Some(policies) = self.policies_for(destination) else {
            tracing::warn!(dst.addr = %destination.addr, "connection refused: this waypoint's Gateway is not in the configuration");
            ztunnel::relay::Side::abort(&mut io);
            return;
        };
        let decision = policies.authorization.evaluate(&Attributes::connection(
            downstream.addr.ip(),
            destination.addr,
            downstream.peer(),
        ));
        let service = destination
            .service
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        // The stream as a flow of the traffic view, to `dst`.
        let stream_flow = |dst: SocketAddr, outcome: &'static str| {
            let snapshot = self.registry.snapshot();
            ztunnel::flows::Flow {
                direction: "stream",
                src: access::flow_end(&snapshot, downstream.addr, &downstream.identity),
                dst: access::flow_end(&snapshot, dst, ""),
                route: "tcp".to_owned(),
                security: "mtls",
                decision: outcome,
                policy: decision.reason.to_string(),
                ..ztunnel::flows::Flow::default()
            }
        };
        if !decision.is_allowed() {
            self.flows.record(stream_flow(destination.addr, "deny"));
            tracing::info!(
                target: "access",
                decision = "deny",
                src.identity = downstream.identity.as_str(),
                src.addr = %downstream.addr,
                dst.addr = %destination.addr,
                dst.service = service.as_str(),
                policy = %decision.reason,
                "connection denied"
            );
            ztunnel::relay::Side::abort(&mut io);
            return;
        }
        let started = std::time::Instant::now();
        // The stream's trace: in the access line, and on to the next hop.
        let trace_id = downstream
            .trace
            .as_ref()
            .map(|t| t.parent.trace_id())
            .unwrap_or_default();
        let result = async {
            let next = downstream
                .trace
                .as_ref()
                .map(ztunnel::trace::TraceContext::child);
            let (target, mut upstream) =
                self.connect_route(destination.addr, next.as_ref()).await?;
            let bytes = ztunnel::relay::relay(&mut io, &mut upstream, self.config.idle_timeout)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((target, bytes))
        }
        .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (outcome, endpoint, sent, received, error) = match &result {
            Ok((target, (sent, received))) => {
                ("allow", Some(*target), *sent, *received, String::new())
            }
            Err(error) => ("error", None, 0, 0, ErrorChain(&**error).to_string()),
        };
        self.flows.record(ztunnel::flows::Flow {
            bytes_sent: sent,
            bytes_received: received,
            duration_ms,
            error,
            trace_id: trace_id.clone(),
            ..stream_flow(endpoint.unwrap_or(destination.addr), outcome)
        });
        match result {
            Ok((target, (sent, received))) => tracing::info!(
                target: "access",
                endpoint = %target,
                src.identity = downstream.identity.as_str(),
                src.addr = %downstream.addr,
                dst.addr = %destination.addr,
                dst.service = service.as_str(),
                decision = "allow",
                trace_id = trace_id.as_str(),
                bytes_sent = sent,
                bytes_received = received,
                duration_ms,
                "connection complete"
            ),
            Err(error) => tracing::warn!(
                target: "access",
                decision = "allow",
                src.identity = downstream.identity.as_str(),
                src.addr = %downstream.addr,
                dst.addr = %destination.addr,
                dst.service = service.as_str(),
                trace_id = trace_id.as_str(),
                duration_ms,
                error = %ErrorChain(&*error),
                "connection failed"
            ),
        }
    }

    /// The route to `addr` past this waypoint.
    pub(crate) fn route(&self, addr: SocketAddr) -> Route {
        let snapshot = self.registry.snapshot();
        self.router.past_waypoint(
            &snapshot,
            &self.node,
            &self.trust_domain,
            self.config.hbone_port,
            addr,
        )
    }

    /// A byte stream to the endpoint the router picks for `addr`, whose
    /// CONNECT (over HBONE) carries `trace`.
    async fn connect_route(
        &self,
        addr: SocketAddr,
        trace: Option<&ztunnel::trace::TraceContext>,
    ) -> Result<(SocketAddr, upstream::BoxIo), Box<dyn std::error::Error + Send + Sync>> {
        let (target, via) = match self.route(addr) {
            Route::Hbone {
                gateway,
                target,
                identity,
                ..
            } => (target, upstream::Via::Hbone { gateway, identity }),
            Route::Passthrough(target) => (target, upstream::Via::Plain),
            Route::NoEndpoint | Route::NoWaypoint(_) => {
                return Err(format!("no ready endpoint for {addr}").into());
            }
        };
        let io = self.connect(target, &via, trace).await?;
        Ok((target, io))
    }

    /// A byte stream to `target` by `via`; over HBONE, its CONNECT carries
    /// `trace` (a TCP stream's; HTTP requests carry their own).
    pub(crate) async fn connect(
        &self,
        target: SocketAddr,
        via: &upstream::Via,
        trace: Option<&ztunnel::trace::TraceContext>,
    ) -> Result<upstream::BoxIo, upstream::Error> {
        let connect_tcp = |addr: SocketAddr| async move {
            let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {addr} timed out"),
                    )
                })??;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        };
        match via {
            upstream::Via::Plain => {
                let tcp = connect_tcp(target)
                    .await
                    .map_err(|e| upstream::Error::Connect(Box::new(e)))?;
                Ok(Box::new(tcp))
            }
            upstream::Via::Hbone { gateway, identity } => {
                let key = PoolKey {
                    src: self.identity.clone(),
                    dst: identity.clone(),
                    addr: *gateway,
                };
                let dial = || async {
                    let cert = self.certs.fetch(&self.identity).await.map_err(|e| {
                        hbone::Error::Io(std::io::Error::other(ErrorChain(&e).to_string()))
                    })?;
                    let config = hbone::client_config(&cert, &self.bundle, identity)?;
                    let tcp = connect_tcp(*gateway).await.map_err(hbone::Error::Io)?;
                    Ok((tcp, config))
                };
                let tunnel = self
                    .tunnels
                    .tunnel(key, target, trace, dial)
                    .await
                    .map_err(|e| upstream::Error::Connect(Box::new(e)))?;
                Ok(Box::new(tunnel))
            }
        }
    }
}

/// What the first bytes of a stream look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// The HTTP/2 preface or an HTTP/1 request line.
    Http,
    /// Anything else, or nothing within the timeout.
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HTTP1_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Classifies `seen`; `None` while more bytes could still decide.
fn classify(seen: &[u8]) -> Option<Sniffed> {
    let mut undecided = false;
    for start in std::iter::once(H2_PREFACE).chain(HTTP1_METHODS) {
        if seen.starts_with(start) {
            return Some(Sniffed::Http);
        }
        undecided |= start.starts_with(seen);
    }
    (!undecided).then_some(Sniffed::Other)
}

/// Reads until the first bytes decide, `timeout` at most; returns the
/// decision and the bytes read.
async fn sniff(tunnel: &mut Tunnel, timeout: Duration) -> std::io::Result<(Sniffed, Bytes)> {
    let mut seen = BytesMut::with_capacity(H2_PREFACE.len());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = classify(&seen) {
            return Ok((found, seen.freeze()));
        }
        let read = tokio::time::timeout_at(deadline, tunnel.read_buf(&mut seen)).await;
        match read {
            Err(_) | Ok(Ok(0)) => return Ok((Sniffed::Other, seen.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;
    use ztunnel::registry::{Protocol, TargetPort};

    use super::*;

    #[test_case(b"" => None; "nothing yet")]
    #[test_case(b"G" => None; "a method prefix")]
    #[test_case(b"GET / HTTP/1.1\r\n" => Some(Sniffed::Http); "an HTTP/1 request line")]
    #[test_case(b"PRI * HTTP/2.0\r\n" => None; "half the preface")]
    #[test_case(H2_PREFACE => Some(Sniffed::Http); "the HTTP/2 preface")]
    #[test_case(b"PRI * HTTP/1.1" => Some(Sniffed::Other); "not quite the preface")]
    #[test_case(b"\x16\x03\x01" => Some(Sniffed::Other); "a TLS ClientHello")]
    #[test_case(b"GETX" => Some(Sniffed::Other); "no space after the method")]
    #[test_case(b"get / HTTP/1.1" => Some(Sniffed::Other); "methods are case-sensitive")]
    fn first_bytes_classify(seen: &[u8]) -> Option<Sniffed> {
        classify(seen)
    }

    fn port(name: Option<&str>, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(Into::into),
            port: 80,
            target_port: TargetPort::Number(8080),
            protocol: Protocol::Tcp,
            app_protocol: app.map(Into::into),
        }
    }

    #[test_case(Some("http"), None => Declared::Http1; "name http")]
    #[test_case(Some("http-web"), None => Declared::Http1; "name with a suffix")]
    #[test_case(Some("grpc"), None => Declared::Http2; "name grpc")]
    #[test_case(Some("http2-api"), None => Declared::Http2; "name http2")]
    #[test_case(Some("tcp-db"), None => Declared::Tcp; "name tcp")]
    #[test_case(Some("web"), None => Declared::Undeclared; "another name")]
    #[test_case(None, None => Declared::Undeclared; "no name")]
    #[test_case(Some("tcp"), Some("http") => Declared::Http1; "appProtocol before the name")]
    #[test_case(Some("http"), Some("kubernetes.io/h2c") => Declared::Http2; "appProtocol h2c")]
    #[test_case(Some("http"), Some("mysql") => Declared::Tcp; "appProtocol not http")]
    fn ports_declare_their_protocol(name: Option<&str>, app: Option<&str>) -> Declared {
        Declared::of(&port(name, app))
    }
}
