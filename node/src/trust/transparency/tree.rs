//! Building a log: [`MemoryTree`], and the perfect subtree hashes an append
//! completes.

use super::{
    empty_root, leaf_hash, node_hash, prove_consistency, prove_inclusion, tree_root,
    ConsistencyProof, Hash, InclusionProof, ProofError, ProveError, SubtreeHashes,
};

/// A log kept in memory: every perfect subtree hash, by level. For tests,
/// monitors and small logs; the registry keeps the same layout on disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// Appends leaf data; returns its index.
    pub fn append(&mut self, data: &[u8]) -> u64 {
        self.append_hash(leaf_hash(data))
    }

    /// Appends a leaf by its hash; returns its index.
    pub fn append_hash(&mut self, leaf: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let index = self.levels[0].len() as u64;
        for (level, hash) in complete_subtrees(index, leaf, |l, i| {
            self.levels
                .get(l as usize)
                .and_then(|v| v.get(i as usize))
                .copied()
                .ok_or(())
        })
        .unwrap_or_default()
        {
            let l = level as usize;
            if self.levels.len() <= l {
                self.levels.push(Vec::new());
            }
            self.levels[l].push(hash);
        }
        index
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |v| v.len() as u64)
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.len()).unwrap_or_else(|_| empty_root())
    }

    /// Root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.len() {
            return Err(ProofError::IndexOutOfRange {
                index: size,
                size: self.len(),
            });
        }
        tree_root(self, size).map_err(|_| ProofError::BadLength)
    }

    /// Inclusion proof of leaf `index` in the tree of the first `size`
    /// leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, ProofError> {
        if size > self.len() {
            return Err(ProofError::IndexOutOfRange {
                index: size,
                size: self.len(),
            });
        }
        prove_inclusion(self, index, size).map_err(|e| match e {
            ProveError::Range(e) => e,
            ProveError::Store(()) => ProofError::BadLength,
        })
    }

    /// Consistency proof between the first `first` and first `second`
    /// leaves.
    pub fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<ConsistencyProof, ProofError> {
        if second > self.len() {
            return Err(ProofError::IndexOutOfRange {
                index: second,
                size: self.len(),
            });
        }
        prove_consistency(self, first, second).map_err(|e| match e {
            ProveError::Range(e) => e,
            ProveError::Store(()) => ProofError::BadLength,
        })
    }
}

impl SubtreeHashes for MemoryTree {
    type Error = ();
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, ()> {
        self.levels
            .get(level as usize)
            .and_then(|v| v.get(index as usize))
            .copied()
            .ok_or(())
    }
}

/// The perfect subtree hashes that appending leaf `index` (hash `leaf`)
/// completes, from level 0 up: `(level, hash)`; the subtree at level `l`
/// has index `index >> l`. `get(level, index)` reads hashes stored before.
pub fn complete_subtrees<E>(
    index: u64,
    leaf: Hash,
    get: impl Fn(u32, u64) -> Result<Hash, E>,
) -> Result<Vec<(u32, Hash)>, E> {
    let mut out = vec![(0, leaf)];
    let mut level = 0u32;
    let mut i = index;
    let mut h = leaf;
    while i & 1 == 1 {
        let left = get(level, i - 1)?;
        h = node_hash(&left, &h);
        level += 1;
        i >>= 1;
        out.push((level, h));
    }
    Ok(out)
}
