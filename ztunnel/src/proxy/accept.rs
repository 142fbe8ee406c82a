//! The accept loop shared by the per-pod listeners.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::Instrument;

use super::{access::Direction, pods::PodContext};

/// Accepts until `stop` fires. Each connection runs `handle` on the node's task
/// tracker, inside a span named after `direction`, so a shutdown can drain it.
/// A failed accept (for example out of file descriptors) is logged and retried
/// after a pause rather than ending the listener.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    pod: Arc<PodContext>,
    mut stop: watch::Receiver<bool>,
    direction: Direction,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<PodContext>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, pod = %pod.name, direction = direction.as_str(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let span = tracing::debug_span!("connection", direction = direction.as_str(), pod = %pod.name, src = %peer);
        let tracker = pod.inputs.connections.clone();
        tracker.spawn(handle(stream, peer, pod.clone()).instrument(span));
    }
}
