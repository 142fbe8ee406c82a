//! `sockops`: the accepting side's view of redirected connections, and the
//! bookkeeping of the loopback shortcut.
//!
//! When a redirected application socket is established, its original destination
//! is published under (pod netns, family, application port): the peer port of
//! the socket ztunnel accepts. With the sockmap flag on, both ends of each
//! app <-> ztunnel loopback connection go into a SockHash, with a [`Shortcut`]
//! record keyed by ztunnel's end (see `shortcut`).
//!
//! [`Shortcut`]: ambit_ebpf_common::Shortcut

use ambit_ebpf_common::{PortKey, Shortcut, SockKey, flag, setting, shortcut_mode};
use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, bpf_sock_ops,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::{
    addr,
    maps::{LOOPBACK_SOCKS, ORIG_DST, ORIG_DST_BY_PORT, SHORTCUT_READS, SHORTCUTS, setting},
};

pub const AF_INET: u32 = 2;
/// `TCP_ESTABLISHED`, `TCP_CLOSE` and `TCP_CLOSE_WAIT` in
/// `include/net/tcp_states.h`.
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;

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
        BPF_SOCK_OPS_STATE_CB => {
            state_changed(ctx, ctx.arg(1));
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
    // Ask for state callbacks so ORIG_DST is cleaned when the socket closes
    // (and the shortcut stops at a shutdown).
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .map_err(i64::from)?;
    if !sockmap_enabled() {
        return Ok(());
    }
    let mut own = sock_key(ctx, orig.netns_cookie);
    // Data sent with the SYN (TCP Fast Open) went by TCP before the sk_msg
    // program could count it: such a connection is never redirected, or later
    // bytes could overtake it.
    // SAFETY: field address of the live context.
    let data_sent = addr::ctx_read(unsafe { &raw const (*ctx.ops).data_segs_out });
    if data_sent == 0 {
        // The record comes first: the application's first send must find it.
        // A stale record of an earlier connection with the same 4-tuple is
        // replaced.
        SHORTCUTS
            .insert(own.peer(), Shortcut::default(), u64::from(BPF_ANY))
            .map_err(i64::from)?;
    }
    add_to_sockhash(ctx, &mut own)
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
    let mut own = sock_key(ctx, netns_cookie);
    add_to_sockhash(ctx, &mut own)?;
    let Some(shortcut) = SHORTCUTS.get_ptr_mut(own) else {
        // The application's side has no record (sent data with its SYN, or
        // the map was full): its sends stay on TCP.
        return Ok(());
    };
    // ztunnel's reports start from 0 (a stale one of an earlier connection
    // with the same 4-tuple would hide unread bytes).
    SHORTCUT_READS
        .insert(own, 0, u64::from(BPF_ANY))
        .map_err(i64::from)?;
    // State callbacks remove the read record when the socket closes.
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .map_err(i64::from)?;
    // The socket is in the SockHash: the application's next send may be
    // redirected.
    // SAFETY: a pointer from a successful lookup is valid for this run.
    unsafe { core::ptr::write_volatile(&raw mut (*shortcut).ready, 1) };
    Ok(())
}

/// A shortcut socket changed state (only sockets that asked for the
/// callback: redirected application sockets and ztunnel's ends of them).
fn state_changed(ctx: &SockOpsContext, new_state: u32) {
    // SAFETY: the context is a valid bpf_sock_ops for this run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if new_state == TCP_CLOSE {
        // Absent for sockets that were never redirected: nothing to do then.
        let _ = ORIG_DST.remove(cookie);
    }
    if !sockmap_enabled() {
        return;
    }
    // SAFETY: bpf_get_netns_cookie accepts a sock_ops context (5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    let own = sock_key(ctx, netns_cookie);
    if ctx.local_port() == setting(setting::OUTBOUND_PORT) {
        // ztunnel's end: its read record goes with it.
        if new_state == TCP_CLOSE {
            let _ = SHORTCUT_READS.remove(own);
        }
        return;
    }
    if new_state == TCP_ESTABLISHED || new_state == TCP_CLOSE_WAIT {
        // The application may still send.
        return;
    }
    // The application shut down its sending side, or the connection ends:
    // later sends take TCP, which fails them (EPIPE) as without the shortcut,
    // and the end of the stream follows every redirected byte.
    let ztunnel_end = own.peer();
    if new_state == TCP_CLOSE {
        let _ = SHORTCUTS.remove(ztunnel_end);
    } else if let Some(shortcut) = SHORTCUTS.get_ptr_mut(ztunnel_end) {
        // SAFETY: a pointer from a successful lookup is valid for this run.
        unsafe { core::ptr::write_volatile(&raw mut (*shortcut).mode, shortcut_mode::CLOSED) };
    }
}

pub fn sockmap_enabled() -> bool {
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

/// The socket's own key in [`LOOPBACK_SOCKS`].
fn sock_key(ctx: &SockOpsContext, netns_cookie: u64) -> SockKey {
    let (local_addr, remote_addr) = addresses(ctx);
    SockKey {
        netns_cookie,
        local_addr,
        remote_addr,
        local_port: ctx.local_port() as u16,
        remote_port: addr::port_from_be_high(ctx.remote_port()),
        _pad: 0,
    }
}

fn add_to_sockhash(ctx: &SockOpsContext, key: &mut SockKey) -> Result<(), i64> {
    // SAFETY: the context is a valid bpf_sock_ops for this run.
    let ops: &mut bpf_sock_ops = unsafe { &mut *ctx.ops };
    LOOPBACK_SOCKS
        .update(key, ops, u64::from(BPF_ANY))
        .map_err(i64::from)
}
