//! One HTTP/1.1 connection to an origin: its transport and the bytes read from it but not
//! yet consumed. Idle in the pool between exchanges; `body` runs an exchange on it.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An origin connection's transport.
pub(crate) enum OriginIo {
    /// `http://`
    Plain(TcpStream),
    /// `https://` (boxed: the TLS state is large and most origins are plain).
    Tls(Box<TlsStream<TcpStream>>),
}

impl OriginIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for OriginIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OriginIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to an origin, idle in the pool or carrying one exchange.
pub(crate) struct Wire {
    pub(super) io: OriginIo,
    /// Bytes read and not yet consumed: empty between exchanges.
    pub(super) read: BytesMut,
    /// The request being written (kept to reuse its allocation).
    pub(super) write: Vec<u8>,
    /// The address it is connected to (to drop it when DNS stops returning that address).
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").field("addr", &self.addr).finish()
    }
}

impl Wire {
    /// A fresh connection over `io` to `addr`.
    pub(crate) fn new(io: OriginIo, addr: SocketAddr) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            addr,
        }
    }

    /// Whether an idle connection can take a request. An origin only sends on an idle
    /// keep-alive connection to close it, so anything readable (data, a TLS alert, end of
    /// stream) rules it out. No system call unless readiness is left from the last read; then a
    /// peek, which reads nothing a TLS session would miss.
    pub(crate) fn is_reusable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [MaybeUninit::uninit(); 1];
                let mut peeked = ReadBuf::uninit(&mut byte);
                // Pending means nothing to read: the readiness was stale (and is now cleared).
                self.io.tcp().poll_peek(&mut cx, &mut peeked).is_pending()
            }
        }
    }
}
