//! Telling systemd what the service is doing (sd_notify(3)): ready, reloading, stopping, alive.
//!
//! Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment and writes
//! datagrams to the notification socket. Every function is a no-op when `NOTIFY_SOCKET` is
//! unset (not started by systemd, or `Type=` without notifications). A failed notification is
//! logged at debug and otherwise ignored: systemd then times the service out, which is its call.
//! `ready` and `stopping` run on the main task, `reloading`/`reloaded` on the reload task,
//! `watchdog` next to the main task's wait for a signal.

use std::error::Error;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::observe::Chain;

/// The service is serving: listeners bound, stored, static and internal certificates published.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts. `MONOTONIC_USEC` lets systemd tell this reload from an earlier one
/// (required by `Type=notify-reload`, systemd ≥ 253; harmless for `Type=notify`).
pub fn reloading() {
    let now = match NotifyState::monotonic_usec_now() {
        Ok(now) => now,
        Err(err) => {
            debug!(error = %err, "cannot read CLOCK_MONOTONIC; not notifying systemd of the reload");
            return;
        }
    };
    send(&[
        NotifyState::Reloading,
        now,
        NotifyState::Status("reloading the configuration"),
    ]);
}

/// A reload finished. Ready again either way: a failed reload keeps the previous configuration
/// serving, and the status line says so.
pub fn reloaded(error: Option<&(dyn Error + 'static)>) {
    let status = match error {
        None => "serving; configuration reloaded".to_owned(),
        // STATUS= is one line of the datagram: an error chain must not add lines.
        Some(err) => format!(
            "serving the previous configuration; reload failed: {}",
            Chain(err)
        )
        .replace('\n', " "),
    };
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Shutdown begins: open connections are draining.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec=`, passed as
/// `WATCHDOG_USEC`; ignored when `WATCHDOG_PID` names another process) until `stop` fires.
/// Returns at once when the watchdog is off.
///
/// # Cancel safety
/// Safe: it only sleeps and sends whole datagrams.
pub async fn watchdog(stop: CancellationToken) {
    let Some(period) = watchdog_period() else {
        return;
    };
    info!(?period, "systemd watchdog enabled");
    let mut ticks = tokio::time::interval(period);
    // After a stall, ping once and carry on: a burst of pings would not prove more liveness.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Stop first: no ping may follow STOPPING=1.
            biased;
            () = stop.cancelled() => return,
            _ = ticks.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}

/// Half of systemd's watchdog interval, so one late ping does not fail the service.
fn watchdog_period() -> Option<Duration> {
    let interval = sd_notify::watchdog_enabled()?;
    // WATCHDOG_USEC=0 would make a zero period, which `interval` rejects.
    (!interval.is_zero()).then(|| interval / 2)
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        debug!(error = %err, "cannot notify systemd");
    }
}
