//! Certificate material every layer shares, imported by `config`, `tls`, `acme` and `proxy` and
//! importing none of them: host names as certificates and sites spell them (`name`), the crypto
//! provider and its cipher-suite names (`provider`), and certificate and key PEM files (`pem`).

mod name;
mod pem;
mod provider;

pub use name::HostName;
pub use pem::{PemError, certified_key_from_pem, load_pem_files};
pub use provider::{cipher_suite_names, crypto_provider, iana_name};
