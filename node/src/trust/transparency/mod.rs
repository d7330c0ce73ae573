//! Transparency log: the Merkle tree hashing, signed tree heads and proofs of
//! RFC 9162 (Certificate Transparency v2), over SHA-256.
//!
//! The registry appends every key binding, certificate and revocation to an
//! append-only log and signs the tree head with its root key. A node that is
//! shown a certificate checks that it is in the log (an [`InclusionProof`]
//! against a [`SignedTreeHead`]) before it trusts the tier, so the registry
//! cannot hand one agent's key to somebody else unseen; a monitor that keeps
//! the last head it saw checks that the log only grew (a
//! [`ConsistencyProof`]).
//!
//! - leaf hash: `SHA-256(0x00 || data)`, node hash: `SHA-256(0x01 || left || right)`;
//! - the hash of the empty tree is `SHA-256("")`;
//! - a tree of `n > 1` leaves splits at `k`, the largest power of two below
//!   `n`: `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`.
//!
//! Proof generation reads only hashes of *perfect* subtrees (`2^level`
//! leaves starting at `index * 2^level`), which a log stores as it appends
//! (see [`MemoryTree`]; the registry keeps the same layout on disk), so a
//! proof costs `O(log n)` reads.
//!
//! ```
//! use agentmesh_node::identity::Identity;
//! use agentmesh_node::trust::transparency::{leaf_hash, LeafKind, MemoryTree, SignedTreeHead};
//!
//! let registry = Identity::generate();
//! let mut log = MemoryTree::default();
//! let cert = LeafKind::Certificate.leaf(b"encoded certificate");
//! let index = log.append(&cert);
//! log.append(&LeafKind::Revocation.leaf(b"something else"));
//!
//! // Registry side: sign the head, prove the inclusion.
//! let head = SignedTreeHead::sign(&registry, log.len(), log.root(), 1_700_000_000_000);
//! let proof = log.inclusion_proof(index, log.len()).unwrap();
//!
//! // Node side: check the head's signature, then the inclusion.
//! let root_key = registry.amid().verifying_key().unwrap();
//! head.verify(&root_key).unwrap();
//! proof.verify(&leaf_hash(&cert), &head).unwrap();
//! ```
use serde::Serialize;
use sha2::{Digest, Sha256};

use agentmesh_transports::codec;

mod prove;
mod tree;
mod tree_head;
mod verify;

pub use prove::{prove_consistency, prove_inclusion, tree_root, ProveError, SubtreeHashes};
pub use tree::{complete_subtrees, MemoryTree};
pub use tree_head::SignedTreeHead;
pub use verify::{verify_consistency, verify_inclusion, ConsistencyProof, InclusionProof};

/// A SHA-256 hash: leaf, node or root.
pub type Hash = [u8; 32];

/// Domain-separation context of tree-head signatures.
pub const DOMAIN_SEP_TREE_HEAD: &[u8] = b"agentmesh/tree-head/v1\0";
/// Longest proof path accepted: enough for `2^64` leaves.
pub const MAX_PROOF_LEN: usize = 64;
/// Largest encoded proof accepted.
pub const MAX_PROOF_SIZE: usize = 64 + MAX_PROOF_LEN * 40;
/// Largest encoded tree head accepted.
pub const MAX_TREE_HEAD_SIZE: usize = 256;

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} out of range for a tree of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The sizes of a consistency proof are not ordered (`first > second`).
    #[error("tree sizes out of order: {first} > {second}")]
    SizesOutOfOrder {
        /// The older size.
        first: u64,
        /// The newer size.
        second: u64,
    },
    /// The proof is for another tree size than the head it is checked
    /// against.
    #[error("proof is for a tree of {proof}, the head has {head}")]
    SizeMismatch {
        /// Size in the proof.
        proof: u64,
        /// Size in the head.
        head: u64,
    },
    /// The path is longer than [`MAX_PROOF_LEN`] or has the wrong length
    /// for the sizes.
    #[error("proof path has the wrong length")]
    BadLength,
    /// The recomputed root differs from the expected one.
    #[error("root mismatch")]
    RootMismatch,
}

/// Why a signed tree head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeHeadError {
    /// The signature does not verify under the registry key.
    #[error("bad tree head signature")]
    BadSignature,
}

/// Why a proof or tree head did not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Malformed or oversized CBOR.
    #[error("malformed: {0}")]
    Codec(#[from] codec::CodecError),
    /// The proof path is longer than [`MAX_PROOF_LEN`].
    #[error("proof path too long")]
    TooLong,
}

/// Hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// Hash of an inner node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// What a log entry records; the first byte of the leaf data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeafKind {
    /// An AMID bound to a key or an account.
    KeyBinding = 0,
    /// A tier certificate (its encoded bytes).
    Certificate = 1,
    /// A revocation.
    Revocation = 2,
    /// An identity rotation an agent filed (the encoded
    /// [`SignedRotation`](crate::identity::rotation::SignedRotation)).
    Rotation = 3,
}

impl LeafKind {
    /// The leaf data for `payload`: the kind byte, then the payload.
    pub fn leaf(self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(payload.len() + 1);
        v.push(self as u8);
        v.extend_from_slice(payload);
        v
    }
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Structs of integers and byte strings always encode.
    codec::encode(v).unwrap_or_default()
}

/// Serde of a list of hashes: hex strings in JSON, byte strings in CBOR.
mod hashes {
    use super::{hex_or_bytes, Hash};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct H(#[serde(with = "hex_or_bytes")] Hash);

    pub(super) fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|h| H(*h)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<Hash>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of at most 64 hashes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<Hash>, A::Error> {
                let mut out = Vec::new();
                while let Some(H(h)) = seq.next_element()? {
                    if out.len() == super::MAX_PROOF_LEN {
                        return Err(serde::de::Error::custom("proof path too long"));
                    }
                    out.push(h);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Serde of fixed-size byte arrays: hex strings in human-readable formats
/// (JSON), byte strings otherwise (CBOR).
pub mod hex_or_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Serializes `v`.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    /// Deserializes an array of `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let bytes: Vec<u8> = if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            if s.len() != 2 * N {
                return Err(D::Error::custom("wrong hex length"));
            }
            hex::decode(s.as_bytes()).map_err(D::Error::custom)?
        } else {
            serde_bytes::ByteBuf::deserialize(d)?.into_vec()
        };
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("wrong byte length"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use proptest::prelude::*;

    /// `MTH` computed straight from the definition.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn tree(n: usize) -> (MemoryTree, Vec<Vec<u8>>) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
        let mut t = MemoryTree::default();
        for (i, l) in leaves.iter().enumerate() {
            assert_eq!(t.append(l), i as u64);
        }
        (t, leaves)
    }

    #[test]
    fn rfc6962_test_vectors() {
        // Roots of the reference test data of RFC 6962 / Certificate
        // Transparency (same hashing as RFC 9162).
        let leaves: Vec<Vec<u8>> = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut t = MemoryTree::default();
        for (l, root) in leaves.iter().zip(roots) {
            t.append(l);
            assert_eq!(hex::encode(t.root()), root, "size {}", t.len());
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn tree_head_signature_and_codecs() {
        let reg = Identity::from_seed(&[7; 32]);
        let key = reg.amid().verifying_key().unwrap();
        let (t, _) = tree(5);
        let head = SignedTreeHead::sign(&reg, t.len(), t.root(), 42);
        head.verify(&key).unwrap();
        assert_eq!(SignedTreeHead::from_bytes(&head.to_bytes()).unwrap(), head);
        let json = serde_json::to_string(&head).unwrap();
        assert!(json.contains(&hex::encode(head.root)), "{json}");
        assert_eq!(serde_json::from_str::<SignedTreeHead>(&json).unwrap(), head);

        let other = Identity::from_seed(&[8; 32])
            .amid()
            .verifying_key()
            .unwrap();
        assert_eq!(head.verify(&other), Err(TreeHeadError::BadSignature));
        for tamper in 0..3 {
            let mut h = head.clone();
            match tamper {
                0 => h.size += 1,
                1 => h.timestamp_ms += 1,
                _ => h.root[0] ^= 1,
            }
            assert_eq!(h.verify(&key), Err(TreeHeadError::BadSignature));
        }
        // A head signed under another domain does not pass.
        let sig = reg.sign(
            b"agentmesh/other/v1\0",
            &SignedTreeHead::signed_bytes(head.size, &head.root, 42),
        );
        let h = SignedTreeHead {
            signature: sig,
            ..head.clone()
        };
        assert_eq!(h.verify(&key), Err(TreeHeadError::BadSignature));

        let p = t.inclusion_proof(3, 5).unwrap();
        assert_eq!(InclusionProof::from_bytes(&p.to_bytes()).unwrap(), p);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<InclusionProof>(&json).unwrap(), p);
        let c = t.consistency_proof(3, 5).unwrap();
        assert_eq!(ConsistencyProof::from_bytes(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn overlong_paths_are_refused_by_the_decoders() {
        let p = InclusionProof {
            leaf_index: 0,
            tree_size: 1,
            path: vec![[0; 32]; MAX_PROOF_LEN + 1],
        };
        assert!(InclusionProof::from_bytes(&p.to_bytes()).is_err());
        let json = serde_json::to_string(&p).unwrap();
        assert!(serde_json::from_str::<InclusionProof>(&json).is_err());
    }

    #[test]
    fn edge_cases() {
        let (t, _) = tree(4);
        let root = t.root();
        // Index out of range.
        assert!(matches!(
            verify_inclusion(&[0; 32], 4, 4, &[], &root),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(t.inclusion_proof(4, 4).is_err());
        // One leaf: empty path, root is the leaf hash.
        let (one, l) = tree(1);
        verify_inclusion(&leaf_hash(&l[0]), 0, 1, &[], &one.root()).unwrap();
        // A path too short or too long fails.
        let p = t.inclusion_proof(1, 4).unwrap();
        assert!(verify_inclusion(&leaf_hash(b"leaf 1"), 1, 4, &p.path[..1], &root).is_err());
        let mut long = p.path.clone();
        long.push([0; 32]);
        assert_eq!(
            verify_inclusion(&leaf_hash(b"leaf 1"), 1, 4, &long, &root),
            Err(ProofError::BadLength)
        );
        // Consistency: equal sizes, empty first tree, out of order.
        verify_consistency(4, &root, 4, &root, &[]).unwrap();
        assert_eq!(
            verify_consistency(4, &root, 4, &[1; 32], &[]),
            Err(ProofError::RootMismatch)
        );
        verify_consistency(0, &empty_root(), 4, &root, &[]).unwrap();
        assert!(matches!(
            verify_consistency(5, &root, 4, &root, &[]),
            Err(ProofError::SizesOutOfOrder { .. })
        ));
        assert_eq!(
            verify_consistency(2, &t.root_at(2).unwrap(), 4, &root, &[]),
            Err(ProofError::BadLength)
        );
        // Proof checked against a head of another size.
        let reg = Identity::from_seed(&[7; 32]);
        let head = SignedTreeHead::sign(&reg, 3, t.root_at(3).unwrap(), 1);
        assert!(matches!(
            p.verify(&leaf_hash(b"leaf 1"), &head),
            Err(ProofError::SizeMismatch { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_inclusion_proof_verifies_and_tampering_fails(
            n in 1usize..80,
            pick in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (t, leaves) = tree(n);
            let root = t.root();
            prop_assert_eq!(root, mth(&leaves));
            for size in 1..=n as u64 {
                prop_assert_eq!(t.root_at(size).unwrap(), mth(&leaves[..size as usize]));
            }
            for (i, l) in leaves.iter().enumerate() {
                let p = t.inclusion_proof(i as u64, n as u64).unwrap();
                verify_inclusion(&leaf_hash(l), i as u64, n as u64, &p.path, &root).unwrap();
            }
            let i = pick.index(n);
            let p = t.inclusion_proof(i as u64, n as u64).unwrap();
            let leaf = leaf_hash(&leaves[i]);
            // Another leaf's data.
            let other = leaf_hash(&leaves[(i + 1) % n]);
            if n > 1 {
                prop_assert!(verify_inclusion(&other, i as u64, n as u64, &p.path, &root).is_err());
                // Another index.
                let j = ((i + 1) % n) as u64;
                prop_assert!(verify_inclusion(&leaf, j, n as u64, &p.path, &root).is_err());
                // A flipped bit in the path.
                let mut path = p.path.clone();
                let k = flip.index(path.len());
                path[k][(bit as usize * 3) % 32] ^= 1 << bit;
                prop_assert!(verify_inclusion(&leaf, i as u64, n as u64, &path, &root).is_err());
                // A dropped path element.
                prop_assert!(verify_inclusion(&leaf, i as u64, n as u64, &p.path[1..], &root).is_err());
            }
            // Another root. (The size is bound by the signed head, which
            // proofs are checked against.)
            let mut bad_root = root;
            bad_root[bit as usize] ^= 0x80;
            prop_assert!(verify_inclusion(&leaf, i as u64, n as u64, &p.path, &bad_root).is_err());
        }

        #[test]
        fn consistency_between_any_two_sizes_verifies(
            n in 1usize..64,
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let (t, _) = tree(n);
            let (m, n2) = {
                let x = a.index(n + 1) as u64;
                let y = b.index(n + 1) as u64;
                (x.min(y), x.max(y))
            };
            let first = t.root_at(m).unwrap();
            let second = t.root_at(n2).unwrap();
            let p = t.consistency_proof(m, n2).unwrap();
            verify_consistency(m, &first, n2, &second, &p.path).unwrap();
            if m > 0 && m < n2 {
                // Tampered proof node, tampered roots, wrong sizes.
                let mut path = p.path.clone();
                let k = flip.index(path.len());
                path[k][0] ^= 1;
                prop_assert!(verify_consistency(m, &first, n2, &second, &path).is_err());
                let mut bad = first;
                bad[1] ^= 1;
                prop_assert!(verify_consistency(m, &bad, n2, &second, &p.path).is_err());
                let mut bad = second;
                bad[1] ^= 1;
                prop_assert!(verify_consistency(m, &first, n2, &bad, &p.path).is_err());
                if m + 1 < n2 {
                    let r = t.root_at(m + 1).unwrap();
                    prop_assert!(verify_consistency(m + 1, &r, n2, &second, &p.path).is_err());
                }
            }
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = InclusionProof::from_bytes(&bytes);
            let _ = ConsistencyProof::from_bytes(&bytes);
            let _ = SignedTreeHead::from_bytes(&bytes);
        }

        #[test]
        fn truncated_encodings_do_not_decode(cut in 0usize..100) {
            let (t, _) = tree(7);
            let bytes = t.inclusion_proof(2, 7).unwrap().to_bytes();
            let cut = cut % bytes.len();
            prop_assert!(InclusionProof::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
