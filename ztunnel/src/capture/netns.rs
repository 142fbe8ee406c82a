//! Network namespaces: entering one to create sockets, and naming one by its
//! cookie.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole
//! life. So ztunnel only has to be inside a pod's namespace for the instant it
//! creates a socket; binding, connecting and serving happen from any thread.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::OnceLock,
    thread,
};

use super::Error;

/// The kernel's 64-bit identifier of a network namespace: what
/// `bpf_get_netns_cookie` returns in a program and `SO_NETNS_COOKIE` in user
/// space. Stable for the namespace's lifetime and never reused while the system
/// runs, unlike an inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NetnsCookie(u64);

impl NetnsCookie {
    /// The raw cookie, as used in map keys.
    pub fn get(self) -> u64 {
        self.0
    }

    /// A cookie read back from a map key.
    pub(crate) fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

impl std::fmt::Display for NetnsCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An open network namespace (a pod's), with its cookie.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
    cookie: NetnsCookie,
}

impl Netns {
    /// Opens the namespace file at `path` (for example `/var/run/netns/<name>`)
    /// and reads its cookie.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let netns_error = |source| Error::Netns {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(netns_error)?;
        let mut netns = Self {
            path: path.to_owned(),
            file,
            cookie: NetnsCookie(0),
        };
        // The cookie of the namespace this file is (not of whatever the path
        // names by now).
        netns.cookie = NetnsCookie(netns.run(socket_netns_cookie)?.map_err(netns_error)?);
        Ok(netns)
    }

    /// The identity of the open namespace file (see [`super::NetnsId`]).
    pub fn id(&self) -> Result<super::NetnsId, Error> {
        super::NetnsId::of_file(&self.file).map_err(|source| Error::Netns {
            path: self.path.clone(),
            source,
        })
    }

    /// The namespace file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's cookie.
    pub fn cookie(&self) -> NetnsCookie {
        self.cookie
    }

    /// The open namespace file.
    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on the current thread while it is inside this namespace, then
    /// returns the thread to the process's own namespace.
    ///
    /// `f` must be short and synchronous (create a socket, write a sysctl): while
    /// it runs the thread is in the pod's namespace, and an async runtime would
    /// otherwise run unrelated work there.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        let netns_error = |source| Error::Netns {
            path: self.path.clone(),
            source,
        };
        let home =
            home_netns().map_err(|e| netns_error(io::Error::new(e.kind(), e.to_string())))?;
        setns(self.file.as_fd()).map_err(netns_error)?;
        let result = f();
        if let Err(error) = setns(home.as_fd()) {
            // A thread stuck in a pod's namespace would create later sockets there:
            // no safe way to continue.
            tracing::error!(%error, netns = %self.path.display(), "Bug: cannot return to ztunnel's network namespace");
            std::process::abort();
        }
        Ok(result)
    }
}

/// The network namespace ztunnel itself runs in, opened once.
fn home_netns() -> Result<&'static File, &'static io::Error> {
    static HOME: OnceLock<io::Result<File>> = OnceLock::new();
    // /proc/self is the thread-group leader, whose namespace never changes: only
    // short `Netns::run` calls on other threads switch, and they switch back.
    HOME.get_or_init(|| File::open("/proc/self/ns/net"))
        .as_ref()
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only changes the calling thread's network namespace; `fd` is
    // an open namespace file borrowed for the duration of the call.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a dedicated thread that has joined the network namespace at
/// `netns`, and returns what it returns. For work that may block or take long;
/// the calling thread's namespace is never changed.
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
            // This thread runs nothing but `f` and ends after it, so nothing else
            // ever sees the changed namespace.
            setns(file.as_fd())?;
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

/// The cookie of the calling thread's network namespace (ztunnel's own, the
/// node's, on any thread but those that entered a pod).
pub fn own_netns_cookie() -> Result<NetnsCookie, Error> {
    socket_netns_cookie()
        .map(NetnsCookie)
        .map_err(|source| Error::Netns {
            path: "/proc/self/ns/net".into(),
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
