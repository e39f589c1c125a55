//! The `rampart` binary as a child process: for the CLI (`check`, `version`) and for signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A `rampart` command with `args`, ready to run.
pub fn rampart_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"));
    command.args(args).stdin(Stdio::null());
    command
}

/// What `rampart certs -c CONFIG --json` prints, parsed; fails the test if it fails.
pub fn certs_json(config: &Path) -> serde_json::Value {
    let output = rampart_command(&[
        "certs",
        "-c",
        config.to_str().expect("utf-8 path"),
        "--json",
    ])
    .output()
    .expect("rampart certs runs");
    assert!(
        output.status.success(),
        "rampart certs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("rampart certs --json prints JSON")
}

/// A loopback address that was free a moment ago (bound, then released) for the child to bind.
pub fn free_addr() -> SocketAddr {
    super::refused_addr()
}

/// `rampart run -c CONFIG`, killed on drop. Its stderr goes to a file for failure messages.
pub struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    /// Starts the binary and waits until `https` accepts connections: the process is separate,
    /// so readiness is observed from outside, by a bounded number of connection attempts.
    pub async fn run(config: &Path, https: SocketAddr) -> Self {
        let log = config.with_extension("stderr");
        let stderr = std::fs::File::create(&log).expect("temp dir is writable");
        let child = Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["run", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the rampart binary starts");
        let mut binary = Self { child, log };
        binary.wait_listening(https).await;
        binary
    }

    async fn wait_listening(&mut self, https: SocketAddr) {
        let deadline = Instant::now() + super::WAIT;
        for _attempt in 0..500 {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!(
                    "rampart exited with {status} before listening:\n{}",
                    self.stderr()
                );
            }
            if TcpStream::connect(https).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rampart did not listen on {https} in time:\n{}",
                self.stderr()
            );
            // Polling a separate process: a short pause between attempts, not a readiness guess.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("rampart did not listen on {https}:\n{}", self.stderr());
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the child is running")
    }

    /// Sends SIGTERM through kill(1), which avoids a libc dependency.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Kills the process at once (SIGKILL), as a crash or the OOM killer would, and reaps it.
    pub async fn sigkill(&mut self) {
        self.child.kill().await.expect("kill the child");
    }

    /// Waits for the process to exit, failing after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("child status"),
            Err(_) => panic!("rampart did not exit within {limit:?}:\n{}", self.stderr()),
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
