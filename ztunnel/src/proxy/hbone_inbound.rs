//! The inbound HBONE listener (15008, the pod's addresses): mutual TLS with the
//! pod's identity, then CONNECT streams to the pod's own addresses. Each stream
//! connects to the application from the client pod's address, so it sees who
//! really called.

use std::{net::SocketAddr, sync::Arc};

use hyper::StatusCode;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    ConnectionError,
    access::{Connection, Direction},
    inbound::{canonical, connect},
    pods::PodContext,
};
use crate::{
    hbone::{self, server::StreamSource},
    metrics::TcpLabels,
};

/// Serves one accepted HBONE connection.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, pod: Arc<PodContext>) {
    let mesh = &pod.inputs.mesh;
    let config = match mesh.certs.fetch(&pod.identity).await {
        Ok(cert) => hbone::server_config(&cert, &mesh.bundle),
        Err(error) => {
            tracing::warn!(pod = %pod.name, peer = %peer, error = %super::error_chain(&error), "HBONE refused: no certificate");
            return;
        }
    };
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(pod = %pod.name, error = %super::error_chain(&error), "HBONE refused: bad TLS configuration");
            return;
        }
    };
    let on_stream = {
        let pod = pod.clone();
        move |source: StreamSource, target: SocketAddr| {
            let pod = pod.clone();
            async move { accept_stream(pod, source, target).await }
        }
    };
    // Refusals (untrusted peers, wrong identities, limits) are counted and
    // logged by the guard, at most once per peer and reason per minute.
    if let Err(error) = hbone::server::serve(tcp, config, &mesh.hbone_guard, on_stream).await {
        tracing::debug!(pod = %pod.name, peer = %canonical(peer), error = %super::error_chain(&error), "HBONE connection ended");
    }
}

type RunStream = Box<
    dyn FnOnce(hbone::client::Tunnel) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

/// Decides one CONNECT stream: the target must be this pod; then connects to
/// the application from the client's address.
async fn accept_stream(
    pod: Arc<PodContext>,
    source: StreamSource,
    target: SocketAddr,
) -> Result<RunStream, StatusCode> {
    // The stream's span continues the CONNECT's trace (exported with OTLP).
    let connection = tracing::debug_span!(
        "connection",
        conn_id = tracing::field::Empty,
        direction = "inbound",
        src = %canonical(source.addr),
        dst = %target,
    );
    if let Some(trace) = &source.trace {
        crate::telemetry::set_trace_parent(&connection, &trace.parent);
    }
    let run = decide_stream(pod, source, target, &connection)
        .instrument(connection.clone())
        .await?;
    Ok(Box::new(move |tunnel| {
        Box::pin(run(tunnel).instrument(connection))
    }))
}

/// [`accept_stream`] within the stream's span.
async fn decide_stream(
    pod: Arc<PodContext>,
    source: StreamSource,
    target: SocketAddr,
    connection: &tracing::Span,
) -> Result<RunStream, StatusCode> {
    let client = canonical(source.addr);
    let mut record = Connection::new(
        Direction::Inbound,
        pod.name.clone(),
        client,
        &pod.inputs.mesh,
    );
    connection.record("conn_id", record.id);
    record.mode = "hbone";
    record.src_identity = Some(source.identity.to_string());
    record.trace_id = source.trace.as_ref().map(|t| t.parent.trace_id());
    record.dst = Some(target);
    record.dst_identity = Some(pod.identity.to_string());
    if !pod.ips.contains(&target.ip()) || pod.inputs.own_ports.contains(&target.port()) {
        record.finish(&Err(ConnectionError::Loop(target)));
        return Err(StatusCode::BAD_REQUEST);
    }
    let identity = source.identity.to_string();
    // The destination's ztunnel reports it: the client (its workload by
    // address, its identity from the tunnel) to this pod.
    let mesh = &pod.inputs.mesh;
    let snapshot = mesh.registry.snapshot();
    let mut labels = TcpLabels::new("destination");
    labels.peers.source(
        snapshot.workload_by_ip(client.ip()).map(|w| &**w),
        Some(&identity),
    );
    labels.peers.destination(
        snapshot.workload(&pod.key).map(|w| &**w),
        Some(&pod.identity.to_string()),
    );
    labels.connection_security_policy = "mutual_tls";
    record.labels = Some(labels);
    drop(snapshot);
    let decided = tracing::debug_span!("authorize", conn_id = record.id, dst = %target)
        .in_scope(|| mesh.authorize(&pod.key, client, target, Some(&identity)));
    match decided {
        Ok(decision) => record.decision = Some(decision),
        Err(reason) => {
            // Refused before the application sees a connection.
            record.finish(&Err(ConnectionError::Denied(reason)));
            return Err(StatusCode::FORBIDDEN);
        }
    }
    let connecting = connect(&pod, target, Some(client.ip()))
        .instrument(tracing::debug_span!("connect", conn_id = record.id, dst = %target));
    match connecting.await {
        Ok(mut app) => Ok(Box::new(move |mut tunnel| {
            Box::pin(async move {
                record.count();
                let result = crate::relay::relay_metered(
                    &mut tunnel,
                    &mut app,
                    pod.inputs.idle_timeout,
                    &*record.traffic,
                )
                .await
                .map_err(ConnectionError::from);
                record.finish(&result);
            })
        })),
        Err(error) => {
            record.finish(&Err(error));
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}
