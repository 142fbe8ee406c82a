//! bpffs: mounting it when the host has not, and pinning links so that a new
//! ztunnel takes over from the old one without a gap.

use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt, path::Path};

use aya::programs::links::{FdLink, PinnedLink};

use super::Error;

/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at [`BPFFS`] unless it is mounted there already.
pub fn ensure_bpffs() -> Result<(), Error> {
    let pin_error = |source| Error::Pin {
        path: BPFFS.into(),
        source,
    };
    if is_bpffs(Path::new(BPFFS)).map_err(pin_error)? {
        return Ok(());
    }
    let target = CString::new(BPFFS).expect("a constant without NUL");
    let fstype = CString::new("bpf").expect("a constant without NUL");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call;
    // no data argument is passed.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(pin_error(io::Error::last_os_error()));
    }
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is valid for writes.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(error)
        };
    }
    // f_type is `__fsword_t` (a long) on the 64-bit targets ztunnel supports.
    Ok(stat.f_type == BPF_FS_MAGIC)
}

/// Creates a directory (and its parents) in bpffs.
pub fn create_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Pin {
        path: path.to_owned(),
        source,
    })
}

/// Pins `link` at `path`, replacing whatever link was pinned there. The new link
/// is attached before the old one is released, so both run for a moment (they
/// do the same thing), and never neither.
pub fn replace_link(link: FdLink, path: &Path) -> Result<PinnedLink, Error> {
    let pin_error = |source| Error::Pin {
        path: path.to_owned(),
        source,
    };
    // bpffs refuses names with a '.' (EPERM): no extension for the staging pin.
    let mut staging = path.as_os_str().to_owned();
    staging.push("_staging");
    let staging = std::path::PathBuf::from(staging);
    remove(&staging)?;
    let pinned = link
        .pin(&staging)
        .map_err(|e| pin_error(io::Error::other(e)))?;
    // rename(2) replaces the old pin atomically; dropping the last reference to
    // the old link detaches it.
    fs::rename(&staging, path).map_err(pin_error)?;
    // The PinnedLink remembers the staging path; reopen it under its final name
    // so unpinning later removes the right file.
    drop(pinned);
    PinnedLink::from_pin(path).map_err(|e| pin_error(io::Error::other(e)))
}

/// Removes a pin; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Pin {
            path: path.to_owned(),
            source,
        }),
    }
}
