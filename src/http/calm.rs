//! HTTP/2 control-frame floods end their connection with GOAWAY(ENHANCE_YOUR_CALM).
//!
//! hyper's h2 answers every PING and SETTINGS frame, one at a time, so a client sending
//! thousands a second costs a bounded but endless stream of work and keeps its connection;
//! nginx closes such a connection, and RFC 9113 §10.5 names the error to close it with. The
//! h2 crate has no limit of its own for these, so [`Calm`] counts them beneath it, in the
//! plaintext it reads: it walks frame headers only (a payload is skipped by its length, so the
//! cost is per frame, not per byte) and reads the clock only for a control frame. Past
//! [`MAX_CONTROL_FRAMES`] in one [`WINDOW`], it writes a GOAWAY between two of h2's frames,
//! shuts the transport down (TLS close_notify) and fails the read, which ends the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

/// Control frames (PING, SETTINGS, PRIORITY; acknowledgements not counted) a client may send
/// in one [`WINDOW`]. Browsers send a handful per connection.
pub(crate) const MAX_CONTROL_FRAMES: u32 = 100;
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// The client connection preface (RFC 9113 §3.4), before its first frame.
const PREFACE_LEN: usize = 24;

const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

pin_project! {
    /// An HTTP/2 server transport that ends control-frame floods (see the module doc).
    pub(crate) struct Calm<T> {
        #[pin]
        inner: T,
        read: Walker,
        written: Walker,
        // The highest stream a client opened: GOAWAY's last stream id.
        last_stream: u32,
        window: Option<(Instant, u32)>,
        // Once flooded: the GOAWAY frame and how much of it is written.
        goaway: Option<([u8; FRAME_HEADER_LEN + 8], usize)>,
    }
}

impl<T> Calm<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            read: Walker::after(PREFACE_LEN),
            written: Walker::after(0),
            last_stream: 0,
            window: None,
            goaway: None,
        }
    }
}

/// Follows a byte stream of HTTP/2 frames: which byte of which frame comes next.
#[derive(Debug)]
struct Walker {
    /// Bytes still to skip before the first frame (the client's preface).
    preface: usize,
    header: [u8; FRAME_HEADER_LEN],
    /// Bytes of `header` read so far.
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload: usize,
}

impl Walker {
    fn after(preface: usize) -> Self {
        Self {
            preface,
            header: [0; FRAME_HEADER_LEN],
            have: 0,
            payload: 0,
        }
    }

    /// Walks `bytes`, calling `frame(type, flags, stream id)` for every frame header completed.
    #[inline]
    fn walk(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8, u32)) {
        // Most calls stay inside one payload (a DATA frame written in parts), or hold whole
        // frames: a subtraction, or a header read in place.
        if self.payload >= bytes.len() {
            self.payload -= bytes.len();
            return;
        }
        while !bytes.is_empty() {
            if self.have == 0
                && self.payload == 0
                && self.preface == 0
                && bytes.len() >= FRAME_HEADER_LEN
            {
                let h = &bytes[..FRAME_HEADER_LEN];
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                frame(h[3], h[4], stream);
                let rest = &bytes[FRAME_HEADER_LEN..];
                let skipped = len.min(rest.len());
                self.payload = len - skipped;
                bytes = &rest[skipped..];
                continue;
            }
            let skip = if self.preface > 0 {
                &mut self.preface
            } else {
                &mut self.payload
            };
            if *skip > 0 {
                let n = (*skip).min(bytes.len());
                *skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER_LEN {
                self.have = 0;
                let h = self.header;
                self.payload = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                frame(h[3], h[4], stream);
            }
        }
    }

    /// Whether the next byte starts a frame.
    fn between_frames(&self) -> bool {
        self.preface == 0 && self.have == 0 && self.payload == 0
    }
}

fn goaway(last_stream: u32) -> [u8; FRAME_HEADER_LEN + 8] {
    let mut frame = [0; FRAME_HEADER_LEN + 8];
    frame[2] = 8; // payload length
    frame[3] = GOAWAY;
    frame[9..13].copy_from_slice(&last_stream.to_be_bytes());
    frame[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame
}

fn flooded() -> io::Error {
    io::Error::other("HTTP/2 control frame flood: GOAWAY(ENHANCE_YOUR_CALM)")
}

impl<T: AsyncWrite> Calm<T> {
    /// Writes the GOAWAY and shuts the transport down, then fails: the connection ends.
    fn poll_goaway(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Error> {
        let mut this = self.project();
        let Some((frame, sent)) = this.goaway else {
            return Poll::Ready(flooded());
        };
        while *sent < frame.len() {
            match ready!(this.inner.as_mut().poll_write(cx, &frame[*sent..])) {
                Ok(0) | Err(_) => return Poll::Ready(flooded()),
                Ok(n) => *sent += n,
            }
        }
        // A shutdown, not a flush: the transport beneath may defer a flush (see
        // `http::idle`), and nothing is written after this.
        let _ = ready!(this.inner.poll_shutdown(cx));
        Poll::Ready(flooded())
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for Calm<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.goaway.is_some() {
            return self.poll_goaway(cx).map(Err);
        }
        let this = self.as_mut().project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        let (window, last_stream) = (this.window, this.last_stream);
        let mut flood = false;
        this.read
            .walk(&buf.filled()[before..], |kind, flags, stream| {
                let counted = match kind {
                    PING | SETTINGS => flags & ACK == 0,
                    PRIORITY => true,
                    HEADERS => {
                        *last_stream = (*last_stream).max(stream);
                        false
                    }
                    _ => false,
                };
                if counted {
                    let now = Instant::now();
                    let (start, count) = window.get_or_insert((now, 0));
                    if now.duration_since(*start) >= WINDOW {
                        (*start, *count) = (now, 0);
                    }
                    *count += 1;
                    flood |= *count > MAX_CONTROL_FRAMES;
                }
            });
        if !flood {
            return Poll::Ready(Ok(()));
        }
        debug!(
            max = MAX_CONTROL_FRAMES,
            "HTTP/2 control frame flood; closing with ENHANCE_YOUR_CALM"
        );
        // h2 does not see what came with the flood.
        buf.set_filled(before);
        let frame = goaway(*last_stream);
        // The GOAWAY must not land inside one of h2's frames: in the rare case that h2 is
        // part-way through writing one, the connection just ends.
        let sent = if this.written.between_frames() {
            0
        } else {
            frame.len()
        };
        *this.goaway = Some((frame, sent));
        self.poll_goaway(cx).map(Err)
    }
}

impl<T: AsyncWrite> AsyncWrite for Calm<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.goaway.is_some() {
            return Poll::Ready(Err(flooded()));
        }
        let n = ready!(this.inner.poll_write(cx, data))?;
        this.written.walk(&data[..n], |_, _, _| {});
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.goaway.is_some() {
            return Poll::Ready(Err(flooded()));
        }
        let n = ready!(this.inner.poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for buf in bufs {
            let taken = left.min(buf.len());
            this.written.walk(&buf[..taken], |_, _, _| {});
            left -= taken;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
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

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut bytes = vec![0, 0, payload as u8, kind, flags];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.resize(bytes.len() + payload, 0xee);
        bytes
    }

    #[test]
    fn the_walker_finds_every_frame_however_the_bytes_are_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(SETTINGS, 0, 0, 12));
        stream.extend(frame(HEADERS, 0x4, 1, 30));
        stream.extend(frame(PING, 0, 0, 8));
        stream.extend(frame(PING, ACK, 0, 8));
        for split in 1..stream.len() {
            let mut walker = Walker::after(PREFACE_LEN);
            let mut seen = Vec::new();
            for part in stream.chunks(split) {
                walker.walk(part, |kind, flags, id| seen.push((kind, flags, id)));
            }
            assert_eq!(
                seen,
                [
                    (SETTINGS, 0, 0),
                    (HEADERS, 0x4, 1),
                    (PING, 0, 0),
                    (PING, ACK, 0)
                ],
                "split every {split} bytes"
            );
            assert!(walker.between_frames());
        }
        let mut walker = Walker::after(0);
        walker.walk(&frame(PING, 0, 0, 8)[..12], |_, _, _| {});
        assert!(!walker.between_frames(), "in the middle of a payload");
    }

    #[test]
    fn goaway_says_enhance_your_calm_after_the_last_stream() {
        let frame = goaway(7);
        assert_eq!(&frame[..9], &[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(&frame[9..13], &7u32.to_be_bytes());
        assert_eq!(&frame[13..], &0xbu32.to_be_bytes());
    }
}
