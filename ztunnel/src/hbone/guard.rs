//! What one HBONE peer may cost the server, and what happens past it.
//!
//! h2 bounds one connection (streams, header lists, resets it sees before a
//! stream is accepted); the guard adds what h2 cannot see: how many
//! connections and handshakes one peer address holds at once (a slow-TLS
//! "slowloris" peer), and streams the peer resets while the server is still
//! working on them (rapid reset, CVE-2023-44487: the work a reset stream
//! started must not outlive it, and a peer that keeps doing it gets a
//! GOAWAY: no new stream on that connection, whose open tunnels finish). Every refusal is counted in `ambit_hbone_rejections_total`
//! by reason, and logged at most once per peer address and reason per
//! [`LOG_INTERVAL`], with the number of refusals the interval left unlogged,
//! so a flood cannot flood the log too.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::Serialize;

use crate::{
    accept::canonical,
    metrics::ReasonLabel,
    settings::{self, EnvSource, Error},
};

/// A peer's refusals of one reason are logged once per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The window over which a connection's early resets are counted.
pub const EARLY_RESET_WINDOW: Duration = Duration::from_secs(10);
/// Peers whose log interval is tracked at once; past it, stale entries are
/// dropped, and if none is stale the refusal is logged unthrottled
/// (a connection needs a TCP handshake, so peers cannot be made up for free).
const LOG_PEERS_MAX: usize = 4096;

/// Why the server refused a peer or ended its connection: the `reason` label
/// of `ambit_hbone_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The peer address already holds [`Limits::max_connections_per_peer`]
    /// connections.
    ConnectionsPerPeer,
    /// The peer address already has [`Limits::max_handshakes_per_peer`]
    /// handshakes under way.
    HandshakesPerPeer,
    /// The TLS and HTTP/2 handshakes did not finish in time.
    HandshakeTimeout,
    /// The TLS handshake failed: no client certificate, an untrusted one, no
    /// SPIFFE identity, a TLS version or cipher the server does not speak.
    Tls,
    /// The peer reset more than [`Limits::max_early_resets`] streams that the
    /// server was still deciding or connecting, within [`EARLY_RESET_WINDOW`].
    RapidReset,
    /// h2 ended the connection with ENHANCE_YOUR_CALM: too many streams
    /// reset before they were accepted or for the peer's own protocol
    /// errors, or a header block split into too many CONTINUATION frames
    /// (h2 does not say which).
    Flood,
    /// h2 ended the connection for another protocol violation (a header
    /// list over the limit, a malformed frame, a flow-control breach).
    Protocol,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ConnectionsPerPeer => "the peer address holds too many HBONE connections",
            Self::HandshakesPerPeer => "the peer address has too many HBONE handshakes under way",
            Self::HandshakeTimeout => "the handshake took too long",
            Self::Tls => "the TLS handshake failed",
            Self::RapidReset => "the peer reset too many streams before they were answered",
            Self::Flood => {
                "HTTP/2 ended the connection for a flood (resets or CONTINUATION frames)"
            }
            Self::Protocol => "HTTP/2 ended the connection for a protocol violation",
        })
    }
}

impl Rejection {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionsPerPeer => "connections_per_peer",
            Self::HandshakesPerPeer => "handshakes_per_peer",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Tls => "tls",
            Self::RapidReset => "rapid_reset",
            Self::Flood => "flood",
            Self::Protocol => "protocol",
        }
    }

    /// The rejection an HTTP/2 error of the server's own making stands for,
    /// if it is one: h2 ending the connection because of what the peer sent.
    /// A peer that closed or reset the connection is no rejection.
    pub fn of_h2(error: &h2::Error) -> Option<Self> {
        if !(error.is_go_away() && error.is_library()) {
            return None;
        }
        match error.reason() {
            Some(h2::Reason::NO_ERROR) | None => None,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => Some(Self::Flood),
            Some(_) => Some(Self::Protocol),
        }
    }
}

/// The limits one HBONE peer is held to (environment, with defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Concurrent CONNECT streams per connection (`AMBIT_HBONE_MAX_STREAMS`).
    pub max_streams: u32,
    /// Largest decoded header list of a stream, in bytes
    /// (`AMBIT_HBONE_MAX_HEADER_BYTES`).
    pub max_header_list: u32,
    /// Streams a peer may reset while the server still decides or connects
    /// them, per connection per [`EARLY_RESET_WINDOW`]
    /// (`AMBIT_HBONE_MAX_EARLY_RESETS`).
    pub max_early_resets: u32,
    /// How long the TLS and HTTP/2 handshakes may take
    /// (`AMBIT_HBONE_HANDSHAKE_TIMEOUT_SECONDS`).
    pub handshake_timeout: Duration,
    /// Connections one peer address may hold open at once, handshakes
    /// included (`AMBIT_HBONE_MAX_CONNECTIONS_PER_PEER`).
    pub max_connections_per_peer: usize,
    /// Handshakes one peer address may have under way at once
    /// (`AMBIT_HBONE_MAX_HANDSHAKES_PER_PEER`).
    pub max_handshakes_per_peer: usize,
    /// Data one connection may have queued for its peer, all its streams
    /// together, in bytes (`AMBIT_HBONE_MAX_SEND_BUFFER_BYTES`); a write past
    /// it waits until the peer reads.
    pub max_send_buffer: u32,
}

/// See [`Limits::max_streams`].
pub const MAX_STREAMS_ENV: &str = "AMBIT_HBONE_MAX_STREAMS";
/// See [`Limits::max_header_list`].
pub const MAX_HEADER_BYTES_ENV: &str = "AMBIT_HBONE_MAX_HEADER_BYTES";
/// See [`Limits::max_early_resets`].
pub const MAX_EARLY_RESETS_ENV: &str = "AMBIT_HBONE_MAX_EARLY_RESETS";
/// See [`Limits::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT_ENV: &str = "AMBIT_HBONE_HANDSHAKE_TIMEOUT_SECONDS";
/// See [`Limits::max_connections_per_peer`].
pub const MAX_CONNECTIONS_PER_PEER_ENV: &str = "AMBIT_HBONE_MAX_CONNECTIONS_PER_PEER";
/// See [`Limits::max_handshakes_per_peer`].
pub const MAX_HANDSHAKES_PER_PEER_ENV: &str = "AMBIT_HBONE_MAX_HANDSHAKES_PER_PEER";
/// See [`Limits::max_send_buffer`].
pub const MAX_SEND_BUFFER_ENV: &str = "AMBIT_HBONE_MAX_SEND_BUFFER_BYTES";

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: settings::HBONE_MAX_STREAMS,
            max_header_list: settings::HBONE_MAX_HEADER_LIST,
            max_early_resets: 100,
            handshake_timeout: settings::HBONE_HANDSHAKE_TIMEOUT,
            max_connections_per_peer: 1024,
            max_handshakes_per_peer: 64,
            max_send_buffer: settings::HBONE_CONNECTION_SEND_BUDGET,
        }
    }
}

impl Limits {
    /// Reads the limits from `env`; unset variables keep their defaults.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, Error> {
        let var = |name| env.var(name).filter(|v| !v.is_empty());
        let mut limits = Self::default();
        if let Some(value) = var(MAX_STREAMS_ENV) {
            limits.max_streams = parse_count(MAX_STREAMS_ENV, &value, 1, 10_000)?;
        }
        if let Some(value) = var(MAX_HEADER_BYTES_ENV) {
            limits.max_header_list = parse_count(MAX_HEADER_BYTES_ENV, &value, 1024, 1 << 20)?;
        }
        if let Some(value) = var(MAX_EARLY_RESETS_ENV) {
            limits.max_early_resets = parse_count(MAX_EARLY_RESETS_ENV, &value, 1, 1_000_000)?;
        }
        if let Some(value) = var(HANDSHAKE_TIMEOUT_ENV) {
            let timeout = settings::parse_seconds(HANDSHAKE_TIMEOUT_ENV, &value)?;
            if timeout.is_zero() {
                return Err(Error::Invalid {
                    name: HANDSHAKE_TIMEOUT_ENV,
                    value,
                    expected: "a positive number of seconds",
                });
            }
            limits.handshake_timeout = timeout;
        }
        if let Some(value) = var(MAX_CONNECTIONS_PER_PEER_ENV) {
            let n: u32 = parse_count(MAX_CONNECTIONS_PER_PEER_ENV, &value, 1, 1_000_000)?;
            limits.max_connections_per_peer = n as usize;
        }
        if let Some(value) = var(MAX_HANDSHAKES_PER_PEER_ENV) {
            let n: u32 = parse_count(MAX_HANDSHAKES_PER_PEER_ENV, &value, 1, 1_000_000)?;
            limits.max_handshakes_per_peer = n as usize;
        }
        if let Some(value) = var(MAX_SEND_BUFFER_ENV) {
            limits.max_send_buffer = parse_count(MAX_SEND_BUFFER_ENV, &value, 256 * 1024, 1 << 30)?;
        }
        Ok(limits)
    }
}

/// Parses a whole number from `min` to `max` named by `name`.
fn parse_count(name: &'static str, value: &str, min: u32, max: u32) -> Result<u32, Error> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| Error::Invalid {
            name,
            value: value.to_owned(),
            expected: "a whole number in the allowed range (see docs/configuration.md)",
        })
}

/// Per peer address: connections open and handshakes under way.
#[derive(Debug, Default, Clone, Copy)]
struct PeerUse {
    connections: usize,
    handshakes: usize,
}

/// When a (peer, reason) was last logged, and what was left unlogged since.
#[derive(Debug)]
struct LogState {
    logged: Instant,
    suppressed: u64,
}

/// The HBONE server's bookkeeping of its peers: one per process, shared by
/// every listener.
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    peers: Mutex<HashMap<IpAddr, PeerUse>>,
    logged: Mutex<HashMap<(IpAddr, Rejection), LogState>>,
    rejections: Family<ReasonLabel, Counter>,
}

impl Guard {
    /// A guard holding peers to `limits`, counting refusals in `rejections`
    /// (`ProxyMetrics::hbone_rejections`).
    pub fn new(limits: Limits, rejections: Family<ReasonLabel, Counter>) -> Self {
        Self {
            limits,
            peers: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
            rejections,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many refusals of `reason` were counted.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Admits a new connection from `peer` in its handshake, or says which
    /// limit refuses it. The connection counts until the returned slot drops.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<PeerSlot, Rejection> {
        let peer = peer.to_canonical();
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = peers.entry(peer).or_default();
        if usage.connections >= self.limits.max_connections_per_peer {
            return Err(Rejection::ConnectionsPerPeer);
        }
        if usage.handshakes >= self.limits.max_handshakes_per_peer {
            return Err(Rejection::HandshakesPerPeer);
        }
        usage.connections += 1;
        usage.handshakes += 1;
        Ok(PeerSlot {
            guard: self.clone(),
            peer,
            handshaking: true,
        })
    }

    /// Counts a refusal and logs it, at most once per peer and reason per
    /// [`LOG_INTERVAL`].
    pub fn reject(
        &self,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        reason: Rejection,
        error: &dyn std::error::Error,
    ) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        let Some(suppressed) = self.log_due(peer.ip().to_canonical(), reason, Instant::now())
        else {
            return;
        };
        let dst = local.map(|a| canonical(a).to_string());
        tracing::warn!(
            target: "access",
            direction = "inbound",
            mode = "hbone",
            src.addr = %canonical(peer),
            dst.addr = dst.as_deref().unwrap_or("-"),
            reason = reason.as_str(),
            suppressed,
            error = %crate::identity::error_chain(error),
            "HBONE connection refused"
        );
    }

    /// `Some(refusals left unlogged since the last line)` if a refusal of
    /// `reason` from `peer` is to be logged at `now`.
    fn log_due(&self, peer: IpAddr, reason: Rejection, now: Instant) -> Option<u64> {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = logged.get_mut(&(peer, reason)) {
            if now.duration_since(state.logged) < LOG_INTERVAL {
                state.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut state.suppressed);
            state.logged = now;
            return Some(suppressed);
        }
        if logged.len() >= LOG_PEERS_MAX {
            logged.retain(|_, state| now.duration_since(state.logged) < LOG_INTERVAL);
            if logged.len() >= LOG_PEERS_MAX {
                return Some(0);
            }
        }
        logged.insert(
            (peer, reason),
            LogState {
                logged: now,
                suppressed: 0,
            },
        );
        Some(0)
    }

    fn release(&self, peer: IpAddr, handshaking: bool) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(usage) = peers.get_mut(&peer) {
            usage.connections = usage.connections.saturating_sub(1);
            if handshaking {
                usage.handshakes = usage.handshakes.saturating_sub(1);
            }
            if usage.connections == 0 {
                peers.remove(&peer);
            }
        }
    }

    fn handshake_done(&self, peer: IpAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(usage) = peers.get_mut(&peer) {
            usage.handshakes = usage.handshakes.saturating_sub(1);
        }
    }
}

/// One admitted connection of a peer; released when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    guard: Arc<Guard>,
    peer: IpAddr,
    handshaking: bool,
}

impl PeerSlot {
    /// The handshakes finished: the connection no longer counts against
    /// [`Limits::max_handshakes_per_peer`].
    pub fn established(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.guard.handshake_done(self.peer);
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.guard.release(self.peer, self.handshaking);
    }
}

/// A connection's streams that the peer reset while the server was still
/// deciding or connecting them, over the current [`EARLY_RESET_WINDOW`], and
/// the stream handlers still running.
#[derive(Debug)]
pub struct StreamWork {
    max_early_resets: u32,
    window: Mutex<Instant>,
    early_resets: AtomicU32,
    running: AtomicUsize,
    /// Woken when the early resets pass their limit.
    pub exceeded: tokio::sync::Notify,
}

impl StreamWork {
    /// The bookkeeping of one connection held to `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_early_resets: limits.max_early_resets,
            window: Mutex::new(Instant::now()),
            early_resets: AtomicU32::new(0),
            running: AtomicUsize::new(0),
            exceeded: tokio::sync::Notify::new(),
        }
    }

    /// Counts a stream reset before it was answered; past the limit, wakes
    /// [`Self::exceeded`].
    pub fn early_reset(&self) {
        let now = Instant::now();
        {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            if now.duration_since(*window) >= EARLY_RESET_WINDOW {
                *window = now;
                self.early_resets.store(0, Ordering::Relaxed);
            }
        }
        if self.early_resets.fetch_add(1, Ordering::Relaxed) + 1 > self.max_early_resets {
            self.exceeded.notify_one();
        }
    }

    /// Counts a stream handler as running until the returned token drops.
    pub fn start(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self.clone())
    }

    /// Stream handlers running now (streams reset by the peer included,
    /// until their handler noticed).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// A running stream handler (see [`StreamWork::start`]).
#[derive(Debug)]
pub struct Running(Arc<StreamWork>);

impl Running {
    /// The peer reset this handler's stream before it was answered (see
    /// [`StreamWork::early_reset`]).
    pub fn early_reset(&self) {
        self.0.early_reset();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limits: Limits) -> Arc<Guard> {
        Arc::new(Guard::new(limits, Family::default()))
    }

    #[test]
    fn a_peer_is_held_to_its_handshakes_and_connections_and_others_are_not() {
        let guard = guard(Limits {
            max_connections_per_peer: 3,
            max_handshakes_per_peer: 2,
            ..Limits::default()
        });
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let mut first = guard.admit(a).unwrap();
        let mut second = guard.admit(a).unwrap();
        assert_eq!(guard.admit(a).unwrap_err(), Rejection::HandshakesPerPeer);
        assert!(
            guard.admit(b).is_ok(),
            "another peer is not held to a's use"
        );
        first.established();
        second.established();
        let _third = guard.admit(a).unwrap();
        assert_eq!(guard.admit(a).unwrap_err(), Rejection::ConnectionsPerPeer);
        drop(first);
        assert!(guard.admit(a).is_ok(), "a closed connection frees its slot");
    }

    #[test]
    fn refusals_are_logged_once_per_peer_reason_and_interval_with_what_was_left_out() {
        let guard = guard(Limits::default());
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "fd00::2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(guard.log_due(a, Rejection::Tls, t0), Some(0));
        assert_eq!(
            guard.log_due(a, Rejection::Tls, t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            guard.log_due(a, Rejection::Tls, t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            guard.log_due(a, Rejection::RapidReset, t0),
            Some(0),
            "another reason"
        );
        assert_eq!(
            guard.log_due(b, Rejection::Tls, t0),
            Some(0),
            "another peer"
        );
        assert_eq!(guard.log_due(a, Rejection::Tls, t0 + LOG_INTERVAL), Some(2));
        assert_eq!(guard.log_due(a, Rejection::Tls, t0 + LOG_INTERVAL), None);
    }

    #[test]
    fn early_resets_past_the_limit_in_a_window_wake_the_connection() {
        let work = StreamWork::new(&Limits {
            max_early_resets: 3,
            ..Limits::default()
        });
        for _ in 0..3 {
            work.early_reset();
        }
        let notified = work.exceeded.notified();
        tokio::pin!(notified);
        assert!(!notified.as_mut().enable(), "three resets are allowed");
        work.early_reset();
        assert!(notified.as_mut().enable(), "the fourth is one too many");
    }

    #[test]
    fn limits_come_from_the_environment_and_bad_values_are_named() {
        let env: HashMap<String, String> = [
            (MAX_STREAMS_ENV, "50"),
            (HANDSHAKE_TIMEOUT_ENV, "2.5"),
            (MAX_HANDSHAKES_PER_PEER_ENV, "8"),
            (MAX_SEND_BUFFER_ENV, "4194304"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let limits = Limits::from_env(&env).unwrap();
        assert_eq!(limits.max_streams, 50);
        assert_eq!(limits.handshake_timeout, Duration::from_millis(2500));
        assert_eq!(limits.max_handshakes_per_peer, 8);
        assert_eq!(limits.max_send_buffer, 4 << 20);
        assert_eq!(
            limits.max_connections_per_peer,
            Limits::default().max_connections_per_peer
        );
        for (name, value) in [
            (MAX_STREAMS_ENV, "0"),
            (MAX_HEADER_BYTES_ENV, "10"),
            (HANDSHAKE_TIMEOUT_ENV, "0"),
            (MAX_CONNECTIONS_PER_PEER_ENV, "many"),
            (MAX_SEND_BUFFER_ENV, "1024"),
        ] {
            let env: HashMap<String, String> = [(name.to_owned(), value.to_owned())].into();
            let error = Limits::from_env(&env).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(value), "{error}");
        }
    }
}
