//! Lifecycle: graceful drain on SIGTERM (the binary) and `Server::shutdown` (in process), the
//! `:80` role (308 to https, ACME HTTP-01 tokens), and start-up failures.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Binary, Env, HttpClient, TlsClient, Upstream, WAIT, free_addr, plain_get, within};

/// A full config for the binary: `a.test` proxied to `upstream`, on the given listeners.
fn binary_config(
    env: &Env,
    https: SocketAddr,
    http: SocketAddr,
    upstream: &str,
) -> std::path::PathBuf {
    env.leaf("a", &["a.test"]);
    env.write(
        "rampart.yaml",
        &format!(
            "listen: {{ https: \"{https}\", http: \"{http}\" }}
storage: storage
log: {{ format: text, level: info }}
shutdown_grace: 10s
sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{upstream}]
"
        ),
    )
}

#[tokio::test]
async fn sigterm_finishes_the_in_flight_request_refuses_new_connections_and_exits_zero() {
    let env = Env::new();
    let slow = Upstream::slow(Duration::from_secs(3)).await;
    let (https, http) = (free_addr(), free_addr());
    let config = binary_config(&env, https, http, &slow.url());
    let mut rampart = Binary::run(&config, https).await;

    let tls = TlsClient::new(env.ca.roots())
        .alpn(&["http/1.1"])
        .connect(https, Some("a.test"))
        .await;
    let mut client = HttpClient::handshake(tls.expect("handshake with the binary")).await;
    let in_flight = tokio::spawn(async move { client.get("a.test", "/slow").await });
    slow.wait_requests(1).await;
    rampart.sigterm();

    // Once the signal is handled the listener is gone, while the slow request is still running.
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut refused = false;
    for _attempt in 0..150 {
        match TcpStream::connect(https).await {
            // Refused once the listener is closed; reset when the SYN raced the close and sat in
            // the closing listener's queue (the kernel resets those). Neither is served.
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ) =>
            {
                refused = true;
                break;
            }
            Err(error) => panic!("unexpected connect error: {error}"),
            Ok(_) if Instant::now() >= deadline => break,
            // Polling another process: a short pause between attempts.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "still accepting connections 1.5 s after SIGTERM");
    assert!(
        !in_flight.is_finished(),
        "the slow request should still be in flight when accepting stops"
    );

    let reply = within(WAIT, "the in-flight request", in_flight)
        .await
        .expect("no panic");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "slow done\n");
    let status = rampart.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        rampart.stderr()
    );
    assert!(
        TcpStream::connect(http).await.is_err(),
        "the :80 listener is closed too"
    );
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_reports_a_clean_drain() {
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let slow = Upstream::slow(Duration::from_millis(800)).await;
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{}]
",
            slow.url()
        ))
        .await;
    let https = rampart.https_addr();
    let mut client = rampart.client("a.test").await;
    let in_flight = tokio::spawn(async move { client.get("a.test", "/").await });
    slow.wait_requests(1).await;
    let stopping = tokio::spawn(rampart.stop());
    let reply = within(WAIT, "the in-flight request", in_flight)
        .await
        .expect("no panic");
    assert_eq!(reply.status, 200);
    within(WAIT, "the drain", stopping)
        .await
        .expect("drained within the grace period");
    let error = TcpStream::connect(https)
        .await
        .expect_err("no listener after shutdown");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn plain_http_redirects_with_308_to_https_keeping_path_and_query() {
    let env = Env::new();
    let rampart = start_a_test_answering_ok(&env, "").await;
    let http = rampart.http_addr();
    let https_port = rampart.https_addr().port();
    for (host, path) in [
        ("a.test", "/"),
        (&*format!("a.test:{}", http.port()), "/some/path?x=1&y=%20z"),
    ] {
        let reply = plain_get(http, host, path).await;
        assert_eq!(reply.status, 308, "{host}{path}");
        // The port is that of the https listener actually serving, and the client's :80 port
        // is dropped from the host.
        let expected = format!("https://a.test:{https_port}{path}");
        assert_eq!(
            reply.header("location"),
            Some(expected.as_str()),
            "{host}{path}"
        );
    }
    rampart.stop().await;
}

#[tokio::test]
async fn plain_http_serves_acme_challenge_tokens_and_404s_unknown_ones() {
    let env = Env::new();
    let rampart = start_a_test_answering_ok(&env, "").await;
    let http = rampart.http_addr();
    let path = "/.well-known/acme-challenge/tok-123_ABC";
    assert_eq!(
        plain_get(http, "a.test", path).await.status,
        404,
        "no token yet"
    );
    rampart
        .server()
        .challenges()
        .insert("tok-123_ABC", "tok-123_ABC.thumbprint");
    let reply = plain_get(http, "a.test", path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.text(),
        "tok-123_ABC.thumbprint",
        "the body is the key authorization, nothing else"
    );
    // Not redirected: the CA validates over plain HTTP, for any host.
    assert_eq!(plain_get(http, "other.test", path).await.status, 200);
    assert_eq!(
        plain_get(http, "a.test", "/.well-known/acme-challenge/unknown")
            .await
            .status,
        404
    );
    rampart.server().challenges().remove("tok-123_ABC");
    assert_eq!(
        plain_get(http, "a.test", path).await.status,
        404,
        "removed tokens are gone"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn run_fails_with_a_clear_message_when_the_port_is_in_use() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback");
    let https = taken.local_addr().expect("bound");
    let config = binary_config(&env, https, free_addr(), "http://127.0.0.1:9");
    let output = within(
        WAIT,
        "rampart to give up",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["run", "-c"])
            .arg(&config)
            .output(),
    )
    .await
    .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    // Not 64: a port in use may free up, so systemd should retry.
    assert!(
        code.is_some_and(|c| c != 0 && c != 64),
        "exit {:?}:\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains(&https.to_string()),
        "stderr should name {https}:\n{stderr}"
    );
    drop(taken);
}

#[tokio::test]
async fn run_exits_64_on_an_invalid_config_naming_the_file_and_line() {
    let env = Env::new();
    let config = env.write("bad.yaml", "listen: { https: \"127.0.0.1:8443\" }\nsites:\n  - hosts: [a.test]\n    tls: internal\n    upstreams: [ftp://x]\n");
    let output = within(
        WAIT,
        "rampart to refuse the config",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["run", "-c"])
            .arg(&config)
            .output(),
    )
    .await
    .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:5:", config.display())),
        "stderr should point at line 5:\n{stderr}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped_at_the_handshake_timeout() {
    let env = Env::new();
    let rampart = start_a_test_answering_ok(&env, "{ handshake_timeout: 300ms }").await;
    let mut tcp = TcpStream::connect(rampart.https_addr())
        .await
        .expect("connect");
    let started = Instant::now();
    // Say nothing: the server must hang up by itself.
    let mut buf = [0u8; 64];
    let read = within(
        WAIT,
        "the server to drop the silent client",
        tcp.read(&mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the connection closed, got {read:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "dropped before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "dropped long after the 300ms timeout: {elapsed:?}"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_idle_timeout() {
    let env = Env::new();
    let rampart = start_a_test_answering_ok(&env, "{ idle_timeout: 300ms }").await;
    for alpn in ["http/1.1", "h2"] {
        let tls = rampart
            .tls()
            .alpn(&[alpn])
            .connect(rampart.https_addr(), Some("a.test"))
            .await;
        let mut client = HttpClient::handshake(tls.expect("handshake")).await;
        assert_eq!(client.get("a.test", "/").await.status, 200, "{alpn}");
        let started = Instant::now();
        within(WAIT, "the idle connection to close", client.closed()).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(200),
            "{alpn}: closed before the idle timeout: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "{alpn}: closed long after the 300ms timeout: {elapsed:?}"
        );
    }
    // An h2 client that completes TLS but never sends its preface is idle too.
    let mut silent = rampart
        .tls()
        .alpn(&["h2"])
        .connect(rampart.https_addr(), Some("a.test"))
        .await
        .expect("handshake");
    assert_eq!(silent.alpn.as_deref(), Some(&b"h2"[..]));
    let started = Instant::now();
    let mut rest = Vec::new();
    within(
        WAIT,
        "the silent h2 connection to close",
        silent.stream.read_to_end(&mut rest),
    )
    .await
    .ok();
    let elapsed = started.elapsed();
    assert!(
        (Duration::from_millis(200)..Duration::from_secs(3)).contains(&elapsed),
        "silent h2: closed at {elapsed:?}, not around the 300ms timeout"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn client_connections_have_tcp_keep_alive_so_vanished_peers_are_found() {
    let env = Env::new();
    let rampart = start_a_test_answering_ok(&env, "").await;
    let tls = rampart
        .tls()
        .alpn(&["h2"])
        .connect(rampart.https_addr(), Some("a.test"))
        .await
        .expect("handshake");
    let client = tls.stream.get_ref().0.local_addr().expect("client address");
    let mut client_h2 = HttpClient::handshake(tls).await;
    assert_eq!(client_h2.get("a.test", "/").await.status, 200);
    // Rampart's end of this connection, as the kernel lists it: "tr" is the pending timer, 2
    // meaning keep-alive (proc_net(5)); with no keep-alive an idle socket has none (0).
    let server = rampart.https_addr();
    let hex = |addr: SocketAddr| {
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            panic!("loopback IPv4 expected, got {addr}")
        };
        format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(ip.octets()),
            addr.port()
        )
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let row = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[1] == local && f[2] == remote)
        .unwrap_or_else(|| panic!("no socket {local} -> {remote} in:\n{table}"));
    let timer = row[5].split(':').next().unwrap_or_default();
    assert_eq!(
        timer, "02",
        "Rampart's socket has no keep-alive timer: {row:?}"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_may_idle_past_the_header_timeout() {
    let env = Env::new();
    let rampart =
        start_a_test_answering_ok(&env, "{ header_timeout: 300ms, idle_timeout: 60s }").await;
    let tls = rampart
        .tls()
        .alpn(&["http/1.1"])
        .connect(rampart.https_addr(), Some("a.test"))
        .await;
    let mut client = HttpClient::handshake(tls.expect("handshake")).await;
    assert_eq!(client.get("a.test", "/").await.status, 200);
    // Idle between requests is the idle timeout's business; the header timeout starts with
    // the next request's first byte. 31 s: past hyper's own 30 s default header timeout too,
    // which applies whenever hyper has a timer.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(
        client.get("a.test", "/").await.status,
        200,
        "the connection outlived the header timeout while idle"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn a_request_head_trickled_past_the_header_timeout_is_cut_off() {
    let env = Env::new();
    let rampart =
        start_a_test_answering_ok(&env, "{ header_timeout: 500ms, idle_timeout: 30s }").await;
    // On a new connection, and after a first request on a kept-alive one.
    for first in [None, Some("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")] {
        let mut tls = rampart
            .tls()
            .alpn(&["http/1.1"])
            .connect(rampart.https_addr(), Some("a.test"))
            .await
            .expect("handshake");
        if let Some(request) = first {
            tls.stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = [0; 12];
            tls.stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"HTTP/1.1 200");
            // Longer than the header timeout: waiting for a next request is not a slow head.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        // A byte every 100 ms keeps the connection from going idle, never ends the head.
        let started = Instant::now();
        let head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ";
        let mut cut = false;
        for byte in head.iter().chain(std::iter::repeat(&b'x')).take(60) {
            if tls.stream.write_all(&[*byte]).await.is_err() || tls.stream.flush().await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        if !cut {
            let mut rest = Vec::new();
            let read = within(
                WAIT,
                "the connection to close",
                tls.stream.read_to_end(&mut rest),
            );
            cut = read.await.map_or(true, |_| {
                rest.is_empty() || !rest.starts_with(b"HTTP/1.1 200")
            });
        }
        let elapsed = started.elapsed();
        assert!(cut, "the trickled head was answered");
        assert!(
            (Duration::from_millis(400)..Duration::from_secs(3)).contains(&elapsed),
            "first request {}: cut at {elapsed:?}, not around the 500ms header timeout",
            first.is_some()
        );
    }
    rampart.stop().await;
}

/// Starts Rampart with one site, `a.test`, answering `ok` itself, with `downstream` (a YAML flow
/// mapping, or "" for the defaults).
async fn start_a_test_answering_ok(env: &Env, downstream: &str) -> common::Rampart {
    env.leaf("a", &["a.test"]);
    let downstream = if downstream.is_empty() {
        String::new()
    } else {
        format!("downstream: {downstream}\n")
    };
    env.start(&format!(
        "{downstream}sites:\n  - hosts: [a.test]\n    tls: {{ cert: a.pem, key: a.key }}\n    routes: [{{ path: /, respond: {{ status: 200, body: \"ok\\n\" }} }}]\n"
    ))
    .await
}
