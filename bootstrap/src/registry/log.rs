//! The transparency log as the registry serves it: key bindings,
//! certificates and revocations are appended as they are made; heads are
//! signed by the root key on request, with inclusion and consistency proofs.

use serde::Serialize;
use tracing::debug;

use agentmesh_node::{
    trust::cert::CertChain,
    trust::credentials::{Credentials, LogInclusion},
    trust::transparency::{
        leaf_hash, ConsistencyProof, Hash, InclusionProof, LeafKind, SignedTreeHead,
    },
};

use super::{Registry, RegistryError};
use crate::translog::{LogError, TransLog};

/// Why a log query was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogQueryError {
    /// A leaf hash that is not 32 bytes of hex.
    #[error("hash must be 32 bytes hex")]
    BadHash,
    /// A proof asked for by both or neither of index and hash.
    #[error("give exactly one of index and hash")]
    IndexOrHash,
    /// No leaf has the hash asked for.
    #[error("no leaf with this hash")]
    UnknownLeaf,
    /// The leaf is not in the log.
    #[error("leaf {index}")]
    MissingLeaf {
        /// Its index.
        index: u64,
    },
    /// A consistency proof from a tree larger than the other.
    #[error("first {first} is beyond the tree of {size}")]
    FirstBeyond {
        /// The first tree's size asked for.
        first: u64,
        /// The second tree's size.
        size: u64,
    },
    /// The log refused (an index or size out of range) or failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<LogQueryError> for RegistryError {
    fn from(e: LogQueryError) -> Self {
        match e {
            LogQueryError::BadHash | LogQueryError::IndexOrHash => Self::Invalid(e.to_string()),
            LogQueryError::UnknownLeaf => Self::NotFound(e.to_string()),
            LogQueryError::MissingLeaf { .. } | LogQueryError::FirstBeyond { .. } => {
                Self::OutOfRange(e.to_string())
            }
            LogQueryError::Log(e) => e.into(),
        }
    }
}

/// A leaf with its inclusion proof and the signed head the proof leads to.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LeafProof {
    /// The leaf data, hex.
    pub leaf: String,
    /// Its hash, hex.
    pub leaf_hash: String,
    /// The inclusion proof.
    pub proof: InclusionProof,
    /// The head it leads to.
    pub head: SignedTreeHead,
}

/// A consistency proof between two signed heads.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Consistency {
    /// The proof.
    pub proof: ConsistencyProof,
    /// The older head.
    pub first: SignedTreeHead,
    /// The newer head.
    pub second: SignedTreeHead,
}

/// Parses a transparency-log leaf hash (64 hex digits).
pub fn parse_leaf_hash(s: &str) -> Result<Hash, LogQueryError> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(LogQueryError::BadHash)
}

impl Registry {
    pub(super) fn log_append(&self, kind: LeafKind, payload: &[u8]) -> Result<u64, RegistryError> {
        self.log_append_leaf(&kind.leaf(payload))
    }

    /// Appends a leaf to the transparency log; durable with the next flush
    /// of the store, which every caller does before it answers.
    pub(super) fn log_append_leaf(&self, leaf: &[u8]) -> Result<u64, RegistryError> {
        let index = self.inner.log.append_unflushed(leaf)?;
        debug!(target: "agentmesh::registry", index, kind = leaf.first().copied(), "logged");
        Ok(index)
    }

    /// The transparency log.
    pub fn log(&self) -> &TransLog {
        &self.inner.log
    }

    /// The head of the first `size` leaves of the transparency log (the
    /// whole log when `None`), signed by the root key.
    pub fn log_head(
        &self,
        size: Option<u64>,
        now_ms: u64,
    ) -> Result<SignedTreeHead, LogQueryError> {
        let log = &self.inner.log;
        // Only leaves on disk are signed over (see `durable_leaves`).
        let durable = self.durable_leaves()?;
        let size = match size {
            Some(s) if s > durable => {
                return Err(LogQueryError::Log(LogError::Range(
                    agentmesh_node::trust::transparency::ProofError::IndexOutOfRange {
                        index: s,
                        size: durable,
                    },
                )))
            }
            Some(s) => s,
            None => durable,
        };
        let root = log.root_at(size)?;
        Ok(SignedTreeHead::sign(self.root(), size, root, now_ms))
    }

    /// Inclusion proof of the leaf at `index` (or with leaf hash `hash`) in
    /// the tree of `size` leaves (the whole log when `None`), with the leaf
    /// data and the signed head the proof leads to.
    pub fn log_proof(
        &self,
        index: Option<u64>,
        hash: Option<&Hash>,
        size: Option<u64>,
        now_ms: u64,
    ) -> Result<LeafProof, LogQueryError> {
        let log = &self.inner.log;
        let index = match (index, hash) {
            (Some(i), None) => i,
            (None, Some(h)) => log.index_of(h)?.ok_or(LogQueryError::UnknownLeaf)?,
            _ => return Err(LogQueryError::IndexOrHash),
        };
        let head = self.log_head(size, now_ms)?;
        let proof = log.inclusion_proof(index, head.size)?;
        let leaf = log
            .leaf(index)?
            .ok_or(LogQueryError::MissingLeaf { index })?;
        Ok(LeafProof {
            leaf: hex::encode(&leaf),
            leaf_hash: hex::encode(leaf_hash(&leaf)),
            proof,
            head,
        })
    }

    /// Consistency proof between the trees of `first` and `second` leaves
    /// (the whole log when `None`), with both signed heads.
    pub fn log_consistency(
        &self,
        first: u64,
        second: Option<u64>,
        now_ms: u64,
    ) -> Result<Consistency, LogQueryError> {
        let newer = self.log_head(second, now_ms)?;
        if first > newer.size {
            return Err(LogQueryError::FirstBeyond {
                first,
                size: newer.size,
            });
        }
        let older = self.log_head(Some(first), now_ms)?;
        let proof = self.inner.log.consistency_proof(first, newer.size)?;
        Ok(Consistency {
            proof,
            first: older,
            second: newer,
        })
    }

    /// Where the first certificate of `chain` is in the log, proven against
    /// the current head; `None` when it is not in the log.
    pub fn inclusion_of(
        &self,
        chain: &CertChain,
        now_ms: u64,
    ) -> Result<Option<LogInclusion>, RegistryError> {
        let leaf = Credentials::log_leaf(chain)?;
        let Some(index) = self.inner.log.index_of(&leaf_hash(&leaf))? else {
            return Ok(None);
        };
        let head = self.log_head(None, now_ms)?;
        if index >= head.size {
            // Appended, but no flush has made it durable yet: no head
            // covers it, so there is nothing to prove it against yet.
            return Ok(None);
        }
        let proof: InclusionProof = self.inner.log.inclusion_proof(index, head.size)?;
        Ok(Some(LogInclusion { proof, head }))
    }
}
