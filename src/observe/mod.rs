//! Logs (and, later, metrics): every layer emits here; nothing reads from here.

pub mod access_log;
mod chain;
pub mod logging;

pub use chain::Chain;
