//! The inbound plaintext listener (15006, the pod's addresses): connections from
//! outside the pod that `sk_lookup` steered here. The accepted socket's local
//! address is the original destination, so no table is needed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    ConnectionError,
    access::{Connection, Direction},
    pods::PodContext,
};
use crate::metrics::TcpLabels;

/// Proxies one accepted connection and writes its access log line.
pub async fn handle(mut client: TcpStream, peer: SocketAddr, pod: Arc<PodContext>) {
    let peer = canonical(peer);
    let mut record = Connection::new(Direction::Inbound, pod.name.clone(), peer, &pod.inputs.mesh);
    let connection = tracing::debug_span!(
        "connection",
        conn_id = record.id,
        direction = "inbound",
        src = %peer,
        dst = tracing::field::Empty,
    );
    let result = async {
        // A proxy must not add Nagle's delay to small writes.
        client.set_nodelay(true).map_err(ConnectionError::Relay)?;
        let dst = canonical(client.local_addr().map_err(ConnectionError::Relay)?);
        record.dst = Some(dst);
        connection.record("dst", tracing::field::display(dst));
        if pod.inputs.own_ports.contains(&dst.port()) {
            return Err(ConnectionError::Loop(dst));
        }
        // Plaintext: the client has no identity to report.
        let mesh = &pod.inputs.mesh;
        let snapshot = mesh.registry.snapshot();
        let mut labels = TcpLabels::new("destination");
        labels
            .peers
            .source(snapshot.workload_by_ip(peer.ip()).map(|w| &**w), None);
        labels.peers.destination(
            snapshot.workload(&pod.key).map(|w| &**w),
            Some(&pod.identity.to_string()),
        );
        record.labels = Some(labels);
        if !plaintext_allowed(mesh, &pod.key, peer, dst) {
            return Err(ConnectionError::Strict(dst));
        }
        // Denied before any byte reaches the application.
        record.decision = Some(
            tracing::debug_span!("authorize", conn_id = record.id, dst = %dst)
                .in_scope(|| mesh.authorize(&pod.key, peer, dst, None))
                .map_err(ConnectionError::Denied)?,
        );
        // Connect from the client's own address, so the application sees who
        // really called.
        let mut app = connect(&pod, dst, Some(peer.ip()))
            .instrument(tracing::debug_span!("connect", conn_id = record.id, dst = %dst))
            .await?;
        record.count();
        crate::relay::relay_metered(
            &mut client,
            &mut app,
            pod.inputs.idle_timeout,
            &*record.traffic,
        )
        .await
        .map_err(ConnectionError::from)
    }
    .instrument(connection.clone())
    .await;
    connection.in_scope(|| record.finish(&result));
}

/// Whether PeerAuthentication lets plaintext from `peer` reach `dst`: not under
/// STRICT, except the kubelet's health probes, as in Istio. They come from the
/// probe address, which the capture gives only to the kubelet's connects to
/// the node's enrolled pods: other processes of the node, NodePort traffic
/// SNATed to the node's address and host-network pods get no exemption. A pod
/// the registry no longer knows gets nothing: its policies are unknown.
pub(super) fn plaintext_allowed(
    mesh: &super::Mesh,
    pod: &crate::registry::ObjectKey,
    peer: SocketAddr,
    dst: SocketAddr,
) -> bool {
    if is_probe_source(peer.ip()) {
        return true;
    }
    let snapshot = mesh.registry.snapshot();
    let Some(workload) = snapshot.workload(pod) else {
        return false;
    };
    let policies = snapshot.policies_for(workload);
    crate::policy::peer_authn::allows_plaintext(crate::policy::peer_authn::mtls_mode(
        &policies,
        dst.port(),
    ))
}

/// Whether `ip` is the kubelet's probe source (see `ambit_ebpf_common`).
pub(super) fn is_probe_source(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets() == ambit_ebpf_common::PROBE_ADDR4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets() == ambit_ebpf_common::PROBE_ADDR4,
            None => v6.octets() == ambit_ebpf_common::PROBE_ADDR6,
        },
    }
}

/// Connects from inside the pod to `dst`, optionally from a foreign source
/// address, within the connect timeout.
pub async fn connect(
    pod: &PodContext,
    dst: SocketAddr,
    src: Option<IpAddr>,
) -> Result<TcpStream, ConnectionError> {
    let deadline = tokio::time::Instant::now() + pod.inputs.connect_timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match connect_once(pod, dst, src, deadline).await {
            // From a client's address, the source port taken may still carry
            // a connection to this same destination (or its `TIME_WAIT`):
            // the next port is another four-tuple.
            Err(ConnectionError::Connect { source, .. })
                if src.is_some()
                    && source.kind() == std::io::ErrorKind::AddrNotAvailable
                    && attempts < super::socket::SOURCE_PORT_ATTEMPTS => {}
            result => return result,
        }
    }
}

async fn connect_once(
    pod: &PodContext,
    dst: SocketAddr,
    src: Option<IpAddr>,
    deadline: tokio::time::Instant,
) -> Result<TcpStream, ConnectionError> {
    let socket = pod
        .sockets
        .connector(dst, src)
        .map_err(|source| ConnectionError::Connect { dst, source })?;
    // A connect from a client's address must reach the application, not be
    // steered back to ztunnel: register the flow until the handshake is done.
    let _flow = match src {
        Some(_) => {
            let bound = socket
                .local_addr()
                .map_err(|source| ConnectionError::Connect { dst, source })?;
            Some(
                pod.inputs
                    .flows
                    .register(bound, dst)
                    .map_err(ConnectionError::Capture)?,
            )
        }
        None => None,
    };
    let after = pod.inputs.connect_timeout;
    match tokio::time::timeout_at(deadline, socket.connect(dst)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnectionError::Connect { dst, source }),
        Err(_) => Err(ConnectionError::ConnectTimeout { dst, after }),
    }
}

pub use crate::accept::canonical;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_peers_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.18.16.10]:4000".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "198.18.16.10:4000".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[fd00:1:0::a]:4000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
