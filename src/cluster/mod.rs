//! Several Rampart nodes sharing certificates, ACME locks and HTTP-01 answers through etcd.
//!
//! Built by the server from `cluster:` ([`Cluster::new`], no network I/O), it provides the ACME
//! scheduler's [`Storage`](crate::acme::Storage) ([`EtcdStorage`]: private keys sealed
//! ([`seal`]), writes fenced by the site's lock) and the `:80` listener's view of every node's
//! challenge answers ([`Cluster::watch_challenges`], a task the server owns). Everything lives
//! under `prefix`:
//!
//! - `certs/<site>/chain`, `certs/<site>/key` (sealed), `certs/<site>/meta`: one site's
//!   certificate and scheduling state, written only by the holder of its lock;
//! - `accounts/<ca-id>` (sealed): the ACME account, shared by every node;
//! - `locks/<site>/<lease>`: etcd's lock keys, one per node waiting or holding;
//! - `challenges/<token>`: HTTP-01 key authorizations (TLS-ALPN-01 ones under
//!   `tls-alpn-01:<host>`), on the orderer's lock lease, so they vanish with the lock.
//!
//! etcd being away is not an error at start: requests fail, are logged and retried, and the
//! node serves from its local mirror meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::acme::ChallengeStore;
use crate::config;
use crate::observe::{Chain, metrics};

mod challenges;
mod seal;
mod store;

pub use store::EtcdStorage;

/// Longest wait for one etcd request: past it the store counts as unreachable for this attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for a TCP connection to etcd.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A pause before watching again after the watch broke (etcd restarted, network away).
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// Why the cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A TLS file named by `cluster.etcd.tls` could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// etcd-client refused the endpoints or options.
    #[error("cannot set up the etcd client")]
    Client(#[source] etcd_client::Error),
}

/// This node's handle on the cluster: cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    node: String,
    lock_ttl: Duration,
}

impl Cluster {
    /// Prepares the client for `config`; connects lazily, so etcd may be away now.
    ///
    /// # Errors
    /// `Read` for an unreadable TLS file, `Client` when etcd-client refuses the options (with
    /// `cluster.etcd.user`, it authenticates now, which needs etcd).
    pub async fn new(config: &config::Cluster) -> Result<(Self, EtcdStorage), ClusterError> {
        let etcd = &config.etcd;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // HTTP/2 pings find a dead connection under a watch; etcd refuses pings more often
            // than every 5 s (too_many_pings), and idle pings are not needed.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false);
        if let Some((user, password)) = &etcd.user {
            options = options.with_user(user.clone(), password.expose().to_string());
        }
        if let Some(tls) = &etcd.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| ClusterError::Read {
                    path: path.to_owned(),
                    source,
                })
            };
            let mut tls_options =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                tls_options = tls_options.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls_options);
        }
        let client = Client::connect(&etcd.endpoints, Some(options))
            .await
            .map_err(ClusterError::Client)?;
        let cluster = Self {
            inner: Arc::new(Inner {
                client,
                prefix: etcd.prefix.clone(),
                node: config.node.clone(),
                lock_ttl: config.lock_ttl,
            }),
        };
        let storage = EtcdStorage::new(cluster.clone(), &config.encryption_key);
        Ok((cluster, storage))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Which node holds each site's issuance lock now, by site.
    ///
    /// # Errors
    /// `Store` when etcd does not answer.
    pub async fn lock_holders(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, crate::acme::AcmeError> {
        let prefix = self.key("holders/");
        let mut client = self.client();
        let found = request(
            || format!("list {prefix}"),
            client.get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        Ok(found
            .kvs()
            .iter()
            .filter_map(|kv| {
                let site = kv.key().strip_prefix(prefix.as_bytes())?;
                Some((
                    String::from_utf8(site.to_vec()).ok()?,
                    kv.value_str().ok()?.to_owned(),
                ))
            })
            .collect())
    }

    /// A client for one task: clones share the connection.
    fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// `prefix` + `rest`.
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.inner.prefix)
    }

    /// Keeps `challenges` answering for every node's orders until `stop`: a watched copy of the
    /// shared answers, and a direct read for a token not seen yet. A task the server owns.
    pub async fn watch_challenges(
        self,
        challenges: ChallengeStore,
        stop: tokio_util::sync::CancellationToken,
    ) {
        challenges.set_remote(Arc::new(challenges::Remote::new(self.clone())));
        tokio::select! {
            () = stop.cancelled() => {}
            () = challenges::follow(self, challenges) => {}
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// `result` of an etcd request bounded by [`REQUEST_TIMEOUT`], as an ACME error naming `action`.
/// Every answer or failure updates whether the store is reachable.
async fn request<T>(
    action: impl FnOnce() -> String,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, crate::acme::AcmeError> {
    let failed: Box<dyn std::error::Error + Send + Sync> =
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                reachable(true, "");
                return Ok(value);
            }
            Ok(Err(source)) => Box::new(source),
            Err(elapsed) => Box::new(elapsed),
        };
    let action = action();
    reachable(false, &action);
    Err(crate::acme::AcmeError::Store {
        action,
        source: failed,
    })
}

/// Whether the store answered last: 0 not asked yet, 1 yes, 2 no. Process-wide, like the
/// metric it drives.
static REACHABLE: AtomicU8 = AtomicU8::new(0);

/// Records a request's outcome; a change is logged once and shown by a metric.
fn reachable(up: bool, action: &str) {
    let now = if up { 1 } else { 2 };
    let before = REACHABLE.swap(now, Ordering::Relaxed);
    if before == now {
        return;
    }
    metrics::cluster_store_up(up);
    if !up {
        tracing::error!(
            action,
            "cluster store unreachable: serving the certificates this node has; renewals wait for it"
        );
    } else if before == 2 {
        tracing::info!("cluster store reachable again");
    }
}

/// Logs a broken watch once per break, not per retry.
fn watch_broke(what: &str, error: &(dyn std::error::Error + Send + Sync + 'static)) {
    tracing::warn!(watch = what, error = %Chain(error), "cluster store watch broke; watching again");
}
