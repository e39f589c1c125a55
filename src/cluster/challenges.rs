//! Every node's `:80` listener answers every node's HTTP-01 challenges.
//!
//! The ordering node writes `challenges/<token>` on its lock's lease before telling the CA to
//! validate ([`EtcdStorage::share_challenge`](super::EtcdStorage)); here each node keeps a
//! watched copy of them in its [`ChallengeStore`], and a token not seen yet (the CA can be faster
//! than the watch) is read from etcd directly.

use std::collections::HashMap;

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures_util::future::BoxFuture;

use super::{Cluster, WATCH_RETRY, request, watch_broke};
use crate::acme::{ChallengeSource, ChallengeStore};

/// Direct reads of `challenges/<token>`, for a miss.
#[derive(Debug)]
pub(super) struct Remote {
    cluster: Cluster,
}

impl Remote {
    pub(super) fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

impl ChallengeSource for Remote {
    fn find<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            // A token is base64url, a tls-alpn-01 key `tls-alpn-01:` and a lower-case host
            // name: nothing in either can leave the prefix.
            let valid = match token.strip_prefix(crate::acme::TLS_ALPN_PREFIX) {
                Some(host) => {
                    !host.is_empty()
                        && host.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        })
                }
                None => {
                    !token.is_empty()
                        && token
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }
            };
            if !valid {
                return None;
            }
            let key = self.cluster.key(&format!("challenges/{token}"));
            let mut client = self.cluster.client();
            match request(|| format!("read {key}"), client.get(key.as_str(), None)).await {
                Ok(found) => found
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok().map(str::to_owned)),
                Err(error) => {
                    tracing::warn!(error = %crate::observe::Chain(&error), "cannot look up a shared challenge answer");
                    None
                }
            }
        })
    }
}

/// Keeps `challenges`' shared answers equal to `challenges/` in etcd: listed, then watched from
/// the listed revision, listed again after a break.
pub(super) async fn follow(cluster: Cluster, challenges: ChallengeStore) {
    let prefix = cluster.key("challenges/");
    let token_of = |key: &[u8]| {
        key.strip_prefix(prefix.as_bytes())
            .and_then(|token| std::str::from_utf8(token).ok())
            .map(str::to_owned)
    };
    let mut broken = false;
    loop {
        let mut client = cluster.client();
        let listed = request(
            || format!("list {prefix}"),
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let revision = match listed {
            Ok(listed) => {
                let answers: HashMap<String, String> = listed
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((token_of(kv.key())?, kv.value_str().ok()?.to_owned())))
                    .collect();
                challenges.replace_shared(answers);
                listed.header().map_or(0, |h| h.revision())
            }
            Err(error) => {
                broke(&prefix, &error, &mut broken).await;
                continue;
            }
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = match request(
            || format!("watch {prefix}"),
            client.watch(prefix.as_str(), Some(options)),
        )
        .await
        {
            Ok(watch) => watch,
            Err(error) => {
                broke(&prefix, &error, &mut broken).await;
                continue;
            }
        };
        broken = false;
        loop {
            match watch.message().await {
                Ok(Some(reply)) if reply.canceled() => break,
                Ok(Some(reply)) => {
                    for event in reply.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Some(token) = token_of(kv.key()) else {
                            continue;
                        };
                        if event.event_type() == EventType::Put {
                            if let Ok(answer) = kv.value_str() {
                                challenges.insert_shared(&token, answer);
                            }
                        } else {
                            challenges.forget_shared(&token);
                        }
                    }
                }
                Ok(None) => {
                    watch_broke(&prefix, &std::io::Error::other("the watch ended"));
                    broken = true;
                    break;
                }
                Err(error) => {
                    watch_broke(&prefix, &error);
                    broken = true;
                    break;
                }
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

/// Logs a break once until it is mended, then waits before the next try.
async fn broke(
    prefix: &str,
    error: &(dyn std::error::Error + Send + Sync + 'static),
    broken: &mut bool,
) {
    if !std::mem::replace(broken, true) {
        watch_broke(prefix, error);
    }
    tokio::time::sleep(WATCH_RETRY).await;
}
