//! Tests of `sites:` validation: hosts, defaults, routes, upstreams and certificate files.

use std::error::Error;
use std::fs;

use super::*;

#[test]
fn a_host_may_belong_to_one_site_only() {
    let (place, reason) = only_problem(&format!(
        "{SITE}  - hosts: [b.test, A.test]\n    tls: internal\n    upstreams: [\"http://127.0.0.1:1\"]\n"
    ));
    assert_eq!(place, at(5, 21, "sites[1].hosts[1]"));
    assert_eq!(
        reason,
        "host `a.test` already belongs to site `a.test` (sites[0], line 2)"
    );

    let (place, reason) = only_problem(
        "sites:\n  - hosts:\n      - a.test\n      - a.test\n    upstreams: [\"http://127.0.0.1:1\"]\n",
    );
    assert_eq!(place, at(4, 9, "sites[0].hosts[1]"));
    assert_eq!(
        reason,
        "host `a.test` is listed twice in this site (first at line 3)"
    );
}

#[test]
fn only_one_site_may_be_the_default() {
    let (place, reason) = only_problem(include_str!("../../../config/broken/two-defaults.yaml"));
    assert_eq!(place, at(9, 14, "sites[1].default"));
    assert_eq!(
        reason,
        "site `a.example.com` (sites[0], line 5) is already the default; only one can be"
    );
}

#[test]
fn a_site_has_upstreams_or_routes() {
    let neither = only_problem("sites:\n  - hosts: [a.test]\n    tls: internal\n");
    assert_eq!(
        neither,
        (
            at(2, 5, "sites[0]"),
            "a site needs `upstreams` or `routes`".to_string()
        )
    );
    let both = only_problem(&format!(
        "{SITE}    routes: [{{ path: /, respond: {{}} }}]\n"
    ));
    assert_eq!(both.0, at(4, 16, "sites[0].upstreams"));
    assert!(both.1.contains("not both"), "{}", both.1);
}

#[test]
fn a_route_has_upstreams_or_respond() {
    let head = "sites:\n  - hosts: [a.test]\n    tls: internal\n    routes:\n";
    let neither = only_problem(&format!("{head}      - path: /\n"));
    assert_eq!(
        neither,
        (
            at(5, 9, "sites[0].routes[0]"),
            "a route needs `upstreams` or `respond`".to_string()
        )
    );
    let both = only_problem(&format!(
        "{head}      - path: /\n        upstreams: [\"http://127.0.0.1:1\"]\n        respond: {{}}\n"
    ));
    assert_eq!(
        both,
        (
            at(5, 9, "sites[0].routes[0]"),
            "a route has `upstreams` or `respond`, not both".to_string()
        )
    );
    let no_path = only_problem(&format!("{head}      - respond: {{}}\n"));
    assert_eq!(no_path.0, at(5, 9, "sites[0].routes[0]"));
}

#[test]
fn route_paths_start_with_a_slash_and_are_unique_per_site() {
    let head = "sites:\n  - hosts: [a.test]\n    tls: internal\n    routes:\n";
    let (place, reason) = only_problem(&format!("{head}      - {{ path: api/, respond: {{}} }}\n"));
    assert_eq!(place, at(5, 17, "sites[0].routes[0].path"));
    assert_eq!(reason, "`api/` must start with /");
    let (place, reason) = only_problem(&format!(
        "{head}      - {{ path: /a/, respond: {{}} }}\n      - {{ path: /a/, respond: {{}} }}\n"
    ));
    assert_eq!(place, at(6, 17, "sites[0].routes[1].path"));
    assert_eq!(reason, "path /a/ is already routed in this site (line 5)");
    let (place, _) = only_problem(&format!(
        "{head}      - {{ path: /, respond: {{ status: 99 }} }}\n"
    ));
    assert_eq!(place, at(5, 39, "sites[0].routes[0].respond.status"));
}

#[test]
fn lists_must_not_be_empty() {
    let (place, _) =
        only_problem("sites:\n  - hosts: []\n    upstreams: [\"http://127.0.0.1:1\"]\n");
    assert_eq!(place, at(2, 12, "sites[0].hosts"));
    let (place, _) = only_problem("sites:\n  - hosts: [a.test]\n    upstreams: []\n");
    assert_eq!(place, at(3, 16, "sites[0].upstreams"));
    let (place, _) = only_problem("sites:\n  - hosts: [a.test]\n    routes: []\n");
    assert_eq!(place, at(3, 13, "sites[0].routes"));
    let (place, reason) = only_problem("sites:\n  - upstreams: [\"http://127.0.0.1:1\"]\n");
    assert_eq!(place, at(2, 5, "sites[0]"));
    assert!(reason.contains("`hosts`"), "{reason}");
}

#[test]
fn upstreams_are_valid_and_unique() {
    let (place, reason) = only_problem(include_str!("../../../config/broken/bad-upstream.yaml"));
    assert_eq!(place, at(5, 42, "sites[0].upstreams[1]"));
    assert_eq!(reason, "expected a URL such as http://127.0.0.1:8080");
    let (place, reason) = only_problem(
        "sites:\n  - hosts: [a.test]\n    upstreams:\n      - http://127.0.0.1:1\n      - http://127.0.0.1:1/\n",
    );
    assert_eq!(place, at(5, 9, "sites[0].upstreams[1]"));
    assert_eq!(
        reason,
        "upstream http://127.0.0.1:1 is listed twice (first at line 4)"
    );
}

#[test]
fn bad_host_names_and_tls_words_are_reported() {
    let (place, reason) =
        only_problem("sites:\n  - hosts: [a_b.test]\n    upstreams: [\"http://127.0.0.1:1\"]\n");
    assert_eq!(place, at(2, 13, "sites[0].hosts[0]"));
    assert!(reason.contains("a_b"), "{reason}");
    let (place, reason) =
        only_problem(&format!("{SITE}    tls: interna\n").replace("    tls: internal\n", ""));
    assert_eq!(place, at(4, 10, "sites[0].tls"));
    assert!(reason.ends_with("did you mean `internal`?"), "{reason}");
}

#[test]
fn certificate_files_must_be_readable_and_match() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    write_pair(dir.path(), "a.test");
    let (_, other_key) = self_signed("a.test");
    fs::write(dir.path().join("other.key"), other_key)?;
    fs::write(dir.path().join("garbage.pem"), "not pem at all\n")?;
    let source = dir.path().join("rampart.yaml");
    let check = |tls: &str| -> Result<Problem, Box<dyn Error>> {
        let yaml = format!(
            "sites:\n  - hosts: [a.test]\n    tls: {tls}\n    upstreams: [\"http://127.0.0.1:1\"]\n"
        );
        let Err(ConfigError::Invalid(problems)) = parse(&yaml, &source) else {
            return Err("expected problems".into());
        };
        assert_eq!(problems.len(), 1, "{problems}");
        Ok(problems.iter().next().cloned().ok_or("one problem")?)
    };

    let mismatch = check("{ cert: cert.pem, key: other.key }")?;
    assert_eq!(
        (mismatch.line, mismatch.column, mismatch.path.as_str()),
        (3, 33, "sites[0].tls.key")
    );
    let other = dir.path().join("other.key").display().to_string();
    let cert = dir.path().join("cert.pem").display().to_string();
    assert_eq!(
        mismatch.reason,
        format!("private key {other} does not match certificate {cert}")
    );

    let missing = check("{ cert: missing.pem, key: key.pem }")?;
    assert_eq!(
        (missing.line, missing.column, missing.path.as_str()),
        (3, 18, "sites[0].tls.cert")
    );
    let expected = format!(
        "cannot read certificate file {}",
        dir.path().join("missing.pem").display()
    );
    assert!(missing.reason.starts_with(&expected), "{missing:?}");

    let garbage = check("{ cert: garbage.pem, key: key.pem }")?;
    assert_eq!(garbage.path, "sites[0].tls.cert");
    assert!(garbage.reason.contains("garbage.pem"), "{garbage:?}");

    let swapped = check("{ cert: key.pem, key: cert.pem }")?;
    assert!(
        swapped
            .reason
            .contains(&dir.path().join("key.pem").display().to_string()),
        "{swapped:?}"
    );

    parse(
        "sites:\n  - hosts: [a.test]\n    tls: { cert: cert.pem, key: key.pem }\n    upstreams: [\"http://127.0.0.1:1\"]\n",
        &source,
    )?;
    Ok(())
}

#[test]
fn route_paths_must_be_canonical_and_connect_is_never_a_method() {
    let route = |line: &str| {
        format!(
            "sites:\n  - hosts: [a.test]\n    tls: internal\n    routes:\n      - {{ {line}, upstreams: [\"http://127.0.0.1:1\"] }}\n"
        )
    };
    let (place, reason) = only_problem(&route("path: /a//b/"));
    assert_eq!(place.2, "sites[0].routes[0].path");
    assert_eq!(
        reason,
        "`/a//b/` is not in canonical form; requests are matched as `/a/b/`: write that"
    );
    let (_, reason) = only_problem(&route("path_exact: /%61dmin"));
    assert!(reason.contains("matched as `/admin`"), "{reason}");
    let (_, reason) = only_problem(&route("path: /../x"));
    assert!(reason.contains("can never match a request"), "{reason}");
    let (place, _) = only_problem(&route(
        "path: /a/, replace_prefix: { from: /a/, to: /b/./c/ }",
    ));
    assert_eq!(place.2, "sites[0].routes[0].replace_prefix.to");
    let (place, reason) = only_problem(&route("path: /a/, methods: [GET, CONNECT]"));
    assert_eq!(place.2, "sites[0].routes[0].methods[1]");
    assert!(reason.starts_with("CONNECT is never served"), "{reason}");
    parse_ok(&route("path: /a/, methods: [TRACE]"));
}

#[test]
fn escaped_slashes_are_rejected_unless_kept_by_the_route_or_its_site() {
    let config = parse_ok(
        "sites:
  - hosts: [a.test]
    tls: internal
    escaped_slashes: keep
    routes:
      - { path: /a/, upstreams: [\"http://127.0.0.1:1\"] }
      - { path: /b/, escaped_slashes: reject, upstreams: [\"http://127.0.0.1:1\"] }
  - hosts: [b.test]
    tls: internal
    upstreams: [\"http://127.0.0.1:1\"]
",
    );
    let kept: Vec<_> = (config.sites.iter())
        .flat_map(|s| &s.routes)
        .map(|r| r.policy.escaped_slashes)
        .collect();
    assert_eq!(
        kept,
        [
            EscapedSlashes::Keep,
            EscapedSlashes::Reject,
            EscapedSlashes::Reject
        ]
    );
    let (place, reason) = only_problem(&format!("{SITE}    escaped_slashes: decode\n"));
    assert_eq!(place, at(5, 22, "sites[0].escaped_slashes"));
    assert_eq!(reason, "`decode` is not one of reject, keep");
}

#[test]
fn request_and_response_bodies_are_buffered_up_to_64kib_unless_told_otherwise() {
    let config = parse_ok(
        "sites:
  - hosts: [a.test]
    tls: internal
    buffer_request_body: 1MiB
    routes:
      - { path: /a/, upstreams: [\"http://127.0.0.1:1\"] }
      - { path: /b/, buffer_request_body: 0, buffer_response: 256B, upstreams: [\"http://127.0.0.1:1\"] }
  - hosts: [b.test]
    tls: internal
    upstreams: [\"http://127.0.0.1:1\"]
",
    );
    let sizes: Vec<u64> = (config.sites.iter())
        .flat_map(|s| &s.routes)
        .map(|r| r.policy.buffer_request_body)
        .collect();
    assert_eq!(sizes, [1024 * 1024, 0, 64 * 1024]);
    let read_ahead: Vec<u64> = (config.sites.iter())
        .flat_map(|s| &s.routes)
        .map(|r| r.policy.buffer_response)
        .collect();
    assert_eq!(read_ahead, [64 * 1024, 256, 64 * 1024]);
    let (place, _) = only_problem(&format!("{SITE}    buffer_request_body: 64k\n"));
    assert_eq!(place.2, "sites[0].buffer_request_body");
}
