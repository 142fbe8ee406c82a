//! The accept loop shared by the per-pod listeners.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::Instrument;

use super::{access::Direction, pods::PodContext};

/// Accepts until `stop` fires. Each connection runs `handle` on the node's task
/// tracker, inside a span named after `direction`, so a shutdown can drain it.
/// A failed accept (for example out of file descriptors) pauses the listener
/// with backoff rather than ending it (see [`crate::accept`]).
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
    let stopped = async move {
        let _ = stop.changed().await;
    };
    let name = format!("{} {}", direction.as_str(), pod.name);
    crate::accept::accept_loop(&listener, &name, stopped, |stream, peer| {
        let span = tracing::debug_span!("connection", direction = direction.as_str(), pod = %pod.name, src = %peer);
        let tracker = pod.inputs.connections.clone();
        tracker.spawn(handle(stream, peer, pod.clone()).instrument(span));
    })
    .await;
}
