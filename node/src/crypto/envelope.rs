//! Envelopes: the signed, end-to-end encrypted unit of a message.
//!
//! Wire form: CBOR `SignedEnvelope { body, sig }` where `body` is the exact
//! CBOR of [`EnvelopeBody`] and `sig` is the sender's Ed25519 signature over
//! [`DOMAIN_SEP_ENVELOPE`]` || body`. The sender's key is the AMID itself, so
//! the signature is checked before anything else, with no lookup.

use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::identity::{Amid, Identity};

/// Domain-separation context of envelope signatures.
pub const DOMAIN_SEP_ENVELOPE: &[u8] = b"agentmesh/envelope/v1\0";
/// Largest encoded envelope accepted.
pub const MAX_ENVELOPE_SIZE: usize = 96 * 1024;
/// Largest plaintext payload a message may carry.
pub const MAX_PAYLOAD_SIZE: usize = 64 * 1024;
/// Current envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// Longest lifetime an envelope may claim; its replay entry is kept that long.
pub const MAX_ENVELOPE_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Clock skew tolerated on timestamps.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// [`EnvelopeBody::olm_type`] of a control envelope whose `ciphertext` is
/// a [`SignedKnock`](crate::knock::SignedKnock), in the clear: a first
/// contact left in a mailbox (the KNOCK's first message is itself an Olm
/// pre-key message). Its id and expiry are those of that first message.
pub const OLM_TYPE_KNOCK: u8 = 0x80;
/// [`EnvelopeBody::olm_type`] of a control envelope whose `ciphertext` is
/// a [`SignedDecision`](crate::knock::SignedDecision), in the clear: the
/// answer to a KNOCK that came through a mailbox, left in the initiator's
/// mailbox when it could not be reached.
pub const OLM_TYPE_DECISION: u8 = 0x81;

/// Identifier of one message, chosen by its sender. Bytes in CBOR, hex in
/// JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A random id.
    pub fn random() -> Self {
        Self(crate::storage::random_array())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Identifier of a KNOCK-accepted session. Bytes in CBOR, hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

macro_rules! id_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&hex::encode(self.0))
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let bytes = if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    hex::decode(s).map_err(D::Error::custom)?
                } else {
                    serde_bytes::ByteBuf::deserialize(d)?.into_vec()
                };
                let arr: [u8; 16] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| D::Error::custom("id must be 16 bytes"))?;
                Ok(Self(arr))
            }
        }
    };
}

id_serde!(MessageId);
id_serde!(SessionId);
id_serde!(StreamId);

/// Identifier of a stream, chosen by its sender. Bytes in CBOR, hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    /// A random id.
    pub fn random() -> Self {
        Self(crate::storage::random_array())
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl SessionId {
    /// A random id.
    pub fn random() -> Self {
        Self(crate::storage::random_array())
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The signed part of an envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct EnvelopeBody {
    /// Format version.
    pub v: u8,
    /// Message id.
    pub id: MessageId,
    /// Sender.
    pub from: Amid,
    /// Recipient.
    pub to: Amid,
    /// The KNOCK session the message belongs to.
    pub session: SessionId,
    /// Per-session sequence number of the sender.
    pub seq: u64,
    /// Sending time, ms since the epoch.
    pub ts_ms: u64,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
    /// Olm message type (0 = pre-key, 1 = normal), or a control envelope
    /// ([`OLM_TYPE_KNOCK`], [`OLM_TYPE_DECISION`]).
    pub olm_type: u8,
    /// Olm ciphertext.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Over [`MAX_ENVELOPE_SIZE`].
    #[error("envelope too large")]
    TooLarge,
    /// Not a valid envelope encoding.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Unknown version.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The signature does not verify against the sender's AMID.
    #[error("bad envelope signature")]
    BadSignature,
    /// Addressed to another agent.
    #[error("envelope is addressed to {0}")]
    WrongRecipient(Amid),
    /// Past its expiry.
    #[error("envelope expired")]
    Expired,
    /// Timestamp too far in the future.
    #[error("envelope timestamp is in the future")]
    FromTheFuture,
    /// Expiry further away than [`MAX_ENVELOPE_LIFETIME_MS`].
    #[error("envelope expiry is too far in the future")]
    ExpiryTooFar,
}

/// A signed envelope as it travels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedEnvelope {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

impl SignedEnvelope {
    /// Encodes and signs `body`.
    pub fn seal(identity: &Identity, body: &EnvelopeBody) -> Result<Self, EnvelopeError> {
        let body = codec::encode(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let sig = identity.sign(DOMAIN_SEP_ENVELOPE, &body).to_vec();
        Ok(Self { body, sig })
    }

    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes from the wire without verifying.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        codec::decode(bytes, MAX_ENVELOPE_SIZE).map_err(|e| match e {
            codec::CodecError::TooLarge { .. } => EnvelopeError::TooLarge,
            e => EnvelopeError::Malformed(e.to_string()),
        })
    }

    /// Verifies the signature, recipient and time window, returning the body.
    /// Signature first: nothing of an unsigned body is trusted.
    pub fn open(&self, me: &Amid, now_ms: u64) -> Result<EnvelopeBody, EnvelopeError> {
        self.open_with(me, now_ms, |from| from.verifying_key().ok())
    }

    /// [`Self::open`], taking the sender's decoded key from `key_of` (a
    /// cache of keys; `None` when the AMID is not a valid key).
    pub fn open_with(
        &self,
        me: &Amid,
        now_ms: u64,
        key_of: impl FnOnce(&Amid) -> Option<ed25519_dalek::VerifyingKey>,
    ) -> Result<EnvelopeBody, EnvelopeError> {
        let body = self.verify_signature_with(key_of)?;
        if body.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(body.v));
        }
        if &body.to != me {
            return Err(EnvelopeError::WrongRecipient(body.to));
        }
        if body.expires_ms <= now_ms {
            return Err(EnvelopeError::Expired);
        }
        if body.expires_ms > now_ms.saturating_add(MAX_ENVELOPE_LIFETIME_MS) {
            return Err(EnvelopeError::ExpiryTooFar);
        }
        if body.ts_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(EnvelopeError::FromTheFuture);
        }
        Ok(body)
    }

    /// Checks the signature against the sender the body names, and nothing
    /// else: what a relay can check of an envelope it only stores.
    pub fn verify_signature(&self) -> Result<EnvelopeBody, EnvelopeError> {
        self.verify_signature_with(|from| from.verifying_key().ok())
    }

    fn verify_signature_with(
        &self,
        key_of: impl FnOnce(&Amid) -> Option<ed25519_dalek::VerifyingKey>,
    ) -> Result<EnvelopeBody, EnvelopeError> {
        let body: EnvelopeBody = codec::decode(&self.body, MAX_ENVELOPE_SIZE)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let signed = key_of(&body.from)
            .is_some_and(|key| Amid::verify_with(&key, DOMAIN_SEP_ENVELOPE, &self.body, &self.sig));
        if !signed {
            return Err(EnvelopeError::BadSignature);
        }
        Ok(body)
    }

    /// The message id from the (unverified) body, to label a refusal.
    pub fn peek_id(&self) -> Option<MessageId> {
        self.peek().map(|b| b.id)
    }

    /// The (unverified) body: id and expiry for a mailbox deposit or a
    /// refusal's label.
    pub fn peek(&self) -> Option<EnvelopeBody> {
        codec::decode::<EnvelopeBody>(&self.body, MAX_ENVELOPE_SIZE).ok()
    }

    /// Flips one bit of the signed body (for tests of tamper detection).
    #[doc(hidden)]
    pub fn tamper(&mut self) {
        if let Some(b) = self.body.last_mut() {
            *b ^= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest;

    fn body(from: &Identity, to: Amid, ciphertext: Vec<u8>) -> EnvelopeBody {
        EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: MessageId([1; 16]),
            from: from.amid(),
            to,
            session: SessionId([2; 16]),
            seq: 7,
            ts_ms: 1_000,
            expires_ms: 10_000,
            olm_type: 1,
            ciphertext,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let env = SignedEnvelope::seal(&a, &body(&a, b.amid(), vec![9; 10])).unwrap();
        let bytes = env.to_bytes();
        let decoded = SignedEnvelope::from_bytes(&bytes).unwrap();
        assert_eq!(decoded.open(&b.amid(), 2_000).unwrap().seq, 7);
        assert_eq!(
            decoded.open(&a.amid(), 2_000).unwrap_err(),
            EnvelopeError::WrongRecipient(b.amid())
        );
        assert_eq!(
            decoded.open(&b.amid(), 10_000).unwrap_err(),
            EnvelopeError::Expired
        );
        let mut t = decoded.clone();
        t.tamper();
        assert!(t.open(&b.amid(), 2_000).is_err());
    }

    #[test]
    fn far_expiry_is_refused() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let mut far = body(&a, b.amid(), vec![1]);
        far.expires_ms = u64::MAX;
        let far = SignedEnvelope::seal(&a, &far).unwrap();
        assert_eq!(
            far.open(&b.amid(), 2_000).unwrap_err(),
            EnvelopeError::ExpiryTooFar
        );
    }

    #[test]
    fn snapshot() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let env = SignedEnvelope::seal(&a, &body(&a, b.amid(), vec![9; 4])).unwrap();
        let bytes = env.to_bytes();
        // ed25519 is deterministic, so the whole encoding is stable.
        assert_eq!(bytes.len(), 257);
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(
            digest,
            "c13a0e675b01d32d4203eb26e80ff8782e6301568715426e7124a36f2d161fb0"
        );
    }

    #[test]
    fn forged_sender_is_refused() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let mallory = Identity::from_seed(&[3; 32]);
        // mallory signs a body claiming to be from a
        let env = SignedEnvelope::seal(&mallory, &body(&a, b.amid(), vec![1])).unwrap();
        assert_eq!(
            env.open(&b.amid(), 2_000).unwrap_err(),
            EnvelopeError::BadSignature
        );
    }

    proptest! {
        #[test]
        fn encode_decode(ct: Vec<u8>, seq: u64) {
            let a = Identity::from_seed(&[1; 32]);
            let b = Identity::from_seed(&[2; 32]);
            let mut bd = body(&a, b.amid(), ct);
            bd.seq = seq;
            let env = SignedEnvelope::seal(&a, &bd).unwrap();
            let back = SignedEnvelope::from_bytes(&env.to_bytes()).unwrap();
            prop_assert_eq!(back.open(&b.amid(), 2_000).unwrap(), bd);
        }

        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            let me = Identity::from_seed(&[2; 32]).amid();
            if let Ok(e) = SignedEnvelope::from_bytes(&bytes) {
                let _ = e.open(&me, 0);
            }
        }

        #[test]
        fn bit_flips_are_refused(pos: usize, bit in 0u8..8) {
            let a = Identity::from_seed(&[1; 32]);
            let b = Identity::from_seed(&[2; 32]);
            let env = SignedEnvelope::seal(&a, &body(&a, b.amid(), vec![5; 32])).unwrap();
            let mut bytes = env.to_bytes();
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(e) = SignedEnvelope::from_bytes(&bytes) {
                prop_assert!(e.open(&b.amid(), 2_000).is_err() || e == env);
            }
        }
    }
}
