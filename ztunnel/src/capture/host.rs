//! What the host must offer before any program is loaded: a recent enough kernel,
//! cgroup v2 and the privileges to load BPF and enter network namespaces.
//!
//! Each check fails with a message that names the missing piece, so an operator
//! knows what to change instead of reading a verifier log.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::util::KernelVersion;

/// The oldest kernel with every hook and helper the capture uses: `sk_lookup`
/// (5.9), netns cookies in sock_addr hooks (5.7), `getpeername` hooks (5.8), and
/// `bpf_get_netns_cookie` in `sockops` and `sk_msg` (5.15, the LTS after 5.10).
/// DESIGN.md section 3 says 5.10; the sockops/sk_msg helpers need 5.15.
pub const MIN_KERNEL: (u8, u8) = (5, 15);

/// Linux capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Why the host cannot run the capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The running kernel is older than [`MIN_KERNEL`].
    #[error("kernel {found} is too old: ztunnel needs Linux {}.{} or newer (sk_lookup, netns cookies in cgroup, sockops and sk_msg programs)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld {
        /// The running kernel, as `major.minor.patch`.
        found: String,
    },
    /// The kernel version could not be read.
    #[error("cannot read the running kernel's version")]
    KernelVersion(#[source] io::Error),
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo): mount one, for example `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    /// The process lacks capabilities it needs.
    #[error(
        "missing privileges {missing}: run ztunnel as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN"
    )]
    NotPrivileged {
        /// The missing capabilities, comma separated.
        missing: String,
    },
    /// A /proc file could not be read.
    #[error("cannot read {path}")]
    Proc {
        /// The file.
        path: &'static str,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
}

/// The capabilities this process holds that matter to the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    effective: u64,
}

impl Privileges {
    /// Reads the effective capability set of this process.
    pub fn current() -> Result<Self, HostError> {
        const PATH: &str = "/proc/self/status";
        let status =
            fs::read_to_string(PATH).map_err(|source| HostError::Proc { path: PATH, source })?;
        Ok(Self {
            effective: parse_cap_eff(&status).unwrap_or(0),
        })
    }

    /// The capabilities of the capture that this set lacks (empty: all present).
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (CAP_BPF, "CAP_BPF"),
            (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.effective & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
    }
}

/// Parses the `CapEff:` line of `/proc/<pid>/status` (hexadecimal bit set).
fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Checks that this host can run the capture: kernel, cgroup v2, privileges.
pub fn check_host() -> Result<(), HostError> {
    let kernel = KernelVersion::current()
        .map_err(|e| HostError::KernelVersion(io::Error::other(e.to_string())))?;
    check_kernel(kernel)?;
    cgroup2_mount()?.ok_or(HostError::NoCgroup2)?;
    let missing = Privileges::current()?.missing();
    if !missing.is_empty() {
        return Err(HostError::NotPrivileged {
            missing: missing.join(", "),
        });
    }
    Ok(())
}

/// Raises this process's open-file limit to its hard limit: ztunnel holds two
/// sockets per proxied connection, and the usual soft limit of 1024 would cap a
/// node at a few hundred. Returns the new limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for writes of an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit read above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Fails with [`HostError::KernelTooOld`] for a kernel older than
/// [`MIN_KERNEL`].
pub fn check_kernel(kernel: KernelVersion) -> Result<(), HostError> {
    if kernel < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        return Err(HostError::KernelTooOld {
            found: kernel.to_string(),
        });
    }
    Ok(())
}

/// Where the cgroup v2 hierarchy is mounted, if it is: `/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount() -> Result<Option<PathBuf>, HostError> {
    const PATH: &str = "/proc/self/mountinfo";
    let mountinfo =
        fs::read_to_string(PATH).map_err(|source| HostError::Proc { path: PATH, source })?;
    Ok(find_cgroup2(&mountinfo))
}

/// The id of the cgroup v2 directory `path` (its inode number, what
/// `bpf_get_current_cgroup_id` returns for a task in it).
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a cgroup directory",
        ));
    }
    Ok(metadata.ino())
}

/// The cgroup v2 directory of this process, under `mount` (the hierarchy as
/// this process sees it, so that a cgroup namespace is accounted for).
pub fn own_cgroup(mount: &Path) -> Result<PathBuf, HostError> {
    const PATH: &str = "/proc/self/cgroup";
    let text = fs::read_to_string(PATH).map_err(|source| HostError::Proc { path: PATH, source })?;
    let relative = own_cgroup_path(&text).ok_or(HostError::Proc {
        path: PATH,
        source: io::Error::new(io::ErrorKind::InvalidData, "no cgroup v2 entry (0::)"),
    })?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// The cgroup v2 path (`0::<path>`) in the text of `/proc/<pid>/cgroup`.
pub(crate) fn own_cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Finds the first cgroup2 mount point in the text of `/proc/self/mountinfo`.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>"
        let (fields, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = fields.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mount_path(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            find_cgroup2(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_on_a_unified_host_with_optional_fields() {
        let text = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(text), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_is_none_and_v1_is_not_mistaken_for_it() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(find_cgroup2(&v1_only), None);
        assert_eq!(find_cgroup2(""), None);
        assert_eq!(find_cgroup2("garbage without separator\n"), None);
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        let text = "1 2 0:1 / /mnt/my\\040cgroup rw - cgroup2 none rw\n";
        assert_eq!(find_cgroup2(text), Some(PathBuf::from("/mnt/my cgroup")));
        assert_eq!(
            unescape_mount_path("a\\\\b"),
            "a\\\\b",
            "a lone backslash pair is kept"
        );
    }

    #[test]
    fn privileges_name_each_missing_capability() {
        let all = 1u64 << CAP_BPF | 1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN;
        assert!(Privileges { effective: all }.missing().is_empty());
        assert_eq!(
            Privileges { effective: 0 }.missing(),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
        assert_eq!(
            Privileges {
                effective: 1 << CAP_BPF
            }
            .missing(),
            ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
    }

    #[test]
    fn kernels_below_5_15_are_refused_by_name() {
        for (major, minor, patch) in [(4, 19, 300), (5, 4, 0), (5, 10, 200), (5, 14, 21)] {
            let error = check_kernel(KernelVersion::new(major, minor, patch)).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("kernel {major}.{minor}.{patch} is too old")),
                "{error}"
            );
        }
        for (major, minor) in [(5, 15), (6, 1), (6, 18)] {
            assert!(check_kernel(KernelVersion::new(major, minor, 0)).is_ok());
        }
    }

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tztunnel\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapEff:\tnothex\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }
}
