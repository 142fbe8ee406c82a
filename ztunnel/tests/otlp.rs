//! Span export: with an OTLP endpoint, the process's spans reach a collector
//! (an in-process OTLP/gRPC server here) in the trace they were given, and
//! the id a span passes to the next hop is its own.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use ztunnel::{
    settings::LogFormat,
    telemetry::{self, Otlp},
    trace::TraceParent,
};

/// The spans received: (service, name, trace id, span id, parent id).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>, Vec<u8>, Vec<u8>)>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut received = self.0.lock().unwrap();
        for resource in &request.get_ref().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    _ => String::new(),
                })
                .unwrap_or_default();
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                received.push((
                    service.clone(),
                    span.name.clone(),
                    span.trace_id.clone(),
                    span.span_id.clone(),
                    span.parent_span_id.clone(),
                ));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the collector on loopback from a thread of its own.
fn start_collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let service = TraceServiceServer::new(Collector(received.clone()));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let service = service.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let mut service = service.clone();
                            async move { tower::Service::call(&mut service, request).await }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
    });
    (addr, received)
}

#[test]
fn spans_reach_the_collector_in_their_trace() {
    let (addr, received) = start_collector();
    let guard = telemetry::init(
        LogFormat::Plain,
        Some(&Otlp {
            endpoint: format!("http://{addr}"),
            service: "ztunnel-test".into(),
        }),
    );
    let parent =
        TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let next = {
        let span = tracing::debug_span!(target: "ztunnel::proxy", "connection", conn_id = 7);
        telemetry::set_trace_parent(&span, &parent);
        let child = span.in_scope(|| tracing::debug_span!(target: "ztunnel::proxy", "tunnel"));
        telemetry::next_hop(&child, &parent)
    };
    // Not ambit's: never exported.
    drop(tracing::debug_span!(target: "h2::codec", "frame"));
    // Dropping the guard exports what waits.
    drop(guard);
    let received = received.lock().unwrap().clone();
    let find = |name: &str| {
        received
            .iter()
            .find(|s| s.1 == name)
            .unwrap_or_else(|| panic!("no {name} span in {received:?}"))
            .clone()
    };
    let (service, _, trace, connection_id, connection_parent) = find("connection");
    assert_eq!(service, "ztunnel-test");
    assert_eq!(trace, 0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes());
    assert_eq!(
        connection_parent,
        0x00f067aa0ba902b7u64.to_be_bytes(),
        "the remote parent"
    );
    let (_, _, tunnel_trace, tunnel_id, tunnel_parent) = find("tunnel");
    assert_eq!(tunnel_trace, trace);
    assert_eq!(tunnel_parent, connection_id);
    assert_eq!(next.trace_id(), parent.trace_id());
    assert_eq!(
        next.ids().1.to_be_bytes().to_vec(),
        tunnel_id,
        "the next hop's parent is the tunnel span"
    );
    assert!(received.iter().all(|s| s.1 != "frame"), "{received:?}");
}
