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
//! ```
//! Exit status 0 on success, 1 with a message on stderr otherwise. Every network
//! wait is bounded: 10 s, or AMBIT_TESTBIN_TIMEOUT_MS.
#![forbid(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["echo", addr] => echo(addr),
        ["send", addr, message] => send(addr, message, "1"),
        ["send", addr, message, count] => send(addr, message, count),
        ["session", addr, count, interval] => session(addr, count, interval),
        _ => Err(
            "usage: ambit-testbin echo <addr> | send <addr> <message> [count] | \
                  session <addr> <count> <interval-ms>"
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

fn echo(addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(parse_addr(addr)?)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {local}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(error) = answer(stream) {
                eprintln!("ambit-testbin: echo: {error}");
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

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, io_timeout())
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
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
    let count: u32 = count
        .parse()
        .map_err(|e| format!("bad count {count:?}: {e}"))?;
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
    let count: u32 = count
        .parse()
        .map_err(|e| format!("bad count {count:?}: {e}"))?;
    let interval: u64 = interval
        .parse()
        .map_err(|e| format!("bad interval {interval:?}: {e}"))?;
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
