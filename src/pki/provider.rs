//! The one crypto provider (aws-lc-rs) and the cipher suites an operator may name.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::{CipherSuite, SupportedCipherSuite};

/// aws-lc-rs with the key exchanges we offer, post-quantum hybrid first.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        kx_group::X25519MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
    ];
    Arc::new(provider)
}

/// The cipher suites an operator may name (`downstream.cipher_suites`), by IANA name, TLS 1.3
/// first: rustls's default set. The flag says whether it is a TLS 1.3 suite.
pub fn cipher_suite_names() -> impl Iterator<Item = (&'static str, bool)> {
    aws_lc_rs::DEFAULT_CIPHER_SUITES
        .iter()
        .filter_map(|suite| Some((iana_name(*suite)?, suite.tls13().is_some())))
}

/// rustls spells TLS 1.3 suites `TLS13_...`; IANA (and OpenSSL, nginx) `TLS_...`.
pub fn iana_name(suite: SupportedCipherSuite) -> Option<&'static str> {
    let name = suite.suite().as_str()?;
    Some(match suite.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        _ => name,
    })
}
