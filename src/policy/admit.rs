//! The policy order: what a routed request must pass, and in which order, before it may
//! reach an origin.
//!
//! Cheap refusals first: a declared body over `max_body` (413) → the rate limits not keyed by
//! a claim, the site's then the route's (429) → JWT auth (401) → the rate limits keyed by a
//! claim (429). A flood of forged tokens is limited before any signature is checked. The
//! concurrency limit comes last, as it is the one step that waits: the caller takes its slot
//! after [`admit`], so that a request refused here never holds one.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::RateKey;
use crate::policy::auth::{AuthFailure, RouteAuth};
use crate::policy::body_limit;
use crate::policy::rate_limit::{self, Limited, RateLimiter};

/// The policy steps of one route, as the route table holds them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Steps<'a> {
    /// `max_body:` in bytes (the route's, else the site's).
    pub max_body: Option<u64>,
    /// The site's `rate_limit:` buckets, shared by its routes.
    pub site_limit: Option<&'a RateLimiter>,
    /// The route's own `rate_limit:` buckets.
    pub route_limit: Option<&'a RateLimiter>,
    /// The route's JWT auth.
    pub auth: Option<&'a RouteAuth>,
}

/// Why a step refused the request.
#[derive(Debug)]
pub enum Refused {
    /// The declared body is over `max_body`.
    BodyTooLarge {
        /// The limit in bytes.
        max: u64,
    },
    /// The client's bucket is empty.
    RateLimited {
        /// Whose limit: `site` or `route`.
        scope: &'static str,
        /// What the client is told.
        limit: Limited,
    },
    /// No valid bearer token.
    Unauthorized(AuthFailure),
}

/// Runs `steps` in the policy order for a request from `client` with `headers` (auth
/// replaces the client's identity fields with the token's claims).
///
/// # Errors
/// The first step that refuses.
pub fn admit(steps: &Steps<'_>, client: IpAddr, headers: &mut HeaderMap) -> Result<(), Refused> {
    body_limit::check_length(headers, steps.max_body)
        .map_err(|too_large| Refused::BodyTooLarge { max: too_large.max })?;
    rate_limits(steps, client, headers, None)?;
    if let Some(auth) = steps.auth {
        let claims = auth.check(headers).map_err(Refused::Unauthorized)?;
        rate_limits(steps, client, headers, Some(&claims))?;
    }
    Ok(())
}

/// The site's and the route's rate limits whose keys are at hand: before auth (`claims`
/// `None`) those not keyed by a claim, after it those that are.
fn rate_limits(
    steps: &Steps<'_>,
    client: IpAddr,
    headers: &HeaderMap,
    claims: rate_limit::Claims<'_>,
) -> Result<(), Refused> {
    for (scope, limiter) in [("site", steps.site_limit), ("route", steps.route_limit)] {
        let Some(limiter) = limiter else { continue };
        if matches!(limiter.key(), RateKey::JwtClaim(_)) != claims.is_some() {
            continue;
        }
        let key = rate_limit::key_for(limiter.key(), client, headers, claims);
        if let Err(limit) = limiter.check(&key) {
            return Err(Refused::RateLimited { scope, limit });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use http::HeaderValue;
    use http::header::{AUTHORIZATION, CONTENT_LENGTH};

    use super::*;
    use crate::config::{JwtAlgorithm, JwtAuth, JwtKeys, RateLimit};
    use crate::policy::jwks::{KeySet, KeyStore};

    /// One request a minute, a burst of one, keyed by `key`.
    fn one_a_minute(key: RateKey) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            rate: 1,
            per: Duration::from_secs(60),
            burst: 1,
            key,
        })
        .expect("a valid rate")
    }

    /// Auth with no keys: every token is refused.
    fn refusing_auth() -> RouteAuth {
        let config = JwtAuth {
            keys: JwtKeys::File(PathBuf::new()),
            issuer: None,
            audience: Vec::new(),
            algorithms: vec![JwtAlgorithm::ES256],
            leeway: Duration::ZERO,
            forward_claims: Vec::new(),
            strip_authorization: true,
        };
        RouteAuth::with_keys(&config, Arc::new(KeyStore::fixed(KeySet::default())))
    }

    fn request(length: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer forged"));
        headers
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn an_oversized_body_is_refused_first_then_rate_limits_then_auth() {
        let site = one_a_minute(RateKey::ClientIp);
        let auth = refusing_auth();
        let steps = Steps {
            max_body: Some(10),
            site_limit: Some(&site),
            route_limit: None,
            auth: Some(&auth),
        };
        // Over max_body: refused before it takes from the client's bucket.
        for _ in 0..3 {
            let refused = admit(&steps, CLIENT, &mut request(11));
            assert!(matches!(refused, Err(Refused::BodyTooLarge { max: 10 })));
        }
        // The bucket is whole: the first forged token reaches auth...
        let refused = admit(&steps, CLIENT, &mut request(10));
        assert!(matches!(refused, Err(Refused::Unauthorized(_))));
        // ...and the next is limited before any signature is checked.
        let refused = admit(&steps, CLIENT, &mut request(10));
        assert!(matches!(
            refused,
            Err(Refused::RateLimited { scope: "site", .. })
        ));
    }

    #[test]
    fn a_limit_keyed_by_a_claim_waits_for_a_verified_token() {
        let route = one_a_minute(RateKey::JwtClaim("sub".into()));
        let auth = refusing_auth();
        let steps = Steps {
            route_limit: Some(&route),
            auth: Some(&auth),
            ..Steps::default()
        };
        // Unverified requests never reach the claim's bucket, so never empty it.
        for _ in 0..3 {
            let refused = admit(&steps, CLIENT, &mut request(0));
            assert!(matches!(refused, Err(Refused::Unauthorized(_))));
        }
        // Without auth (as without a token's claims), the route's claim limit does not apply.
        let open = Steps {
            route_limit: Some(&route),
            ..Steps::default()
        };
        for _ in 0..3 {
            assert!(admit(&open, CLIENT, &mut request(0)).is_ok());
        }
    }

    #[test]
    fn the_site_limit_is_checked_before_the_routes() {
        let site = one_a_minute(RateKey::ClientIp);
        let route = one_a_minute(RateKey::ClientIp);
        let steps = Steps {
            site_limit: Some(&site),
            route_limit: Some(&route),
            ..Steps::default()
        };
        assert!(admit(&steps, CLIENT, &mut request(0)).is_ok());
        let refused = admit(&steps, CLIENT, &mut request(0));
        assert!(matches!(
            refused,
            Err(Refused::RateLimited { scope: "site", .. })
        ));
    }
}
