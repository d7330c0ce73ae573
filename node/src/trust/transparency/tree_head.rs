//! [`SignedTreeHead`]: a tree size and root signed by the registry root key.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::identity::Identity;

use super::{encode, DecodeError, Hash, TreeHeadError, DOMAIN_SEP_TREE_HEAD, MAX_TREE_HEAD_SIZE};

/// A tree head signed by the registry root key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct SignedTreeHead {
    /// Number of leaves.
    pub size: u64,
    /// Root hash.
    #[serde(with = "super::hex_or_bytes")]
    pub root: Hash,
    /// Signing time, ms since the epoch.
    pub timestamp_ms: u64,
    /// Ed25519 signature over [`SignedTreeHead::signed_bytes`] under
    /// [`DOMAIN_SEP_TREE_HEAD`].
    #[serde(with = "super::hex_or_bytes")]
    pub signature: [u8; 64],
}

impl fmt::Debug for SignedTreeHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedTreeHead")
            .field("size", &self.size)
            .field("root", &hex::encode(self.root))
            .field("timestamp_ms", &self.timestamp_ms)
            .finish_non_exhaustive()
    }
}

impl SignedTreeHead {
    /// The signed message (after the domain): size, timestamp (both
    /// big-endian `u64`) and root.
    pub fn signed_bytes(size: u64, root: &Hash, timestamp_ms: u64) -> [u8; 48] {
        let mut m = [0u8; 48];
        m[..8].copy_from_slice(&size.to_be_bytes());
        m[8..16].copy_from_slice(&timestamp_ms.to_be_bytes());
        m[16..].copy_from_slice(root);
        m
    }

    /// Signs a head with the registry root key.
    pub fn sign(key: &Identity, size: u64, root: Hash, timestamp_ms: u64) -> Self {
        let signature = key.sign(
            DOMAIN_SEP_TREE_HEAD,
            &Self::signed_bytes(size, &root, timestamp_ms),
        );
        Self {
            size,
            root,
            timestamp_ms,
            signature,
        }
    }

    /// Checks the signature under the registry root key.
    pub fn verify(&self, root_key: &VerifyingKey) -> Result<(), TreeHeadError> {
        let msg = [
            DOMAIN_SEP_TREE_HEAD,
            &Self::signed_bytes(self.size, &self.root, self.timestamp_ms),
        ]
        .concat();
        root_key
            .verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| TreeHeadError::BadSignature)
    }

    /// CBOR encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a CBOR head (at most [`MAX_TREE_HEAD_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(codec::decode(bytes, MAX_TREE_HEAD_SIZE)?)
    }
}
