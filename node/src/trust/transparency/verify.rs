//! Proofs and their verification: [`InclusionProof`] and
//! [`ConsistencyProof`] against signed tree heads.
use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use super::{
    encode, node_hash, DecodeError, Hash, ProofError, SignedTreeHead, MAX_PROOF_LEN, MAX_PROOF_SIZE,
};

/// Proof that a leaf is in a tree of a given size (RFC 9162 §2.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct InclusionProof {
    /// Index of the leaf.
    pub leaf_index: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Sibling hashes, from the leaf up.
    #[serde(with = "super::hashes")]
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// Checks that the leaf with hash `leaf` is in the tree of `head`
    /// (whose signature the caller has checked).
    pub fn verify(&self, leaf: &Hash, head: &SignedTreeHead) -> Result<(), ProofError> {
        if self.tree_size != head.size {
            return Err(ProofError::SizeMismatch {
                proof: self.tree_size,
                head: head.size,
            });
        }
        verify_inclusion(
            leaf,
            self.leaf_index,
            self.tree_size,
            &self.path,
            &head.root,
        )
    }

    /// CBOR encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a CBOR proof (at most [`MAX_PROOF_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let p: Self = codec::decode(bytes, MAX_PROOF_SIZE)?;
        if p.path.len() > MAX_PROOF_LEN {
            return Err(DecodeError::TooLong);
        }
        Ok(p)
    }
}

/// Proof that a tree of `second_size` leaves extends the tree of
/// `first_size` leaves (RFC 9162 §2.1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct ConsistencyProof {
    /// Size of the older tree.
    pub first_size: u64,
    /// Size of the newer tree.
    pub second_size: u64,
    /// The proof nodes.
    #[serde(with = "super::hashes")]
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// Checks that `newer` extends `older` (both heads checked by the
    /// caller).
    pub fn verify(&self, older: &SignedTreeHead, newer: &SignedTreeHead) -> Result<(), ProofError> {
        if self.first_size != older.size {
            return Err(ProofError::SizeMismatch {
                proof: self.first_size,
                head: older.size,
            });
        }
        if self.second_size != newer.size {
            return Err(ProofError::SizeMismatch {
                proof: self.second_size,
                head: newer.size,
            });
        }
        verify_consistency(
            self.first_size,
            &older.root,
            self.second_size,
            &newer.root,
            &self.path,
        )
    }

    /// CBOR encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a CBOR proof (at most [`MAX_PROOF_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let p: Self = codec::decode(bytes, MAX_PROOF_SIZE)?;
        if p.path.len() > MAX_PROOF_LEN {
            return Err(DecodeError::TooLong);
        }
        Ok(p)
    }
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    if path.len() > MAX_PROOF_LEN {
        return Err(ProofError::BadLength);
    }
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return Err(ProofError::BadLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::BadLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `second` leaves with root
/// `second_root` extends the tree of `first` leaves with root `first_root`.
/// Equal sizes need an empty path and equal roots; an empty first tree is
/// extended by every tree.
pub fn verify_consistency(
    first: u64,
    first_root: &Hash,
    second: u64,
    second_root: &Hash,
    path: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if path.len() > MAX_PROOF_LEN {
        return Err(ProofError::BadLength);
    }
    if first == 0 || first == second {
        if !path.is_empty() {
            return Err(ProofError::BadLength);
        }
        if first == second && first_root != second_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    let Some((&head, rest)) = path.split_first() else {
        return Err(ProofError::BadLength);
    };
    let (start, rest): (Hash, &[Hash]) = if first.is_power_of_two() {
        (*first_root, path)
    } else {
        (head, rest)
    };
    let mut fn_ = first - 1;
    let mut sn = second - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = start;
    let mut sr = start;
    for c in rest {
        if sn == 0 {
            return Err(ProofError::BadLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::BadLength);
    }
    if fr != *first_root || sr != *second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}
