//! The maps, named by the constants of `ambit-ebpf-common`.
//!
//! Maps that must outlive a ztunnel restart are pinned by name (the user side sets
//! the directory); the connect counter is not.

use ambit_ebpf_common::{
    CONNECT_COUNTS_CAPACITY, ENROLLED_CAPACITY, EXCLUDED_NETS_CAPACITY, FlowKey,
    LISTENERS_CAPACITY, LOOPBACK_SOCKS_CAPACITY, ListenerKey, NODE_IDS_SLOTS, ORIG_DST_CAPACITY,
    OrigDst, POD_ADDRS_CAPACITY, PortKey, SETTINGS_SLOTS, SHORTCUT_STATS_SLOTS, SHORTCUTS_CAPACITY,
    Shortcut, SockKey, TRANSPARENT_FLOWS_CAPACITY, map_name,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
};

#[map(name = "CONNECT_COUNTS")]
pub static CONNECT_COUNTS: PerCpuHashMap<u64, u64> =
    PerCpuHashMap::with_max_entries(CONNECT_COUNTS_CAPACITY, 0);

#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, u32> = HashMap::pinned(ENROLLED_CAPACITY, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<u32> = Array::pinned(SETTINGS_SLOTS, 0);

#[map(name = "ORIG_DST")]
pub static ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::pinned(ORIG_DST_CAPACITY, 0);

#[map(name = "ORIG_DST_BY_PORT")]
pub static ORIG_DST_BY_PORT: LruHashMap<PortKey, OrigDst> =
    LruHashMap::pinned(ORIG_DST_CAPACITY, 0);

#[map(name = "LOOPBACK_SOCKS")]
pub static LOOPBACK_SOCKS: SockHash<SockKey> = SockHash::pinned(LOOPBACK_SOCKS_CAPACITY, 0);

#[map(name = "LISTENERS")]
pub static LISTENERS: SockHash<ListenerKey> = SockHash::pinned(LISTENERS_CAPACITY, 0);

#[map(name = "TRANSPARENT_FLOWS")]
pub static TRANSPARENT_FLOWS: LruHashMap<FlowKey, u8> =
    LruHashMap::pinned(TRANSPARENT_FLOWS_CAPACITY, 0);

#[map(name = "EXCLUDED_NETS")]
pub static EXCLUDED_NETS: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(EXCLUDED_NETS_CAPACITY, 0);

#[map(name = "NODE_IDS")]
pub static NODE_IDS: Array<u64> = Array::pinned(NODE_IDS_SLOTS, 0);

#[map(name = "POD_ADDRS")]
pub static POD_ADDRS: HashMap<[u8; 16], u32> = HashMap::pinned(POD_ADDRS_CAPACITY, 0);

#[map(name = "SHORTCUTS")]
pub static SHORTCUTS: LruHashMap<SockKey, Shortcut> = LruHashMap::pinned(SHORTCUTS_CAPACITY, 0);

#[map(name = "SHORTCUT_READS")]
pub static SHORTCUT_READS: LruHashMap<SockKey, u64> = LruHashMap::pinned(SHORTCUTS_CAPACITY, 0);

#[map(name = "SHORTCUT_STATS")]
pub static SHORTCUT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(SHORTCUT_STATS_SLOTS, 0);

// The names in the attributes above must match the shared constants; these fail
// the build when they drift apart.
const _: () = {
    assert!(eq(map_name::CONNECT_COUNTS, "CONNECT_COUNTS"));
    assert!(eq(map_name::ENROLLED, "ENROLLED"));
    assert!(eq(map_name::SETTINGS, "SETTINGS"));
    assert!(eq(map_name::ORIG_DST, "ORIG_DST"));
    assert!(eq(map_name::ORIG_DST_BY_PORT, "ORIG_DST_BY_PORT"));
    assert!(eq(map_name::LOOPBACK_SOCKS, "LOOPBACK_SOCKS"));
    assert!(eq(map_name::LISTENERS, "LISTENERS"));
    assert!(eq(map_name::EXCLUDED_NETS, "EXCLUDED_NETS"));
    assert!(eq(map_name::TRANSPARENT_FLOWS, "TRANSPARENT_FLOWS"));
    assert!(eq(map_name::NODE_IDS, "NODE_IDS"));
    assert!(eq(map_name::POD_ADDRS, "POD_ADDRS"));
    assert!(eq(map_name::SHORTCUTS, "SHORTCUTS"));
    assert!(eq(map_name::SHORTCUT_READS, "SHORTCUT_READS"));
    assert!(eq(map_name::SHORTCUT_STATS, "SHORTCUT_STATS"));
};

const fn eq(a: &str, b: &str) -> bool {
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

/// A value of the SETTINGS array (0 when unset).
#[inline(always)]
pub fn setting(slot: u32) -> u32 {
    SETTINGS.get(slot).copied().unwrap_or(0)
}

/// A value of the NODE_IDS array (0 when unset).
#[inline(always)]
pub fn node_id(slot: u32) -> u64 {
    NODE_IDS.get(slot).copied().unwrap_or(0)
}

/// Adds `n` to a counter of [`SHORTCUT_STATS`].
#[inline(always)]
pub fn count_shortcut(slot: u32, n: u64) {
    if let Some(value) = SHORTCUT_STATS.get_ptr_mut(slot) {
        // SAFETY: a pointer from a successful lookup is valid for this run, and
        // the per-CPU slot is only written from this CPU.
        unsafe { *value += n };
    }
}
