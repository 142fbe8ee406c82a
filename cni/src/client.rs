//! The exchange with ztunnel: connect to its unix socket, write one request
//! line, read one reply line, all within the config's timeout.
//!
//! Failures fall in two kinds, and the plugin treats them differently:
//! [`Error::Unreachable`] (no connection, an I/O error, or no complete reply in
//! time: ztunnel cannot have decided anything) and [`Error::Malformed`]
//! (ztunnel answered, but not in the protocol: treated like a refusal).
//!
//! The timeout bounds the whole exchange, not only each read and write. The
//! stream gets read and write timeouts, but std cannot time out a unix
//! `connect`, and Linux blocks a connect to a listener whose backlog is full (a
//! wedged ztunnel that stopped accepting) for the socket's send timeout, which
//! is unset, so forever. The exchange therefore runs on a helper thread and the
//! caller waits for it at most `timeout`; a thread still stuck at the deadline
//! is abandoned and dies with this short-lived process.

use std::{
    fmt,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::Duration,
};

use crate::protocol::{MalformedReply, Reply, Request};

/// The longest reply line read; ztunnel's replies are a few dozen bytes.
const MAX_REPLY_BYTES: u64 = 64 * 1024;

/// Why no usable reply came back.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// ztunnel could not be asked: nothing listens on the socket, the
    /// connection broke, or no whole reply arrived within the timeout.
    Unreachable {
        /// The socket that was tried.
        socket: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// ztunnel answered with something that is not a reply of the protocol, or
    /// closed the connection without answering.
    Malformed {
        /// The socket that was tried.
        socket: PathBuf,
        /// What is wrong with the reply.
        source: MalformedReply,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { socket, .. } => {
                write!(f, "cannot reach ztunnel at {}", socket.display())
            }
            Error::Malformed { socket, .. } => {
                write!(f, "cannot read ztunnel's reply on {}", socket.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unreachable { source, .. } => Some(source),
            Error::Malformed { source, .. } => Some(source),
        }
    }
}

/// A failure of the exchange before it is tied to its socket.
enum Failure {
    Io(io::Error),
    Malformed(MalformedReply),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Failure::Io(error)
    }
}

/// Sends `request` to ztunnel at `socket` and returns its reply, taking at most
/// about `timeout` in all.
pub fn exchange(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, Error> {
    let unreachable = |source| Error::Unreachable {
        socket: socket.to_owned(),
        source,
    };
    let line = request.to_line();
    let path = socket.to_owned();
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("ztunnel-exchange".to_owned())
        .spawn(move || {
            // The receiver is gone only when the caller gave up at its deadline.
            let _ = sender.send(talk(&path, &line, timeout));
        })
        .map_err(unreachable)?;
    match receiver.recv_timeout(timeout) {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(Failure::Io(source))) => Err(unreachable(describe_timeout(source, timeout))),
        Ok(Err(Failure::Malformed(source))) => Err(Error::Malformed {
            socket: socket.to_owned(),
            source,
        }),
        Err(RecvTimeoutError::Timeout) => Err(unreachable(no_reply(timeout))),
        Err(RecvTimeoutError::Disconnected) => Err(unreachable(io::Error::other(
            "Bug: the exchange thread ended without a result",
        ))),
    }
}

/// The exchange itself, on the helper thread.
fn talk(socket: &Path, line: &[u8], timeout: Duration) -> Result<Reply, Failure> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(line)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream).take(MAX_REPLY_BYTES + 1);
    let mut reply = Vec::new();
    reader.read_until(b'\n', &mut reply)?;
    let malformed = |problem: &str| {
        Failure::Malformed(MalformedReply {
            problem: problem.to_owned(),
        })
    };
    if reply.is_empty() {
        return Err(malformed("the connection closed without a reply line"));
    }
    if reply.len() as u64 > MAX_REPLY_BYTES {
        return Err(malformed("the reply line is longer than 64 KiB"));
    }
    // A last line without its `\n` is still read: the JSON object delimits
    // itself, so the terminator adds nothing.
    Reply::parse(&reply).map_err(Failure::Malformed)
}

/// The error of a read or write timeout says "would block"; say what it means.
fn describe_timeout(error: io::Error, timeout: Duration) -> io::Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => no_reply(timeout),
        _ => error,
    }
}

fn no_reply(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no reply within {}s", timeout.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixListener,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::{cni_args::PodRef, protocol::Command};

    fn request() -> Request {
        Request {
            command: Command::Check,
            pod: PodRef {
                namespace: "demo".into(),
                name: "web-1".into(),
                uid: "u".into(),
            },
            netns: "/var/run/netns/x".into(),
            container_id: "c".into(),
            ips: Vec::new(),
        }
    }

    /// A listener that answers one connection with `reply` (written as is);
    /// the receiver gets the request line it read.
    fn serve_once(dir: &Path, reply: &'static [u8]) -> (PathBuf, mpsc::Receiver<Vec<u8>>) {
        let socket = dir.join("cni.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (sender, received) = mpsc::channel();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            BufReader::new(&stream)
                .read_until(b'\n', &mut line)
                .unwrap();
            (&stream).write_all(reply).unwrap();
            let _ = sender.send(line);
        });
        (socket, received)
    }

    /// The request the server read; bounded so that a client that never
    /// connects fails the test rather than hanging it.
    fn request_line(received: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
        received.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn reads_a_reply_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, server) = serve_once(dir.path(), b"{\"enrolled\":true}");
        let reply = exchange(&socket, &request(), Duration::from_secs(5)).unwrap();
        assert_eq!(reply, Reply::Enrolled);
        assert_eq!(request_line(&server), request().to_line());
    }

    #[test]
    fn closing_without_a_reply_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, server) = serve_once(dir.path(), b"");
        let error = exchange(&socket, &request(), Duration::from_secs(5)).unwrap_err();
        request_line(&server);
        assert!(matches!(error, Error::Malformed { .. }), "{error:?}");
        assert!(crate::outcome::chain(&error).contains("closed without a reply"));
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let error = exchange(
            &dir.path().join("absent.sock"),
            &request(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    }

    #[test]
    fn silent_server_times_out_as_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        // Bound but never accepted: the connect succeeds into the backlog and
        // the read waits for a reply that never comes.
        let _listener = UnixListener::bind(&socket).unwrap();
        let started = Instant::now();
        let error = exchange(&socket, &request(), Duration::from_secs(1)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let Error::Unreachable { source, .. } = &error else {
            panic!("expected unreachable, got {error:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::TimedOut);
        assert_eq!(source.to_string(), "no reply within 1s");
    }
}
