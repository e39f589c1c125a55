//! systemd integration of the `rampart` binary: sd_notify messages on a test NOTIFY_SOCKET
//! (READY, RELOADING with MONOTONIC_USEC, STOPPING, watchdog pings) and socket activation
//! through `systemd-socket-activate`, all on loopback.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::{Child, Command};

use common::{HttpClient, TestCa, TlsClient, WAIT, free_addr, within};

/// Where Debian's `systemd` package installs the socket activation helper.
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

#[tokio::test]
async fn notifies_ready_reloading_and_stopping() {
    let site = Site::new();
    let mut notify = Notifications::bind(site.dir());
    let mut child = site.spawn(&notify, &[]);

    let ready = notify.next("READY=1 at start").await;
    assert_eq!(
        field(&ready, "READY"),
        Some("1"),
        "first message: {ready:?}"
    );
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains(&site.https.to_string())),
        "READY names the listener: {ready:?}"
    );
    // READY=1 promises a bound listener and published certificates: both work at once.
    let reply = site.get(site.https).await;
    assert_eq!(reply.text(), "served\n");

    kill("-HUP", &child);
    let first = notify.reloading("SIGHUP").await;
    let done = notify.next("READY=1 after the reload").await;
    assert_eq!(field(&done, "READY"), Some("1"), "{done:?}");
    assert!(
        field(&done, "STATUS").is_some_and(|s| s.contains("reloaded")),
        "{done:?}"
    );

    // A broken file (seen by the file watcher) is still RELOADING=1 … READY=1, and says it failed.
    std::fs::write(site.config(), "sites: [").expect("temp dir is writable");
    let second = notify.reloading("the file change").await;
    assert!(
        second > first,
        "MONOTONIC_USEC grows: {first} then {second}"
    );
    let failed = notify.next("READY=1 after the failed reload").await;
    assert_eq!(field(&failed, "READY"), Some("1"), "{failed:?}");
    assert!(
        field(&failed, "STATUS").is_some_and(|s| s.contains("reload failed")),
        "{failed:?}"
    );
    assert_eq!(site.get(site.https).await.text(), "served\n");

    kill("-TERM", &child);
    let stopping = notify.next("STOPPING=1 on SIGTERM").await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert!(wait_exit(&mut child, &site).await.success());
}

#[tokio::test]
async fn pings_the_watchdog_at_half_the_interval_until_stopping() {
    let site = Site::new();
    let mut notify = Notifications::bind(site.dir());
    // 200 ms: pings every 100 ms.
    let mut child = site.spawn(&notify, &[("WATCHDOG_USEC", "200000")]);
    let ready = notify.next("READY=1").await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");

    let first = notify.next("WATCHDOG=1").await;
    assert_eq!(field(&first, "WATCHDOG"), Some("1"), "{first:?}");
    let started = tokio::time::Instant::now();
    for _ in 0..4 {
        let message = notify.next("WATCHDOG=1").await;
        assert_eq!(field(&message, "WATCHDOG"), Some("1"), "{message:?}");
    }
    let counted = started.elapsed();
    // Five pings at 100 ms take ~400 ms after the first; at the full interval they would take 800.
    assert!(
        counted < Duration::from_millis(700),
        "pings are too slow for WatchdogSec: {counted:?}"
    );

    kill("-TERM", &child);
    loop {
        let message = notify.next("STOPPING=1").await;
        if field(&message, "STOPPING") == Some("1") {
            break;
        }
        assert_eq!(field(&message, "WATCHDOG"), Some("1"), "{message:?}");
    }
    assert!(wait_exit(&mut child, &site).await.success());
    // Pings stop when shutdown begins: nothing follows STOPPING=1.
    if let Ok(Some(late)) = notify.try_next() {
        panic!("message after STOPPING=1: {late:?}");
    }
}

#[tokio::test]
async fn watchdog_for_another_process_is_ignored() {
    let site = Site::new();
    let mut notify = Notifications::bind(site.dir());
    let mut child = site.spawn(
        &notify,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    let ready = notify.next("READY=1").await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    // Five ping intervals of silence: a negative can only be observed over a window.
    let mut buf = [0; 64];
    let quiet = tokio::time::timeout(Duration::from_millis(500), notify.socket.recv(&mut buf));
    assert!(quiet.await.is_err(), "pinged a watchdog meant for pid 1");
    kill("-TERM", &child);
    assert!(wait_exit(&mut child, &site).await.success());
}

#[tokio::test]
async fn serves_on_sockets_passed_by_systemd() {
    assert!(
        Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing: apt-get install systemd (scripts/test.sh installs it)"
    );
    // The config names other ports: the named sockets win, and nothing is bound there.
    let site = Site::new();
    let (https, http) = (free_addr(), free_addr());
    let mut notify = Notifications::bind(site.dir());
    let mut child = Command::new(SOCKET_ACTIVATE)
        .args(["-l", &https.to_string(), "-l", &http.to_string()])
        .args(["--fdname=https:http", "-E"])
        .arg(format!("NOTIFY_SOCKET={}", notify.path.display()))
        .args([env!("CARGO_BIN_EXE_rampart"), "run", "-c"])
        .arg(site.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(site.stderr_file())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate starts");

    // systemd-socket-activate listens first and starts Rampart on the first connection, as a
    // socket unit does: that connection and this request wait in the kernel's queue until
    // Rampart accepts them.
    drop(first_connection(http).await);
    let reply = within(WAIT, "a reply through the passed socket", site.get(https)).await;
    assert_eq!(reply.text(), "served\n", "{}", site.stderr());
    let ready = notify.next("READY=1").await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains(&https.to_string())),
        "{ready:?}"
    );
    assert!(
        TcpStream::connect(site.https).await.is_err(),
        "Rampart bound the configured address instead of using the passed socket"
    );
    // The plain socket is Rampart's :80 role: a redirect to https.
    let plain = common::plain_get(http, "localhost", "/").await;
    assert!(plain.status.is_redirection(), "{plain:?}");

    kill("-TERM", &child);
    assert!(wait_exit(&mut child, &site).await.success());
}

#[tokio::test]
async fn refuses_a_passed_socket_that_matches_no_listener() {
    assert!(
        Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing: apt-get install systemd (scripts/test.sh installs it)"
    );
    let site = Site::new();
    // Unnamed sockets match by address: the first is listen.https, the second is nothing.
    let stray = free_addr();
    let mut child = Command::new(SOCKET_ACTIVATE)
        .args(["-l", &site.https.to_string(), "-l", &stray.to_string()])
        .args([env!("CARGO_BIN_EXE_rampart"), "run", "-c"])
        .arg(site.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(site.stderr_file())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate starts");
    // Start it with a connection; Rampart then refuses to run.
    let _trigger = first_connection(site.https).await;
    let status = wait_exit(&mut child, &site).await;
    assert!(!status.success());
    let stderr = site.stderr();
    assert!(
        stderr.contains(&stray.to_string()) && stderr.contains("matches neither"),
        "{stderr}"
    );
}

/// A temporary directory with a certificate, a key and a config serving `localhost`.
struct Site {
    dir: tempfile::TempDir,
    ca: TestCa,
    https: SocketAddr,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new();
        ca.leaf(&["localhost"]).write(dir.path(), "site");
        let (https, http) = (free_addr(), free_addr());
        let config = format!(
            "listen: {{ https: \"{https}\", http: \"{http}\" }}\n\
             storage: store\n\
             log: {{ format: text, level: info }}\n\
             shutdown_grace: 2s\n\
             sites:\n\
             \x20 - hosts: [localhost]\n\
             \x20   tls: {{ cert: site.pem, key: site.key }}\n\
             \x20   routes: [{{ path: /, respond: {{ body: \"served\\n\" }} }}]\n"
        );
        std::fs::write(dir.path().join("rampart.yaml"), config).expect("temp dir is writable");
        Self { dir, ca, https }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.dir().join("rampart.yaml")
    }

    fn stderr_file(&self) -> std::fs::File {
        std::fs::File::create(self.dir().join("rampart.stderr")).expect("temp dir is writable")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir().join("rampart.stderr")).unwrap_or_default()
    }

    /// `rampart run` with NOTIFY_SOCKET and `env`, killed on drop.
    fn spawn(&self, notify: &Notifications, env: &[(&str, &str)]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["run", "-c"])
            .arg(self.config())
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.stderr_file())
            .kill_on_drop(true)
            .spawn()
            .expect("the rampart binary starts")
    }

    /// GET https://localhost/ on `addr`, over TLS verified against the test CA.
    async fn get(&self, addr: SocketAddr) -> common::Reply {
        let tls = within(
            WAIT,
            "TLS handshake",
            TlsClient::new(self.ca.roots()).connect(addr, Some("localhost")),
        )
        .await
        .unwrap_or_else(|err| panic!("handshake with {addr}: {err}\n{}", self.stderr()));
        HttpClient::handshake(tls).await.get("localhost", "/").await
    }
}

/// The test's end of NOTIFY_SOCKET.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notifications {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binds a unix datagram socket");
        Self { socket, path }
    }

    /// The next datagram, failing the test after [`WAIT`].
    async fn next(&mut self, what: &str) -> String {
        let mut buf = vec![0; 4096];
        let len = within(WAIT, what, self.socket.recv(&mut buf))
            .await
            .expect("receives a datagram");
        String::from_utf8(buf[..len].to_vec()).expect("sd_notify messages are text")
    }

    /// A datagram already queued, if any.
    fn try_next(&mut self) -> std::io::Result<Option<String>> {
        let mut buf = vec![0; 4096];
        match self.socket.try_recv(&mut buf) {
            Ok(len) => Ok(Some(String::from_utf8_lossy(&buf[..len]).into_owned())),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Waits for RELOADING=1 and returns its MONOTONIC_USEC.
    async fn reloading(&mut self, cause: &str) -> u64 {
        let message = self.next(&format!("RELOADING=1 after {cause}")).await;
        assert_eq!(field(&message, "RELOADING"), Some("1"), "{message:?}");
        let usec = field(&message, "MONOTONIC_USEC")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {message:?}"));
        assert!(usec > 0, "{message:?}");
        usec
    }
}

/// The value of `KEY=` in a newline-separated sd_notify message.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// Sends a signal through kill(1), which avoids a libc dependency.
fn kill(signal: &str, child: &Child) {
    let pid = child.id().expect("the child is running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// The first connection to a socket `systemd-socket-activate` is about to listen on: it runs as
/// a separate process, so its readiness is observed by a bounded number of attempts.
async fn first_connection(addr: SocketAddr) -> TcpStream {
    within(WAIT, "systemd-socket-activate listening", async {
        loop {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return tcp,
                // Not listening yet: a short pause between attempts, not a readiness guess.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

async fn wait_exit(child: &mut Child, site: &Site) -> ExitStatus {
    match tokio::time::timeout(WAIT, child.wait()).await {
        Ok(status) => status.expect("child status"),
        Err(_) => panic!("rampart did not exit in time:\n{}", site.stderr()),
    }
}
