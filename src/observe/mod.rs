//! Logs and metrics: every layer emits here; only the admin listener reads the metrics.

pub mod access_log;
mod chain;
pub mod logging;
pub mod metrics;

pub use chain::Chain;
