//! Socket creation behind a narrow trait: every socket ztunnel uses for a pod is
//! created inside that pod's network namespace and carries ztunnel's mark, so the
//! capture programs never redirect ztunnel's own traffic.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

use crate::capture::Netns;

/// Backlog of the per-pod listeners.
const LISTEN_BACKLOG: i32 = 1024;

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
        }
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
            socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
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
