//! TLS-ALPN-01 challenge certificates (RFC 8737), by host name.
//!
//! Written by the ACME layer's challenge store (a pending tls-alpn-01 answer of this node or one
//! another node shared); read by the acceptor for handshakes that offer ALPN `acme-tls/1`, and
//! only for those: [`crate::tls::CertStore::lookup`] never sees these certificates.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use futures_util::future::BoxFuture;
use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::pki::crypto_provider;
use crate::tls::TlsError;

/// The ALPN protocol a CA offers when it validates tls-alpn-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Host → its challenge certificate, swapped as a whole map: handshakes never wait.
#[derive(Clone, Debug, Default)]
pub struct ChallengeCerts {
    map: Arc<ArcSwap<imbl::HashMap<String, Arc<CertifiedKey>>>>,
    /// Asked on a miss, in a cluster; the lock is taken on that path only.
    missing: Arc<Mutex<Option<Arc<dyn MissingAnswers>>>>,
}

/// Where certificates for names no site lists come from (the ACME layer's on-demand service):
/// asked by the acceptor before it picks a certificate.
pub trait OnDemandCerts: Send + Sync + fmt::Debug {
    /// Whether an on-demand site covers `name`; no I/O.
    fn covers(&self, name: &str) -> bool;
    /// How long a handshake may wait for [`OnDemandCerts::obtain`].
    fn timeout(&self) -> Duration;
    /// Returns once `name` has a certificate in the store, or when it will get none now.
    fn obtain<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;
}

/// Where a tls-alpn-01 answer this node was not given yet can be fetched: in a cluster, the
/// CA's validation may reach this node before the answer another node shared does.
pub trait MissingAnswers: Send + Sync + fmt::Debug {
    /// Fetches the answer for `host` and, when found, has its certificate inserted.
    fn fetch<'a>(&'a self, host: &'a str) -> BoxFuture<'a, ()>;
}

impl ChallengeCerts {
    /// Serves, for handshakes to `host` offering `acme-tls/1`, a self-signed certificate for
    /// `host` whose critical `id-pe-acmeIdentifier` extension holds the SHA-256 digest of
    /// `key_authorization` (RFC 8737 §3), until [`ChallengeCerts::remove`].
    ///
    /// # Errors
    /// When rcgen refuses the name or the key cannot be loaded.
    pub fn insert(&self, host: &str, key_authorization: &str) -> Result<(), TlsError> {
        let host = host.to_ascii_lowercase();
        let cert = Arc::new(challenge_cert(&host, key_authorization)?);
        self.map.rcu(|map| map.update(host.clone(), cert.clone()));
        Ok(())
    }

    /// Stops serving `host`'s challenge certificate.
    pub fn remove(&self, host: &str) {
        let host = host.to_ascii_lowercase();
        self.map.rcu(|map| map.without(&host));
    }

    /// The challenge certificate for `sni`, if one is pending. No I/O, no lock.
    pub fn get(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            return map.get(&sni.to_ascii_lowercase()).cloned();
        }
        map.get(sni).cloned()
    }

    /// [`ChallengeCerts::get`], or on a miss what [`ChallengeCerts::set_missing`]'s source
    /// fetches.
    pub async fn find(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(found) = self.get(sni) {
            return Some(found);
        }
        let source = self
            .missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        source.fetch(sni).await;
        self.get(sni)
    }

    /// Makes misses ask `source` (in a cluster, the shared store).
    pub fn set_missing(&self, source: Arc<dyn MissingAnswers>) {
        *self.missing.lock().unwrap_or_else(PoisonError::into_inner) = Some(source);
    }
}

impl ResolvesServerCert for ChallengeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // The acceptor checked there is one; `None` only means it was removed meanwhile.
        self.get(hello.server_name()?)
    }
}

fn challenge_cert(host: &str, key_authorization: &str) -> Result<CertifiedKey, TlsError> {
    let issue = |source| TlsError::Issue {
        site: host.to_owned(),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(host.try_into().map_err(issue)?)];
    let sha256 = digest::digest(&digest::SHA256, key_authorization.as_bytes());
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(sha256.as_ref())];
    let cert = params.self_signed(&key).map_err(issue)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = crypto_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| TlsError::ChallengeKey(error.to_string()))?;
    // Not `from_der`: webpki refuses the critical extension it does not know, which is the
    // point of it (no client but the CA's validator may accept this certificate).
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    use super::*;

    #[test]
    fn the_certificate_names_the_host_and_carries_the_digest_critically() {
        let certs = ChallengeCerts::default();
        certs.insert("A.test", "token.thumbprint").expect("issued");
        let cert = certs.get("A.TEST").expect("served for any case");
        let (_, parsed) = X509Certificate::from_der(&cert.cert[0]).expect("parses");
        let acme = parsed
            .extensions()
            .iter()
            .find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("id-pe-acmeIdentifier");
        assert!(acme.critical);
        let digest = digest::digest(&digest::SHA256, b"token.thumbprint");
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&acme.value[..2], [0x04, 0x20]);
        assert_eq!(&acme.value[2..], digest.as_ref());
        let san = parsed
            .subject_alternative_name()
            .expect("valid")
            .expect("present");
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"a.test\")]"
        );
        assert!(certs.get("b.test").is_none());
        certs.remove("a.test");
        assert!(certs.get("a.test").is_none());
    }
}
