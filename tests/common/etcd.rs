//! A real single-member etcd as a child process, for the cluster tests.
//!
//! [`Etcd::start`] runs Debian's `etcd` (or `ETCD`) on free loopback ports with its data in a
//! temp dir and waits until it answers a read. [`Etcd::stop`] and [`Etcd::resume`] take it away
//! and bring it back on the same ports with the same data, for the outage tests. Killed on drop.
//! A missing binary fails the test with the install command (these tests never skip).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The message a missing etcd produces; the README's test command installs it.
const INSTALL_HINT: &str = "etcd not found: run `apt-get install -y etcd-server`";

/// One etcd member on loopback.
pub struct Etcd {
    child: Option<Child>,
    /// With TLS: (server cert, server key, client CA) files, and clients must present a cert.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it serves reads.
    ///
    /// # Panics
    /// With [`INSTALL_HINT`] when `etcd` is not installed, or when it does not come up.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts etcd serving https with `cert` and `key`, requiring client certificates signed
    /// by `client_ca`.
    pub async fn start_tls(cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Self {
        Self::start_with(Some((cert, key, client_ca))).await
    }

    async fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Self {
        let binary = std::env::var_os("ETCD")
            .map(PathBuf::from)
            .or_else(|| find_on_path("etcd"))
            .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let mut etcd = Self {
            child: None,
            tls,
            binary,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.resume().await;
        etcd
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (as a crash would); its data stays for [`Etcd::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it serves reads.
    pub async fn resume(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log file");
        let mut command = Command::new(&self.binary);
        if let Some((cert, key, client_ca)) = &self.tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(client_ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; {INSTALL_HINT}",
                    self.binary.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.tls.is_some()
                && std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
            {
                return;
            }
            if self.tls.is_none()
                && let Ok(mut client) = etcd_client::Client::connect([self.endpoint()], None).await
                && tokio::time::timeout(Duration::from_secs(2), client.get("/", None))
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of this member.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("etcd client")
    }

    /// Every key and value under `prefix`.
    pub async fn dump(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut client = self.client().await;
        let found = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("etcd answers");
        found
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect()
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.is_file())
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}
