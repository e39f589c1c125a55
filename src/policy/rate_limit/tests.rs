use std::net::Ipv4Addr;

use governor::clock::FakeRelativeClock;

use super::*;

fn config(rate: u32, per: Duration, burst: u32, key: RateKey) -> RateLimit {
    RateLimit {
        rate,
        per,
        burst,
        key,
    }
}

fn ip(n: u32) -> Key {
    Key::Ip(IpAddr::V4(Ipv4Addr::from(n)))
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_burst_of_five_allows_exactly_five_then_refuses_and_other_keys_are_unaffected() {
    let clock = FakeRelativeClock::default();
    let limiter =
        RateLimiter::with_clock(&config(1, MINUTE, 5, RateKey::ClientIp), clock, 10, 1000).unwrap();
    let remaining: Vec<u32> = (0..5).map(|_| limiter.check(&ip(1)).unwrap()).collect();
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    for _ in 0..3 {
        assert!(limiter.check(&ip(1)).is_err());
    }
    assert_eq!(limiter.check(&ip(2)), Ok(4));
}

#[test]
fn refusal_says_when_the_next_token_arrives_and_tokens_come_back_at_the_rate() {
    let clock = FakeRelativeClock::default();
    let limiter = RateLimiter::with_clock(
        &config(1, MINUTE, 2, RateKey::ClientIp),
        clock.clone(),
        10,
        1000,
    )
    .unwrap();
    limiter.check(&ip(1)).unwrap();
    limiter.check(&ip(1)).unwrap();
    clock.advance(Duration::from_secs(20));
    let limited = limiter.check(&ip(1)).unwrap_err();
    assert_eq!(limited.retry_after, Duration::from_secs(40));
    assert_eq!(limited.burst, 2);
    assert_eq!(limited.window, Duration::from_secs(120));
    clock.advance(Duration::from_secs(40));
    assert_eq!(limiter.check(&ip(1)), Ok(0));
}

#[test]
fn headers_round_seconds_up_and_follow_the_ratelimit_draft() {
    let limited = Limited {
        retry_after: Duration::from_millis(1500),
        burst: 5,
        window: Duration::from_secs(300),
    };
    let headers: Vec<(String, String)> = limited
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        headers,
        [
            ("retry-after".to_owned(), "2".to_owned()),
            (
                "ratelimit-policy".to_owned(),
                "\"default\";q=5;w=300".to_owned()
            ),
            ("ratelimit".to_owned(), "\"default\";r=0;t=2".to_owned()),
        ]
    );
}

#[test]
fn keys_come_from_the_client_ip_a_header_or_a_claim_and_absence_shares_a_bucket() {
    let client: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("k1"));
    let claims: Map<String, Value> =
        serde_json::from_str(r#"{"sub": "alice", "n": 42, "none": null}"#).unwrap();
    let header = |name: &'static str| RateKey::Header(HeaderName::from_static(name));
    let claim = |name: &str| RateKey::JwtClaim(name.to_owned());

    assert_eq!(
        key_for(&RateKey::ClientIp, client, &headers, None),
        Key::Ip("10.0.0.1".parse().unwrap())
    );
    assert_eq!(
        key_for(&header("x-api-key"), client, &headers, None),
        Key::Value(b"k1".as_slice().into())
    );
    assert_eq!(
        key_for(&header("x-other"), client, &headers, None),
        Key::Absent
    );
    assert_eq!(
        key_for(&claim("sub"), client, &headers, Some(&claims)),
        Key::Value(b"alice".as_slice().into())
    );
    assert_eq!(
        key_for(&claim("n"), client, &headers, Some(&claims)),
        Key::Value(b"42".as_slice().into())
    );
    assert_eq!(
        key_for(&claim("none"), client, &headers, Some(&claims)),
        Key::Absent
    );
    assert_eq!(key_for(&claim("sub"), client, &headers, None), Key::Absent);
}

#[test]
fn a_million_distinct_idle_keys_are_swept_away() {
    let clock = FakeRelativeClock::default();
    let sweep_every = 10_000;
    // 1000/s, burst 1: a bucket is full again — and so dropped by a sweep — 1ms after its use.
    let limiter = RateLimiter::with_clock(
        &config(1000, Duration::from_secs(1), 1, RateKey::ClientIp),
        clock.clone(),
        MAX_KEYS,
        sweep_every,
    )
    .unwrap();
    let mut largest = 0;
    for n in 0..1_000_000u32 {
        limiter.check(&ip(n)).unwrap();
        if n % 1000 == 0 {
            clock.advance(Duration::from_millis(1));
            largest = largest.max(limiter.len());
        }
    }
    assert!(largest <= sweep_every as usize + 1000, "{largest} buckets");
    clock.advance(Duration::from_secs(1));
    for n in 0..sweep_every as u32 {
        limiter.check(&ip(n)).unwrap();
    }
    assert!(
        limiter.len() <= sweep_every as usize,
        "{} buckets",
        limiter.len()
    );
}

#[test]
fn a_flood_of_new_keys_evicts_the_idlest_and_a_throttled_client_stays_throttled() {
    let clock = FakeRelativeClock::default();
    let (cap, sweep_every) = (50_000, 10_000);
    let limiter = RateLimiter::with_clock(
        &config(1, MINUTE, 5, RateKey::ClientIp),
        clock.clone(),
        cap,
        sweep_every,
    )
    .unwrap();
    let throttled = ip(u32::MAX);
    for _ in 0..5 {
        limiter.check(&throttled).unwrap();
    }
    assert!(limiter.check(&throttled).is_err());
    // 300,000 invented keys over ten seconds, one request each: every bucket is in use, so none
    // is full again, and the cap holds by eviction.
    let mut largest = 0;
    for n in 0..300_000u32 {
        limiter.check(&ip(n)).unwrap();
        if n % 1000 == 0 {
            clock.advance(Duration::from_millis(33));
            largest = largest.max(limiter.len());
        }
    }
    assert!(largest <= cap + sweep_every as usize, "{largest} buckets");
    assert!(limiter.check(&throttled).is_err(), "still refused");
    // The survivors are the latest keys: the earliest were the idlest.
    assert_eq!(limiter.check(&ip(299_999)), Ok(3), "a kept bucket");
    assert_eq!(limiter.check(&ip(0)), Ok(4), "an evicted one is new again");
}

#[test]
fn eviction_keeps_the_cap_when_every_bucket_is_equally_idle() {
    let clock = FakeRelativeClock::default();
    let (cap, sweep_every) = (50_000, 10_000);
    // Nothing refills while the clock stands still: every bucket has the same state.
    let limiter = RateLimiter::with_clock(
        &config(1, MINUTE, 1, RateKey::ClientIp),
        clock,
        cap,
        sweep_every,
    )
    .unwrap();
    let mut largest = 0;
    for n in 0..300_000u32 {
        limiter.check(&ip(n)).unwrap();
        if n % 1000 == 0 {
            largest = largest.max(limiter.len());
        }
    }
    assert!(largest <= cap + sweep_every as usize, "{largest} buckets");
    assert!(limiter.len() <= cap + sweep_every as usize);
}

#[test]
fn a_zero_rate_or_burst_builds_no_limiter() {
    assert!(RateLimiter::new(&config(0, MINUTE, 1, RateKey::ClientIp)).is_none());
    assert!(RateLimiter::new(&config(1, MINUTE, 0, RateKey::ClientIp)).is_none());
}

#[test]
fn ipv6_clients_share_a_bucket_per_64_and_ipv4_ones_are_keyed_by_address() {
    let key = |addr: &str| {
        key_for(
            &RateKey::ClientIp,
            addr.parse().expect("an address"),
            &HeaderMap::new(),
            None,
        )
    };
    assert_eq!(
        key("2001:db8:1:2::1"),
        key("2001:db8:1:2:ffff:eeee:dddd:cccc")
    );
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(
        key("2001:db8:1:2::1"),
        Key::Ip("2001:db8:1:2::".parse().expect("an address"))
    );
    assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    assert_eq!(
        key("::ffff:192.0.2.1"),
        key("192.0.2.1"),
        "v4-mapped is IPv4"
    );
}
