//! The exec provider: `COMMAND present|cleanup FQDN VALUE`, lego's convention, so any DNS API
//! can be scripted. The program must exit 0 once the record is written (or removed).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{DnsError, TxtRecord};

/// How long the program may run.
const TIMEOUT: Duration = Duration::from_secs(120);
/// How much of its stderr an error quotes (the end, where the reason usually is).
const STDERR_TAIL: usize = 400;

/// Runs the program for `action` on `record`.
pub(super) async fn run(
    command: &Path,
    action: &'static str,
    record: &TxtRecord,
) -> Result<(), DnsError> {
    let failed = |reason: String| DnsError::Exec {
        command: command.to_owned(),
        action,
        fqdn: record.fqdn.clone(),
        reason,
    };
    // lego passes the name with its trailing dot.
    let fqdn = format!("{}.", record.fqdn);
    let child = Command::new(command)
        .args([action, fqdn.as_str(), record.value.as_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // A timed-out program must not outlive the attempt.
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| failed(format!("cannot start it: {error}")))?;
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("still running after {} s", TIMEOUT.as_secs())))?
        .map_err(|error| failed(format!("cannot wait for it: {error}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let start = stderr
        .char_indices()
        .rev()
        .nth(STDERR_TAIL)
        .map_or(0, |(index, _)| index);
    Err(failed(format!("{}: {}", output.status, &stderr[start..])))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let path = dir.join("dns.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[tokio::test]
    async fn the_program_gets_action_name_and_value_and_its_failure_is_quoted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let seen = dir.path().join("seen");
        let ok = script(dir.path(), &format!("echo \"$@\" > {}", seen.display()));
        let record = TxtRecord {
            fqdn: "_acme-challenge.a.test".into(),
            value: "abc".into(),
        };
        run(&ok, "present", &record).await.expect("exit 0");
        assert_eq!(
            std::fs::read_to_string(&seen).expect("ran"),
            "present _acme-challenge.a.test. abc\n"
        );
        let bad = script(dir.path(), "echo 'zone not found' >&2; exit 3");
        let error = run(&bad, "cleanup", &record).await.expect_err("exit 3");
        let text = error.to_string();
        assert!(text.contains("exit status: 3: zone not found"), "{text}");
        assert!(text.contains("cleanup _acme-challenge.a.test"), "{text}");
    }
}
