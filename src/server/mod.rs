//! Sockets and tasks: binds the listeners, runs the accept loops and connection tasks, and
//! drains them on shutdown, and applies configuration reloads. The only module that spawns
//! long-lived tasks.

pub mod activation;
mod admin;
mod error;
mod http01;
mod listener;
mod per_ip;
mod proxy_protocol;
mod reload;
mod selfcheck;
mod serve;
pub mod shutdown;
pub mod systemd;

pub use error::ServerError;
pub use listener::Listeners;
pub use serve::Server;
