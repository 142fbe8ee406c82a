//! ambit's kernel-side programs.
//!
//! Each entry function is tiny: it calls `try_<program>` and maps both arms of the
//! result to the return code the hook expects. No program may panic or loop
//! without a bound; the panic handler below is unreachable and the verifier would
//! reject any program that could reach it.
//!
//! - `counter`: counts connects per network namespace (the first program, kept as
//!   the smallest end-to-end check of the build/load/attach/read chain).
//! - `connect`: `cgroup/connect4|6` redirect enrolled pods' TCP connects to
//!   ztunnel; `cgroup/getpeername4|6` show them the original destination;
//!   `cgroup/bind4|6` keep the kubelet's probe address to the kubelet.
//! - `sockops`: publishes original destinations by port and fills the SockHash.
//! - `shortcut`: `sk_msg` moves an application's sends straight to ztunnel's
//!   socket while ztunnel keeps up (ztunnel reports what it reads).
//! - `lookup`: `sk_lookup` steers inbound connections to ztunnel's listeners.
#![no_std]
#![no_main]

mod addr;
mod connect;
mod counter;
mod lookup;
mod maps;
mod shortcut;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: the verifier rejects programs that can get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
