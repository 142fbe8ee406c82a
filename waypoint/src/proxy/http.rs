//! HTTP at the waypoint: HTTP/1.1 (keep-alive, chunked, `Upgrade` passed
//! through) and HTTP/2 (gRPC included) on one tunnel, each request in this
//! order:
//!
//! 1. the head is checked ([`crate::request::check_request`], and for
//!    HTTP/1 the framing as it arrived, [`crate::request::framing`]) and the
//!    path normalized ([`crate::request::normalize_uri`]): a refusal is 400
//!    and the HTTP/1 connection closes;
//! 2. RequestAuthentication: a present, invalid token is 401
//!    [`REJECTED_BODY`] (gRPC: `grpc-status` 16);
//! 3. AuthorizationPolicy with the request's attributes: denied is 403
//!    `RBAC: access denied` (gRPC: `grpc-status` 7), logged with the policy;
//! 4. the request is rewritten (token and claim headers, the normalized path,
//!    hop-by-hop headers dropped, `x-request-id` and `traceparent` added when
//!    missing) and sent to an endpoint the router picks, within the request
//!    timeout (504), or 503 when there is none or it cannot be reached.

use std::{
    collections::HashMap,
    convert::Infallible,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use ztunnel::{
    config::ErrorChain,
    policy::{Attributes, Headers, Request as PolicyRequest},
    trace::{self, TraceContext, TraceParent},
};

use super::{
    Declared, Downstream, Waypoint,
    access::{Logged, Recorder, RequestLog, ResponseBody, boxed},
    upstream::{self, Version as UpstreamVersion},
};
use crate::{
    jwt::{Outcome, REJECTED_BODY},
    request::{Guarded, HeadError, check_request, normalize_uri},
};

/// The body of the 403 of a denied request, as Envoy words it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Largest HTTP/1 request head, and HTTP/2 header list, accepted.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Concurrent HTTP/2 streams per client connection.
pub const MAX_HTTP2_STREAMS: u32 = 256;

/// How long an HTTP/1 client may take to send a request head.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves HTTP on one tunnel until the client closes it, or, once `draining`
/// turns true, until its requests in flight are done.
pub(super) async fn serve<I>(
    waypoint: Arc<Waypoint>,
    downstream: Arc<Downstream>,
    io: I,
    mut draining: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // HTTP/1 requests are numbered as they come, in the order the framing
    // guard numbers their heads (HTTP/2 has no HTTP/1 framing to guard).
    let (io, framing) = Guarded::new(io);
    let http1_requests = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |request: Request<Incoming>| {
        let waypoint = waypoint.clone();
        let downstream = downstream.clone();
        let refused = (request.version() != Version::HTTP_2)
            .then(|| framing.refused(http1_requests.fetch_add(1, Ordering::Relaxed)))
            .flatten()
            .cloned();
        async move { Ok::<_, Infallible>(handle(&waypoint, &downstream, request, refused).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_HTTP2_STREAMS)
        .max_header_list_size(u32::try_from(MAX_REQUEST_HEAD).unwrap_or(u32::MAX));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async { let _ = draining.wait_for(|d| *d).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(error = %error, "HTTP connection ended with an error");
    }
}

/// Handles one request; every outcome is a response.
async fn handle(
    waypoint: &Waypoint,
    downstream: &Downstream,
    mut request: Request<Incoming>,
    framing: Option<HeadError>,
) -> Response<ResponseBody> {
    let destination = &downstream.destination;
    let mut log = RequestLog::start(
        downstream.identity.clone(),
        downstream.addr,
        destination.addr,
    );
    if let Some(service) = &destination.service {
        log.service = service.to_string();
    }
    log.method = request.method().as_str().to_owned();
    log.protocol = protocol(request.version());
    let grpc = is_grpc(request.headers());
    log.grpc = grpc;
    log.request_bytes = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    log.recorder = Some(Recorder {
        metrics: waypoint.metrics.clone(),
        snapshot: waypoint.registry.snapshot(),
        cache: downstream.series.clone(),
        flows: waypoint.flows.clone(),
    });

    if let Some(error) = framing {
        log.path = request.uri().path().to_owned();
        return refuse_malformed(log, &error);
    }
    if let Err(error) = check_request(&request) {
        log.path = request.uri().path().to_owned();
        return refuse_malformed(log, &error);
    }
    let normalized = match normalize_uri(request.uri()) {
        Ok(normalized) => normalized,
        Err(error) => {
            log.path = request.uri().path().to_owned();
            return refuse_malformed(log, &error);
        }
    };
    log.path = normalized.path().to_owned();
    let (id, parent) = request_id(request.headers_mut(), downstream.trace.as_ref());
    log.request_id = id;
    // The request's span, exported with OTLP (up to the response head): a
    // child of the request's trace, and the parent the upstream sees.
    let _span = request_span(&mut request, &log, parent);

    let Some(policies) = waypoint.policies_for(destination) else {
        log.decision = "error";
        "this waypoint's Gateway is not in the configuration".clone_into(&mut log.error);
        return local(
            log,
            StatusCode::SERVICE_UNAVAILABLE,
            "no waypoint configuration",
            grpc,
        );
    };

    // RequestAuthentication.
    let token = match policies
        .authentication
        .authenticate(request.headers(), request.uri())
        .await
    {
        Outcome::NoToken => None,
        Outcome::Verified(token) => Some(token),
        Outcome::Rejected(rejection) => {
            log.decision = "unauthenticated";
            log.error = ErrorChain(&rejection).to_string();
            tracing::info!(
                src.identity = downstream.identity.as_str(),
                dst.addr = %destination.addr,
                path = log.path.as_str(),
                issuer = rejection.issuer().unwrap_or(""),
                subject = rejection.subject().unwrap_or(""),
                reason = %rejection.reason(),
                "JWT rejected"
            );
            return local(log, StatusCode::UNAUTHORIZED, REJECTED_BODY, grpc);
        }
    };
    if let Some(token) = &token {
        token.principal().clone_into(&mut log.request_principal);
    }

    // AuthorizationPolicy.
    {
        let host = host(&request).unwrap_or_default();
        let headers = HeaderView::new(request.headers());
        let view = token.as_ref().map(|t| t.auth_view());
        let attributes = Attributes {
            source_ip: downstream.addr.ip().to_canonical(),
            remote_ip: None,
            destination: destination.addr,
            peer: downstream.peer(),
            sni: None,
            request: Some(PolicyRequest {
                method: request.method().as_str(),
                path: normalized.path(),
                host: &host,
                headers: &headers,
                auth: view.as_ref().map(|v| v.request_auth()),
            }),
        };
        let decision = policies.authorization.evaluate(&attributes);
        for audit in decision.audits.iter() {
            tracing::info!(policy = %audit, src.identity = downstream.identity.as_str(), path = log.path, "AUDIT policy matched");
        }
        log.policy = decision.reason.to_string();
        if !decision.is_allowed() {
            log.decision = "deny";
            tracing::info!(
                src.identity = downstream.identity.as_str(),
                dst.addr = %destination.addr,
                method = log.method.as_str(),
                path = log.path.as_str(),
                request_principal = log.request_principal.as_str(),
                policy = log.policy.as_str(),
                "request denied"
            );
            return local(log, StatusCode::FORBIDDEN, DENIED_BODY, grpc);
        }
        log.decision = "allow";
    }

    // The request as it goes on.
    let (mut parts, body) = request.into_parts();
    let rewritten =
        policies
            .authentication
            .rewrite(token.as_ref(), &mut parts.headers, &mut parts.uri);
    let mut request = Request::from_parts(parts, body);
    if let Err(error) = rewritten {
        log.decision = "error";
        log.error = ErrorChain(&error).to_string();
        return local(
            log,
            StatusCode::BAD_REQUEST,
            "cannot rewrite the request",
            grpc,
        );
    }
    drop(token);
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{}?{query}", normalized.path()),
        None => normalized.path().to_owned(),
    };

    let (target, via) = match waypoint.route(destination.addr) {
        ztunnel::route::Route::Hbone {
            gateway,
            target,
            identity,
            ..
        } => {
            log.dst_identity = identity.to_string();
            (target, upstream::Via::Hbone { gateway, identity })
        }
        ztunnel::route::Route::Passthrough(target) => (target, upstream::Via::Plain),
        ztunnel::route::Route::NoEndpoint | ztunnel::route::Route::NoWaypoint(_) => {
            log.decision = "error";
            "no ready endpoint".clone_into(&mut log.error);
            return local(
                log,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                grpc,
            );
        }
    };
    log.endpoint = Some(target);
    let downstream_version = request.version();
    let version = match (destination.protocol, downstream_version) {
        (Declared::Http2, _) | (Declared::Undeclared | Declared::Tcp, Version::HTTP_2) => {
            UpstreamVersion::Http2
        }
        _ => UpstreamVersion::Http1,
    };
    let upgrade = version == UpstreamVersion::Http1
        && downstream_version != Version::HTTP_2
        && request.headers().contains_key(header::UPGRADE);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    if let Err(error) = prepare(&mut request, version, &path_and_query, upgrade) {
        log.decision = "error";
        log.error = error;
        return local(
            log,
            StatusCode::BAD_REQUEST,
            "cannot forward the request",
            grpc,
        );
    }

    let key = upstream::Key {
        target,
        via: via.clone(),
        version,
    };
    let sent = tokio::time::timeout(
        waypoint.config.request_timeout,
        waypoint.upstreams.send(&key, request, || async {
            waypoint.connect(target, &via, None).await
        }),
    )
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            log.decision = "error";
            log.error = ErrorChain(&error).to_string();
            return local(
                log,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers",
                grpc,
            );
        }
        Err(_) => {
            log.decision = "error";
            log.error = format!("no response within {:?}", waypoint.config.request_timeout);
            return local(
                log,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                grpc,
            );
        }
    };
    log.status = response.status().as_u16();
    if let Some(status) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        status.clone_into(&mut log.grpc_status);
    }
    match downstream_upgrade {
        Some(downstream_upgrade) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(downstream_upgrade, upstream_upgrade));
        }
        _ => strip_hop_by_hop(response.headers_mut(), false),
    }
    if downstream_version != Version::HTTP_2 {
        *response.version_mut() = Version::HTTP_11;
    }
    response.map(|body| boxed(Logged::new(body, log)))
}

/// Copies bytes both ways between the two sides of an upgraded connection.
async fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((downstream, upstream)) => {
            let mut downstream = TokioIo::new(downstream);
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
            {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
}

/// Readies `request` for the endpoint: its version and target form, the
/// normalized path, hop-by-hop headers out (but an upgrade's), `Host` for
/// HTTP/1.1.
fn prepare(
    request: &mut Request<Incoming>,
    version: UpstreamVersion,
    path_and_query: &str,
    upgrade: bool,
) -> Result<(), String> {
    let authority = host(request);
    strip_hop_by_hop(request.headers_mut(), upgrade);
    if !request.headers().contains_key("x-forwarded-proto") {
        request
            .headers_mut()
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    match version {
        UpstreamVersion::Http1 => {
            *request.version_mut() = Version::HTTP_11;
            *request.uri_mut() = path_and_query
                .parse::<Uri>()
                .map_err(|e| format!("the normalized path is not a URI: {e}"))?;
            if !request.headers().contains_key(header::HOST)
                && let Some(authority) = authority
            {
                let value = HeaderValue::from_str(&authority)
                    .map_err(|e| format!("the authority is not a Host value: {e}"))?;
                request.headers_mut().insert(header::HOST, value);
            }
        }
        UpstreamVersion::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            let authority = authority.unwrap_or_else(|| "localhost".to_owned());
            *request.uri_mut() = Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(path_and_query)
                .build()
                .map_err(|e| format!("cannot build the HTTP/2 target: {e}"))?;
            request.headers_mut().remove(header::HOST);
        }
    }
    Ok(())
}

/// The headers of RFC 9110 section 7.6.1 that concern one connection only,
/// and those the `Connection` header names. `te: trailers` stays (gRPC needs
/// it); with `upgrade`, so do `Connection` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && *name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::TRAILER);
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The request's authority: the target's, else `Host`.
fn host<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "other",
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A 400 for a request that does not pass the head checks; the HTTP/1
/// connection closes after it (what follows may be a smuggled request).
fn refuse_malformed(
    mut log: RequestLog,
    error: &(dyn std::error::Error + 'static),
) -> Response<ResponseBody> {
    log.decision = "invalid";
    log.error = ErrorChain(error).to_string();
    log.status = StatusCode::BAD_REQUEST.as_u16();
    let body = format!("bad request: {error}\n");
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    log.emit();
    response
}

/// A response of the waypoint's own: `status` with `body`, or for gRPC a
/// trailers-only answer with the matching `grpc-status` (as Envoy maps
/// them).
fn local(
    mut log: RequestLog,
    status: StatusCode,
    body: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut response = if grpc {
        let code = match status {
            StatusCode::BAD_REQUEST => 13,
            StatusCode::UNAUTHORIZED => 16,
            StatusCode::FORBIDDEN => 7,
            StatusCode::NOT_FOUND => 12,
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => 14,
            _ => 2,
        };
        code.to_string().clone_into(&mut log.grpc_status);
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_str(body) {
            headers.insert("grpc-message", message);
        }
        response
    } else {
        let mut response = Response::new(full(body.to_owned()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if status == StatusCode::UNAUTHORIZED && !grpc {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    log.status = response.status().as_u16();
    log.emit();
    response
}

fn full(body: String) -> ResponseBody {
    boxed(Full::new(Bytes::from(body)).map_err(|never| match never {}))
}

fn empty() -> ResponseBody {
    boxed(Empty::new().map_err(|never| match never {}))
}

/// The request's `x-request-id`, set to a new one when absent or not a
/// plausible id (visible ASCII, at most 128 bytes); a W3C `traceparent` is
/// added too when the request has none that parses: the next span of the
/// stream's trace (`stream`, from the tunnel's CONNECT) when there is one,
/// with the stream's `tracestate` (replacing one that came without a parent)
/// and its `baggage` unless the request has its own; else a new trace.
/// Returns the id and the request's `traceparent`, as it now is.
fn request_id(headers: &mut HeaderMap, stream: Option<&TraceContext>) -> (String, TraceParent) {
    let (a, b) = random_pair();
    let own = headers
        .get(trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let parent = own.unwrap_or_else(|| {
        let mut next = stream.map_or_else(TraceContext::new_root, TraceContext::child);
        if let Some(own) = headers.get(trace::BAGGAGE_HEADER) {
            next.baggage = Some(own.clone());
        }
        next.insert_into(headers);
        next.parent
    });
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_graphic())
    {
        return (id.to_owned(), parent);
    }
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", value);
    }
    (id, parent)
}

/// The request's span (debug level: exported when spans are), continuing
/// the request's `traceparent` (`parent`), which is then rewritten to name
/// the span as the upstream's parent.
fn request_span(
    request: &mut Request<Incoming>,
    log: &RequestLog,
    parent: TraceParent,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "request",
        method = log.method.as_str(),
        path = log.path.as_str(),
        request_id = log.request_id.as_str(),
    );
    ztunnel::telemetry::set_trace_parent(&span, &parent);
    let next = ztunnel::telemetry::next_hop(&span, &parent);
    if next != parent
        && let Ok(value) = HeaderValue::from_str(&next.to_string())
    {
        request.headers_mut().insert(trace::HEADER, value);
    }
    span
}

/// Two pseudo-random words for ids (not secrets): a per-process random key
/// (std's hasher seed) over a counter.
fn random_pair() -> (u64, u64) {
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = STATE.get_or_init(std::collections::hash_map::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let word = |salt: u64| {
        let mut hasher = state.build_hasher();
        hasher.write_u64(n);
        hasher.write_u64(salt);
        hasher.finish()
    };
    (word(1), word(2))
}

/// The request headers as the policy engine reads them: lowercase names,
/// repeated fields joined with `,`.
struct HeaderView<'a> {
    headers: &'a HeaderMap,
    joined: HashMap<&'a str, String>,
}

impl<'a> HeaderView<'a> {
    fn new(headers: &'a HeaderMap) -> Self {
        let mut joined = HashMap::new();
        for name in headers.keys() {
            let values = headers.get_all(name);
            if values.iter().nth(1).is_some() {
                let text: Vec<&str> = values.iter().filter_map(|v| v.to_str().ok()).collect();
                joined.insert(name.as_str(), text.join(","));
            }
        }
        Self { headers, joined }
    }
}

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        if let Some(value) = self.joined.get(name) {
            return Some(value);
        }
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `value` is a W3C `traceparent` (version 00).
    fn is_traceparent(value: &str) -> bool {
        TraceParent::parse(value).is_some()
    }

    #[test]
    fn traceparent_shapes() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-01"));
        assert!(!is_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn a_request_gets_an_id_and_a_trace_when_it_has_none() {
        let mut headers = HeaderMap::new();
        let (id, parent) = request_id(&mut headers, None);
        assert_eq!(headers["x-request-id"], id.as_str());
        assert_eq!(id.len(), 36);
        let trace = headers["traceparent"].to_str().unwrap();
        assert!(is_traceparent(trace), "{trace}");
        assert_eq!(
            parent.to_string(),
            trace,
            "the parent returned is the one set"
        );
        let mut again = HeaderMap::new();
        assert_ne!(request_id(&mut again, None).0, id, "ids differ per request");
        // Present and valid: kept, and a trace is still started.
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&mut headers, None).0, "abc-1");
        assert!(is_traceparent(headers["traceparent"].to_str().unwrap()));
        // A valid traceparent passes through unchanged.
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(parent));
        let stream = TraceContext {
            parent: TraceParent::new_root(),
            state: Some(HeaderValue::from_static("mesh=1")),
            baggage: Some(HeaderValue::from_static("tenant=a")),
        };
        request_id(&mut headers, Some(&stream));
        assert_eq!(headers["traceparent"], parent);
        assert!(
            headers.get("tracestate").is_none() && headers.get("baggage").is_none(),
            "a request with its own trace keeps it alone"
        );
        // Without one, the stream's trace goes on, in a new span, with its
        // state and baggage.
        let mut headers = HeaderMap::new();
        request_id(&mut headers, Some(&stream));
        let continued = TraceParent::parse(headers["traceparent"].to_str().unwrap()).unwrap();
        assert_eq!(continued.trace_id(), stream.parent.trace_id());
        assert_ne!(continued, stream.parent);
        assert_eq!(headers["tracestate"], "mesh=1");
        assert_eq!(headers["baggage"], "tenant=a");
        // The request's own baggage is kept; a stray state (no parent) is
        // replaced by the stream's.
        let mut headers = HeaderMap::new();
        headers.insert("baggage", HeaderValue::from_static("user=b"));
        headers.insert("tracestate", HeaderValue::from_static("stray=1"));
        request_id(&mut headers, Some(&stream));
        assert_eq!(headers["baggage"], "user=b");
        assert_eq!(headers["tracestate"], "mesh=1");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get(header::UPGRADE).is_none());
        assert_eq!(headers[header::TE], "trailers");
        assert_eq!(headers["x-kept"], "1");
    }

    #[test]
    fn repeated_headers_are_joined_for_policy() {
        let mut headers = HeaderMap::new();
        headers.append("x-group", HeaderValue::from_static("a"));
        headers.append("x-group", HeaderValue::from_static("b"));
        headers.insert("x-one", HeaderValue::from_static("c"));
        let view = HeaderView::new(&headers);
        assert_eq!(view.get("x-group"), Some("a,b"));
        assert_eq!(view.get("x-one"), Some("c"));
        assert_eq!(view.get("x-none"), None);
    }
}
