//! `ambit-testbin`: the TCP client and server that end-to-end tests run in pods.
//!
//! ```text
//! ambit-testbin echo <listen-addr>
//!     prints "listening <addr>", then answers each connection's first line with
//!     "from=<peer> to=<local> msg=<line>" (what the server saw) and closes it
//! ambit-testbin send <addr> <message> [count]
//!     connects <count> times (default 1), one after the other, sends <message>,
//!     and prints "reply <server's line> peer=<getpeername> local=<getsockname>"
//! ```
//! Exit status 0 on success, 1 with a message on stderr otherwise; every network
//! wait is bounded.
#![forbid(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["echo", addr] => echo(addr),
        ["send", addr, message] => send(addr, message, "1"),
        ["send", addr, message, count] => send(addr, message, count),
        _ => Err("usage: ambit-testbin echo <addr> | send <addr> <message> [count]".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ambit-testbin: {error}");
            ExitCode::FAILURE
        }
    }
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
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut stream = stream;
    writeln!(stream, "from={peer} to={local} msg={}", line.trim_end())?;
    stream.shutdown(Shutdown::Write)
}

fn send(addr: &str, message: &str, count: &str) -> Result<(), String> {
    let addr = parse_addr(addr)?;
    let count: u32 = count
        .parse()
        .map_err(|e| format!("bad count {count:?}: {e}"))?;
    for _ in 0..count {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let peer = stream.peer_addr().map_err(|e| e.to_string())?;
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        writeln!(stream, "{message}").map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .map_err(|e| format!("no reply from {addr}: {e}"))?;
        if reply.is_empty() {
            return Err(format!("{addr} closed the connection without a reply"));
        }
        println!("reply {} peer={peer} local={local}", reply.trim_end());
    }
    Ok(())
}
