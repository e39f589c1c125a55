//! Closes connections on which no byte has moved for the idle timeout.
//!
//! [`IdleIo`] stamps every successful read and write; the connection task waits on
//! [`IdleIo::timer`] and shuts the connection down gracefully when it fires, so a request that is
//! merely waiting on a slow origin still finishes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pin_project! {
    /// A transport that records when bytes last moved.
    pub(crate) struct IdleIo<T> {
        #[pin]
        inner: T,
        clock: Arc<Activity>,
    }
}

/// The last-activity stamp shared between the transport and its timer.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Milliseconds since `base` of the last read or write.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    ///
    /// # Cancel safety
    /// Safe: it only sleeps and reads the stamp.
    pub(crate) async fn expired(&self, timeout: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl<T> IdleIo<T> {
    /// Wraps `inner`, starting the clock now.
    pub(crate) fn new(inner: T) -> Self {
        let clock = Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        Self { inner, clock }
    }

    /// The activity stamp, to wait on.
    pub(crate) fn timer(&self) -> Arc<Activity> {
        self.clock.clone()
    }
}

impl<T: AsyncRead> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_quiet_period() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a);
        let timer = io.timer();
        tokio::time::advance(Duration::from_secs(4)).await;
        b.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await.unwrap();
        let started = Instant::now();
        timer.expired(Duration::from_secs(5)).await;
        // Activity at t=4s pushes expiry to t=9s, five seconds after the read.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
