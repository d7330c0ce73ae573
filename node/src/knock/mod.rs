//! KNOCK: how an agent asks another for a session, and how the receiver
//! decides, by deterministic policy, never by looking at message content.
//!
//! Flow on `/agentmesh/knock/1` (one stream per KNOCK):
//!
//! ```text
//! initiator                                   receiver
//!   | -- SignedKnock {from, to, intent, ts,  --> |  Policy::evaluate(knock, context, now)
//!   |    nonce, session, first envelope}         |
//!   | <-- SignedDecision {Accept|Reject, hash} - |
//! ```
//!
//! The KNOCK carries the first envelope (an Olm pre-key message), so key
//! exchange and KNOCK are one step and a first message is never dropped
//! between them. The decision is signed by the receiver and names the hash of
//! the KNOCK it answers.
//!
//! The receiver's side: the [`policy`] that judges a KNOCK, the [`ratelimit`]
//! buckets per sender, and the [`breaker`]s that stop dialling a failing
//! peer.

pub mod breaker;
pub mod policy;
pub mod ratelimit;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use agentmesh_transports::codec;

use crate::{
    crypto::envelope::{SessionId, MAX_ENVELOPE_SIZE},
    identity::{
        rotation::{self, SignedRotation},
        Amid, Identity,
    },
    trust::credentials::Credentials,
};

/// Domain-separation context of KNOCK signatures.
pub const DOMAIN_SEP_KNOCK: &[u8] = b"agentmesh/knock/v1\0";
/// Domain-separation context of decision signatures.
pub const DOMAIN_SEP_DECISION: &[u8] = b"agentmesh/knock-decision/v1\0";
/// Largest encoded KNOCK accepted.
pub const MAX_KNOCK_SIZE: usize = MAX_ENVELOPE_SIZE + 10 * 1024;
/// Largest encoded decision accepted.
pub const MAX_DECISION_SIZE: usize = 1024;
/// Default lifetime of an accepted session.
pub const DEFAULT_SESSION_TTL_MS: u64 = policy::DEFAULT_SESSION_TTL_MS;
const MAX_INTENT_FIELD: usize = 128;

/// The kind of session asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionType {
    /// One request, one correlated reply.
    RequestResponse,
    /// Ordered, multi-turn.
    #[default]
    Conversation,
    /// A sequence of chunks with back-pressure and a clean end.
    Stream,
    /// A session type this version does not know: refused with
    /// [`RejectReason::InvalidIntent`].
    #[serde(other)]
    Unknown,
}

impl SessionType {
    /// The name used on the wire and in policy files.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionType::RequestResponse => "request_response",
            SessionType::Conversation => "conversation",
            SessionType::Stream => "stream",
            SessionType::Unknown => "unknown",
        }
    }
}

/// What the initiator wants to do: checked by policy without seeing content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Intent {
    /// Capability, e.g. `chat` or `weather/forecast`.
    pub capability: String,
    /// Action, e.g. `query`.
    pub action: String,
    /// Session type.
    pub session_type: SessionType,
    /// The schema the initiator's messages and requests follow, e.g.
    /// `agentmesh/request@1` ([`crate::schema`]); the receiver checks each
    /// one against it. `None`: payloads are free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

impl Default for Intent {
    fn default() -> Self {
        Self {
            capability: "communication/messaging".into(),
            action: "send".into(),
            session_type: SessionType::Conversation,
            schema: None,
        }
    }
}

impl Intent {
    /// An intent for `capability` / `action`.
    pub fn new(capability: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            capability: capability.into(),
            action: action.into(),
            session_type: SessionType::Conversation,
            schema: None,
        }
    }

    /// The same intent for a session of type `t`.
    pub fn with_session_type(mut self, t: SessionType) -> Self {
        self.session_type = t;
        self
    }

    /// The same intent, its messages following schema `id`.
    pub fn with_schema(mut self, id: impl Into<String>) -> Self {
        self.schema = Some(id.into());
        self
    }
}

/// The signed part of a KNOCK.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct KnockBody {
    /// Initiator.
    pub from: Amid,
    /// Receiver.
    pub to: Amid,
    /// What the initiator wants.
    pub intent: Intent,
    /// Session id proposed by the initiator.
    pub session: SessionId,
    /// Sending time, ms since the epoch.
    pub ts_ms: u64,
    /// Random nonce; a reused nonce is refused.
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
    /// The first envelope (Olm pre-key message), encoded.
    #[serde(with = "serde_bytes")]
    pub first: Vec<u8>,
    /// The initiator's certificates and reputation; empty when anonymous.
    #[serde(default, skip_serializing_if = "Credentials::is_empty")]
    pub credentials: Credentials,
    /// The initiator's rotation statements, oldest first, leading to
    /// `from` (at most [`MAX_HOPS`](rotation::MAX_HOPS)); empty when it never rotated. They let
    /// the receiver's allow and block lists follow it to its new key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_from: Vec<SignedRotation>,
}

impl KnockBody {
    /// The AMIDs the initiator held before `from`, oldest first, as its
    /// [`moved_from`](Self::moved_from) statements show (of a KNOCK that
    /// [`SignedKnock::verify`] accepted, which checked them).
    pub fn former(&self) -> Vec<Amid> {
        self.moved_from
            .iter()
            .filter_map(SignedRotation::old_unverified)
            .collect()
    }
}

/// Why a KNOCK (or a message) was refused. Travels on the wire; unknown
/// reasons from newer peers decode as [`RejectReason::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The initiator is on the receiver's blocklist.
    #[error("blocked")]
    Blocked,
    /// The receiver only accepts its allowlist.
    #[error("not on the allowlist")]
    NotAllowed,
    /// The KNOCK is addressed to someone else.
    #[error("wrong recipient")]
    WrongRecipient,
    /// Timestamp outside the accepted window.
    #[error("stale timestamp")]
    StaleTimestamp,
    /// The nonce was seen before.
    #[error("replayed nonce")]
    ReplayedNonce,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The KNOCK is malformed or oversized.
    #[error("malformed request")]
    Malformed,
    /// The prekey the initiator used is gone; retry with the fallback key.
    #[error("prekey unavailable")]
    PrekeyUnavailable,
    /// The first message did not decrypt.
    #[error("decryption failed")]
    DecryptFailed,
    /// The session id is unknown or expired: KNOCK again.
    #[error("unknown session")]
    UnknownSession,
    /// The receiver is overloaded or failed internally.
    #[error("unavailable")]
    Unavailable,
    /// The capability is not in the taxonomy (or `x-<ns>/<cat>`), or the
    /// action is empty.
    #[error("invalid intent")]
    InvalidIntent,
    /// The initiator's tier is below the receiver's minimum.
    #[error("tier too low")]
    TierTooLow,
    /// Over the rate limit: retry later.
    #[error("rate limited")]
    RateLimited,
    /// The receiver's intent rules deny this capability or action.
    #[error("intent denied")]
    IntentDenied,
    /// The initiator (or a certificate in its chain) is revoked.
    #[error("revoked")]
    Revoked,
    /// The initiator's certificates, log proof or reputation attestation do
    /// not verify against the receiver's registry root.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The initiator's attested reputation is below the receiver's minimum,
    /// or none is shown.
    #[error("reputation too low")]
    ReputationTooLow,
    /// The KNOCK names a schema the receiver does not know or does not
    /// take for this capability, or names none where the capability needs
    /// one (the receiver's card lists what it takes).
    #[error("unsupported schema")]
    UnsupportedSchema,
    /// The message does not conform to the session's schema.
    #[error("payload does not conform to the schema")]
    SchemaInvalid,
    /// A reason this version does not know.
    #[serde(other)]
    #[error("other")]
    Other,
}

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Decision {
    /// Session accepted.
    Accept {
        /// The session.
        session: SessionId,
        /// Session expiry, ms since the epoch.
        expires_ms: u64,
    },
    /// Refused.
    Reject {
        /// Why.
        reason: RejectReason,
        /// When over a rate limit: retry after this many ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DecisionBody {
    decision: Decision,
    /// SHA-256 of the KNOCK's signed body.
    #[serde(with = "serde_bytes")]
    knock_hash: [u8; 32],
    /// Hash of the policy that decided.
    #[serde(with = "serde_bytes")]
    policy_hash: [u8; 32],
    ts_ms: u64,
}

/// Errors decoding or verifying KNOCK messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KnockError {
    /// Malformed or oversized.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Bad signature.
    #[error("bad signature")]
    BadSignature,
    /// The decision answers another KNOCK.
    #[error("decision does not answer this knock")]
    Unrelated,
}

/// A signed KNOCK as it travels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedKnock {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

impl SignedKnock {
    /// Signs a KNOCK.
    pub fn sign(identity: &Identity, body: &KnockBody) -> Result<Self, KnockError> {
        let body = codec::encode(body).map_err(|e| KnockError::Malformed(e.to_string()))?;
        let sig = identity.sign(DOMAIN_SEP_KNOCK, &body).to_vec();
        Ok(Self { body, sig })
    }

    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KnockError> {
        codec::decode(bytes, MAX_KNOCK_SIZE).map_err(|e| KnockError::Malformed(e.to_string()))
    }

    /// Verifies the initiator's signature and returns the body.
    pub fn verify(&self) -> Result<KnockBody, KnockError> {
        let body: KnockBody = codec::decode(&self.body, MAX_KNOCK_SIZE)
            .map_err(|e| KnockError::Malformed(e.to_string()))?;
        if body.intent.capability.len() > MAX_INTENT_FIELD
            || body.intent.action.len() > MAX_INTENT_FIELD
            || body
                .intent
                .schema
                .as_ref()
                .is_some_and(|s| s.len() > MAX_INTENT_FIELD)
        {
            return Err(KnockError::Malformed("intent too long".into()));
        }
        if !body.from.verify(DOMAIN_SEP_KNOCK, &self.body, &self.sig) {
            return Err(KnockError::BadSignature);
        }
        // The statements must be the initiator's own history, ending at the
        // key that signed the KNOCK.
        if !body.moved_from.is_empty() {
            rotation::history(&body.moved_from, &body.from)
                .map_err(|e| KnockError::Malformed(format!("rotation history: {e}")))?;
        }
        Ok(body)
    }

    /// SHA-256 of the signed body.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }
}

/// A signed decision as it travels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedDecision {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

impl SignedDecision {
    /// Signs `decision`, made by the policy with hash `policy_hash`, as the
    /// answer to `knock`.
    pub fn sign(
        identity: &Identity,
        knock: &SignedKnock,
        decision: Decision,
        policy_hash: [u8; 32],
        now_ms: u64,
    ) -> Self {
        let body = codec::encode(&DecisionBody {
            decision,
            knock_hash: knock.hash(),
            policy_hash,
            ts_ms: now_ms,
        })
        .unwrap_or_default();
        let sig = identity.sign(DOMAIN_SEP_DECISION, &body).to_vec();
        Self { body, sig }
    }

    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KnockError> {
        codec::decode(bytes, MAX_DECISION_SIZE).map_err(|e| KnockError::Malformed(e.to_string()))
    }

    /// Verifies that `receiver` signed this answer to `knock`; returns the
    /// decision and the hash of the policy that made it.
    pub fn verify(
        &self,
        receiver: &Amid,
        knock: &SignedKnock,
    ) -> Result<(Decision, [u8; 32]), KnockError> {
        self.verify_hash(receiver, &knock.hash())
    }

    /// [`Self::verify`] against the hash of the KNOCK answered (what an
    /// initiator keeps of a KNOCK it left in a mailbox).
    pub fn verify_hash(
        &self,
        receiver: &Amid,
        knock_hash: &[u8; 32],
    ) -> Result<(Decision, [u8; 32]), KnockError> {
        if !receiver.verify(DOMAIN_SEP_DECISION, &self.body, &self.sig) {
            return Err(KnockError::BadSignature);
        }
        let body: DecisionBody = codec::decode(&self.body, MAX_DECISION_SIZE)
            .map_err(|e| KnockError::Malformed(e.to_string()))?;
        if &body.knock_hash != knock_hash {
            return Err(KnockError::Unrelated);
        }
        Ok((body.decision, body.policy_hash))
    }

    /// The hash of the KNOCK this decision says it answers, unverified: to
    /// find the KNOCK before [`Self::verify_hash`].
    pub fn peek_knock_hash(&self) -> Option<[u8; 32]> {
        codec::decode::<DecisionBody>(&self.body, MAX_DECISION_SIZE)
            .ok()
            .map(|b| b.knock_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn knock(from: &Identity, to: Amid, ts: u64) -> KnockBody {
        KnockBody {
            from: from.amid(),
            to,
            intent: Intent::default(),
            session: SessionId([3; 16]),
            ts_ms: ts,
            nonce: [4; 16],
            first: vec![1, 2, 3],
            credentials: Credentials::default(),
            moved_from: Vec::new(),
        }
    }

    #[test]
    fn signed_round_trip() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let k = SignedKnock::sign(&a, &knock(&a, b.amid(), 5)).unwrap();
        let back = SignedKnock::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(back.verify().unwrap().from, a.amid());
        let blocked = Decision::Reject {
            reason: RejectReason::Blocked,
            retry_after_ms: None,
        };
        let d = SignedDecision::sign(&b, &k, blocked.clone(), [7; 32], 6);
        let d2 = SignedDecision::from_bytes(&d.to_bytes()).unwrap();
        assert_eq!(d2.verify(&b.amid(), &k).unwrap(), (blocked, [7; 32]));
        assert_eq!(
            d2.verify(&a.amid(), &k).unwrap_err(),
            KnockError::BadSignature
        );
        let other = SignedKnock::sign(&a, &knock(&a, b.amid(), 7)).unwrap();
        assert_eq!(
            d2.verify(&b.amid(), &other).unwrap_err(),
            KnockError::Unrelated
        );
    }

    #[test]
    fn a_knock_shows_only_its_own_rotation_history() {
        let (old, a, b, other) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let mut body = knock(&a, b.amid(), 5);
        body.moved_from = vec![SignedRotation::sign(&old, &a, 1).unwrap()];
        let k = SignedKnock::sign(&a, &body).unwrap();
        let back = SignedKnock::from_bytes(&k.to_bytes())
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(back.former(), vec![old.amid()]);
        // a history that ends at someone else's key is refused
        body.moved_from = vec![SignedRotation::sign(&old, &other, 1).unwrap()];
        let k = SignedKnock::sign(&a, &body).unwrap();
        assert!(matches!(k.verify(), Err(KnockError::Malformed(_))));
        // and so is one with a forged signature
        let mut forged = SignedRotation::sign(&old, &a, 1).unwrap();
        forged.sig_old[0] ^= 1;
        body.moved_from = vec![forged];
        let k = SignedKnock::sign(&a, &body).unwrap();
        assert!(matches!(k.verify(), Err(KnockError::Malformed(_))));
    }

    #[test]
    fn unknown_session_type_decodes_as_unknown() {
        let bytes = codec::encode(&"telepathy").unwrap();
        let t: SessionType = codec::decode(&bytes, 100).unwrap();
        assert_eq!(t, SessionType::Unknown);
        for t in [
            SessionType::RequestResponse,
            SessionType::Conversation,
            SessionType::Stream,
        ] {
            let back: SessionType = codec::decode(&codec::encode(&t).unwrap(), 100).unwrap();
            assert_eq!(back, t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn unknown_reason_decodes_as_other() {
        let bytes = codec::encode(&"rate_limited_v9").unwrap();
        let r: RejectReason = codec::decode(&bytes, 100).unwrap();
        assert_eq!(r, RejectReason::Other);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            if let Ok(k) = SignedKnock::from_bytes(&bytes) { let _ = k.verify(); }
            let a = Identity::from_seed(&[1; 32]).amid();
            let k = SignedKnock { body: vec![], sig: vec![] };
            if let Ok(d) = SignedDecision::from_bytes(&bytes) { let _ = d.verify(&a, &k); }
        }
    }
}
