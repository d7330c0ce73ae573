//! Identity rotation: an agent moves to a new key, and those who knew the
//! old one follow it.
//!
//! An AMID is its Ed25519 key, so a new key is a new AMID. A
//! [`SignedRotation`] says "`old` is now `new`": it is signed by both keys
//! (the old one vouches for the move, the new one accepts it), so neither a
//! thief of the new key alone nor a peer replaying an old statement can
//! redirect an agent. The node publishes it in the DHT under the old key
//! (namespace [`ROTATION_NAMESPACE`], the record signed by the old key),
//! for as long as it keeps the old key in its keystore. A sender whose
//! agent's card is gone looks the record up, checks it, and follows, up to
//! [`MAX_HOPS`] rotations; the chain is the agent's AMID history, and each
//! link can be checked by anyone ([`follow`]).

use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use super::{Amid, Identity};

/// Domain separation of the rotation statement, signed by both keys.
pub const DOMAIN_SEP_ROTATION: &[u8] = b"agentmesh/rotation/v1\0";
/// The DHT namespace of rotation records: the record about the old key,
/// signed by it, holds the encoded [`SignedRotation`].
pub const ROTATION_NAMESPACE: &str = "rot";
/// Most rotations followed from one AMID.
pub const MAX_HOPS: usize = 8;
/// Largest encoded [`SignedRotation`].
pub const MAX_ROTATION_SIZE: usize = 512;

/// What the two keys sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct RotationBody {
    /// The key the agent leaves.
    pub old: Amid,
    /// The key the agent moves to.
    pub new: Amid,
    /// When, ms since the epoch.
    pub ts_ms: u64,
}

/// A rotation statement: the body and the signatures of both keys over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct SignedRotation {
    /// The encoded [`RotationBody`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The old key's signature over `DOMAIN_SEP_ROTATION ‖ body`.
    #[serde(with = "serde_bytes")]
    pub sig_old: Vec<u8>,
    /// The new key's signature over `DOMAIN_SEP_ROTATION ‖ body`.
    #[serde(with = "serde_bytes")]
    pub sig_new: Vec<u8>,
}

/// Why a rotation (or a chain of them) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// Does not decode, or over [`MAX_ROTATION_SIZE`].
    #[error("malformed rotation: {0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("rotation signature of the {0} key does not verify")]
    BadSignature(&'static str),
    /// The old and the new key are the same.
    #[error("rotation to the same key")]
    SameKey,
    /// The statement is not about the AMID it was found for.
    #[error("rotation is about {found}, not {expected}")]
    WrongSubject {
        /// The AMID followed.
        expected: Amid,
        /// The AMID the statement names.
        found: Amid,
    },
    /// More than [`MAX_HOPS`] rotations, or a loop.
    #[error("rotation chain too long or looping")]
    TooLong,
}

impl SignedRotation {
    /// `old` moves to `new` at `ts_ms`, signed by both.
    pub fn sign(old: &Identity, new: &Identity, ts_ms: u64) -> Result<Self, RotationError> {
        let body = codec::encode(&RotationBody {
            old: old.amid(),
            new: new.amid(),
            ts_ms,
        })
        .map_err(|e| RotationError::Malformed(e.to_string()))?;
        Ok(Self {
            sig_old: old.sign(DOMAIN_SEP_ROTATION, &body).to_vec(),
            sig_new: new.sign(DOMAIN_SEP_ROTATION, &body).to_vec(),
            body,
        })
    }

    /// Checks both signatures (strictly) and returns the body.
    pub fn verify(&self) -> Result<RotationBody, RotationError> {
        let body: RotationBody = codec::decode(&self.body, MAX_ROTATION_SIZE)
            .map_err(|e| RotationError::Malformed(e.to_string()))?;
        if body.old == body.new {
            return Err(RotationError::SameKey);
        }
        if !body
            .old
            .verify(DOMAIN_SEP_ROTATION, &self.body, &self.sig_old)
        {
            return Err(RotationError::BadSignature("old"));
        }
        if !body
            .new
            .verify(DOMAIN_SEP_ROTATION, &self.body, &self.sig_new)
        {
            return Err(RotationError::BadSignature("new"));
        }
        Ok(body)
    }

    /// The key left, read without checking the signatures (for a statement
    /// already checked).
    pub fn old_unverified(&self) -> Option<Amid> {
        codec::decode::<RotationBody>(&self.body, MAX_ROTATION_SIZE)
            .ok()
            .map(|b| b.old)
    }

    /// Encodes for the DHT or the keystore.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of three byte strings always encodes.
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes (without verifying).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RotationError> {
        codec::decode(bytes, MAX_ROTATION_SIZE).map_err(|e| RotationError::Malformed(e.to_string()))
    }
}

/// Follows `from` through `chain` (in order: the first statement is about
/// `from`, each next one about the previous one's new key): checks every
/// statement and returns the AMID the agent holds now.
pub fn follow(from: Amid, chain: &[SignedRotation]) -> Result<Amid, RotationError> {
    let visited = walk(from, chain)?;
    Ok(*visited.last().unwrap_or(&from))
}

/// Checks an agent's own history: `chain`, oldest first, must lead to `to`.
/// Returns the AMIDs held before `to`, oldest first (empty for an empty
/// chain).
pub fn history(chain: &[SignedRotation], to: &Amid) -> Result<Vec<Amid>, RotationError> {
    let Some(first) = chain.first() else {
        return Ok(Vec::new());
    };
    let from = first.verify()?.old;
    let mut visited = walk(from, chain)?;
    let end = visited.pop().unwrap_or(from);
    if &end != to {
        return Err(RotationError::WrongSubject {
            expected: *to,
            found: end,
        });
    }
    Ok(visited)
}

/// Every AMID from `from` through `chain`, `from` first, each statement
/// checked.
fn walk(from: Amid, chain: &[SignedRotation]) -> Result<Vec<Amid>, RotationError> {
    if chain.len() > MAX_HOPS {
        return Err(RotationError::TooLong);
    }
    let mut seen = vec![from];
    let mut at = from;
    for r in chain {
        let body = r.verify()?;
        if body.old != at {
            return Err(RotationError::WrongSubject {
                expected: at,
                found: body.old,
            });
        }
        if seen.contains(&body.new) {
            return Err(RotationError::TooLong);
        }
        seen.push(body.new);
        at = body.new;
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_of_rotations_is_followed_to_the_key_held_now() {
        let keys: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
        let chain: Vec<SignedRotation> = keys
            .windows(2)
            .map(|w| SignedRotation::sign(&w[0], &w[1], 1_000).unwrap())
            .collect();
        for r in &chain {
            let back = SignedRotation::from_bytes(&r.to_bytes()).unwrap();
            assert_eq!(&back, r);
        }
        assert_eq!(follow(keys[0].amid(), &chain), Ok(keys[3].amid()));
        let before: Vec<Amid> = keys[..3].iter().map(Identity::amid).collect();
        assert_eq!(history(&chain, &keys[3].amid()), Ok(before));
        assert_eq!(history(&[], &keys[3].amid()), Ok(Vec::new()));
        // a history must end at the agent that shows it
        assert!(matches!(
            history(&chain, &keys[2].amid()),
            Err(RotationError::WrongSubject { .. })
        ));
        assert!(matches!(
            history(&chain[1..], &keys[3].amid()),
            Ok(v) if v == [keys[1].amid(), keys[2].amid()]
        ));
        assert_eq!(follow(keys[1].amid(), &chain[1..]), Ok(keys[3].amid()));
        assert_eq!(follow(keys[0].amid(), &[]), Ok(keys[0].amid()));
        // Out of order: the second statement is not about the start.
        assert!(matches!(
            follow(keys[0].amid(), &chain[1..]),
            Err(RotationError::WrongSubject { .. })
        ));
    }

    #[test]
    fn a_rotation_needs_both_keys() {
        let (old, new, thief) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let good = SignedRotation::sign(&old, &new, 5).unwrap();
        let body = good.verify().unwrap();
        assert_eq!(
            (body.old, body.new, body.ts_ms),
            (old.amid(), new.amid(), 5)
        );
        // A thief holding only the new key (or only the old one) cannot
        // make the other signature.
        let mut forged = good.clone();
        forged.sig_old = thief.sign(DOMAIN_SEP_ROTATION, &forged.body).to_vec();
        assert_eq!(forged.verify(), Err(RotationError::BadSignature("old")));
        let mut forged = good.clone();
        forged.sig_new = thief.sign(DOMAIN_SEP_ROTATION, &forged.body).to_vec();
        assert_eq!(forged.verify(), Err(RotationError::BadSignature("new")));
        // A signature over another body, or under another domain.
        let mut forged = good.clone();
        forged.body = codec::encode(&RotationBody {
            old: old.amid(),
            new: thief.amid(),
            ts_ms: 5,
        })
        .unwrap();
        assert!(forged.verify().is_err());
        let mut forged = good.clone();
        forged.sig_old = old.sign(b"agentmesh/other/v1\0", &forged.body).to_vec();
        assert_eq!(forged.verify(), Err(RotationError::BadSignature("old")));
        assert_eq!(
            SignedRotation::sign(&old, &old, 5).unwrap().verify(),
            Err(RotationError::SameKey)
        );
        assert!(SignedRotation::from_bytes(&[0xff; 600]).is_err());
        assert!(SignedRotation::from_bytes(b"garbage").is_err());
    }

    #[test]
    fn loops_and_long_chains_are_refused() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let there = SignedRotation::sign(&a, &b, 1).unwrap();
        let back = SignedRotation::sign(&b, &a, 2).unwrap();
        assert_eq!(
            follow(a.amid(), &[there, back]),
            Err(RotationError::TooLong)
        );
        let keys: Vec<Identity> = (0..MAX_HOPS + 2).map(|_| Identity::generate()).collect();
        let chain: Vec<SignedRotation> = keys
            .windows(2)
            .map(|w| SignedRotation::sign(&w[0], &w[1], 1).unwrap())
            .collect();
        assert_eq!(follow(keys[0].amid(), &chain), Err(RotationError::TooLong));
    }
}
