//! The HTTP/1.1 client codec, without I/O: request heads written into a buffer, response heads
//! and body framing read from one. `body` drives it over a connection.
//!
//! Response framing follows RFC 9112 §6.3: no body after HEAD, 204 and 304; chunked when it is
//! the final transfer coding; else Content-Length; else until the origin closes (and then the
//! connection is not reused). A response with both Transfer-Encoding and Content-Length is read
//! as chunked and its connection never reused; Transfer-Encoding on HTTP/1.0 is refused.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use http_body::Frame;

use crate::request::fields;

/// Most header fields a response head may carry (hyper's client default too).
pub(super) const MAX_HEADERS: usize = 100;
/// Largest response head (or chunked trailer section) accepted.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
pub(super) const MAX_CHUNK_LINE: usize = 4 * 1024;

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

/// A response head found at the start of a buffer.
pub(super) struct ParsedHead {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// Names, and where each value lies in the buffer: the end-to-end fields.
    pub(super) fields: Vec<(HeaderName, std::ops::Range<usize>)>,
    /// `Some(true)` when chunked is the final transfer coding, `Some(false)` for any other
    /// final coding (the body then runs until close), `None` without Transfer-Encoding.
    pub(super) transfer_coding: Option<bool>,
    /// Whether `Connection` says `close`.
    pub(super) close: bool,
    /// Bytes the head takes, blank line included.
    pub(super) len: usize,
}

/// The response head at the start of `buf`, or `None` while it is incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<ParsedHead>, WireError> {
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

/// The final response head at the start of `buf`, or `None` while it is incomplete. Interim
/// 1xx responses before it are consumed, as hyper's client skips them; a 101 is an error, as
/// no request of this client asks for an upgrade.
pub(super) fn final_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, WireError> {
    loop {
        let Some(head) = parse_head(buf)? else {
            if buf.len() >= MAX_HEAD {
                return Err(WireError::HeadTooLarge);
            }
            return Ok(None);
        };
        match head.status.as_u16() {
            101 => return Err(WireError::UnexpectedSwitch),
            100..=199 => buf.advance(head.len),
            _ => return Ok(Some(head)),
        }
    }
}

/// Writes the request line, `headers`, our own framing and `body` into `out`.
pub(super) fn encode(
    method: &Method,
    target: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    out: &mut Vec<u8>,
) {
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
pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, WireError> {
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

/// How the body after `head` is delimited (RFC 9112 §6.3), and whether its connection may
/// carry another exchange after it. `headers` are the head's end-to-end fields: a
/// Content-Length that Transfer-Encoding overrides is removed from them.
pub(super) fn framing(
    head: &ParsedHead,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<(Framing, bool), WireError> {
    let keep_alive = head.version == Version::HTTP_11 && !head.close;
    // Transfer-Encoding wins over any Content-Length (RFC 9112 §6.3), which would mislead the
    // client, as the hop-by-hop Transfer-Encoding is not forwarded: it goes, even where no
    // body follows, as on the hyper path (`forward::drop_overridden_length`). Both at once is
    // how smuggling starts: what follows on that connection is not trusted, so it is never
    // reused.
    let suspect =
        head.transfer_coding.is_some() && headers.remove(header::CONTENT_LENGTH).is_some();
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
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        }
    } else {
        match content_length(headers)? {
            Some(0) => Framing::Done,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    let reusable = keep_alive && !suspect && !matches!(framing, Framing::UntilClose);
    Ok((framing, reusable))
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
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
pub(super) enum Chunk {
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
pub(super) enum Step {
    Frame(Frame<Bytes>),
    NeedMore,
    End,
}

/// The next frame the bytes in `buf` make under `framing`, if they make one, consuming them
/// and moving `framing` on.
pub(super) fn step(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, WireError> {
    loop {
        match *framing {
            Framing::Done => return Ok(Step::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let (data, left) = take(buf, left);
                *framing = if left == 0 {
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
                    *framing = Framing::Chunked(if size == 0 {
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
                *framing = Framing::Chunked(if left == 0 {
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
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let Some((used, trailers)) = parse_trailers(buf)? else {
                    return Ok(Step::NeedMore);
                };
                buf.advance(used);
                *framing = Framing::Done;
                return Ok(match trailers {
                    Some(trailers) => Step::Frame(Frame::trailers(trailers)),
                    None => Step::End,
                });
            }
        }
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are left to come after them.
pub(super) fn take(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
    (buf.split_to(n).freeze(), left - n as u64)
}

/// A trailer section's length and its fields (`None` when it has none).
pub(super) type Trailers = (usize, Option<HeaderMap>);

/// The trailer section at the start of `buf`, or `None` while incomplete.
pub(super) fn parse_trailers(buf: &[u8]) -> Result<Option<Trailers>, WireError> {
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
