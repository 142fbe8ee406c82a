//! The loopback shortcut: `sk_msg` hands an application's sends straight to
//! ztunnel's socket while ztunnel keeps up.
//!
//! A redirect (`bpf_msg_redirect_hash` with `BPF_F_INGRESS`) appends the data to
//! the receiving socket's `psock->ingress_msg` (`bpf_tcp_ingress` in
//! `net/ipv4/tcp_bpf.c`), charged only against the node-wide `tcp_mem` limit:
//! nothing slows the sender, whose own gate (`sk_stream_memory_free`) looks at
//! a write queue that redirected bytes never enter. So the program keeps the
//! bound itself: it redirects only while the bytes the application sent and
//! ztunnel has not read (by ztunnel's own reports) stay within a cap, and
//! sends the rest by TCP, whose buffers block or slow the sender as usual.
//! ztunnel reads `ingress_msg` before its TCP receive queue
//! (`tcp_bpf_recvmsg`), so redirect-then-TCP keeps the byte order; TCP is
//! followed by the redirect only once ztunnel has read everything sent.
//! Only the application -> ztunnel direction is redirected: its reader is
//! ztunnel's non-blocking `recvmsg`, never `splice`, `MSG_WAITALL` or a reader
//! parked in `tcp_recvmsg`, which would not see `ingress_msg`.

use ambit_ebpf_common::{SockKey, setting, shortcut_mode, shortcut_stat};
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};

use crate::{
    addr,
    maps::{LOOPBACK_SOCKS, SHORTCUT_READS, SHORTCUTS, count_shortcut, setting},
    sockops::{AF_INET, sockmap_enabled},
};

#[sk_msg]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn shortcut_loopback(ctx: SkMsgContext) -> u32 {
    if sockmap_enabled() {
        decide(&ctx);
    }
    // Without a redirect the message goes through the TCP stack as usual.
    SK_PASS
}

/// Redirects the message when the shortcut may take it, and counts it either
/// way. Runs under the sending socket's lock, so the sender's record is only
/// ever written by one program run at a time.
#[inline(always)]
fn decide(ctx: &SkMsgContext) {
    let msg = ctx.msg;
    // SAFETY (all reads): field addresses of the live context.
    let local_port = addr::ctx_read(unsafe { &raw const (*msg).local_port });
    if local_port == setting(setting::OUTBOUND_PORT) {
        // ztunnel's own sends to the application always take TCP.
        return;
    }
    let mut ztunnel_end = peer_key(ctx);
    let Some(shortcut) = SHORTCUTS.get_ptr_mut(ztunnel_end) else {
        return;
    };
    let size = u64::from(ctx.size());
    // SAFETY (all accesses to `shortcut`): a pointer from a successful lookup
    // is valid for this run, and only program runs under this socket's lock
    // write `sent` and `mode` (and `sockops`, for this socket, `mode`).
    let (sent, mode, ready) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*shortcut).sent),
            core::ptr::read_volatile(&raw const (*shortcut).mode),
            core::ptr::read_volatile(&raw const (*shortcut).ready),
        )
    };
    let mut new_mode = if mode == shortcut_mode::CLOSED {
        shortcut_mode::CLOSED
    } else {
        shortcut_mode::TCP
    };
    if ready != 0 && setting(setting::TCP_PRESSURE) == 0 && mode != shortcut_mode::CLOSED {
        // What ztunnel last reported read; a stale report only over-counts
        // what is unread. No report yet: nothing read.
        // SAFETY: a pointer from a successful lookup is valid for this run.
        let read = SHORTCUT_READS
            .get_ptr(ztunnel_end)
            .map_or(0, |p| unsafe { core::ptr::read_volatile(p) });
        // Wraps to a huge value if the counts ever disagree the other way,
        // which then keeps TCP.
        let unread = sent.wrapping_sub(read);
        let cap = u64::from(setting(setting::SHORTCUT_CAP));
        let may_redirect = if mode == shortcut_mode::TCP {
            // Back from TCP only when nothing sent is left unread: bytes on
            // the TCP path would be overtaken.
            unread == 0 && size <= cap
        } else {
            unread <= cap && size <= cap - unread
        };
        if may_redirect {
            if LOOPBACK_SOCKS.redirect_msg(ctx, &mut ztunnel_end, u64::from(BPF_F_INGRESS))
                == i64::from(SK_PASS)
            {
                new_mode = shortcut_mode::REDIRECT;
            } else {
                // ztunnel's socket left the SockHash: it is closing.
                new_mode = shortcut_mode::CLOSED;
            }
        }
    }
    if new_mode == shortcut_mode::REDIRECT {
        count_shortcut(shortcut_stat::REDIRECTED_BYTES, size);
        if mode == shortcut_mode::TCP {
            count_shortcut(shortcut_stat::TO_REDIRECT, 1);
        }
    } else {
        count_shortcut(shortcut_stat::TCP_BYTES, size);
        if mode == shortcut_mode::REDIRECT {
            count_shortcut(shortcut_stat::TO_TCP, 1);
        }
    }
    if new_mode != mode {
        // SAFETY: see above.
        unsafe { core::ptr::write_volatile(&raw mut (*shortcut).mode, new_mode) };
    }
    // Counted before the bytes can reach ztunnel, so a report never passes it.
    // SAFETY: see above.
    unsafe { core::ptr::write_volatile(&raw mut (*shortcut).sent, sent.wrapping_add(size)) };
}

/// The key of the receiving end (ztunnel's socket): the sender's own 4-tuple
/// with local and remote swapped, in the same network namespace.
#[inline(always)]
fn peer_key(ctx: &SkMsgContext) -> SockKey {
    let msg = ctx.msg;
    // SAFETY: bpf_get_netns_cookie accepts an sk_msg context (5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(msg.cast()) };
    // SAFETY (all reads): field addresses of the live context. Both families
    // are read and the family picks a value (see `sockops::addresses`).
    let (local4, remote4, local6, remote6, family, local_port, remote_port) = unsafe {
        (
            addr::ctx_read(&raw const (*msg).local_ip4),
            addr::ctx_read(&raw const (*msg).remote_ip4),
            addr::ctx_read_ip6(&raw const (*msg).local_ip6),
            addr::ctx_read_ip6(&raw const (*msg).remote_ip6),
            addr::ctx_read(&raw const (*msg).family),
            addr::ctx_read(&raw const (*msg).local_port),
            addr::ctx_read(&raw const (*msg).remote_port),
        )
    };
    let (local, remote) = if family == AF_INET {
        (addr::from_ip4(local4), addr::from_ip4(remote4))
    } else {
        (local6, remote6)
    };
    SockKey {
        netns_cookie,
        local_addr: local,
        remote_addr: remote,
        local_port: local_port as u16,
        remote_port: addr::port_from_be_high(remote_port),
        _pad: 0,
    }
    .peer()
}
