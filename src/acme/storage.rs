//! Certificates, keys and scheduling state of ACME sites on disk.
//!
//! Layout under `storage` (documented in `certs/README.md`):
//! `certs/<site>/cert.pem` (chain, 0644), `certs/<site>/key.pem` (0600), `certs/<site>/meta.json`
//! (0644), directories 0700. Every write goes through `tls::disk::write_atomic`. Loading checks
//! everything the TLS layer would: a truncated, unparsable or mismatched pair is reported and
//! treated as absent, never served. Written by the scheduler's issuance tasks; read at start-up
//! and by `rampart certs` (which may run while Rampart does: readers only ever see whole files).

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::acme::{AcmeError, HostProblem};
use crate::config::Site;
use crate::pki::{PemError, certified_key_from_pem};
use crate::tls::{LeafFacts, disk};

/// Chain file name.
const CERT_FILE: &str = "cert.pem";
/// Key file name.
const KEY_FILE: &str = "key.pem";
/// Scheduling state file name.
const META_FILE: &str = "meta.json";

/// The `storage/certs` tree.
#[derive(Clone, Debug)]
pub struct CertFiles {
    root: PathBuf,
}

/// A stored certificate that passed every check.
#[derive(Debug)]
pub struct StoredCert {
    /// Ready to publish.
    pub key: CertifiedKey,
    /// Names, serial and dates of the leaf.
    pub facts: LeafFacts,
}

/// Scheduling state of one site, persisted as `meta.json`.
///
/// Times are RFC 3339 strings so operators and `rampart certs` can read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// When the last order was started.
    #[serde(with = "rfc3339")]
    pub last_attempt: Option<SystemTime>,
    /// Earliest time the next order may start: set before each attempt and after each failure
    /// (backoff, rate limit), cleared on success. Honoured across restarts.
    #[serde(with = "rfc3339")]
    pub next_attempt: Option<SystemTime>,
    /// When the current certificate was obtained.
    #[serde(with = "rfc3339")]
    pub last_success: Option<SystemTime>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failure, kept until a success.
    pub last_error: Option<LastError>,
    /// When the current certificate is due for renewal, and why.
    pub renewal: Option<Renewal>,
    /// The CA's renewal information (RFC 9773) for the current certificate.
    pub ari: Option<AriState>,
}

/// A failure as recorded for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// When it happened.
    #[serde(with = "rfc3339::required")]
    pub at: SystemTime,
    /// The whole error chain on one line.
    pub message: String,
    /// The CA's problem type, when the CA answered with one.
    pub problem_type: Option<String>,
    /// The CA's verdict per name, for an invalid order.
    #[serde(default)]
    pub hosts: Vec<HostProblem>,
}

/// When renewal is due and the rule that chose the time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The due time.
    #[serde(with = "rfc3339::required")]
    pub at: SystemTime,
    /// `ari` or `lifetime`.
    pub reason: RenewalReason,
}

/// Which rule set the renewal time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalReason {
    /// A random time inside the CA's suggested window (RFC 9773).
    Ari,
    /// 2/3 of the lifetime (1/2 for lifetimes of 10 days or less).
    Lifetime,
}

impl RenewalReason {
    /// `ari` or `lifetime`, as in `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ari => "ari: a random time in the CA's suggested window",
            Self::Lifetime => "lifetime: 2/3 of it, or 1/2 for 10 days or less",
        }
    }
}

/// The last renewal information fetched for the current certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriState {
    /// Serial (hex) of the certificate this window belongs to.
    pub serial: String,
    /// Suggested window start.
    #[serde(with = "rfc3339::required")]
    pub window_start: SystemTime,
    /// Suggested window end.
    #[serde(with = "rfc3339::required")]
    pub window_end: SystemTime,
    /// The random time chosen inside the window; kept while the window is unchanged so that a
    /// restart does not roll again (re-rolling would bias renewals early).
    #[serde(with = "rfc3339::required")]
    pub chosen: SystemTime,
    /// When to fetch again (the CA's Retry-After).
    #[serde(with = "rfc3339::required")]
    pub next_check: SystemTime,
    /// The CA's explanation page, if any.
    pub explanation_url: Option<String>,
}

impl CertFiles {
    /// The tree under `storage/certs`.
    pub fn new(storage: &Path) -> Self {
        Self {
            root: storage.join("certs"),
        }
    }

    /// `storage/certs/<site>`, the site name made file-name safe.
    pub fn site_dir(&self, site: &str) -> PathBuf {
        let safe: String = site
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let safe = if safe.chars().all(|c| c == '.') {
            format!("_{safe}")
        } else {
            safe
        };
        self.root.join(safe)
    }

    /// The stored certificate of `site`, `Ok(None)` when there is none.
    ///
    /// # Errors
    /// `StoredCert` for a truncated, unparsable or mismatched pair, `StoredIncomplete` when one
    /// file is missing, `Read` for I/O errors. Callers treat every error as "no certificate".
    pub fn load_cert(
        &self,
        site: &Site,
        provider: &CryptoProvider,
    ) -> Result<Option<StoredCert>, AcmeError> {
        let dir = self.site_dir(&site.name);
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let (chain, key) = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(AcmeError::StoredIncomplete {
                    site: site.name.clone(),
                    missing: key_path,
                });
            }
            (None, Some(_)) => {
                return Err(AcmeError::StoredIncomplete {
                    site: site.name.clone(),
                    missing: cert_path,
                });
            }
            (Some(chain), Some(key)) => (chain, key),
        };
        let stored_error = |source| AcmeError::StoredCert {
            path: cert_path.clone(),
            source,
        };
        let key =
            certified_key_from_pem(provider, &chain, &key).map_err(|e| stored_error(e.into()))?;
        key.keys_match()
            .map_err(|e| stored_error(PemError::KeyMismatch(e).into()))?;
        let leaf = key
            .end_entity_cert()
            .map_err(|e| stored_error(PemError::KeyMismatch(e).into()))?;
        let facts = LeafFacts::parse(leaf).map_err(stored_error)?;
        Ok(Some(StoredCert { key, facts }))
    }

    /// Stores a chain and its key: key first, so a crash in between leaves a mismatched pair,
    /// which [`CertFiles::load_cert`] rejects, rather than a certificate with a stale key served.
    ///
    /// # Errors
    /// `Persist` naming the file or directory that could not be written.
    pub fn save_cert(&self, site: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), AcmeError> {
        let dir = self.site_dir(site);
        ensure_dir(&dir)?;
        write(&dir.join(KEY_FILE), key_pem, disk::SECRET)?;
        write(&dir.join(CERT_FILE), chain_pem, disk::PUBLIC)
    }

    /// The scheduling state of `site`; default when absent.
    ///
    /// # Errors
    /// `Meta` when the file does not parse, `Read` for I/O errors; callers log and use the default.
    pub fn load_meta(&self, site: &str) -> Result<Meta, AcmeError> {
        let path = self.site_dir(site).join(META_FILE);
        match read_optional(&path)? {
            None => Ok(Meta::default()),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| AcmeError::Meta { path, source })
            }
        }
    }

    /// Stores the scheduling state of `site`.
    ///
    /// # Errors
    /// `Persist` naming the file or directory that could not be written.
    pub fn save_meta(&self, site: &str, meta: &Meta) -> Result<(), AcmeError> {
        let dir = self.site_dir(site);
        ensure_dir(&dir)?;
        let json = serde_json::to_vec_pretty(meta).expect("meta is plain data and serializes");
        write(&dir.join(META_FILE), &json, disk::PUBLIC)
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AcmeError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn ensure_dir(dir: &Path) -> Result<(), AcmeError> {
    disk::ensure_private_dir(dir).map_err(|source| AcmeError::Persist {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AcmeError> {
    disk::write_atomic(path, bytes, mode).map_err(|source| AcmeError::Persist {
        path: path.to_owned(),
        source,
    })
}

/// `Option<SystemTime>` as an RFC 3339 string (seconds precision) or null.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => required::serialize(time, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_rfc3339_weak(&text).map_err(de::Error::custom))
            .transpose()
    }

    /// A required `SystemTime` as an RFC 3339 string.
    pub(crate) mod required {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer, de};

        pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_rfc3339_seconds(*time))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            let text = String::deserialize(d)?;
            humantime::parse_rfc3339_weak(&text).map_err(de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::SiteTls;
    use crate::pki::HostName;

    fn site(name: &str) -> Site {
        Site {
            name: name.into(),
            hosts: vec![HostName::parse(name).expect("literal host")],
            tls: SiteTls::Acme,
            default: false,
            routes: Vec::new(),
            policy: Default::default(),
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key generation");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("literal name")
            .self_signed(&key)
            .expect("self-signed certificate");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn stored_pair_round_trips_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles::new(dir.path());
        let (chain, key) = self_signed("a.test");
        files
            .save_cert("a.test", chain.as_bytes(), key.as_bytes())
            .expect("save");
        let stored = files
            .load_cert(&site("a.test"), &provider())
            .expect("load")
            .expect("present");
        assert_eq!(stored.facts.names, vec!["a.test".to_owned()]);
        let mode =
            |p: PathBuf| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(files.site_dir("a.test").join(KEY_FILE)), 0o600);
        assert_eq!(mode(files.site_dir("a.test")), 0o700);
    }

    #[test]
    fn truncated_or_mismatched_files_are_reported_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles::new(dir.path());
        let (chain, key) = self_signed("a.test");
        let truncated = &chain.as_bytes()[..chain.len() / 2];
        files
            .save_cert("a.test", truncated, key.as_bytes())
            .expect("save");
        assert!(matches!(
            files.load_cert(&site("a.test"), &provider()),
            Err(AcmeError::StoredCert { .. })
        ));

        let (_, other_key) = self_signed("a.test");
        files
            .save_cert("a.test", chain.as_bytes(), other_key.as_bytes())
            .expect("save");
        assert!(matches!(
            files.load_cert(&site("a.test"), &provider()),
            Err(AcmeError::StoredCert { .. })
        ));

        std::fs::remove_file(files.site_dir("a.test").join(KEY_FILE)).expect("remove key");
        assert!(matches!(
            files.load_cert(&site("a.test"), &provider()),
            Err(AcmeError::StoredIncomplete { .. })
        ));
        assert!(
            files
                .load_cert(&site("b.test"), &provider())
                .expect("absent is fine")
                .is_none()
        );
    }

    #[test]
    fn meta_round_trips_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles::new(dir.path());
        assert_eq!(
            files.load_meta("a.test").expect("absent meta"),
            Meta::default()
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let meta = Meta {
            last_attempt: Some(at),
            next_attempt: Some(at + Duration::from_secs(60)),
            consecutive_failures: 2,
            last_error: Some(LastError {
                at,
                message: "boom".into(),
                problem_type: None,
                hosts: Vec::new(),
            }),
            renewal: Some(Renewal {
                at,
                reason: RenewalReason::Lifetime,
            }),
            ..Meta::default()
        };
        files.save_meta("a.test", &meta).expect("save meta");
        assert_eq!(files.load_meta("a.test").expect("load meta"), meta);
        std::fs::write(
            files.site_dir("a.test").join(META_FILE),
            b"{\"consecutive_fail",
        )
        .expect("write");
        assert!(matches!(
            files.load_meta("a.test"),
            Err(AcmeError::Meta { .. })
        ));
    }

    #[test]
    fn site_directory_names_cannot_escape_the_tree() {
        let files = CertFiles::new(Path::new("/s"));
        assert_eq!(files.site_dir("a.test"), Path::new("/s/certs/a.test"));
        assert_eq!(files.site_dir("../x"), Path::new("/s/certs/.._x"));
        assert_eq!(files.site_dir(".."), Path::new("/s/certs/_.."));
    }
}
