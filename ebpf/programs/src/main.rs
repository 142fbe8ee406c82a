//! ambit's kernel-side programs.
//!
//! Each entry function is tiny: it calls `try_<program>` and maps both arms of the
//! result to the return code the hook expects. No program may panic or loop
//! without a bound; the panic handler below is unreachable and the verifier would
//! reject any program that could reach it.
#![no_std]
#![no_main]

use ambit_ebpf_common::{CONNECT_COUNTS_CAPACITY, map_name};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_netns_cookie,
    macros::{cgroup_sock_addr, map},
    maps::PerCpuHashMap,
    programs::SockAddrContext,
};

/// `connect()` hooks return 1 to let the call proceed and 0 to fail it with EPERM.
const ALLOW: i32 = 1;

#[map(name = "CONNECT_COUNTS")]
static CONNECT_COUNTS: PerCpuHashMap<u64, u64> =
    PerCpuHashMap::with_max_entries(CONNECT_COUNTS_CAPACITY, 0);

// The map name in the attribute above must match the shared constant; this fails
// the build when they drift apart.
const _: () = assert!(const_str_eq(map_name::CONNECT_COUNTS, "CONNECT_COUNTS"));

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

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: the verifier rejects programs that can get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
