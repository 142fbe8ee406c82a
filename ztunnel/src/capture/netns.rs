//! Network namespaces: running code inside one, and naming one by its cookie.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    thread,
};

use super::Error;

/// The kernel's 64-bit identifier of a network namespace: what
/// `bpf_get_netns_cookie` returns in a program and `SO_NETNS_COOKIE` in user
/// space. Stable for the namespace's lifetime and never reused while the system
/// runs, unlike an inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsCookie(u64);

impl NetnsCookie {
    /// The raw cookie, as used in map keys.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for NetnsCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Runs `f` on a dedicated thread that has joined the network namespace at
/// `netns` (for example `/var/run/netns/<name>`), and returns what it returns.
///
/// Sockets created by `f` belong to that namespace and keep belonging to it after
/// the thread ends, so they can be handed back and served from any runtime. The
/// calling thread's namespace is never changed.
pub fn in_netns<T, F>(netns: &Path, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let netns_error = |source| Error::Netns {
        path: netns.to_owned(),
        source,
    };
    let file = File::open(netns).map_err(netns_error)?;
    let thread = thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> io::Result<T> {
            // SAFETY: setns only changes this thread's namespace; `file` is an open
            // namespace file that outlives the call. This thread runs nothing but `f`
            // and ends after it, so no other code sees the changed namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .map_err(netns_error)?;
    match thread.join() {
        Ok(result) => result.map_err(netns_error),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The cookie of the network namespace at `netns`.
pub fn netns_cookie(netns: &Path) -> Result<NetnsCookie, Error> {
    in_netns(netns, socket_netns_cookie)?
        .map(NetnsCookie)
        .map_err(|source| Error::Netns {
            path: netns.to_owned(),
            source,
        })
}

/// Reads `SO_NETNS_COOKIE` (Linux 5.14+) from a fresh socket of the current
/// thread's network namespace.
fn socket_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
