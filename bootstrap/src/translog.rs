//! The registry's transparency log on disk: an append-only Merkle log
//! (RFC 9162 hashing, see [`agentmesh_node::trust::transparency`]) kept in the
//! registry's database ([`crate::storage`]: sled or PostgreSQL).
//!
//! Every append stores, in one transaction, the leaf data, the leaf hash ->
//! index lookup and every perfect subtree hash the leaf completes, so tree
//! heads and proofs cost `O(log n)` reads and the log survives restarts. On
//! PostgreSQL, appends of every bootstrap node sharing the database are
//! serialised by the database, so the log has one sequence.
//!
//! ```
//! use agentmesh_bootstrap::translog::TransLog;
//! use agentmesh_node::{identity::Identity, trust::transparency::LeafKind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let db = agentmesh_bootstrap::storage::Database::open_sled(dir.path())?;
//! let log = TransLog::open(&db)?;
//! let root_key = Identity::generate();
//!
//! let index = log.append(LeafKind::Certificate, b"encoded certificate")?;
//! let head = log.sign_head(&root_key, 1_700_000_000_000)?; // GET /log/head
//! let proof = log.inclusion_proof(index, head.size)?; // GET /log/proof?index=..&size=..
//! let leaf = log.leaf(index)?.expect("stored");
//! proof.verify(&agentmesh_node::trust::transparency::leaf_hash(&leaf), &head)?;
//! let older = log.consistency_proof(0, head.size)?; // GET /log/consistency?first=..&second=..
//! # let _ = older;
//! # Ok(())
//! # }
//! ```

use std::sync::Mutex;

use agentmesh_node::{
    identity::Identity,
    trust::transparency::{
        prove_consistency, prove_inclusion, tree_root, ConsistencyProof, Hash, InclusionProof,
        LeafKind, ProofError, ProveError, SignedTreeHead, SubtreeHashes,
    },
};

use crate::storage::{log_node_key, Database, StoreError, Tree, LOG_SIZE_KEY};

const LEAVES_TREE: &str = "translog/leaves";
const NODES_TREE: &str = "translog/nodes";
const BY_HASH_TREE: &str = "translog/by-hash";
/// Largest leaf accepted.
pub const MAX_LEAF_SIZE: usize = 64 * 1024;

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk store failed.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    /// A stored value is not what the log wrote.
    #[error("corrupt log: {0}")]
    Corrupt(&'static str),
    /// The index or sizes asked for are not in the log.
    #[error("out of range: {0}")]
    Range(#[from] ProofError),
    /// The leaf is larger than [`MAX_LEAF_SIZE`].
    #[error("leaf too large ({0} bytes)")]
    LeafTooLarge(usize),
}

/// The append-only log. Appends are serialized; reads run concurrently.
#[derive(Debug)]
pub struct TransLog {
    db: Database,
    leaves: Tree,
    nodes: Tree,
    by_hash: Tree,
    append_lock: Mutex<()>,
}

impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Storage(StoreError::Db(e))
    }
}

fn to_hash(v: &[u8]) -> Result<Hash, LogError> {
    v.try_into().map_err(|_| LogError::Corrupt("hash length"))
}

impl TransLog {
    /// Opens (or creates) the log in `db`.
    pub fn open(db: &Database) -> Result<Self, LogError> {
        Ok(Self {
            db: db.clone(),
            leaves: db.tree(LEAVES_TREE)?,
            nodes: db.tree(NODES_TREE)?,
            by_hash: db.tree(BY_HASH_TREE)?,
            append_lock: Mutex::new(()),
        })
    }

    /// Number of leaves.
    pub fn size(&self) -> Result<u64, LogError> {
        match self.nodes.get(LOG_SIZE_KEY)? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| LogError::Corrupt("size"))?,
            )),
        }
    }

    /// Appends an entry of `kind`; returns its leaf index. Durable when this
    /// returns.
    pub fn append(&self, kind: LeafKind, payload: &[u8]) -> Result<u64, LogError> {
        self.append_leaf(&kind.leaf(payload))
    }

    /// Appends raw leaf data; returns its leaf index. Durable when this
    /// returns.
    pub fn append_leaf(&self, data: &[u8]) -> Result<u64, LogError> {
        let index = self.append_unflushed(data)?;
        if let Database::Sled(db) = &self.db {
            db.flush()?;
        }
        Ok(index)
    }

    /// Appends raw leaf data without flushing: durable once the database is
    /// flushed, which a caller that writes more in the same step does once
    /// for everything. Proofs and heads see the leaf at once.
    pub fn append_unflushed(&self, data: &[u8]) -> Result<u64, LogError> {
        if data.len() > MAX_LEAF_SIZE {
            return Err(LogError::LeafTooLarge(data.len()));
        }
        let _guard = self
            .append_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = self
            .db
            .append_log(&self.leaves, &self.nodes, &self.by_hash, data)?;
        tracing::debug!(target: "agentmesh::translog", index, "appended");
        Ok(index)
    }

    /// The leaf data at `index`.
    pub fn leaf(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.leaves.get(index.to_be_bytes())?)
    }

    /// Index of the first leaf with hash `leaf` (for proofs by hash).
    pub fn index_of(&self, leaf: &Hash) -> Result<Option<u64>, LogError> {
        match self.by_hash.get(leaf)? {
            None => Ok(None),
            Some(v) => Ok(Some(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| LogError::Corrupt("index"))?,
            ))),
        }
    }

    /// Root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, LogError> {
        let len = self.size()?;
        if size > len {
            return Err(ProofError::IndexOutOfRange {
                index: size,
                size: len,
            }
            .into());
        }
        tree_root(self, size)
    }

    /// Signs the current tree head with the registry root key.
    pub fn sign_head(&self, key: &Identity, now_ms: u64) -> Result<SignedTreeHead, LogError> {
        let size = self.size()?;
        let root = tree_root(self, size)?;
        Ok(SignedTreeHead::sign(key, size, root, now_ms))
    }

    /// Inclusion proof of leaf `index` in the tree of the first `size`
    /// leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, LogError> {
        self.check_size(size)?;
        prove_inclusion(self, index, size).map_err(flatten)
    }

    /// Consistency proof between the trees of the first `first` and the
    /// first `second` leaves.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<ConsistencyProof, LogError> {
        self.check_size(second)?;
        prove_consistency(self, first, second).map_err(flatten)
    }

    fn check_size(&self, size: u64) -> Result<(), LogError> {
        let len = self.size()?;
        if size > len {
            return Err(ProofError::IndexOutOfRange {
                index: size,
                size: len,
            }
            .into());
        }
        Ok(())
    }
}

fn flatten(e: ProveError<LogError>) -> LogError {
    match e {
        ProveError::Range(e) => LogError::Range(e),
        ProveError::Store(e) => e,
        _ => LogError::Corrupt("proof"),
    }
}

impl SubtreeHashes for TransLog {
    type Error = LogError;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, LogError> {
        match self.nodes.get(log_node_key(level, index))? {
            Some(v) => to_hash(&v),
            None => Err(LogError::Corrupt("missing subtree hash")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_node::trust::transparency::{leaf_hash, verify_consistency, MemoryTree};

    #[test]
    fn appends_prove_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = Identity::from_seed(&[9; 32]);
        let vk = key.amid().verifying_key().unwrap();
        let mut mem = MemoryTree::default();
        let first_head;
        {
            let db = Database::open_sled(dir.path()).unwrap();
            let log = TransLog::open(&db).unwrap();
            assert_eq!(log.size().unwrap(), 0);
            for i in 0..13u32 {
                let kind = if i % 3 == 0 {
                    LeafKind::Revocation
                } else {
                    LeafKind::Certificate
                };
                let data = kind.leaf(&i.to_be_bytes());
                assert_eq!(log.append(kind, &i.to_be_bytes()).unwrap(), u64::from(i));
                mem.append(&data);
            }
            first_head = log.sign_head(&key, 1).unwrap();
            first_head.verify(&vk).unwrap();
            assert_eq!(first_head.size, 13);
            assert_eq!(first_head.root, mem.root());
            drop(log);
            if let Database::Sled(db) = &db {
                db.flush().unwrap();
            }
        }
        // Reopen: same contents, appends continue at the next index.
        let db = Database::open_sled(dir.path()).unwrap();
        let log = TransLog::open(&db).unwrap();
        assert_eq!(log.size().unwrap(), 13);
        assert_eq!(log.root_at(13).unwrap(), first_head.root);
        for i in 13..40u32 {
            assert_eq!(
                log.append(LeafKind::KeyBinding, &i.to_be_bytes()).unwrap(),
                u64::from(i)
            );
            mem.append(&LeafKind::KeyBinding.leaf(&i.to_be_bytes()));
        }
        let head = log.sign_head(&key, 2).unwrap();
        assert_eq!(head.root, mem.root());
        for i in 0..40 {
            let p = log.inclusion_proof(i, 40).unwrap();
            assert_eq!(p, mem.inclusion_proof(i, 40).unwrap());
            let leaf = log.leaf(i).unwrap().unwrap();
            p.verify(&leaf_hash(&leaf), &head).unwrap();
            assert_eq!(log.index_of(&leaf_hash(&leaf)).unwrap(), Some(i));
        }
        // Older heads stay provable and consistent with the new one.
        let p = log.inclusion_proof(5, 13).unwrap();
        p.verify(&leaf_hash(&log.leaf(5).unwrap().unwrap()), &first_head)
            .unwrap();
        let c = log.consistency_proof(13, 40).unwrap();
        c.verify(&first_head, &head).unwrap();
        verify_consistency(13, &first_head.root, 40, &head.root, &c.path).unwrap();
        // A proof from the log does not vouch for a leaf that is not in it.
        assert!(p.verify(&leaf_hash(b"forged"), &first_head).is_err());
        // Out of range requests are typed errors.
        assert!(matches!(
            log.inclusion_proof(40, 40),
            Err(LogError::Range(ProofError::IndexOutOfRange { .. }))
        ));
        assert!(matches!(
            log.consistency_proof(1, 41),
            Err(LogError::Range(_))
        ));
        assert!(matches!(
            log.consistency_proof(30, 20),
            Err(LogError::Range(ProofError::SizesOutOfOrder { .. }))
        ));
        assert!(matches!(
            log.append_leaf(&vec![0; MAX_LEAF_SIZE + 1]),
            Err(LogError::LeafTooLarge(_))
        ));
        assert_eq!(log.size().unwrap(), 40);
    }

    #[test]
    fn concurrent_appends_get_distinct_indices() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_sled(dir.path()).unwrap();
        let log = std::sync::Arc::new(TransLog::open(&db).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..10u8)
                        .map(|i| log.append(LeafKind::Certificate, &[t, i]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
        // The stored tree matches one rebuilt from the stored leaves.
        let mut mem = MemoryTree::default();
        for i in 0..40 {
            mem.append(&log.leaf(i).unwrap().unwrap());
        }
        assert_eq!(log.root_at(40).unwrap(), mem.root());
    }
}
