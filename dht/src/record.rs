//! Signed records: wire format and validation (pure, no I/O).
//!
//! Wire form: CBOR `SignedRecord { body: bytes, signature: bytes }` where
//! `body` is the exact CBOR encoding of [`RecordBody`]. The signature covers
//! `DOMAIN_SEP_RECORD || body`, never a re-encoding.

use std::time::{SystemTime, UNIX_EPOCH};

use agentmesh_transports::codec::{self, CodecError};
use ed25519_dalek::{Signature, VerifyingKey};
use libp2p::{
    identity::{Keypair, PublicKey},
    PeerId,
};
use serde::{Deserialize, Serialize};

/// Largest encoded record accepted, in bytes.
pub const MAX_RECORD_SIZE: usize = 16 * 1024;
/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Domain-separation context of record signatures.
pub const DOMAIN_SEP_RECORD: &[u8] = b"agentmesh/dht-record/v1\0";

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The DHT key of the record in `namespace` about `subject`.
pub fn record_key(namespace: &str, subject: &PeerId) -> Vec<u8> {
    format!("/{namespace}/{subject}").into_bytes()
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The encoded record is over [`MAX_RECORD_SIZE`].
    #[error("record of {0} bytes is over the size limit")]
    TooLarge(usize),
    /// The bytes do not decode.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The namespace is empty, too long or has a `/`.
    #[error("invalid namespace")]
    InvalidNamespace,
    /// The embedded key is not a valid Ed25519 public key.
    #[error("invalid public key")]
    InvalidKey,
    /// The embedded key is a point of small order: signatures that verify
    /// against it can be made without any secret.
    #[error("weak (small-order) public key")]
    WeakKey,
    /// The signature does not verify against the subject's key.
    #[error("bad signature")]
    BadSignature,
    /// The record has expired.
    #[error("record expired at {expires_ms}")]
    Expired {
        /// Expiry, ms since the epoch.
        expires_ms: u64,
    },
    /// The record is stored under a key that is not its own.
    #[error("record stored under a foreign key")]
    KeyMismatch,
    /// A record with a higher (or same, different) sequence is already known.
    #[error("stale sequence {got}, have {have}")]
    StaleSequence {
        /// Sequence of the refused record.
        got: u64,
        /// Sequence already held.
        have: u64,
    },
    /// The record could not be encoded.
    #[error("encoding failed")]
    Encode,
    /// The store holds as many records as it may.
    #[error("record store full")]
    StoreFull,
    /// The store's bookkeeping cannot be trusted: a thread panicked while
    /// holding its lock. Nothing more is admitted until the process
    /// restarts (it fails closed).
    #[error("record store unavailable: its lock is poisoned")]
    StorePoisoned,
    /// The store does not serve this namespace.
    #[error("namespace {0:?} is not served here")]
    NamespaceNotServed(String),
    /// The record claims a lifetime longer than the store allows.
    #[error("record expires at {expires_ms}, later than the {max_ms} allowed")]
    ExpiryTooFar {
        /// The record's expiry, ms since the epoch.
        expires_ms: u64,
        /// The latest expiry accepted now.
        max_ms: u64,
    },
}

impl From<CodecError> for RecordError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { len, .. } => RecordError::TooLarge(len),
            CodecError::Encode(_) => RecordError::Encode,
            other => RecordError::Malformed(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct RecordBody {
    namespace: String,
    #[serde(with = "serde_bytes")]
    public_key: Vec<u8>,
    seq: u64,
    expires_ms: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// A signed record as it travels and is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedRecord {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// A record whose signature, size, and namespace have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// Namespace, e.g. `card`.
    pub namespace: String,
    /// The peer the record is about, who signed it.
    pub subject: PeerId,
    /// The subject's public key.
    pub public_key: PublicKey,
    /// Sequence number; a newer record has a higher one.
    pub seq: u64,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
    /// The opaque payload.
    pub payload: Vec<u8>,
    /// The signed record, as received.
    pub signed: SignedRecord,
}

fn check_namespace(ns: &str) -> Result<(), RecordError> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN || ns.contains('/') {
        return Err(RecordError::InvalidNamespace);
    }
    Ok(())
}

/// Verifies `signature` over `DOMAIN_SEP_RECORD || body` by `key`,
/// strictly, refusing keys that are not Ed25519 or of small order.
fn verify_strict(key: &PublicKey, body: &[u8], signature: &[u8]) -> Result<(), RecordError> {
    let ed = key
        .clone()
        .try_into_ed25519()
        .map_err(|_| RecordError::InvalidKey)?;
    let key = VerifyingKey::from_bytes(&ed.to_bytes()).map_err(|_| RecordError::InvalidKey)?;
    if key.is_weak() {
        return Err(RecordError::WeakKey);
    }
    let signature = Signature::from_slice(signature).map_err(|_| RecordError::BadSignature)?;
    key.verify_strict(&[DOMAIN_SEP_RECORD, body].concat(), &signature)
        .map_err(|_| RecordError::BadSignature)
}

impl SignedRecord {
    /// Signs a record in `namespace` about the key's own peer.
    pub fn sign(
        key: &Keypair,
        namespace: &str,
        payload: Vec<u8>,
        seq: u64,
        expires_ms: u64,
    ) -> Result<Self, RecordError> {
        check_namespace(namespace)?;
        let body = RecordBody {
            namespace: namespace.to_owned(),
            public_key: key.public().encode_protobuf(),
            seq,
            expires_ms,
            payload,
        };
        let body = codec::encode(&body)?;
        let signature = key
            .sign(&[DOMAIN_SEP_RECORD, &body].concat())
            .map_err(|_| RecordError::InvalidKey)?;
        let record = Self { body, signature };
        let len = record.to_bytes()?.len();
        if len > MAX_RECORD_SIZE {
            return Err(RecordError::TooLarge(len));
        }
        Ok(record)
    }

    /// Encodes the record for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        Ok(codec::encode(self)?)
    }

    /// Decodes a record from the wire, without verifying it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        Ok(codec::decode(bytes, MAX_RECORD_SIZE)?)
    }

    /// Checks the signature, namespace and expiry at `now_ms`.
    ///
    /// The subject's key must be Ed25519 and not of small order
    /// ([`RecordError::WeakKey`]), and the signature is verified strictly
    /// (`verify_strict`: canonical, no small-order `R`), so no record can be
    /// signed without the subject's secret and no signature is malleable.
    pub fn verify(self, now_ms: u64) -> Result<VerifiedRecord, RecordError> {
        let body: RecordBody = codec::decode(&self.body, MAX_RECORD_SIZE)?;
        check_namespace(&body.namespace)?;
        let public_key = PublicKey::try_decode_protobuf(&body.public_key)
            .map_err(|_| RecordError::InvalidKey)?;
        verify_strict(&public_key, &self.body, &self.signature)?;
        if body.expires_ms <= now_ms {
            return Err(RecordError::Expired {
                expires_ms: body.expires_ms,
            });
        }
        Ok(VerifiedRecord {
            namespace: body.namespace,
            subject: public_key.to_peer_id(),
            public_key,
            seq: body.seq,
            expires_ms: body.expires_ms,
            payload: body.payload,
            signed: self,
        })
    }

    /// Decodes and verifies `bytes` found under DHT key `key` at `now_ms`.
    pub fn validate(bytes: &[u8], key: &[u8], now_ms: u64) -> Result<VerifiedRecord, RecordError> {
        let record = Self::from_bytes(bytes)?.verify(now_ms)?;
        if record.key() != key {
            return Err(RecordError::KeyMismatch);
        }
        Ok(record)
    }
}

impl VerifiedRecord {
    /// The DHT key this record lives under.
    pub fn key(&self) -> Vec<u8> {
        record_key(&self.namespace, &self.subject)
    }

    /// Whether this record may replace `existing`: the sequence only grows;
    /// the same sequence is accepted only for the very same record.
    pub fn may_replace(&self, existing: &VerifiedRecord) -> Result<(), RecordError> {
        if self.seq > existing.seq || (self.seq == existing.seq && self.signed == existing.signed) {
            Ok(())
        } else {
            Err(RecordError::StaleSequence {
                got: self.seq,
                have: existing.seq,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: &Keypair, seq: u64, exp: u64) -> SignedRecord {
        SignedRecord::sign(key, "card", b"payload".to_vec(), seq, exp).unwrap()
    }

    #[test]
    fn valid_record_verifies() {
        let k = Keypair::generate_ed25519();
        let r = rec(&k, 1, 2000);
        let bytes = r.to_bytes().unwrap();
        let key = record_key("card", &k.public().to_peer_id());
        let v = SignedRecord::validate(&bytes, &key, 1000).unwrap();
        assert_eq!(v.subject, k.public().to_peer_id());
        assert_eq!(v.payload, b"payload");
    }

    #[test]
    fn bad_signature_is_refused() {
        let k = Keypair::generate_ed25519();
        let mut r = rec(&k, 1, 2000);
        r.signature[0] ^= 1;
        assert_eq!(r.verify(1000).unwrap_err(), RecordError::BadSignature);
        let mut r = rec(&k, 1, 2000);
        let last = r.body.len() - 1;
        r.body[last] ^= 1;
        assert!(r.verify(1000).is_err());
    }

    /// The identity point: a valid encoding, of small order.
    fn weak_key() -> PublicKey {
        let mut weak = [0u8; 32];
        weak[0] = 1;
        libp2p::identity::ed25519::PublicKey::try_from_bytes(&weak)
            .unwrap()
            .into()
    }

    #[test]
    fn a_record_of_a_weak_key_is_refused() {
        // With the identity point as key, the signature R = identity,
        // s = 0 satisfies the plain verification equation for any body:
        // anyone could publish records about this subject.
        let body = codec::encode(&RecordBody {
            namespace: "card".into(),
            public_key: weak_key().encode_protobuf(),
            seq: 1,
            expires_ms: 2000,
            payload: b"forged".to_vec(),
        })
        .unwrap();
        let mut signature = vec![0u8; 64];
        signature[0] = 1;
        let forged = SignedRecord { body, signature };
        assert_eq!(
            forged.clone().verify(1000).unwrap_err(),
            RecordError::WeakKey
        );
        let key = record_key("card", &weak_key().to_peer_id());
        assert_eq!(
            SignedRecord::validate(&forged.to_bytes().unwrap(), &key, 1000).unwrap_err(),
            RecordError::WeakKey
        );
    }

    #[test]
    fn expired_is_refused() {
        let k = Keypair::generate_ed25519();
        assert_eq!(
            rec(&k, 1, 2000).verify(2000).unwrap_err(),
            RecordError::Expired { expires_ms: 2000 }
        );
    }

    #[test]
    fn foreign_key_is_refused() {
        let k = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let bytes = rec(&k, 1, 2000).to_bytes().unwrap();
        let key = record_key("card", &other.public().to_peer_id());
        assert_eq!(
            SignedRecord::validate(&bytes, &key, 0).unwrap_err(),
            RecordError::KeyMismatch
        );
    }

    #[test]
    fn lower_sequence_is_refused() {
        let k = Keypair::generate_ed25519();
        let old = rec(&k, 5, 2000).verify(0).unwrap();
        let lower = rec(&k, 4, 2000).verify(0).unwrap();
        let same = rec(&k, 5, 2000).verify(0).unwrap();
        let higher = rec(&k, 6, 2000).verify(0).unwrap();
        assert_eq!(
            lower.may_replace(&old).unwrap_err(),
            RecordError::StaleSequence { got: 4, have: 5 }
        );
        // ed25519 signatures are deterministic: the same record re-signed is identical.
        assert!(same.may_replace(&old).is_ok());
        assert!(higher.may_replace(&old).is_ok());
        let other_same = SignedRecord::sign(&k, "card", b"other".to_vec(), 5, 2000)
            .unwrap()
            .verify(0)
            .unwrap();
        assert!(other_same.may_replace(&old).is_err());
    }

    #[test]
    fn oversized_is_refused() {
        let k = Keypair::generate_ed25519();
        assert!(matches!(
            SignedRecord::sign(&k, "card", vec![0; MAX_RECORD_SIZE], 1, 2),
            Err(RecordError::TooLarge(_))
        ));
        assert!(matches!(
            SignedRecord::from_bytes(&vec![0; MAX_RECORD_SIZE + 1]),
            Err(RecordError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes: Vec<u8>) {
            let _ = SignedRecord::validate(&bytes, b"/card/x", 0);
        }

        #[test]
        fn round_trip(payload: Vec<u8>, seq: u64) {
            let k = Keypair::generate_ed25519();
            let r = SignedRecord::sign(&k, "ns", payload.clone(), seq, u64::MAX).unwrap();
            let bytes = r.to_bytes().unwrap();
            let v = SignedRecord::from_bytes(&bytes).unwrap().verify(0).unwrap();
            prop_assert_eq!(v.payload, payload);
            prop_assert_eq!(v.seq, seq);
        }
    }
}
