//! The raw shape of the gateway policy keys of sites and routes (see `config::gateway` for
//! what they become). The keys a route inherits from its site are listed once, in `raw.rs`'s
//! `site_and_route!`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::{List, Text};

/// `listen.proxy_protocol:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawProxyProtocol {
    pub(in crate::config) from: List<String>,
}

/// One entry of `upstreams:` — a URL, or `{url, weight, max_conns}`.
#[derive(Debug)]
pub(in crate::config) enum RawUpstreamEntry {
    /// A bare URL.
    Url(String),
    /// The long form.
    Target(RawUpstreamTarget),
}

/// `{url, weight, max_conns}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawUpstreamTarget {
    pub(in crate::config) url: Text,
    #[serde(default)]
    pub(in crate::config) weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub(in crate::config) max_conns: Option<Spanned<i64>>,
}

/// `balance:` a word, or `{header_hash: NAME}`.
#[derive(Debug)]
pub(in crate::config) enum RawBalance {
    /// `round_robin`, `weighted`, …
    Word(String),
    /// `{header_hash: NAME}`
    HeaderHash(RawHeaderHash),
}

/// `{header_hash: NAME}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawHeaderHash {
    pub(in crate::config) header_hash: Text,
}

/// `health:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawHealth {
    pub(in crate::config) path: Text,
    #[serde(default)]
    pub(in crate::config) every: Option<Text>,
    #[serde(default)]
    pub(in crate::config) timeout: Option<Text>,
    #[serde(default)]
    pub(in crate::config) healthy_after: Option<Spanned<i64>>,
    #[serde(default)]
    pub(in crate::config) unhealthy_after: Option<Spanned<i64>>,
    #[serde(default)]
    pub(in crate::config) expect_status: Option<Spanned<RawScalar>>,
}

/// `passive:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawPassive {
    #[serde(default)]
    pub(in crate::config) unhealthy_after: Option<Spanned<i64>>,
    #[serde(default)]
    pub(in crate::config) cooldown: Option<Text>,
    #[serde(default)]
    pub(in crate::config) include_5xx: Option<bool>,
}

/// `timeouts:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawTimeouts {
    #[serde(default)]
    pub(in crate::config) connect: Option<Text>,
    #[serde(default)]
    pub(in crate::config) response_header: Option<Text>,
    #[serde(default)]
    pub(in crate::config) idle: Option<Text>,
    #[serde(default)]
    pub(in crate::config) total: Option<Text>,
}

/// `queue:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawQueue {
    pub(in crate::config) max: Spanned<i64>,
    pub(in crate::config) timeout: Text,
}

/// `rate_limit:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawRateLimit {
    pub(in crate::config) rate: Text,
    #[serde(default)]
    pub(in crate::config) burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub(in crate::config) key: Option<Text>,
}

/// `auth:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAuth {
    pub(in crate::config) jwt: Spanned<RawJwt>,
}

/// `auth.jwt:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawJwt {
    #[serde(default)]
    pub(in crate::config) keys: Option<Text>,
    #[serde(default)]
    pub(in crate::config) jwks_url: Option<Text>,
    #[serde(default)]
    pub(in crate::config) jwks_refresh: Option<Text>,
    #[serde(default)]
    pub(in crate::config) jwks_ca: Option<Text>,
    #[serde(default)]
    pub(in crate::config) issuer: Option<Text>,
    #[serde(default)]
    pub(in crate::config) audience: Option<Spanned<RawOneOrMany>>,
    #[serde(default)]
    pub(in crate::config) algorithms: Option<List<String>>,
    #[serde(default)]
    pub(in crate::config) leeway: Option<Text>,
    #[serde(default)]
    pub(in crate::config) forward_claims: Option<Spanned<RawPairs>>,
    #[serde(default)]
    pub(in crate::config) strip_authorization: bool,
}

/// `headers:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(in crate::config) struct RawHeaderRules {
    pub(in crate::config) request: Option<Spanned<RawHeaderOps>>,
    pub(in crate::config) response: Option<Spanned<RawHeaderOps>>,
}

/// `{set, add, remove}`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(in crate::config) struct RawHeaderOps {
    pub(in crate::config) set: Option<Spanned<RawPairs>>,
    pub(in crate::config) add: Option<Spanned<RawPairs>>,
    pub(in crate::config) remove: Option<List<String>>,
}

/// `hsts:` a duration, or `{max_age, include_subdomains, preload}`.
#[derive(Debug)]
pub(in crate::config) enum RawHsts {
    /// `hsts: 365d`
    MaxAge(String),
    /// The long form.
    Options(RawHstsOptions),
}

/// `{max_age, include_subdomains, preload}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawHstsOptions {
    pub(in crate::config) max_age: Text,
    #[serde(default)]
    pub(in crate::config) include_subdomains: bool,
    #[serde(default)]
    pub(in crate::config) preload: bool,
}

/// `replace_prefix: {from, to}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawReplacePrefix {
    pub(in crate::config) from: Text,
    pub(in crate::config) to: Text,
}

/// A map of names to text values, in file order (`set: {X-A: "1"}`, `forward_claims`).
#[derive(Debug, Default)]
pub(in crate::config) struct RawPairs(pub(in crate::config) Vec<(Text, Text)>);

/// A string or a list of strings (`audience:`).
#[derive(Debug)]
pub(in crate::config) struct RawOneOrMany(pub(in crate::config) Vec<String>);

/// A scalar written as a number or a word (`expect_status: 200` or `2xx`), kept as text.
#[derive(Debug)]
pub(in crate::config) struct RawScalar(pub(in crate::config) String);

/// Implements `Deserialize` for an enum of "a word" or "a map": hand-written rather than
/// `#[serde(untagged)]`, which buffers its input and so loses positions and unknown-key errors.
macro_rules! word_or_map {
    ($raw:ty, $expecting:literal, $word:expr, $map:ty, $wrap:expr) => {
        impl<'de> Deserialize<'de> for $raw {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct WordOrMap;

                impl<'de> Visitor<'de> for WordOrMap {
                    type Value = $raw;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_str<E: de::Error>(self, word: &str) -> Result<$raw, E> {
                        Ok($word(word.to_string()))
                    }

                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$raw, A::Error> {
                        <$map>::deserialize(de::value::MapAccessDeserializer::new(map)).map($wrap)
                    }
                }

                deserializer.deserialize_any(WordOrMap)
            }
        }
    };
}

word_or_map!(
    RawUpstreamEntry,
    "a URL such as http://127.0.0.1:8080 or {url, weight, max_conns}",
    RawUpstreamEntry::Url,
    RawUpstreamTarget,
    RawUpstreamEntry::Target
);
word_or_map!(
    RawBalance,
    "round_robin, weighted, least_conn, random_two, ip_hash or {header_hash: NAME}",
    RawBalance::Word,
    RawHeaderHash,
    RawBalance::HeaderHash
);
word_or_map!(
    RawHsts,
    "a duration such as 365d or {max_age, include_subdomains, preload}",
    RawHsts::MaxAge,
    RawHstsOptions,
    RawHsts::Options
);

impl<'de> Deserialize<'de> for RawPairs {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;

        impl<'de> Visitor<'de> for Pairs {
            type Value = RawPairs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to values, such as {X-Env: prod}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some((name, value)) = map.next_entry::<Text, Spanned<RawScalar>>()? {
                    let value = Text::new(value.value.0, value.referenced, value.defined);
                    pairs.push((name, value));
                }
                Ok(RawPairs(pairs))
            }
        }

        deserializer.deserialize_map(Pairs)
    }
}

impl<'de> Deserialize<'de> for RawOneOrMany {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrMany;

        impl<'de> Visitor<'de> for OneOrMany {
            type Value = RawOneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, one: &str) -> Result<RawOneOrMany, E> {
                Ok(RawOneOrMany(vec![one.to_string()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawOneOrMany, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(RawOneOrMany(all))
            }
        }

        deserializer.deserialize_any(OneOrMany)
    }
}

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;

        impl Visitor<'_> for Scalar {
            type Value = RawScalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawScalar, E> {
                Ok(RawScalar(text.to_string()))
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<RawScalar, E> {
                Ok(RawScalar(number.to_string()))
            }

            fn visit_u64<E: de::Error>(self, number: u64) -> Result<RawScalar, E> {
                Ok(RawScalar(number.to_string()))
            }

            fn visit_f64<E: de::Error>(self, number: f64) -> Result<RawScalar, E> {
                Ok(RawScalar(number.to_string()))
            }

            fn visit_bool<E: de::Error>(self, flag: bool) -> Result<RawScalar, E> {
                Ok(RawScalar(flag.to_string()))
            }
        }

        deserializer.deserialize_any(Scalar)
    }
}
