//! `TestCa`: an in-memory certificate authority (rcgen) issuing leaf certificates at test time.
//! No private key is ever committed; leaves are written to the test's temporary directory.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// A CA whose root clients trust through [`TestCa::roots`].
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

/// A leaf certificate and its key, as PEM, plus the DER a client sees in the handshake.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("key generation works");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
        params
            .distinguished_name
            .push(DnType::CommonName, "Rampart Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("self-signing works");
        Self {
            root: root.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A trust store holding only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).expect("the test root parses");
        roots
    }

    /// A server leaf for `names` (exact names or `*.parent` wildcards).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("key generation works");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("test names are valid");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("signing works");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    /// Writes `DIR/STEM.pem` and `DIR/STEM.key`.
    pub fn write(&self, dir: &Path, stem: &str) {
        std::fs::write(dir.join(format!("{stem}.pem")), &self.cert_pem)
            .expect("temp dir is writable");
        std::fs::write(dir.join(format!("{stem}.key")), &self.key_pem)
            .expect("temp dir is writable");
    }
}
