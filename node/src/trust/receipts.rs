//! Session receipts: when a conversation ends, both agents sign the same
//! [`ReceiptBody`], and a registry counts the session towards both agents'
//! completion rate and admits ratings for it.
//!
//! ```text
//! ender                                           other agent
//!   ── end message { Proposal: body, ender's signature } ──▶  (end-to-end encrypted)
//!                           checks the body against the session it knows,
//!                           countersigns, keeps the receipt, files it
//!   ◀── MsgFrame::Countersigned { session, signature } ──    (best effort)
//! completes its copy, files it
//! ```
//!
//! The agent that ends the conversation proposes: its end message carries a
//! [`Proposal`], the exact JSON of the body and its signature over
//! [`DOMAIN_SEP_RECEIPT`] ‖ body. The other agent checks the body against
//! the session it holds (same id, the same initiator and responder, marked
//! completed, an end time between the session's start and now), signs the
//! same bytes, and keeps the whole [`SessionReceipt`]. An agent that closes
//! a session abruptly proposes the same way in its `close` frame, with the
//! session marked not completed; a proposal is countersigned only when it
//! records how the session really ended. Its signature goes
//! back to the ender, who completes its own copy. Each side files its copy
//! with its registry, when it has one; a registry takes the same receipt
//! twice as one.
//!
//! Layout of the `receipts` tree (receipts are public once filed, so
//! nothing here is sealed):
//! - `p<session 16>` → [`Proposed`] (CBOR): what we proposed, until the
//!   countersignature arrives or it expires;
//! - `r<session 16>` → [`Held`] (CBOR): a receipt both sides signed, and
//!   where it stands with the registry.

use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::{
    crypto::envelope::SessionId,
    crypto::session::{Role, SessionInfo},
    identity::{Amid, Identity},
    registry::{ReceiptBody, SessionReceipt, DOMAIN_SEP_RECEIPT, MAX_CLOCK_SKEW_MS},
};

/// Largest encoded [`Proposal`] accepted.
pub const MAX_PROPOSAL_SIZE: usize = 1024;
/// How long a proposal waits for its countersignature: as long as the end
/// message may wait in a mailbox, and a day more.
pub const PROPOSAL_TTL_MS: u64 = crate::crypto::session::DEFAULT_MESSAGE_TTL_MS + 24 * 3600 * 1000;

const TREE: &str = "receipts";
const PROPOSED: u8 = b'p';
const HELD: u8 = b'r';

/// What an end message carries: the receipt body, as signed, and the
/// ender's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Wire format: fixed by the receipt domain separation's version.
pub struct Proposal {
    /// JSON of a [`ReceiptBody`].
    pub body: String,
    /// The ender's signature over [`DOMAIN_SEP_RECEIPT`] ‖ body.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl Proposal {
    /// CBOR encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(self)
    }

    /// Decodes a proposal (at most [`MAX_PROPOSAL_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_PROPOSAL_SIZE)
    }
}

/// A proposal of ours waiting for the peer's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The body as signed.
    pub body: String,
    /// Our signature.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
    /// The other agent.
    pub peer: Amid,
    /// Our side of the session.
    pub role: Role,
    /// When the proposal is dropped, ms since the epoch.
    pub expires_ms: u64,
}

/// Where a held receipt stands with the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Filing {
    /// Not filed yet (no registry configured, not reached yet, or it does
    /// not know one of the agents yet).
    Pending,
    /// The registry has it.
    Filed,
    /// The registry refused it for good, with this error code.
    Refused {
        /// The registry's stable error code.
        code: String,
    },
}

/// A receipt both sides signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Held {
    /// The receipt.
    pub receipt: SessionReceipt,
    /// The other agent.
    pub peer: Amid,
    /// Its filing.
    pub filing: Filing,
}

/// Why a receipt could not be made or completed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The proposal or body does not decode.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The body names another session.
    #[error("the receipt names another session")]
    WrongSession,
    /// The body's initiator and responder are not this session's.
    #[error("the receipt names other parties")]
    WrongParties,
    /// The receipt records another outcome than the session had (completed
    /// for a session closed without an end message, or the reverse).
    #[error("the receipt records another outcome of the session")]
    WrongOutcome,
    /// The end time is before the session started or in the future.
    #[error("the receipt's end time is out of range")]
    BadTime,
    /// A signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// No proposal of ours waits for this session.
    #[error("no receipt proposed for this session")]
    NotProposed,
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
}

/// `(initiator, responder)` of a session, from our side of it.
fn parties(me: Amid, info: &SessionInfo) -> (Amid, Amid) {
    match info.role {
        Role::Initiator => (me, info.peer),
        Role::Responder => (info.peer, me),
    }
}

/// The receipt we propose as we end the session `info` at `now_ms`:
/// `completed` with an end message, not completed when we close it
/// abruptly.
pub fn propose(
    identity: &Identity,
    info: &SessionInfo,
    completed: bool,
    now_ms: u64,
) -> Result<Proposal, ReceiptError> {
    let (initiator, responder) = parties(identity.amid(), info);
    let body = ReceiptBody::new(info.id.0, initiator, responder, completed, now_ms);
    let body = serde_json::to_string(&body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let signature = identity.sign(DOMAIN_SEP_RECEIPT, body.as_bytes());
    Ok(Proposal { body, signature })
}

/// Checks the peer's `proposal` for the session `info` it just ended
/// (`completed`: with an end message, or closed abruptly) and signs it:
/// returns the receipt with both signatures, and ours to send back.
pub fn countersign(
    identity: &Identity,
    info: &SessionInfo,
    proposal: &Proposal,
    completed: bool,
    now_ms: u64,
) -> Result<Countersigned, ReceiptError> {
    // Signature first: nothing of an unsigned body is trusted.
    if !info.peer.verify(
        DOMAIN_SEP_RECEIPT,
        proposal.body.as_bytes(),
        &proposal.signature,
    ) {
        return Err(ReceiptError::BadSignature);
    }
    let body: ReceiptBody =
        serde_json::from_str(&proposal.body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    if body.session_id != hex::encode(info.id.0) {
        return Err(ReceiptError::WrongSession);
    }
    if (body.initiator, body.responder) != parties(identity.amid(), info) {
        return Err(ReceiptError::WrongParties);
    }
    if body.completed != completed {
        return Err(ReceiptError::WrongOutcome);
    }
    // Peer-chosen times: saturating, so an extreme one is refused, never
    // an overflow.
    if body.ended_ms.saturating_add(MAX_CLOCK_SKEW_MS) < info.created_ms
        || body.ended_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS)
    {
        return Err(ReceiptError::BadTime);
    }
    let mine = identity.sign(DOMAIN_SEP_RECEIPT, proposal.body.as_bytes());
    let (initiator_sig, responder_sig) = match info.role {
        Role::Initiator => (mine, proposal.signature),
        Role::Responder => (proposal.signature, mine),
    };
    Ok(Countersigned {
        receipt: SessionReceipt::from_signatures(
            proposal.body.clone(),
            initiator_sig,
            responder_sig,
        ),
        signature: mine,
    })
}

/// A receipt we countersigned.
#[derive(Debug, Clone)]
pub struct Countersigned {
    /// The receipt, signed by both parties.
    pub receipt: SessionReceipt,
    /// Our signature, for the proposer to complete its copy.
    pub signature: [u8; 64],
}

/// Our proposal completed with the peer's `signature`; both signatures
/// are checked.
pub fn complete(proposed: &Proposed, signature: [u8; 64]) -> Result<SessionReceipt, ReceiptError> {
    let (initiator_sig, responder_sig) = match proposed.role {
        Role::Initiator => (proposed.signature, signature),
        Role::Responder => (signature, proposed.signature),
    };
    let receipt =
        SessionReceipt::from_signatures(proposed.body.clone(), initiator_sig, responder_sig);
    receipt.verify().map_err(|_| ReceiptError::BadSignature)?;
    Ok(receipt)
}

/// The receipts a node proposed and holds, in its database.
#[derive(Debug, Clone)]
pub struct ReceiptStore {
    tree: sled::Tree,
}

fn key(kind: u8, session: &SessionId) -> [u8; 17] {
    let mut k = [kind; 17];
    k[1..].copy_from_slice(&session.0);
    k
}

fn session_of(key: &[u8]) -> Option<SessionId> {
    key.get(1..17)
        .and_then(|s| <[u8; 16]>::try_from(s).ok())
        .map(SessionId)
}

impl ReceiptStore {
    /// Opens the store in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            tree: db.open_tree(TREE)?,
        })
    }

    fn put<T: Serialize>(&self, k: &[u8], v: &T) -> Result<(), ReceiptError> {
        let bytes = codec::encode(v).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        self.tree.insert(k, bytes)?;
        Ok(())
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, k: &[u8]) -> Result<Option<T>, ReceiptError> {
        match self.tree.get(k)? {
            // Written by us; a value that no longer decodes is dropped.
            Some(v) => Ok(codec::decode(&v, 4 * MAX_PROPOSAL_SIZE).ok()),
            None => Ok(None),
        }
    }

    /// Keeps our proposal for `session`.
    pub fn propose(&self, session: &SessionId, p: &Proposed) -> Result<(), ReceiptError> {
        self.put(&key(PROPOSED, session), p)
    }

    /// Completes our proposal for `session` with the peer's signature, sent
    /// by `from`: stores and returns the receipt.
    pub fn countersigned(
        &self,
        session: &SessionId,
        from: &Amid,
        signature: [u8; 64],
    ) -> Result<Held, ReceiptError> {
        let k = key(PROPOSED, session);
        let proposed: Proposed = self.get(&k)?.ok_or(ReceiptError::NotProposed)?;
        if &proposed.peer != from {
            return Err(ReceiptError::NotProposed);
        }
        let held = Held {
            receipt: complete(&proposed, signature)?,
            peer: proposed.peer,
            filing: Filing::Pending,
        };
        self.hold(session, &held)?;
        self.tree.remove(k)?;
        Ok(held)
    }

    /// Keeps a receipt both sides signed.
    pub fn hold(&self, session: &SessionId, held: &Held) -> Result<(), ReceiptError> {
        self.put(&key(HELD, session), held)
    }

    /// The receipt held for `session`.
    pub fn held(&self, session: &SessionId) -> Result<Option<Held>, ReceiptError> {
        self.get(&key(HELD, session))
    }

    /// Records where the receipt for `session` stands with the registry.
    pub fn set_filing(&self, session: &SessionId, filing: Filing) -> Result<(), ReceiptError> {
        if let Some(mut held) = self.held(session)? {
            held.filing = filing;
            self.hold(session, &held)?;
        }
        Ok(())
    }

    /// Every receipt held, oldest session id order.
    pub fn all(&self) -> Vec<(SessionId, Held)> {
        self.tree
            .scan_prefix([HELD])
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let held = codec::decode(&v, 4 * MAX_PROPOSAL_SIZE).ok()?;
                Some((session_of(&k)?, held))
            })
            .collect()
    }

    /// The receipts not yet filed.
    pub fn pending(&self) -> Vec<(SessionId, Held)> {
        let mut all = self.all();
        all.retain(|(_, h)| h.filing == Filing::Pending);
        all
    }

    /// Drops proposals past their expiry; returns how many.
    pub fn sweep(&self, now_ms: u64) -> Result<usize, ReceiptError> {
        let mut n = 0;
        for (k, v) in self.tree.scan_prefix([PROPOSED]).filter_map(Result::ok) {
            let expired = codec::decode::<Proposed>(&v, 4 * MAX_PROPOSAL_SIZE)
                .map(|p| p.expires_ms <= now_ms)
                .unwrap_or(true);
            if expired {
                self.tree.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knock::Intent;

    const NOW: u64 = 1_700_000_000_000;

    fn info(peer: &Identity, role: Role) -> SessionInfo {
        SessionInfo::new(
            SessionId([7; 16]),
            peer.amid(),
            role,
            Intent::default(),
            NOW - 60_000,
            NOW + 3_600_000,
        )
    }

    fn pair() -> (Identity, Identity) {
        (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]))
    }

    #[test]
    fn both_sides_end_with_the_same_valid_receipt() {
        let (alice, bob) = pair();
        // Alice initiated and ends the session.
        let alice_side = info(&bob, Role::Initiator);
        let bob_side = info(&alice, Role::Responder);
        let p = propose(&alice, &alice_side, true, NOW).unwrap();
        let p = Proposal::from_bytes(&p.to_bytes().unwrap()).unwrap();
        let at_bob = countersign(&bob, &bob_side, &p, true, NOW + 10)
            .unwrap()
            .receipt;
        let body = at_bob.verify().unwrap();
        assert_eq!(body.initiator, alice.amid());
        assert_eq!(body.responder, bob.amid());
        assert!(body.completed);
        assert_eq!(body.ended_ms, NOW);

        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = ReceiptStore::open(&db).unwrap();
        let proposed = Proposed {
            body: p.body.clone(),
            signature: p.signature,
            peer: bob.amid(),
            role: Role::Initiator,
            expires_ms: NOW + PROPOSAL_TTL_MS,
        };
        store.propose(&alice_side.id, &proposed).unwrap();
        let bob_sig = hex::decode(&at_bob.responder_sig).unwrap();
        let bob_sig: [u8; 64] = bob_sig.try_into().unwrap();
        // Only bob can complete it, and only with his signature.
        assert!(matches!(
            store.countersigned(&alice_side.id, &alice.amid(), bob_sig),
            Err(ReceiptError::NotProposed)
        ));
        assert!(matches!(
            store.countersigned(&alice_side.id, &bob.amid(), [9; 64]),
            Err(ReceiptError::BadSignature)
        ));
        let held = store
            .countersigned(&alice_side.id, &bob.amid(), bob_sig)
            .unwrap();
        assert_eq!(held.receipt, at_bob);
        assert_eq!(held.filing, Filing::Pending);
        // The proposal is used up; the receipt stays, until filed.
        assert!(matches!(
            store.countersigned(&alice_side.id, &bob.amid(), bob_sig),
            Err(ReceiptError::NotProposed)
        ));
        assert_eq!(store.pending().len(), 1);
        store.set_filing(&alice_side.id, Filing::Filed).unwrap();
        assert!(store.pending().is_empty());
        drop(store);
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        let store = ReceiptStore::open(&db).unwrap();
        let all = store.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.filing, Filing::Filed);
        assert_eq!(all[0].1.receipt, at_bob);
    }

    #[test]
    fn extreme_end_times_are_refused_not_overflowed() {
        let (alice, bob) = pair();
        let bob_side = info(&alice, Role::Responder);
        for ended_ms in [u64::MAX, u64::MAX - MAX_CLOCK_SKEW_MS + 1, 0] {
            let p = propose(&alice, &info(&bob, Role::Initiator), true, ended_ms).unwrap();
            assert!(matches!(
                countersign(&bob, &bob_side, &p, true, NOW),
                Err(ReceiptError::BadTime)
            ));
        }
        // An unsigned extreme proposal is refused for its signature first.
        let mut p = propose(&alice, &info(&bob, Role::Initiator), true, u64::MAX).unwrap();
        p.signature = [0; 64];
        assert!(matches!(
            countersign(&bob, &bob_side, &p, true, NOW),
            Err(ReceiptError::BadSignature)
        ));
    }

    #[test]
    fn a_responder_ending_the_session_signs_as_responder() {
        let (alice, bob) = pair();
        let p = propose(&bob, &info(&alice, Role::Responder), true, NOW).unwrap();
        let r = countersign(&alice, &info(&bob, Role::Initiator), &p, true, NOW)
            .unwrap()
            .receipt;
        let body = r.verify().unwrap();
        assert_eq!((body.initiator, body.responder), (alice.amid(), bob.amid()));
    }

    #[test]
    fn proposals_that_do_not_match_the_session_are_refused() {
        let (alice, bob) = pair();
        let bob_side = info(&alice, Role::Responder);
        let sign = |body: &ReceiptBody, who: &Identity| {
            let body = serde_json::to_string(body).unwrap();
            let signature = who.sign(DOMAIN_SEP_RECEIPT, body.as_bytes());
            Proposal { body, signature }
        };
        let good = ReceiptBody::new([7; 16], alice.amid(), bob.amid(), true, NOW);
        assert!(countersign(&bob, &bob_side, &sign(&good, &alice), true, NOW).is_ok());

        let other_session = ReceiptBody::new([8; 16], alice.amid(), bob.amid(), true, NOW);
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&other_session, &alice), true, NOW),
            Err(ReceiptError::WrongSession)
        ));
        // Alice claiming bob initiated.
        let swapped = ReceiptBody::new([7; 16], bob.amid(), alice.amid(), true, NOW);
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&swapped, &alice), true, NOW),
            Err(ReceiptError::WrongParties)
        ));
        // An end message records a completed session, an abrupt close an
        // incomplete one; a proposal must say what happened.
        let incomplete = ReceiptBody::new([7; 16], alice.amid(), bob.amid(), false, NOW);
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&incomplete, &alice), true, NOW),
            Err(ReceiptError::WrongOutcome)
        ));
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&good, &alice), false, NOW),
            Err(ReceiptError::WrongOutcome)
        ));
        let closed = countersign(&bob, &bob_side, &sign(&incomplete, &alice), false, NOW).unwrap();
        assert!(!closed.receipt.verify().unwrap().completed);
        assert_eq!(hex::encode(closed.signature), closed.receipt.responder_sig);
        let future = ReceiptBody::new([7; 16], alice.amid(), bob.amid(), true, NOW + 3_600_000);
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&future, &alice), true, NOW),
            Err(ReceiptError::BadTime)
        ));
        let before_start =
            ReceiptBody::new([7; 16], alice.amid(), bob.amid(), true, NOW - 3_600_000);
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&before_start, &alice), true, NOW),
            Err(ReceiptError::BadTime)
        ));
        // Signed by someone else than alice.
        let mallory = Identity::from_seed(&[3; 32]);
        assert!(matches!(
            countersign(&bob, &bob_side, &sign(&good, &mallory), true, NOW),
            Err(ReceiptError::BadSignature)
        ));
        let garbage = Proposal {
            body: "{not json".into(),
            signature: [0; 64],
        };
        assert!(matches!(
            countersign(&bob, &bob_side, &garbage, true, NOW),
            Err(ReceiptError::BadSignature)
        ));
        let body = "{not json".to_string();
        let signature = alice.sign(DOMAIN_SEP_RECEIPT, body.as_bytes());
        let signed_garbage = Proposal { body, signature };
        assert!(matches!(
            countersign(&bob, &bob_side, &signed_garbage, true, NOW),
            Err(ReceiptError::Malformed(_))
        ));
        assert!(Proposal::from_bytes(&[0xff; 8]).is_err());
        assert!(Proposal::from_bytes(&vec![0x61; MAX_PROPOSAL_SIZE + 1]).is_err());
    }

    #[test]
    fn expired_proposals_are_swept() {
        let (alice, bob) = pair();
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = ReceiptStore::open(&db).unwrap();
        let p = propose(&alice, &info(&bob, Role::Initiator), true, NOW).unwrap();
        let proposed = Proposed {
            body: p.body,
            signature: p.signature,
            peer: bob.amid(),
            role: Role::Initiator,
            expires_ms: NOW + 1000,
        };
        store.propose(&SessionId([7; 16]), &proposed).unwrap();
        assert_eq!(store.sweep(NOW).unwrap(), 0);
        assert_eq!(store.sweep(NOW + 1000).unwrap(), 1);
        assert!(matches!(
            store.countersigned(&SessionId([7; 16]), &bob.amid(), [0; 64]),
            Err(ReceiptError::NotProposed)
        ));
    }
}
