//! Fewer, larger reads under TLS. rustls asks its transport for at most 4 KiB
//! at a time, so a 16 KiB record costs four `recv` calls; [`CoalescedReads`]
//! reads up to [`BURST`] bytes at once and hands them out in the sizes asked
//! for. Small messages are read straight into the caller's buffer; only a read
//! that fills it (a burst is arriving) brings the coalescing buffer in, and
//! once the socket has nothing more to give it is freed again, so neither an
//! idle connection nor request/response traffic holds or allocates one.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read from the socket takes.
pub const BURST: usize = 64 * 1024;

/// A transport whose reads are coalesced; writes pass straight through.
#[derive(Debug)]
pub struct CoalescedReads<T> {
    inner: T,
    /// Empty while idle.
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
}

impl<T> CoalescedReads<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            cap: 0,
        }
    }

    /// Bytes of buffer held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedReads<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.cap {
            // Idle, or large enough on its own: read straight into the
            // caller's buffer. A read that fills it means a burst is arriving:
            // the next reads go through the coalescing buffer.
            if this.buf.is_empty() || out.remaining() >= BURST {
                let before = out.filled().len();
                let wanted = out.remaining();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                if out.filled().len() - before == wanted && wanted < BURST {
                    this.buf = vec![0; BURST];
                }
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Drained and waiting: hold nothing while idle.
                    this.buf = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(result) => result?,
            }
            this.pos = 0;
            this.cap = read.filled().len();
            if this.cap == 0 {
                this.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.cap - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedReads<T> {
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
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn a_small_message_is_read_directly_without_a_buffer() {
        let (mut peer, inner) = duplex(4 * BURST);
        let mut reads = CoalescedReads::new(inner);
        peer.write_all(&[9u8; 1000]).await.unwrap();
        let mut chunk = [0u8; 4096];
        assert_eq!(reads.read(&mut chunk).await.unwrap(), 1000);
        assert_eq!(reads.held(), 0, "no buffer for a message that fits");
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_idle_holds_nothing() {
        let (mut peer, inner) = duplex(4 * BURST);
        let mut reads = CoalescedReads::new(inner);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut coalesced = false;
        while got.len() < data.len() {
            let n = reads.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            assert!(reads.held() <= BURST);
            coalesced |= reads.held() == BURST;
        }
        assert!(got == data, "every byte, in order");
        assert!(coalesced, "a burst went through the large buffer");
        // Nothing left: the next read waits, and waiting holds no buffer.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = ReadBuf::new(&mut chunk);
        assert!(
            Pin::new(&mut reads)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        );
        assert_eq!(reads.held(), 0);
        drop(peer);
        assert_eq!(reads.read(&mut chunk).await.unwrap(), 0, "end of stream");
    }
}
