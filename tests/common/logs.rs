//! Capturing what Rampart logs: a subscriber installed once per test binary (tracing allows one
//! per process) writing into memory, for tests that assert on log lines.

use std::io::Write;
use std::sync::{Mutex, Once};

/// Every log line this test binary writes.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, as `log.format: json` writes them.
    Json,
    /// Plain text without colours, as `log.format: text` writes them.
    Text,
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing lines that pass `filter` (an `EnvFilter` directive). The first call in a
/// test binary decides format and filter; later calls do nothing.
pub fn capture(format: Format, filter: &'static str) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| Capture);
        match format {
            Format::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init(),
            Format::Text => builder.with_ansi(false).init(),
        }
    });
}

/// Everything captured so far.
pub fn captured() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
