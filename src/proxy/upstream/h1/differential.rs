//! The lean codec against hyper's client: one origin response, delivered in two reads split at
//! every offset, must give the same status, end-to-end fields, body and trailers through both,
//! or an error through both. Responses come from a corpus of the cases where HTTP/1.1 framing
//! goes wrong in practice, each also pinned to what the codec makes of it (so a change of any
//! framing rule fails here even where hyper would follow it), and from generated responses.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{self, Framing, Step};
use crate::proxy::forward;

/// What a client makes of one response.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Response {
        status: u16,
        /// End-to-end fields in order, names lower-case.
        fields: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
    },
    Error,
}

fn listed(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<_> = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    // Order between names is the map's; within a name it is the response's.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

/// The codec, fed `reads` one at a time as the lean client reads them (see `body`); also
/// whether it would reuse the connection.
fn ours(reads: &[&[u8]], head_request: bool) -> (Outcome, bool) {
    let mut reads = reads.iter();
    let mut buf = BytesMut::new();
    let mut head = loop {
        match codec::final_head(&mut buf) {
            Err(_) => return (Outcome::Error, false),
            Ok(Some(head)) => break head,
            Ok(None) => match reads.next() {
                Some(read) => buf.extend_from_slice(read),
                None => return (Outcome::Error, false),
            },
        }
    };
    let bytes = buf.split_to(head.len).freeze();
    let mut headers = HeaderMap::new();
    for (name, value) in std::mem::take(&mut head.fields) {
        let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice(value)) else {
            return (Outcome::Error, false);
        };
        headers.append(name, value);
    }
    let Ok((mut framing, reusable)) = codec::framing(&head, &mut headers, head_request) else {
        return (Outcome::Error, false);
    };
    let (mut body, mut trailers) = (Vec::new(), HeaderMap::new());
    loop {
        match codec::step(&mut framing, &mut buf) {
            Err(_) => return (Outcome::Error, false),
            Ok(Step::End) => break,
            Ok(Step::Frame(frame)) => match frame.into_data() {
                Ok(data) => body.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().expect("data or trailers"),
            },
            Ok(Step::NeedMore) => match reads.next() {
                Some(read) => buf.extend_from_slice(read),
                None if framing == Framing::UntilClose => break,
                None => return (Outcome::Error, false),
            },
        }
    }
    let outcome = Outcome::Response {
        status: head.status.as_u16(),
        fields: listed(&headers),
        body,
        trailers: listed(&trailers),
    };
    // Bytes left over would be read as the next response: the body module never pools a
    // connection with bytes in its buffer, and the pool's idle check closes one with bytes
    // still on the wire (`conn`).
    let left_over = !buf.is_empty() || reads.next().is_some();
    (outcome, reusable && !left_over)
}

/// An origin connection that answers each read with the next of `reads`, then end of stream,
/// once the request has been written (an origin answers nothing before it is asked: hyper
/// calls bytes on an idle connection an error), and takes whatever is written.
struct Reads {
    reads: VecDeque<Bytes>,
    asked: bool,
    reader: Option<Waker>,
}

impl AsyncRead for Reads {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(read) = self.reads.front_mut() {
            let n = read.len().min(out.remaining());
            out.put_slice(&read.split_to(n));
            if read.is_empty() {
                self.reads.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Reads {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // hyper writes a request without a body in one piece: written means asked.
        self.asked = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// hyper's HTTP/1.1 client on the same reads, its response head cleaned as the proxy cleans
/// it on the hyper path (`Upstream::send_hyper`).
async fn hypers(reads: &[&[u8]], method: Method) -> Outcome {
    let io = Reads {
        reads: reads.iter().map(|r| Bytes::copy_from_slice(r)).collect(),
        asked: false,
        reader: None,
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await
    else {
        return Outcome::Error;
    };
    let conn = tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "origin.test")
        .body(Empty::new())
        .expect("literal request");
    let outcome = async {
        let response = sender.send_request(request).await.ok()?;
        // A switch that the request did not ask for is refused (`Upstream::send_hyper`).
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let status = response.status().as_u16();
        let mut headers = response.headers().clone();
        forward::drop_overridden_length(&mut headers);
        forward::strip_hop_by_hop(&mut headers, false);
        let collected = response.into_body().collect().await.ok()?;
        let trailers = collected.trailers().map(listed).unwrap_or_default();
        Some(Outcome::Response {
            status,
            fields: listed(&headers),
            body: collected.to_bytes().to_vec(),
            trailers,
        })
    }
    .await;
    conn.abort();
    outcome.unwrap_or(Outcome::Error)
}

/// Both clients on `response` whole and split in two at every offset; the codec's outcome
/// (the same for every split) and reuse.
fn compare(runtime: &tokio::runtime::Runtime, response: &[u8], method: &Method) -> (Outcome, bool) {
    let head_request = *method == Method::HEAD;
    let whole = ours(&[response], head_request);
    for at in 1..=response.len() {
        let reads: Vec<&[u8]> = if at == response.len() {
            vec![response]
        } else {
            vec![&response[..at], &response[at..]]
        };
        let split = ours(&reads, head_request);
        assert_eq!(
            split,
            whole,
            "the codec split at {at}: {:?}",
            String::from_utf8_lossy(response)
        );
        let theirs = runtime.block_on(hypers(&reads, method.clone()));
        assert_eq!(
            split.0,
            theirs,
            "codec vs hyper, split at {at}: {:?}",
            String::from_utf8_lossy(response)
        );
    }
    whole
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

/// What the codec must make of a corpus case: an error, or this body and reuse.
#[derive(Debug)]
enum Expect {
    Error,
    Body(&'static str, bool),
}

/// The nasty cases: each with its method and what the codec makes of it.
const CORPUS: &[(&str, &str, Expect)] = &[
    // Both framings: chunked wins, Content-Length is dropped, and the connection is not reused.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Expect::Body("hello", false),
    ),
    (
        "GET",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        Expect::Body("ok", false),
    ),
    // Transfer-Encoding in HTTP/1.0 is refused.
    (
        "GET",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        Expect::Error,
    ),
    // Chunked not last: the body runs until close.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw bytes",
        Expect::Body("raw bytes", false),
    ),
    // Bare LF line endings: accepted in the head, refused in the chunked framing.
    (
        "GET",
        "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        Expect::Body("ok", true),
    ),
    (
        "GET",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
        Expect::Error,
    ),
    // Obsolete line folding is refused.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        Expect::Error,
    ),
    // A chunk size that does not fit 64 bits.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
        Expect::Error,
    ),
    // A chunk size promising more than arrives.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nshort",
        Expect::Error,
    ),
    // Chunk extensions and a trailer section.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
        Expect::Body("abc", true),
    ),
    // Interim responses before the final one.
    (
        "GET",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Expect::Body("ok", true),
    ),
    // Responses that never have a body, whatever they say.
    (
        "HEAD",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        Expect::Body("", true),
    ),
    (
        "GET",
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        Expect::Body("", true),
    ),
    (
        "GET",
        "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        Expect::Body("", true),
    ),
    // Content-Length: several that agree, several that do not, one that is not a number.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        Expect::Body("ok", true),
    ),
    (
        "GET",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        Expect::Error,
    ),
    (
        "GET",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
        Expect::Error,
    ),
    // A body cut short of its length.
    (
        "GET",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        Expect::Error,
    ),
    // Neither framing: until close, never reused; HTTP/1.0 and Connection: close are not reused.
    (
        "GET",
        "HTTP/1.1 200 OK\r\n\r\nuntil close",
        Expect::Body("until close", false),
    ),
    (
        "GET",
        "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Expect::Body("ok", false),
    ),
    (
        "GET",
        "HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
        Expect::Body("ok", false),
    ),
    // A switch nobody asked for.
    (
        "GET",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        Expect::Error,
    ),
];

#[test]
fn the_corpus_is_framed_as_hyper_frames_it_and_as_pinned() {
    let runtime = runtime();
    for (method, response, expect) in CORPUS {
        let method = Method::from_bytes(method.as_bytes()).expect("corpus method");
        let (outcome, reusable) = compare(&runtime, response.as_bytes(), &method);
        match (expect, &outcome) {
            (Expect::Error, Outcome::Error) => {}
            (Expect::Body(want, want_reuse), Outcome::Response { body, .. })
                if body == want.as_bytes() && reusable == *want_reuse => {}
            _ => panic!("{response:?}: expected {expect:?}, got {outcome:?} (reusable {reusable})"),
        }
    }
}

/// One generated response: its text, and the method it answers.
fn response() -> impl Strategy<Value = (String, Method)> {
    let version = prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")];
    let status = prop::sample::select(vec![200u16, 201, 204, 206, 301, 304, 404, 500, 503]);
    let interim = prop::sample::select(vec![
        "",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
    ]);
    let extra = prop::collection::vec(
        prop::sample::select(vec![
            "X-Origin: a",
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
            "Connection: close",
            "Connection: keep-alive",
            "Keep-Alive: timeout=5",
            "Connection: x-hop\r\nX-Hop: 1",
            "Server: origin",
        ]),
        0..4,
    );
    // 0 length, 1 wrong length, 2 chunked, 3 chunked with trailers, 4 until close,
    // 5 chunked with a Content-Length too, 6 a non-final chunked coding.
    let framing = 0..7u8;
    let body = "[a-z0-9 ]{0,40}";
    let cuts = prop::collection::vec(1..8usize, 0..4);
    let eol = prop_oneof![3 => Just("\r\n"), 1 => Just("\n")];
    let head = prop_oneof![4 => Just(Method::GET), 1 => Just(Method::HEAD)];
    (
        version, status, interim, extra, framing, body, cuts, eol, head,
    )
        .prop_map(
            |(version, status, interim, extra, framing, body, cuts, eol, method)| {
                let mut head = format!("{interim}{version} {status} X{eol}");
                for field in extra {
                    head.push_str(&field.replace("\r\n", eol));
                    head.push_str(eol);
                }
                let chunked = |trailers: bool| {
                    let mut out = String::new();
                    let mut rest = body.as_str();
                    for cut in cuts.iter().copied().chain(std::iter::repeat(usize::MAX)) {
                        if rest.is_empty() {
                            break;
                        }
                        let (chunk, after) = rest.split_at(cut.min(rest.len()));
                        out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
                        rest = after;
                    }
                    out.push_str("0\r\n");
                    if trailers {
                        out.push_str("X-Trailer: t\r\n");
                    }
                    out.push_str("\r\n");
                    out
                };
                let (fields, payload) = match framing {
                    0 => (format!("Content-Length: {}", body.len()), body.clone()),
                    1 => (format!("Content-Length: {}", body.len() + 3), body.clone()),
                    2 => ("Transfer-Encoding: chunked".to_owned(), chunked(false)),
                    3 => ("Transfer-Encoding: chunked".to_owned(), chunked(true)),
                    4 => (String::new(), body.clone()),
                    5 => (
                        format!(
                            "Transfer-Encoding: chunked{eol}Content-Length: {}",
                            body.len()
                        ),
                        chunked(false),
                    ),
                    _ => ("Transfer-Encoding: chunked, gzip".to_owned(), body.clone()),
                };
                if !fields.is_empty() {
                    head.push_str(&fields);
                    head.push_str(eol);
                }
                head.push_str(eol);
                head.push_str(&payload);
                (head, method)
            },
        )
}

proptest! {
    // Each case is checked at every split (a few hundred exchanges through hyper): bounded to
    // a few seconds in all.
    // A failure is reported with its shrunk case; nothing is written beside the source.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_responses_are_framed_as_hyper_frames_them((response, method) in response()) {
        compare(&runtime(), response.as_bytes(), &method);
    }
}
