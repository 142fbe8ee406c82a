//! Moving bytes between the two sides of a proxied connection until both are
//! done. Half-close and resets propagate: when one side ends its stream, the
//! other side's write half is shut down, and an error on either side ends both.
//!
//! Memory follows traffic: each direction reads into a buffer that starts at
//! [`MIN_BUFFER`], doubles whenever a read fills it (up to [`MAX_BUFFER`], so a
//! bulk transfer moves large chunks with few system calls), and is released
//! altogether once the connection has been quiet for [`SHRINK_AFTER`]: an idle
//! connection holds no relay buffer. A connection idle for longer than the idle
//! timeout is closed, so a stuck or vanished peer cannot hold anything forever.
//!
//! Bytes are not copied in user space where a side keeps its data as [`Bytes`]
//! (an HBONE tunnel, see [`Side::chunks`]): what is read from a socket is
//! handed to the tunnel as it lies in the read buffer, and what a tunnel
//! received is written to the socket from where HTTP/2 put it. Only the
//! kernel copies, into and out of the sockets.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};

/// Why a relay ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Neither side moved a byte for the idle timeout.
    #[error("closed after {0:?} without traffic (idle timeout)")]
    Idle(Duration),
    /// Reading or writing one side failed (a reset, say).
    #[error("relaying bytes failed")]
    Io(#[source] io::Error),
}

/// The first buffer of a direction (and after it was released).
pub const MIN_BUFFER: usize = 4 * 1024;
/// The largest buffer a direction grows to.
pub const MAX_BUFFER: usize = 256 * 1024;
/// Quiet time after which both directions release their buffers.
pub const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// A side of a relay: it can be ended abruptly, so that its peer sees a reset
/// rather than an orderly end of stream, and it may move its data as owned
/// chunks rather than through copies.
pub trait Side {
    /// Makes the coming close a reset.
    fn abort(&mut self);

    /// The side's own chunks, when it keeps what it receives and what it sends
    /// as [`Bytes`] (an HBONE tunnel): the relay then takes and gives chunks
    /// instead of reading and writing copies. `None` (the default): reads and
    /// writes through `AsyncRead` and `AsyncWrite`.
    fn chunks(&mut self) -> Option<&mut dyn Chunks> {
        None
    }
}

/// Data moved as owned chunks, without a copy (see [`Side::chunks`]).
pub trait Chunks {
    /// The next received bytes, taken as they are held; `None` at the
    /// orderly end of the stream. They count as consumed (a flow-controlled
    /// peer may send as much more).
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;

    /// Queues a front part of `data` (at least a byte, once ready) to be
    /// sent, taking it off `data`.
    fn poll_give(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>>;
}

impl Side for tokio::net::TcpStream {
    fn abort(&mut self) {
        // Closing with a zero linger time sends RST.
        let _ = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO));
    }
}

impl Side for crate::hbone::client::Tunnel {
    fn abort(&mut self) {
        self.reset();
    }

    fn chunks(&mut self) -> Option<&mut dyn Chunks> {
        Some(self)
    }
}

/// Told of the bytes a relay moves, as they move (so a long connection shows
/// its traffic before it ends, and one that ends in a reset still counts
/// what it carried).
pub trait Meter: Sync {
    /// `forward` more bytes went from the first side to the second,
    /// `backward` more the other way; one of them is not zero.
    fn moved(&self, forward: u64, backward: u64);
}

/// A [`Meter`] that counts nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMeter;

impl Meter for NoMeter {
    fn moved(&self, _: u64, _: u64) {}
}

/// Copies both ways until both sides are closed; fails with
/// [`RelayError::Idle`] when neither side moved a byte for `idle`.
/// Returns the bytes copied from `a` to `b` and from `b` to `a`. When either
/// side fails (a reset, say), both are aborted: a reset on one side is a
/// reset on the other, never a clean end that could pass a truncated stream
/// off as complete.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Result<(u64, u64), RelayError>
where
    A: AsyncRead + AsyncWrite + Side + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Side + Unpin + ?Sized,
{
    relay_metered(a, b, idle, &NoMeter).await
}

/// [`relay`], telling `meter` of every byte as it moves.
pub async fn relay_metered<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    meter: &dyn Meter,
) -> Result<(u64, u64), RelayError>
where
    A: AsyncRead + AsyncWrite + Side + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Side + Unpin + ?Sized,
{
    let result = copy_both_ways(a, b, idle, meter).await;
    if let Err(RelayError::Io(_)) = &result {
        a.abort();
        b.abort();
    }
    result
}

async fn copy_both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    meter: &dyn Meter,
) -> Result<(u64, u64), RelayError>
where
    A: AsyncRead + AsyncWrite + Side + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Side + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    let idle_timer = tokio::time::sleep(idle);
    let shrink_timer = tokio::time::sleep(SHRINK_AFTER);
    tokio::pin!(idle_timer, shrink_timer);
    let mut timers = Timers {
        last: Instant::now(),
        idle,
        idle_timer,
        shrink_timer,
        holding: true,
    };
    poll_fn(|cx| {
        let before = (a_to_b.amount, b_to_a.amount);
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b);
        let backward = if matches!(forward, Poll::Ready(Err(_))) {
            Poll::Pending
        } else {
            b_to_a.poll_copy(cx, &mut *b, &mut *a)
        };
        // Before any error returns: what moved until then counts.
        let moved = (a_to_b.amount - before.0, b_to_a.amount - before.1);
        if moved != (0, 0) {
            meter.moved(moved.0, moved.1);
        }
        let forward = forward.map_err(RelayError::Io)?;
        let backward = backward.map_err(RelayError::Io)?;
        if let (Poll::Ready(sent), Poll::Ready(received)) = (forward, backward) {
            return Poll::Ready(Ok((sent, received)));
        }
        if a_to_b.take_moved() | b_to_a.take_moved() {
            timers.activity();
        }
        if timers.poll_idle(cx) {
            return Poll::Ready(Err(RelayError::Idle(idle)));
        }
        if timers.poll_release(cx) {
            a_to_b.release();
            b_to_a.release();
        }
        Poll::Pending
    })
    .await
}

/// The idle timeout and the buffer release, both counted from the last
/// activity. A timer that fires early (activity moved its deadline on) is
/// re-armed rather than reset on every read, which would cost a timer update
/// per chunk.
struct Timers<'a> {
    last: Instant,
    idle: Duration,
    idle_timer: Pin<&'a mut Sleep>,
    shrink_timer: Pin<&'a mut Sleep>,
    /// Whether buffers may be held (the release timer is armed).
    holding: bool,
}

impl Timers<'_> {
    fn activity(&mut self) {
        self.last = Instant::now();
        if !self.holding {
            self.holding = true;
            self.shrink_timer.as_mut().reset(self.last + SHRINK_AFTER);
        }
    }

    /// Whether the connection has been idle for the whole idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last + self.idle;
            if deadline <= Instant::now() {
                return true;
            }
            self.idle_timer.as_mut().reset(deadline);
        }
        false
    }

    /// Whether the buffers should be released now (quiet for
    /// [`SHRINK_AFTER`]); then the timer stays disarmed until traffic returns.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.holding {
            return false;
        }
        while self.shrink_timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last + SHRINK_AFTER;
            if deadline <= Instant::now() {
                self.holding = false;
                return true;
            }
            self.shrink_timer.as_mut().reset(deadline);
        }
        false
    }
}

/// One direction: read a chunk, write it all out, repeat; at the reader's
/// end of stream, flush and shut the writer down.
#[derive(Debug)]
struct Direction {
    /// Where reads from a copying reader land; empty while released.
    buf: BytesMut,
    /// The size of the buffer's allocation, as far as reads use it (0 while
    /// released).
    allocated: usize,
    /// The size of the next read.
    size: usize,
    /// Read and not yet written: a part of `buf`, or a chunk taken from the
    /// reader.
    pending: Bytes,
    read_done: bool,
    need_flush: bool,
    done: bool,
    /// Bytes written so far.
    amount: u64,
    /// Whether bytes moved since [`Direction::take_moved`] last looked.
    moved: bool,
}

impl Default for Direction {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            allocated: 0,
            size: MIN_BUFFER,
            pending: Bytes::new(),
            read_done: false,
            need_flush: false,
            done: false,
            amount: 0,
            moved: false,
        }
    }
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Side + Unpin + ?Sized,
        W: AsyncWrite + Side + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.amount));
            }
            if self.pending.is_empty() && !self.read_done {
                // Let go of the last chunk, so that the buffer it came from
                // can be reused once the writer let go of it too.
                self.pending = Bytes::new();
                let give = writer.chunks().is_some();
                match self.poll_read(cx, reader, give) {
                    Poll::Pending => {
                        // Nothing to read now: push out what was written.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(result) => result?,
                }
            }
            while !self.pending.is_empty() {
                let before = self.pending.len();
                match writer.chunks() {
                    Some(chunks) => ready!(chunks.poll_give(cx, &mut self.pending))?,
                    None => {
                        let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.pending))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "the receiving side accepts no more bytes",
                            )));
                        }
                        self.pending.advance(n);
                    }
                }
                self.amount += (before - self.pending.len()) as u64;
                self.need_flush = true;
                self.moved = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                self.pending = Bytes::new();
                self.buf = BytesMut::new();
                self.allocated = 0;
            }
        }
    }

    /// Reads the next chunk into `pending`, or notes the end of stream.
    /// `give`: the chunk will be given to a writer that keeps it (queued for
    /// a peer) rather than written out at once.
    fn poll_read<R>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        give: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Side + Unpin + ?Sized,
    {
        if let Some(chunks) = reader.chunks() {
            match ready!(chunks.poll_take(cx))? {
                Some(chunk) => {
                    self.moved = true;
                    // Passed on to a writer that keeps it, a small chunk is
                    // copied, as a small read is: it may be a slice of a
                    // much larger buffer of the reader's.
                    self.pending = if give && chunk.len() < MAX_BUFFER / 2 {
                        Bytes::copy_from_slice(&chunk)
                    } else {
                        chunk
                    };
                }
                None => self.read_done = true,
            }
            return Poll::Ready(Ok(()));
        }
        if self.buf.capacity() < self.size {
            if self.allocated < self.size {
                // Growing: a new buffer of the new size.
                self.buf = BytesMut::with_capacity(self.size);
            } else {
                // Reuses the allocation when nothing else holds a part of
                // it any more; otherwise (a writer still holds chunks of
                // it) a new one.
                self.buf.reserve(self.size);
            }
            self.allocated = self.buf.capacity();
        }
        let mut room = (&mut self.buf).limit(self.size);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *reader),
            cx,
            &mut room
        ))?;
        if n == 0 {
            self.read_done = true;
        } else {
            self.moved = true;
            self.pending = if give && n < self.size / 2 {
                // A small read given away is copied: its chunk, kept until
                // the peer takes it, would otherwise keep the whole buffer
                // (up to `size / n` times its bytes; queued chunks are
                // budgeted by their bytes). This buffer is reused.
                let copy = Bytes::copy_from_slice(&self.buf);
                self.buf.clear();
                copy
            } else {
                self.buf.split().freeze()
            };
            if n == self.size {
                // A full read: more is waiting; read more at once.
                self.size = (self.size * 2).min(MAX_BUFFER);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Frees the buffer when it holds nothing unwritten; the next read starts
    /// small again.
    fn release(&mut self) {
        if self.pending.is_empty() {
            self.pending = Bytes::new();
            self.buf = BytesMut::new();
            self.allocated = 0;
            self.size = MIN_BUFFER;
        }
    }

    /// Bytes of buffer held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    impl Side for DuplexStream {
        fn abort(&mut self) {}
    }

    /// Sums what it is told.
    #[derive(Default)]
    struct Sum(std::sync::Mutex<(u64, u64, usize)>);

    impl Meter for Sum {
        fn moved(&self, forward: u64, backward: u64) {
            let mut sum = self.0.lock().unwrap();
            assert!(forward + backward > 0, "told of nothing");
            sum.0 += forward;
            sum.1 += backward;
            sum.2 += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_meter_hears_of_bytes_as_they_move_and_of_those_before_an_idle_end() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let meter = std::sync::Arc::new(Sum::default());
        let seen = meter.clone();
        let relay = tokio::spawn(async move {
            relay_metered(&mut a, &mut b, Duration::from_secs(10), &*meter).await
        });
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(b"hi").await.unwrap();
        client.read_exact(&mut buf[..2]).await.unwrap();
        // While the connection is open.
        let sum = *seen.0.lock().unwrap();
        assert_eq!((sum.0, sum.1), (5, 2));
        client.write_all(b"more").await.unwrap();
        server.read_exact(&mut buf[..4]).await.unwrap();
        // It ends badly (idle), and the counts stand.
        let result = relay.await.unwrap();
        assert!(matches!(result, Err(RelayError::Idle(_))), "{result:?}");
        let sum = *seen.0.lock().unwrap();
        assert_eq!((sum.0, sum.1), (9, 2));
        assert!(sum.2 >= 3, "told as it moved, not once at the end");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_an_active_one_is_not() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(10)).await });
        // Activity every 6 s keeps it open past the 10 s idle timeout.
        for _ in 0..3 {
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        assert!(!relay.is_finished(), "active for 18 s, never idle 10 s");
        // Then silence: closed after the idle timeout.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let result = relay.await.unwrap();
        assert!(matches!(result, Err(RelayError::Idle(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_bulk_transfer_arrives_intact_while_the_buffer_grows() {
        let (mut client, mut a) = duplex(MAX_BUFFER * 2);
        let (mut b, mut server) = duplex(MAX_BUFFER * 2);
        let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut direction = Direction::default();
        let copy = tokio::spawn(async move {
            let mut largest = 0;
            let copied = poll_fn(|cx| {
                let poll = direction.poll_copy(cx, &mut a, &mut b);
                largest = largest.max(direction.held());
                poll
            })
            .await;
            (copied, largest, direction)
        });
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let (copied, largest, direction) = copy.await.unwrap();
        assert_eq!(copied.unwrap(), data.len() as u64);
        assert!(got == data, "every byte arrives, in order");
        assert!(
            largest > MIN_BUFFER,
            "full reads grew the buffer ({largest})"
        );
        assert!(largest <= MAX_BUFFER, "never beyond the cap ({largest})");
        assert_eq!(direction.held(), 0, "a finished direction holds nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn buffers_are_released_after_a_quiet_second_and_come_back_with_traffic() {
        let (mut client, mut a) = duplex(64 * 1024);
        let (mut b, mut server) = duplex(64 * 1024);
        let mut a_to_b = Direction::default();
        let idle_timer = tokio::time::sleep(Duration::from_secs(3600));
        let shrink_timer = tokio::time::sleep(SHRINK_AFTER);
        tokio::pin!(idle_timer, shrink_timer);
        let mut timers = Timers {
            last: Instant::now(),
            idle: Duration::from_secs(3600),
            idle_timer,
            shrink_timer,
            holding: true,
        };
        // One poll step of the relay, for one direction.
        let mut step = |a: &mut DuplexStream, b: &mut DuplexStream| {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = a_to_b.poll_copy(&mut cx, a, b);
            if a_to_b.take_moved() {
                timers.activity();
            }
            if timers.poll_release(&mut cx) {
                a_to_b.release();
            }
            a_to_b.held()
        };
        client.write_all(&[7u8; 100]).await.unwrap();
        assert_eq!(step(&mut a, &mut b), MIN_BUFFER, "traffic allocates");
        let mut got = [0u8; 100];
        server.read_exact(&mut got).await.unwrap();
        tokio::time::advance(SHRINK_AFTER / 2).await;
        assert_eq!(
            step(&mut a, &mut b),
            MIN_BUFFER,
            "kept while recently active"
        );
        tokio::time::advance(SHRINK_AFTER).await;
        assert_eq!(step(&mut a, &mut b), 0, "released after a quiet second");
        client.write_all(b"again").await.unwrap();
        assert_eq!(
            step(&mut a, &mut b),
            MIN_BUFFER,
            "allocated again on traffic"
        );
        tokio::time::advance(SHRINK_AFTER * 2).await;
        assert_eq!(step(&mut a, &mut b), 0, "and released again");
    }

    /// A side with chunks, as an HBONE tunnel: what it gives when taken
    /// from are slices of one large buffer (as HTTP/2's DATA payloads are
    /// slices of its read buffer), and it keeps every chunk given to it (as
    /// HTTP/2 keeps queued data until its peer takes it).
    #[derive(Default)]
    struct ChunkSide {
        buffer: Bytes,
        /// The sizes of the slices it gives, in turn.
        slices: Vec<usize>,
        kept: Vec<Bytes>,
    }

    impl Chunks for ChunkSide {
        fn poll_take(&mut self, _: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
            if self.slices.is_empty() {
                return Poll::Pending;
            }
            let n = self.slices.remove(0);
            Poll::Ready(Ok(Some(self.buffer.split_to(n))))
        }

        fn poll_give(&mut self, _: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
            self.kept.push(std::mem::take(data));
            Poll::Ready(Ok(()))
        }
    }

    impl Side for ChunkSide {
        fn abort(&mut self) {}

        fn chunks(&mut self) -> Option<&mut dyn Chunks> {
            Some(self)
        }
    }

    impl AsyncRead for ChunkSide {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            unreachable!("a side with chunks is taken from, never read")
        }
    }

    impl AsyncWrite for ChunkSide {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            unreachable!("a side with chunks is given chunks, never written to")
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn full_reads_are_given_as_read_and_small_ones_keep_only_their_bytes() {
        let (mut client, mut a) = duplex(MAX_BUFFER);
        let mut keeper = ChunkSide::default();
        let mut direction = Direction::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Full reads: the buffer grows, each read is given whole.
        let mut size = MIN_BUFFER;
        while size <= MAX_BUFFER {
            client.write_all(&vec![1u8; size]).await.unwrap();
            let _ = direction.poll_copy(&mut cx, &mut a, &mut keeper);
            size *= 2;
        }
        let sizes: Vec<usize> = keeper.kept.iter().map(Bytes::len).collect();
        let grown: Vec<usize> = (0..sizes.len()).map(|i| MIN_BUFFER << i).collect();
        assert_eq!(sizes, grown, "one chunk per read, as large as the read");
        // Small reads from the large buffer: each chunk kept is a copy of
        // its own, so what the keeper holds is its bytes, not buffers.
        keeper.kept.clear();
        for byte in 0..4u8 {
            client.write_all(&[byte]).await.unwrap();
            let _ = direction.poll_copy(&mut cx, &mut a, &mut keeper);
        }
        assert_eq!(keeper.kept.len(), 4);
        for (i, chunk) in keeper.kept.drain(..).enumerate() {
            assert_eq!(chunk[..], [i as u8], "the bytes, in order");
            // What the chunk keeps alive: its own allocation.
            let alive = chunk
                .try_into_mut()
                .unwrap_or_else(|_| panic!("chunk {i} shares its memory"))
                .capacity();
            assert!(alive < 64, "chunk {i} keeps {alive} bytes alive for 1");
        }
        assert_eq!(direction.held(), MAX_BUFFER, "the buffer is kept for reuse");
    }

    #[test]
    fn chunks_passed_between_keeping_sides_are_copied_only_when_small() {
        let buffer = Bytes::from(vec![9u8; 4 * MAX_BUFFER]);
        let start = buffer.as_ptr();
        let mut source = ChunkSide {
            buffer,
            slices: vec![MAX_BUFFER, 10],
            ..ChunkSide::default()
        };
        let mut keeper = ChunkSide::default();
        let mut direction = Direction::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let _ = direction.poll_copy(&mut cx, &mut source, &mut keeper);
        assert_eq!(keeper.kept.len(), 2);
        let large = keeper.kept.remove(0);
        assert_eq!(large.len(), MAX_BUFFER);
        assert_eq!(large.as_ptr(), start, "a large chunk is passed on as it is");
        drop(source);
        let small = keeper.kept.remove(0);
        assert_eq!(small[..], [9u8; 10]);
        let alive = small
            .try_into_mut()
            .unwrap_or_else(|_| panic!("the small chunk shares the source's buffer"))
            .capacity();
        assert!(
            alive < 64,
            "the small chunk keeps {alive} bytes alive for 10"
        );
    }

    #[tokio::test]
    async fn half_close_propagates_and_counts_bytes() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(10)).await });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"request",
            "the client's end of stream reached the server"
        );
        server.write_all(b"response!").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response!");
        assert_eq!(relay.await.unwrap().unwrap(), (7, 9));
    }
}
