//! The sk_msg loopback shortcut under load and at the ends of a connection:
//! the same bytes and the same ends as without it, a fast sender slowed or
//! blocked (never failed with ENOMEM), and the queue it builds bounded.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ambit_tests::{
    Testbed,
    mesh::{Ztunnel, ZtunnelOptions, client_and_server, node_metric, start_server},
    privileged,
};
use ztunnel::{
    capture::{ShortcutStats, TcpMemory, shortcut_connections, shortcut_stats},
    settings::SOCKMAP_BULK_DEFAULT,
};

const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");
/// ztunnel's default cap: bytes sent and not yet read while redirecting.
const CAP: u64 = 1024 * 1024;

/// A client on node a and a server on node b, both enrolled, and the two
/// ztunnels, with the shortcut on or off.
struct Mesh {
    bed: Testbed,
    _zt_a: Ztunnel,
    _zt_b: Ztunnel,
}

/// How a test runs ztunnel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shortcut {
    Off,
    /// `--sockmap`, subject to ztunnel's start-up check of the kernel.
    Requested,
    /// `--sockmap`, kept on whatever the check finds: these tests' clients
    /// retry a blocked read that the kernel ends with EAGAIN (`ambit-testbin`
    /// waits for the sink's answer so), or never block in one.
    Forced,
}

impl Mesh {
    fn start(tag: &str, shortcut: Shortcut) -> Self {
        let (bed, path) = client_and_server(tag, &[]);
        let options = match shortcut {
            Shortcut::Off => ZtunnelOptions::default(),
            Shortcut::Requested => ZtunnelOptions {
                sockmap: true,
                ..ZtunnelOptions::default()
            },
            Shortcut::Forced => ZtunnelOptions::default().force_sockmap(),
        };
        let zt_a = Ztunnel::start(&bed, "a", &path, &options).expect("ztunnel a starts");
        let zt_b = Ztunnel::start(&bed, "b", &path, &options).expect("ztunnel b starts");
        Self {
            bed,
            _zt_a: zt_a,
            _zt_b: zt_b,
        }
    }

    fn server(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.bed.pod("server").ipv4(), port))
    }

    /// `ambit-testbin <args>` in the client pod; its stdout.
    fn client(&self, args: &[&str], timeout: Duration) -> String {
        let mut cmd = self.bed.pod_command("client", TESTBIN);
        cmd.args(args);
        let out = self.bed.run(cmd, timeout).unwrap_or_else(|e| {
            let logs: Vec<String> = self
                ._zt_a
                .stderr()
                .lines()
                .filter(|l| {
                    l.contains("sk_msg")
                        || l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("capture")
                })
                .map(str::to_owned)
                .collect();
            panic!("ambit-testbin {args:?}: {e}\nztunnel a: {logs:#?}")
        });
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The client node's pin directory, where the shortcut's maps are.
    fn pin_dir(&self) -> PathBuf {
        self.bed.node("a").pin_dir().to_owned()
    }

    fn stats(&self) -> ShortcutStats {
        shortcut_stats(&self.pin_dir()).expect("the shortcut's counters are readable")
    }

    /// Bulk connections the client node's ztunnel took off the shortcut
    /// (`ambit_sockmap_switches_total{to="off"}`), once that count reaches
    /// `want`, or as it stands after the metrics' next two readings of the
    /// maps.
    fn left_for_good(&self, want: u64) -> u64 {
        let series = "ambit_sockmap_switches_total{to=\"off\"}";
        let mut count = 0;
        for _ in 0..24 {
            count = node_metric(&self.bed, "a", series);
            if count >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        count
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Samples, until stopped, the largest backlog of a redirecting connection
/// and the node's TCP memory (pages).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Sampler {
    fn start(pin_dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let pin_dir = pin_dir.to_owned();
        let thread = std::thread::spawn(move || {
            let (mut redirect_backlog, mut tcp_pages) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Ok(connections) = shortcut_connections(&pin_dir) {
                    for connection in connections.iter().filter(|c| c.redirecting) {
                        redirect_backlog = redirect_backlog.max(connection.unread);
                    }
                }
                if let Ok(pages) = TcpMemory::pages() {
                    tcp_pages = tcp_pages.max(pages);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (redirect_backlog, tcp_pages)
        });
        Self { stop, thread }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler ran")
    }
}

fn checksum(mesh: &Mesh, bytes: u64, slow: bool) {
    let server = mesh.server(7100).to_string();
    let bytes_arg = bytes.to_string();
    let mut args = vec!["checksum", &server, &bytes_arg];
    if slow {
        args.push("slow");
    }
    let line = mesh.client(&args, Duration::from_secs(300));
    assert_eq!(
        field(&line, "bytes"),
        bytes_arg,
        "every byte arrived: {line}"
    );
    assert_eq!(
        field(&line, "sent"),
        field(&line, "received"),
        "the same bytes in the same order: {line}"
    );
}

#[test]
fn bulk_transfers_arrive_intact_and_a_slow_reader_bounds_the_queue() {
    if !privileged("bulk_transfers_arrive_intact_and_a_slow_reader_bounds_the_queue") {
        return;
    }
    let mesh = Mesh::start("shortcut_bulk", Shortcut::Forced);
    let _sink = start_server(&mesh.bed, "server", "sink", "[::]:7100");

    // A gibibyte to a fast reader.
    checksum(&mesh, 1 << 30, false);
    let fast = mesh.stats();
    assert!(
        fast.redirected_bytes > 0,
        "the shortcut carried part of the transfer: {fast:?}"
    );

    // 96 MiB to a reader that takes 16 KiB per millisecond: the sender is far
    // ahead, so the redirect must hand over to TCP.
    let baseline = TcpMemory::pages().expect("TCP memory is readable");
    let sampler = Sampler::start(&mesh.pin_dir());
    let slow_bytes: u64 = 96 << 20;
    checksum(&mesh, slow_bytes, true);
    let (redirect_backlog, peak_pages) = sampler.stop();
    let slow = mesh.stats();
    assert!(
        slow.to_tcp > fast.to_tcp,
        "the sender outran the reader and went over to TCP: {fast:?} -> {slow:?}"
    );
    assert!(
        slow.tcp_bytes > fast.tcp_bytes,
        "TCP carried part of it: {fast:?} -> {slow:?}"
    );
    // Its sender stayed ahead for more than AMBIT_SOCKMAP_BULK_BYTES without
    // a pause: the connection left the shortcut for good, and what it sent
    // after that (out of the SockHash, unseen by the program) still arrived
    // in order.
    assert_eq!(mesh.left_for_good(1), 1, "{slow:?}");
    let seen = (slow.redirected_bytes + slow.tcp_bytes) - (fast.redirected_bytes + fast.tcp_bytes);
    assert!(
        seen < slow_bytes,
        "the program stopped seeing its sends ({seen} of {slow_bytes} bytes): {slow:?}"
    );
    // A redirecting connection never has more than the cap unread.
    assert!(
        redirect_backlog <= CAP,
        "backlog while redirecting {redirect_backlog} > cap {CAP}"
    );
    // Without a bound, nearly the whole transfer would queue at once on
    // ztunnel's socket. Every buffer of the path (both nodes are this host,
    // and the other tests of this file run alongside) is in the figure, so
    // it only has to stay well below the transfer (10 MiB when measured).
    let grown = peak_pages.saturating_sub(baseline) * 4096;
    eprintln!(
        "slow reader: peak TCP memory +{:.1} MiB, largest redirect backlog {redirect_backlog} B",
        grown as f64 / f64::from(1 << 20)
    );
    assert!(
        grown < slow_bytes / 2,
        "the node's TCP memory grew by {grown} bytes for a {slow_bytes}-byte transfer"
    );
}

#[test]
fn a_connection_returns_to_the_redirect_once_ztunnel_caught_up_in_order() {
    if !privileged("a_connection_returns_to_the_redirect_once_ztunnel_caught_up_in_order") {
        return;
    }
    let mesh = Mesh::start("shortcut_return", Shortcut::Forced);
    let _sink = start_server(&mesh.bed, "server", "sink", "[::]:7100");
    // Bursts of 24 MiB into the slow reader (16 MB/s), more than the path's
    // buffers hold (about 10 MiB): each leaves ztunnel the cap behind and goes
    // over to TCP; in the pause of 2.5 s the reader takes it all, so the next
    // burst starts on the redirect again. Bytes on the TCP path overtaken by
    // redirected ones would change the hash.
    let server = mesh.server(7100).to_string();
    let burst_bytes: u64 = 24 << 20;
    assert!(
        burst_bytes < SOCKMAP_BULK_DEFAULT,
        "each burst stays on the shortcut"
    );
    let burst = burst_bytes.to_string();
    let line = mesh.client(
        &["bursts", &server, "3", &burst, "2500"],
        Duration::from_secs(120),
    );
    assert_eq!(field(&line, "bytes"), (72u64 << 20).to_string(), "{line}");
    assert_eq!(field(&line, "sent"), field(&line, "received"), "{line}");
    let stats = mesh.stats();
    eprintln!("bursts: {stats:?}");
    assert!(
        stats.to_tcp >= 2 && stats.to_redirect >= 2,
        "the connection went over to TCP and back, burst after burst: {stats:?}"
    );
    // Each burst is below AMBIT_SOCKMAP_BULK_BYTES: the connection stayed on
    // the shortcut.
    assert_eq!(mesh.left_for_good(1), 0, "{stats:?}");
}

#[test]
fn a_sender_ahead_of_a_stalled_reader_is_blocked_not_failed() {
    if !privileged("a_sender_ahead_of_a_stalled_reader_is_blocked_not_failed") {
        return;
    }
    let mesh = Mesh::start("shortcut_flood", Shortcut::Forced);
    let _hold = start_server(&mesh.bed, "server", "hold-server", "[::]:7200");
    let server = mesh.server(7200).to_string();
    // Without backpressure every write would succeed until the node's TCP
    // memory ran out (and then fail with ENOMEM); the client fails on any
    // error other than EAGAIN.
    let limit: u64 = 512 << 20;
    let line = mesh.client(
        &["flood", &server, &limit.to_string()],
        Duration::from_secs(120),
    );
    eprintln!("{line}");
    assert_eq!(field(&line, "blocked"), "true", "{line}");
    let accepted: u64 = field(&line, "accepted").parse().expect("a byte count");
    assert!(accepted < limit / 4, "{line}");
    let stats = mesh.stats();
    assert!(
        stats.redirected_bytes > 0 && stats.to_tcp > 0,
        "redirected first, then TCP once ztunnel fell the cap behind: {stats:?}"
    );
}

/// How the ends of connections look to the application.
fn ends(mesh: &Mesh) -> Vec<String> {
    let bed = &mesh.bed;
    let _echo = start_server(bed, "server", "echo", "[::]:7000");
    let _sink = start_server(bed, "server", "sink", "[::]:7100");
    let _resetter = start_server(bed, "server", "resetter", "[::]:7300");
    let watch = start_server(bed, "server", "watch", "[::]:7400");
    let echo = mesh.server(7000).to_string();
    let mut seen = Vec::new();
    // A write after shutdown(SHUT_WR) fails as on plain TCP.
    seen.push(mesh.client(&["write-after-shutdown", &echo], Duration::from_secs(20)));
    // A half-closed upload: the server reads to the end, then answers.
    checksum(mesh, 8 << 20, false);
    // The server resets after a partial answer.
    let resetter = mesh.server(7300).to_string();
    seen.push(mesh.client(&["await-end", &resetter, "hello"], Duration::from_secs(20)));
    // The client resets: the server sees a reset.
    let watched = mesh.server(7400).to_string();
    mesh.client(&["abort", &watched, "bye"], Duration::from_secs(20));
    seen.push(
        watch
            .wait_for_line("ended=", Duration::from_secs(10))
            .expect("the server saw the end"),
    );
    // Many short connections, each to its end.
    let replies = mesh.client(&["send", &echo, "short", "300"], Duration::from_secs(120));
    let answered = replies
        .lines()
        .filter(|l| l.starts_with("reply ") && l.contains("msg=short"))
        .count();
    seen.push(format!("short connections answered={answered}"));
    seen
}

#[test]
fn connection_ends_are_the_same_with_and_without_the_shortcut() {
    if !privileged("connection_ends_are_the_same_with_and_without_the_shortcut") {
        return;
    }
    let with = {
        let mesh = Mesh::start("shortcut_ends", Shortcut::Requested);
        let seen = ends(&mesh);
        let stats = mesh.stats();
        // On a kernel whose sockmap reads fail at the end of a stream,
        // ztunnel keeps the shortcut off (and says so); elsewhere it carries
        // these connections.
        let refused = mesh
            ._zt_a
            .stderr()
            .contains("sk_msg shortcut off: on this kernel");
        eprintln!("shortcut refused by the kernel check: {refused}; {stats:?}");
        if refused {
            assert_eq!(stats.redirected_bytes, 0, "{stats:?}");
        } else {
            assert!(
                stats.redirected_bytes > 0,
                "the shortcut carried these connections: {stats:?}"
            );
        }
        seen
    };
    let without = ends(&Mesh::start("shortcut_ends_off", Shortcut::Off));
    assert_eq!(
        without,
        [
            "after-shutdown error=BrokenPipe",
            "ended=reset bytes=7",
            "ended=reset bytes=4",
            "short connections answered=300",
        ],
        "the plain path behaves as TCP does"
    );
    assert_eq!(
        with, without,
        "the shortcut changes nothing the application sees"
    );
}
