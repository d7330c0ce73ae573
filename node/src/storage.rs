//! Local storage: the node's sled database and encryption of secrets at rest.
//!
//! Everything secret that the node writes (Olm account and session pickles,
//! the inbox of decrypted messages) is encrypted with keys derived by HKDF
//! from the storage key held in the keystore.

use chacha20poly1305::{
    aead::{Aead, KeyInit},
    XChaCha20Poly1305, XNonce,
};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        // Without an OS random source no key can be made safely.
        panic!("operating system random source failed: {e}");
    }
}

/// Random bytes.
pub(crate) fn random_array<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill_random(&mut b);
    b
}

/// Errors of sealed storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    /// A sealed value did not decrypt (wrong key or corrupted).
    #[error("sealed value does not decrypt")]
    Unseal,
    /// A stored value did not decode.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// An Olm pickle failed.
    #[error("pickle: {0}")]
    Pickle(String),
}

/// A 32-byte key derived for one purpose. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SubKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for SubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubKey(..)")
    }
}

/// Derives a purpose-bound key from the storage key.
pub(crate) fn derive(storage_key: &[u8; 32], purpose: &str) -> SubKey {
    let hk = Hkdf::<Sha256>::new(Some(b"agentmesh/storage/v1"), storage_key);
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(purpose.as_bytes(), &mut out);
    SubKey(out)
}

/// Encrypts values at rest with XChaCha20-Poly1305 and a random nonce.
#[derive(Clone, Debug)]
pub(crate) struct Sealer {
    key: SubKey,
}

impl Sealer {
    pub(crate) fn new(key: SubKey) -> Self {
        Self { key }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.key.0.into())
    }

    /// `nonce (24) || ciphertext`, with `aad` bound in.
    pub(crate) fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = random_array();
        let ct = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                chacha20poly1305::aead::Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        [nonce.as_slice(), &ct].concat()
    }

    pub(crate) fn open(
        &self,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        if sealed.len() < 24 + 16 {
            return Err(StorageError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| StorageError::Unseal)?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                chacha20poly1305::aead::Payload { msg: ct, aad },
            )
            .map(Zeroizing::new)
            .map_err(|_| StorageError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_tamper() {
        let s = Sealer::new(derive(&[1; 32], "test"));
        let sealed = s.seal(b"secret", b"ctx");
        assert_eq!(&s.open(&sealed, b"ctx").unwrap()[..], b"secret");
        assert!(s.open(&sealed, b"other").is_err());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(s.open(&bad, b"ctx").is_err());
        let other = Sealer::new(derive(&[1; 32], "other"));
        assert!(other.open(&sealed, b"ctx").is_err());
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }
}
