//! `ambit-httpbin`: the HTTP, gRPC and HTTPS peers that end-to-end tests run in pods.
//!
//! ```text
//! ambit-httpbin serve <listen-addr> <name>
//!     prints "listening <addr>", then serves HTTP/1.1 (keep-alive, chunked bodies)
//!     and HTTP/2 with prior knowledge (h2c) on that one port. Every request is
//!     answered 200 with a JSON object: {"server": <name>, "protocol": "HTTP/1.1"
//!     or "HTTP/2" (or "HTTP/1.0"), "method", "target" (the request target as
//!     received, not normalized: path and query, or the absolute URI of an
//!     HTTP/1 absolute-form request), "authority" (:authority, else Host, else
//!     null), "headers" ({lowercase name: value, or a list of the values when the
//!     header repeats}), "peer" (<ip:port> of the TCP peer), "body_bytes"}.
//!     GET /status/<code> answers <code> (200-599) with that body, /delay/<ms>
//!     waits <ms> first. "Upgrade: ambit-echo" with "Connection: upgrade" gets
//!     "101 Switching Protocols", then every byte on the connection is echoed
//!     until EOF. A content-type starting with "application/grpc" goes to the
//!     gRPC service ambit.test.Echo (proto/echo.proto): Say answers with the
//!     message, <name> and the request's ASCII metadata
//! ambit-httpbin grpc-call <addr> <message> [<key>=<value> ...]
//!     calls ambit.test.Echo/Say on http://<addr> (h2c) with that metadata (a key
//!     ending in "-bin" takes <value>'s bytes as a binary value) and prints one
//!     line: "grpc code=0 message=<reply message> server=<reply server>", or
//!     "grpc code=<code> message=<status message> server=-" when the call ended
//!     with a gRPC status. After a reply, stderr gets "metadata <key>=<value>"
//!     for each entry the server saw, sorted by key. Exit status 1 only when no
//!     gRPC status came back (connect, transport or time-out failure)
//! ambit-httpbin jwks <listen-addr> <cert.pem> <key.pem> <body-file>
//!     prints "listening <addr>", then serves HTTPS (TLS 1.2 and 1.3, HTTP/1.1):
//!     every GET is answered 200, content-type application/json, with the
//!     current content of <body-file> (read again for each request), and prints
//!     "fetch <target>" (path and query) for it; other methods get 405
//! ambit-httpbin raw <addr> <hex | @file>
//!     connects, sends exactly those bytes (hex digits, whitespace ignored; or
//!     the content of <file>), reads until EOF or 2 s of silence, prints what
//!     came back (then a newline if it did not end with one) and a last line
//!     "closed=<true|false>": true when the server closed the connection (FIN or
//!     reset)
//! ambit-httpbin load <addr> <h1|h2> <connections> <rate> <count> <log-file> <path> [<name>:<value> ...]
//!     an open-loop load at a fixed rate, paced per request (ambit_tests::load):
//!     <count> GETs of <path> with those headers, <rate> per second, HTTP/1.1
//!     over <connections> keep-alive connections in turn or HTTP/2 on one;
//!     each latency counts from the request's due time. Writes <log-file> in
//!     h2load's --log-file format (due time in µs since the epoch, status or
//!     -1, latency in µs) and prints "load count=<n> ok=<2xx> p50_us=..
//!     p99_us=.. max_us=.."
//! ambit-httpbin otlp-collector <addr>
//!     An OTLP/gRPC trace collector: prints "span {json}" per span received
//!     (service, name, trace_id, span_id, parent_span_id, attributes).
//! ```
//! Exit status 0 on success, 1 with a message on stderr otherwise. Every client
//! wait is bounded: 10 s, or AMBIT_TESTBIN_TIMEOUT_MS (the servers run until
//! killed).
#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt::Write as _,
    future::Future,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue, UPGRADE},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::{
    codegen::Service as _,
    metadata::{AsciiMetadataValue, BinaryMetadataValue, KeyAndValueRef, MetadataKey},
};

mod proto {
    //! Code generated at build time from `proto/echo.proto`; see `tests/build.rs`.
    #![allow(
        missing_docs,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        rustdoc::all
    )]

    include!(concat!(env!("OUT_DIR"), "/ambit.test.rs"));
}

use proto::{
    SayReply, SayRequest,
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
};

const USAGE: &str = "usage: ambit-httpbin serve <addr> <name> | \
                     grpc-call <addr> <message> [<key>=<value> ...] | \
                     jwks <addr> <cert.pem> <key.pem> <body-file> | raw <addr> <hex-or-@file> | \
                     load <addr> <h1|h2> <connections> <rate> <count> <log-file> <path> [<name>:<value> ...] | \
                     otlp-collector <addr>";

/// The protocol token a client names in `Upgrade` to get a byte echo.
const ECHO_UPGRADE: &str = "ambit-echo";

/// How long `raw` waits for more bytes before it takes the exchange as over.
const RAW_SILENCE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| runtime.block_on(run(&args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ambit-httpbin: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[&str]) -> Result<(), String> {
    match args {
        ["serve", addr, name] => serve(addr, name).await,
        ["grpc-call", addr, message, metadata @ ..] => grpc_call(addr, message, metadata).await,
        ["jwks", addr, cert, key, body] => jwks(addr, Path::new(cert), Path::new(key), body).await,
        ["raw", addr, bytes] => raw(addr, bytes).await,
        [
            "load",
            addr,
            version,
            connections,
            rate,
            count,
            log,
            path,
            headers @ ..,
        ] => load(addr, version, connections, rate, count, log, path, headers).await,
        ["otlp-collector", addr] => otlp_collector(addr).await,
        _ => Err(USAGE.to_owned()),
    }
}

fn io_timeout() -> Duration {
    let ms = std::env::var("AMBIT_TESTBIN_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Duration::from_millis(ms)
}

fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

/// Binds `addr` (dual-stack for `[::]`, like ambit-testbin) and prints
/// "listening <addr>" once it is bound.
fn listen(addr: &str) -> Result<TcpListener, String> {
    let addr = parse_addr(addr)?;
    let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    let listener = TcpListener::from_std(socket.into()).map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    println!("listening {local}");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(listener)
}

/// Accepts forever, running `handle` in a task per connection; errors go to
/// stderr. A failing accept (out of file descriptors, say) backs off from 5 ms
/// up to 1 s instead of spinning.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mode: &'static str,
    handle: F,
) -> Result<(), String>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                let connection = handle(stream, peer);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        eprintln!("ambit-httpbin: {mode}: {peer}: {error}");
                    }
                });
            }
            Err(error) => {
                eprintln!("ambit-httpbin: {mode}: accept: {error}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

// === otlp-collector ===

/// An OTLP/gRPC trace collector: prints "listening <addr>", then one line
/// per received span: "span " and a JSON object with `service`, `name`,
/// `trace_id`, `span_id`, `parent_span_id` (hex, empty for a root) and
/// `attributes` (as strings).
async fn otlp_collector(addr: &str) -> Result<(), String> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = listen(addr)?;
    let service = TraceServiceServer::new(Collector);
    accept_loop(listener, "otlp-collector", move |stream, _peer| {
        let service = service.clone();
        async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let mut service = service.clone();
                async move { service.call(request).await }
            });
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
                .map_err(|e| format!("OTLP connection failed: {e}"))
        }
    })
    .await
}

/// Prints the spans of each export request.
struct Collector;

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Any::StringValue(s)) => s.clone(),
            Some(Any::IntValue(i)) => i.to_string(),
            Some(Any::BoolValue(b)) => b.to_string(),
            Some(Any::DoubleValue(d)) => d.to_string(),
            _ => String::new(),
        };
        let hex = |bytes: &[u8]| {
            bytes.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
        };
        let mut out = std::io::stdout().lock();
        for resource in &request.get_ref().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                let attributes: serde_json::Map<String, Value> = span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), Value::from(text(&kv.value))))
                    .collect();
                let line = json!({
                    "service": service,
                    "name": span.name,
                    "trace_id": hex(&span.trace_id),
                    "span_id": hex(&span.span_id),
                    "parent_span_id": hex(&span.parent_span_id),
                    "attributes": attributes,
                });
                let _ = writeln!(out, "span {line}");
            }
        }
        let _ = out.flush();
        Ok(tonic::Response::new(Default::default()))
    }
}

// === serve ===

/// A JSON answer, or what the gRPC service returned.
type ServeBody = Either<Full<Bytes>, tonic::body::Body>;

/// What every connection of `serve` shares.
struct Backend {
    name: String,
    grpc: EchoServer<EchoService>,
}

async fn serve(addr: &str, name: &str) -> Result<(), String> {
    let listener = listen(addr)?;
    let backend = Arc::new(Backend {
        name: name.to_owned(),
        grpc: EchoServer::new(EchoService {
            name: name.to_owned(),
        }),
    });
    accept_loop(listener, "serve", move |stream, peer| {
        serve_connection(stream, peer, backend.clone())
    })
    .await
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    backend: Arc<Backend>,
) -> Result<(), String> {
    // As any server tuned for request/response: a response written in two
    // pieces (HTTP/2 HEADERS, then DATA) must not wait for the ACK of the
    // first (Nagle), or every HTTP/2 request takes a delayed-ACK timeout.
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let service = service_fn(move |request| answer(request, peer, backend.clone()));
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
        .map_err(|e| format!("connection failed: {e}"))
}

async fn answer(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    backend: Arc<Backend>,
) -> Result<Response<ServeBody>, Infallible> {
    let is_grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        let mut grpc = backend.grpc.clone();
        let response = grpc.call(request).await?;
        return Ok(response.map(Either::Right));
    }
    if wants_echo(&request) {
        return Ok(start_echo(&mut request));
    }
    let response = describe(request, peer, &backend.name).await;
    Ok(response.map(Either::Left))
}

/// An HTTP/1.1 request for the `ambit-echo` upgrade.
fn wants_echo(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    let upgrade = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(ECHO_UPGRADE.as_bytes()));
    let connection_upgrade = headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    request.version() == Version::HTTP_11 && upgrade && connection_upgrade
}

/// Answers 101 and echoes the upgraded connection in a task of its own (hyper
/// hands the connection over only after the 101 is written).
fn start_echo(request: &mut Request<Incoming>) -> Response<ServeBody> {
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let result = match upgrade.await {
            Ok(upgraded) => echo_bytes(TokioIo::new(upgraded)).await,
            Err(e) => Err(format!("upgrade failed: {e}")),
        };
        if let Err(error) = result {
            eprintln!("ambit-httpbin: serve: echo: {error}");
        }
    });
    let mut response = Response::new(Either::Left(Full::default()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static(ECHO_UPGRADE));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    response
}

async fn echo_bytes(io: TokioIo<hyper::upgrade::Upgraded>) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(io);
    tokio::io::copy(&mut reader, &mut writer)
        .await
        .map_err(|e| format!("echo failed: {e}"))?;
    writer
        .shutdown()
        .await
        .map_err(|e| format!("cannot close the echo: {e}"))
}

/// The JSON description of `request`, with the status `/status/<code>` asks
/// for, after the wait `/delay/<ms>` asks for.
async fn describe(
    request: Request<Incoming>,
    peer: SocketAddr,
    name: &str,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body_bytes = match count_body(body).await {
        Ok(n) => n,
        Err(error) => return text(StatusCode::BAD_REQUEST, &error),
    };
    let path = parts.uri.path();
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>() {
            Ok(code @ 200..=599) => {
                status = StatusCode::from_u16(code).expect("200..=599 are valid status codes");
            }
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "/status/<code> takes a code in 200..=599",
                );
            }
        }
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        let Ok(ms) = ms.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "/delay/<ms> takes milliseconds");
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let description = json!({
        "server": name,
        "protocol": protocol(parts.version),
        "method": parts.method.as_str(),
        "target": target(&parts),
        "authority": authority(&parts),
        "headers": headers_json(&parts.headers),
        "peer": peer.to_string(),
        "body_bytes": body_bytes,
    });
    let mut body = description.to_string();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Reads the body to its end, counting its bytes without keeping them.
async fn count_body(mut body: Incoming) -> Result<u64, String> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("cannot read the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// The request target as the client sent it. hyper keeps an HTTP/1 target
/// verbatim in the URI (no dot-segment removal, no percent-decoding); for
/// HTTP/2 it adds :scheme and :authority, so the target is :path alone, or the
/// authority of a CONNECT.
fn target(parts: &hyper::http::request::Parts) -> String {
    match parts.uri.path_and_query() {
        Some(path) if parts.version == Version::HTTP_2 => path.as_str().to_owned(),
        _ => parts.uri.to_string(),
    }
}

fn authority(parts: &hyper::http::request::Parts) -> Value {
    if let Some(authority) = parts.uri.authority() {
        return Value::String(authority.as_str().to_owned());
    }
    parts.headers.get(HOST).map_or(Value::Null, header_text)
}

fn header_text(value: &HeaderValue) -> Value {
    Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// `{name: value}`, or `{name: [values]}` for a header sent more than once.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut object = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers.get_all(name).iter().map(header_text).collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(values) => Value::Array(values),
        };
        object.insert(name.as_str().to_owned(), value);
    }
    Value::Object(object)
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// ambit.test.Echo: says back the message, the server's name and the metadata.
struct EchoService {
    name: String,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<SayRequest>,
    ) -> Result<tonic::Response<SayReply>, tonic::Status> {
        let mut metadata: HashMap<String, String> = HashMap::new();
        for entry in request.metadata().iter() {
            let KeyAndValueRef::Ascii(key, value) = entry else {
                continue;
            };
            let value = String::from_utf8_lossy(value.as_encoded_bytes());
            metadata
                .entry(key.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.clone().into_owned());
        }
        Ok(tonic::Response::new(SayReply {
            message: request.into_inner().message,
            server: self.name.clone(),
            metadata,
        }))
    }
}

// === grpc-call ===

async fn grpc_call(addr: &str, message: &str, pairs: &[&str]) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let timeout = io_timeout();
    let mut request = tonic::Request::new(SayRequest {
        message: message.to_owned(),
    });
    for pair in pairs {
        add_metadata(&mut request, pair)?;
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad endpoint for {addr}: {e}"))?
        .connect_timeout(timeout);
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| format!("cannot connect to {addr}: no answer within {timeout:?}"))?
        .map_err(|e| format!("cannot connect to {addr}: {}", chain(&e)))?;
    let mut client = EchoClient::new(channel);
    let result = tokio::time::timeout(timeout, client.say(request))
        .await
        .map_err(|_| format!("no reply from {addr} within {timeout:?}"))?;
    let line = match result {
        Ok(reply) => {
            let reply = reply.into_inner();
            let mut entries: Vec<_> = reply.metadata.iter().collect();
            entries.sort();
            for (key, value) in entries {
                eprintln!("metadata {key}={value}");
            }
            format!(
                "grpc code=0 message={} server={}",
                reply.message, reply.server
            )
        }
        // A status the peer sent has no source; one tonic made from an h2,
        // hyper or I/O error carries it: no gRPC answer came back.
        Err(status) if std::error::Error::source(&status).is_some() => {
            return Err(format!("call to {addr} failed: {}", chain(&status)));
        }
        Err(status) => format!(
            "grpc code={} message={} server=-",
            i32::from(status.code()),
            status.message()
        ),
    };
    println!("{line}");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// Adds `<key>=<value>` to the request's metadata, binary for a `-bin` key.
fn add_metadata(request: &mut tonic::Request<SayRequest>, pair: &str) -> Result<(), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("metadata {pair:?} is not <key>=<value>"))?;
    let bad_key = |e| format!("bad metadata key {key:?}: {e}");
    if key.ends_with("-bin") {
        let key = MetadataKey::from_bytes(key.as_bytes()).map_err(bad_key)?;
        let value = BinaryMetadataValue::from_bytes(value.as_bytes());
        request.metadata_mut().append_bin(key, value);
    } else {
        let key = MetadataKey::from_bytes(key.as_bytes()).map_err(bad_key)?;
        let value = AsciiMetadataValue::try_from(value)
            .map_err(|e| format!("bad metadata value {value:?}: {e}"))?;
        request.metadata_mut().append(key, value);
    }
    Ok(())
}

/// `error` and its sources, joined with ": ".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // tonic and hyper often repeat their cause in their own message.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

// === jwks ===

async fn jwks(addr: &str, cert: &Path, key: &Path, body: &str) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert, key)?));
    let body = Arc::new(PathBuf::from(body));
    let listener = listen(addr)?;
    accept_loop(listener, "jwks", move |stream, _peer| {
        let (acceptor, body) = (acceptor.clone(), body.clone());
        async move {
            let tls = tokio::time::timeout(io_timeout(), acceptor.accept(stream))
                .await
                .map_err(|_| "no TLS handshake within the time-out".to_owned())?
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let service = service_fn(move |request| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(serve_file(&request, &body)) }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
                .map_err(|e| format!("connection failed: {e}"))
        }
    })
    .await
}

/// A rustls server (aws-lc-rs, TLS 1.2 and 1.3, ALPN http/1.1) presenting the
/// chain in `cert` with the key in `key`.
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("bad TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("bad certificate or key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn serve_file(request: &Request<Incoming>, body: &Path) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let content = match std::fs::read(body) {
        Ok(content) => content,
        Err(e) => {
            eprintln!("ambit-httpbin: jwks: cannot read {}: {e}", body.display());
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the body file",
            );
        }
    };
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    // Printed before the answer leaves, so a client that got it sees the line.
    println!("fetch {target}");
    let _ = std::io::stdout().flush();
    let mut response = Response::new(Full::new(Bytes::from(content)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

// === raw ===

async fn raw(addr: &str, data: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let bytes = match data.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?,
        None => decode_hex(data)?,
    };
    let timeout = io_timeout();
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("cannot connect to {addr}: no answer within {timeout:?}"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    // A server may answer and close before it has read everything; what it
    // sent still counts, so a failed write only gets a note.
    match tokio::time::timeout(timeout, stream.write_all(&bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("ambit-httpbin: raw: send failed: {e}"),
        Err(_) => eprintln!("ambit-httpbin: raw: send stalled for {timeout:?}"),
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(RAW_SILENCE, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Ok(Err(e)) => return Err(format!("cannot read from {addr}: {e}")),
        }
    };
    if !received.is_empty() && !received.ends_with(b"\n") {
        received.push(b'\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&received)
        .and_then(|()| writeln!(stdout, "closed={closed}"))
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// Hex digits (either case; ASCII whitespace between them is ignored) to bytes.
fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {hex:?}"));
    }
    let nibble = |digit: u8| {
        char::from(digit)
            .to_digit(16)
            .ok_or_else(|| format!("{:?} is not a hex digit", char::from(digit)))
    };
    digits
        .chunks_exact(2)
        .map(|pair| {
            Ok(u8::try_from(nibble(pair[0])? << 4 | nibble(pair[1])?)
                .expect("two hex digits fit in a byte"))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn load(
    addr: &str,
    version: &str,
    connections: &str,
    rate: &str,
    count: &str,
    log: &str,
    path: &str,
    headers: &[&str],
) -> Result<(), String> {
    use ambit_tests::load::{Plan, Version as LoadVersion, log_lines, run};
    let number = |what: &str, v: &str| -> Result<f64, String> {
        v.parse::<f64>().map_err(|e| format!("{what} {v:?}: {e}"))
    };
    let plan = Plan {
        addr: parse_addr(addr)?,
        path: path.to_owned(),
        headers: headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| format!("header {h:?} is not <name>:<value>"))
            })
            .collect::<Result<_, _>>()?,
        version: match version {
            "h1" => LoadVersion::Http1,
            "h2" => LoadVersion::Http2,
            other => return Err(format!("version {other:?} is not h1 or h2")),
        },
        connections: number("connections", connections)? as usize,
        rate: number("rate", rate)?,
        count: number("count", count)? as u32,
        timeout: io_timeout(),
    };
    let outcomes = run(&plan).await?;
    std::fs::write(log, log_lines(&outcomes)).map_err(|e| format!("{log}: {e}"))?;
    let mut ok: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|o| o.latency)
        .collect();
    ok.sort();
    let at = |q: f64| {
        ok.get(((ok.len() as f64 * q) as usize).min(ok.len().saturating_sub(1)))
            .map_or(0, Duration::as_micros)
    };
    println!(
        "load count={} ok={} p50_us={} p99_us={} max_us={}",
        outcomes.len(),
        ok.len(),
        at(0.5),
        at(0.99),
        ok.last().map_or(0, Duration::as_micros)
    );
    Ok(())
}
