//! Early answers arrive: a request refused before its body was read (here 413, a declared
//! body over `max_body`) gets its answer whole, however much body the client is still
//! sending. Rampart reads the unread body away for a bounded time instead of dropping it: over
//! HTTP/1.1 a close with unread bytes is a TCP reset, which destroys the answer of a client
//! that reads only once it has sent everything, and over HTTP/2 curl (before 8.3) drops an
//! answer whose stream is reset, even with NO_ERROR.

mod common;

use std::process::Stdio;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Env, Rampart, Upstream, WAIT, within};

/// Uploads per protocol.
const UPLOADS: usize = 100;

async fn site(env: &Env, origin: &Upstream) -> Rampart {
    site_with(env, origin, "1KiB").await
}

async fn site_with(env: &Env, origin: &Upstream, max_body: &str) -> Rampart {
    let keys = format!("    max_body: {max_body}\n");
    env.start_a_test_to(&origin.url(), "", &keys).await
}

/// Where a body of unknown length turns out too long: while it is buffered (`max_body` under
/// `buffer_request_body`'s 64 KiB) and while it streams to the origin (over it): the
/// `max_body` and the size of the upload.
const FOUND_OVER: [(&str, usize); 2] = [("1KiB", 32 << 10), ("100KiB", 1 << 20)];

/// How curl sends a body.
#[derive(Clone, Copy)]
enum Sent {
    /// With its length (`--data-binary @file`).
    Declared,
    /// Of unknown length, from standard input (`-T -`): over HTTP/2 without a length, over
    /// HTTP/1.1 chunked. Rampart finds it too long only by reading it.
    Undeclared,
}

/// `curl` uploading `file` to `rampart` with `protocol` (`--http2`, `--http1.1`): its exit
/// status and the status it got, as `exit:status`.
async fn curl_upload(
    rampart: &Rampart,
    protocol: &str,
    file: &std::path::Path,
    sent: Sent,
) -> String {
    let port = rampart.https_addr().port();
    let mut curl = tokio::process::Command::new("curl");
    curl.args(["-sS", "-k", "--max-time", "10", protocol, "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "--resolve"])
        .arg(format!("a.test:{port}:127.0.0.1"));
    match sent {
        Sent::Declared => curl
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .stdin(Stdio::null()),
        Sent::Undeclared => curl
            .args(["-T", "-"])
            .stdin(std::fs::File::open(file).expect("the upload file")),
    };
    let output = curl
        .arg(format!("https://a.test:{port}/up"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl runs ({e}): apt-get install -y curl"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    format!(
        "{}:{}{}",
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout),
        if stderr.is_empty() {
            String::new()
        } else {
            format!(" ({})", stderr.trim())
        }
    )
}

/// [`UPLOADS`] curl uploads of `size` bytes with `protocol`, four at a time: how each ended.
async fn curl_uploads(
    env: &Env,
    rampart: &Rampart,
    protocol: &str,
    size: usize,
    sent: Sent,
) -> Vec<String> {
    let file = env.write("upload.bin", &"x".repeat(size));
    let all = futures_util::stream::iter(0..UPLOADS)
        .map(|_| curl_upload(rampart, protocol, &file, sent))
        .buffer_unordered(4)
        .collect::<Vec<_>>();
    within(WAIT * 4, "the uploads", all).await
}

#[tokio::test]
async fn oversized_uploads_over_http2_all_get_their_413() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let outcomes = curl_uploads(&env, &rampart, "--http2", 10_000, Sent::Declared).await;
    all_413(&outcomes, "0:413");
    assert_eq!(origin.requests(), 0, "no upload reached the origin");
}

/// Every outcome is `expected` (a 413).
fn all_413(outcomes: &[String], expected: &str) {
    let failed: Vec<&String> = outcomes.iter().filter(|o| *o != expected).collect();
    assert!(
        failed.is_empty(),
        "{} of {} did not end in 413: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A body of unknown length is found too long by reading it: the rest is read away as for a
/// declared one.
#[tokio::test]
async fn undeclared_oversized_uploads_over_http2_all_get_their_413() {
    for (max_body, size) in FOUND_OVER {
        let (env, origin) = (Env::new(), Upstream::sink().await);
        let rampart = site_with(&env, &origin, max_body).await;
        let outcomes = curl_uploads(&env, &rampart, "--http2", size, Sent::Undeclared).await;
        all_413(&outcomes, "0:413");
    }
}

/// An HTTP/1.1 client that sends its whole request before it reads, as simple clients do:
/// how its upload of `size` bytes ended (`413`, or what went wrong). `sent` says whether the
/// body has a Content-Length or is chunked (16 KiB chunks).
async fn send_all_then_read(rampart: &Rampart, size: usize, sent: Sent) -> String {
    // A small send buffer: the kernel cannot take the whole body while Rampart reads none.
    let tls = rampart.tls().alpn(&["http/1.1"]).send_buffer(16 << 10);
    let mut stream = tls
        .connect(rampart.https_addr(), Some("a.test"))
        .await
        .expect("handshake")
        .stream;
    let framing = match sent {
        Sent::Declared => format!("Content-Length: {size}"),
        Sent::Undeclared => "Transfer-Encoding: chunked".to_owned(),
    };
    let mut request =
        format!("POST /up HTTP/1.1\r\nHost: a.test\r\n{framing}\r\n\r\n").into_bytes();
    match sent {
        Sent::Declared => request.resize(request.len() + size, b'x'),
        Sent::Undeclared => {
            let chunk = 16 << 10;
            for _ in 0..size / chunk {
                request.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
                request.resize(request.len() + chunk, b'x');
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let exchange = async {
        stream.write_all(&request).await?;
        stream.flush().await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // Up to the end of the head: the connection may stay open.
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await? {
                0 => break,
                n => answer.extend_from_slice(&buf[..n]),
            }
        }
        Ok::<_, std::io::Error>(answer)
    };
    match within(WAIT, "an upload's answer", exchange).await {
        Ok(answer) => {
            let answer = String::from_utf8_lossy(&answer);
            match answer.strip_prefix("HTTP/1.1 ") {
                Some(rest) => rest[..3].to_owned(),
                None => format!("no answer: {answer:?}"),
            }
        }
        Err(error) => format!("{:?}: {error}", error.kind()),
    }
}

#[tokio::test]
async fn oversized_uploads_over_http1_all_get_their_413() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    // More than the sockets' buffers hold: the answer comes while the client is still sending,
    // and it reads only once it has sent everything.
    let all = futures_util::stream::iter(0..UPLOADS)
        .map(|_| send_all_then_read(&rampart, 512 << 10, Sent::Declared))
        .buffer_unordered(4)
        .collect::<Vec<_>>();
    let outcomes = within(WAIT * 4, "the uploads", all).await;
    all_413(&outcomes, "413");
    assert_eq!(origin.requests(), 0, "no upload reached the origin");
}

#[tokio::test]
async fn undeclared_oversized_uploads_over_http1_all_get_their_413() {
    for (max_body, size) in FOUND_OVER {
        let (env, origin) = (Env::new(), Upstream::sink().await);
        let rampart = site_with(&env, &origin, max_body).await;
        let all = futures_util::stream::iter(0..UPLOADS)
            .map(|_| send_all_then_read(&rampart, size, Sent::Undeclared))
            .buffer_unordered(4)
            .collect::<Vec<_>>();
        all_413(&within(WAIT * 4, "the uploads", all).await, "413");
    }
}

/// The refused body is read to its end, so the connection serves the next request.
#[tokio::test]
async fn a_refused_body_is_read_away_and_the_connection_kept() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let mut stream = rampart.h1_stream("a.test").await;
    let body = vec![b'x'; 100_000];
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&body).await.expect("write");
    stream
        .write_all(b"GET /next HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    let mut answers = Vec::new();
    within(WAIT, "both answers", stream.read_to_end(&mut answers))
        .await
        .expect("read");
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<&str> = answers
        .lines()
        .filter_map(|line| line.strip_prefix("HTTP/1.1 "))
        .map(|rest| &rest[..3])
        .collect();
    assert_eq!(statuses, ["413", "200"], "{answers}");
    assert_eq!(
        origin.requests(),
        1,
        "only the second request reached the origin"
    );
}
