//! `cgroup/connect4`: counts connects per network namespace.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::maps::CONNECT_COUNTS;

/// `connect()` hooks return 1 to let the call proceed and 0 to fail it with EPERM.
const ALLOW: i32 = 1;

/// Counts IPv4 `connect()` calls per network namespace of the connecting socket.
///
/// Never blocks a connect: a full map only means the namespace is not counted.
#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro defines the entry signature"
)]
pub fn count_connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_count_connect4(&ctx);
    ALLOW
}

fn try_count_connect4(ctx: &SockAddrContext) -> Result<(), i32> {
    // SAFETY: `sock_addr` is the context pointer the kernel passed to this program;
    // bpf_get_netns_cookie accepts a bpf_sock_addr context in connect hooks (5.7+).
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if increment(&cookie) {
        return Ok(());
    }
    // First connect from this namespace. BPF_NOEXIST: when another CPU inserted the
    // key between the lookup and here, the insert fails and the retry below counts
    // in this CPU's slot of the new entry.
    if CONNECT_COUNTS
        .insert(cookie, 1, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return Ok(());
    }
    if increment(&cookie) { Ok(()) } else { Err(-1) }
}

/// Adds one to the counter of `cookie`; false when the key is absent.
fn increment(cookie: &u64) -> bool {
    match CONNECT_COUNTS.get_ptr_mut(cookie) {
        Some(count) => {
            // SAFETY: the pointer comes from a successful lookup and stays valid for
            // this run. The map is per CPU and the program is not re-entered on one
            // CPU, so no other writer touches this slot (the BPF target has no
            // atomic fetch-add; user space sums the CPUs).
            unsafe { *count += 1 };
            true
        }
        None => false,
    }
}
