//! The ACME account: loaded from storage, registered once, re-registered when the CA forgets it.
//!
//! Reads and writes the storage's `Item::Account(<ca-id>)` (instant-acme's credentials JSON; on
//! disk `storage/acme/<ca-id>/account.json`, mode 0600), where `<ca-id>` comes from the directory
//! URL so that staging and production accounts never mix. Used by the issuance tasks of the scheduler; one
//! [`AccountSlot`] is shared by all of them and registers at most one account at a time.

use std::sync::Arc;

use http::Uri;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, Key, NewAccount};
use rustls::pki_types::PrivateKeyDer;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::acme::http::AcmeHttp;
use crate::acme::retry::StepRetry;
use crate::acme::{AcmeError, Item, Storage};
use crate::config::{Acme, AcmeCa};

/// Lazily loaded account shared by every issuance for one CA.
pub struct AccountSlot {
    directory: String,
    ca: String,
    storage: Arc<dyn Storage>,
    contact: Option<String>,
    eab: Option<ExternalAccountKey>,
    http: AcmeHttp,
    current: Mutex<Option<Account>>,
}

impl AccountSlot {
    /// Prepares the slot for `acme.directory` (the first CA); no I/O towards the CA happens
    /// until [`AccountSlot::account`].
    ///
    /// # Errors
    /// `CaBundle`/`CaBundleEmpty` when `acme.ca_bundle` is unusable.
    pub fn new(acme: &Acme, storage: Arc<dyn Storage>) -> Result<Self, AcmeError> {
        let first = acme.cas().swap_remove(0);
        Self::for_ca(&first, acme.email.as_deref(), storage)
    }

    /// Prepares the slot for one CA of `acme.directories`.
    ///
    /// # Errors
    /// `CaBundle`/`CaBundleEmpty` when its `ca_bundle` is unusable.
    pub fn for_ca(
        ca: &AcmeCa,
        email: Option<&str>,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, AcmeError> {
        Ok(Self {
            directory: ca.directory.to_string(),
            ca: ca_id(&ca.directory),
            storage,
            contact: email.map(|email| format!("mailto:{email}")),
            eab: ca
                .eab
                .as_ref()
                .map(|eab| ExternalAccountKey::new(eab.key_id.clone(), &eab.hmac_key)),
            http: AcmeHttp::new(ca.ca_bundle.as_deref())?,
            current: Mutex::new(None),
        })
    }

    /// Where the credentials live.
    pub fn place(&self) -> String {
        self.storage.place(self.item())
    }

    fn item(&self) -> Item<'_> {
        Item::Account(&self.ca)
    }

    /// The account, restored from storage or registered now (and then stored).
    ///
    /// # Errors
    /// `Directory` when the CA cannot be reached, `Register` when it refuses the account,
    /// `Persist` when the new credentials cannot be stored (the account is not used then, since
    /// a lost single-use EAB could not be replayed).
    pub async fn account(&self) -> Result<Account, AcmeError> {
        let mut current = self.current.lock().await;
        if let Some(account) = &*current {
            return Ok(account.clone());
        }
        let account = match self.read_credentials().await? {
            Some(credentials) => self.restore(credentials).await?,
            None => self.register().await?,
        };
        *current = Some(account.clone());
        Ok(account)
    }

    /// Registers again with the stored key after the CA answered `accountDoesNotExist` for
    /// `stale` (RFC 8555 §7.3.1: a newAccount with a known key returns that account, an unknown
    /// key gets a new one, so the key, and thus the thumbprint, stays the same).
    ///
    /// # Errors
    /// As [`AccountSlot::account`].
    pub async fn reregister(&self, stale: &Account) -> Result<Account, AcmeError> {
        let mut current = self.current.lock().await;
        if let Some(account) = current.as_ref().filter(|a| a.id() != stale.id()) {
            return Ok(account.clone()); // another task already did it
        }
        warn!(
            account = stale.id(),
            "CA no longer knows the ACME account; registering the same key again"
        );
        let account = match self.read_credentials().await? {
            Some(credentials) => {
                let pkcs8 = credentials.private_key().clone_key();
                let register_error = |source| AcmeError::Register {
                    url: self.directory.clone(),
                    source,
                };
                let mut retry = StepRetry::new();
                let (account, credentials) = loop {
                    let key = Key::from_pkcs8_der(pkcs8.clone_key()).map_err(register_error)?;
                    let builder = Account::builder_with_http(Box::new(self.http.clone()));
                    let pair = (key, PrivateKeyDer::Pkcs8(pkcs8.clone_key()));
                    match builder.create_from_key(pair, self.directory.clone()).await {
                        Ok(done) => break done,
                        Err(error) => retry.again(error).await.map_err(register_error)?,
                    }
                };
                if let Some(contact) = &self.contact {
                    // create_from_key registers without contacts; add ours back (best effort:
                    // the CA only uses it for expiry notices).
                    if let Err(error) = account.update_contacts(&[contact.as_str()]).await {
                        warn!(%error, "cannot restore the ACME account contact");
                    }
                }
                self.write_credentials(&credentials).await?;
                account
            }
            None => self.register().await?,
        };
        info!(account = account.id(), "ACME account registered again");
        *current = Some(account.clone());
        Ok(account)
    }

    async fn restore(&self, credentials: AccountCredentials) -> Result<Account, AcmeError> {
        // from_credentials fetches the directory: the first request to the CA, retried like any step.
        let json = serde_json::to_vec(&credentials).expect("credentials serialize to JSON");
        let mut retry = StepRetry::new();
        loop {
            let credentials: AccountCredentials =
                serde_json::from_slice(&json).expect("credentials round-trip through JSON");
            let builder = Account::builder_with_http(Box::new(self.http.clone()));
            match builder.from_credentials(credentials).await {
                Ok(account) => {
                    info!(account = account.id(), place = %self.place(), "ACME account loaded");
                    return Ok(account);
                }
                Err(error) => retry
                    .again(error)
                    .await
                    .map_err(|source| AcmeError::Directory {
                        url: self.directory.clone(),
                        source,
                    })?,
            }
        }
    }

    async fn register(&self) -> Result<Account, AcmeError> {
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let mut retry = StepRetry::new();
        let (account, credentials) = loop {
            let builder = Account::builder_with_http(Box::new(self.http.clone()));
            match builder
                .create(&new_account, self.directory.clone(), self.eab.as_ref())
                .await
            {
                Ok(created) => break created,
                Err(error) => retry
                    .again(error)
                    .await
                    .map_err(|source| AcmeError::Register {
                        url: self.directory.clone(),
                        source,
                    })?,
            }
        };
        self.write_credentials(&credentials).await?;
        info!(account = account.id(), place = %self.place(), "ACME account registered");
        Ok(account)
    }

    /// The stored credentials; unparsable ones are reported and set aside.
    async fn read_credentials(&self) -> Result<Option<AccountCredentials>, AcmeError> {
        let Some(bytes) = self.storage.load(self.item()).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(credentials) => Ok(Some(credentials)),
            Err(source) => {
                let error = AcmeError::AccountFile {
                    place: self.place(),
                    source,
                };
                warn!(error = %crate::observe::Chain(&error), "setting the stored account aside; registering a new ACME account");
                self.storage.discard(self.item()).await?;
                Ok(None)
            }
        }
    }

    async fn write_credentials(&self, credentials: &AccountCredentials) -> Result<(), AcmeError> {
        let json = serde_json::to_vec_pretty(credentials).expect("credentials serialize to JSON");
        self.storage.save(self.item(), &json, None).await
    }
}

/// A file-name-safe identifier of the CA: host, port and path of the directory URL, with
/// everything outside `[a-z0-9.-]` turned into `_` (`acme-v02.api.letsencrypt.org_directory`).
pub fn ca_id(directory: &Uri) -> String {
    let mut raw = String::new();
    if let Some(authority) = directory.authority() {
        raw.push_str(authority.host());
        if let Some(port) = authority.port_u16() {
            raw.push('_');
            raw.push_str(&port.to_string());
        }
    }
    raw.push_str(directory.path());
    let id: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let id = id.trim_matches('_').to_owned();
    // `.` and `..` alone would escape the directory.
    if id.is_empty() || id.chars().all(|c| c == '.') {
        "ca".to_owned()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_id_keeps_host_port_and_path_and_nothing_unsafe() {
        let uri = |s: &str| s.parse::<Uri>().expect("literal URI");
        assert_eq!(
            ca_id(&uri("https://acme-v02.api.letsencrypt.org/directory")),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            ca_id(&uri("https://127.0.0.1:14000/dir")),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(
            ca_id(&uri("https://[::1]:14000/a/../b?x")),
            "1__14000_a_.._b"
        );
        assert!(!ca_id(&uri("https://x/../../etc")).contains('/'));
    }
}
