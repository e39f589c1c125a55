//! The connection caps keep the process alive: a listener holds `downstream.max_connections`
//! client connections at most, stops accepting at the cap (the kernel's backlog queues the
//! next client) and accepts again as soon as one closes; a metric counts the times it was full.
//! With `max_connections_per_ip`, a client's connections beyond it are closed as they come.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Env, Rampart, Upstream, WAIT, within};

const CAP: usize = 4;

/// The value of the `https` listener's sample of counter `name`.
fn https_counter(name: &str) -> f64 {
    let sample = format!("{name}{{listener=\"https\"}} ");
    rampart::observe::metrics::encode_text()
        .lines()
        .find_map(|line| line.strip_prefix(&sample))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

fn times_full() -> f64 {
    https_counter("rampart_downstream_listener_full_total")
}

async fn site(env: &Env, origin: &Upstream, downstream: &str) -> Rampart {
    let top = format!("downstream: {{ {downstream} }}");
    env.start_a_test_to(&origin.url(), &top, "").await
}

/// A GET of `/` on `stream` (HTTP/1.1): the status line.
async fn get(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = within(WAIT, "the answer", stream.read(&mut buf))
            .await
            .expect("read");
        assert_ne!(n, 0, "the connection closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8_lossy(&got);
    got.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_full_listener_accepts_again_once_a_connection_closes() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin, &format!("max_connections: {CAP}")).await;
    let tls = rampart.tls().alpn(&["http/1.1"]);
    let mut held = Vec::new();
    for _ in 0..CAP {
        assert_eq!(times_full(), 0.0, "full before the cap was reached");
        let mut conn = tls
            .connect(rampart.https_addr(), Some("a.test"))
            .await
            .expect("a connection within the cap")
            .stream;
        assert_eq!(get(&mut conn).await, "HTTP/1.1 200 OK");
        held.push(conn);
    }
    assert_eq!(times_full(), 1.0, "the listener says it is full");

    // One over the cap: its TCP connection waits in the backlog, its handshake unanswered.
    let (over_tls, addr) = (tls.clone(), rampart.https_addr());
    let over = tokio::spawn(async move { over_tls.connect(addr, Some("a.test")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!over.is_finished(), "a handshake over the cap was answered");

    // One closes: the waiting client is let in and served.
    drop(held.pop());
    let mut over = within(WAIT, "the waiting handshake", over)
        .await
        .expect("joined")
        .expect("handshake once a slot is free")
        .stream;
    assert_eq!(get(&mut over).await, "HTTP/1.1 200 OK");
    for mut conn in held {
        assert_eq!(
            get(&mut conn).await,
            "HTTP/1.1 200 OK",
            "the others still served"
        );
    }
}

#[tokio::test]
async fn a_client_at_its_cap_has_its_next_connection_closed_and_others_are_served() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin, "max_connections_per_ip: 2").await;
    let (one, other) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    let tls = rampart.tls().alpn(&["http/1.1"]);
    let from = |ip| tls.clone().local_address(ip);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = from(one)
            .connect(rampart.https_addr(), Some("a.test"))
            .await
            .expect("a connection within the client's cap")
            .stream;
        assert_eq!(get(&mut conn).await, "HTTP/1.1 200 OK");
        held.push(conn);
    }
    let refused = https_counter("rampart_downstream_per_ip_refused_total");
    assert!(
        from(one)
            .connect(rampart.https_addr(), Some("a.test"))
            .await
            .is_err(),
        "a third connection from the client is closed"
    );
    assert_eq!(
        https_counter("rampart_downstream_per_ip_refused_total"),
        refused + 1.0
    );
    let mut conn = from(other)
        .connect(rampart.https_addr(), Some("a.test"))
        .await
        .expect("another client is let in")
        .stream;
    assert_eq!(get(&mut conn).await, "HTTP/1.1 200 OK");

    // One closes: once Rampart has seen it go, the client may connect again.
    drop(held.pop());
    let again = async {
        loop {
            match from(one)
                .connect(rampart.https_addr(), Some("a.test"))
                .await
            {
                Ok(tls) => break tls.stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let mut again = within(WAIT, "a place for the client", again).await;
    assert_eq!(get(&mut again).await, "HTTP/1.1 200 OK");
    assert_eq!(get(&mut held[0]).await, "HTTP/1.1 200 OK", "still served");
}
