//! One exchange on a lean connection, and the response body read from it as the client takes
//! it: the request's own task writes the head and body in one write, reads the response head,
//! and reads the body frame by frame through the codec; the connection goes back to the pool
//! when the body has ended cleanly. Interim 1xx responses are skipped, as hyper's client does.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::codec::{self, Chunk, Framing, ParsedHead, Step, WireError, encode, take};
use super::conn::Wire;
use crate::proxy::forward;
use crate::proxy::upstream::lease::InFlight;

/// Read size while no larger body is known to be coming.
const READ_SIZE: usize = 8 * 1024;
/// Largest single read of a long body.
const MAX_READ_SIZE: usize = 64 * 1024;

impl Wire {
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
            if let Some(head) = codec::final_head(&mut self.read)? {
                return self.respond(head, *method == Method::HEAD, in_flight);
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
        mut head: ParsedHead,
        head_request: bool,
        in_flight: InFlight,
    ) -> Result<Response<WireBody>, WireError> {
        let bytes = self.read.split_to(head.len).freeze();
        // hyper's HTTP/1.1 server keeps the response's map for the connection's next request,
        // to which the hop adds its fields: room for those and a few of the client's own now
        // spares that request a rehash of the map.
        let room = forward::FIELDS_ADDED + 5;
        let mut headers = HeaderMap::with_capacity(head.fields.len().max(room));
        for (name, value) in std::mem::take(&mut head.fields) {
            let value = HeaderValue::from_maybe_shared(bytes.slice(value))
                .map_err(|_| WireError::InvalidField)?;
            headers.append(name, value);
        }
        let (framing, reusable) = codec::framing(&head, &mut headers, head_request)?;
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
        match self.wire.as_mut() {
            Some(wire) => codec::step(&mut self.framing, &mut wire.read),
            None => Ok(Step::End),
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
