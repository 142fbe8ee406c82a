//! `sockops` and `sk_msg`: the accepting side's view of redirected connections,
//! and the loopback shortcut.
//!
//! When a redirected application socket is established, its original destination
//! is published under (pod netns, family, application port): the peer port of
//! the socket ztunnel accepts. With the sockmap flag on, both ends of each
//! app <-> ztunnel loopback connection go into a SockHash, and `sk_msg` hands
//! every send straight to the peer socket's receive queue, skipping the loopback
//! TCP/IP stack.

use ambit_ebpf_common::{PortKey, SockKey, flag, setting};
use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        bpf_sock_ops, sk_action::SK_PASS,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};

use crate::{
    addr,
    maps::{LOOPBACK_SOCKS, ORIG_DST, ORIG_DST_BY_PORT, setting},
};

const AF_INET: u32 = 2;
/// `TCP_CLOSE` in `include/net/tcp_states.h`.
const TCP_CLOSE: u32 = 7;

#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    let _ = try_track_sockets(&ctx);
    1
}

fn try_track_sockets(ctx: &SockOpsContext) -> Result<(), i64> {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => application_established(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => ztunnel_accepted(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: the context is a valid bpf_sock_ops for this run.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            // Absent for sockets that were never redirected: nothing to do then.
            let _ = ORIG_DST.remove(cookie);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An application socket finished its handshake: if it was redirected, publish
/// its original destination for ztunnel's accept, and shortcut it.
fn application_established(ctx: &SockOpsContext) -> Result<(), i64> {
    // SAFETY: the context is a valid bpf_sock_ops for this run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: a pointer from a successful lookup is valid for this run.
    let Some(orig) = ORIG_DST.get_ptr(cookie).map(|p| unsafe { *p }) else {
        return Ok(());
    };
    let key = PortKey {
        netns_cookie: orig.netns_cookie,
        port: ctx.local_port() as u16,
        family: ctx.family() as u16,
        _pad: 0,
    };
    ORIG_DST_BY_PORT
        .insert(key, orig, u64::from(BPF_ANY))
        .map_err(i64::from)?;
    // Ask for state callbacks so ORIG_DST is cleaned when the socket closes.
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .map_err(i64::from)?;
    if sockmap_enabled() {
        add_to_sockhash(ctx, orig.netns_cookie)?;
    }
    Ok(())
}

/// ztunnel accepted a connection on the outbound listener: shortcut its side.
fn ztunnel_accepted(ctx: &SockOpsContext) -> Result<(), i64> {
    if !sockmap_enabled() || ctx.local_port() != setting(setting::OUTBOUND_PORT) {
        return Ok(());
    }
    let (local, _) = addresses(ctx);
    if !addr::is_local(&local) {
        return Ok(());
    }
    // SAFETY: bpf_get_netns_cookie accepts a sock_ops context (5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    add_to_sockhash(ctx, netns_cookie)
}

fn sockmap_enabled() -> bool {
    setting(setting::FLAGS) & flag::SOCKMAP != 0
}

/// Both addresses of the socket. Both families' fields are read, each at its
/// own constant offset, and the family selects among the values: choosing the
/// field by branch lets LLVM merge the loads into one through a computed context
/// pointer, which the verifier rejects ("dereference of modified ctx ptr").
fn addresses(ctx: &SockOpsContext) -> ([u8; 16], [u8; 16]) {
    let ops = ctx.ops;
    // SAFETY (all reads): field addresses of the live context.
    let (local4, remote4) = unsafe {
        (
            addr::ctx_read(&raw const (*ops).local_ip4),
            addr::ctx_read(&raw const (*ops).remote_ip4),
        )
    };
    let (local6, remote6) = unsafe {
        (
            addr::ctx_read_ip6(&raw const (*ops).local_ip6),
            addr::ctx_read_ip6(&raw const (*ops).remote_ip6),
        )
    };
    if ctx.family() == AF_INET {
        (addr::from_ip4(local4), addr::from_ip4(remote4))
    } else {
        (local6, remote6)
    }
}

fn add_to_sockhash(ctx: &SockOpsContext, netns_cookie: u64) -> Result<(), i64> {
    let (local_addr, remote_addr) = addresses(ctx);
    let mut key = SockKey {
        netns_cookie,
        local_addr,
        remote_addr,
        local_port: ctx.local_port() as u16,
        remote_port: addr::port_from_be_high(ctx.remote_port()),
        _pad: 0,
    };
    // SAFETY: the context is a valid bpf_sock_ops for this run.
    let ops: &mut bpf_sock_ops = unsafe { &mut *ctx.ops };
    LOOPBACK_SOCKS
        .update(&mut key, ops, u64::from(BPF_ANY))
        .map_err(i64::from)
}

#[sk_msg]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn shortcut_loopback(ctx: SkMsgContext) -> u32 {
    if sockmap_enabled() {
        let msg = ctx.msg;
        // SAFETY: bpf_get_netns_cookie accepts an sk_msg context (5.15+).
        let netns_cookie = unsafe { bpf_get_netns_cookie(msg.cast()) };
        // SAFETY (all reads): field addresses of the live context. Both families
        // are read and the family picks a value (see `addresses`).
        let (local4, remote4, local6, remote6, family) = unsafe {
            (
                addr::ctx_read(&raw const (*msg).local_ip4),
                addr::ctx_read(&raw const (*msg).remote_ip4),
                addr::ctx_read_ip6(&raw const (*msg).local_ip6),
                addr::ctx_read_ip6(&raw const (*msg).remote_ip6),
                addr::ctx_read(&raw const (*msg).family),
            )
        };
        let (local, remote) = if family == AF_INET {
            (addr::from_ip4(local4), addr::from_ip4(remote4))
        } else {
            (local6, remote6)
        };
        let remote_port = addr::ctx_read(unsafe { &raw const (*msg).remote_port });
        let local_port = addr::ctx_read(unsafe { &raw const (*msg).local_port });
        // The peer socket is keyed by its own view: local and remote swapped.
        let mut peer = SockKey {
            netns_cookie,
            local_addr: remote,
            remote_addr: local,
            local_port: addr::port_from_be_high(remote_port),
            remote_port: local_port as u16,
            _pad: 0,
        };
        // On a miss the helper leaves the message unredirected; passing it then
        // sends it through the TCP stack as usual, so the result is not needed.
        let _ = LOOPBACK_SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS));
    }
    SK_PASS
}
