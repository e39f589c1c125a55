//! Signals and draining: stop accepting, let open requests finish, give up after the grace period.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Resolves on the first SIGTERM or SIGINT.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub async fn signal_received() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Stops accepting, lets open connections finish, and gives up after `grace`.
/// Returns whether everything finished in time.
pub async fn drain(stop: &CancellationToken, tasks: &TaskTracker, grace: Duration) -> bool {
    stop.cancel(); // each connection calls hyper's graceful_shutdown() and finishes in-flight requests
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(
            open = tasks.len(),
            ?grace,
            "grace period over; dropping remaining connections"
        );
        return false;
    }
    info!("all connections closed");
    true
}
