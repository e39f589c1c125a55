//! The local CA behind `tls: internal` sites, like Caddy's internal issuer.
//!
//! Created on first start under `storage/internal-ca/` (key 0600, directory 0700) and reused
//! after. Leaves are short-lived, kept in memory only, and re-issued by [`InternalCa::run`] on
//! the server's task set when two thirds of their lifetime have passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Site;
use crate::pki::PemError;
use crate::tls::{CertStore, TlsError, disk};

/// Lifetime of the root: long, because operators copy it into trust stores by hand.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a leaf: short, so a leaked leaf key is worth little.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Leaves start a little in the past so a client with a slow clock accepts them.
const BACKDATE: Duration = Duration::from_secs(300);

/// The local certificate authority.
pub struct InternalCa {
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer holds the CA private key: never print it.
        f.debug_struct("InternalCa").finish_non_exhaustive()
    }
}

impl InternalCa {
    /// Where the CA certificate is stored: the file operators hand to clients as a trust anchor.
    pub fn root_path(storage: &Path) -> PathBuf {
        storage.join("internal-ca").join("root.pem")
    }

    /// Loads the CA from `storage/internal-ca/`, creating it on first use.
    ///
    /// # Errors
    /// `Io` when the files cannot be read or written, `Issue` when they do not parse.
    pub fn load_or_create(storage: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let dir = storage.join("internal-ca");
        let (cert_path, key_path) = (Self::root_path(storage), dir.join("root.key"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        let issue = |source| TlsError::Issue {
            site: "internal CA".into(),
            source,
        };
        if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(issue)?;
            let root_der =
                CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| {
                    PemError::Pem {
                        what: "internal CA certificate",
                        source,
                    }
                })?;
            let issuer = Issuer::from_ca_cert_der(&root_der, key).map_err(issue)?;
            return Ok(Self {
                root_der,
                issuer,
                provider,
            });
        }
        disk::ensure_private_dir(&dir).map_err(io(&dir))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Rampart Internal Root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        params.serial_number = Some(random_serial(&provider));
        let root = params.self_signed(&key).map_err(issue)?;
        // Key first: a root.pem without its key would be unusable after a crash.
        disk::write_atomic(&key_path, key.serialize_pem().as_bytes(), disk::SECRET)
            .map_err(io(&key_path))?;
        disk::write_atomic(&cert_path, root.pem().as_bytes(), disk::PUBLIC)
            .map_err(io(&cert_path))?;
        info!(path = %cert_path.display(), "created the internal CA");
        let root_der = root.der().clone();
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_der,
            provider,
        })
    }

    /// The CA certificate, for tests and clients.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Issues a fresh leaf for every host of `site`, valid from `now`.
    ///
    /// # Errors
    /// `Issue` when rcgen refuses the names or key.
    pub fn issue(&self, site: &Site, now: SystemTime) -> Result<CertifiedKey, TlsError> {
        let issue = |source| TlsError::Issue {
            site: site.name.clone(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&site.name);
        params.subject_alt_names = site
            .hosts
            .iter()
            .map(|h| h.as_str().try_into().map(SanType::DnsName))
            .collect::<Result<_, _>>()
            .map_err(issue)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_LIFETIME).into();
        params.serial_number = Some(random_serial(&self.provider));
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).map_err(issue)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(vec![leaf.der().clone()], key_der, &self.provider)
            .map_err(|e| TlsError::from(PemError::KeyMismatch(e)))
    }

    /// Keeps the leaves of `sites` fresh until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, store: CertStore, sites: Vec<Site>, stop: CancellationToken) {
        let every = LEAF_LIFETIME * 2 / 3;
        let retry = Duration::from_secs(60);
        let mut wait = every;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = every;
            for site in &sites {
                let now = SystemTime::now();
                match self
                    .issue(site, now)
                    .and_then(|cert| store.publish(site, cert, now))
                {
                    Ok(published) => {
                        info!(site = %site.name, serial = %published.serial, "renewed internal certificate")
                    }
                    Err(err) => {
                        error!(site = %site.name, error = %crate::observe::Chain(&err), "cannot renew internal certificate");
                        wait = retry;
                    }
                }
            }
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Rampart");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// 16 random bytes, positive: RFC 5280 §4.1.2.2 wants unique serials; randomness gives that
/// without keeping a counter on disk.
fn random_serial(provider: &CryptoProvider) -> SerialNumber {
    let mut bytes = [0u8; 16];
    if provider.secure_random.fill(&mut bytes).is_err() {
        // The system RNG failing would already have failed key generation; time is unique enough.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.as_nanos().to_be_bytes());
    }
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
