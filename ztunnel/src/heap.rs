//! Giving the heap that a burst of traffic left behind back to the kernel.
//!
//! glibc's allocator returns freed memory to the kernel only from the top of
//! a heap and for blocks it `mmap`ed on their own; pages freed in the middle
//! of a heap stay resident, free but counted in the process's memory, until a
//! later allocation reuses them. After 10,000 proxied connections closed,
//! about 25 MiB of ztunnel's heap were such pages (docs/benchmarks.md), and a
//! node agent whose memory never comes down after a peak looks like a leak to
//! whoever watches it. `malloc_trim(0)` hands every whole free page back
//! (`MADV_DONTNEED`: the pages stay mapped, so a later allocation simply
//! faults a fresh page in).
//!
//! Trimming walks the free lists under each arena's lock, and a thread that
//! allocates past glibc's per-thread cache waits for that lock, wherever the
//! trim runs: on a heap fragmented by 10,000 connections a trim holds it for
//! 3-14 ms (docs/benchmarks.md, "The heap check stalls the data path"). So
//! it is done only when there is something to give: when the resident
//! anonymous memory exceeds what the allocator has handed out by at least
//! [`SLACK`] more than it did after the last trim (some slack is not the
//! allocator's to give: thread stacks, free pieces smaller than a page). A
//! steady or idle process never trims. What the allocator has handed out is
//! counted as it goes ([`Counting`], ztunnel's global allocator), not asked
//! of glibc: `mallinfo2` walks the same free lists under the same locks, and
//! took 4-8 ms per check on such a heap.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;

/// How often the slack is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Resident but unallocated heap above which ztunnel trims.
pub const SLACK: u64 = 8 * 1024 * 1024;

/// Bytes of glibc's chunks that [`Counting`] has handed out and not had back.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The system allocator (glibc's), counting the bytes it holds for the
/// process (ztunnel's global allocator): one atomic addition per
/// allocation and one subtraction per release. Allocations of C code
/// (aws-lc's) are not seen; they are few and long-lived, and the trigger
/// measures slack from where it settled.
#[derive(Debug)]
pub struct Counting;

/// The chunk glibc takes for a block of `size` bytes: an 8-byte header,
/// 16-byte granules, 32 bytes at least. (A block it `mmap`s takes whole
/// pages: less than a page more, once per such block.)
const fn chunk(size: usize) -> usize {
    let granules = size.saturating_add(8 + 15) & !15;
    if granules < 32 { 32 } else { granules }
}

// SAFETY: every method calls `System`'s with the caller's arguments as they
// are; the count is arithmetic on the sizes, nothing else is touched.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            HELD.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            HELD.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: `block` came from `alloc`/`realloc` above, with `layout`.
        unsafe { System.dealloc(block, layout) };
        HELD.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        // On failure the old block stays, and so does its count.
        if !moved.is_null() {
            HELD.fetch_add(chunk(new_size), Ordering::Relaxed);
            HELD.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        }
        moved
    }
}

/// Bytes [`Counting`] holds for the process now; `None` when it is not the
/// global allocator (a running program always holds something).
pub fn held() -> Option<u64> {
    match HELD.load(Ordering::Relaxed) {
        0 => None,
        bytes => u64::try_from(bytes).ok(),
    }
}

/// What the allocator and the kernel say about the heap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident anonymous memory (`RssAnon`): heap, stacks, anonymous maps.
    pub resident: u64,
    /// Bytes the allocator has handed out and not had back ([`held`]).
    pub allocated: u64,
}

impl Usage {
    /// Now; `None` when `/proc/self/status` has no `RssAnon` or [`Counting`]
    /// is not the global allocator.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let resident = status.lines().find_map(|line| {
            let kib = line.strip_prefix("RssAnon:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })? * 1024;
        Some(Self {
            resident,
            allocated: held()?,
        })
    }

    /// Resident memory the allocator does not have handed out: free pages it
    /// keeps (and a little that is not the allocator's: thread stacks).
    pub fn slack(&self) -> u64 {
        self.resident.saturating_sub(self.allocated)
    }
}

/// Returns the heap's whole free pages to the kernel; the usage after.
pub fn trim() -> Option<Usage> {
    // SAFETY: malloc_trim only releases pages of free chunks (madvise) under
    // the allocator's locks; no pointer of ours is involved.
    unsafe { libc::malloc_trim(0) };
    Usage::read()
}

/// When to trim: the slack that stayed after the last trim (what trimming
/// could not give), followed down as the process reuses it.
#[derive(Debug, Default)]
pub struct Trigger {
    floor: u64,
}

impl Trigger {
    /// Whether a heap whose slack is `slack` now should be trimmed.
    pub fn due(&mut self, slack: u64) -> bool {
        self.floor = self.floor.min(slack);
        slack >= self.floor.saturating_add(SLACK)
    }

    /// After a trim that left `slack`.
    pub fn trimmed(&mut self, slack: u64) {
        self.floor = slack;
    }
}

/// Checks every [`CHECK_EVERY`] and trims when [`Trigger`] says so, counting
/// the bytes given back in `released`. Runs until the process ends.
pub async fn run(released: Counter) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trigger = Trigger::default();
    loop {
        every.tick().await;
        // A file read and a counter: no lock of the allocator's.
        let Some(usage) = Usage::read() else {
            continue;
        };
        if !trigger.due(usage.slack()) {
            continue;
        }
        let Ok(Some(after)) = tokio::task::spawn_blocking(trim).await else {
            continue;
        };
        trigger.trimmed(after.slack());
        let given = usage.resident.saturating_sub(after.resident);
        released.inc_by(given);
        tracing::debug!(
            slack = usage.slack(),
            before = usage.resident,
            after = after.resident,
            "trimmed the heap"
        );
    }
}

/// The unit tests count too, as ztunnel does.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: Counting = Counting;

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn trims_once_per_slack_it_can_give_and_follows_reuse_down() {
        let mut trigger = Trigger::default();
        assert!(!trigger.due(2 * MIB), "a small slack: nothing to give");
        assert!(trigger.due(40 * MIB), "a burst freed 40 MiB");
        // The trim could not give 10 MiB of it (pieces below a page).
        trigger.trimmed(10 * MIB);
        assert!(!trigger.due(12 * MIB), "no trim again for what stayed");
        assert!(!trigger.due(17 * MIB));
        assert!(trigger.due(18 * MIB), "8 MiB more than stayed");
        trigger.trimmed(10 * MIB);
        // The process reuses the free pieces, then frees 8 MiB again.
        assert!(!trigger.due(3 * MIB));
        assert!(trigger.due(11 * MIB));
    }

    #[test]
    fn the_count_follows_allocations_reallocations_and_releases() {
        // Large enough that what the other tests allocate meanwhile is noise;
        // never written, so never resident.
        const BIG: usize = 512 * 1024 * 1024;
        const NOISE: u64 = 128 * 1024 * 1024;
        let before = held().expect("the tests' allocator counts");
        let mut block: Vec<u8> = Vec::with_capacity(1024);
        block.reserve_exact(BIG);
        let grown = held().expect("counting");
        assert!(
            grown.abs_diff(before + BIG as u64) < NOISE,
            "{before} + {BIG} after a reallocation, counted {grown}"
        );
        drop(block);
        let after = held().expect("counting");
        assert!(
            after.abs_diff(before) < NOISE,
            "{before} before, {after} after"
        );
        // glibc's chunks: the header and 16-byte granules.
        assert_eq!(chunk(0), 32);
        assert_eq!(chunk(24), 32);
        assert_eq!(chunk(25), 48);
        assert_eq!(chunk(1024), 1040);
    }

    #[test]
    fn freed_pages_in_the_middle_of_the_heap_come_back() {
        // Many small blocks (below the mmap threshold, so on the heap), then
        // every one but each 64th freed: the heap cannot shrink from its top,
        // and the free pages stay resident until trimmed.
        const BLOCKS: usize = 64 * 1024;
        let mut blocks: Vec<Option<Box<[u8; 1024]>>> =
            (0..BLOCKS).map(|_| Some(Box::new([1u8; 1024]))).collect();
        for (i, block) in blocks.iter_mut().enumerate() {
            if i % 64 != 0 {
                *block = None;
            }
        }
        let Some(held) = Usage::read() else {
            panic!("/proc/self/status has no RssAnon");
        };
        assert!(
            held.slack() >= 32 * 1024 * 1024,
            "64 MiB written, 63 MiB freed: the slack should show it ({held:?})"
        );
        let Some(after) = trim() else {
            panic!("cannot read the usage after the trim");
        };
        assert!(
            held.resident - after.resident >= 32 * 1024 * 1024,
            "trimming gave back less than half the freed blocks: {held:?} -> {after:?}"
        );
        assert!(after.slack() < held.slack());
        // What is still allocated is untouched.
        assert!(blocks.iter().flatten().all(|b| b.iter().all(|&x| x == 1)));
    }
}
