//! `cgroup/connect4|6` and `cgroup/getpeername4|6`: outbound capture.
//!
//! A TCP connect from an enrolled pod's network namespace is rewritten to the
//! pod's outbound listener on loopback (15001), and its original destination is
//! kept under the socket's cookie. ztunnel's own sockets (those of threads in
//! ztunnel's cgroup: no pod can join it, unlike a socket mark, which any pod
//! with CAP_NET_ADMIN can set), loopback destinations and excluded networks are
//! left alone. `getpeername` on a redirected socket returns the original
//! destination, so the application never sees 127.0.0.1:15001.
//!
//! The kubelet's connects from the node's own network namespace to an enrolled
//! pod of the node (its health probes) are bound to the probe address
//! (169.254.7.127, `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`) with `bpf_bind`:
//! the only plaintext source a STRICT pod accepts. Nothing else of the node
//! gets that source, so a NodePort (SNAT to the node's address) or a
//! host-network pod cannot pass for a probe: `cgroup/bind4|6` refuse every
//! `bind()` to the probe address but ztunnel's own (`bpf_bind` does not run
//! them), so no process of the node or of a pod can choose it as its source.

use ambit_ebpf_common::{AF_INET, AF_INET6, OrigDst, PROBE_ADDR4, PROBE_ADDR6, node_id, setting};
use aya_ebpf::{
    bindings::{BPF_ANY, bpf_sock_addr, sockaddr},
    helpers::{bpf_bind, bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    addr,
    maps::{ENROLLED, EXCLUDED_NETS, ORIG_DST, POD_ADDRS, node_id, setting},
};

/// Return code that lets the syscall proceed.
const ALLOW: i32 = 1;
/// Return code that fails the syscall with `EPERM`.
const DENY: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
/// `::1` as the four `u32` words of `user_ip6`.
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    // Whatever happens, the connect proceeds: a failure to redirect must not break
    // pods, and ztunnel's absence is caught by the redirect target refusing.
    let _ = try_redirect(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn redirect_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_redirect(&ctx, true);
    ALLOW
}

// Inlined into each program so `v6` is a constant there: a connect4 program may
// not even read `user_ip6` (the verifier rejects it), so each program must only
// contain its own family's accesses.
#[inline(always)]
fn try_redirect(ctx: &SockAddrContext, v6: bool) -> Result<(), i64> {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP || sa.type_ != SOCK_STREAM {
        return Ok(());
    }
    // SAFETY: bpf_get_current_cgroup_id is allowed in sock_addr programs
    // (5.7+); connect runs in the calling thread's context.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == node_id(node_id::ZTUNNEL_CGROUP)
        || cgroup == node_id(node_id::PREVIOUS_ZTUNNEL_CGROUP)
    {
        // ztunnel's own socket (an unset slot is 0, never a cgroup id).
        return Ok(());
    }
    // SAFETY: bpf_get_netns_cookie accepts a sock_addr context (5.7+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if ENROLLED.get_ptr(netns_cookie).is_none() {
        if netns_cookie == node_id(node_id::HOST_NETNS) {
            let probes = node_id(node_id::PROBE_CGROUP);
            if probes != 0 && cgroup == probes {
                probe_source(ctx, v6);
            }
        }
        return Ok(());
    }
    let ptr = ctx.sock_addr;
    // SAFETY (both reads): field addresses of the live context.
    let dst = if v6 {
        addr::ctx_read_ip6(unsafe { &raw const (*ptr).user_ip6 })
    } else {
        addr::from_ip4(addr::ctx_read(unsafe { &raw const (*ptr).user_ip4 }))
    };
    if addr::is_local(&dst) || EXCLUDED_NETS.get(Key::new(128, dst)).is_some() {
        return Ok(());
    }
    let port = addr::port_from_be_low(sa.user_port);
    let family = if addr::is_v4_mapped(&dst) {
        AF_INET
    } else {
        AF_INET6
    };
    let orig = OrigDst {
        addr: dst,
        port,
        family,
        _pad: 0,
        netns_cookie,
    };
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    ORIG_DST
        .insert(socket_cookie, orig, u64::from(BPF_ANY))
        .map_err(i64::from)?;

    let outbound = setting(setting::OUTBOUND_PORT) as u16;
    sa.user_port = u32::from(outbound.to_be());
    if v6 {
        addr::ctx_write_ip6(ctx.sock_addr, LOOPBACK6);
    } else {
        sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
    }
    Ok(())
}

/// `struct sockaddr_in`, for `bpf_bind`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    /// Network byte order.
    port: u16,
    /// The octets, as the kernel stores them.
    addr: [u8; 4],
    zero: [u8; 8],
}

/// `struct sockaddr_in6`, for `bpf_bind`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u8; 16],
    scope_id: u32,
}

/// Binds a kubelet connect to an enrolled pod of this node to the probe
/// address (port 0: the kernel picks one at connect). Any failure leaves the
/// connect as it was, which a STRICT pod refuses: fail closed.
#[inline(always)]
fn probe_source(ctx: &SockAddrContext, v6: bool) {
    let ptr = ctx.sock_addr;
    // SAFETY (both reads): field addresses of the live context.
    let dst = if v6 {
        addr::ctx_read_ip6(unsafe { &raw const (*ptr).user_ip6 })
    } else {
        addr::from_ip4(addr::ctx_read(unsafe { &raw const (*ptr).user_ip4 }))
    };
    if POD_ADDRS.get_ptr(dst).is_none() {
        return;
    }
    if !v6 {
        let mut sin = SockaddrIn {
            family: AF_INET,
            port: 0,
            addr: PROBE_ADDR4,
            zero: [0; 8],
        };
        // SAFETY: a valid sockaddr_in of its own size on this program's stack.
        let _ = unsafe {
            bpf_bind(
                ptr,
                (&raw mut sin).cast::<sockaddr>(),
                size_of::<SockaddrIn>() as i32,
            )
        };
        return;
    }
    // An IPv6 socket to an IPv4 pod address (v4-mapped) binds the v4-mapped
    // probe address.
    let source = if addr::is_v4_mapped(&dst) {
        ambit_ebpf_common::v4_mapped(PROBE_ADDR4)
    } else {
        PROBE_ADDR6
    };
    let mut sin6 = SockaddrIn6 {
        family: AF_INET6,
        port: 0,
        flowinfo: 0,
        addr: source,
        scope_id: 0,
    };
    // SAFETY: a valid sockaddr_in6 of its own size on this program's stack.
    let _ = unsafe {
        bpf_bind(
            ptr,
            (&raw mut sin6).cast::<sockaddr>(),
            size_of::<SockaddrIn6>() as i32,
        )
    };
}

#[cgroup_sock_addr(bind4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn guard_bind4(ctx: SockAddrContext) -> i32 {
    if binds_probe_address(&ctx, false) {
        DENY
    } else {
        ALLOW
    }
}

#[cgroup_sock_addr(bind6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn guard_bind6(ctx: SockAddrContext) -> i32 {
    if binds_probe_address(&ctx, true) {
        DENY
    } else {
        ALLOW
    }
}

/// Whether the `bind()` asks for the probe address (IPv4, v4-mapped or IPv6)
/// from outside ztunnel: only the capture gives it, to the kubelet's
/// connects; ztunnel binds it to connect to an application as the probe
/// that called (transparently, from the client's address).
#[inline(always)]
fn binds_probe_address(ctx: &SockAddrContext, v6: bool) -> bool {
    // SAFETY: bpf_get_current_cgroup_id is allowed in sock_addr programs
    // (5.7+); bind runs in the calling thread's context.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == node_id(node_id::ZTUNNEL_CGROUP)
        || cgroup == node_id(node_id::PREVIOUS_ZTUNNEL_CGROUP)
    {
        return false;
    }
    let ptr = ctx.sock_addr;
    // SAFETY (both reads): field addresses of the live context.
    let requested = if v6 {
        addr::ctx_read_ip6(unsafe { &raw const (*ptr).user_ip6 })
    } else {
        addr::from_ip4(addr::ctx_read(unsafe { &raw const (*ptr).user_ip4 }))
    };
    requested == ambit_ebpf_common::v4_mapped(PROBE_ADDR4) || requested == PROBE_ADDR6
}

#[cgroup_sock_addr(getpeername4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn peer_orig4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn peer_orig6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, true);
    ALLOW
}

#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, v6: bool) {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: the pointer from a successful lookup is valid for this run; OrigDst
    // is plain data.
    let Some(orig) = ORIG_DST.get_ptr(socket_cookie).map(|p| unsafe { *p }) else {
        return;
    };
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    sa.user_port = u32::from(orig.port.to_be());
    if v6 {
        addr::ctx_write_ip6(ctx.sock_addr, addr::to_ip6(&orig.addr));
    } else if orig.family == AF_INET {
        sa.user_ip4 =
            u32::from_ne_bytes([orig.addr[12], orig.addr[13], orig.addr[14], orig.addr[15]]);
    }
}
