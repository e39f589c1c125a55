//! Request bodies do not tie up origins: a body of at most `buffer_request_body` (64 KiB by
//! default) is read whole before an origin connection is taken, so slow uploaders hold client
//! connections and buffers, never origin connections; a larger body streams as it arrives.

mod common;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use common::{Echoed, Env, Rampart, Upstream, WAIT, within};

/// Slow uploaders at once.
const UPLOADERS: usize = 200;

async fn site(env: &Env, origin: &Upstream) -> Rampart {
    site_for(env, &origin.url()).await
}

async fn site_for(env: &Env, origin: &str) -> Rampart {
    env.start_a_test_to(origin, "downstream: { client_body_timeout: 10s }", "")
        .await
}

/// Reads from `stream` until `buf` holds `marker`; what was read.
async fn read_until(stream: &mut TlsStream<TcpStream>, marker: &[u8]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(marker.len()).any(|w| w == marker) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    within(WAIT, "the server's answer", read).await;
    String::from_utf8_lossy(&got).into_owned()
}

async fn send(stream: &mut TlsStream<TcpStream>, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
    // TLS buffers what the socket did not take at once; a read would not send it.
    stream.flush().await.expect("flush");
}

/// An uploader that has sent its head (asking to continue) and 10 of its 1000 body bytes.
async fn stalled_upload(rampart: &Rampart) -> TlsStream<TcpStream> {
    let mut stream = rampart.h1_stream("a.test").await;
    let head = "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\
                Expect: 100-continue\r\nConnection: close\r\n\r\n";
    send(&mut stream, head.as_bytes()).await;
    // Rampart reads the body itself: it grants the continuation before any origin is asked.
    let continued = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(
        continued.starts_with("HTTP/1.1 100 Continue"),
        "{continued}"
    );
    send(&mut stream, &[b'a'; 10]).await;
    stream
}

#[tokio::test]
async fn slow_uploads_under_the_buffer_hold_no_origin_connection() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let uploads = futures_util::future::join_all((0..UPLOADERS).map(|_| stalled_upload(&rampart)));
    let mut uploads = uploads.await;
    assert_eq!(
        (origin.open(), origin.requests()),
        (0, 0),
        "{UPLOADERS} uploads in progress, none at the origin"
    );
    // The rest of each body: every upload reaches the origin whole, as one buffered request.
    let finished = uploads.iter_mut().map(|stream| async move {
        send(stream, &[b'a'; 990]).await;
        let response = read_until(stream, b"}").await;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let echoed: Echoed = serde_json::from_str(body).unwrap_or_else(|_| panic!("{response}"));
        assert_eq!(echoed.body_len, 1000);
        assert_eq!(echoed.all("content-length"), ["1000"]);
        assert_eq!(
            echoed.all("expect"),
            Vec::<&str>::new(),
            "the body came with it"
        );
    });
    futures_util::future::join_all(finished).await;
    assert_eq!(origin.requests(), UPLOADERS);
    rampart.stop().await;
}

#[tokio::test]
async fn a_small_chunked_body_reaches_the_origin_whole_with_its_length() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let mut stream = rampart.h1_stream("a.test").await;
    let request = "POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    send(&mut stream, request.as_bytes()).await;
    let response = read_until(&mut stream, b"}").await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let echoed: Echoed = serde_json::from_str(body).unwrap_or_else(|_| panic!("{response}"));
    assert_eq!(echoed.body_len, 11);
    assert_eq!(echoed.all("content-length"), ["11"]);
    assert_eq!(echoed.all("transfer-encoding"), Vec::<&str>::new());
    rampart.stop().await;
}

#[tokio::test]
async fn a_body_over_the_buffer_streams_as_it_arrives() {
    let (env, origin) = (Env::new(), Upstream::sink().await);
    let rampart = site(&env, &origin).await;
    let mut stream = rampart.h1_stream("a.test").await;
    let size = 256 * 1024;
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    send(&mut stream, head.as_bytes()).await;
    send(&mut stream, &vec![b'a'; size / 2]).await;
    // Half the body, and the origin is reading it while the rest has not been sent.
    origin
        .wait_received(64 * 1024, "the first half at the origin")
        .await;
    send(&mut stream, &vec![b'a'; size / 2]).await;
    let response = read_until(&mut stream, b"}").await;
    assert!(response.contains(&format!("\"len\":{size}")), "{response}");
    rampart.stop().await;
}

#[tokio::test]
async fn a_route_with_buffer_0_streams_even_a_small_body() {
    let (env, origin) = (Env::new(), Upstream::sink().await);
    let rampart = env
        .start_a_test_to(&origin.url(), "", "    buffer_request_body: 0\n")
        .await;
    let mut stream = rampart.h1_stream("a.test").await;
    let head = "POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n5\r\nhello\r\n";
    send(&mut stream, head.as_bytes()).await;
    // Five bytes of an unfinished body are at the origin: nothing waits to fill a buffer.
    origin
        .wait_received(5, "the first chunk at the origin")
        .await;
    send(&mut stream, b"6\r\n world\r\n0\r\n\r\n").await;
    let response = read_until(&mut stream, b"}").await;
    assert!(response.contains("\"len\":11"), "{response}");
    rampart.stop().await;
}

/// An origin that takes `Expect: 100-continue` at its word: it refuses such a request at once,
/// without reading its body, and reads what follows as its next request. Every request line
/// it read, in order.
async fn literal_origin() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 16 << 10];
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    got.drain(..end + 4);
                    seen.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or("").to_owned());
                    let answer: &[u8] = if head.contains("\r\nexpect: 100-continue") {
                        b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        while got.len() < length {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        got.drain(..length);
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), lines)
}

/// A body that streams (over the buffer) after `Expect: 100-continue` reaches the origin as
/// the body of the request routed, never as a request of its own: Rampart grants the
/// expectation and does not forward it.
#[tokio::test]
async fn an_expectation_stops_at_rampart_so_no_body_passes_for_a_request() {
    let (env, (origin, lines)) = (Env::new(), literal_origin().await);
    let rampart = site_for(&env, &origin).await;
    let mut stream = rampart.h1_stream("a.test").await;
    let size = 256 * 1024;
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {size}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    send(&mut stream, head.as_bytes()).await;
    let continued = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(
        continued.starts_with("HTTP/1.1 100 Continue"),
        "{continued}"
    );
    let mut body = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec();
    body.resize(size, b'x');
    send(&mut stream, &body).await;
    let response = read_until(&mut stream, b"\r\n\r\n").await;
    // Whatever else the origin got comes before the next exchange over a pooled connection.
    let again = rampart
        .client_h1("a.test")
        .await
        .get("a.test", "/next")
        .await;
    assert_eq!(
        *lines.lock().unwrap(),
        ["post /up http/1.1", "get /next http/1.1"],
        "the origin read the body as the request's"
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(again.status, 200);
    rampart.stop().await;
}
