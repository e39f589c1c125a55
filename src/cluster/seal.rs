//! Private keys sealed before they leave the host: AES-256-GCM under `encryption_key_file`.
//!
//! A sealed value is `MAGIC || nonce (12 bytes) || ciphertext || tag (16 bytes)`, with a fresh
//! random nonce per write and the etcd key it is stored under as associated data, so a value
//! copied to another key (another site's, or the account's) does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::config::SealKey;

/// Marks a sealed value and its format version.
const MAGIC: &[u8] = b"rampart-sealed-1:";

/// The cipher for sealed values.
pub(crate) struct Sealer {
    key: LessSafeKey,
}

/// A sealed value that does not open: another key, another place, or damaged.
#[derive(Debug, thiserror::Error)]
#[error("a sealed value does not open with cluster.encryption_key_file (another key, or damaged)")]
pub(crate) struct Unsealable;

impl Sealer {
    pub(crate) fn new(key: &SealKey) -> Self {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key.expose()).expect("a 32-byte key fits AES-256-GCM");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// `plain` sealed for the store key `place`.
    pub(crate) fn seal(&self, place: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place),
                &mut body,
            )
            .expect("AES-GCM seals any input shorter than 64 GiB");
        let mut sealed = Vec::with_capacity(MAGIC.len() + NONCE_LEN + body.len());
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        sealed
    }

    /// The plain value of `sealed`, read from the store key `place`.
    pub(crate) fn open(&self, place: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(Unsealable)?;
        if rest.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(place), &mut body)
            .map_err(|_| Unsealable)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let sealer = Sealer::new(&SealKey::new([3; 32]));
        let sealed = sealer.seal(b"/r/certs/a/key", PEM);
        assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_ne!(
            sealed,
            sealer.seal(b"/r/certs/a/key", PEM),
            "fresh nonce per seal"
        );
        assert_eq!(sealer.open(b"/r/certs/a/key", &sealed).expect("opens"), PEM);

        assert!(
            sealer.open(b"/r/certs/b/key", &sealed).is_err(),
            "moved elsewhere"
        );
        let other = Sealer::new(&SealKey::new([4; 32]));
        assert!(
            other.open(b"/r/certs/a/key", &sealed).is_err(),
            "another key"
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().expect("not empty") ^= 1;
        assert!(sealer.open(b"/r/certs/a/key", &flipped).is_err(), "damaged");
        assert!(sealer.open(b"/r/certs/a/key", PEM).is_err(), "never sealed");
        assert!(
            sealer.open(b"/r/certs/a/key", &sealed[..20]).is_err(),
            "truncated"
        );
    }
}
