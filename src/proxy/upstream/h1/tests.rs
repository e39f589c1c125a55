//! The lean client against real sockets: framing, reuse and errors.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use tokio::net::TcpStream;

use super::body::WireBody;
use super::codec::{WireError, encode};
use super::conn::{OriginIo, Wire};
use crate::proxy::upstream::lease::InFlight;
use crate::proxy::upstream::pool::Pool;

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
async fn collect(response: Response<WireBody>) -> Result<(Bytes, Option<HeaderMap>), WireError> {
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
    let (pool, response) = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await;
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
