//! Configuration: the YAML file read at start-up, on SIGHUP and by `rampart check`.
//!
//! [`load`] reads the file, [`parse`] turns text into the raw serde shape (`raw.rs`), and
//! validation (`validate.rs`) turns that into the typed [`Config`] (`types.rs`) the rest of
//! Rampart uses, reporting every problem with its `file:line:col` and key path at once.
//! Every default is written once, in `defaults.rs`. Durations and sizes are strings with units,
//! parsed by [`humane`]. Nothing here runs as a task or keeps state; callers swap the resulting
//! snapshot in.

mod defaults;
mod error;
mod gateway;
pub mod humane;
mod load;
mod raw;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Problem, Problems};
pub use load::{load, parse};
pub use types::*;
