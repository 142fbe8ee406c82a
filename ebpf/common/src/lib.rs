//! The contract between ambit's eBPF programs (kernel side) and ztunnel (user side).
//!
//! Everything stored in a BPF map is declared here once: map names, key and value
//! layouts and their limits. Both sides compile this crate, so a change to a layout
//! is a change to both. Layouts are `#[repr(C)]` with fixed-width integers and
//! explicit padding, because the verifier and the user side read the raw bytes, and
//! padding the compiler inserts would be uninitialised stack the verifier rejects
//! as a map key.
#![no_std]
#![warn(missing_docs)]

/// Names of the maps, as they appear in the object file and as pin file names.
///
/// The user side looks maps up by these constants, never by a literal.
pub mod map_name {
    /// `PerCpuHashMap<u64, u64>`: network-namespace cookie -> `connect()` calls seen
    /// from sockets in that namespace, one counter per CPU (the reader sums them).
    pub const CONNECT_COUNTS: &str = "CONNECT_COUNTS";
    /// `HashMap<u64, u32>`: network-namespace cookie of each enrolled pod -> flags
    /// (reserved, 0). Presence means "capture this pod's traffic".
    pub const ENROLLED: &str = "ENROLLED";
    /// `Array<u32>` of [`super::SETTINGS_SLOTS`] values; see [`super::setting`].
    pub const SETTINGS: &str = "SETTINGS";
    /// `LruHashMap<u64, OrigDst>`: socket cookie of a redirected application socket
    /// -> where it meant to connect. Read by `getpeername` hooks.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// `LruHashMap<PortKey, OrigDst>`: (pod netns, family, application port) ->
    /// original destination; how ztunnel recovers it for an accepted connection.
    pub const ORIG_DST_BY_PORT: &str = "ORIG_DST_BY_PORT";
    /// `SockHash<SockKey>`: both ends of each app <-> ztunnel loopback connection,
    /// for the `sk_msg` shortcut.
    pub const LOOPBACK_SOCKS: &str = "LOOPBACK_SOCKS";
    /// `SockHash<ListenerKey>`: ztunnel's inbound listeners per pod IP, for
    /// `sk_lookup`.
    pub const LISTENERS: &str = "LISTENERS";
    /// `LruHashMap<FlowKey, u8>`: ztunnel's own connects from a client's address
    /// to an application in the pod (transparent inbound), which `sk_lookup`
    /// must deliver to the application instead of steering back to ztunnel.
    pub const TRANSPARENT_FLOWS: &str = "TRANSPARENT_FLOWS";
    /// `LpmTrie<[u8; 16], u8>`: destinations (IPv6 or v4-mapped prefixes) that are
    /// never redirected.
    pub const EXCLUDED_NETS: &str = "EXCLUDED_NETS";
    /// `Array<u64>` of [`super::NODE_IDS_SLOTS`] values: the cgroups and network
    /// namespace the capture tells apart; see [`super::node_id`].
    pub const NODE_IDS: &str = "NODE_IDS";
    /// `HashMap<[u8; 16], u32>`: the addresses of this node's enrolled pods
    /// (v4-mapped for IPv4) -> flags (reserved, 0). Health probes from the
    /// kubelet to them leave from [`super::PROBE_ADDR4`] / [`super::PROBE_ADDR6`].
    pub const POD_ADDRS: &str = "POD_ADDRS";
    /// `LruHashMap<SockKey, Shortcut>`: per app <-> ztunnel loopback connection,
    /// keyed by ztunnel's socket, how many bytes the application sent and
    /// which path its sends take.
    pub const SHORTCUTS: &str = "SHORTCUTS";
    /// `LruHashMap<SockKey, u64>`: per shortcut connection, keyed by ztunnel's
    /// socket, how many bytes ztunnel has read from it, as ztunnel last
    /// reported (it writes; the `sk_msg` program reads).
    pub const SHORTCUT_READS: &str = "SHORTCUT_READS";
    /// `PerCpuArray<u64>` of [`super::SHORTCUT_STATS_SLOTS`] counters; see
    /// [`super::shortcut_stat`].
    pub const SHORTCUT_STATS: &str = "SHORTCUT_STATS";
}

/// Names of the programs (the Rust function names in `ambit-ebpf`).
///
/// A function name must differ from its section name (`sockops`, `sk_msg`, ...),
/// or the loader cannot tell them apart (DESIGN.md section 11).
pub mod program_name {
    /// `cgroup/connect4`: counts IPv4 connects per network namespace.
    pub const COUNT_CONNECT4: &str = "count_connect4";
    /// `cgroup/connect4`: redirects enrolled pods' IPv4 TCP connects to ztunnel.
    pub const REDIRECT_CONNECT4: &str = "redirect_connect4";
    /// `cgroup/connect6`: the same for IPv6 (and v4-mapped) destinations.
    pub const REDIRECT_CONNECT6: &str = "redirect_connect6";
    /// `cgroup/getpeername4`: shows the original destination to the application.
    pub const PEER_ORIG4: &str = "peer_orig4";
    /// `cgroup/getpeername6`: the same for IPv6 sockets.
    pub const PEER_ORIG6: &str = "peer_orig6";
    /// `cgroup/bind4`: refuses a bind to the probe address.
    pub const GUARD_BIND4: &str = "guard_bind4";
    /// `cgroup/bind6`: the same for IPv6 sockets.
    pub const GUARD_BIND6: &str = "guard_bind6";
    /// `sockops`: publishes original destinations by port and fills the SockHash.
    pub const TRACK_SOCKETS: &str = "track_sockets";
    /// `sk_msg`: moves loopback payload straight to the peer socket.
    pub const SHORTCUT_LOOPBACK: &str = "shortcut_loopback";
    /// `sk_lookup`: steers inbound connections to ztunnel's listeners.
    pub const STEER_INBOUND: &str = "steer_inbound";
}

/// Slots of the [`map_name::SETTINGS`] array.
pub mod setting {
    /// Bit set of [`super::flag`] values.
    pub const FLAGS: u32 = 0;
    // Slots 1 and 5 held ztunnel's socket mark and its mask: any socket with
    // the mark was taken for ztunnel's, which a pod with CAP_NET_ADMIN could
    // set. ztunnel's sockets are now known by its cgroup ([`super::node_id`]).
    /// The outbound listener port inside each pod (15001).
    pub const OUTBOUND_PORT: u32 = 2;
    /// The inbound HBONE port (15008): `sk_lookup` keeps it, other ports go to the
    /// plaintext listener.
    pub const HBONE_PORT: u32 = 3;
    /// The inbound plaintext listener port (15006).
    pub const INBOUND_PLAINTEXT_PORT: u32 = 4;
    /// The most bytes an application may have sent over the shortcut that
    /// ztunnel has not read yet (see [`super::Shortcut`]); 0 turns the
    /// redirect off.
    pub const SHORTCUT_CAP: u32 = 6;
    /// 1 while the node's TCP memory is under pressure (ztunnel watches it):
    /// no new bytes are redirected, and the loopback TCP path applies its own
    /// limits.
    pub const TCP_PRESSURE: u32 = 7;
}

/// Number of slots in [`map_name::SETTINGS`].
pub const SETTINGS_SLOTS: u32 = 8;

/// Slots of the [`map_name::NODE_IDS`] array (0 in a slot: none).
pub mod node_id {
    /// The cgroup id (the cgroup v2 directory's inode) of this node's ztunnel:
    /// connects of its threads are never redirected, whatever their socket's
    /// network namespace or mark. A pod cannot join that cgroup.
    pub const ZTUNNEL_CGROUP: u32 = 0;
    /// The cgroup of the ztunnel it replaced, which may still be draining its
    /// connections during a restart.
    pub const PREVIOUS_ZTUNNEL_CGROUP: u32 = 1;
    /// The kubelet's cgroup: its connects from the node's own network
    /// namespace to an enrolled pod (health probes) leave from the probe
    /// address, the only plaintext source STRICT pods accept.
    pub const PROBE_CGROUP: u32 = 2;
    /// The cookie of the node's own network namespace (where the kubelet and
    /// ztunnel run).
    pub const HOST_NETNS: u32 = 3;
}

/// Number of slots in [`map_name::NODE_IDS`].
pub const NODE_IDS_SLOTS: u32 = 4;

/// The source of the kubelet's health probes to enrolled pods (IPv4), as in
/// Istio, whose CNI SNATs the kubelet's probes to it: link-local, so nothing
/// routed from outside the node carries it. ztunnel adds it to the node's
/// loopback interface.
pub const PROBE_ADDR4: [u8; 4] = [169, 254, 7, 127];
/// The IPv6 probe source (Istio's `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`).
pub const PROBE_ADDR6: [u8; 16] = [
    0xfd, 0x16, 0x92, 0x54, 0x71, 0x27, 0x13, 0x37, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
];

/// Bits of [`setting::FLAGS`].
pub mod flag {
    /// Redirect loopback payload with `sk_msg` (off: through the TCP stack).
    pub const SOCKMAP: u32 = 1;
}

/// Slots of [`map_name::SHORTCUT_STATS`] (per-CPU counters; the reader sums).
pub mod shortcut_stat {
    /// Bytes redirected straight into ztunnel's socket.
    pub const REDIRECTED_BYTES: u32 = 0;
    /// Bytes of shortcut connections that took the loopback TCP path.
    pub const TCP_BYTES: u32 = 1;
    /// Times a connection left the redirect for TCP because ztunnel was `cap`
    /// bytes behind, or the node's TCP memory was under pressure.
    pub const TO_TCP: u32 = 2;
    /// Times a connection went back from TCP to the redirect, ztunnel having
    /// read everything sent.
    pub const TO_REDIRECT: u32 = 3;
}

/// Number of slots in [`map_name::SHORTCUT_STATS`].
pub const SHORTCUT_STATS_SLOTS: u32 = 4;

/// Capacity of [`map_name::CONNECT_COUNTS`]: the number of distinct network
/// namespaces (pods) one node can track. A node with more pods than this stops
/// counting new ones; it never fails a connect because of it.
pub const CONNECT_COUNTS_CAPACITY: u32 = 16_384;
/// Capacity of [`map_name::ENROLLED`]: enrolled pods per node.
pub const ENROLLED_CAPACITY: u32 = 4_096;
/// Capacity of the original-destination maps: concurrent redirected connections
/// per node whose metadata is kept (least recently used entries go first).
pub const ORIG_DST_CAPACITY: u32 = 262_144;
/// Capacity of [`map_name::LOOPBACK_SOCKS`]: two sockets per proxied connection.
pub const LOOPBACK_SOCKS_CAPACITY: u32 = 131_072;
/// Capacity of [`map_name::SHORTCUTS`] and [`map_name::SHORTCUT_READS`]:
/// one entry per proxied connection (the least recently used go first; a
/// connection whose entry is gone stays on the TCP path).
pub const SHORTCUTS_CAPACITY: u32 = LOOPBACK_SOCKS_CAPACITY / 2;
/// Capacity of [`map_name::LISTENERS`]: pod IPs x inbound ports.
pub const LISTENERS_CAPACITY: u32 = 16_384;
/// Capacity of [`map_name::TRANSPARENT_FLOWS`]: transparent connects in flight.
pub const TRANSPARENT_FLOWS_CAPACITY: u32 = 65_536;
/// Capacity of [`map_name::EXCLUDED_NETS`].
pub const EXCLUDED_NETS_CAPACITY: u32 = 256;
/// Capacity of [`map_name::POD_ADDRS`]: two addresses per enrolled pod.
pub const POD_ADDRS_CAPACITY: u32 = 2 * ENROLLED_CAPACITY;

/// `AF_INET`, as stored in [`OrigDst::family`] and the keys.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Where a redirected connection meant to go.
///
/// The address is always 16 bytes: IPv6 as is, IPv4 as a v4-mapped address
/// (`::ffff:a.b.c.d`), so one layout serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Destination address, network byte order (v4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// [`AF_INET`] when the destination is IPv4 (also for a v4-mapped
    /// destination on an IPv6 socket), [`AF_INET6`] otherwise.
    pub family: u16,
    /// Explicit padding so the struct has no uninitialised bytes.
    pub _pad: u32,
    /// Cookie of the network namespace the connect came from.
    pub netns_cookie: u64,
}

/// Key of [`map_name::ORIG_DST_BY_PORT`]: how ztunnel finds the original
/// destination of a connection it accepted on the outbound listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Cookie of the pod's network namespace.
    pub netns_cookie: u64,
    /// The application socket's local port (host byte order) = the peer port of
    /// ztunnel's accepted socket.
    pub port: u16,
    /// Family of the application socket ([`AF_INET`] or [`AF_INET6`]).
    pub family: u16,
    /// Explicit padding.
    pub _pad: u32,
}

/// Key of [`map_name::LOOPBACK_SOCKS`]: one socket of a loopback connection, by
/// its own 4-tuple in its namespace. The peer of `k` is found under `k` with
/// local and remote swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Cookie of the network namespace.
    pub netns_cookie: u64,
    /// Local address (v4-mapped for IPv4), network byte order.
    pub local_addr: [u8; 16],
    /// Remote address (v4-mapped for IPv4), network byte order.
    pub remote_addr: [u8; 16],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Explicit padding.
    pub _pad: u32,
}

/// Value of [`map_name::SHORTCUTS`]: the application -> ztunnel direction of
/// a loopback connection, the only direction the shortcut redirects.
///
/// An application's sends are redirected into the `ingress_msg` queue of
/// ztunnel's socket, or take the loopback TCP stack. The redirect has no
/// backpressure of its own, so the program redirects only while the bytes sent
/// and not yet read (as ztunnel reports them in [`map_name::SHORTCUT_READS`])
/// stay within the cap; past it the sends take TCP, whose buffers slow or block
/// the sender. ztunnel reads `ingress_msg` before its TCP receive queue
/// (`tcp_bpf_recvmsg`), so redirect-then-TCP keeps the byte order; TCP is
/// followed by the redirect only once ztunnel has reported reading every byte
/// sent (nothing is left on the TCP path to be overtaken).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shortcut {
    /// Bytes the application sent on either path (the `sk_msg` program, under
    /// the application socket's lock).
    pub sent: u64,
    /// [`shortcut_mode`]: the path the application's sends take.
    pub mode: u32,
    /// 1 once ztunnel's socket is in the SockHash (set by `sockops` when
    /// ztunnel's side is established).
    pub ready: u32,
}

/// Values of [`Shortcut::mode`].
pub mod shortcut_mode {
    /// Nothing sent yet.
    pub const NEW: u32 = 0;
    /// Redirected into ztunnel's socket.
    pub const REDIRECT: u32 = 1;
    /// The loopback TCP stack, until ztunnel has read everything sent: ztunnel
    /// fell the cap behind, the node's TCP memory was under pressure, or the
    /// application sent before ztunnel's side was ready.
    pub const TCP: u32 = 2;
    /// The loopback TCP stack for good: the application shut its sending side
    /// down (a later send then fails as it would without the shortcut), or
    /// ztunnel's socket left the SockHash.
    pub const CLOSED: u32 = 3;
}

impl SockKey {
    /// The key of the other end of the same loopback connection (both ends
    /// live in one network namespace).
    pub const fn peer(&self) -> Self {
        Self {
            netns_cookie: self.netns_cookie,
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
            local_port: self.remote_port,
            remote_port: self.local_port,
            _pad: 0,
        }
    }
}

/// Key of [`map_name::LISTENERS`]: which listener takes inbound connections to
/// a pod IP on a port class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// The pod IP (v4-mapped for IPv4), network byte order.
    pub addr: [u8; 16],
    /// The listener port: HBONE (15008) or inbound plaintext (15006).
    pub port: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
}

/// Key of [`map_name::TRANSPARENT_FLOWS`]: a connection as the receiving side
/// sees it. Locally generated packets to the pod's own address look, to
/// `sk_lookup`, as if they arrived on the pod's interface, so only the flow
/// itself tells ztunnel's transparent connects apart from real inbound traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Destination (the application's address), v4-mapped for IPv4.
    pub local_addr: [u8; 16],
    /// Source (the client's address ztunnel borrowed), v4-mapped for IPv4.
    pub remote_addr: [u8; 16],
    /// Destination port, host byte order.
    pub local_port: u16,
    /// Source port, host byte order.
    pub remote_port: u16,
    /// Explicit padding.
    pub _pad: u32,
}

/// The v4-mapped form (`::ffff:a.b.c.d`) of an IPv4 address given as its four
/// bytes in network order.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): the types are #[repr(C)], Copy, made only of integers and
    // byte arrays, with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Shortcut {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<OrigDst>(), 16 + 2 + 2 + 4 + 8);
        assert_eq!(size_of::<PortKey>(), 8 + 2 + 2 + 4);
        assert_eq!(size_of::<SockKey>(), 8 + 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<ListenerKey>(), 16 + 2 + 6);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<Shortcut>(), 8 + 4 + 4);
    }

    #[test]
    fn v4_mapped_matches_std() {
        let ip = core::net::Ipv4Addr::new(198, 18, 16, 10);
        assert_eq!(v4_mapped(ip.octets()), ip.to_ipv6_mapped().octets());
    }
}
