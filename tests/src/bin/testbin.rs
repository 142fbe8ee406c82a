//! `ambit-testbin`: the TCP client and server that end-to-end tests run in pods.
//!
//! ```text
//! ambit-testbin echo <listen-addr>
//!     prints "listening <addr>", then answers every line of every connection with
//!     "from=<peer> to=<local> msg=<line>" (what the server saw), until EOF
//! ambit-testbin send <addr> <message> [count]
//!     connects <count> times (default 1), one after the other, sends <message>,
//!     and prints "reply <server's line> peer=<getpeername> local=<getsockname>"
//! ambit-testbin session <addr> <count> <interval-ms>
//!     one connection: sends "session-<i>" <count> times, <interval-ms> apart,
//!     printing "reply <server's line>" for each; the test can act in between
//! ambit-testbin sink <listen-addr>
//!     benchmark server: per connection, echoes fixed-size messages back when the
//!     first byte is 'r' (request/response), or counts bytes until EOF and
//!     answers with the count when it is 'b' (bulk)
//! ambit-testbin bulk <addr> <seconds> <write-size> [slow]
//!     one connection writing <write-size> chunks for <seconds> (to a sink
//!     that, with `slow`, reads 16 KiB at most and then sleeps 1 ms); prints
//!     "bulk bytes=<n> seconds=<s> gbps=<g>" once the server confirmed the count
//! ambit-testbin checksum <addr> <bytes> [slow]
//!     one connection sending <bytes> of a deterministic pattern; the sink hashes
//!     what it receives (with `slow`, 16 KiB at most per read and 1 ms asleep
//!     after each: a receiver far slower than the sender); prints
//!     "checksum sent=<h> received=<h> bytes=<n>"
//! ambit-testbin bursts <addr> <count> <bytes> <pause-ms>
//!     one connection to a slow sink (as `checksum ... slow`): <count> bursts
//!     of <bytes> of the checksum's pattern, <pause-ms> apart (time for the
//!     reader to catch up); prints "checksum sent=<h> received=<h> bytes=<n>"
//! ambit-testbin flood <addr> <limit-bytes>
//!     to a hold server (which never reads after the first line): writes 64 KiB
//!     chunks on a non-blocking socket until writes keep failing with EAGAIN
//!     for 500 ms, or <limit-bytes> went through; prints "flood accepted=<n>
//!     blocked=<true|false>". Any other error (ENOMEM) fails it.
//! ambit-testbin write-after-shutdown <addr>
//!     sends a line, shuts its sending side down, then writes again; prints
//!     "after-shutdown error=<kind>" (a broken pipe, as plain TCP gives)
//! ambit-testbin concurrent <addr> <count>
//!     opens <count> connections at once, holds them all open, then exchanges a
//!     line on each; prints "concurrent ok=<n>"
//! ambit-testbin crr <addr> <count> [clients]
//!     <count> times: connect, one line to an echo or crr server and its reply,
//!     close, from <clients> threads at once (default 1); prints
//!     "crr count=<n> clients=<c> per_s=<rate>"
//! ambit-testbin source <listen-addr>
//!     writes zeros to every accepted connection until it fails (a server
//!     whose client may never read)
//! ambit-testbin crr-server <listen-addr> [threads]
//!     the connection-rate benchmark's server: <threads> (default 4) threads
//!     accept in turn and each answers one line with "ok" and closes, with no
//!     thread per connection and nothing printed per connection
//! ambit-testbin rr <addr> <count> <size> <rate> [connections]
//!     <connections> (default 1) connections to a sink, open loop: <count>
//!     requests of <size> bytes sent at <rate> per second in all, in turn over
//!     the connections, whether or not the replies keep up; each latency is
//!     counted from the request's intended send time (no coordinated omission).
//!     Prints "rr count=<n> size=<s> rate=<r> connections=<c> achieved=<r/s>
//!     p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..", then "histogram
//!     <ns>:<count> ..." (every recorded bucket of the HDR histogram, for
//!     merging and plotting). `achieved` is the requests answered per second
//!     from the first intended send to the last reply: below <rate> when the
//!     path (or this tool) cannot keep up.
//! ambit-testbin hold <addr> <count> <seconds>
//!     opens <count> connections to an echo or hold server, one after the
//!     other, exchanges a line on each (one descriptor per connection),
//!     prints "held <n>", then keeps them open and idle for <seconds> (or until
//!     killed)
//! ambit-testbin hold-server <listen-addr>
//!     the held connections' server: one thread accepts, answers each
//!     connection's first line with that line, and keeps the connection open
//!     and unread until the process ends (no thread per connection)
//! ambit-testbin resetter <listen-addr>
//!     per connection: reads one line, answers "partial" (no newline), then
//!     closes with a reset (SO_LINGER 0)
//! ambit-testbin watch <listen-addr>
//!     per connection: reads until the end, then prints how it ended:
//!     "ended=eof bytes=<n>" or "ended=reset bytes=<n>"
//! ambit-testbin abort <addr> <message>
//!     connects, sends <message> and a newline, waits 200 ms, closes with a reset
//! ambit-testbin await-end <addr> <message>
//!     connects, sends <message> and a newline, reads until the end; prints
//!     "ended=eof bytes=<n>" or "ended=reset bytes=<n>"
//! ```
//! Exit status 0 on success, 1 with a message on stderr otherwise. Every network
//! wait is bounded: 10 s, or AMBIT_TESTBIN_TIMEOUT_MS.
#![forbid(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

use ambit_tests::bench::latency;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["echo", addr] => echo(addr),
        ["send", addr, message] => send(addr, message, "1"),
        ["send", addr, message, count] => send(addr, message, count),
        ["session", addr, count, interval] => session(addr, count, interval),
        ["churn", addr, message, seconds, interval] => churn(addr, message, seconds, interval),
        ["sink", addr] => sink(addr),
        ["bulk", addr, seconds, size] => bulk(addr, seconds, size, b'b'),
        ["bulk", addr, seconds, size, "slow"] => bulk(addr, seconds, size, b'B'),
        ["rr", addr, count, size, rate] => rr(addr, count, size, rate, "1"),
        ["rr", addr, count, size, rate, connections] => rr(addr, count, size, rate, connections),
        ["hold", addr, count, seconds] => hold(addr, count, seconds),
        ["hold-server", addr] => hold_server(addr),
        ["checksum", addr, bytes] => checksum(addr, bytes, b'h'),
        ["checksum", addr, bytes, "slow"] => checksum(addr, bytes, b'H'),
        ["flood", addr, limit] => flood(addr, limit),
        ["bursts", addr, count, bytes, pause] => bursts(addr, count, bytes, pause),
        ["write-after-shutdown", addr] => write_after_shutdown(addr),
        ["concurrent", addr, count] => concurrent(addr, count),
        ["crr", addr, count] => crr(addr, count, "1"),
        ["crr", addr, count, clients] => crr(addr, count, clients),
        ["crr-server", addr] => crr_server(addr, "4"),
        ["crr-server", addr, threads] => crr_server(addr, threads),
        ["resetter", addr] => serve(addr, "resetter", reset_after_line),
        ["source", addr] => serve(addr, "source", spew),
        ["watch", addr] => serve(addr, "watch", watch_end),
        ["abort", addr, message] => abort(addr, message),
        ["await-end", addr, message] => await_end(addr, message),
        _ => Err(
            "usage: ambit-testbin echo <addr> | send <addr> <message> [count] | \
                  session <addr> <count> <interval-ms> | churn <addr> <message> <s> <interval-ms> | sink <addr> | bulk <addr> <s> <size> [slow] | \
                  rr <addr> <count> <size> <rate> | checksum <addr> <bytes> [slow] | bursts <addr> <n> <bytes> <ms> | flood <addr> <limit> | \
                  write-after-shutdown <addr> | concurrent <addr> <count> | \
                  crr <addr> <count> [clients] | crr-server <addr> [threads] | source <addr> | hold <addr> <count> <seconds> | \
                  hold-server <addr>"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ambit-testbin: {error}");
            ExitCode::FAILURE
        }
    }
}

fn io_timeout() -> Duration {
    let ms = std::env::var("AMBIT_TESTBIN_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Duration::from_millis(ms)
}

fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

/// A listener with a deep accept backlog (the tests open a thousand
/// connections in a burst, and std's backlog of 128 would drop SYNs into
/// retransmission delays of seconds), announced as "listening <addr>" once it
/// accepts.
fn listen(addr: &str) -> Result<TcpListener, String> {
    let addr = parse_addr(addr)?;
    let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(4096).map_err(fail)?;
    let listener: TcpListener = socket.into();
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {local}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    Ok(listener)
}

fn echo(addr: &str) -> Result<(), String> {
    serve(addr, "echo", answer)
}

/// Listens on `addr`, prints "listening <addr>", and runs `handle` on a thread
/// per accepted connection, forever.
fn serve(
    addr: &str,
    mode: &'static str,
    handle: fn(TcpStream) -> std::io::Result<()>,
) -> Result<(), String> {
    let listener = listen(addr)?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(error) = handle(stream) {
                eprintln!("ambit-testbin: {mode}: {error}");
            }
        });
    }
    Ok(())
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    println!("accepted from={peer} to={local}");
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        writeln!(writer, "from={peer} to={local} msg={}", line?)?;
    }
    writer.shutdown(Shutdown::Write)
}

/// Writes zeros to `stream` until a write fails.
fn spew(mut stream: TcpStream) -> std::io::Result<()> {
    let zeros = vec![0u8; 64 * 1024];
    loop {
        stream.write_all(&zeros)?;
    }
}

/// Closes `stream` with RST instead of FIN.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// Reads `stream` to its end: "eof" or "reset", and the bytes read.
fn read_to_end(stream: &mut TcpStream) -> Result<(&'static str, usize), String> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(("eof", total)),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(("reset", total));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn reset_after_line(stream: TcpStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    (&stream).write_all(b"partial")?;
    std::thread::sleep(Duration::from_millis(100));
    reset(stream)
}

fn watch_end(mut stream: TcpStream) -> std::io::Result<()> {
    let (how, bytes) = read_to_end(&mut stream).map_err(std::io::Error::other)?;
    println!("ended={how} bytes={bytes}");
    std::io::stdout().flush()
}

fn abort(addr: &str, message: &str) -> Result<(), String> {
    let mut stream = connect(parse_addr(addr)?)?;
    writeln!(stream, "{message}").map_err(|e| format!("cannot send: {e}"))?;
    std::thread::sleep(Duration::from_millis(200));
    reset(stream).map_err(|e| e.to_string())
}

fn await_end(addr: &str, message: &str) -> Result<(), String> {
    let mut stream = connect(parse_addr(addr)?)?;
    writeln!(stream, "{message}").map_err(|e| format!("cannot send: {e}"))?;
    let (how, bytes) = read_to_end(&mut stream)?;
    println!("ended={how} bytes={bytes}");
    Ok(())
}

/// Connects to `addr`. With `AMBIT_TESTBIN_MARK` set, the socket carries that
/// `SO_MARK` (as a pod with CAP_NET_ADMIN may set), and with
/// `AMBIT_TESTBIN_BIND` it connects from that address.
fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let fail = |e: std::io::Error| format!("cannot connect to {addr}: {e}");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(fail)?;
    if let Ok(mark) = std::env::var("AMBIT_TESTBIN_MARK") {
        let mark = u32::from_str_radix(mark.trim_start_matches("0x"), 16)
            .map_err(|e| format!("bad AMBIT_TESTBIN_MARK {mark:?}: {e}"))?;
        socket.set_mark(mark).map_err(fail)?;
    }
    if let Ok(bind) = std::env::var("AMBIT_TESTBIN_BIND") {
        let bind: std::net::IpAddr = bind
            .parse()
            .map_err(|e| format!("bad AMBIT_TESTBIN_BIND {bind:?}: {e}"))?;
        socket
            .bind(&SocketAddr::new(bind, 0).into())
            .map_err(fail)?;
    }
    socket
        .connect_timeout(&addr.into(), io_timeout())
        .map_err(fail)?;
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(io_timeout()))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn exchange(
    stream: &mut TcpStream,
    reader: &mut impl BufRead,
    message: &str,
) -> Result<String, String> {
    writeln!(stream, "{message}").map_err(|e| format!("cannot send: {e}"))?;
    let mut reply = String::new();
    reader
        .read_line(&mut reply)
        .map_err(|e| format!("no reply: {e}"))?;
    if reply.is_empty() {
        return Err("the connection closed without a reply".to_owned());
    }
    Ok(reply.trim_end().to_owned())
}

fn send(addr: &str, message: &str, count: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: u32 = number("count", count)?;
    for _ in 0..count {
        let mut stream = connect(addr)?;
        let peer = stream.peer_addr().map_err(|e| e.to_string())?;
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let reply = exchange(&mut stream, &mut reader, message)?;
        println!("reply {reply} peer={peer} local={local}");
    }
    Ok(())
}

fn session(addr: &str, count: &str, interval: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: u32 = number("count", count)?;
    let interval: u64 = number("interval", interval)?;
    let mut stream = connect(addr)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    for i in 0..count {
        let reply = exchange(&mut stream, &mut reader, &format!("session-{i}"))?;
        println!("reply {reply}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(interval));
    }
    Ok(())
}

/// New connections for `seconds`, one `message` exchanged on each and
/// `interval` ms apart; a line per connection: `attempt <start, ms since the
/// Unix epoch> <duration µs> ok` or `... err <reason>`. Exits 0 whatever the
/// outcomes: the caller judges them against what it did meanwhile.
fn churn(addr: &str, message: &str, seconds: &str, interval: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let seconds: u64 = number("seconds", seconds)?;
    let interval: u64 = number("interval", interval)?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut out = std::io::stdout().lock();
    while Instant::now() < end {
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let started = Instant::now();
        let outcome = connect(addr).and_then(|mut stream| {
            let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            exchange(&mut stream, &mut reader, message)
        });
        let took = started.elapsed().as_micros();
        match outcome {
            Ok(reply) if reply.contains(message) => writeln!(out, "attempt {start_ms} {took} ok"),
            Ok(reply) => writeln!(
                out,
                "attempt {start_ms} {took} err unexpected reply {reply}"
            ),
            Err(error) => writeln!(out, "attempt {start_ms} {took} err {error}"),
        }
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(interval));
    }
    Ok(())
}

/// Ends an upload to the sink (half-close) and reads its one-line answer
/// (`what` names it in the error).
fn end_upload(stream: &mut TcpStream, what: &str) -> Result<String, String> {
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    // One line, not to the end of the stream. Some kernels end a blocking
    // read on a sockmap socket with EAGAIN when a wake-up brings no data
    // (ztunnel refuses the sk_msg shortcut there unless told otherwise, as
    // the shortcut's own tests do): such a read is tried again, as long as
    // the time allowed for the answer lasts.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => answer.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
            Err(e) => return Err(format!("no {what} from the server: {e}")),
        }
    }
    String::from_utf8(answer).map_err(|e| format!("the {what} is not text: {e}"))
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| format!("bad {what} {value:?}: {e}"))
}

fn sink(addr: &str) -> Result<(), String> {
    serve(addr, "sink", serve_benchmark)
}

fn serve_benchmark(mut stream: TcpStream) -> std::io::Result<()> {
    use std::io::Read;
    stream.set_nodelay(true)?;
    let mut kind = [0u8; 1];
    stream.read_exact(&mut kind)?;
    let mut buf = vec![0u8; 256 * 1024];
    // Bulk: count the bytes until EOF, and hash them for 'h'. An upper-case
    // kind is the slow reader's.
    if matches!(kind[0].to_ascii_lowercase(), b'b' | b'h') {
        let slow = kind[0].is_ascii_uppercase();
        let hashing = kind[0].eq_ignore_ascii_case(&b'h');
        let read_size = if slow { 16 * 1024 } else { buf.len() };
        let mut hasher = Fnv::default();
        let mut total: u64 = 0;
        loop {
            let n = stream.read(&mut buf[..read_size])?;
            if n == 0 {
                break;
            }
            if hashing {
                hasher.write(&buf[..n]);
            }
            total += n as u64;
            if slow {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        return if hashing {
            writeln!(stream, "{} {total}", hasher.0)
        } else {
            writeln!(stream, "{total}")
        };
    }
    // Request/response: a 4-byte size, then messages of that size echoed back.
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = u32::from_be_bytes(size) as usize;
    let message = &mut buf[..size.min(256 * 1024)];
    loop {
        match stream.read_exact(message) {
            Ok(()) => stream.write_all(message)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn bulk(addr: &str, seconds: &str, size: &str, kind: u8) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let seconds: f64 = number("seconds", seconds)?;
    let size: usize = number("write size", size)?;
    let mut stream = connect(addr)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; size];
    stream.write_all(&[kind]).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed().as_secs_f64() < seconds {
        stream
            .write_all(&chunk)
            .map_err(|e| format!("write: {e}"))?;
        sent += size as u64;
    }
    let answer = end_upload(&mut stream, "count")?;
    let elapsed = start.elapsed().as_secs_f64();
    let received: u64 = number("count", answer.trim())?;
    if received != sent {
        return Err(format!(
            "sent {sent} bytes but the server counted {received}"
        ));
    }
    println!(
        "bulk bytes={sent} seconds={elapsed:.3} gbps={:.3}",
        sent as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}

fn rr(addr: &str, count: &str, size: &str, rate: &str, connections: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: u32 = number("count", count)?;
    let size: u32 = number("size", size)?;
    let rate: f64 = number("rate", rate)?;
    let connections: u32 = number("connections", connections)?;
    if count == 0 || size == 0 || connections == 0 || rate.is_nan() || rate <= 0.0 {
        return Err("count, size, rate and connections must be positive".to_owned());
    }
    let mut streams = Vec::with_capacity(connections as usize);
    for c in 0..connections {
        let mut stream = connect(addr).map_err(|e| format!("connection {c}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.write_all(b"r").map_err(|e| e.to_string())?;
        stream
            .write_all(&size.to_be_bytes())
            .map_err(|e| e.to_string())?;
        streams.push(stream);
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Request i is due at start + i * interval and goes on connection
    // i % connections; a connection answers in order, so its k-th reply
    // answers request k * connections + c.
    let start = Instant::now() + Duration::from_millis(5);
    let mut receivers = Vec::with_capacity(streams.len());
    for (c, stream) in streams.iter().enumerate() {
        let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
        let c = c as u32;
        receivers.push(std::thread::spawn(
            move || -> Result<(hdrhistogram::Histogram<u64>, Duration), String> {
                let mut histogram = latency::empty_histogram();
                let mut reply = vec![0u8; size as usize];
                let mut last = Duration::ZERO;
                for i in (c..count).step_by(connections as usize) {
                    reader
                        .read_exact(&mut reply)
                        .map_err(|e| format!("reply {i}: {e}"))?;
                    last = start.elapsed();
                    let latency = last.saturating_sub(interval * i);
                    histogram.saturating_record(
                        u64::try_from(latency.as_nanos())
                            .unwrap_or(latency::MAX_NS)
                            .max(1),
                    );
                }
                Ok((histogram, last))
            },
        ));
    }
    let message = vec![0x5au8; size as usize];
    let mut sent = Ok(());
    for i in 0..count {
        ambit_tests::load::pace_until(start + interval * i);
        let stream = &mut streams[(i % connections) as usize];
        if let Err(e) = stream.write_all(&message) {
            sent = Err(format!("request {i}: {e}"));
            break;
        }
    }
    if sent.is_err() {
        // Unblocks the receivers still waiting for replies.
        for stream in &streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    let mut histogram = latency::empty_histogram();
    let mut last = Duration::ZERO;
    let mut failure = None;
    for receiver in receivers {
        match receiver.join() {
            Ok(Ok((part, until))) => {
                histogram.add(&part).map_err(|e| format!("{e:?}"))?;
                last = last.max(until);
            }
            // The receiver's error (the connection closed, say) says more
            // than the sender's.
            Ok(Err(reason)) => {
                failure.get_or_insert(reason);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a receiver thread panicked".to_owned());
            }
        }
    }
    if let Some(reason) = failure {
        return Err(reason);
    }
    sent?;
    let achieved = f64::from(count) / last.as_secs_f64().max(1e-9);
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    println!(
        "rr count={count} size={size} rate={rate} connections={connections} achieved={achieved:.0} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
        us(0.50),
        us(0.90),
        us(0.99),
        us(0.999),
        histogram.max() as f64 / 1e3,
    );
    let buckets: Vec<String> = histogram
        .iter_recorded()
        .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
        .collect();
    println!("histogram {}", buckets.join(" "));
    Ok(())
}

/// FNV-1a, 64 bit: a checksum both ends compute the same way.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn checksum(addr: &str, bytes: &str, kind: u8) -> Result<(), String> {
    let total: u64 = number("bytes", bytes)?;
    send_pattern(addr, kind, &[total], Duration::ZERO)
}

fn bursts(addr: &str, count: &str, bytes: &str, pause: &str) -> Result<(), String> {
    let count: usize = number("count", count)?;
    let bytes: u64 = number("bytes", bytes)?;
    let pause: u64 = number("pause", pause)?;
    send_pattern(
        addr,
        b'H',
        &vec![bytes; count],
        Duration::from_millis(pause),
    )
}

/// One connection to a hashing sink (`kind` `h`, or `H` for the slow one):
/// bursts of the given sizes of a pattern that changes with the position (so
/// a lost, duplicated or reordered chunk changes the hash), `pause` apart;
/// prints both hashes and the count the sink saw.
fn send_pattern(addr: &str, kind: u8, bursts: &[u64], pause: Duration) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let mut stream = connect(addr)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    stream.write_all(&[kind]).map_err(|e| e.to_string())?;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut hasher = Fnv::default();
    let mut sent: u64 = 0;
    for (i, burst) in bursts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        let end = sent + burst;
        while sent < end {
            let n = chunk.len().min((end - sent) as usize);
            for (i, byte) in chunk[..n].iter_mut().enumerate() {
                *byte = ((sent + i as u64) % 251) as u8;
            }
            hasher.write(&chunk[..n]);
            stream
                .write_all(&chunk[..n])
                .map_err(|e| format!("write: {e}"))?;
            sent += n as u64;
        }
    }
    let answer = end_upload(&mut stream, "checksum")?;
    let mut parts = answer.split_whitespace();
    let received: u64 = number("checksum", parts.next().unwrap_or(""))?;
    let count: u64 = number("byte count", parts.next().unwrap_or(""))?;
    println!(
        "checksum sent={} received={received} bytes={count}",
        hasher.0
    );
    Ok(())
}

fn flood(addr: &str, limit: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let limit: u64 = number("limit", limit)?;
    let mut stream = connect(addr)?;
    writeln!(stream, "flood").map_err(|e| format!("cannot send: {e}"))?;
    read_line_raw(&mut stream)?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut accepted: u64 = 0;
    let mut blocked_since: Option<Instant> = None;
    let blocked = loop {
        if accepted >= limit {
            break false;
        }
        match stream.write(&chunk) {
            Ok(n) => {
                accepted += n as u64;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(500) {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("write after {accepted} bytes: {e}")),
        }
    };
    println!("flood accepted={accepted} blocked={blocked}");
    Ok(())
}

fn write_after_shutdown(addr: &str) -> Result<(), String> {
    let mut stream = connect(parse_addr(addr)?)?;
    writeln!(stream, "before").map_err(|e| format!("cannot send: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    match stream.write(b"after\n") {
        Ok(n) => Err(format!("a write after shutdown sent {n} bytes")),
        Err(e) => {
            println!("after-shutdown error={:?}", e.kind());
            Ok(())
        }
    }
}

fn concurrent(addr: &str, count: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: usize = number("count", count)?;
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        streams.push(connect(addr).map_err(|e| format!("connection {i}: {e}"))?);
    }
    let mut ok = 0;
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let reply = exchange(stream, &mut reader, &format!("concurrent-{i}"))
            .map_err(|e| format!("connection {i}: {e}"))?;
        if reply.ends_with(&format!("msg=concurrent-{i}")) {
            ok += 1;
        }
    }
    println!("concurrent ok={ok}");
    Ok(())
}

/// `count` connections, each: connect, one exchange, close; from `clients`
/// threads at once (the connections split between them).
fn crr(addr: &str, count: &str, clients: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: u32 = number("count", count)?;
    let clients: u32 = number("clients", clients)?;
    let clients = clients.clamp(1, count.max(1));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            // Client c takes connections c, c + clients, ...
            let mine = (c..count).step_by(clients as usize).count();
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..mine {
                    let fail = |e: String| format!("client {c}, connection {i}: {e}");
                    let mut stream = connect(addr).map_err(fail)?;
                    stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
                    stream
                        .write_all(b"crr\n")
                        .map_err(|e| fail(format!("cannot send: {e}")))?;
                    read_line_raw(&mut stream).map_err(fail)?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| "a client thread panicked".to_owned())??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "crr count={count} clients={clients} per_s={:.1}",
        f64::from(count) / elapsed
    );
    Ok(())
}

/// Reads one line straight from the socket (no buffered reader: the
/// connection carries nothing else).
fn read_line_raw(stream: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 256];
    let mut got = 0;
    loop {
        let n = stream
            .read(&mut buf[got..])
            .map_err(|e| format!("no reply: {e}"))?;
        if n == 0 {
            return Err("the connection closed without a reply".to_owned());
        }
        got += n;
        if buf[..got].contains(&b'\n') {
            return Ok(());
        }
        if got == buf.len() {
            return Err("a reply line longer than 256 bytes".to_owned());
        }
    }
}

/// The connection-rate server: `threads` threads accept on one listener and
/// each answers its connection inline.
fn crr_server(addr: &str, threads: &str) -> Result<(), String> {
    let threads: u32 = number("threads", threads)?;
    let listener = listen(addr)?;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.try_clone().map_err(|e| e.to_string())?;
            Ok(std::thread::spawn(move || {
                loop {
                    let Ok((mut stream, _)) = listener.accept() else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_read_timeout(Some(io_timeout()));
                    if read_line_raw(&mut stream).is_ok() {
                        let _ = stream.write_all(b"ok\n");
                    }
                }
            }))
        })
        .collect::<Result<_, String>>()?;
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

fn hold(addr: &str, count: &str, seconds: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: usize = number("count", count)?;
    let seconds: f64 = number("seconds", seconds)?;
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let fail = |e: String| format!("connection {i}: {e}");
        let mut stream = connect(addr).map_err(fail)?;
        writeln!(stream, "hold-{i}").map_err(|e| fail(format!("cannot send: {e}")))?;
        read_line_raw(&mut stream).map_err(fail)?;
        streams.push(stream);
    }
    println!("held {}", streams.len());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    Ok(())
}

fn hold_server(addr: &str) -> Result<(), String> {
    let listener = listen(addr)?;
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(io_timeout()));
        let mut line = [0u8; 256];
        let mut got = 0;
        // One line (a holder sends nothing more), answered with itself.
        while got < line.len() && !line[..got].contains(&b'\n') {
            match stream.read(&mut line[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if line[..got].ends_with(b"\n") && stream.write_all(&line[..got]).is_ok() {
            held.push(stream);
        }
    }
    Ok(())
}
