//! Tests of loading and validation: values, defaults, and the position and key path of every
//! kind of problem. Test certificates come from rcgen at test time.

use std::error::Error;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;

use super::*;
use crate::pki::HostName;

mod challenges;
mod cluster;
mod example;
mod gateway;
mod on_demand;
mod site;

/// Where the test configurations pretend to live.
const SOURCE: &str = "/etc/rampart/rampart.yaml";

/// A site that is valid on its own, to complete configurations that test something else.
const SITE: &str =
    "sites:\n  - hosts: [a.test]\n    tls: internal\n    upstreams: [\"http://127.0.0.1:8080\"]\n";

fn parse_ok(yaml: &str) -> Config {
    match parse(yaml, Path::new(SOURCE)) {
        Ok(config) => config,
        Err(error) => panic!("expected a valid configuration, got:\n{error}"),
    }
}

fn problems(yaml: &str) -> Problems {
    match parse(yaml, Path::new(SOURCE)) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected problems, got {other:?}"),
    }
}

/// The only problem in `yaml`, as `(line, column, path)` and the reason.
fn only_problem(yaml: &str) -> ((u64, u64, String), String) {
    let problems = problems(yaml);
    assert_eq!(problems.len(), 1, "expected one problem, got:\n{problems}");
    let problem = problems.iter().next().expect("one problem");
    (
        (problem.line, problem.column, problem.path.clone()),
        problem.reason.clone(),
    )
}

fn at(line: u64, column: u64, path: &str) -> (u64, u64, String) {
    (line, column, path.to_string())
}

/// A self-signed certificate for `host`, as (chain PEM, key PEM).
fn self_signed(host: &str) -> (String, String) {
    let issued = rcgen::generate_simple_self_signed(vec![host.to_string()])
        .expect("rcgen issues a test certificate");
    (issued.cert.pem(), issued.signing_key.serialize_pem())
}

/// Writes `cert.pem`/`key.pem` for `host` into `dir`.
fn write_pair(dir: &Path, host: &str) {
    let (cert, key) = self_signed(host);
    fs::write(dir.join("cert.pem"), cert).expect("temp dir is writable");
    fs::write(dir.join("key.pem"), key).expect("temp dir is writable");
}

#[test]
fn full_configuration_parses_with_every_value() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    write_pair(dir.path(), "api.example.com");
    let (roots, _) = self_signed("roots.test");
    fs::write(dir.path().join("roots.pem"), roots)?;
    let yaml = r#"
listen:
  https: "127.0.0.1:8443"
  http: "127.0.0.1:8080"
  admin: "127.0.0.1:9180"
storage: state
log: { format: text, level: "rampart=debug,info" }
acme:
  email: ops@example.com
  directory: letsencrypt-staging
  ca_bundle: roots.pem
  key_type: rsa2048
  profile: tlsserver
  eab: { key_id: kid-1, hmac_key: c2VjcmV0 }
downstream:
  handshake_timeout: 5s
  header_timeout: 1500ms
  idle_timeout: 2m
  client_body_timeout: 20s
  send_timeout: 45s
  max_header_bytes: 16KiB
  max_headers: 50
  h2_max_streams: 10
  max_connections: 1000
  max_connections_per_ip: 64
  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
upstream:
  connect_timeout: 2s
  response_header_timeout: 1m30s
  pool_idle_timeout: 0
  pool_max_idle: 4
shutdown_grace: 1h
sites:
  - hosts: [Example.com, www.example.com]
    upstreams: ["http://127.0.0.1:9000"]
  - hosts: [api.example.com]
    tls: { cert: cert.pem, key: key.pem }
    default: true
    routes:
      - path: /v1/
        strip_prefix: true
        upstreams: ["http://10.0.0.5:9000", "http://10.0.0.6:9000"]
      - path: /
        respond: { status: 404, body: "nope\n" }
"#;
    let config = parse(yaml, &dir.path().join("rampart.yaml"))?;

    assert_eq!(config.source, dir.path().join("rampart.yaml"));
    let addr = |text: &str| text.parse::<SocketAddr>().expect("literal address");
    assert_eq!(
        config.listen,
        Listen {
            https: addr("127.0.0.1:8443"),
            http: Some(addr("127.0.0.1:8080")),
            admin: Some(addr("127.0.0.1:9180")),
            admin_token: None,
            proxy_protocol: None,
        }
    );
    assert_eq!(config.storage, dir.path().join("state"));
    assert_eq!(
        config.log,
        Log {
            format: LogFormat::Text,
            level: "rampart=debug,info".to_string()
        }
    );
    assert_eq!(config.acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(
        config.acme.directory,
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(config.acme.ca_bundle, Some(dir.path().join("roots.pem")));
    assert_eq!(config.acme.key_type, KeyType::Rsa2048);
    assert_eq!(config.acme.profile.as_deref(), Some("tlsserver"));
    assert_eq!(
        config.acme.eab,
        Some(Eab {
            key_id: "kid-1".to_string(),
            hmac_key: b"secret".to_vec()
        })
    );
    assert_eq!(
        config.downstream,
        Downstream {
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_millis(1500),
            idle_timeout: Duration::from_secs(120),
            client_body_timeout: Duration::from_secs(20),
            send_timeout: Duration::from_secs(45),
            max_header_bytes: 16 * 1024,
            max_headers: 50,
            h2_max_streams: 10,
            max_connections: 1000,
            max_connections_per_ip: Some(64),
            cipher_suites: vec![
                "TLS_AES_128_GCM_SHA256".to_owned(),
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned()
            ],
        }
    );
    assert_eq!(
        config.upstream,
        UpstreamDefaults {
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(90),
            pool_idle_timeout: Duration::ZERO,
            pool_max_idle: 4,
            resolve_every: Duration::from_secs(30),
            nameservers: Vec::new(),
        }
    );
    assert_eq!(config.shutdown_grace, Duration::from_secs(3600));

    let [web, api] = &config.sites[..] else {
        panic!("two sites expected: {:?}", config.sites)
    };
    assert_eq!(web.name, "example.com");
    let hosts: Vec<_> = web.hosts.iter().map(HostName::as_str).collect();
    assert_eq!(hosts, ["example.com", "www.example.com"]);
    assert_eq!(web.tls, SiteTls::Acme);
    assert!(!web.default);
    let [route] = &web.routes[..] else {
        panic!("one route expected: {:?}", web.routes)
    };
    assert_eq!(
        (&route.path, &route.rewrite),
        (&PathMatch::Prefix("/".into()), &Rewrite::None)
    );
    assert!(
        matches!(&route.action, RouteAction::Proxy(up) if up.urls().len() == 1 && up.urls()[0].to_string() == "http://127.0.0.1:9000")
    );

    assert_eq!(api.name, "api.example.com");
    assert_eq!(
        api.tls,
        SiteTls::Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem")
        }
    );
    assert!(api.default);
    let [v1, root] = &api.routes[..] else {
        panic!("two routes expected: {:?}", api.routes)
    };
    assert_eq!(
        (&v1.path, &v1.rewrite),
        (&PathMatch::Prefix("/v1/".into()), &Rewrite::StripPrefix)
    );
    let RouteAction::Proxy(upstreams) = &v1.action else {
        panic!("v1 proxies: {v1:?}")
    };
    let urls: Vec<_> = upstreams.urls().iter().map(ToString::to_string).collect();
    assert_eq!(urls, ["http://10.0.0.5:9000", "http://10.0.0.6:9000"]);
    let RouteAction::Respond { status, body } = &root.action else {
        panic!("/ responds: {root:?}")
    };
    assert_eq!(
        (*status, &body[..]),
        (StatusCode::NOT_FOUND, &b"nope\n"[..])
    );
    Ok(())
}

#[test]
fn omitted_keys_take_their_defaults() {
    let config =
        parse_ok("sites:\n  - hosts: [a.test]\n    upstreams: [\"http://127.0.0.1:8080\"]\n");
    let addr = |text: &str| text.parse::<SocketAddr>().expect("literal address");
    assert_eq!(
        config.listen,
        Listen {
            https: addr("[::]:443"),
            http: Some(addr("[::]:80")),
            admin: None,
            admin_token: None,
            proxy_protocol: None,
        }
    );
    assert_eq!(config.storage, PathBuf::from("/var/lib/rampart"));
    assert_eq!(
        config.log,
        Log {
            format: LogFormat::Json,
            level: "info".to_string()
        }
    );
    assert_eq!(config.acme.email, None);
    assert_eq!(
        config.acme.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(config.acme.ca_bundle, None);
    assert_eq!(config.acme.key_type, KeyType::EcdsaP256);
    assert_eq!(config.acme.profile, None);
    assert_eq!(config.acme.eab, None);
    assert_eq!(
        config.downstream,
        Downstream {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            max_header_bytes: 65_536,
            max_headers: 100,
            h2_max_streams: 256,
            max_connections: 50_000,
            max_connections_per_ip: None,
            cipher_suites: Vec::new(),
        }
    );
    assert_eq!(
        config.upstream,
        UpstreamDefaults {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 32,
            resolve_every: Duration::from_secs(30),
            nameservers: Vec::new(),
        }
    );
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    let site = &config.sites[0];
    assert_eq!((site.tls.clone(), site.default), (SiteTls::Acme, false));
    let respond = parse_ok(&format!(
        "{SITE}  - hosts: [b.test]\n    tls: internal\n    routes:\n      - path: /\n        respond: {{}}\n"
    ));
    let route = &respond.sites[1].routes[0];
    assert_eq!(route.rewrite, Rewrite::None);
    assert!(
        matches!(&route.action, RouteAction::Respond { status, body } if *status == StatusCode::OK && body.is_empty())
    );
}

#[test]
fn example_configuration_loads_and_shows_the_defaults() {
    let example = parse_ok(include_str!("../../config/rampart.yaml"));
    let defaults = parse_ok(SITE);
    // The example is runnable without root: its listeners, storage and log format differ on purpose.
    assert_eq!(example.listen.https.port(), 8443);
    assert_eq!(example.listen.http.expect("on").port(), 8080);
    assert!(example.storage.ends_with("certs"));
    assert_eq!(example.log.level, defaults.log.level);
    assert_eq!(example.acme.directory, defaults.acme.directory);
    assert_eq!(example.acme.key_type, defaults.acme.key_type);
    assert_eq!(example.downstream, defaults.downstream);
    assert_eq!(example.upstream, defaults.upstream);
    assert_eq!(example.shutdown_grace, defaults.shutdown_grace);
    assert_eq!(example.sites.len(), 1);
    assert_eq!(example.sites[0].tls, SiteTls::Internal);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("tls"))?;
    write_pair(&dir.path().join("tls"), "a.test");
    let path = dir.path().join("rampart.yaml");
    fs::write(
        &path,
        "storage: state\nsites:\n  - hosts: [a.test]\n    tls: { cert: tls/cert.pem, key: tls/key.pem }\n    \
         upstreams: [\"http://127.0.0.1:8080\"]\n",
    )?;
    let config = load(&path)?;
    assert_eq!(config.source, path);
    assert_eq!(config.storage, dir.path().join("state"));
    assert_eq!(
        config.sites[0].tls,
        SiteTls::Files {
            cert: dir.path().join("tls/cert.pem"),
            key: dir.path().join("tls/key.pem")
        }
    );
    let absolute = parse_ok(&format!("storage: /srv/rampart\n{SITE}"));
    assert_eq!(absolute.storage, PathBuf::from("/srv/rampart"));
    Ok(())
}

#[test]
fn an_unreadable_file_is_a_read_error() {
    let missing = Path::new("/nonexistent/rampart.yaml");
    let Err(ConfigError::Read { path, .. }) = load(missing) else {
        panic!("a missing file cannot load")
    };
    assert_eq!(path, missing);
}

#[test]
fn problems_print_one_line_each_with_file_position_and_path() {
    let error = parse(
        "listen:\n  https: nowhere\n  http: nothing\n",
        Path::new(SOURCE),
    )
    .expect_err("invalid");
    let text = error.to_string();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("/etc/rampart/rampart.yaml:1:1: sites: "),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "/etc/rampart/rampart.yaml:2:10: listen.https: `nowhere` is not an IP address and port such as [::]:443 \
         or 127.0.0.1:9180"
    );
    assert!(
        lines[2].starts_with("/etc/rampart/rampart.yaml:3:9: listen.http: "),
        "{text}"
    );
}

#[test]
fn many_problems_are_reported_at_once_in_file_order() {
    let yaml = r#"downstream:
  idle_timeout: 60
  max_headers: 0
log: { format: xml }
sites:
  - hosts: [a.test, a.test]
    tls: internal
    upstreams: ["ftp://x"]
  - hosts: [b.test]
"#;
    let problems = problems(yaml);
    let found: Vec<_> = problems
        .iter()
        .map(|p| (p.line, p.column, p.path.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (2, 17, "downstream.idle_timeout"),
            (3, 16, "downstream.max_headers"),
            (4, 16, "log.format"),
            (6, 21, "sites[0].hosts[1]"),
            (8, 17, "sites[0].upstreams[0]"),
            (9, 5, "sites[1]"),
        ],
        "{problems}"
    );
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let (place, reason) = only_problem("sites:\n  - hots: [a.test]\n");
    assert_eq!(place, at(2, 5, "sites[0].hots"));
    assert_eq!(reason, "unknown key `hots`; did you mean `hosts`?");

    let (place, reason) = only_problem("listen:\n  https: \"[::]:443\"\n  admn: \"127.0.0.1:1\"\n");
    assert_eq!(place, at(3, 3, "listen.admn"));
    assert!(reason.contains("did you mean `admin`?"), "{reason}");

    let (place, reason) = only_problem(
        "sites:\n  - hosts: [a.test]\n    tls: { cert: a.pem, key: a.key, chain: b.pem }\n",
    );
    assert_eq!(place, at(3, 37, "sites[0].tls.chain"));
    assert_eq!(
        reason,
        "unknown key `chain`; expected one of: cert, key, acme"
    );

    let (place, reason) = only_problem(&format!("{SITE}    tls: {{ cert: a.pem, key: a.key }}\n"));
    assert_eq!(place, at(5, 5, "sites[0].tls"));
    assert_eq!(reason, "key `tls` appears twice");

    let (place, reason) = only_problem(&format!("{SITE}colour: blue\n"));
    assert_eq!(place, at(5, 1, "colour"));
    assert!(
        reason.contains("expected one of: listen, storage"),
        "{reason}"
    );
}

#[test]
fn structural_errors_carry_position_and_path() {
    let (place, reason) = only_problem("sites:\n  - hosts: a.test\n");
    assert_eq!(place, at(2, 12, "sites[0].hosts"));
    assert_eq!(reason, "expected a list");

    let (place, reason) = only_problem(&format!("downstream:\n  max_headers: many\n{SITE}"));
    assert_eq!(place, at(2, 16, "downstream.max_headers"));
    assert_eq!(reason, "expected an integer");

    let (place, reason) = only_problem(&format!("{SITE}    default: maybe\n"));
    assert_eq!((place.0, place.2.as_str()), (5, "sites[0].default"));
    assert!(reason.contains("true or false"), "{reason}");

    let (place, reason) = only_problem("listen:\n  https: \"[::]:443\"\n  https: \"[::]:8443\"\n");
    assert_eq!(place, at(3, 3, "listen.https"));
    assert_eq!(reason, "key `https` appears twice");

    let (place, reason) = only_problem(
        "sites:\n  - hosts: [a.test]\n    tls: { cert: a.pem }\n    upstreams: [\"http://127.0.0.1:1\"]\n",
    );
    assert_eq!((place.0, place.2.as_str()), (3, "sites[0].tls"));
    assert_eq!(reason, "missing key `key`");
    let (place, reason) = only_problem(&format!("acme:\n  eab:\n    key_id: k\n{SITE}"));
    assert_eq!(place, at(3, 13, "acme.eab"));
    assert_eq!(reason, "missing key `hmac_key` (or `hmac_key_file`)");

    let (place, reason) = only_problem("sites:\n  - hosts: [a.test, [b.test]]\n");
    assert_eq!(place, at(2, 21, "sites[0].hosts[1]"));
    assert_eq!(reason, "expected a string");

    let (place, reason) = only_problem("eab: [1\n");
    assert_eq!((place.0, place.2.as_str()), (1, ""));
    assert!(!reason.is_empty());
    assert!(problems("eab: [1\n").to_string().contains(": (document): "));
}

#[test]
fn headers_with_underscores_are_dropped_unless_told_otherwise() {
    assert_eq!(parse_ok(SITE).headers_with_underscores, Underscores::Drop);
    let config = parse_ok(&format!("headers_with_underscores: reject\n{SITE}"));
    assert_eq!(config.headers_with_underscores, Underscores::Reject);
    let (place, reason) = only_problem(&format!("headers_with_underscores: keep\n{SITE}"));
    assert_eq!(place, at(1, 27, "headers_with_underscores"));
    assert_eq!(reason, "`keep` is not one of drop, reject, allow");
}

/// Writes `text` to `name` in `dir` with permission bits `mode`.
fn write_with_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    fs::write(&path, text).expect("temp dir is writable");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[test]
fn credentials_must_sit_in_files_other_users_cannot_read() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    write_with_mode(dir.path(), "eab.key", "c2VjcmV0\n", 0o600);
    write_with_mode(dir.path(), "open.key", "c2VjcmV0\n", 0o644);
    write_with_mode(dir.path(), "admin.token", "0123456789abcdef0123\n", 0o640);
    write_with_mode(dir.path(), "short.token", "guess\n", 0o600);
    let yaml = |eab: &str, listen: &str| {
        format!(
            "listen:\n  admin: \"127.0.0.1:9180\"\n{listen}acme:\n  eab: {{ key_id: k, {eab} }}\n{SITE}"
        )
    };
    // From files: read, trimmed, private.
    let config = load_written(
        dir.path(),
        &yaml(
            "hmac_key_file: eab.key",
            "  admin_token_file: admin.token\n",
        ),
        0o600,
    )?;
    assert_eq!(
        config.acme.eab.map(|e| e.hmac_key),
        Some(b"secret".to_vec())
    );
    let token = config.listen.admin_token.expect("a token");
    assert_eq!(token.expose(), "0123456789abcdef0123");
    assert_eq!(format!("{token:?}"), "Secret(..)", "never printed");
    // A key file others can read is refused, and so is an inline key in such a config file.
    let problems = load_problems(dir.path(), &yaml("hmac_key_file: open.key", ""), 0o600)?;
    assert!(problems.contains("acme.eab.hmac_key_file: "), "{problems}");
    assert!(
        problems.contains("is open to other users (mode 644)"),
        "{problems}"
    );
    let problems = load_problems(dir.path(), &yaml("hmac_key: c2VjcmV0", ""), 0o644)?;
    assert!(
        problems.contains("acme.eab.hmac_key: the HMAC key is a credential"),
        "{problems}"
    );
    assert!(
        !problems.contains("c2VjcmV0"),
        "the key is never quoted: {problems}"
    );
    assert!(load_written(dir.path(), &yaml("hmac_key: c2VjcmV0", ""), 0o640).is_ok());
    let problems = load_problems(
        dir.path(),
        &yaml("hmac_key: c2VjcmV0, hmac_key_file: eab.key", ""),
        0o600,
    )?;
    assert!(problems.contains("not both"), "{problems}");
    let problems = load_problems(
        dir.path(),
        &yaml(
            "hmac_key_file: eab.key",
            "  admin_token_file: short.token\n",
        ),
        0o600,
    )?;
    assert!(
        problems.contains("shorter than 16 characters"),
        "{problems}"
    );
    Ok(())
}

/// Writes `yaml` as `rampart.yaml` (mode `mode`) in `dir` and loads it.
fn load_written(dir: &Path, yaml: &str, mode: u32) -> Result<Config, ConfigError> {
    load(&write_with_mode(dir, "rampart.yaml", yaml, mode))
}

/// The problems of the written configuration, one per line.
fn load_problems(dir: &Path, yaml: &str, mode: u32) -> Result<String, Box<dyn Error>> {
    match load_written(dir, yaml, mode) {
        Ok(_) => Err("expected problems".into()),
        Err(error) => Ok(error.to_string()),
    }
}

#[test]
fn an_empty_file_needs_a_site() {
    let (place, reason) = only_problem("");
    assert_eq!(place, at(1, 1, "sites"));
    assert_eq!(reason, "at least one site is required");
    assert_eq!(only_problem("sites: []\n").0, at(1, 8, "sites"));
}

#[test]
fn bad_listen_addresses_are_reported() {
    let (place, _) = only_problem(&format!("listen:\n  admin: localhost:9180\n{SITE}"));
    assert_eq!(place, at(2, 10, "listen.admin"));
    let (place, reason) = only_problem(&format!("listen:\n  https: \"[::]:80\"\n{SITE}"));
    assert_eq!(place, at(2, 10, "listen.https"));
    assert_eq!(reason, "same address as listen.http");
    let (place, _) = only_problem(&format!("listen:\n  admin: \"[::]:443\"\n{SITE}"));
    assert_eq!(place, at(2, 10, "listen.admin"));
}

#[test]
fn acme_settings_are_checked() {
    let (place, reason) = only_problem(&format!("acme:\n  directory: http://ca.test/dir\n{SITE}"));
    assert_eq!(place, at(2, 14, "acme.directory"));
    assert_eq!(
        reason,
        "the ACME directory must be an https:// URL, not http://"
    );
    let (_, reason) = only_problem(&format!("acme:\n  directory: letsencrypt-stagin\n{SITE}"));
    assert!(
        reason.contains("did you mean `letsencrypt-staging`?"),
        "{reason}"
    );
    let config = parse_ok(&format!("acme:\n  directory: https://ca.test/dir\n{SITE}"));
    assert_eq!(config.acme.directory, "https://ca.test/dir");

    let (place, _) = only_problem(&format!("acme:\n  email: ops.example.com\n{SITE}"));
    assert_eq!(place, at(2, 10, "acme.email"));
    let (place, _) = only_problem(&format!("acme:\n  key_type: ed25519\n{SITE}"));
    assert_eq!(place, at(2, 13, "acme.key_type"));
    let (place, reason) = only_problem(&format!(
        "acme:\n  eab: {{ key_id: k, hmac_key: \"a+b/\" }}\n{SITE}"
    ));
    assert_eq!(place, at(2, 31, "acme.eab.hmac_key"));
    assert!(
        !reason.contains("a+b/"),
        "the key must not be echoed: {reason}"
    );
    let (place, reason) = only_problem(&format!("acme:\n  ca_bundle: nothing.pem\n{SITE}"));
    assert_eq!(place, at(2, 14, "acme.ca_bundle"));
    assert!(
        reason.starts_with("cannot read /etc/rampart/nothing.pem"),
        "{reason}"
    );
}

#[test]
fn several_cas_are_tried_in_order() {
    let config = parse_ok(&format!(
        "acme:\n  directories:\n    - directory: https://one.test/dir\n      profile: short\n    \
         - directory: letsencrypt\n  fallback_after: 2\n{SITE}"
    ));
    assert_eq!(config.acme.directory, "https://one.test/dir");
    assert_eq!(config.acme.profile.as_deref(), Some("short"));
    assert_eq!(config.acme.fallback_after, 2);
    let cas = config.acme.cas();
    assert_eq!(cas.len(), 2);
    assert_eq!(
        cas[1].directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(cas[1].profile, None);
    // One CA: three failures in a row before the next is tried, once there is a next.
    let single = parse_ok(SITE);
    assert_eq!(single.acme.fallback_after, 3);
    assert!(single.acme.fallbacks.is_empty());

    let problems = problems(&format!(
        "acme:\n  directory: https://one.test/dir\n  profile: p\n  directories:\n    \
         - directory: https://one.test/dir\n    - directory: https://one.test/dir\n{SITE}"
    ))
    .to_string();
    assert!(
        problems
            .contains("acme.directory: with `acme.directories`, give `directory` in each entry"),
        "{problems}"
    );
    assert!(problems.contains("acme.profile: with"), "{problems}");
    assert!(
        problems.contains("acme.directories[1].directory: https://one.test/dir is listed twice"),
        "{problems}"
    );
    let (place, _) = only_problem(&format!(
        "acme:\n  directories:\n    - directory: https://one.test/dir\n    \
         - {{ directory: https://two.test/dir, ca_bundle: none.pem }}\n{SITE}"
    ));
    assert_eq!(place, at(4, 53, "acme.directories[1].ca_bundle"));
    let (place, reason) = only_problem(&format!("acme:\n  directories: []\n{SITE}"));
    assert_eq!(place, at(2, 16, "acme.directories"));
    assert_eq!(reason, "list at least one CA");
    let (place, _) = only_problem(&format!("acme:\n  fallback_after: 0\n{SITE}"));
    assert_eq!(place, at(2, 19, "acme.fallback_after"));
}

#[test]
fn cipher_suites_are_iana_names_including_a_tls13_one() {
    let (place, reason) = only_problem(&format!(
        "downstream:\n  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA265]\n{SITE}"
    ));
    assert_eq!(place, at(2, 43, "downstream.cipher_suites[1]"));
    assert!(
        reason.starts_with("`TLS_AES_128_GCM_SHA265` is not one of TLS_AES_256_GCM_SHA384, "),
        "{reason}"
    );
    assert!(
        reason.ends_with("did you mean `TLS_AES_128_GCM_SHA256`?"),
        "{reason}"
    );
    // rustls's spelling of a TLS 1.3 suite is not the name operators know from OpenSSL.
    let (place, _) = only_problem(&format!(
        "downstream:\n  cipher_suites: [TLS13_AES_128_GCM_SHA256]\n{SITE}"
    ));
    assert_eq!(place, at(2, 19, "downstream.cipher_suites[0]"));
    let (place, reason) = only_problem(&format!(
        "downstream:\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n{SITE}"
    ));
    assert_eq!(place, at(2, 18, "downstream.cipher_suites"));
    assert!(
        reason.starts_with("name at least one TLS 1.3 suite"),
        "{reason}"
    );
    let (place, _) = only_problem(&format!("downstream:\n  cipher_suites: []\n{SITE}"));
    assert_eq!(place, at(2, 18, "downstream.cipher_suites"));
}

#[test]
fn durations_sizes_and_counts_are_checked() {
    let (place, reason) = only_problem(include_str!("../../config/broken/bad-duration.yaml"));
    assert_eq!(place, at(3, 22, "downstream.handshake_timeout"));
    assert_eq!(reason, "`10` has no unit: write 10s or 10ms");
    let (place, _) = only_problem(&format!("downstream:\n  header_timeout: 0\n{SITE}"));
    assert_eq!(place, at(2, 19, "downstream.header_timeout"));
    let (place, _) = only_problem(&format!("downstream:\n  max_header_bytes: 4KiB\n{SITE}"));
    assert_eq!(place, at(2, 21, "downstream.max_header_bytes"));
    let (place, _) = only_problem(&format!("upstream:\n  pool_max_idle: -1\n{SITE}"));
    assert_eq!(place, at(2, 18, "upstream.pool_max_idle"));
    let (place, _) = only_problem(&format!(
        "downstream:\n  h2_max_streams: 4294967296\n{SITE}"
    ));
    assert_eq!(place, at(2, 19, "downstream.h2_max_streams"));
    let (place, _) = only_problem(&format!("shutdown_grace: 30 s\n{SITE}"));
    assert_eq!(place, at(1, 17, "shutdown_grace"));
    assert_eq!(
        parse_ok(&format!("shutdown_grace: 0\n{SITE}")).shutdown_grace,
        Duration::ZERO
    );
}

#[test]
fn log_settings_are_checked() {
    for good in [
        "info",
        "WARN",
        "rampart=debug,info",
        "rampart::proxy=trace, hyper=off",
    ] {
        assert_eq!(
            parse_ok(&format!("log: {{ level: \"{good}\" }}\n{SITE}"))
                .log
                .level,
            good
        );
    }
    for bad in ["loud", "rampart", "=info", "rampart=", "info,", "a b=info"] {
        let (place, _) = only_problem(&format!("log: {{ level: \"{bad}\" }}\n{SITE}"));
        assert_eq!(place, at(1, 15, "log.level"), "{bad:?}");
    }
    let (_, reason) = only_problem(&format!("log: {{ format: jsno }}\n{SITE}"));
    assert_eq!(
        reason,
        "`jsno` is not one of json, text; did you mean `json`?"
    );
}

#[test]
fn broken_example_files_point_at_the_problem() {
    let cases = [
        (
            include_str!("../../config/broken/unknown-key.yaml"),
            at(5, 5, "sites[0].hostz"),
        ),
        (
            include_str!("../../config/broken/duplicate-host.yaml"),
            at(6, 13, "sites[1].hosts[0]"),
        ),
        (
            include_str!("../../config/broken/bad-upstream.yaml"),
            at(5, 42, "sites[0].upstreams[1]"),
        ),
        (
            include_str!("../../config/broken/two-defaults.yaml"),
            at(9, 14, "sites[1].default"),
        ),
        (
            include_str!("../../config/broken/bad-duration.yaml"),
            at(3, 22, "downstream.handshake_timeout"),
        ),
    ];
    for (yaml, expected) in cases {
        let (place, reason) = only_problem(yaml);
        assert_eq!(place, expected, "{reason}");
        // Each file says in its first line where the problem is.
        let first_line = yaml.lines().next().unwrap_or_default();
        let promise = format!("expect {}:{} {}", expected.0, expected.1, expected.2);
        assert!(
            first_line.contains(&promise),
            "{first_line:?} should contain {promise:?}"
        );
    }
}
