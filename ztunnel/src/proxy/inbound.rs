//! The inbound plaintext listener (15006, the pod's addresses): connections from
//! outside the pod that `sk_lookup` steered here. The accepted socket's local
//! address is the original destination, so no table is needed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    ConnectionError,
    access::{Connection, Direction},
    pods::PodContext,
    socket::{SOURCE_PORT_ATTEMPTS, SocketFactory},
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
    let flows = &pod.inputs.flows;
    // A connect from a client's address must reach the application, not be
    // steered back to ztunnel: its flow is registered until the handshake
    // is done.
    connect_with(
        pod.sockets.as_ref(),
        dst,
        src,
        pod.inputs.connect_timeout,
        |bound| flows.register(bound, dst).map_err(ConnectionError::Capture),
    )
    .await
}

/// [`connect`] with the pod's sockets and flow registration as arguments:
/// `register` is called, for a connect from a client's address, with the
/// address and port bound, and what it returns is kept until that connect
/// attempt ends.
async fn connect_with<G>(
    sockets: &dyn SocketFactory,
    dst: SocketAddr,
    src: Option<IpAddr>,
    timeout: Duration,
    mut register: impl FnMut(SocketAddr) -> Result<G, ConnectionError>,
) -> Result<TcpStream, ConnectionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let socket = sockets
            .connector(dst, src)
            .map_err(|source| ConnectionError::Connect { dst, source })?;
        let _flow = match src {
            Some(_) => {
                let bound = socket
                    .local_addr()
                    .map_err(|source| ConnectionError::Connect { dst, source })?;
                Some(register(bound)?)
            }
            None => None,
        };
        match tokio::time::timeout_at(deadline, socket.connect(dst)).await {
            Ok(Ok(stream)) => return Ok(stream),
            // From a client's address, the source port taken may still carry
            // a connection to this same destination (or its `TIME_WAIT`):
            // the next port is another four-tuple.
            Ok(Err(source))
                if src.is_some()
                    && source.kind() == std::io::ErrorKind::AddrNotAvailable
                    && attempts < SOURCE_PORT_ATTEMPTS => {}
            Ok(Err(source)) => return Err(ConnectionError::Connect { dst, source }),
            Err(_) => {
                return Err(ConnectionError::ConnectTimeout {
                    dst,
                    after: timeout,
                });
            }
        }
    }
}

pub use crate::accept::canonical;

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        net::{Ipv4Addr, TcpListener as StdListener},
    };

    use super::*;
    use crate::{capture::Netns, proxy::PodSockets};

    /// Sockets in the test's own network namespace (entering it, marks and
    /// `IP_TRANSPARENT` need root), and a listener on loopback to connect to.
    fn loopback_sockets() -> (PodSockets, StdListener) {
        let netns = Netns::open(std::path::Path::new("/proc/self/ns/net"))
            .expect("entering a network namespace needs root");
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        (PodSockets::new(Arc::new(netns), 0, 0), listener)
    }

    /// Holds `count` connections from 127.0.0.1 to `dst`, from the ports the
    /// connector takes from `first` on.
    async fn hold(
        sockets: &PodSockets,
        dst: SocketAddr,
        first: u16,
        count: usize,
    ) -> Vec<TcpStream> {
        sockets.take_next(first);
        let mut held = Vec::new();
        for _ in 0..count {
            let socket = sockets
                .connector(dst, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
                .unwrap();
            held.push(socket.connect(dst).await.unwrap());
        }
        held
    }

    /// A flow registration that notes when it ends.
    struct Registered<'a>(&'a RefCell<Vec<(SocketAddr, bool)>>, usize);

    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            self.0.borrow_mut()[self.1].1 = false;
        }
    }

    #[tokio::test]
    async fn a_taken_four_tuple_is_connected_again_from_the_next_port() {
        let (sockets, listener) = loopback_sockets();
        let dst = listener.local_addr().unwrap();
        let first = fastrand::u16(33_000..60_000);
        let held = hold(&sockets, dst, first, 1).await;
        let taken = held[0].local_addr().unwrap();
        // The cursor comes back to the port of that connection: its four
        // addresses and ports are taken, the connect fails, and the next
        // attempt (a flow registered anew) takes the next port.
        sockets.take_next(taken.port());
        let flows = RefCell::new(Vec::new());
        let stream = connect_with(
            &sockets,
            dst,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Duration::from_secs(5),
            |bound| {
                let mut flows_now = flows.borrow_mut();
                assert!(
                    flows_now.iter().all(|(_, live)| !live),
                    "a failed attempt's flow ends before the next: {flows_now:?}"
                );
                flows_now.push((bound, true));
                Ok(Registered(&flows, flows_now.len() - 1))
            },
        )
        .await
        .expect("the second port connects");
        let flows = flows.into_inner();
        assert_eq!(flows.len(), 2, "{flows:?}");
        assert_eq!(flows[0].0, taken);
        assert_eq!(flows[1].0, stream.local_addr().unwrap());
        assert!(flows[1].0.port() > taken.port(), "{flows:?}");
        assert!(
            flows.iter().all(|(_, live)| !live),
            "the flow ends once connected: {flows:?}"
        );
    }

    #[tokio::test]
    async fn taken_four_tuples_are_retried_a_bounded_number_of_times() {
        let (sockets, listener) = loopback_sockets();
        let dst = listener.local_addr().unwrap();
        let first = fastrand::u16(33_000..60_000);
        let _held = hold(&sockets, dst, first, SOURCE_PORT_ATTEMPTS).await;
        sockets.take_next(first);
        let mut attempts = 0;
        let error = connect_with(
            &sockets,
            dst,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Duration::from_secs(5),
            |_| {
                attempts += 1;
                Ok(())
            },
        )
        .await
        .expect_err("every port tried is taken");
        assert_eq!(attempts, SOURCE_PORT_ATTEMPTS);
        match error {
            ConnectionError::Connect { source, .. } => {
                assert_eq!(
                    source.kind(),
                    std::io::ErrorKind::AddrNotAvailable,
                    "{source}"
                );
            }
            other => panic!("expected the connect's error, got {other}"),
        }
        // Without a client's address, no retry and no registration.
        let mut registered = 0;
        connect_with(&sockets, dst, None, Duration::from_secs(5), |_| {
            registered += 1;
            Ok(())
        })
        .await
        .expect("a connect from ztunnel's own address");
        assert_eq!(registered, 0);
    }

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
