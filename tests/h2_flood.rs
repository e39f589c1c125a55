//! HTTP/2 control-frame floods: a client sending PING or SETTINGS frames by the thousand gets
//! GOAWAY(ENHANCE_YOUR_CALM) and its connection closed (RFC 9113 §10.5); one sending a few
//! keeps its connection and gets its acknowledgements.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Env, Rampart, Upstream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut bytes = len.to_be_bytes()[1..].to_vec();
    bytes.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
    bytes.extend_from_slice(payload);
    bytes
}

/// The frames (type, flags, payload) Rampart sends after `sent`, until it closes the
/// connection or a second passes with nothing more; and whether it closed.
async fn exchange(rampart: &Rampart, sent: &[u8]) -> (Vec<(u8, u8, Vec<u8>)>, bool) {
    let mut stream = rampart.connect_offering("a.test", &["h2"]).await.stream;
    stream.write_all(sent).await.expect("write");
    stream.flush().await.expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let end = (9 + len).min(rest.len());
        frames.push((rest[3], rest[4], rest[9..end].to_vec()));
        rest = &rest[end..];
    }
    (frames, closed)
}

async fn site(env: &Env, origin: &Upstream) -> Rampart {
    env.start_a_test_to(&origin.url(), "", "").await
}

fn opening() -> Vec<u8> {
    let mut sent = PREFACE.to_vec();
    sent.extend(frame(SETTINGS, 0, &[]));
    sent
}

fn goaway_code(frames: &[(u8, u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(kind, _, _)| *kind == GOAWAY)
        .map(|(_, _, payload)| u32::from_be_bytes(payload[4..8].try_into().expect("8 bytes")))
}

#[tokio::test]
async fn a_ping_flood_gets_goaway_enhance_your_calm() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let mut sent = opening();
    for i in 0..2000u64 {
        sent.extend(frame(PING, 0, &i.to_be_bytes()));
    }
    let (frames, closed) = exchange(&rampart, &sent).await;
    assert_eq!(goaway_code(&frames), Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(closed, "the connection is closed");
    let acks = frames
        .iter()
        .filter(|(kind, flags, _)| *kind == PING && flags & ACK != 0)
        .count();
    assert!(acks <= 101, "{acks} PINGs answered past the limit");
}

#[tokio::test]
async fn a_settings_flood_gets_goaway_enhance_your_calm() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let mut sent = opening();
    for _ in 0..2000 {
        sent.extend(frame(SETTINGS, 0, &[]));
    }
    let (frames, closed) = exchange(&rampart, &sent).await;
    assert_eq!(goaway_code(&frames), Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(closed, "the connection is closed");
}

#[tokio::test]
async fn a_few_pings_are_answered_and_the_connection_kept() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let rampart = site(&env, &origin).await;
    let mut sent = opening();
    for i in 0..20u64 {
        sent.extend(frame(PING, 0, &i.to_be_bytes()));
    }
    let (frames, closed) = exchange(&rampart, &sent).await;
    assert_eq!(goaway_code(&frames), None, "no GOAWAY");
    assert!(!closed, "the connection stays open");
    let acks = frames
        .iter()
        .filter(|(kind, flags, _)| *kind == PING && flags & ACK != 0)
        .count();
    assert_eq!(acks, 20, "every PING answered");
}
