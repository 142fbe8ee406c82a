//! Moving bytes between the two sides of a proxied connection until both are
//! done: half-close and resets propagate (tokio's bidirectional copy), with
//! bounded buffers, and a connection idle for longer than the idle timeout is
//! closed, so a stuck or vanished peer cannot hold its buffers forever.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

use super::ConnectionError;

/// Copies both ways until both sides are closed; fails with
/// [`ConnectionError::Idle`] when neither side moved a byte for `idle`.
/// Returns the bytes copied from `a` to `b` and from `b` to `a`.
pub async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> Result<(u64, u64), ConnectionError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Activity {
        inner: a,
        start,
        last: last.clone(),
    };
    let mut b = Activity {
        inner: b,
        start,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let last_ms = last.load(Ordering::Relaxed);
        let deadline = start + Duration::from_millis(last_ms) + idle;
        tokio::select! {
            result = &mut copy => return result.map_err(ConnectionError::Relay),
            () = tokio::time::sleep_until(deadline) => {
                // Activity since the sleep began moves the deadline on.
                if last.load(Ordering::Relaxed) == last_ms {
                    return Err(ConnectionError::Idle(idle));
                }
            }
        }
    }
}

/// One side, recording when it last moved bytes (ms since the relay began).
struct Activity<'a, T: ?Sized> {
    inner: &'a mut T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T: ?Sized> Activity<'_, T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Activity<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Activity<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

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
        assert!(
            matches!(result, Err(ConnectionError::Idle(_))),
            "{result:?}"
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
