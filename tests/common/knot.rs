//! Knot DNS, a real authoritative server, as a child process for end-to-end DNS-01 tests.
//!
//! [`Knot::start`] runs `knotd` in the foreground on a loopback port free for both UDP and TCP,
//! with every file (config, zone files, journal and timer databases, pid file, control socket,
//! log) in a temp dir. Each zone answers 127.0.0.1 for the apex, `ns` and every other name (a
//! wildcard), with 1-second TTLs (negative answers too), and accepts RFC 2136 updates signed with
//! the TSIG key `rampart` (hmac-sha256, a random secret per run). It waits until knotd accepts
//! TCP connections and has loaded every zone, and kills it on `Drop`. [`Knot::txt`] and
//! [`Knot::updates`] are for assertions; point Pebble at [`Knot::addr`] with
//! `PebbleOptions::dns_server`. Binaries come from `KNOTD` / `KDIG` or `PATH` (then `/usr/sbin`,
//! `/usr/bin`); when missing the test fails with the install command (these tests never skip).
//!
//! A test binary declares this next to `pebble` (whose `free_dns_port` it uses):
//! `#[path = "common/pebble.rs"] mod pebble;` and `#[path = "common/knot.rs"] mod knot;`.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tempfile::TempDir;

use super::pebble::free_dns_port;

/// How long knotd may take to listen and load its zones.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The message a missing Knot produces; the README's test command installs it.
const INSTALL_HINT: &str = "knot not found: run `apt-get install -y knot knot-dnsutils`";
/// The TSIG key's name, in knot.conf and on the wire.
const KEY_NAME: &str = "rampart";
/// knotd's stdout and stderr, in the harness dir.
const LOG: &str = "knotd.log";

/// A running knotd serving test zones, killed on drop.
pub struct Knot {
    dir: TempDir,
    child: Child,
    port: u16,
    secret: String,
    zones: Vec<String>,
}

impl Knot {
    /// Starts knotd serving `zones` (e.g. `&["w.test", "x.test"]`), each with SOA, NS
    /// `ns.<zone>`, `ns A 127.0.0.1`, `@ A 127.0.0.1` and `* A 127.0.0.1`, updatable with the
    /// TSIG key named "rampart" (hmac-sha256).
    ///
    /// # Panics
    /// With [`INSTALL_HINT`] when knot is not installed, or with knotd's log when it does not
    /// come up.
    pub fn start(zones: &[&str]) -> Self {
        let knotd = binary("KNOTD", "knotd");
        // Look for kdig too, so a missing knot-dnsutils fails before anything starts.
        binary("KDIG", "kdig");
        assert!(!zones.is_empty(), "Knot::start needs at least one zone");
        let zones: Vec<String> = zones
            .iter()
            .map(|zone| zone.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let dir = tempfile::tempdir().expect("temp dir for knot");
        // Without it every update fails with "DDNS, processing failed (not exists)".
        fs::create_dir(dir.path().join("db")).expect("create knot's db dir");
        for zone in &zones {
            fs::write(dir.path().join(format!("{zone}.zone")), zone_file(zone))
                .expect("write zone file");
        }
        let secret = STANDARD.encode(rand::random::<[u8; 32]>());
        // A port found free may be taken by another test's socket before knotd binds it (knotd
        // then exits with "address already in use"): try new ones.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_dns_port();
            fs::write(
                dir.path().join("knot.conf"),
                config(dir.path(), port, &secret, &zones),
            )
            .expect("write knot.conf");
            match spawn(&knotd, dir.path(), port, &zones) {
                Ok(child) => {
                    return Self {
                        dir,
                        child,
                        port,
                        secret,
                        zones,
                    };
                }
                Err(log) if attempt < 5 && log.contains("address already in use") => {}
                Err(log) => panic!("knotd did not start:\n{log}"),
            }
        }
    }

    /// The port knotd answers on, UDP and TCP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. for `PebbleOptions::dns_server` or Rampart's DNS-01 server.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The TSIG key name updates must be signed with: "rampart".
    pub fn key_name(&self) -> &str {
        KEY_NAME
    }

    /// The TSIG secret (hmac-sha256, 32 random bytes), base64.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Writes the TSIG secret (base64 and a newline) to a file in the harness dir, mode 0600,
    /// and returns its path, for configs that reference a secret file.
    pub fn secret_file(&self) -> PathBuf {
        let path = self.dir.path().join("tsig.secret");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("create TSIG secret file");
        writeln!(file, "{}", self.secret).expect("write TSIG secret file");
        path
    }

    /// The zones served, lowercase without the trailing dot.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// TXT records of `name` as knot serves them now (`kdig @127.0.0.1 -p PORT TXT name
    /// +short`), quotes stripped (a record's strings joined), sorted; empty when there are none.
    ///
    /// # Panics
    /// When kdig gets no answer, with knotd's log.
    pub fn txt(&self, name: &str) -> Vec<String> {
        let kdig = binary("KDIG", "kdig");
        let output = Command::new(&kdig)
            .args(["@127.0.0.1", "-p", &self.port.to_string()])
            .args(["+short", "+timeout=2", "+retry=1", "TXT", name])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("{INSTALL_HINT} ({}: {error})", kdig.display()));
        assert!(
            output.status.success(),
            "kdig TXT {name} failed ({}):\n{}{}\nknotd log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        let mut records: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains('"'))
            // `"abc" "def"` is one record of two strings: its text is `abcdef`.
            .map(|line| line.split('"').skip(1).step_by(2).collect())
            .collect();
        records.sort();
        records
    }

    /// knotd's log so far (debug level: it also shows each update's ACL and TSIG verdict).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default()
    }

    /// Number of DNS UPDATE messages knot applied so far (answered NOERROR), over all zones.
    ///
    /// knotd merges the updates queued for a zone into one transaction, logged as
    /// `[ZONE.] DDNS, processing N updates`, then a `[ZONE.] DDNS, incoming, remote ADDR, ...`
    /// warning for each message it skips (prerequisites not met, broken format), then
    /// `[ZONE.] DDNS, finished, serial A -> B, ...` or `DDNS, finished, no changes to the zone
    /// were made` when the transaction succeeds (every other message applied; one that changes
    /// nothing, like deleting an absent record, still counts), or `DDNS, processing failed
    /// (...)` when it does not (nothing applied). Counting `finished` lines alone would count
    /// transactions, and concurrent updates share one. Updates refused for their key (`ACL,
    /// denied` or `TSIG, ... verification failed` at debug level) never reach the queue.
    pub fn updates(&self) -> usize {
        let mut pending: HashMap<String, usize> = HashMap::new();
        let mut applied = 0;
        for line in self.log().lines() {
            let Some((head, event)) = line.split_once("] DDNS, ") else {
                continue;
            };
            let Some((_, zone)) = head.rsplit_once('[') else {
                continue;
            };
            let zone = zone.to_owned();
            if event.starts_with("processing failed") {
                pending.remove(&zone);
            } else if let Some(count) = event
                .strip_prefix("processing ")
                .and_then(|rest| rest.strip_suffix(" updates"))
                .and_then(|count| count.parse().ok())
            {
                pending.insert(zone, count);
            } else if event.starts_with("incoming, ") {
                if let Some(count) = pending.get_mut(&zone) {
                    *count = count.saturating_sub(1);
                }
            } else if event.starts_with("finished, ") {
                applied += pending.remove(&zone).unwrap_or(0);
            }
        }
        applied
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        // Best effort: a child that already exited cannot be killed, and that is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// knot.conf for `zones` on `port`, with all state under `dir`.
fn config(dir: &Path, port: u16, secret: &str, zones: &[String]) -> String {
    let dir = dir.display();
    let mut config = format!(
        r#"server:
  listen: 127.0.0.1@{port}
  rundir: "{dir}"

log:
  - target: stderr
    any: debug

key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {secret}

acl:
  - id: update
    key: {KEY_NAME}
    action: update

template:
  - id: default
    storage: "{dir}"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: changes

database:
  storage: "{dir}/db"

zone:
"#
    );
    for zone in zones {
        writeln!(config, "  - domain: {zone}\n    acl: update").expect("write to a String");
    }
    config
}

/// The zone file of `zone`: everything in it is 127.0.0.1, and every TTL (negative ones too,
/// the SOA's last field) is 1 second, so nothing that caches answers stays stale.
fn zone_file(zone: &str) -> String {
    format!(
        "$ORIGIN {zone}.
$TTL 1
@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 1
@ NS ns.{zone}.
ns A 127.0.0.1
@ A 127.0.0.1
* A 127.0.0.1
"
    )
}

/// Starts knotd and waits until it accepts TCP connections on `port` and has loaded every zone;
/// its log if it exits or stalls first.
fn spawn(knotd: &Path, dir: &Path, port: u16, zones: &[String]) -> Result<Child, String> {
    let log_path = dir.join(LOG);
    let log = fs::File::create(&log_path).expect("create knotd.log");
    // knotd stays in the foreground unless given -d.
    let mut child = Command::new(knotd)
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone knotd.log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("{INSTALL_HINT} ({}: {error})", knotd.display()));
    let ready = wait_ready(port, zones, &mut child, &log_path);
    if ready.is_err() {
        // Exited already, or stalled: it must not outlive the attempt.
        let _ = child.kill();
        let _ = child.wait();
    }
    ready.map(|()| child)
}

/// Polls until `port` accepts a connection and the log shows every zone loaded (knotd listens
/// before it loads zones, and answers SERVFAIL for them until then).
fn wait_ready(port: u16, zones: &[String], child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let loaded = zones
            .iter()
            .all(|zone| text.contains(&format!("[{zone}.] loaded, serial")));
        if loaded && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "knotd exited with {status} before serving on {port}:\n{text}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "knotd did not serve every zone on {port} after {READY_TIMEOUT:?}:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `env` if set, else `name` on `PATH`, else in /usr/sbin or /usr/bin (knotd lives in
/// /usr/sbin, which a non-root `PATH` may lack).
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{INSTALL_HINT} (looked for `{name}` in PATH, /usr/sbin, /usr/bin; or set {env})"
            )
        })
}
