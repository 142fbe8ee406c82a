//! One HBONE tunnel: the bytes of a proxied TCP connection carried by one
//! HTTP/2 CONNECT stream, as `AsyncRead + AsyncWrite`.
//!
//! Built on `h2` streams directly: data goes out as DATA frames as soon as the
//! stream has flow-control capacity, with no extra task or channel in between,
//! and the end of a connection is told apart from its failure: a clean end is
//! END_STREAM, a failure is RST_STREAM (CONNECT_ERROR for a TCP reset, as RFC
//! 9113 section 8.5 says), which the other side turns back into a TCP reset.
//!
//! What a connection holds for its peer is bounded. h2 keeps each stream's
//! unsent data up to `HBONE_SEND_BUFFER`, so a peer that opens a hundred
//! streams to a busy server and never reads would make it hold a hundred
//! times that. Every chunk handed to h2 therefore carries a share of its
//! connection's [`SendBudget`], taken before the chunk is queued and given
//! back when h2 drops it: once written to the TLS layer, or discarded with a
//! reset stream (no path keeps a share after its bytes are gone). A write
//! past the budget waits, as it would for the socket.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::PollSemaphore;

/// The most one write (or one chunk given by the relay) hands to HTTP/2 at
/// once; larger ones are taken in several calls.
const MAX_WRITE: usize = 256 * 1024;

/// Bytes queued in HTTP/2 for HBONE peers now, every connection of the
/// process together (`ambit_hbone_send_queued_bytes`).
pub static SEND_QUEUED: std::sync::LazyLock<Gauge> = std::sync::LazyLock::new(Gauge::default);

/// Writes to a tunnel that waited for their connection's send budget
/// (`ambit_hbone_send_budget_waits_total`): a peer reading slower than its
/// streams are written.
pub static SEND_BUDGET_WAITS: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// The bytes one HBONE connection may have queued in HTTP/2 for its peer,
/// all streams together (see the module's documentation).
#[derive(Debug, Clone)]
pub struct SendBudget {
    permits: Arc<Semaphore>,
    #[cfg(test)]
    bytes: u32,
}

impl SendBudget {
    /// A budget of `bytes`, at least [`MAX_WRITE`]: a write never asks for
    /// more than that, so it never waits for more than the whole budget.
    pub fn new(bytes: u32) -> Self {
        let bytes = bytes.max(MAX_WRITE as u32);
        Self {
            permits: Arc::new(Semaphore::new(bytes as usize)),
            #[cfg(test)]
            bytes,
        }
    }

    /// A share of `bytes`, once the budget has it. At most [`MAX_WRITE`], as
    /// for a write (more could wait for more than the whole budget).
    pub(super) async fn share(&self, bytes: usize) -> Result<OwnedSemaphorePermit, super::Error> {
        let too_large = || {
            super::Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{bytes} bytes in one write to a tunnel; the most is {MAX_WRITE}"),
            ))
        };
        if bytes > MAX_WRITE {
            return Err(too_large());
        }
        let bytes = u32::try_from(bytes).map_err(|_| too_large())?;
        self.permits
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| super::Error::Io(io::ErrorKind::BrokenPipe.into()))
    }

    /// The bytes queued now.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        (self.bytes as usize).saturating_sub(self.permits.available_permits())
    }
}

/// Data queued in HTTP/2, holding its share of the connection's
/// [`SendBudget`] until h2 drops it.
#[derive(Debug)]
pub struct Chunk {
    data: Bytes,
    share: Option<OwnedSemaphorePermit>,
}

impl Chunk {
    /// Data outside any budget (the empty END_STREAM frame).
    pub fn unbudgeted(data: Bytes) -> Self {
        Self { data, share: None }
    }

    /// `data`, holding `share` of its connection's budget.
    pub(super) fn budgeted(data: Bytes, share: OwnedSemaphorePermit) -> Self {
        SEND_QUEUED.inc_by(bytes_of(&share));
        Self {
            data,
            share: Some(share),
        }
    }
}

/// The bytes a share stands for (at most one write, [`MAX_WRITE`]).
fn bytes_of(share: &OwnedSemaphorePermit) -> i64 {
    i64::try_from(share.num_permits()).unwrap_or(i64::MAX)
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            SEND_QUEUED.dec_by(bytes_of(share));
        }
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.data.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.data.chunk()
    }

    fn advance(&mut self, n: usize) {
        self.data.advance(n);
    }
}

/// An HBONE tunnel. While it lives it counts against its connection's stream
/// budget (client side).
#[derive(Debug)]
pub struct Tunnel {
    send: SendStream<Chunk>,
    /// This tunnel's way into its connection's [`SendBudget`].
    budget: PollSemaphore,
    /// A write waits for the budget (counted once per wait).
    waiting: bool,
    recv: RecvStream,
    /// Received and not yet read.
    pending: Bytes,
    write_closed: bool,
    active: Option<Arc<AtomicUsize>>,
    /// Counts the stream in the process's open client streams.
    pub(super) count: Option<super::client::StreamCount>,
}

impl Tunnel {
    /// A tunnel over an accepted or opened stream, counted in `active` (the
    /// server side does not count).
    pub(crate) fn new(
        send: SendStream<Chunk>,
        recv: RecvStream,
        budget: &SendBudget,
        active: Option<Arc<AtomicUsize>>,
    ) -> Self {
        Self {
            send,
            budget: PollSemaphore::new(budget.permits.clone()),
            waiting: false,
            recv,
            pending: Bytes::new(),
            write_closed: false,
            active,
            count: None,
        }
    }

    /// Ends the tunnel abruptly: the peer sees RST_STREAM(CONNECT_ERROR) and
    /// resets its TCP connection.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
        self.write_closed = true;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(active) = &self.active {
            active.fetch_sub(1, Ordering::Relaxed);
        }
        // Dropped without a clean end: h2 cancels the stream (RST_STREAM).
    }
}

/// What a reset from the peer means to the side reading or writing. A reset
/// with NO_ERROR ends a stream before its END_STREAM (RFC 9113 section 8.1
/// allows it only after one): the data is cut short, so it is a reset too.
fn stream_error(error: h2::Error) -> io::Error {
    match error.reason() {
        Some(Reason::CONNECT_ERROR | Reason::CANCEL | Reason::NO_ERROR) => {
            io::Error::new(io::ErrorKind::ConnectionReset, error)
        }
        _ if error.is_io() => error
            .into_io()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe)),
        _ => io::Error::other(error),
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // END_STREAM: the peer's side of the connection is done. (A
                // reset that follows it still reads as this clean end: h2
                // keeps the received END_STREAM, since 0.4.20.)
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.pending = data,
                // Only END_STREAM is an orderly end: any reset before it, with
                // NO_ERROR too, cut the stream short.
                Some(Err(error)) => return Poll::Ready(Err(stream_error(error))),
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending.split_to(n));
        // Consumed: the peer may send that much more.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl Tunnel {
    /// Room for a write of `len` bytes (at most [`MAX_WRITE`]): the stream's
    /// flow-control capacity and its share of the connection's budget, for
    /// the returned number of bytes (at least one).
    fn poll_room(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
    ) -> Poll<io::Result<(usize, OwnedSemaphorePermit)>> {
        if let Poll::Ready(reset) = self.send.poll_reset(cx) {
            return Poll::Ready(Err(match reset {
                Ok(reason) => stream_error(h2::Error::from(reason)),
                Err(error) => stream_error(error),
            }));
        }
        let want = len.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        let mut capacity = self.send.capacity();
        while capacity == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(n)) => capacity = n,
                Some(Err(error)) => return Poll::Ready(Err(stream_error(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        // At most MAX_WRITE: never more than the whole budget.
        let n = capacity.min(want);
        // The stream's capacity stays reserved while the budget is awaited.
        match self.budget.poll_acquire_many(cx, n as u32) {
            Poll::Ready(Some(share)) => {
                self.waiting = false;
                Poll::Ready(Ok((n, share)))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    SEND_BUDGET_WAITS.inc();
                }
                Poll::Pending
            }
        }
    }

    /// Hands `data` to HTTP/2 as a DATA frame's payload.
    fn queue(&mut self, data: Bytes, share: OwnedSemaphorePermit) -> io::Result<()> {
        self.send
            .send_data(Chunk::budgeted(data, share), false)
            .map_err(stream_error)
    }
}

/// The relay's way in (see [`crate::relay::Side::chunks`]): what HTTP/2
/// received is taken as it lies in its read buffer, and what the relay read
/// from a socket becomes a DATA frame's payload without a copy.
impl crate::relay::Chunks for Tunnel {
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let chunk = if self.pending.is_empty() {
            loop {
                match ready!(self.recv.poll_data(cx)) {
                    None => return Poll::Ready(Ok(None)),
                    Some(Ok(data)) if data.is_empty() => {}
                    Some(Ok(data)) => break data,
                    Some(Err(error)) => return Poll::Ready(Err(stream_error(error))),
                }
            }
        } else {
            std::mem::take(&mut self.pending)
        };
        // Taken: the peer may send that much more.
        let _ = self.recv.flow_control().release_capacity(chunk.len());
        Poll::Ready(Ok(Some(chunk)))
    }

    fn poll_give(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let (n, share) = ready!(self.poll_room(cx, data.len()))?;
        self.queue(data.split_to(n), share)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let (n, share) = ready!(self.poll_room(cx, buf.len()))?;
        self.queue(Bytes::copy_from_slice(&buf[..n]), share)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are written out by the connection's task as soon as queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send
                .send_data(Chunk::unbudgeted(Bytes::new()), true)
                .map_err(stream_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
