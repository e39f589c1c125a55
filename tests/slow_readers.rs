//! Responses do not wait on slow readers with origin resources: a response body is read from
//! the origin ahead of the client into a bounded buffer (`buffer_response`), so a response that
//! fits frees its origin connection for the next request at once; a client that reads nothing
//! for `downstream.send_timeout` loses its connection (HTTP/1.1) or its stream (HTTP/2), and
//! the origin connection of a response it left unfinished is closed.

mod common;

use std::time::Duration;

use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use common::{Env, Rampart, Upstream, WAIT, within};

/// A download far larger than the kernel and TLS buffers between Rampart and a client that
/// does not read, so that only reading ahead can finish it.
const SIZE: u64 = 16 * 1024 * 1024;

async fn site(env: &Env, origin: &Upstream, keys: &str) -> Rampart {
    env.start_a_test_to(&origin.url(), "downstream: { send_timeout: 1s }", keys)
        .await
}

/// An HTTP/1.1 client with a 4 KiB receive buffer that asks for `/big` and reads only the
/// response head.
async fn slow_reader(rampart: &Rampart) -> TlsStream<TcpStream> {
    let tls = rampart
        .tls()
        .alpn(&["http/1.1"])
        .receive_buffer(4096)
        .connect(rampart.https_addr(), Some("a.test"))
        .await
        .expect("handshake");
    let mut stream = tls.stream;
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    within(WAIT, "the response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
    })
    .await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    stream
}

#[tokio::test]
async fn a_slow_readers_response_is_read_ahead_and_its_origin_connection_serves_the_next() {
    let (env, origin) = (Env::new(), Upstream::download(SIZE, None).await);
    let rampart = site(&env, &origin, "    buffer_response: 32MiB\n").await;
    let slow = slow_reader(&rampart).await;
    // Within a second the whole body is in Rampart's memory and the connection idle again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = rampart.client_h1("a.test").await;
    let reply = client.get("a.test", "/next").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len() as u64, SIZE);
    assert_eq!(
        origin.open(),
        1,
        "the next request went on the slow reader's origin connection"
    );
    drop(slow);
    rampart.stop().await;
}

#[tokio::test]
async fn an_http1_client_that_reads_nothing_loses_its_connection_after_the_send_timeout() {
    let (env, origin) = (Env::new(), Upstream::download(SIZE, None).await);
    // Nothing read ahead: only the connection's send timeout can free the origin.
    let rampart = site(&env, &origin, "    buffer_response: 0\n").await;
    let mut slow = slow_reader(&rampart).await;
    origin
        .wait_open(WAIT, "the origin connection closed", |open| open == 0)
        .await;
    // What reached the client's buffers, then the end: the rest never comes.
    let mut rest = Vec::new();
    let read = within(WAIT, "the connection's end", slow.read_to_end(&mut rest)).await;
    assert!(
        (rest.len() as u64) < SIZE / 2,
        "{} bytes, {read:?}",
        rest.len()
    );
    rampart.stop().await;
}

#[tokio::test]
async fn an_http2_stream_that_grants_no_window_loses_its_origin_after_the_send_timeout() {
    let (env, origin) = (Env::new(), Upstream::download(SIZE, None).await);
    let rampart = site(&env, &origin, "").await;
    let tls = rampart.connect_offering("a.test", &["h2"]).await;
    let (sender, conn) = h2::client::handshake(tls.stream)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut sender = sender.ready().await.expect("ready");
    let request = Request::builder()
        .method(Method::GET)
        .uri("https://a.test/big")
        .body(())
        .expect("valid request");
    let (response, _) = sender.send_request(request, true).expect("sent");
    let response = within(WAIT, "the response head", response)
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    // The body is never read, so its window is never given back: the stream stalls.
    let body = response.into_body();
    origin
        .wait_open(WAIT, "the origin connection closed", |open| open == 0)
        .await;
    drop(body);
    conn.abort();
    rampart.stop().await;
}
