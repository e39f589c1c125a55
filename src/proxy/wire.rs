//! A lean HTTP/1.1 exchange with an origin, for requests whose body is complete in memory
//! (most requests: no body, or a small one kept for retries).
//!
//! hyper's client runs each connection in a task of its own and passes every request and
//! response across channels between that task and the request's. Measured on loopback against
//! nginx, that hand-off costs about 2 µs of CPU per request, more than nginx spends on its whole
//! origin leg. Here the request's own task writes the head and body in one write, reads and
//! parses the response head (with httparse, hyper's parser) and reads the body as the client
//! takes it; the connection goes back to the pool when the body has ended cleanly. Requests that
//! stream a body, and upgrades, still go through hyper (`connect`, `pool::Conn`).
//!
//! Response framing follows RFC 9112 §6.3: no body after HEAD, 204 and 304; chunked when it is
//! the final transfer coding; else Content-Length; else until the origin closes (and then the
//! connection is not reused). Interim 1xx responses are skipped, as hyper's client does.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy::forward;
use crate::proxy::pool::InFlight;
use crate::request::fields;

/// Most header fields a response head may carry (hyper's client default too).
const MAX_HEADERS: usize = 100;
/// Largest response head (or chunked trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Read size while no larger body is known to be coming.
const READ_SIZE: usize = 8 * 1024;
/// Largest single read of a long body.
const MAX_READ_SIZE: usize = 64 * 1024;

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
    io: OriginIo,
    /// Bytes read and not yet consumed: empty between exchanges.
    read: BytesMut,
    /// The request being written (kept to reuse its allocation).
    write: Vec<u8>,
    /// The address it is connected to (to drop it when DNS stops returning that address).
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").field("addr", &self.addr).finish()
    }
}

/// What went wrong in an exchange.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Writing the request or reading the response failed.
    #[error("connection error")]
    Io {
        /// Cause.
        #[source]
        source: io::Error,
        /// Whether no byte of a response had arrived.
        before_response: bool,
    },
    /// The origin closed the connection without sending a byte of a response.
    #[error("the upstream closed the connection before responding")]
    NoResponse,
    /// The origin closed the connection in the middle of its response.
    #[error("the upstream closed the connection in the middle of the response {0}")]
    Closed(&'static str),
    /// The response head is not valid HTTP/1.x.
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response head (or trailer section) is longer than 64 KiB.
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A field name or value that HTTP does not allow, or an unknown status code.
    #[error("invalid response field or status")]
    InvalidField,
    /// Content-Length that is not a number, or several that disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Broken chunked framing.
    #[error("invalid chunked body")]
    Chunked,
    /// Transfer-Encoding in an HTTP/1.0 response.
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding10,
    /// A 101 to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
}

impl WireError {
    /// Whether the origin sent nothing at all: on a reused connection, the origin had closed it
    /// (or was closing it) while it sat idle, and the request may go on another connection.
    pub(crate) fn before_response(&self) -> bool {
        match self {
            Self::Io {
                before_response, ..
            } => *before_response,
            Self::NoResponse => true,
            _ => false,
        }
    }
}

/// Whether a request whose body is in memory can take the lean path: it asks for no upgrade,
/// and its target is origin-form (not CONNECT's authority-form).
pub(crate) fn suits(method: &Method, headers: &HeaderMap) -> bool {
    *method != Method::CONNECT && !headers.contains_key(header::UPGRADE)
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

    /// Sends one request (`body` complete) and reads the response head, skipping interim 1xx
    /// responses. The caller bounds it with the response-header timeout.
    ///
    /// # Cancel safety
    /// Dropping the future mid-way leaves the connection unusable; drop it too.
    pub(crate) async fn exchange(
        mut self,
        method: &Method,
        target: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        in_flight: InFlight,
    ) -> Result<Response<WireBody>, WireError> {
        encode(method, target, headers, body, &mut self.write);
        let written = self.io.write_all(&self.write).await;
        let written = match written {
            Ok(()) => self.io.flush().await,
            Err(error) => Err(error),
        };
        written.map_err(|source| WireError::Io {
            source,
            before_response: true,
        })?;
        let mut received = false;
        loop {
            if let Some(head) = parse_head(&self.read)? {
                match head.status.as_u16() {
                    101 => return Err(WireError::UnexpectedSwitch),
                    100..=199 => {
                        self.read.advance(head.len);
                        continue;
                    }
                    _ => return self.respond(head, *method == Method::HEAD, in_flight),
                }
            }
            if self.read.len() >= MAX_HEAD {
                return Err(WireError::HeadTooLarge);
            }
            self.read.reserve(READ_SIZE);
            match self.io.read_buf(&mut self.read).await {
                Ok(0) if received || !self.read.is_empty() => {
                    return Err(WireError::Closed("head"));
                }
                Ok(0) => return Err(WireError::NoResponse),
                Ok(_) => received = true,
                Err(source) => {
                    return Err(WireError::Io {
                        source,
                        before_response: !received && self.read.is_empty(),
                    });
                }
            }
        }
    }

    /// The response for `head`, whose bytes start the read buffer; the body reads the rest.
    fn respond(
        mut self,
        head: ParsedHead,
        head_request: bool,
        in_flight: InFlight,
    ) -> Result<Response<WireBody>, WireError> {
        let bytes = self.read.split_to(head.len).freeze();
        // hyper's HTTP/1.1 server keeps the response's map for the connection's next request,
        // to which the hop adds its fields: room for those and a few of the client's own now
        // spares that request a rehash of the map.
        let room = forward::FIELDS_ADDED + 5;
        let mut headers = HeaderMap::with_capacity(head.fields.len().max(room));
        for (name, value) in head.fields {
            let value = HeaderValue::from_maybe_shared(bytes.slice(value))
                .map_err(|_| WireError::InvalidField)?;
            headers.append(name, value);
        }
        let keep_alive = head.version == Version::HTTP_11 && !head.close;
        let mut suspect = false;
        let framing = if head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else if let Some(chunked) = head.transfer_coding {
            // HTTP/1.0 has no Transfer-Encoding (RFC 9112 §6.1): its framing is faulty, and
            // hyper's client refuses it too.
            if head.version == Version::HTTP_10 {
                return Err(WireError::TransferEncoding10);
            }
            // Transfer-Encoding wins over any Content-Length (RFC 9112 §6.3), which would
            // mislead the client, as the hop-by-hop Transfer-Encoding is not forwarded. Both
            // at once is how smuggling starts: the body is read as chunked, but what follows
            // it on that connection is not trusted, so the connection is never reused.
            suspect = headers.remove(header::CONTENT_LENGTH).is_some();
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            }
        } else {
            match content_length(&headers)? {
                Some(0) => Framing::Done,
                Some(length) => Framing::Length(length),
                None => Framing::UntilClose,
            }
        };
        let reusable = keep_alive && !suspect && !matches!(framing, Framing::UntilClose);
        let mut response = Response::new(WireBody {
            wire: Some(self),
            framing,
            reusable,
            ready: None,
            in_flight,
        });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = headers;
        // A body that is already all here (or empty) gives its connection back at once.
        response.body_mut().take_whole();
        Ok(response)
    }
}

/// A response head found at the start of a buffer.
struct ParsedHead {
    status: StatusCode,
    version: Version,
    /// Names, and where each value lies in the buffer: the end-to-end fields.
    fields: Vec<(HeaderName, std::ops::Range<usize>)>,
    /// `Some(true)` when chunked is the final transfer coding, `Some(false)` for any other
    /// final coding (the body then runs until close), `None` without Transfer-Encoding.
    transfer_coding: Option<bool>,
    /// Whether `Connection` says `close`.
    close: bool,
    /// Bytes the head takes, blank line included.
    len: usize,
}

/// The response head at the start of `buf`, or `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<ParsedHead>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    )? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(WireError::InvalidField)?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Hop-by-hop fields (RFC 9110 §7.6.1) end here, so they are not even made into header
    // names: most origins send `Connection: keep-alive`, and `Keep-Alive` with it.
    let fields_raw = &*response.headers;
    let connection = || {
        fields_raw
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("connection"))
            .filter_map(|f| std::str::from_utf8(f.value).ok())
            .flat_map(fields::tokens)
    };
    // One pass over the tokens. Most origins name only `keep-alive`, itself hop-by-hop: then
    // no field needs the tokens, and the loop below does not rescan the head for them.
    let (mut close, mut names_fields) = (false, false);
    for token in connection() {
        close |= token.eq_ignore_ascii_case("close");
        names_fields |= !token.eq_ignore_ascii_case("keep-alive");
    }
    let start = buf.as_ptr() as usize;
    let mut fields = Vec::with_capacity(fields_raw.len());
    let mut transfer_coding = None;
    for field in fields_raw {
        // Read for the framing, never forwarded: hyper frames the body for the client. The
        // last field's last coding is the final one; one we cannot read is not chunked.
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = std::str::from_utf8(field.value)
                .ok()
                .and_then(|codings| codings.rsplit(',').next());
            transfer_coding = Some(last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")));
            continue;
        }
        let named = names_fields.then(connection).into_iter().flatten();
        if fields::is_hop_by_hop(field.name, named, false) {
            continue;
        }
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| WireError::InvalidField)?;
        let offset = field.value.as_ptr() as usize - start;
        fields.push((name, offset..offset + field.value.len()));
    }
    Ok(Some(ParsedHead {
        status,
        version,
        fields,
        transfer_coding,
        close,
        len,
    }))
}

/// Writes the request line, `headers`, our own framing and `body` into `out`.
fn encode(method: &Method, target: &Uri, headers: &HeaderMap, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let target = target.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        // The body is complete: its length is ours to state.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Methods that usually carry a body state an empty one: some origins refuse them with 411.
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The Content-Length, if any; several must agree (RFC 9110 §8.6).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, WireError> {
    let mut length = None;
    for value in &headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| WireError::ContentLength)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WireError::ContentLength);
            }
            let n: u64 = part.parse().map_err(|_| WireError::ContentLength)?;
            if length.is_some_and(|known| known != n) {
                return Err(WireError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, at this point of the chunk grammar.
    Chunked(Chunk),
    /// Until the origin closes.
    UntilClose,
    /// Ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data is next.
    DataEnd,
    /// The trailer section (after the last chunk) is next.
    Trailers,
}

/// What the buffered bytes yield next.
enum Step {
    Frame(Frame<Bytes>),
    NeedMore,
    End,
}

/// An origin's response body, read from its connection as the client takes it. The
/// connection returns to the pool once the body has ended cleanly with nothing left over; an
/// error, or a drop before the end, closes it. The request counts in flight until it is dropped.
pub(crate) struct WireBody {
    /// `None` once ended or broken.
    wire: Option<Wire>,
    framing: Framing,
    /// Whether the connection may carry another exchange after this body.
    reusable: bool,
    /// The whole body, when it came with the head (the connection is already back).
    ready: Option<Bytes>,
    in_flight: InFlight,
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl WireBody {
    /// When the whole body already sits in the read buffer (or there is none), ends it now:
    /// the connection goes back to the pool before the client has even been answered.
    fn take_whole(&mut self) {
        let Some(wire) = self.wire.as_mut() else {
            return;
        };
        match self.framing {
            Framing::Done => self.finish(),
            Framing::Length(length) if wire.read.len() as u64 >= length => {
                self.ready = Some(take(&mut wire.read, length).0);
                self.finish();
            }
            _ => {}
        }
    }

    /// The body has ended: the connection goes back to the pool if it can carry more.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(wire) = self.wire.take()
            && self.reusable
            && wire.read.is_empty()
        {
            self.in_flight.checkin_wire(wire);
        }
    }

    /// The next frame the buffered bytes make, if they make one.
    fn step(&mut self) -> Result<Step, WireError> {
        let Some(wire) = self.wire.as_mut() else {
            return Ok(Step::End);
        };
        let buf = &mut wire.read;
        loop {
            match self.framing {
                Framing::Done => return Ok(Step::End),
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let (data, left) = take(buf, left);
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Step::Frame(Frame::data(data)));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Frame(Frame::data(buf.split().freeze())));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {
                        return Ok(Step::NeedMore);
                    }
                    _ => return Err(WireError::Chunked),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let (data, left) = take(buf, left);
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Step::Frame(Frame::data(data)));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunked);
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let Some((used, trailers)) = parse_trailers(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(used);
                    self.framing = Framing::Done;
                    return Ok(match trailers {
                        Some(trailers) => Step::Frame(Frame::trailers(trailers)),
                        None => Step::End,
                    });
                }
            }
        }
    }

    /// How much to read next: more for a long body, so a large download takes fewer reads.
    fn read_size(&self) -> usize {
        match self.framing {
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => usize::try_from(left)
                .map_or(MAX_READ_SIZE, |left| left.clamp(READ_SIZE, MAX_READ_SIZE)),
            _ => READ_SIZE,
        }
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are left to come after them.
fn take(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
    (buf.split_to(n).freeze(), left - n as u64)
}

/// A trailer section's length and its fields (`None` when it has none).
type Trailers = (usize, Option<HeaderMap>);

/// The trailer section at the start of `buf`, or `None` while incomplete.
fn parse_trailers(buf: &[u8]) -> Result<Option<Trailers>, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            if fields.is_empty() {
                return Ok(Some((used, None)));
            }
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| WireError::InvalidField)?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| WireError::InvalidField)?;
                trailers.append(name, value);
            }
            Ok(Some((used, Some(trailers))))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err(WireError::HeadTooLarge),
        Err(_) => Err(WireError::Chunked),
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match this.step() {
                Ok(Step::Frame(frame)) => {
                    // hyper stops polling once a body reports its end: finish here, not later.
                    if this.framing == Framing::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(error) => {
                    this.wire = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            let size = this.read_size();
            let Some(wire) = this.wire.as_mut() else {
                return Poll::Ready(None);
            };
            if wire.read.capacity() - wire.read.len() < size / 2 {
                wire.read.reserve(size);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut wire.io),
                cx,
                &mut wire.read
            ));
            match read {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.wire = None;
                    return Poll::Ready(Some(Err(WireError::Closed("body"))));
                }
                Ok(_) => {}
                Err(source) => {
                    this.wire = None;
                    return Poll::Ready(Some(Err(WireError::Io {
                        source,
                        before_response: false,
                    })));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done && self.ready.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => {
                SizeHint::with_exact(self.ready.as_ref().map_or(0, |d| d.len() as u64))
            }
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::proxy::pool::Pool;

    /// An origin on 127.0.0.1 that takes one connection and answers its requests (heads
    /// without bodies) with `answers` in turn, written `step` bytes at a time, then closes it
    /// (as the returned task ends).
    async fn origin(answers: Vec<&'static [u8]>, step: usize) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed before a whole request");
                    seen.extend_from_slice(&buf[..n]);
                }
                let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                seen.drain(..end);
                for piece in answer.chunks(step) {
                    tcp.write_all(piece).await.unwrap();
                    tcp.flush().await.unwrap();
                    if step < answer.len() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        });
        (addr, task)
    }

    /// The answer of an origin that sends `answer` to one GET, with the pool it would go back to.
    async fn answered(answer: &'static [u8]) -> (Arc<Pool>, Result<Response<WireBody>, WireError>) {
        let (addr, _) = origin(vec![answer], usize::MAX).await;
        let pool = pool();
        let response = get(connect(addr).await, Method::GET, &pool).await;
        (pool, response)
    }

    /// Whether an error is the expected one.
    type Check = fn(&WireError) -> bool;

    async fn connect(addr: SocketAddr) -> Wire {
        Wire::new(
            OriginIo::Plain(TcpStream::connect(addr).await.unwrap()),
            addr,
        )
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(4, Duration::from_secs(60)))
    }

    async fn get(
        wire: Wire,
        method: Method,
        pool: &Arc<Pool>,
    ) -> Result<Response<WireBody>, WireError> {
        let headers = HeaderMap::new();
        let target = Uri::from_static("/");
        wire.exchange(&method, &target, &headers, b"", InFlight::enter(pool))
            .await
    }

    /// The body's data and trailers, collected.
    async fn collect(
        response: Response<WireBody>,
    ) -> Result<(Bytes, Option<HeaderMap>), WireError> {
        let collected = response.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn a_length_body_is_read_and_the_connection_carries_the_next_exchange() {
        let (addr, _) = origin(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\ngone",
            ],
            usize::MAX,
        )
        .await;
        let pool = pool();
        let response = get(connect(addr).await, Method::GET, &pool).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(collect(response).await.unwrap().0, "hello");
        let wire = pool
            .checkout_wire()
            .expect("back in the pool after its body");
        let response = get(wire, Method::GET, &pool).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(collect(response).await.unwrap().0, "gone");
        assert_eq!(pool.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_arriving_byte_by_byte_keeps_its_data_and_trailers() {
        let (addr, _) = origin(
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
            ],
            1,
        )
        .await;
        let pool = pool();
        let response = get(connect(addr).await, Method::GET, &pool).await.unwrap();
        assert!(
            !response.headers().contains_key(header::CONTENT_LENGTH),
            "Transfer-Encoding wins over Content-Length"
        );
        assert!(
            !response.headers().contains_key(header::TRANSFER_ENCODING),
            "framing of this hop only"
        );
        let (data, trailers) = collect(response).await.unwrap();
        assert_eq!(data, "hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "11");
        assert!(
            pool.checkout_wire().is_none(),
            "Transfer-Encoding with Content-Length: never pooled"
        );
        // Chunked alone: back in the pool (a second answer keeps the origin's side open).
        let (addr, _) = origin(
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            usize::MAX,
        )
        .await;
        let response = get(connect(addr).await, Method::GET, &pool).await.unwrap();
        assert_eq!(collect(response).await.unwrap().0, "ok");
        assert!(
            pool.checkout_wire().is_some(),
            "a clean chunked end returns it"
        );
    }

    #[tokio::test]
    async fn responses_without_a_body_end_at_their_head() {
        let (addr, _) = origin(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            ],
            usize::MAX,
        )
        .await;
        let pool = pool();
        let mut wire = Some(connect(addr).await);
        for (method, status, body) in [
            (Method::HEAD, 200, ""),
            (Method::GET, 204, ""),
            (Method::GET, 304, ""),
            (Method::GET, 200, "ok"),
        ] {
            let wire = wire.take().or_else(|| pool.checkout_wire());
            let response = get(wire.expect("reusable after each"), method, &pool)
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "interim 103 skipped");
            assert_eq!(collect(response).await.unwrap().0, body);
        }
    }

    #[tokio::test]
    async fn a_body_until_close_is_read_to_the_end_and_the_connection_is_not_reused() {
        let (pool, response) = answered(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
        assert_eq!(collect(response.unwrap()).await.unwrap().0, "all of it");
        assert!(pool.checkout_wire().is_none());
    }

    #[tokio::test]
    async fn hop_by_hop_fields_stop_at_the_head_and_the_rest_stay_in_order() {
        let (addr, _) = origin(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
                  x-hop: 1\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n\
                  x-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            usize::MAX,
        )
        .await;
        let pool = pool();
        let response = get(connect(addr).await, Method::GET, &pool).await.unwrap();
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-a", "content-length"]);
        let values: Vec<_> = response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(collect(response).await.unwrap().0, "ok");
        let wire = pool.checkout_wire().expect("keep-alive is not close");
        let next = get(wire, Method::GET, &pool).await.unwrap();
        assert_eq!(next.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_answers_are_not_pooled() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let (pool, response) = answered(answer).await;
            assert_eq!(collect(response.unwrap()).await.unwrap().0, "ok");
            assert!(pool.checkout_wire().is_none());
        }
    }

    #[tokio::test]
    async fn broken_answers_are_errors_and_their_connection_is_dropped() {
        let cases: [(&'static [u8], Check); 5] = [
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                |e| matches!(e, WireError::TransferEncoding10),
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                |e| matches!(e, WireError::ContentLength),
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", |e| {
                matches!(e, WireError::ContentLength)
            }),
            (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", |e| {
                matches!(e, WireError::Parse(_))
            }),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", |e| {
                matches!(e, WireError::UnexpectedSwitch)
            }),
        ];
        for (answer, expected) in cases {
            let (pool, response) = answered(answer).await;
            let error = response.unwrap_err();
            assert!(expected(&error), "{answer:?}: {error:?}");
            assert!(!error.before_response());
            assert_eq!(pool.in_flight(), 0);
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_not_pooled() {
        let (pool, response) =
            answered(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await;
        let error = collect(response.unwrap()).await.unwrap_err();
        assert!(matches!(error, WireError::Closed(_)), "{error:?}");
        assert!(pool.checkout_wire().is_none());
    }

    #[tokio::test]
    async fn an_origin_that_closes_without_answering_sent_nothing() {
        let (_, response) = answered(b"").await;
        let error = response.unwrap_err();
        assert!(error.before_response(), "{error:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_the_origin_closed_is_not_checked_out() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (addr, origin_done) = origin(vec![answer], usize::MAX).await;
        let pool = pool();
        let response = get(connect(addr).await, Method::GET, &pool).await.unwrap();
        collect(response).await.unwrap();
        // The origin closes once its answer is out; one turn of the runtime lets the reactor
        // see the close on our side.
        origin_done.await.unwrap();
        tokio::task::yield_now().await;
        assert!(pool.checkout_wire().is_none(), "closed while idle");
    }

    #[test]
    fn a_request_states_its_own_length_and_drops_the_clients_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.test"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let mut out = Vec::new();
        let target = Uri::from_static("/p?q=1");
        encode(&Method::PUT, &target, &headers, b"body", &mut out);
        assert_eq!(
            out,
            b"PUT /p?q=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 4\r\n\r\nbody"
        );
        encode(&Method::POST, &target, &HeaderMap::new(), b"", &mut out);
        assert_eq!(out, b"POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        encode(
            &Method::GET,
            &Uri::from_static("/"),
            &HeaderMap::new(),
            b"",
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        let any = Uri::from_static("*");
        encode(&Method::OPTIONS, &any, &HeaderMap::new(), b"", &mut out);
        assert_eq!(out, b"OPTIONS * HTTP/1.1\r\n\r\n");
    }
}
