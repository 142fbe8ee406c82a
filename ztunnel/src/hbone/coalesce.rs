//! Fewer, larger reads under TLS. rustls asks its transport for at most 4 KiB
//! at a time, so a 16 KiB record costs four `recv` calls; [`CoalescedReads`]
//! reads up to [`BURST`] bytes at once and hands them out in the sizes asked
//! for. The buffer exists only while bytes are arriving: once the socket has
//! nothing more to give, it is freed, so an idle connection holds none.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
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
            // Large enough on its own: no point copying twice.
            if out.remaining() >= BURST {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; BURST];
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
    async fn small_reads_are_served_from_one_large_read_and_idle_holds_nothing() {
        let (mut peer, inner) = duplex(4 * BURST);
        let mut reads = CoalescedReads::new(inner);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < data.len() {
            let n = reads.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            assert!(reads.held() <= BURST);
        }
        assert!(got == data, "every byte, in order");
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
