//! The per-pod listeners and what happens to each connection they accept.
//!
//! For every enrolled pod, ztunnel listens inside the pod's network namespace:
//! 15001 on loopback takes the pod's redirected outbound connections, 15006 on
//! the pod's addresses takes inbound plaintext. (15008, inbound HBONE, arrives
//! with the HBONE data path; until then `sk_lookup` finds no listener for it
//! and drops such connections.)
//!
//! Until HBONE lands, both directions forward plaintext to the original
//! destination: [`FORWARDING`] names that stepping stone. It is not a mode a
//! user can select; it is what the capture is tested with.

mod accept;
mod access;
mod inbound;
mod outbound;
mod pods;
mod socket;

use std::{io, net::SocketAddr, time::Duration};

pub use pods::{LocalPod, PodManager, PodManagerConfig};
pub use socket::{PodSockets, SocketFactory, error_chain};

/// How connections are carried today: plaintext to the original destination,
/// the stepping stone before HBONE.
pub const FORWARDING: &str = "plaintext-forward";

/// Errors of the proxy layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The eBPF capture refused an operation.
    #[error("capture")]
    Capture(#[from] crate::capture::Error),
    /// A listener could not be opened in a pod.
    #[error("cannot listen on {addr} in pod {pod}")]
    Listen {
        /// The pod, as namespace/name.
        pod: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The pod is not enrolled.
    #[error("pod {uid} is not enrolled")]
    NotEnrolled {
        /// The pod's uid.
        uid: String,
    },
}

/// Why a proxied connection ended badly; decides its access log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The outbound connection has no original destination recorded.
    #[error("no original destination recorded for this connection")]
    NoOriginalDestination,
    /// The destination would loop back into ztunnel.
    #[error("destination {0} would loop back into ztunnel")]
    Loop(SocketAddr),
    /// Connecting to the destination failed.
    #[error("cannot connect to {dst}")]
    Connect {
        /// The destination.
        dst: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connecting to {dst} timed out after {after:?}")]
    ConnectTimeout {
        /// The destination.
        dst: SocketAddr,
        /// The limit.
        after: Duration,
    },
    /// Moving bytes failed after the connection was set up.
    #[error("relaying bytes failed")]
    Relay(#[source] io::Error),
    /// Looking up the original destination failed.
    #[error("cannot look up the original destination")]
    Capture(#[source] crate::capture::Error),
}
