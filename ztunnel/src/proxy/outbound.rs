//! The outbound listener (15001, loopback, inside the pod): connections the
//! capture redirected away from their destination.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{
    ConnectionError,
    access::{Connection, Direction},
    pods::PodContext,
};

/// Accepts until `stop` fires; each connection runs on the pod's tracker so a
/// shutdown can drain it.
pub async fn serve(
    listener: TcpListener,
    pod: Arc<PodContext>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, pod = %pod.name, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let span = tracing::debug_span!("outbound", pod = %pod.name, src = %peer);
        let pod = pod.clone();
        pod.inputs
            .connections
            .clone()
            .spawn(async move { handle(stream, peer, &pod).await }.instrument(span));
    }
}

async fn handle(mut app: TcpStream, peer: SocketAddr, pod: &PodContext) {
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
        let mut upstream = super::inbound::connect(pod, dst, None).await?;
        tokio::io::copy_bidirectional(&mut app, &mut upstream)
            .await
            .map_err(ConnectionError::Relay)
    }
    .await;
    record.finish(&result);
}
