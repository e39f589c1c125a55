//! W3C Trace Context (`traceparent`) and `X-Request-Id` for each proxied request.
//!
//! Called once per request by [`crate::proxy::Proxy::serve`]: a valid incoming `traceparent` is
//! continued with a new span id, anything else starts a new trace; the request id is the
//! client's when it sent a usable one, else a random one. Parsing and formatting are pure.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore as _;

use crate::observe::access_log::TraceId;

/// The W3C Trace Context header (<https://www.w3.org/TR/trace-context/#traceparent-header>).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor trace data that belongs to the incoming `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The request id, set when absent and logged.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client request id kept; a longer one is replaced (it goes into every log line).
const MAX_REQUEST_ID: usize = 128;
/// `00-` + 32 + `-` + 16 + `-` + 2: the length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;
/// A request id we make: 16 random bytes in lower-case hex.
const REQUEST_ID_LEN: usize = 32;

/// One position in a trace: the trace, this hop's span, and the trace flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// The trace and request id a request carries upstream and into the access log.
#[derive(Clone, Debug)]
pub struct RequestIds {
    /// The outgoing `traceparent`.
    pub traceparent: HeaderValue,
    /// The trace id, for the access log (formatted only if a line is written).
    pub trace_id: TraceId,
    /// The `X-Request-Id` sent upstream and logged (visible ASCII).
    pub request_id: HeaderValue,
    /// Whether the incoming `traceparent` was continued (else `tracestate` is stale).
    pub continued: bool,
}

impl TraceContext {
    /// Parses a `traceparent` value (Trace Context §3.2). Versions above 00 are read by their
    /// version-00 prefix, as the spec asks; version `ff`, upper-case hex and all-zero ids are
    /// invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != TRACEPARENT_LEN) {
            return None;
        }
        // A later version may append fields, always after a dash.
        if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_array(&bytes[3..35])?;
        let span_id: [u8; 8] = hex_array(&bytes[36..52])?;
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled, with the given ids (all-zero ids are replaced by `1`).
    pub fn start(trace_id: [u8; 16], span_id: [u8; 8]) -> Self {
        Self {
            trace_id: non_zero(trace_id),
            span_id: non_zero(span_id),
            flags: 0x01,
        }
    }

    /// This hop's context: same trace and flags, a new span id.
    pub fn child(&self, span_id: [u8; 8]) -> Self {
        Self {
            span_id: non_zero(span_id),
            ..*self
        }
    }

    /// The version-00 header value.
    pub fn to_header(&self) -> HeaderValue {
        let mut text = [0; TRACEPARENT_LEN];
        self.write_header(&mut text);
        value_of(Bytes::from_owner(text))
    }

    /// The version-00 header value, into `text`.
    fn write_header(&self, text: &mut [u8; TRACEPARENT_LEN]) {
        *text = *b"00-................................-................-..";
        hex_into(&mut text[3..35], &self.trace_id);
        hex_into(&mut text[36..52], &self.span_id);
        hex_into(&mut text[53..55], &[self.flags]);
    }
}

impl RequestIds {
    /// Continues or starts the trace of `headers` and keeps or makes its request id.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let incoming = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        // All the randomness a request may need, drawn at once: trace id, span id, request id.
        let mut random = [0u8; 40];
        rand::rng().fill_bytes(&mut random);
        let (trace_id, rest) = random.split_first_chunk::<16>().expect("40 bytes");
        let (span_id, request_id) = rest.split_first_chunk::<8>().expect("24 bytes");
        let context = match incoming {
            Some(parent) => parent.child(*span_id),
            None => TraceContext::start(*trace_id, *span_id),
        };
        // Both values we may make share one buffer: one allocation per request, not two.
        let mut text = [0; TRACEPARENT_LEN + REQUEST_ID_LEN];
        let (traceparent, new_id) = text
            .split_first_chunk_mut::<TRACEPARENT_LEN>()
            .expect("room for a traceparent");
        context.write_header(traceparent);
        hex_into(new_id, &request_id[..16]);
        let text = Bytes::from_owner(text);
        let request_id = headers
            .get(&X_REQUEST_ID)
            .filter(|v| is_usable_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(|| value_of(text.slice(TRACEPARENT_LEN..)));
        let traceparent = value_of(text.slice(..TRACEPARENT_LEN));
        Self {
            traceparent,
            trace_id: TraceId(context.trace_id),
            request_id,
            continued: incoming.is_some(),
        }
    }

    /// Puts the outgoing `traceparent` and `X-Request-Id` into `headers` (a stale `tracestate`
    /// goes with a trace that was not continued).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(&TRACEPARENT, self.traceparent.clone());
        headers.insert(&X_REQUEST_ID, self.request_id.clone());
        if !self.continued {
            headers.remove(&TRACESTATE);
        }
    }
}

/// A client's id is kept when it is non-empty, short and visible ASCII (it is logged verbatim).
fn is_usable_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(|b| b.is_ascii_graphic())
}

/// A value of hex and dashes from bytes made to be cloned: the request and the access log
/// share it. (Bytes made from a `Vec`, as `from_bytes` makes them, allocate again on their
/// first clone; `Bytes::from_owner` and its slices do not.)
fn value_of(text: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(text).expect("hex and dashes are a valid field value")
}

fn non_zero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

/// Writes `bytes` as lower-case hex into `out`, which holds exactly two digits per byte.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Lower-case hex only: Trace Context §3.2.2 forbids upper case.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_valid_traceparent() {
        let context = TraceContext::parse(VALID).expect("valid");
        assert_eq!(
            TraceId(context.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            context.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(context.flags, 1);
        assert_eq!(context.to_header(), VALID);
    }

    #[test]
    fn a_child_keeps_trace_and_flags_with_a_new_span() {
        let parent = TraceContext::parse(&VALID.replace("-01", "-00")).expect("valid");
        let child = parent.child([7; 8]);
        assert_eq!(
            child.to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-00"
        );
    }

    #[test]
    fn rejects_malformed_values() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let version_ff = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let v00_too_long = format!("{VALID}-extra");
        let bad_dash = "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for bad in [
            "",
            "garbage",
            zero_trace,
            zero_span,
            upper,
            version_ff,
            &v00_too_long,
            bad_dash,
            &VALID[..54],
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_known_prefix() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let context = TraceContext::parse(future).expect("readable");
        assert!(context.to_header().as_bytes().starts_with(b"00-4bf92f35"));
        assert_eq!(TraceContext::parse(&future.replace("01-w", "01w")), None);
    }

    #[test]
    fn a_new_trace_is_sampled_and_never_all_zero() {
        let context = TraceContext::start([0; 16], [0; 8]);
        assert_eq!(
            context.to_header(),
            "00-00000000000000000000000000000001-0000000000000001-01"
        );
        assert!(TraceContext::parse(context.to_header().to_str().unwrap()).is_some());
    }

    #[test]
    fn request_ids_continue_or_start_and_keep_a_usable_client_id() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("client-42"));
        let ids = RequestIds::from_headers(&headers);
        assert!(ids.continued);
        assert_eq!(ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ids.traceparent, VALID);
        assert_eq!(ids.request_id, "client-42");

        headers.insert(&TRACEPARENT, HeaderValue::from_static("nonsense"));
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let ids = RequestIds::from_headers(&headers);
        assert!(!ids.continued);
        assert_ne!(ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.request_id.len(), 32);
        // Both made values come from one buffer: each is its own well-formed part of it.
        let made = TraceContext::parse(ids.traceparent.to_str().unwrap()).expect("valid");
        assert_eq!(made.trace_id, ids.trace_id.0);
        let id = ids.request_id.as_bytes();
        assert!(
            id.iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id:?}"
        );
        ids.insert_into(&mut headers);
        assert_eq!(headers[&TRACEPARENT], ids.traceparent);
        assert!(!headers.contains_key(&TRACESTATE));
    }
}
