//! The embedded storage backend: files under `storage`, and in a cluster the node's local mirror.
//!
//! Layout (documented in `certs/README.md`): `certs/<site>/cert.pem` (chain, 0644),
//! `certs/<site>/key.pem` (0600), `certs/<site>/meta.json` (0644),
//! `acme/<ca-id>/account.json` (0600), directories 0700. Every write goes through
//! `tls::disk::write_atomic`, so a reader sees the old file or the new one. Local files are
//! fast and never wait on a network, so the methods are synchronous underneath and start-up
//! reads them directly ([`DiskStorage::load_cert`]) before any task runs.

use std::io;
use std::path::{Path, PathBuf};

use futures_util::future::{self, BoxFuture};
use http::Uri;
use rustls::crypto::CryptoProvider;

use super::{Item, Meta, SiteLock, Storage, StoredCert, check_pair, parse_meta};
use crate::acme::{AcmeError, ca_id};
use crate::config::Site;
use crate::tls::disk;

/// Chain file name.
const CERT_FILE: &str = "cert.pem";
/// Key file name.
const KEY_FILE: &str = "key.pem";
/// Scheduling state file name.
const META_FILE: &str = "meta.json";
/// The account file name inside the CA's directory.
const ACCOUNT_FILE: &str = "account.json";

/// The files under `storage`.
#[derive(Clone, Debug)]
pub struct DiskStorage {
    root: PathBuf,
}

impl DiskStorage {
    /// The tree under `storage`.
    pub fn new(storage: &Path) -> Self {
        Self {
            root: storage.to_owned(),
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
        self.root.join("certs").join(safe)
    }

    /// The file that holds `item`.
    pub fn path(&self, item: Item<'_>) -> PathBuf {
        match item {
            Item::Chain(site) => self.site_dir(site).join(CERT_FILE),
            Item::Key(site) => self.site_dir(site).join(KEY_FILE),
            Item::Meta(site) => self.site_dir(site).join(META_FILE),
            Item::Account(ca) => self.root.join("acme").join(ca).join(ACCOUNT_FILE),
        }
    }

    /// The stored certificate of `site`, read now.
    ///
    /// # Errors
    /// As [`check_pair`]; `Read` for I/O errors.
    pub fn load_cert(
        &self,
        site: &Site,
        provider: &CryptoProvider,
    ) -> Result<Option<StoredCert>, AcmeError> {
        let chain = self.read(Item::Chain(&site.name))?;
        let key = self.read(Item::Key(&site.name))?;
        check_pair(site, chain, key, provider, |item| self.place(item))
    }

    /// The scheduling state of `site`, read now; default when absent.
    ///
    /// # Errors
    /// `Meta` when the file does not parse, `Read` for I/O errors.
    pub fn load_meta(&self, site: &str) -> Result<Meta, AcmeError> {
        let bytes = self.read(Item::Meta(site))?;
        parse_meta(bytes.as_deref(), || self.place(Item::Meta(site)))
    }

    /// Keeps a copy of a pair read from a shared store, so a restart without the store still
    /// serves it. Key first, as in [`Storage::save_certificate`].
    ///
    /// # Errors
    /// `Persist` naming the file or directory that could not be written.
    pub fn mirror_pair(&self, site: &str, chain: &[u8], key: &[u8]) -> Result<(), AcmeError> {
        self.write(Item::Key(site), key)
            .and_then(|()| self.write(Item::Chain(site), chain))
    }

    /// Keeps a copy of a site's state written to a shared store, for `rampart certs` and a
    /// restart without the store.
    ///
    /// # Errors
    /// `Persist` naming the file or directory that could not be written.
    pub fn mirror_meta(&self, site: &str, meta: &Meta) -> Result<(), AcmeError> {
        self.write(Item::Meta(site), &super::meta_json(meta))
    }

    fn read(&self, item: Item<'_>) -> Result<Option<Vec<u8>>, AcmeError> {
        let path = self.path(item);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AcmeError::Read { path, source }),
        }
    }

    fn write(&self, item: Item<'_>, bytes: &[u8]) -> Result<(), AcmeError> {
        let path = self.path(item);
        let dir = path.parent().expect("every item lives in a directory");
        disk::ensure_private_dir(dir).map_err(|source| AcmeError::Persist {
            path: dir.to_owned(),
            source,
        })?;
        let mode = if item.is_secret() {
            disk::SECRET
        } else {
            disk::PUBLIC
        };
        disk::write_atomic(&path, bytes, mode).map_err(|source| AcmeError::Persist { path, source })
    }

    fn set_aside(&self, item: Item<'_>) -> Result<(), AcmeError> {
        let path = self.path(item);
        let mut aside = path.clone().into_os_string();
        aside.push(".corrupt");
        match std::fs::rename(&path, &aside) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(AcmeError::Persist {
                path: aside.into(),
                source: error,
            }),
            _ => Ok(()),
        }
    }
}

impl Storage for DiskStorage {
    fn place(&self, item: Item<'_>) -> String {
        self.path(item).display().to_string()
    }

    fn load<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<Option<Vec<u8>>, AcmeError>> {
        Box::pin(future::ready(self.read(item)))
    }

    fn save<'a>(
        &'a self,
        item: Item<'a>,
        bytes: &'a [u8],
        _: Option<&'a SiteLock>,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(future::ready(self.write(item, bytes)))
    }

    fn save_certificate<'a>(
        &'a self,
        site: &'a str,
        chain: &'a [u8],
        key: &'a [u8],
        meta: &'a [u8],
        _: &'a SiteLock,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        // Key first: a crash in between leaves a mismatched pair, which loading rejects, rather
        // than a new certificate served with a stale key.
        let written = self
            .mirror_pair(site, chain, key)
            .and_then(|()| self.write(Item::Meta(site), meta));
        Box::pin(future::ready(written))
    }

    fn discard<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(future::ready(self.set_aside(item)))
    }
}

/// `storage/acme/<ca-id>/account.json` for the directory URL.
pub fn account_path(storage: &Path, directory: &Uri) -> PathBuf {
    DiskStorage::new(storage).path(Item::Account(&ca_id(directory)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use std::future::Future;

    use futures_util::FutureExt;
    use rustls::crypto::CryptoProvider;

    use super::*;
    use crate::acme::storage::{LastError, Renewal, RenewalReason};
    use crate::config::{Challenge, SiteTls};
    use crate::pki::HostName;

    fn site(name: &str) -> Site {
        Site {
            name: name.into(),
            hosts: vec![HostName::parse(name).expect("literal host")],
            tls: SiteTls::Acme,
            challenges: vec![Challenge::Http01],
            dns: None,
            default: false,
            routes: Vec::new(),
            policy: Default::default(),
        }
    }

    /// Disk futures are ready at once.
    fn ready<T>(future: impl Future<Output = T>) -> T {
        future.now_or_never().expect("disk storage never waits")
    }

    fn dyn_storage(files: &DiskStorage) -> &dyn Storage {
        files
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
        let files = DiskStorage::new(dir.path());
        let (chain, key) = self_signed("a.test");
        ready(files.save_certificate(
            "a.test",
            chain.as_bytes(),
            key.as_bytes(),
            b"{}",
            &SiteLock::local(),
        ))
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
        let files = DiskStorage::new(dir.path());
        let (chain, key) = self_signed("a.test");
        let truncated = &chain.as_bytes()[..chain.len() / 2];
        ready(files.save_certificate(
            "a.test",
            truncated,
            key.as_bytes(),
            b"{}",
            &SiteLock::local(),
        ))
        .expect("save");
        assert!(matches!(
            files.load_cert(&site("a.test"), &provider()),
            Err(AcmeError::StoredCert { .. })
        ));

        let (_, other_key) = self_signed("a.test");
        ready(files.save_certificate(
            "a.test",
            chain.as_bytes(),
            other_key.as_bytes(),
            b"{}",
            &SiteLock::local(),
        ))
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
        let files = DiskStorage::new(dir.path());
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
        ready(dyn_storage(&files).save_meta("a.test", &meta, &SiteLock::local()))
            .expect("save meta");
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
        let files = DiskStorage::new(Path::new("/s"));
        assert_eq!(files.site_dir("a.test"), Path::new("/s/certs/a.test"));
        assert_eq!(files.site_dir("../x"), Path::new("/s/certs/.._x"));
        assert_eq!(files.site_dir(".."), Path::new("/s/certs/_.."));
    }
}
