//! Tests of the gateway policy keys: upstream targets, balancing, health, retries, timeouts,
//! limits, JWT auth, header rules, HSTS, matching, trusted proxies and PROXY protocol.

use std::error::Error;
use std::fs;

use http::{HeaderName, HeaderValue, Method};

use super::*;

const GATEWAY: &str = r#"
trusted_proxies: [10.0.0.0/8, 127.0.0.1]
listen:
  proxy_protocol: { from: [192.168.0.0/16] }
upstream:
  resolve_every: 5s
  nameservers: ["127.0.0.1:8053", "::1"]
sites:
  - hosts: [a.test]
    tls: internal
    hsts: { max_age: 365d, include_subdomains: true, preload: true }
    headers: { response: { set: { X-Frame-Options: DENY } } }
    rate_limit: { rate: 100/s, burst: 200 }
    max_body: 10MiB
    timeouts: { connect: 2s }
    auth:
      jwt:
        keys: jwks.json
        issuer: https://issuer.test
        audience: [api, web]
        algorithms: [ES256, HS256]
        leeway: 5s
        forward_claims: { sub: X-User-Id }
        strip_authorization: true
    routes:
      - path_exact: /login
        methods: [POST]
        upstreams: ["http://127.0.0.1:9000"]
      - path: /api/
        replace_prefix: { from: /api/, to: /v2/ }
        upstreams:
          - { url: "http://127.0.0.1:9001", weight: 3, max_conns: 10 }
          - "https://origin.test:9443"
        balance: weighted
        ca: ca.pem
        health: { path: /healthz, every: 1s, timeout: 500ms, healthy_after: 1, unhealthy_after: 2, expect_status: 204 }
        passive: { unhealthy_after: 0, cooldown: 3s, include_5xx: true }
        retries: 2
        timeouts: { response_header: 5s, total: 20s }
        max_in_flight: 8
        queue: { max: 4, timeout: 1s }
        rate_limit: { rate: 10/m, key: "jwt:sub" }
        max_body: 1KiB
        headers:
          request: { set: { X-Env: prod }, add: { X-Tag: 1 }, remove: [X-Debug] }
      - path_regex: "^/u/[0-9]+$"
        upstreams: ["http://127.0.0.1:9002"]
        balance: { header_hash: X-User }
  - hosts: [b.test]
    tls: internal
    balance: least_conn
    upstreams: ["http://127.0.0.1:9003", "http://127.0.0.1:9004"]
"#;

fn gateway_config() -> Result<(tempfile::TempDir, Config), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("jwks.json"), r#"{"keys": []}"#)?;
    fs::write(dir.path().join("ca.pem"), "")?;
    let config = parse(GATEWAY, &dir.path().join("rampart.yaml"))?;
    Ok((dir, config))
}

#[test]
fn every_gateway_key_parses_into_its_policy() -> Result<(), Box<dyn Error>> {
    let (dir, config) = gateway_config()?;
    let net = |text: &str| text.parse::<IpNet>().expect("literal network");
    assert_eq!(
        config.trusted_proxies,
        [net("10.0.0.0/8"), net("127.0.0.1/32")]
    );
    assert_eq!(
        config.listen.proxy_protocol,
        Some(ProxyProtocol {
            from: vec![net("192.168.0.0/16")]
        })
    );
    assert_eq!(config.upstream.resolve_every, Duration::from_secs(5));
    assert_eq!(
        config.upstream.nameservers,
        ["127.0.0.1:8053".parse::<SocketAddr>()?, "[::1]:53".parse()?]
    );

    let a = &config.sites[0];
    assert_eq!(
        a.policy.hsts,
        Some(Hsts {
            max_age: Duration::from_secs(365 * 86400),
            include_subdomains: true,
            preload: true
        })
    );
    assert_eq!(
        a.policy.headers.response.set,
        [(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY")
        )]
    );
    let site_limit = a.policy.rate_limit.as_ref().expect("site rate limit");
    assert_eq!(
        (site_limit.rate, site_limit.per, site_limit.burst),
        (100, Duration::from_secs(1), 200)
    );
    assert_eq!(site_limit.key, RateKey::ClientIp);

    let [login, api, users] = &a.routes[..] else {
        panic!("three routes: {:?}", a.routes)
    };
    assert_eq!(login.path, PathMatch::Exact("/login".into()));
    assert_eq!(login.methods, [Method::POST]);
    // Inherited from the site.
    assert_eq!(login.policy.max_body, Some(10 * 1024 * 1024));
    let auth = login.policy.auth.as_ref().expect("site auth inherited");
    assert_eq!(auth.keys, JwtKeys::File(dir.path().join("jwks.json")));
    assert_eq!(auth.issuer.as_deref(), Some("https://issuer.test"));
    assert_eq!(auth.audience, ["api", "web"]);
    assert_eq!(auth.algorithms, [JwtAlgorithm::ES256, JwtAlgorithm::HS256]);
    assert_eq!(auth.leeway, Duration::from_secs(5));
    assert_eq!(
        auth.forward_claims,
        [("sub".to_string(), HeaderName::from_static("x-user-id"))]
    );
    assert!(auth.strip_authorization);
    let RouteAction::Proxy(login_up) = &login.action else {
        panic!("proxies")
    };
    assert_eq!(login_up.timeouts.connect, Duration::from_secs(2));
    assert_eq!(login_up.timeouts.response_header, Duration::from_secs(30));
    assert_eq!(login_up.retries, 1);
    assert_eq!(login_up.passive, PassiveHealth::default());

    assert_eq!(api.path, PathMatch::Prefix("/api/".into()));
    assert_eq!(
        api.rewrite,
        Rewrite::ReplacePrefix {
            from: "/api/".into(),
            to: "/v2/".into()
        }
    );
    assert_eq!(api.policy.max_body, Some(1024));
    assert_eq!(
        api.policy.concurrency,
        Some(Concurrency {
            max_in_flight: 8,
            queue: Some(Queue {
                max: 4,
                timeout: Duration::from_secs(1)
            })
        })
    );
    let route_limit = api.policy.rate_limit.as_ref().expect("route rate limit");
    assert_eq!(
        (route_limit.rate, route_limit.per, route_limit.burst),
        (10, Duration::from_secs(60), 10)
    );
    assert_eq!(route_limit.key, RateKey::JwtClaim("sub".into()));
    assert_eq!(
        api.policy.headers.request.remove,
        [HeaderName::from_static("x-debug")]
    );
    assert_eq!(
        api.policy.headers.request.add[0].1,
        HeaderValue::from_static("1")
    );
    let RouteAction::Proxy(up) = &api.action else {
        panic!("proxies")
    };
    assert_eq!(up.targets[0].weight, 3);
    assert_eq!(up.targets[0].max_conns, Some(10));
    assert_eq!(
        (up.targets[1].weight, up.targets[1].url.is_https()),
        (1, true)
    );
    assert_eq!(up.balance, Balance::Weighted);
    assert_eq!(up.ca.as_deref(), Some(dir.path().join("ca.pem").as_path()));
    assert_eq!(
        up.health,
        Some(ActiveHealth {
            path: "/healthz".into(),
            every: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_after: 1,
            unhealthy_after: 2,
            expect_status: ExpectStatus::Exact(http::StatusCode::NO_CONTENT),
        })
    );
    assert_eq!(
        up.passive,
        PassiveHealth {
            unhealthy_after: 0,
            cooldown: Duration::from_secs(3),
            include_5xx: true
        }
    );
    assert_eq!(up.retries, 2);
    assert_eq!(
        up.timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            response_header: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(20),
        }
    );

    assert!(
        matches!(&users.path, PathMatch::Regex(r) if r.is_match("/u/42") && !r.is_match("/u/x"))
    );
    let RouteAction::Proxy(users_up) = &users.action else {
        panic!("proxies")
    };
    assert_eq!(
        users_up.balance,
        Balance::HeaderHash(HeaderName::from_static("x-user"))
    );

    let b = &config.sites[1];
    let RouteAction::Proxy(b_up) = &b.routes[0].action else {
        panic!("proxies")
    };
    assert_eq!(b_up.balance, Balance::LeastConn);
    assert_eq!(b_up.urls().len(), 2);
    assert_eq!(b.routes[0].policy, RoutePolicy::default());
    Ok(())
}

#[test]
fn gateway_mistakes_are_all_reported_with_their_positions() {
    let yaml = "\
trusted_proxies: [10.0.0.0/33]
sites:
  - hosts: [a.test]
    tls: internal
    hsts: { max_age: 30d, preload: true }
    routes:
      - path: /a/
        path_regex: \"[\"
        upstreams: [\"http://127.0.0.1:1\"]
      - path: /b/
        upstreams: [{ url: \"http://127.0.0.1:2\", weight: 0 }]
        balance: least_con
        rate_limit: { rate: 10/d, key: \"jwt:sub\" }
        queue: { max: 1, timeout: 1s }
        methods: [get]
";
    let problems = problems(yaml);
    let found: Vec<_> = problems.iter().map(|p| (p.line, p.path.clone())).collect();
    let expected = [
        (1, "trusted_proxies[0]"),
        (5, "sites[0].hsts.preload"),
        (8, "sites[0].routes[0].path_regex"),
        (11, "sites[0].routes[1].upstreams[0].weight"),
        (12, "sites[0].routes[1].balance"),
        (13, "sites[0].routes[1].rate_limit.rate"),
        (13, "sites[0].routes[1].rate_limit.key"),
        (14, "sites[0].routes[1].queue"),
        (15, "sites[0].routes[1].methods[0]"),
    ];
    for (line, path) in expected {
        assert!(
            found.iter().any(|(l, p)| *l == line && p == path),
            "expected a problem at line {line} {path}; got:\n{problems}"
        );
    }
    let text = problems.to_string();
    assert!(text.contains("did you mean `least_conn`?"), "{text}");
    assert!(text.contains("no `auth` applies here"), "{text}");
    assert!(
        text.contains("`weight` is only used") || text.contains("at least 1"),
        "{text}"
    );
}

#[test]
fn strip_and_replace_prefix_exclude_each_other_and_weights_need_weighted() {
    let head = "sites:\n  - hosts: [a.test]\n    tls: internal\n    routes:\n";
    let (place, reason) = only_problem(&format!(
        "{head}      - path: /a/\n        strip_prefix: true\n        replace_prefix: {{ from: /a/, to: /b/ }}\n        respond: {{}}\n"
    ));
    assert_eq!(place, at(6, 23, "sites[0].routes[0].strip_prefix"));
    assert!(reason.contains("not both"), "{reason}");
    let (place, reason) = only_problem(&format!(
        "{head}      - path: /a/\n        upstreams: [{{ url: \"http://127.0.0.1:1\", weight: 2 }}]\n"
    ));
    assert_eq!(place.2, "sites[0].routes[0].upstreams");
    assert_eq!(reason, "`weight` is only used with `balance: weighted`");
}

#[test]
fn jwt_auth_needs_exactly_one_key_source() {
    let head =
        "sites:\n  - hosts: [a.test]\n    tls: internal\n    upstreams: [\"http://127.0.0.1:1\"]\n";
    let (place, reason) = only_problem(&format!("{head}    auth: {{ jwt: {{ issuer: x }} }}\n"));
    assert_eq!(place.2, "sites[0].auth.jwt");
    assert!(reason.contains("keys: FILE"), "{reason}");
    let (place, reason) = only_problem(&format!(
        "{head}    auth: {{ jwt: {{ jwks_url: \"ftp://x/jwks\" }} }}\n"
    ));
    assert_eq!(place.2, "sites[0].auth.jwt.jwks_url");
    assert!(reason.contains("http(s) URL"), "{reason}");
    let config = parse_ok(&format!(
        "{head}    auth: {{ jwt: {{ jwks_url: \"https://idp.test/jwks.json\" }} }}\n"
    ));
    let auth = config.sites[0].routes[0].policy.auth.clone().expect("auth");
    assert!(
        matches!(auth.keys, JwtKeys::Url { refresh, .. } if refresh == Duration::from_secs(300))
    );
    assert_eq!(
        auth.algorithms,
        [
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA
        ]
    );
}

#[test]
fn header_rules_may_not_touch_the_fields_rampart_owns() {
    let head =
        "sites:\n  - hosts: [a.test]\n    tls: internal\n    upstreams: [\"http://127.0.0.1:1\"]\n";
    let problems = problems(&format!(
        "{head}    headers: {{ request: {{ set: {{ X-Forwarded-For: 1.2.3.4 }}, remove: [Connection, X-Debug] }} }}\n"
    ));
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sites[0].headers.request.set.X-Forwarded-For",
            "sites[0].headers.request.remove[0]"
        ],
        "{problems}"
    );
    assert!(
        problems.to_string().contains("set by Rampart itself"),
        "{problems}"
    );
}
