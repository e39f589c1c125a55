//! Rampart: an edge TLS terminator with automatic certificates and one shared reverse-proxy core.
//!
//! Data flows one way: `server` accepts, `tls` terminates, `http` serves the connection,
//! `request` makes each request canonical, `proxy` routes and forwards; `config` describes it
//! all, `acme` keeps certificates fresh (`cluster` shares them between nodes through etcd),
//! `observe` records what happens, and `pki` holds the host names and certificate material they
//! all share.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod acme;
pub mod cluster;
pub mod config;
mod http;
pub mod observe;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod server;
pub mod tls;

pub use server::{Listeners, Server};

/// Everything that can stop Rampart from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Listeners or certificates could not be set up.
    #[error(transparent)]
    Server(#[from] server::ServerError),
}
