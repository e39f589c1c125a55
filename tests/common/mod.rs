//! Shared harness for the end-to-end tests: a test CA, origin servers, a TLS and HTTP client,
//! and Rampart itself (in process, or the binary as a child), all on ephemeral loopback ports.
//!
//! Every wait here is bounded by [`WAIT`] or a tighter limit, and waits on a readiness signal
//! (a returned future, a watch channel, an accepted connection), never on a fixed sleep.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod ca;
pub mod client;
pub mod logs;
pub mod rampart;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

pub use binary::{Binary, certs_json, free_addr, rampart_command};
pub use ca::{Leaf, TestCa};
pub use client::{
    Body, BoxError, Echoed, HttpClient, Reply, Tls, TlsClient, empty, full, plain_get,
    plain_get_with, tls_alert, tls_connect,
};
pub use rampart::{Env, Rampart};
pub use upstream::{Upstream, pattern_chunk, pattern_sha256, refused_addr};

/// Longest any single readiness wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// SHA-256 for checking large bodies. aws-lc's implementation (reached through rustls's
/// provider) is optimised in every build profile; `sha2` in a debug build hashes ~40 MB/s,
/// which would make the 50 MB tests spend most of their time hashing.
pub struct Sha256(Box<dyn rustls::crypto::hash::Context>);

impl Sha256 {
    pub fn new() -> Self {
        let rustls::SupportedCipherSuite::Tls13(suite) =
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        else {
            unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite")
        };
        Self(suite.common.hash_provider.start())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finalize(self) -> [u8; 32] {
        self.0
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 output is 32 bytes")
    }
}

/// Lower-case hex of a digest, for readable assertion messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
