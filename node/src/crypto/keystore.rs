//! The keystore: the agent's secrets in one file, encrypted at rest.
//!
//! File format (CBOR): version, Argon2id parameters, salt, nonce, and the
//! XChaCha20-Poly1305 ciphertext of the secrets (identity seed and storage
//! key). The encryption key is Argon2id of a passphrase, given by the
//! `AGENTMESH_PASSPHRASE` environment variable or read from the file named by
//! `AGENTMESH_PASSPHRASE_FILE`.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::{
    aead::{Aead, KeyInit},
    XChaCha20Poly1305, XNonce,
};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use agentmesh_transports::codec;

use crate::{
    identity::{rotation::SignedRotation, Identity},
    storage::random_array,
};

/// Environment variable holding the keystore passphrase.
pub const PASSPHRASE_ENV: &str = "AGENTMESH_PASSPHRASE";
/// Environment variable naming a file that holds the passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "AGENTMESH_PASSPHRASE_FILE";
/// File name of the keystore inside a data directory.
pub const KEYSTORE_FILE: &str = "identity.keystore";
const VERSION: u8 = 1;
const MAX_KEYSTORE_SIZE: usize = 4096;
const AAD: &[u8] = b"agentmesh/keystore/v1";

/// Errors of the keystore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// No passphrase was given.
    #[error("no passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}")]
    NoPassphrase,
    /// The passphrase is wrong or the file was altered.
    #[error("wrong passphrase or corrupted keystore")]
    Decrypt,
    /// The file is not a keystore.
    #[error("malformed keystore: {0}")]
    Malformed(String),
    /// Unknown file version.
    #[error("unsupported keystore version {0}")]
    UnsupportedVersion(u8),
    /// Reading or writing the file failed.
    #[error("keystore file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The KDF parameters are invalid.
    #[error("invalid key derivation parameters")]
    Kdf,
}

/// A passphrase. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Reads the passphrase from `AGENTMESH_PASSPHRASE` or the file named by
    /// `AGENTMESH_PASSPHRASE_FILE` (trailing newline removed).
    pub fn from_env() -> Result<Self, KeystoreError> {
        if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
            return Ok(Self(p));
        }
        if let Ok(path) = std::env::var(PASSPHRASE_FILE_ENV) {
            let text = fs::read_to_string(&path).map_err(|source| KeystoreError::Io {
                path: path.into(),
                source,
            })?;
            return Ok(Self(text.trim_end_matches(['\n', '\r']).to_owned()));
        }
        Err(KeystoreError::NoPassphrase)
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended Argon2id setting: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self {
            m_cost: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// The lightest setting (256 KiB, 1 iteration, 1 lane): for throwaway
    /// identities in tests, benches and simulations that start many nodes,
    /// never for a key that matters.
    pub const fn throwaway() -> Self {
        Self {
            m_cost: 256,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeystoreFile {
    version: u8,
    kdf: KdfParams,
    #[serde(with = "serde_bytes")]
    salt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    nonce: Vec<u8>,
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Secrets {
    #[serde(with = "serde_bytes")]
    identity_seed: [u8; 32],
    #[serde(with = "serde_bytes")]
    storage_key: [u8; 32],
    /// Identities rotated away from, oldest first, each with the statement
    /// that moved it to the next. Absent when the identity never rotated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous: Vec<PreviousSecret>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct PreviousSecret {
    #[serde(with = "serde_bytes")]
    seed: [u8; 32],
    #[serde(with = "serde_bytes")]
    rotation: Vec<u8>,
}

/// Most identities rotated away from that a keystore keeps (and whose
/// rotation records the node keeps publishing), as
/// [`MAX_HOPS`](crate::identity::rotation::MAX_HOPS).
pub const MAX_PREVIOUS: usize = crate::identity::rotation::MAX_HOPS;

/// The unlocked secrets of an agent.
pub struct Keystore {
    identity: Identity,
    storage_key: Zeroizing<[u8; 32]>,
    /// Identities rotated away from, oldest first, with their statements.
    previous: Vec<(Identity, SignedRotation)>,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("amid", &self.identity.amid())
            .finish_non_exhaustive()
    }
}

/// Largest Argon2 memory cost a keystore may ask for (1 GiB, in KiB).
const MAX_M_COST: u32 = 1024 * 1024;
/// Largest Argon2 iteration count a keystore may ask for.
const MAX_T_COST: u32 = 64;
/// Largest Argon2 parallelism a keystore may ask for.
const MAX_P_COST: u32 = 16;

fn derive_key(
    pass: &Passphrase,
    salt: &[u8],
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    // A keystore file is input: it must not make us allocate without bound.
    if kdf.m_cost > MAX_M_COST || kdf.t_cost > MAX_T_COST || kdf.p_cost > MAX_P_COST {
        return Err(KeystoreError::Kdf);
    }
    let params = Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|_| KeystoreError::Kdf)?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass.0.as_bytes(), salt, out.as_mut())
        .map_err(|_| KeystoreError::Kdf)?;
    Ok(out)
}

impl Keystore {
    /// A fresh identity and storage key.
    pub fn generate() -> Self {
        Self {
            identity: Identity::generate(),
            storage_key: Zeroizing::new(random_array()),
            previous: Vec::new(),
        }
    }

    /// Moves to a fresh identity: the current one signs, with the new one,
    /// the statement that it moved ([`SignedRotation`]) and is kept with it
    /// (at most [`MAX_PREVIOUS`], the oldest dropped), so the node keeps
    /// publishing where it went. The storage key stays: the node's data
    /// stays readable.
    pub fn rotate(&mut self, now_ms: u64) -> Result<SignedRotation, KeystoreError> {
        let new = Identity::generate();
        let rotation = SignedRotation::sign(&self.identity, &new, now_ms)
            .map_err(|e| KeystoreError::Malformed(e.to_string()))?;
        let old = std::mem::replace(&mut self.identity, new);
        self.previous.push((old, rotation.clone()));
        if self.previous.len() > MAX_PREVIOUS {
            self.previous.remove(0);
        }
        Ok(rotation)
    }

    /// The rotations of this agent, oldest first: its AMID history.
    pub fn rotations(&self) -> Vec<SignedRotation> {
        self.previous.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The identities rotated away from, with the statements that moved
    /// them.
    pub(crate) fn previous(&self) -> &[(Identity, SignedRotation)] {
        &self.previous
    }

    /// [`Keystore::rotate`] on the keystore file in `dir`: decrypts it with
    /// `pass`, rotates, and writes it back encrypted with `kdf`. Returns
    /// the statement. The node must not be running.
    pub fn rotate_file(
        dir: &Path,
        pass: &Passphrase,
        kdf: KdfParams,
        now_ms: u64,
    ) -> Result<SignedRotation, KeystoreError> {
        let path = dir.join(KEYSTORE_FILE);
        let io = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        let mut ks = Self::decrypt(&fs::read(&path).map_err(io)?, pass)?;
        let rotation = ks.rotate(now_ms)?;
        let bytes = ks.encrypt(pass, kdf)?;
        write_private(&path, &bytes).map_err(io)?;
        Ok(rotation)
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn storage_key(&self) -> &[u8; 32] {
        &self.storage_key
    }

    /// Encrypts the secrets under `pass` into the file format.
    pub fn encrypt(&self, pass: &Passphrase, kdf: KdfParams) -> Result<Vec<u8>, KeystoreError> {
        let salt: [u8; 16] = random_array();
        let nonce: [u8; 24] = random_array();
        let key = derive_key(pass, &salt, kdf)?;
        let secrets = Secrets {
            identity_seed: *self.identity.seed(),
            storage_key: *self.storage_key,
            previous: self
                .previous
                .iter()
                .map(|(id, r)| PreviousSecret {
                    seed: *id.seed(),
                    rotation: r.to_bytes(),
                })
                .collect(),
        };
        let plain = Zeroizing::new(
            codec::encode(&secrets).map_err(|e| KeystoreError::Malformed(e.to_string()))?,
        );
        let ciphertext = XChaCha20Poly1305::new(&(*key).into())
            .encrypt(
                &XNonce::from(nonce),
                chacha20poly1305::aead::Payload {
                    msg: &plain,
                    aad: AAD,
                },
            )
            .map_err(|_| KeystoreError::Decrypt)?;
        codec::encode(&KeystoreFile {
            version: VERSION,
            kdf,
            salt: salt.to_vec(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
        .map_err(|e| KeystoreError::Malformed(e.to_string()))
    }

    /// Checks that `bytes` are a keystore file of a version we read,
    /// without decrypting it (no passphrase needed).
    pub fn check_file(bytes: &[u8]) -> Result<(), KeystoreError> {
        let file: KeystoreFile = codec::decode(bytes, MAX_KEYSTORE_SIZE)
            .map_err(|e| KeystoreError::Malformed(e.to_string()))?;
        if file.version != VERSION {
            return Err(KeystoreError::UnsupportedVersion(file.version));
        }
        Ok(())
    }

    /// Decrypts a keystore file's bytes with `pass`.
    pub fn decrypt(bytes: &[u8], pass: &Passphrase) -> Result<Self, KeystoreError> {
        let file: KeystoreFile = codec::decode(bytes, MAX_KEYSTORE_SIZE)
            .map_err(|e| KeystoreError::Malformed(e.to_string()))?;
        if file.version != VERSION {
            return Err(KeystoreError::UnsupportedVersion(file.version));
        }
        let nonce: [u8; 24] = file
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| KeystoreError::Malformed("nonce length".into()))?;
        if file.salt.len() < 8 {
            return Err(KeystoreError::Malformed("salt length".into()));
        }
        let key = derive_key(pass, &file.salt, file.kdf)?;
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(&(*key).into())
                .decrypt(
                    &XNonce::from(nonce),
                    chacha20poly1305::aead::Payload {
                        msg: &file.ciphertext,
                        aad: AAD,
                    },
                )
                .map_err(|_| KeystoreError::Decrypt)?,
        );
        let secrets: Secrets =
            codec::decode(&plain, MAX_KEYSTORE_SIZE).map_err(|_| KeystoreError::Decrypt)?;
        let previous = secrets
            .previous
            .iter()
            .map(|p| {
                SignedRotation::from_bytes(&p.rotation)
                    .map(|r| (Identity::from_seed(&p.seed), r))
                    .map_err(|_| KeystoreError::Decrypt)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            identity: Identity::from_seed(&secrets.identity_seed),
            storage_key: Zeroizing::new(secrets.storage_key),
            previous,
        })
    }

    /// Loads the keystore in `dir`, or creates one if there is none.
    /// Returns the keystore and whether it was created.
    pub fn load_or_create(
        dir: &Path,
        pass: &Passphrase,
        kdf: KdfParams,
    ) -> Result<(Self, bool), KeystoreError> {
        let path = dir.join(KEYSTORE_FILE);
        let io = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => Ok((Self::decrypt(&bytes, pass)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io)?;
                let ks = Self::generate();
                let bytes = ks.encrypt(pass, kdf)?;
                write_private(&path, &bytes).map_err(io)?;
                Ok((ks, true))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Writes a file readable only by its owner, atomically (temp file + rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[test]
    fn same_identity_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::new("correct horse");
        let (a, created) = Keystore::load_or_create(dir.path(), &pass, fast()).unwrap();
        assert!(created);
        let (b, created) = Keystore::load_or_create(dir.path(), &pass, fast()).unwrap();
        assert!(!created);
        assert_eq!(a.identity().amid(), b.identity().amid());
        assert_eq!(a.storage_key(), b.storage_key());
        let bytes = fs::read(dir.path().join(KEYSTORE_FILE)).unwrap();
        assert!(!bytes.windows(32).any(|w| w == &a.identity().seed()[..]));
    }

    #[test]
    fn wrong_passphrase_and_tamper_fail() {
        let ks = Keystore::generate();
        let bytes = ks.encrypt(&Passphrase::new("a"), fast()).unwrap();
        assert!(matches!(
            Keystore::decrypt(&bytes, &Passphrase::new("b")),
            Err(KeystoreError::Decrypt)
        ));
        let mut bad = bytes.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        assert!(Keystore::decrypt(&bad, &Passphrase::new("a")).is_err());
        assert!(matches!(
            Keystore::decrypt(b"junk", &Passphrase::new("a")),
            Err(KeystoreError::Malformed(_))
        ));
    }

    #[test]
    fn hostile_kdf_parameters_are_refused() {
        let pass = Passphrase::new("a");
        let huge = KdfParams {
            m_cost: u32::MAX,
            t_cost: 1,
            p_cost: 1,
        };
        assert!(matches!(
            derive_key(&pass, &[0; 16], huge),
            Err(KeystoreError::Kdf)
        ));
    }

    #[test]
    fn debug_is_redacted() {
        let p = Passphrase::new("hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
