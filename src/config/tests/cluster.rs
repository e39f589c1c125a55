//! Tests of `cluster:` validation: endpoints, credentials, node name, lock lease and the sealing
//! key file.

use std::error::Error;

use base64::Engine as _;

use super::*;

/// `cluster:` with `body` under it, after a valid site.
fn with_cluster(body: &str) -> String {
    format!("{SITE}cluster:\n{body}")
}

/// A private key file holding `bytes` in base64.
fn key_file(dir: &Path, bytes: &[u8], mode: u32) -> PathBuf {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    write_with_mode(dir, "cluster.key", &format!("{text}\n"), mode)
}

#[test]
fn a_cluster_section_is_read_with_its_defaults() -> Result<(), Box<dyn Error>> {
    assert_eq!(parse_ok(SITE).cluster, None);
    let dir = tempfile::tempdir()?;
    let key = key_file(dir.path(), &[7; 32], 0o600);
    let config = parse_ok(&with_cluster(&format!(
        "  etcd:\n    endpoints: [\"http://127.0.0.2:2379\", \"http://127.0.0.3:2379/\"]\n  \
         node: edge-1\n  encryption_key_file: {}\n",
        key.display()
    )));
    let cluster = config.cluster.expect("cluster section");
    assert_eq!(
        cluster.etcd.endpoints,
        ["http://127.0.0.2:2379", "http://127.0.0.3:2379"]
    );
    assert_eq!(cluster.etcd.prefix, "/rampart/");
    assert_eq!(cluster.etcd.tls, None);
    assert_eq!(cluster.node, "edge-1");
    assert_eq!(cluster.lock_ttl, Duration::from_secs(30));
    assert_eq!(cluster.encryption_key.expose(), &[7; 32]);
    assert_eq!(format!("{:?}", cluster.encryption_key), "SealKey(..)");
    Ok(())
}

#[test]
fn the_sealing_key_must_be_32_private_bytes_and_is_never_quoted() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let yaml = |key: &Path| {
        with_cluster(&format!(
            "  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n  node: n\n  \
             encryption_key_file: {}\n",
            key.display()
        ))
    };
    let short = key_file(dir.path(), &[1; 16], 0o600);
    let (place, reason) = only_problem(&yaml(&short));
    assert_eq!(place, at(9, 24, "cluster.encryption_key_file"));
    assert!(
        reason.starts_with("holds 16 bytes: expected 32 random bytes"),
        "{reason}"
    );

    let open = key_file(dir.path(), &[1; 32], 0o644);
    let (_, reason) = only_problem(&yaml(&open));
    assert!(reason.contains("open to other users"), "{reason}");

    let garbage = write_with_mode(dir.path(), "cluster.key", "not base64 at all!\n", 0o600);
    let (_, reason) = only_problem(&yaml(&garbage));
    assert!(reason.starts_with("not base64"), "{reason}");
    assert!(
        !reason.contains("at all"),
        "the key's text is never quoted: {reason}"
    );
    Ok(())
}

#[test]
fn endpoints_credentials_and_lease_are_checked_together() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let key = key_file(dir.path(), &[1; 32], 0o600);
    let problems = problems(&with_cluster(&format!(
        "  etcd:\n    endpoints: [\"127.0.0.1:2379\", \"https://e:2379\"]\n    prefix: rampart\n    \
         username: rampart\n  node: \"edge 1\"\n  lock_ttl: 2s\n  encryption_key_file: {}\n",
        key.display()
    )));
    let found: Vec<(String, String)> = problems
        .iter()
        .map(|p| (p.path.clone(), p.reason.clone()))
        .collect();
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cluster.etcd.endpoints[0]",
            "cluster.etcd.prefix",
            "cluster.etcd.username",
            "cluster.node",
            "cluster.lock_ttl",
        ],
        "{problems}"
    );
    assert!(found[0].1.contains("http://HOST:PORT"), "{}", found[0].1);
    assert!(found[2].1.contains("password_file"), "{}", found[2].1);
    assert_eq!(found[4].1, "must be from 5s to 600s");

    let https = problems_of(&with_cluster(&format!(
        "  etcd:\n    endpoints: [\"https://e:2379\"]\n  node: n\n  encryption_key_file: {}\n",
        key.display()
    )));
    assert!(https.contains("need cluster.etcd.tls.ca"), "{https}");
    Ok(())
}

/// Every problem of `yaml` as printed.
fn problems_of(yaml: &str) -> String {
    problems(yaml).to_string()
}
