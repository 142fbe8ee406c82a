//! The contract between ambit's eBPF programs (kernel side) and ztunnel (user side).
//!
//! Everything stored in a BPF map is declared here once: map names, key and value
//! layouts and their limits. Both sides compile this crate, so a change to a layout
//! is a change to both. Layouts are `#[repr(C)]` with fixed-width integers and
//! explicit padding, because the verifier and the user side read the raw bytes.
#![no_std]
#![warn(missing_docs)]

/// Names of the maps, as they appear in the object file and under the pin path.
///
/// The user side looks maps up by these constants, never by a literal.
pub mod map_name {
    /// `PerCpuHashMap<u64, u64>`: network-namespace cookie (`bpf_get_netns_cookie`,
    /// `SO_NETNS_COOKIE`) -> number of `connect()` calls seen by the
    /// `cgroup/connect4` program from sockets in that namespace, one counter per
    /// CPU (the reader sums them).
    pub const CONNECT_COUNTS: &str = "CONNECT_COUNTS";
}

/// Names of the programs (the Rust function names in `ambit-ebpf`).
///
/// A function name must differ from its section name (`sockops`, `sk_msg`, ...),
/// or the loader cannot tell them apart (DESIGN.md section 11).
pub mod program_name {
    /// `cgroup/connect4`: counts IPv4 connects per network namespace.
    pub const COUNT_CONNECT4: &str = "count_connect4";
}

/// Capacity of [`map_name::CONNECT_COUNTS`]: the number of distinct network
/// namespaces (pods) one node can track. A node with more pods than this stops
/// counting new ones; it never fails a connect because of it.
pub const CONNECT_COUNTS_CAPACITY: u32 = 16_384;
