//! Names that say which test process owns a resource, so parallel tests never
//! collide and a later run can tell a crashed run's leftovers from live ones.
//!
//! Every network namespace and cgroup of a testbed is named
//! `amb-<pid>-<start>-<seq>-<tag>...`: the owning process, its start time (so a
//! reused pid is not mistaken for the owner) and a per-process sequence number.

use std::{
    fs,
    sync::atomic::{AtomicU32, Ordering},
};

/// The first word of every name the testbed creates.
pub const PREFIX: &str = "amb";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A fresh prefix for one testbed of this process, with `tag` (the test name) in
/// it for whoever reads `ip netns list`.
pub fn new_prefix(tag: &str) -> String {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    let pid = std::process::id();
    format!(
        "{PREFIX}-{pid}-{}-{seq}-{tag}",
        start_time(pid).unwrap_or(0)
    )
}

/// The start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or `None` when no such process runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count the
    // fields after its closing parenthesis, where field 3 is the first.
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `name` was made by a testbed whose process no longer runs. Names not
/// made by a testbed are never stale.
pub fn is_stale(name: &str) -> bool {
    let mut parts = name.split('-');
    if parts.next() != Some(PREFIX) {
        return false;
    }
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_carry_a_clean_tag() {
        let a = new_prefix("my test::Name");
        let b = new_prefix("my test::Name");
        assert_ne!(a, b);
        assert!(a.starts_with("amb-"), "{a}");
        assert!(a.ends_with("-my_test__name"), "{a}");
        assert!(!a.contains(' '));
    }

    #[test]
    fn live_names_are_not_stale_and_dead_ones_are() {
        let live = new_prefix("t");
        assert!(!is_stale(&live));
        assert!(!is_stale(&format!("{live}-n-a")));
        // pid_max is at most 2^22: this pid cannot run.
        assert!(is_stale("amb-4194305-123-0-t-n-a"));
        // Our own pid with another start time is a previous process that had it.
        assert!(is_stale(&format!("amb-{}-1-0-t", std::process::id())));
    }

    #[test]
    fn foreign_names_are_never_stale() {
        for name in [
            "",
            "cni-1234",
            "amb",
            "amb-x-1-0",
            "ambx-1-1-0",
            "amb-1-notanumber-0",
        ] {
            assert!(!is_stale(name), "{name}");
        }
    }
}
