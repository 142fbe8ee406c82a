//! The admin endpoint (`settings::ADMIN_PORT`, localhost): what this ztunnel
//! knows and holds, as JSON, for operators.
//!
//! - `GET /healthz/ready`: 200 once the node's pods are enrolled.
//! - `GET /config_dump`: the registry (workloads, services, policies, the
//!   waypoints) and, in ztunnel, the capture: the enrolled pods and how full
//!   the eBPF maps are.
//! - `GET /certs`: per identity, the certificate state (serial, validity, last
//!   error). Private keys are never shown.
//! - `GET /debug/connections`: the connections being proxied now, oldest
//!   first: direction, mode, workload, both ends and identities, bytes so far
//!   and age.
//! - `GET /logging`: the log filter in force; `POST /logging?level=<directives>`
//!   replaces it at once (`RUST_LOG`'s syntax: `debug`, `access=warn,info`).
//!   Only a POST changes it: a GET never does.
//! - `GET /ui`: the traffic view (see [`ui`]), with `GET /api/graph`,
//!   `/api/flows?since=` and `/api/workloads/<namespace>/<name>`.

pub mod ui;

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use tokio::net::TcpListener;

use crate::{accept::reply, identity::CertManager, registry::Registry};

/// Errors of the admin endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address it could not use.
        addr: SocketAddr,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
}

/// What the endpoint shows.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The certificates.
    pub certs: CertManager,
    /// Set once the node's pods are enrolled.
    pub ready: crate::readiness::Readiness,
    /// Changes the log filter (`None`: this process did not install the
    /// subscriber, so `/logging` cannot change it).
    pub log_level: Option<crate::telemetry::LogLevel>,
    /// The open connections, as JSON (`/debug/connections`).
    pub connections: Option<JsonView>,
    /// The capture's state, as JSON: `/config_dump`'s `capture` (the enrolled
    /// pods and the eBPF maps' occupancy).
    pub capture: Option<JsonView>,
    /// The recent flows (`/ui` and `/api/*`; `None`: no traffic view).
    pub flows: Option<crate::flows::FlowLog>,
    /// The mesh's trust domain, to name identities.
    pub trust_domain: String,
}

/// Shows state this module cannot name (the proxy's and the capture's: it is
/// built without them), as JSON.
#[derive(Clone)]
pub struct JsonView(pub Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for JsonView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonView")
    }
}

/// Binds `addr` with SO_REUSEPORT, so a ztunnel and its successor can both
/// serve during a restart.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind_error = |source| Error::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    if addr.is_ipv6() {
        // `[::]` takes IPv4 too.
        socket.set_only_v6(false).map_err(bind_error)?;
    }
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(64).map_err(bind_error)?;
    TcpListener::from_std(socket.into()).map_err(bind_error)
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) {
    crate::accept::serve_http1(listener, "admin", move |request| respond(request, &state)).await;
}

fn respond(request: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if request.uri().path() == "/logging" {
        return logging(request, state.log_level.as_ref());
    }
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    if let Some(response) = traffic_view(request, state) {
        return response;
    }
    match request.uri().path() {
        "/healthz/ready" if state.ready.get() => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        "/healthz/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        "/config_dump" => match serde_json::to_value(state.registry.snapshot().dump()) {
            Ok(mut dump) => {
                if let (Some(capture), Some(fields)) = (&state.capture, dump.as_object_mut()) {
                    fields.insert("capture".into(), (capture.0)());
                }
                json(&dump)
            }
            Err(error) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot serialize: {error}\n"),
            ),
        },
        "/certs" => json(&state.certs.snapshot()),
        "/debug/connections" => match &state.connections {
            Some(connections) => json(&(connections.0)()),
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no connection table in this process\n".into(),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /healthz/ready, /config_dump, /certs, /debug/connections, /logging, /ui\n"
                .into(),
        ),
    }
}

/// `/ui` and `/api/*` (GET), when this process keeps flows; `None` for
/// other paths.
fn traffic_view(request: &Request<Incoming>, state: &AdminState) -> Option<Response<Full<Bytes>>> {
    let path = request.uri().path();
    if path != "/ui" && !path.starts_with("/api/") {
        return None;
    }
    let Some(flows) = &state.flows else {
        return Some(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no traffic view in this process\n".into(),
        ));
    };
    let query = request.uri().query();
    let bad = |reason: String| reply(StatusCode::BAD_REQUEST, "text/plain", reason + "\n");
    Some(match path {
        "/ui" => reply(StatusCode::OK, "text/html; charset=utf-8", ui::PAGE.into()),
        "/api/graph" => ui::graph(flows, query).map_or_else(bad, |g| json(&g)),
        "/api/flows" => ui::flows(flows, query).map_or_else(bad, |f| json(&f)),
        _ => match path
            .strip_prefix("/api/workloads/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((namespace, name)) if !name.contains('/') => {
                let certs = state.certs.snapshot();
                let snapshot = state.registry.snapshot();
                match ui::workload(
                    &snapshot,
                    &certs,
                    flows,
                    &state.trust_domain,
                    namespace,
                    name,
                ) {
                    Some(view) => json(&view),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no workload {namespace}/{name} in the registry\n"),
                    ),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: /api/graph, /api/flows, /api/workloads/<namespace>/<name>\n".into(),
            ),
        },
    })
}

/// `/logging`: GET shows the filter, POST `?level=` replaces it.
fn logging(
    request: &Request<Incoming>,
    level: Option<&crate::telemetry::LogLevel>,
) -> Response<Full<Bytes>> {
    let Some(level) = level else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the log filter of this process cannot be changed\n".into(),
        );
    };
    let wanted = request.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "level")
            .map(|(_, v)| v.into_owned())
    });
    match (request.method(), wanted) {
        (&Method::GET, None) => reply(
            StatusCode::OK,
            "text/plain",
            format!("level={}\n", level.current()),
        ),
        (&Method::GET, Some(_)) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            format!(
                "a GET does not change the log level: POST /logging?level=...\nlevel={}\n",
                level.current()
            ),
        ),
        (&Method::POST, Some(wanted)) => match level.set(&wanted) {
            Ok(()) => {
                tracing::info!(level = %wanted, "log level changed through the admin endpoint");
                reply(StatusCode::OK, "text/plain", format!("level={wanted}\n"))
            }
            Err(reason) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{reason}\n")),
        },
        (&Method::POST, None) => reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "POST /logging needs ?level=<directives> (for example level=debug)\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or POST /logging\n".into(),
        ),
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => reply(StatusCode::OK, "application/json", text),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot serialize: {error}\n"),
        ),
    }
}
