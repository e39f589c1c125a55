//! Installs the process-wide `tracing` subscriber: text or JSON lines on stderr.
//!
//! Called once by `main` after the configuration is loaded.

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Installs the subscriber for `log`. `RUST_LOG`, when set, overrides the configured level.
/// A second call (tests starting several servers) keeps the first subscriber.
pub fn init(log: &Log) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into journald or files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // Already installed means a test harness or an earlier call won; keeping it is right.
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
