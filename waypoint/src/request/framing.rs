//! HTTP/1 framing as it arrives, before hyper parses it.
//!
//! hyper's HTTP/1 parser settles two smuggling shapes on its own before the
//! waypoint sees the head: with both `Content-Length` and
//! `Transfer-Encoding: chunked` it drops `Content-Length`, reads the body as
//! chunked and closes the connection after the response (RFC 9112 section
//! 6.1 allows it), and it folds repeated identical `Content-Length` lines
//! into one. Nothing hidden after the body is then read as a request, but
//! the request itself is served, where the waypoint's rule is a 400: a
//! client that sends conflicting framing is confused or probing, and the
//! next hop must never be asked to guess.
//!
//! [`Guarded`] therefore watches the bytes hyper reads. A [`Scanner`] parses
//! each request head with httparse (hyper's own parser) and follows the body
//! framing (a length, or chunks with their trailers) to find the next head,
//! numbering heads from 0. The first head with both framings, or with more
//! than one `Content-Length` field line, is recorded in [`Verdicts`] with
//! its number; the request handler counts requests in the same order and
//! refuses that request and any after it. A head is always scanned before
//! hyper can parse it, so the verdict is there when the handler asks.
//!
//! The scanner is advisory: wherever it cannot follow (bytes that are not
//! an HTTP/1 head, such as the HTTP/2 preface or an upgraded stream; a head
//! larger than [`MAX_HEAD`]; a framing hyper refuses by itself) it stops
//! and passes bytes through untouched, leaving the decision to hyper. Cost:
//! one httparse pass over each head (in place, unless a head spans two
//! reads) and a byte loop over chunk-size lines; bodies are skipped by
//! length.

use std::{
    io,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::HeadError;

/// The largest head the scanner buffers across reads; past it, it stops
/// (hyper refuses such heads too: [`crate::proxy`]'s 64 KiB limit).
pub const MAX_HEAD: usize = 64 * 1024;

/// Header lines httparse is given room for (hyper allows 100).
const MAX_HEADERS: usize = 128;

/// The longest chunk-size line (with extensions) followed.
const MAX_CHUNK_LINE: usize = 4096;

/// The first request of a connection whose framing is refused, shared
/// between the stream and the request handler.
#[derive(Debug, Default)]
pub struct Verdicts {
    refused: OnceLock<(u64, HeadError)>,
}

impl Verdicts {
    /// Why request number `index` (from 0, in arrival order) is refused:
    /// it, or a request before it on the connection, has conflicting
    /// framing.
    pub fn refused(&self, index: u64) -> Option<&HeadError> {
        self.refused
            .get()
            .filter(|(first, _)| index >= *first)
            .map(|(_, error)| error)
    }
}

/// What the scanner expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head (possibly partly buffered).
    Head,
    /// `n` more body bytes, then a head.
    Body(u64),
    /// A chunk-size line: its digits so far, and how long it is.
    ChunkSize { size: u64, len: usize, ext: bool },
    /// The LF ending a chunk-size line.
    ChunkSizeLf { size: u64 },
    /// `n` more chunk data bytes.
    ChunkData(u64),
    /// The CR after chunk data.
    ChunkDataCr,
    /// The LF after chunk data.
    ChunkDataLf,
    /// The start of a trailer line, or the empty line that ends the body.
    TrailerStart,
    /// Inside a trailer line.
    Trailer { len: usize },
    /// The LF of a trailer line; `last` when the line was empty.
    TrailerLf { last: bool },
    /// Not following any more.
    Stopped,
}

/// Follows HTTP/1 request framing over a byte stream.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// A head that began in an earlier read.
    partial: Vec<u8>,
    /// Heads completed so far.
    heads: u64,
    verdicts: Arc<Verdicts>,
}

impl Scanner {
    /// A scanner at the start of a connection, recording into `verdicts`.
    pub fn new(verdicts: Arc<Verdicts>) -> Self {
        Self {
            state: State::Head,
            partial: Vec::new(),
            heads: 0,
            verdicts,
        }
    }

    /// Whether it still follows the stream.
    pub fn is_following(&self) -> bool {
        self.state != State::Stopped
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.state != State::Stopped {
            let used = match self.state {
                State::Head => self.head(data),
                State::Body(n) | State::ChunkData(n) => {
                    let take = usize::try_from(n).map_or(data.len(), |n| n.min(data.len()));
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), left) => State::Body(left),
                        (_, 0) => State::ChunkDataCr,
                        (_, left) => State::ChunkData(left),
                    };
                    take
                }
                _ => {
                    self.state = chunk_byte(self.state, data[0]);
                    1
                }
            };
            data = &data[used..];
        }
    }

    /// Parses a head from `data` (after what is buffered); returns the
    /// bytes of `data` used.
    fn head(&mut self, data: &[u8]) -> usize {
        let buffered = self.partial.len();
        let parsed = if buffered == 0 {
            parse_head(data)
        } else {
            let room = (MAX_HEAD + 1).saturating_sub(buffered);
            self.partial
                .extend_from_slice(&data[..data.len().min(room)]);
            parse_head(&self.partial)
        };
        match parsed {
            Parsed::Partial => {
                if buffered == 0 {
                    self.partial
                        .extend_from_slice(&data[..data.len().min(MAX_HEAD + 1)]);
                }
                if self.partial.len() > MAX_HEAD {
                    self.stop();
                }
                data.len()
            }
            Parsed::Invalid => {
                self.stop();
                data.len()
            }
            Parsed::Complete { len, next, refused } => {
                if let Some(error) = refused {
                    let _ = self.verdicts.refused.set((self.heads, error));
                }
                self.heads += 1;
                self.partial.clear();
                self.state = next;
                len - buffered
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.partial = Vec::new();
    }
}

/// What one parse of a head gave.
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1 request head httparse accepts (hyper refuses it, or it
    /// is not HTTP/1 at all).
    Invalid,
    /// A whole head of `len` bytes, what follows it, and why it is refused.
    Complete {
        len: usize,
        next: State,
        refused: Option<HeadError>,
    },
}

fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let mut lengths = 0_usize;
    let mut length = None;
    let mut chunked = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last line decides (RFC 9112 section 6.1).
            chunked = Some(
                header
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")),
            );
        }
    }
    let refused = match (lengths, chunked) {
        (1.., Some(_)) => Some(HeadError::ContentLengthWithTransferEncoding),
        (2.., None) => Some(HeadError::MultipleContentLength),
        _ => None,
    };
    let next = match (chunked, length) {
        // A CONNECT's bytes after the head are a tunnel's.
        _ if request.method == Some("CONNECT") => State::Stopped,
        (Some(true), _) => State::ChunkSize {
            size: 0,
            len: 0,
            ext: false,
        },
        // hyper refuses a request whose last coding is not chunked.
        (Some(false), _) => State::Stopped,
        (None, Some(0)) | (None, None) if lengths == 0 => State::Head,
        (None, Some(n)) => State::Body(n),
        // A length hyper cannot read: it refuses the request.
        (None, None) => State::Stopped,
    };
    Parsed::Complete { len, next, refused }
}

/// The state after `byte` in the chunk-size and trailer lines (RFC 9112
/// section 7.1, as hyper's decoder reads them: optional whitespace after the
/// size, extensions skipped).
fn chunk_byte(state: State, byte: u8) -> State {
    match state {
        State::ChunkSize { size, len, ext } => {
            if len >= MAX_CHUNK_LINE {
                return State::Stopped;
            }
            let len = len + 1;
            match byte {
                b'\r' if len > 1 => State::ChunkSizeLf { size },
                b';' | b' ' | b'\t' if len > 1 => State::ChunkSize {
                    size,
                    len,
                    ext: true,
                },
                _ if ext => State::ChunkSize { size, len, ext },
                _ => match (byte as char).to_digit(16) {
                    Some(digit) => size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                        .map_or(State::Stopped, |size| State::ChunkSize { size, len, ext }),
                    None => State::Stopped,
                },
            }
        }
        State::ChunkSizeLf { size } => match (byte, size) {
            (b'\n', 0) => State::TrailerStart,
            (b'\n', size) => State::ChunkData(size),
            _ => State::Stopped,
        },
        State::ChunkDataCr if byte == b'\r' => State::ChunkDataLf,
        State::ChunkDataLf if byte == b'\n' => State::ChunkSize {
            size: 0,
            len: 0,
            ext: false,
        },
        State::TrailerStart if byte == b'\r' => State::TrailerLf { last: true },
        State::TrailerStart => State::Trailer { len: 1 },
        State::Trailer { len } if len >= MAX_HEAD => State::Stopped,
        State::Trailer { .. } if byte == b'\r' => State::TrailerLf { last: false },
        State::Trailer { len } => State::Trailer { len: len + 1 },
        State::TrailerLf { last: true } if byte == b'\n' => State::Head,
        State::TrailerLf { last: false } if byte == b'\n' => State::TrailerStart,
        _ => State::Stopped,
    }
}

/// A stream whose reads pass through a [`Scanner`].
#[derive(Debug)]
pub struct Guarded<T> {
    inner: T,
    scanner: Scanner,
}

impl<T> Guarded<T> {
    /// `inner`, scanned from its first byte; the verdicts are read by the
    /// request handler.
    pub fn new(inner: T) -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::default());
        let scanner = Scanner::new(verdicts.clone());
        (Self { inner, scanner }, verdicts)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.scanner.is_following() {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
