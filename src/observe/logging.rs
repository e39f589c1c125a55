//! Installs the process-wide `tracing` subscriber: text or JSON lines on stderr.
//!
//! Called once by `main` after the configuration is loaded.

use std::time::Duration;

use tokio::time::Instant;
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

/// Lets a warning that may repeat many times a second (a full listener, a client at its cap)
/// through at most once a minute, the first time at once.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// The least time between two warnings.
    pub const EVERY: Duration = Duration::from_secs(60);

    /// Whether to warn now; if so, the next one waits [`Throttle::EVERY`].
    pub fn ready(&mut self) -> bool {
        let ready = self.last.is_none_or(|at| at.elapsed() >= Self::EVERY);
        if ready {
            self.last = Some(Instant::now());
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttled_warning_goes_out_at_once_then_once_a_minute() {
        let mut throttle = Throttle::default();
        assert!(throttle.ready());
        assert!(!throttle.ready());
        tokio::time::advance(Throttle::EVERY - Duration::from_secs(1)).await;
        assert!(!throttle.ready());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(throttle.ready());
        assert!(!throttle.ready());
    }
}
