//! Socket creation behind a narrow trait: every socket ztunnel uses for a pod is
//! created inside that pod's network namespace and carries ztunnel's mark, so the
//! capture programs never redirect ztunnel's own traffic.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

use crate::capture::Netns;

/// Backlog of the per-pod listeners.
const LISTEN_BACKLOG: i32 = 1024;

/// Source ports of connects from a client's address: Linux's default
/// ephemeral range.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// How many ports [`SOURCE_PORTS`] holds.
const SOURCE_PORT_COUNT: u16 = *SOURCE_PORTS.end() - *SOURCE_PORTS.start() + 1;

/// Ports tried before a connect from a client's address gives up: binds
/// refused (a listener, or a socket without `SO_REUSEADDR`, on the port), and
/// separately connects refused (`EADDRNOTAVAIL`: the four-tuple is taken;
/// `inbound::connect` retries those).
pub const SOURCE_PORT_ATTEMPTS: usize = 64;

/// Creates the sockets of one pod.
pub trait SocketFactory: std::fmt::Debug + Send + Sync {
    /// A listener bound to `addr` with `SO_REUSEPORT` (so a new ztunnel can take
    /// over), dual-stack when `addr` is the IPv6 wildcard.
    fn listener(&self, addr: SocketAddr) -> io::Result<TcpListener>;

    /// An unconnected socket for a connection to `dst`. With `transparent_src`,
    /// it is bound to that (foreign) address with `IP_TRANSPARENT`, so the peer
    /// sees the original client's address.
    fn connector(&self, dst: SocketAddr, transparent_src: Option<IpAddr>) -> io::Result<TcpSocket>;
}

/// Sockets in a pod's network namespace, marked as ztunnel's.
#[derive(Debug, Clone)]
pub struct PodSockets {
    netns: Arc<Netns>,
    mark: u32,
    transparent_mark: u32,
    /// The next source port to try for a connect from a client's address.
    next_port: Arc<AtomicU32>,
}

impl PodSockets {
    /// Sockets for the pod whose namespace is `netns`: `mark` on all of them,
    /// `transparent_mark` instead on those bound to a foreign address, whose
    /// replies the pod's policy rule routes back.
    pub fn new(netns: Arc<Netns>, mark: u32, transparent_mark: u32) -> Self {
        Self {
            netns,
            mark,
            transparent_mark,
            // A new ztunnel starts elsewhere in the range than its
            // predecessor, whose connections may still hold their ports.
            next_port: Arc::new(AtomicU32::new(u32::from(fastrand::u16(
                0..SOURCE_PORT_COUNT,
            )))),
        }
    }

    /// Binds `socket` to `src` and a source port of its own, taken in turn.
    ///
    /// Not port 0: to find a free port, the kernel walks the range until a
    /// port that no socket bound to that address (or to any) uses, and every connection
    /// ztunnel holds (or has closed first: `TIME_WAIT`, a minute) from a
    /// client's address takes one. With thousands of them a bind took
    /// milliseconds of the kernel's time, for every new connection. With
    /// `SO_REUSEADDR` on these sockets, a port they already use binds at
    /// once; only a connection with the same four addresses and ports
    /// conflicts, and that fails the connect (`EADDRNOTAVAIL`), which the
    /// caller retries.
    fn bind_source(&self, socket: &Socket, src: IpAddr) -> io::Result<()> {
        let mut last = None;
        for _ in 0..SOURCE_PORT_ATTEMPTS {
            let port = self.source_port();
            match socket.bind(&SockAddr::from(SocketAddr::new(src, port))) {
                Ok(()) => return Ok(()),
                // A listener or an exclusive socket on this port.
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }

    /// Points the cursor at `port`, a port of [`SOURCE_PORTS`].
    #[cfg(test)]
    pub(super) fn take_next(&self, port: u16) {
        self.next_port
            .store(u32::from(port - SOURCE_PORTS.start()), Ordering::Relaxed);
    }

    fn source_port(&self) -> u16 {
        let offset = self.next_port.fetch_add(1, Ordering::Relaxed) % u32::from(SOURCE_PORT_COUNT);
        // Below the count, a u16.
        SOURCE_PORTS.start() + u16::try_from(offset).unwrap_or(0)
    }

    fn socket(&self, addr: &SocketAddr, mark: u32) -> io::Result<Socket> {
        let domain = Domain::for_address(*addr);
        let socket = self
            .netns
            .run(|| {
                Socket::new(
                    domain,
                    Type::STREAM.nonblocking().cloexec(),
                    Some(Protocol::TCP),
                )
            })
            .map_err(|e| io::Error::other(error_chain(&e)))??;
        socket.set_mark(mark)?;
        Ok(socket)
    }
}

impl SocketFactory for PodSockets {
    fn listener(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = self.socket(&addr, self.mark)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(LISTEN_BACKLOG)?;
        TcpListener::from_std(socket.into())
    }

    fn connector(&self, dst: SocketAddr, transparent_src: Option<IpAddr>) -> io::Result<TcpSocket> {
        // One mark per socket (a system call each, per proxied connection).
        let mark = match transparent_src {
            Some(_) => self.transparent_mark,
            None => self.mark,
        };
        let socket = self.socket(&dst, mark)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(src) = transparent_src {
            if dst.is_ipv4() {
                socket.set_ip_transparent_v4(true)?;
            } else {
                socket.set_ip_transparent_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            self.bind_source(&socket, src)?;
        }
        let std: std::net::TcpStream = socket.into();
        Ok(TcpSocket::from_std_stream(std))
    }
}

/// The error and its sources, for errors converted to `io::Error`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener as StdListener};

    use super::*;

    /// Needs root (entering a network namespace, `IP_TRANSPARENT`, marks): it
    /// runs in the test's own namespace, on loopback.
    #[tokio::test]
    async fn connects_from_a_client_address_take_ports_in_turn_and_share_them() {
        let netns = Netns::open(std::path::Path::new("/proc/self/ns/net"))
            .expect("entering a network namespace needs root");
        let sockets = PodSockets::new(Arc::new(netns), 0, 0);
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let first = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let second = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (first, second) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        // A port of the range held by a listener (which no connection may
        // share) is passed over for the next one.
        let held = (0..100)
            .find_map(|_| {
                let port = fastrand::u16(SOURCE_PORTS.start() + 1..SOURCE_PORTS.end() - 1);
                StdListener::bind((Ipv4Addr::LOCALHOST, port)).ok()
            })
            .expect("a free port in the range");
        let port = held.local_addr().unwrap().port();
        sockets.take_next(port);
        let socket = sockets.connector(first, Some(client)).unwrap();
        assert_eq!(socket.local_addr().unwrap().port(), port + 1);
        let _a = socket.connect(first).await.unwrap();
        // The same source port serves a connection to another destination
        // (the kernel's own choice, port 0, would look for an unused port).
        sockets.take_next(port + 1);
        let socket = sockets.connector(second, Some(client)).unwrap();
        assert_eq!(socket.local_addr().unwrap().port(), port + 1);
        let _b = socket.connect(second).await.unwrap();
        // Only the same four addresses and ports conflict, at the connect:
        // the error on which `inbound::connect` takes the next port.
        sockets.take_next(port + 1);
        let socket = sockets.connector(first, Some(client)).unwrap();
        let refused = socket.connect(first).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrNotAvailable, "{refused}");
        // The cursor wraps at the end of the range.
        sockets.take_next(*SOURCE_PORTS.end());
        assert_eq!(sockets.source_port(), *SOURCE_PORTS.end());
        assert_eq!(sockets.source_port(), *SOURCE_PORTS.start());
    }
}
