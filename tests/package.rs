//! What the Debian package installs agrees with itself: the packaged config is valid and
//! production-shaped, and the socket unit listens where that config says. The .deb itself is
//! built and inspected by scripts/check-deb.sh (after `cargo test` in scripts/test.sh).

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::rampart_command;

const PACKAGED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rampart.deb.yaml");

#[test]
fn packaged_config_passes_rampart_check() {
    let output = rampart_command(&["check", "-c", PACKAGED_CONFIG])
        .output()
        .expect("the rampart binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn packaged_config_serves_the_standard_ports_from_the_state_directory() {
    let config = rampart::config::load(Path::new(PACKAGED_CONFIG)).expect("valid");
    assert_eq!(
        config.listen.https,
        "[::]:443".parse::<SocketAddr>().expect("literal")
    );
    assert_eq!(
        config.listen.http,
        Some("[::]:80".parse::<SocketAddr>().expect("literal"))
    );
    // The unit's StateDirectory=rampart: the only writable place under ProtectSystem=strict.
    assert_eq!(config.storage, Path::new("/var/lib/rampart"));
}

#[test]
fn socket_unit_listens_where_the_packaged_config_does() {
    let unit = unit("rampart.socket");
    let ports: Vec<&str> = directives(&unit, "ListenStream").collect();
    // A bare port is [::]:PORT, which Rampart matches to `[::]:PORT` in `listen:`.
    assert_eq!(ports, ["443", "80"], "{unit}");
    let config = rampart::config::load(Path::new(PACKAGED_CONFIG)).expect("valid");
    assert_eq!(
        [
            Some(config.listen.https.port()),
            config.listen.http.map(|http| http.port())
        ],
        [Some(443), Some(80)]
    );
}

#[test]
fn service_unit_uses_notify_readiness_and_the_watchdog() {
    let unit = unit("rampart.service");
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("User", "rampart"),
        ("StateDirectory", "rampart"),
        (
            "ExecStart",
            "/usr/bin/rampart run -c /etc/rampart/rampart.yaml",
        ),
    ] {
        assert_eq!(
            directives(&unit, key).collect::<Vec<_>>(),
            [value],
            "{key}= in rampart.service"
        );
    }
}

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The values of `KEY=` lines, comments skipped.
fn directives<'a>(unit: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> {
    unit.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}
