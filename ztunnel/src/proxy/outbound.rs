//! The outbound listener (15001, loopback, inside the pod): connections the
//! capture redirected away from their destination.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use super::{
    ConnectionError,
    access::{Connection, Direction},
    pods::PodContext,
};

/// Proxies one accepted connection and writes its access log line.
pub async fn handle(mut app: TcpStream, peer: SocketAddr, pod: Arc<PodContext>) {
    let mut record = Connection::new(Direction::Outbound, pod.name.clone(), peer);
    let result = async {
        // A proxy must not add Nagle's delay to small writes.
        app.set_nodelay(true).map_err(ConnectionError::Relay)?;
        let dst = pod
            .inputs
            .orig_dst
            .lookup(pod.cookie, peer)
            .map_err(ConnectionError::Capture)?
            .ok_or(ConnectionError::NoOriginalDestination)?;
        record.dst = Some(dst);
        if dst.ip().is_loopback() || dst.ip().is_unspecified() {
            return Err(ConnectionError::Loop(dst));
        }
        let mut upstream = super::inbound::connect(&pod, dst, None).await?;
        tokio::io::copy_bidirectional(&mut app, &mut upstream)
            .await
            .map_err(ConnectionError::Relay)
    }
    .await;
    record.finish(&result);
}
