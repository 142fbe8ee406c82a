//! The loopback shortcut's state outside the data path: its counters, and the
//! node's TCP memory, which turns new redirects off while it is under pressure.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use ambit_ebpf_common::{
    SETTINGS_SLOTS, Shortcut, SockKey, map_name, setting, shortcut_mode, shortcut_stat,
};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, SockHash};

use super::{Error, NetnsCookie, map_error, mapped, pinned_map};

/// The key of a loopback socket in `LOOPBACK_SOCKS` and the shortcut's maps:
/// its own addresses, in the network namespace `netns`.
fn sock_key(netns: NetnsCookie, local: SocketAddr, peer: SocketAddr) -> SockKey {
    SockKey {
        netns_cookie: netns.get(),
        local_addr: mapped(local.ip()),
        remote_addr: mapped(peer.ip()),
        local_port: local.port(),
        remote_port: peer.port(),
        _pad: 0,
    }
}

/// `BPF_EXIST`: update an entry only if it is there (a report never brings
/// back the record of a connection that closed).
const BPF_EXIST: u64 = 2;

/// The burst after which a drained socket reports (see
/// [`ReadCounter::drained`]).
pub const DRAINED_REPORT_MIN: u64 = 64 * 1024;

/// ztunnel's reports of what it read from its shortcut sockets, which let the
/// `sk_msg` program keep redirecting while ztunnel keeps up, and the way a
/// bulk connection leaves the shortcut for good. Cheap to clone.
#[derive(Clone)]
pub struct ShortcutReads {
    map: Arc<Mutex<HashMap<MapData, SockKey, u64>>>,
    /// The connections' records (`SHORTCUTS`): which path their sends take.
    records: Arc<HashMap<MapData, SockKey, Shortcut>>,
    /// `LOOPBACK_SOCKS`, where a bulk connection's application socket is
    /// removed from.
    socks: Arc<Mutex<SockHash<MapData, SockKey>>>,
    /// Report after this many bytes read since the last report.
    every: u64,
    /// A connection read this far without its socket reading dry, and on
    /// TCP, is a bulk stream (see [`ReadCounter::leave_if_bulk`]); 0: never.
    bulk: u64,
    /// Bulk connections taken off the shortcut by this process.
    left: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for ShortcutReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShortcutReads")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl ShortcutReads {
    /// Opens the maps pinned under `pin_dir`; `cap` is the shortcut's cap,
    /// `bulk` the stream that leaves it (0: none does).
    pub fn open(pin_dir: &Path, cap: u32, bulk: u64) -> Result<Self, Error> {
        let name = map_name::SHORTCUT_READS;
        let map = pinned_map(pin_dir, name, aya::maps::Map::LruHashMap)?;
        let records = pinned_map(pin_dir, map_name::SHORTCUTS, aya::maps::Map::LruHashMap)?;
        let socks = pinned_map(pin_dir, map_name::LOOPBACK_SOCKS, aya::maps::Map::SockHash)?;
        Ok(Self {
            map: Arc::new(Mutex::new(map)),
            records: Arc::new(records),
            socks: Arc::new(Mutex::new(socks)),
            // A quarter of the cap: one map update per 256 KiB read by
            // default, and the redirect goes on while ztunnel is within
            // three quarters of the cap.
            every: u64::from(cap / 4).max(1),
            bulk,
            left: Arc::default(),
        })
    }

    /// Bulk connections this process took off the shortcut (see
    /// [`ReadCounter::leave_if_bulk`]).
    pub fn left_for_tcp(&self) -> u64 {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The counter of one accepted connection: `local` and `peer` are the
    /// addresses of ztunnel's socket, in the pod's network namespace `netns`.
    pub fn counter(&self, netns: NetnsCookie, local: SocketAddr, peer: SocketAddr) -> ReadCounter {
        ReadCounter {
            reads: self.clone(),
            key: sock_key(netns, local, peer),
            total: 0,
            reported: 0,
            since_drained: 0,
            may_leave: self.bulk > 0,
        }
    }
}

/// Counts what ztunnel read from one shortcut socket and reports it every
/// so many bytes, and when the socket is drained. A report that fails, or
/// comes late, only makes the connection leave the redirect for TCP sooner,
/// or return to it later.
#[derive(Debug)]
pub struct ReadCounter {
    reads: ShortcutReads,
    key: SockKey,
    total: u64,
    reported: u64,
    /// Read since the socket was last read dry.
    since_drained: u64,
    /// The connection may still be taken off the shortcut: a bulk size is
    /// set, and it has neither left nor closed.
    may_leave: bool,
}

impl ReadCounter {
    /// `n` more bytes were read.
    pub fn add(&mut self, n: usize) {
        self.total = self.total.wrapping_add(n as u64);
        self.since_drained = self.since_drained.saturating_add(n as u64);
        if self.total.wrapping_sub(self.reported) >= self.reads.every {
            self.report();
        }
    }

    /// The socket had nothing more to read. After a burst of at least
    /// [`DRAINED_REPORT_MIN`] (which is what takes a connection past the cap
    /// and onto TCP), report the exact total: it lets the connection return
    /// to the redirect, which needs everything sent to be read. After small
    /// reads (request/response traffic on the redirect), nothing: no map
    /// update per request.
    pub fn drained(&mut self) {
        if self.since_drained >= DRAINED_REPORT_MIN && self.total != self.reported {
            self.report();
        }
        self.since_drained = 0;
    }

    fn report(&mut self) {
        let mut map = self
            .reads
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Gone (the connection is closing, or the record was evicted): the
        // program then sends by TCP anyway.
        let _ = map.insert(self.key, self.total, BPF_EXIST);
        drop(map);
        self.reported = self.total;
        if self.may_leave && self.since_drained >= self.reads.bulk {
            self.leave_if_bulk();
        }
    }

    /// Takes a bulk connection off the shortcut for good: one read the `bulk`
    /// bytes of [`ShortcutReads::open`] without a pause (the socket never
    /// read dry) whose sends are on TCP (its application outran ztunnel by
    /// the cap). While its socket is in the SockHash every send still goes
    /// through `tcp_bpf_sendmsg` (a copy into an `sk_msg`, the program, then
    /// a push to TCP) and every read of the application through
    /// `tcp_bpf_recvmsg`, which together cost more than the loopback TCP path
    /// itself; out of it, the socket has the plain TCP operations back
    /// (`sk_psock_drop` restores its `sk_prot`). Byte order holds: from now on nothing is redirected,
    /// and what was redirected before, still queued on ztunnel's socket, is
    /// read before its TCP queue (`tcp_bpf_recvmsg`). Checked at each report
    /// (every quarter of the cap) of such a stream, until it succeeds.
    fn leave_if_bulk(&mut self) {
        let mode = match self.reads.records.get(&self.key, 0) {
            Ok(record) => record.mode,
            // Closing (sockops removed the record) or evicted: the program
            // sends by TCP without a record.
            Err(MapError::KeyNotFound) => shortcut_mode::CLOSED,
            Err(_) => return,
        };
        if mode != shortcut_mode::TCP {
            if mode == shortcut_mode::CLOSED {
                self.may_leave = false;
            }
            return;
        }
        let mut socks = self
            .reads
            .socks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match socks.remove(&self.key.peer()) {
            Ok(()) => {
                self.reads
                    .left
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.may_leave = false;
            }
            // Already gone: the application's socket closed.
            Err(MapError::KeyNotFound) => self.may_leave = false,
            // Left on the shortcut, which stays correct; tried again at the
            // next report.
            Err(error) => tracing::debug!(%error, "cannot take a bulk connection off the shortcut"),
        }
    }
}

/// What the shortcut did on this node since its maps were created (they are
/// pinned, so the counts survive a ztunnel restart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShortcutStats {
    /// Bytes applications sent that were redirected straight into ztunnel's
    /// socket.
    pub redirected_bytes: u64,
    /// Bytes of shortcut connections that took loopback TCP (before ztunnel's
    /// side was ready, while ztunnel was behind, after a shutdown).
    pub tcp_bytes: u64,
    /// Times a connection left the redirect for TCP (ztunnel a cap behind, or
    /// TCP memory under pressure).
    pub to_tcp: u64,
    /// Times a connection went back to the redirect (ztunnel had read
    /// everything sent).
    pub to_redirect: u64,
}

/// Reads the shortcut's counters from their pin under `pin_dir`.
pub fn shortcut_stats(pin_dir: &Path) -> Result<ShortcutStats, Error> {
    let name = map_name::SHORTCUT_STATS;
    let stats: PerCpuArray<MapData, u64> = pinned_map(pin_dir, name, aya::maps::Map::PerCpuArray)?;
    let read = |slot: u32| -> Result<u64, Error> {
        let per_cpu = stats.get(&slot, 0).map_err(map_error(name, "read"))?;
        Ok(per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n)))
    };
    Ok(ShortcutStats {
        redirected_bytes: read(shortcut_stat::REDIRECTED_BYTES)?,
        tcp_bytes: read(shortcut_stat::TCP_BYTES)?,
        to_tcp: read(shortcut_stat::TO_TCP)?,
        to_redirect: read(shortcut_stat::TO_REDIRECT)?,
    })
}

/// One shortcut connection as its record shows it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortcutConnection {
    /// Bytes the application sent that ztunnel has not reported read (on
    /// either path; what is queued on the redirect is at most this).
    pub unread: u64,
    /// Whether its sends are redirected now.
    pub redirecting: bool,
}

/// The live shortcut connections' records, from their pin under `pin_dir`
/// (a walk with a system call per entry: for diagnostics and tests).
pub fn shortcut_connections(pin_dir: &Path) -> Result<Vec<ShortcutConnection>, Error> {
    let name = map_name::SHORTCUTS;
    let map: HashMap<MapData, SockKey, Shortcut> =
        pinned_map(pin_dir, name, aya::maps::Map::LruHashMap)?;
    let reads_name = map_name::SHORTCUT_READS;
    let reads: HashMap<MapData, SockKey, u64> =
        pinned_map(pin_dir, reads_name, aya::maps::Map::LruHashMap)?;
    let mut connections = Vec::new();
    for entry in map.iter() {
        // An entry deleted during the walk ends it early; what was read stands.
        let Ok((key, record)) = entry else { break };
        let read = reads.get(&key, 0).unwrap_or(0);
        connections.push(ShortcutConnection {
            unread: record.sent.wrapping_sub(read),
            redirecting: record.mode == shortcut_mode::REDIRECT,
        });
    }
    Ok(connections)
}

/// How this kernel's sockmap receive path treats a blocked reader.
#[derive(Debug)]
pub enum SockmapReads {
    /// As any TCP socket: a wake-up without data keeps it waiting, the end of
    /// the stream returns 0.
    Correct,
    /// Not as TCP (what the read returned instead). Applications whose
    /// sockets the shortcut puts in the SockHash would see it.
    Broken(String),
}

/// Checks how this kernel treats a blocking read on a SockHash member: a
/// loopback pair in ztunnel's own network namespace, the reading end in
/// `socks` for the duration (about half a second, at start).
///
/// `tcp_bpf_recvmsg`, the receive path of every SockHash member without a
/// stream parser, sleeps until either of its queues has data; on some kernels
/// any other wake-up ends the read with EAGAIN, even on a blocking socket
/// without a timeout. The wake-up that applications meet most is the one for
/// write space (a client that uploaded, then waits for the answer), so the
/// probe makes one: its reader first fills its own send buffer, blocks in a
/// read, and the peer then drains what it sent. It then checks that data
/// and the end of the stream arrive as on TCP.
pub fn probe_sockmap_reads(
    socks: &mut SockHash<&mut MapData, SockKey>,
    netns: NetnsCookie,
) -> std::io::Result<SockmapReads> {
    use std::{io::Read, io::Write, time::Duration};
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let mut peer = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (reader, _) = listener.accept()?;
    let key = sock_key(netns, reader.local_addr()?, reader.peer_addr()?);
    socks
        .insert(key, reader.as_raw_fd(), 0)
        .map_err(std::io::Error::other)?;
    let result = (|| -> std::io::Result<SockmapReads> {
        // The reader's send buffer, full (bounded: 64 MiB).
        reader.set_nonblocking(true)?;
        let chunk = [0u8; 64 * 1024];
        for _ in 0..1024 {
            match (&reader).write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        reader.set_nonblocking(false)?;
        reader.set_read_timeout(Some(Duration::from_secs(5)))?;
        let blocked_reader = reader.try_clone()?;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let mut bytes = [0u8; 2];
            let first = (&blocked_reader).read(&mut bytes[..1]);
            let second = (&blocked_reader).read(&mut bytes[1..]);
            (first, second)
        });
        // The reader must be waiting in the kernel before the wake-up, or the
        // probe would pass without testing anything (a loaded node).
        let tid = tid_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| std::io::Error::other("the probe's reader did not start"))?;
        wait_until_asleep(tid, Duration::from_secs(5))?;
        // Drain what the reader sent: its send buffer empties and wakes it.
        peer.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut sink = vec![0u8; 256 * 1024];
        while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
        std::thread::sleep(Duration::from_millis(100));
        peer.write_all(b"x")?;
        std::thread::sleep(Duration::from_millis(100));
        peer.shutdown(std::net::Shutdown::Write)?;
        let (first, second) = blocked
            .join()
            .map_err(|_| std::io::Error::other("the probe's reader panicked"))?;
        Ok(match (first, second) {
            (Ok(1), Ok(0)) => SockmapReads::Correct,
            (Ok(1), other) => SockmapReads::Broken(format!("at the end of the stream: {other:?}")),
            (other, _) => SockmapReads::Broken(format!(
                "after a wake-up for write space, before any data: {other:?}"
            )),
        })
    })();
    // The socket would leave the map as it closes; removing it first is tidier.
    let _ = socks.remove(&key);
    result
}

/// Waits until thread `tid` of this process sleeps (state `S` in
/// `/proc/self/task/<tid>/stat`).
fn wait_until_asleep(tid: libc::pid_t, limit: std::time::Duration) -> std::io::Result<()> {
    let path = format!("/proc/self/task/{tid}/stat");
    let deadline = std::time::Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(&path)?;
        if thread_state(&stat) == Some('S') {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the probe's reader never slept ({path}: {stat:?})"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The state letter of a `/proc/<pid>/stat` line (after the command in
/// parentheses, which may itself hold spaces and parentheses).
fn thread_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// The node's TCP memory in pages: what is allocated now
/// (`/proc/net/sockstat`, `TCP: ... mem <pages>`, node-wide in every network
/// namespace) and the kernel's thresholds (`net.ipv4.tcp_mem`: no pressure
/// below the first, pressure from the second, the hard limit at the third).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMemory {
    /// Pages allocated to TCP sockets now.
    pub pages: u64,
    /// `tcp_mem`: low, pressure, high.
    pub limits: [u64; 3],
}

const SOCKSTAT: &str = "/proc/net/sockstat";
const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";

impl TcpMemory {
    /// The pages allocated to TCP sockets now.
    pub fn pages() -> std::io::Result<u64> {
        let sockstat = std::fs::read_to_string(SOCKSTAT)?;
        parse_sockstat(&sockstat).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no `TCP: ... mem <pages>` in {SOCKSTAT}"),
            )
        })
    }

    /// The kernel's thresholds. `tcp_mem` is node-wide and shows only in the
    /// host's network namespace (where ztunnel runs with `hostNetwork`); from
    /// another, the kernel's own default is computed from the memory size
    /// (see [`default_tcp_mem`]).
    pub fn limits() -> std::io::Result<[u64; 3]> {
        match std::fs::read_to_string(TCP_MEM) {
            Ok(text) => parse_tcp_mem(&text).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not three numbers in {TCP_MEM}: {text:?}"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meminfo = std::fs::read_to_string("/proc/meminfo")?;
                default_tcp_mem(&meminfo).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no MemTotal in /proc/meminfo",
                    )
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether new redirects should stop: the node's TCP memory is past the
    /// point below which the kernel does not moderate it (`tcp_mem[0]`), so
    /// what the shortcut would queue goes through TCP's own limits instead.
    pub fn under_pressure(&self) -> bool {
        self.pages >= self.limits[0]
    }
}

/// The `mem` of the `TCP:` line of `/proc/net/sockstat`.
fn parse_sockstat(text: &str) -> Option<u64> {
    let tcp = text.lines().find_map(|line| line.strip_prefix("TCP:"))?;
    let mut words = tcp.split_whitespace();
    while let Some(word) = words.next() {
        if word == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The kernel's default `tcp_mem` for a node with the `MemTotal` of
/// `meminfo` (`tcp_init` in `net/ipv4/tcp.c`: a sixteenth of the memory, the
/// low mark at three quarters of it, the hard limit at twice the low mark).
/// It counts all memory where the kernel counts free buffer pages, a little
/// more: close enough for a pressure mark.
fn default_tcp_mem(meminfo: &str) -> Option<[u64; 3]> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let limit = (kib / 4 / 16).max(128);
    let low = limit / 4 * 3;
    Some([low, limit, low * 2])
}

/// The three numbers of `tcp_mem`.
fn parse_tcp_mem(text: &str) -> Option<[u64; 3]> {
    let mut values = text.split_whitespace();
    let mut limits = [0u64; 3];
    for limit in &mut limits {
        *limit = values.next()?.parse().ok()?;
    }
    values.next().is_none().then_some(limits)
}

/// Writes the shortcut's pressure switch (the pinned settings map, opened on
/// its own so a task can own it).
pub struct TcpPressure {
    settings: Array<MapData, u32>,
    on: bool,
}

impl std::fmt::Debug for TcpPressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpPressure")
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

impl TcpPressure {
    /// Opens the settings map pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        let name = map_name::SETTINGS;
        let settings = pinned_map(pin_dir, name, aya::maps::Map::Array)?;
        let mut pressure = Self { settings, on: true };
        pressure.set(false)?;
        Ok(pressure)
    }

    /// Turns new redirects off (`true`) or back on; writes only on a change.
    /// Returns whether it changed.
    pub fn set(&mut self, on: bool) -> Result<bool, Error> {
        if on == self.on {
            return Ok(false);
        }
        const { assert!(setting::TCP_PRESSURE < SETTINGS_SLOTS) };
        self.settings
            .set(setting::TCP_PRESSURE, u32::from(on), 0)
            .map_err(map_error(map_name::SETTINGS, "write a setting"))?;
        self.on = on;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKSTAT_TEXT: &str = "sockets: used 212\n\
        TCP: inuse 9 orphan 0 tw 3 alloc 12 mem 4100\n\
        UDP: inuse 2 mem 1\n";

    #[test]
    fn thread_states_are_read_past_odd_command_names() {
        assert_eq!(thread_state("42 (ztunnel) S 1 42"), Some('S'));
        assert_eq!(thread_state("42 (a) b (c)) R 1 42"), Some('R'));
        assert_eq!(thread_state("42 (no end"), None);
    }

    #[test]
    fn tcp_memory_is_read_from_sockstat_and_tcp_mem() {
        assert_eq!(parse_sockstat(SOCKSTAT_TEXT), Some(4100));
        assert_eq!(parse_tcp_mem("4000 5000 6000\n"), Some([4000, 5000, 6000]));
        let memory = TcpMemory {
            pages: 4100,
            limits: [4000, 5000, 6000],
        };
        assert!(memory.under_pressure());
        let calm = TcpMemory {
            limits: [287_907, 383_878, 575_814],
            ..memory
        };
        assert!(!calm.under_pressure());
    }

    #[test]
    fn the_default_tcp_mem_follows_the_memory_size() {
        // 24 GiB: the kernel set 287907 383878 575814 on such a machine.
        let [low, pressure, high] =
            default_tcp_mem("MemTotal:       25165824 kB\nMemFree: 1 kB\n").expect("parses");
        assert_eq!(pressure, 393_216);
        assert_eq!((low, high), (294_912, 589_824));
        assert_eq!(default_tcp_mem("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn malformed_files_are_refused() {
        // UDP's mem must not be taken for TCP's.
        assert_eq!(parse_sockstat("UDP: inuse 2 mem 1\n"), None);
        assert_eq!(
            parse_sockstat("TCP: inuse 9 mem\n"),
            None,
            "mem without a value"
        );
        assert_eq!(parse_tcp_mem("1 2"), None);
        assert_eq!(parse_tcp_mem("1 x 3"), None);
        assert_eq!(parse_tcp_mem("1 2 3 4"), None);
    }

    #[test]
    fn this_host_has_tcp_memory_figures() {
        // Node-wide files: present in any network namespace (tcp_mem through
        // pid 1's when not in this one).
        assert!(TcpMemory::pages().is_ok());
        let limits = TcpMemory::limits().expect("tcp_mem is readable");
        assert!(
            limits[0] <= limits[1] && limits[1] <= limits[2],
            "{limits:?}"
        );
    }
}
