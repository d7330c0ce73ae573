//! Proof generation from the hashes of perfect subtrees: tree roots,
//! inclusion and consistency proofs.

use super::{empty_root, node_hash, split, ConsistencyProof, Hash, InclusionProof, ProofError};

/// Hashes `2^level` leaves starting at leaf `index << level` (a perfect,
/// aligned subtree): what a log stores for proof generation.
pub trait SubtreeHashes {
    /// Error of the store.
    type Error;
    /// Hash of the perfect subtree at (`level`, `index`).
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Errors of proof generation: the request is out of range, or the store
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProveError<E> {
    /// The sizes or index asked for are not in the tree.
    #[error("out of range: {0}")]
    Range(ProofError),
    /// The hash store failed.
    #[error("store: {0}")]
    Store(E),
}

/// Root of the leaves `[start, start + n)`, where `start` is aligned to the
/// smallest power of two `>= n` (true of every range the RFC recursion
/// visits).
fn range_root<S: SubtreeHashes>(s: &S, start: u64, n: u64) -> Result<Hash, S::Error> {
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return s.subtree(level, start >> level);
    }
    let k = split(n);
    let l = range_root(s, start, k)?;
    let r = range_root(s, start + k, n - k)?;
    Ok(node_hash(&l, &r))
}

/// Root of the first `size` leaves.
pub fn tree_root<S: SubtreeHashes>(s: &S, size: u64) -> Result<Hash, S::Error> {
    range_root(s, 0, size)
}

/// `PATH(m, D[start : start + n])` of RFC 9162 §2.1.3.1.
fn path<S: SubtreeHashes>(
    s: &S,
    m: u64,
    start: u64,
    n: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(s, m, start, k, out)?;
        out.push(range_root(s, start + k, n - k)?);
    } else {
        path(s, m - k, start + k, n - k, out)?;
        out.push(range_root(s, start, k)?);
    }
    Ok(())
}

/// `SUBPROOF(m, D[start : start + n], b)` of RFC 9162 §2.1.4.1.
fn subproof<S: SubtreeHashes>(
    s: &S,
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if m == n {
        if !complete {
            out.push(range_root(s, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(s, m, start, k, complete, out)?;
        out.push(range_root(s, start + k, n - k)?);
    } else {
        subproof(s, m - k, start + k, n - k, false, out)?;
        out.push(range_root(s, start, k)?);
    }
    Ok(())
}

/// The inclusion proof of leaf `index` in the tree of the first `size`
/// leaves.
pub fn prove_inclusion<S: SubtreeHashes>(
    s: &S,
    index: u64,
    size: u64,
) -> Result<InclusionProof, ProveError<S::Error>> {
    if index >= size {
        return Err(ProveError::Range(ProofError::IndexOutOfRange {
            index,
            size,
        }));
    }
    let mut out = Vec::new();
    path(s, index, 0, size, &mut out).map_err(ProveError::Store)?;
    Ok(InclusionProof {
        leaf_index: index,
        tree_size: size,
        path: out,
    })
}

/// The consistency proof between the trees of the first `first` and the
/// first `second` leaves (empty when `first` is 0 or equals `second`).
pub fn prove_consistency<S: SubtreeHashes>(
    s: &S,
    first: u64,
    second: u64,
) -> Result<ConsistencyProof, ProveError<S::Error>> {
    if first > second {
        return Err(ProveError::Range(ProofError::SizesOutOfOrder {
            first,
            second,
        }));
    }
    let mut out = Vec::new();
    if first > 0 && first < second {
        subproof(s, first, 0, second, true, &mut out).map_err(ProveError::Store)?;
    }
    Ok(ConsistencyProof {
        first_size: first,
        second_size: second,
        path: out,
    })
}
