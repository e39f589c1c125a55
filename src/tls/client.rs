//! The HTTPS client Rampart uses for its own fetches (the ACME server, JWKS documents): the
//! Mozilla roots plus an operator's extra bundle, rustls on aws-lc-rs, hyper-util's pooled client.
//!
//! Origins behind routes are reached by `proxy::connect` instead, which `proxy/` keeps to itself.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A pooled HTTPS client with bodies of type `B`.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// Why an extra CA bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read.
    #[error("cannot read CA bundle {}", path.display())]
    Read {
        /// The bundle.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("CA bundle {} holds no PEM certificate", path.display())]
    Empty {
        /// The bundle.
        path: PathBuf,
    },
}

/// Who may be reached in clear text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainHttp {
    /// Only `https://` URLs.
    Refused,
    /// `http://` too; the caller has checked where it goes.
    Allowed,
}

/// A client trusting the Mozilla roots plus every certificate in `extra`, giving up on a
/// connection after `connect_timeout`.
///
/// # Errors
/// The bundle cannot be read or holds no certificate.
pub fn https_client<B>(
    extra: Option<&Path>,
    connect_timeout: Duration,
    plain: PlainHttp,
) -> Result<HttpsClient<B>, BundleError>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(|source| BundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        if roots.add_parsable_certificates(certs).0 == 0 {
            return Err(BundleError::Empty {
                path: path.to_owned(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false); // the TLS layer above decides what may go in clear text
    tcp.set_connect_timeout(Some(connect_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = match plain {
        PlainHttp::Refused => builder.https_only(),
        PlainHttp::Allowed => builder.https_or_http(),
    };
    let https = builder.enable_http1().enable_http2().wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

#[cfg(test)]
mod tests {
    use http_body_util::Empty;

    use super::*;

    fn client(extra: &Path) -> Result<HttpsClient<Empty<bytes::Bytes>>, BundleError> {
        https_client(Some(extra), Duration::from_secs(1), PlainHttp::Refused)
    }

    #[test]
    fn an_extra_bundle_must_be_readable_and_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(client(&missing), Err(BundleError::Read { path, .. }) if path == missing));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("writable");
        assert!(matches!(client(&empty), Err(BundleError::Empty { path }) if path == empty));

        let good = dir.path().join("ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).expect("rcgen");
        std::fs::write(&good, ca.cert.pem()).expect("writable");
        assert!(client(&good).is_ok());
    }
}
