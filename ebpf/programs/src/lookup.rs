//! `sk_lookup`, attached to each enrolled pod's network namespace: steers inbound
//! TCP that arrives from outside the pod to ztunnel's listeners. Destination port
//! 15008 goes to the HBONE listener, any other port to the plaintext listener;
//! the accepted socket keeps the original destination as its local address.
//!
//! Fails closed: when the pod is enrolled but no listener is registered (ztunnel
//! is restarting or gone), the connection is refused, never delivered to the
//! application around the mesh.
//!
//! ztunnel's own connects to the application, made from the client's address,
//! are delivered: packets sent to the pod's own address look, here, as if they
//! had arrived on the pod's interface, so ztunnel registers each such flow in
//! TRANSPARENT_FLOWS before connecting.

use ambit_ebpf_common::{FlowKey, ListenerKey, setting};
use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};

use crate::{
    addr,
    maps::{LISTENERS, TRANSPARENT_FLOWS, setting},
};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;
/// The loopback device is always interface 1 in a network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the program's lifetime.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let hbone = setting(setting::HBONE_PORT);
    let port = if lookup.local_port == hbone {
        hbone
    } else {
        setting(setting::INBOUND_PLAINTEXT_PORT)
    };
    let ptr = ctx.lookup;
    // SAFETY (both reads): field addresses of the live context. Both families are
    // read and the family picks a value: a field chosen by branch can be merged
    // into a load through a computed context pointer, which the verifier rejects.
    let (local4, local6) = unsafe {
        (
            addr::ctx_read(&raw const (*ptr).local_ip4),
            addr::ctx_read_ip6(&raw const (*ptr).local_ip6),
        )
    };
    let local = if lookup.family == AF_INET {
        addr::from_ip4(local4)
    } else {
        local6
    };
    // SAFETY (all reads): field addresses of the live context.
    let (remote4, remote6, remote_port) = unsafe {
        (
            addr::ctx_read(&raw const (*ptr).remote_ip4),
            addr::ctx_read_ip6(&raw const (*ptr).remote_ip6),
            addr::ctx_read(&raw const (*ptr).remote_port),
        )
    };
    let flow = FlowKey {
        local_addr: local,
        remote_addr: if lookup.family == AF_INET {
            addr::from_ip4(remote4)
        } else {
            remote6
        },
        local_port: lookup.local_port as u16,
        remote_port: u16::from_be(remote_port),
        _pad: 0,
    };
    if TRANSPARENT_FLOWS.get_ptr(flow).is_some() {
        return SK_PASS;
    }
    let key = ListenerKey {
        addr: local,
        port: port as u16,
        _pad: [0; 6],
    };
    match LISTENERS.redirect_sk_lookup(&ctx, key, 0) {
        Ok(()) => SK_PASS,
        Err(_) => SK_DROP,
    }
}
