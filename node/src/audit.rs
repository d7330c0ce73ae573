//! The audit log: an append-only, hash-chained record of what the node
//! decided and did, kept in sled and optionally encrypted at rest.
//!
//! Every [`AuditEntry`] names the hash of the entry before it, so rewriting,
//! reordering or removing an entry breaks the chain at that position and
//! [`AuditLog::verify`] reports where:
//!
//! ```text
//! hash(n) = SHA-256(DOMAIN_SEP_AUDIT || n (u64 BE) || ts_ms (u64 BE)
//!                   || hash(n-1) || CBOR(event))        hash(-1) = 0^32
//! ```
//!
//! Events carry metadata only (who, which session, which message id, sizes,
//! reasons), never message content.
//!
//! Layout of the `audit` tree: key = index (u64 BE), value = CBOR record
//! `{index, ts_ms, prev_hash, event, hash}` where `event` is the CBOR of the
//! [`AuditEvent`] exactly as it was hashed (so verifying never depends on
//! re-encoding, and an entry written by a newer version with an event kind
//! this one does not know still verifies). With a storage key, each value is
//! sealed with XChaCha20-Poly1305 under a key derived for `"audit"`, with the
//! entry's key as associated data, so an entry cannot be read, altered or
//! moved to another position without the storage key.
//!
//! What the chain does not prove on its own: without a storage key, anyone
//! able to write the database can rebuild the whole chain, and anyone can
//! drop entries from its end. Keep [`AuditLog::last_hash`] somewhere else
//! (or use a storage key) to anchor it. One [`AuditLog`] should own the tree:
//! a second writer on the same tree is refused at the first clash of indices.
//!
//! Nothing here reads the clock: time is an argument.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use agentmesh_transports::codec;

use crate::{
    crypto::envelope::{MessageId, SessionId},
    identity::Amid,
    knock::{Intent, RejectReason},
    storage::{derive, Sealer},
};

/// Domain-separation context of the audit hash chain.
pub const DOMAIN_SEP_AUDIT: &[u8] = b"agentmesh/audit/v1\0";
/// Name of the sled tree that holds the log.
pub const AUDIT_TREE: &str = "audit";
/// Largest encoded [`AuditEvent`] accepted, on append and on reading.
pub const MAX_AUDIT_EVENT_SIZE: usize = 16 * 1024;
/// Room for the record around the event: field names, index, time, hashes.
const RECORD_OVERHEAD: usize = 256;
/// Largest encoded record accepted when reading.
const MAX_RECORD_SIZE: usize = MAX_AUDIT_EVENT_SIZE + RECORD_OVERHEAD;
/// HKDF purpose of the sealing key.
const SEAL_PURPOSE: &str = "audit";
/// What sealing adds: a 24-byte nonce and a 16-byte tag.
const SEAL_OVERHEAD: usize = 24 + 16;

/// One thing that happened, as recorded. Metadata only: never plaintext.
///
/// In JSON (and CBOR) an event is a map whose `kind` field names the variant
/// in snake case, e.g. `{"kind": "message_in", "from": "am1…", …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// Our policy answered a KNOCK.
    KnockDecision {
        /// The initiator.
        #[serde(deserialize_with = "flex::amid")]
        from: Amid,
        /// Whether the session was accepted.
        accepted: bool,
        /// Why it was refused, when it was.
        reason: Option<RejectReason>,
        /// The session, when accepted.
        #[serde(default, deserialize_with = "flex::opt_session")]
        session: Option<SessionId>,
        /// What the initiator asked for, when the KNOCK could be read.
        intent: Option<Intent>,
        /// Hash of the policy that decided.
        policy_hash: Option<String>,
    },
    /// A session was set up.
    SessionOpened {
        /// The other agent.
        #[serde(deserialize_with = "flex::amid")]
        peer: Amid,
        /// The session.
        #[serde(deserialize_with = "flex::session")]
        session: SessionId,
        /// Our side, e.g. `initiator` or `responder`.
        role: String,
    },
    /// A session ended.
    SessionClosed {
        /// The other agent.
        #[serde(deserialize_with = "flex::amid")]
        peer: Amid,
        /// The session.
        #[serde(deserialize_with = "flex::session")]
        session: SessionId,
        /// Why, e.g. `expired` or `killed`.
        why: String,
    },
    /// A message was received and stored.
    MessageIn {
        /// The sender.
        #[serde(deserialize_with = "flex::amid")]
        from: Amid,
        /// The message.
        #[serde(deserialize_with = "flex::message")]
        id: MessageId,
        /// Its session.
        #[serde(deserialize_with = "flex::session")]
        session: SessionId,
        /// Size of the envelope in bytes.
        size: u32,
    },
    /// A message deposited in a relay mailbox was fetched by its
    /// recipient (its delivery receipt arrived).
    MessageDelivered {
        /// The recipient.
        #[serde(deserialize_with = "flex::amid")]
        to: Amid,
        /// The message.
        #[serde(deserialize_with = "flex::message")]
        id: MessageId,
        /// The path it took (`mailbox`).
        path: String,
    },
    /// A message was sent.
    MessageOut {
        /// The recipient.
        #[serde(deserialize_with = "flex::amid")]
        to: Amid,
        /// The message.
        #[serde(deserialize_with = "flex::message")]
        id: MessageId,
        /// Its session.
        #[serde(deserialize_with = "flex::session")]
        session: SessionId,
        /// Size of the envelope in bytes.
        size: u32,
        /// The path it took, e.g. `direct` or `relay`.
        path: String,
    },
    /// Something was refused before a KNOCK decision (or outside one).
    Refused {
        /// Who, as far as known: an AMID or a peer id, in text form.
        from: Option<String>,
        /// Why.
        reason: RejectReason,
    },
    /// The policy was replaced.
    PolicyChanged {
        /// Hash of the new policy.
        policy_hash: String,
    },
    /// Sessions were killed.
    Kill {
        /// The peer whose sessions were killed; `None` for all of them.
        #[serde(default, deserialize_with = "flex::opt_amid")]
        target: Option<Amid>,
    },
    /// An attempt to connect to a peer over one path, and how it ended.
    PathAttempt {
        /// The peer, as an AMID (or a libp2p peer id for other keys).
        peer: String,
        /// The kind of path: `direct-quic`, `direct-tcp`, `relayed`, …
        path: String,
        /// The address dialled.
        addr: String,
        /// Whether it ended in a connection.
        ok: bool,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Milliseconds from the start of the dial to this outcome.
        ms: u64,
    },
    /// A cached contact skipped KNOCK: its session was still valid.
    KnockSkipped {
        /// The other agent.
        #[serde(deserialize_with = "flex::amid")]
        peer: Amid,
        /// The cached session used.
        #[serde(deserialize_with = "flex::session")]
        session: SessionId,
    },
}

impl AuditEvent {
    /// Every `kind` this version writes, as in [`AuditEvent::kind`].
    pub const KINDS: &'static [&'static str] = &[
        "knock_decision",
        "session_opened",
        "session_closed",
        "message_delivered",
        "message_in",
        "message_out",
        "refused",
        "policy_changed",
        "kill",
        "knock_skipped",
        "path_attempt",
    ];

    /// The event's kind, as its `kind` field spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::KnockDecision { .. } => "knock_decision",
            AuditEvent::SessionOpened { .. } => "session_opened",
            AuditEvent::SessionClosed { .. } => "session_closed",
            AuditEvent::MessageIn { .. } => "message_in",
            AuditEvent::MessageOut { .. } => "message_out",
            AuditEvent::MessageDelivered { .. } => "message_delivered",
            AuditEvent::Refused { .. } => "refused",
            AuditEvent::PolicyChanged { .. } => "policy_changed",
            AuditEvent::Kill { .. } => "kill",
            AuditEvent::KnockSkipped { .. } => "knock_skipped",
            AuditEvent::PathAttempt { .. } => "path_attempt",
        }
    }

    /// Whether the event names `peer`. [`AuditEvent::Refused`] names it when
    /// its `from` is the peer's AMID or libp2p peer id; a kill of all
    /// sessions or a policy change names nobody.
    pub fn involves(&self, peer: &Amid) -> bool {
        match self {
            AuditEvent::KnockDecision { from, .. } | AuditEvent::MessageIn { from, .. } => {
                from == peer
            }
            AuditEvent::SessionOpened { peer: p, .. }
            | AuditEvent::SessionClosed { peer: p, .. }
            | AuditEvent::KnockSkipped { peer: p, .. } => p == peer,
            AuditEvent::MessageOut { to, .. } | AuditEvent::MessageDelivered { to, .. } => {
                to == peer
            }
            AuditEvent::Refused { from, .. } => from.as_deref().is_some_and(|f| names(f, peer)),
            AuditEvent::PathAttempt { peer: p, .. } => names(p, peer),
            AuditEvent::Kill { target } => target.as_ref() == Some(peer),
            AuditEvent::PolicyChanged { .. } => false,
        }
    }
}

/// Whether `text` is `peer`'s AMID or its libp2p peer id.
fn names(text: &str, peer: &Amid) -> bool {
    text == peer.to_string() || peer.peer_id().is_ok_and(|id| id.to_string() == text)
}

/// One link of the chain. Hashes are bytes in CBOR and hex in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub index: u64,
    /// When it was recorded, ms since the epoch.
    pub ts_ms: u64,
    /// Hash of the previous entry; all zeros for the first.
    #[serde(with = "hash32")]
    pub prev_hash: [u8; 32],
    /// What happened.
    pub event: AuditEvent,
    /// `SHA-256(DOMAIN_SEP_AUDIT || index BE || ts_ms BE || prev_hash || CBOR(event))`.
    #[serde(with = "hash32")]
    pub hash: [u8; 32],
}

/// Which entries [`AuditLog::list`] returns. Every field defaults to `None`:
/// no condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditFilter {
    /// Only events that name this peer ([`AuditEvent::involves`]).
    pub peer: Option<Amid>,
    /// Only events of this kind ([`AuditEvent::kind`]).
    pub kind: Option<String>,
    /// Only entries recorded at or after this time, ms since the epoch.
    pub since_ms: Option<u64>,
    /// At most this many entries: the most recent ones that match.
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// Keeps only events that name `peer`.
    pub fn peer(mut self, peer: Amid) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Keeps only events of `kind`.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Keeps only entries recorded at or after `since_ms`.
    pub fn since_ms(mut self, since_ms: u64) -> Self {
        self.since_ms = Some(since_ms);
        self
    }

    /// Keeps at most the `limit` most recent matching entries.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `entry` passes the peer, kind and time conditions (the limit
    /// is applied by [`AuditLog::list`]).
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.peer.as_ref().is_none_or(|p| entry.event.involves(p))
            && self.kind.as_deref().is_none_or(|k| k == entry.event.kind())
            && self.since_ms.is_none_or(|t| entry.ts_ms >= t)
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    /// An entry does not decode or unseal, sits under the wrong key, or does
    /// not chain: it was altered, replaced or moved (or the storage key is
    /// wrong).
    #[error("audit entry {index} was tampered with")]
    Tampered {
        /// Position of the first bad entry.
        index: u64,
    },
    /// An entry is missing.
    #[error("audit entry {index} is missing")]
    Gap {
        /// Position of the first missing entry.
        index: u64,
    },
    /// The log cannot be used: a foreign key in the tree, an event that does
    /// not encode, or an event kind this version does not know.
    #[error("audit log: {0}")]
    Corrupt(String),
    /// The event is over [`MAX_AUDIT_EVENT_SIZE`] once encoded.
    #[error("audit event of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded length of the event.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What is stored under each key (before sealing). The event stays in the
/// exact bytes that were hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    index: u64,
    ts_ms: u64,
    #[serde(with = "serde_bytes")]
    prev_hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    event: Vec<u8>,
    #[serde(with = "serde_bytes")]
    hash: [u8; 32],
}

impl Record {
    fn hash_holds(&self) -> bool {
        chain_hash(self.index, self.ts_ms, &self.prev_hash, &self.event) == self.hash
    }
}

/// `SHA-256(DOMAIN_SEP_AUDIT || index BE || ts_ms BE || prev_hash || event)`.
/// Only the last part has a variable length, so the input is unambiguous.
fn chain_hash(index: u64, ts_ms: u64, prev_hash: &[u8; 32], event_cbor: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN_SEP_AUDIT);
    h.update(index.to_be_bytes());
    h.update(ts_ms.to_be_bytes());
    h.update(prev_hash);
    h.update(event_cbor);
    h.finalize().into()
}

fn key_index(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// The append-only, hash-chained audit log in the `audit` tree.
pub struct AuditLog {
    tree: sled::Tree,
    sealer: Option<Sealer>,
    next_index: u64,
    last_hash: [u8; 32],
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("next_index", &self.next_index)
            .field("last_hash", &hex::encode(self.last_hash))
            .field("sealed", &self.sealer.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `db`. With `storage_key`, entries are
    /// sealed at rest by a key derived from it; a log must always be opened
    /// the same way.
    ///
    /// The chain continues from the last stored entry, which must read and
    /// hash correctly: otherwise [`AuditError::Tampered`] names it (this is
    /// also what a wrong storage key gives). Opening does not walk the whole
    /// chain: call [`Self::verify`] for that.
    pub fn open(db: &sled::Db, storage_key: Option<&[u8; 32]>) -> Result<Self, AuditError> {
        let tree = db.open_tree(AUDIT_TREE)?;
        let sealer = storage_key.map(|k| Sealer::new(derive(k, SEAL_PURPOSE)));
        let mut log = Self {
            tree,
            sealer,
            next_index: 0,
            last_hash: [0; 32],
        };
        if let Some((k, v)) = log.tree.last()? {
            let index = key_index(&k).ok_or_else(|| {
                AuditError::Corrupt(format!("foreign key {} in the audit tree", hex::encode(&k)))
            })?;
            let rec = log.read_record(index, &k, &v)?;
            if !rec.hash_holds() {
                return Err(AuditError::Tampered { index });
            }
            log.next_index = index
                .checked_add(1)
                .ok_or_else(|| AuditError::Corrupt("audit log index space exhausted".into()))?;
            log.last_hash = rec.hash;
        }
        Ok(log)
    }

    /// The index the next entry will get (= the number of entries written).
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Hash of the newest entry (all zeros while the log is empty): the
    /// value to keep elsewhere to anchor the chain.
    pub fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    /// Records `event` at `now_ms` and returns the new entry.
    ///
    /// The write reaches disk at sled's next flush; call [`Self::flush`] to
    /// force it.
    pub fn append(&mut self, event: AuditEvent, now_ms: u64) -> Result<AuditEntry, AuditError> {
        let index = self.next_index;
        let next = index
            .checked_add(1)
            .ok_or_else(|| AuditError::Corrupt("audit log index space exhausted".into()))?;
        let event_cbor = codec::encode(&event).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        if event_cbor.len() > MAX_AUDIT_EVENT_SIZE {
            return Err(AuditError::TooLarge {
                len: event_cbor.len(),
                max: MAX_AUDIT_EVENT_SIZE,
            });
        }
        let prev_hash = self.last_hash;
        let hash = chain_hash(index, now_ms, &prev_hash, &event_cbor);
        let record = Record {
            index,
            ts_ms: now_ms,
            prev_hash,
            event: event_cbor,
            hash,
        };
        let plain = codec::encode(&record).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        let key = index.to_be_bytes();
        let value = match &self.sealer {
            Some(s) => s.seal(&plain, &key),
            None => plain,
        };
        // Never overwrite: an existing entry here means another writer.
        self.tree
            .compare_and_swap(key, None::<&[u8]>, Some(value))?
            .map_err(|_| {
                AuditError::Corrupt(format!(
                    "audit entry {index} already exists: another writer on the tree?"
                ))
            })?;
        self.next_index = next;
        self.last_hash = hash;
        Ok(AuditEntry {
            index,
            ts_ms: now_ms,
            prev_hash,
            event,
            hash,
        })
    }

    /// The entries that pass `filter`, oldest first. With a limit, the most
    /// recent matching entries. Each returned entry's own hash is checked
    /// ([`AuditError::Tampered`] otherwise); the links between entries are
    /// checked by [`Self::verify`].
    pub fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, AuditError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.tree.iter().rev() {
            let (k, v) = item?;
            let index = key_index(&k).ok_or_else(|| {
                AuditError::Corrupt(format!("foreign key {} in the audit tree", hex::encode(&k)))
            })?;
            let entry = self.read_entry(index, &k, &v)?;
            if filter.matches(&entry) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain from index 0 and returns the number of entries
    /// checked.
    ///
    /// Fails with [`AuditError::Tampered`] at the first entry that does not
    /// unseal or decode, sits under another index than its own, does not
    /// name the previous entry's hash or whose hash does not recompute, and
    /// with [`AuditError::Gap`] at the first missing index (including
    /// entries missing from the end of what this handle wrote or found).
    pub fn verify(&self) -> Result<u64, AuditError> {
        let mut expected: u64 = 0;
        let mut prev = [0u8; 32];
        for item in self.tree.iter() {
            let (k, v) = item?;
            // Keys are u64 BE, so they come in ascending order: a key past
            // the expected index means the expected one is missing.
            let index = key_index(&k).ok_or(AuditError::Tampered { index: expected })?;
            if index != expected {
                return Err(AuditError::Gap { index: expected });
            }
            let rec = self.read_record(index, &k, &v)?;
            if rec.prev_hash != prev || !rec.hash_holds() {
                return Err(AuditError::Tampered { index });
            }
            prev = rec.hash;
            expected = expected.saturating_add(1);
        }
        if expected < self.next_index {
            return Err(AuditError::Gap { index: expected });
        }
        if expected == self.next_index && expected > 0 && prev != self.last_hash {
            return Err(AuditError::Tampered {
                index: expected - 1,
            });
        }
        Ok(expected)
    }

    /// Flushes the log to disk.
    pub fn flush(&self) -> Result<(), AuditError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Unseals and decodes the record stored under `key` (= `index`).
    fn read_record(&self, index: u64, key: &[u8], value: &[u8]) -> Result<Record, AuditError> {
        let tampered = AuditError::Tampered { index };
        let opened;
        let plain: &[u8] = match &self.sealer {
            Some(s) => {
                if value.len() > MAX_RECORD_SIZE + SEAL_OVERHEAD {
                    return Err(tampered);
                }
                opened = s
                    .open(value, key)
                    .map_err(|_| AuditError::Tampered { index })?;
                &opened
            }
            None => value,
        };
        let rec: Record = codec::decode(plain, MAX_RECORD_SIZE).map_err(|_| tampered)?;
        if rec.index != index {
            return Err(AuditError::Tampered { index });
        }
        Ok(rec)
    }

    /// The entry stored under `key`, its own hash checked.
    fn read_entry(&self, index: u64, key: &[u8], value: &[u8]) -> Result<AuditEntry, AuditError> {
        let rec = self.read_record(index, key, value)?;
        if !rec.hash_holds() {
            return Err(AuditError::Tampered { index });
        }
        // The hash holds, so these bytes are what was written: if they do
        // not decode, a newer version wrote them.
        let event: AuditEvent = codec::decode(&rec.event, MAX_AUDIT_EVENT_SIZE).map_err(|e| {
            AuditError::Corrupt(format!(
                "audit entry {index}: unknown or malformed event: {e}"
            ))
        })?;
        Ok(AuditEntry {
            index: rec.index,
            ts_ms: rec.ts_ms,
            prev_hash: rec.prev_hash,
            event,
            hash: rec.hash,
        })
    }
}

/// Deserializers for ids and hashes that take a string (text form or hex) or
/// a byte string, whichever arrives. Needed because serde buffers internally
/// tagged enums and then reports every format as human-readable, so the ids'
/// own `Deserialize` would expect text where CBOR holds bytes.
mod flex {
    use std::fmt;

    use serde::{
        de::{Error, Visitor},
        Deserialize, Deserializer,
    };

    use crate::{
        crypto::envelope::{MessageId, SessionId},
        identity::Amid,
    };

    enum Raw {
        Text(String),
        Bytes(Vec<u8>),
    }

    struct RawVisitor;

    impl Visitor<'_> for RawVisitor {
        type Value = Raw;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a byte string")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Raw, E> {
            Ok(Raw::Text(v.to_owned()))
        }

        fn visit_string<E: Error>(self, v: String) -> Result<Raw, E> {
            Ok(Raw::Text(v))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Raw, E> {
            Ok(Raw::Bytes(v.to_vec()))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Raw, E> {
            Ok(Raw::Bytes(v))
        }
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(RawVisitor)
        }
    }

    fn fixed<const N: usize, E: Error>(raw: Raw, what: &str) -> Result<[u8; N], E> {
        let bytes = match raw {
            Raw::Text(s) => hex::decode(s).map_err(E::custom)?,
            Raw::Bytes(b) => b,
        };
        bytes
            .try_into()
            .map_err(|_| E::custom(format!("{what} must be {N} bytes")))
    }

    fn to_amid<E: Error>(raw: Raw) -> Result<Amid, E> {
        match raw {
            Raw::Text(s) => s.parse().map_err(E::custom),
            Raw::Bytes(b) => {
                let key: [u8; 32] = b
                    .try_into()
                    .map_err(|_| E::custom("AMID must be 32 bytes"))?;
                Amid::from_bytes(&key).map_err(E::custom)
            }
        }
    }

    pub(super) fn amid<'de, D: Deserializer<'de>>(d: D) -> Result<Amid, D::Error> {
        to_amid(Raw::deserialize(d)?)
    }

    pub(super) fn opt_amid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Amid>, D::Error> {
        Option::<Raw>::deserialize(d)?.map(to_amid).transpose()
    }

    pub(super) fn session<'de, D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
        fixed(Raw::deserialize(d)?, "session id").map(SessionId)
    }

    pub(super) fn opt_session<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SessionId>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|r| fixed(r, "session id").map(SessionId))
            .transpose()
    }

    pub(super) fn message<'de, D: Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
        fixed(Raw::deserialize(d)?, "message id").map(MessageId)
    }

    pub(super) fn hash<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        fixed(Raw::deserialize(d)?, "hash")
    }
}

/// A 32-byte hash: hex in human-readable formats, bytes otherwise.
mod hash32 {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(h))
        } else {
            s.serialize_bytes(h)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        super::flex::hash(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    fn amid(seed: u8) -> Amid {
        Identity::from_seed(&[seed; 32]).amid()
    }

    fn temp_db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    fn knock(from: Amid, accepted: bool) -> AuditEvent {
        AuditEvent::KnockDecision {
            from,
            accepted,
            reason: (!accepted).then_some(RejectReason::NotAllowed),
            session: accepted.then_some(SessionId([3; 16])),
            intent: Some(Intent::new("weather/forecast", "query")),
            policy_hash: Some("ab12".into()),
        }
    }

    fn msg_in(from: Amid, n: u8) -> AuditEvent {
        AuditEvent::MessageIn {
            from,
            id: MessageId([n; 16]),
            session: SessionId([1; 16]),
            size: 100 + u32::from(n),
        }
    }

    fn every_kind() -> Vec<AuditEvent> {
        let (a, b) = (amid(1), amid(2));
        vec![
            knock(a, true),
            knock(b, false),
            AuditEvent::SessionOpened {
                peer: a,
                session: SessionId([1; 16]),
                role: "responder".into(),
            },
            msg_in(a, 1),
            AuditEvent::MessageOut {
                to: a,
                id: MessageId([2; 16]),
                session: SessionId([1; 16]),
                size: 321,
                path: "direct".into(),
            },
            AuditEvent::MessageDelivered {
                to: a,
                id: MessageId([3; 16]),
                path: "mailbox".into(),
            },
            AuditEvent::Refused {
                from: Some(b.to_string()),
                reason: RejectReason::Blocked,
            },
            AuditEvent::Refused {
                from: None,
                reason: RejectReason::Malformed,
            },
            AuditEvent::PolicyChanged {
                policy_hash: "cafe".into(),
            },
            AuditEvent::KnockSkipped {
                peer: a,
                session: SessionId([1; 16]),
            },
            AuditEvent::SessionClosed {
                peer: a,
                session: SessionId([1; 16]),
                why: "killed".into(),
            },
            AuditEvent::Kill { target: Some(a) },
            AuditEvent::Kill { target: None },
            AuditEvent::PathAttempt {
                peer: b.peer_id().unwrap().to_string(),
                path: "direct-quic".into(),
                addr: "/ip4/127.0.0.1/udp/1/quic-v1".into(),
                ok: false,
                error: Some("timed out".into()),
                ms: 5000,
            },
        ]
    }

    fn fill(log: &mut AuditLog, events: &[AuditEvent], t0: u64) -> Vec<AuditEntry> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| log.append(e.clone(), t0 + i as u64 * 10).unwrap())
            .collect()
    }

    #[test]
    fn append_list_and_filter() {
        for key in [None, Some(&KEY)] {
            let db = temp_db();
            let mut log = AuditLog::open(&db, key).unwrap();
            let events = every_kind();
            let written = fill(&mut log, &events, 1_000);
            assert_eq!(written[0].index, 0);
            assert_eq!(written[0].prev_hash, [0; 32]);
            assert_eq!(written[1].prev_hash, written[0].hash);
            assert_eq!(log.next_index(), events.len() as u64);
            assert_eq!(log.last_hash(), written.last().unwrap().hash);

            let all = log.list(&AuditFilter::default()).unwrap();
            assert_eq!(all, written);
            let got: Vec<AuditEvent> = all.into_iter().map(|e| e.event).collect();
            assert_eq!(got, events);

            let (a, b) = (amid(1), amid(2));
            let of_b = log.list(&AuditFilter::default().peer(b)).unwrap();
            assert_eq!(of_b.len(), 3, "{of_b:?}");
            assert!(of_b.iter().all(|e| e.event.involves(&b)));
            let of_a = log.list(&AuditFilter::default().peer(a)).unwrap();
            assert_eq!(of_a.len(), 8);
            let kills = log.list(&AuditFilter::default().kind("kill")).unwrap();
            assert_eq!(kills.len(), 2);
            let kill_a = log
                .list(&AuditFilter::default().kind("kill").peer(a))
                .unwrap();
            assert_eq!(kill_a.len(), 1);
            assert_eq!(kill_a[0].event, AuditEvent::Kill { target: Some(a) });
            let since = log.list(&AuditFilter::default().since_ms(1_100)).unwrap();
            assert_eq!(since.len(), 4);
            assert_eq!(since[0].index, 10);
            // the limit keeps the most recent, oldest first
            let last3 = log.list(&AuditFilter::default().limit(3)).unwrap();
            let idx: Vec<u64> = last3.iter().map(|e| e.index).collect();
            assert_eq!(idx, vec![11, 12, 13]);
            let last_a = log.list(&AuditFilter::default().peer(a).limit(2)).unwrap();
            let idx: Vec<u64> = last_a.iter().map(|e| e.index).collect();
            assert_eq!(idx, vec![10, 11]);
            let by_peer_id = AuditEvent::Refused {
                from: Some(b.peer_id().unwrap().to_string()),
                reason: RejectReason::Blocked,
            };
            assert!(by_peer_id.involves(&b));
            assert!(!by_peer_id.involves(&a));
            assert!(log
                .list(&AuditFilter::default().limit(0))
                .unwrap()
                .is_empty());
            assert!(log
                .list(&AuditFilter::default().kind("nonsense"))
                .unwrap()
                .is_empty());
        }
    }

    #[test]
    fn kinds_match_the_serde_tag() {
        let events = every_kind();
        for e in &events {
            let json = serde_json::to_value(e).unwrap();
            assert_eq!(json["kind"], e.kind());
            assert!(AuditEvent::KINDS.contains(&e.kind()));
        }
        let mut seen: Vec<&str> = events.iter().map(AuditEvent::kind).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), AuditEvent::KINDS.len());
    }

    #[test]
    fn json_shape_and_round_trips() {
        let db = temp_db();
        let mut log = AuditLog::open(&db, None).unwrap();
        let a = amid(1);
        for (i, e) in every_kind().into_iter().enumerate() {
            let entry = log.append(e.clone(), i as u64).unwrap();
            let json = serde_json::to_value(&entry).unwrap();
            assert_eq!(json["hash"], hex::encode(entry.hash));
            assert_eq!(json["prev_hash"].as_str().unwrap().len(), 64);
            assert_eq!(json["event"]["kind"], e.kind());
            let back: AuditEntry = serde_json::from_value(json).unwrap();
            assert_eq!(back, entry);
            let cbor = codec::encode(&entry).unwrap();
            let back: AuditEntry = codec::decode(&cbor, usize::MAX).unwrap();
            assert_eq!(back, entry);
        }
        let json = serde_json::to_value(msg_in(a, 9)).unwrap();
        assert_eq!(json["from"], a.to_string());
        assert_eq!(json["id"], hex::encode([9u8; 16]));
        assert_eq!(json["session"], hex::encode([1u8; 16]));
    }

    #[test]
    fn byte_snapshot() {
        let event = AuditEvent::PolicyChanged {
            policy_hash: "ab".into(),
        };
        let cbor = codec::encode(&event).unwrap();
        assert_eq!(
            hex::encode(&cbor),
            "a2646b696e646e706f6c6963795f6368616e6765646b706f6c6963795f68617368626162"
        );
        // Computed independently (Python hashlib) from the definition.
        let hash = "61e0cfc9927770db7a64e085c0b0c310a298e05f1e792ced7f11e17d849919ae";
        assert_eq!(hex::encode(chain_hash(0, 1, &[0; 32], &cbor)), hash);
        // The stored record of that entry, unsealed.
        let db = temp_db();
        let mut log = AuditLog::open(&db, None).unwrap();
        assert_eq!(hex::encode(log.append(event, 1).unwrap().hash), hash);
        let stored = tree(&db).get(0u64.to_be_bytes()).unwrap().unwrap();
        assert_eq!(
            hex::encode(&stored),
            concat!(
                "a565696e646578006574735f6d730169707265765f6861736858200000000000",
                "000000000000000000000000000000000000000000000000000000656576656e",
                "745824a2646b696e646e706f6c6963795f6368616e6765646b706f6c6963795f",
                "686173686261626468617368582061e0cfc9927770db7a64e085c0b0c310a298",
                "e05f1e792ced7f11e17d849919ae",
            )
        );
    }

    #[test]
    fn chain_verifies() {
        for key in [None, Some(&KEY)] {
            let db = temp_db();
            let mut log = AuditLog::open(&db, key).unwrap();
            assert_eq!(log.verify().unwrap(), 0);
            let written = fill(&mut log, &every_kind(), 5);
            assert_eq!(log.verify().unwrap(), written.len() as u64);
            for (i, e) in written.iter().enumerate() {
                let prev = if i == 0 { [0; 32] } else { written[i - 1].hash };
                assert_eq!(e.prev_hash, prev);
                let cbor = codec::encode(&e.event).unwrap();
                assert_eq!(e.hash, chain_hash(e.index, e.ts_ms, &prev, &cbor));
            }
        }
    }

    #[test]
    fn reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second);
        {
            let db = sled::open(dir.path()).unwrap();
            let mut log = AuditLog::open(&db, Some(&KEY)).unwrap();
            first = fill(&mut log, &every_kind()[..3], 10);
            log.flush().unwrap();
        }
        {
            let db = sled::open(dir.path()).unwrap();
            let mut log = AuditLog::open(&db, Some(&KEY)).unwrap();
            assert_eq!(log.next_index(), 3);
            assert_eq!(log.last_hash(), first[2].hash);
            second = log.append(msg_in(amid(1), 4), 99).unwrap();
            assert_eq!(second.index, 3);
            assert_eq!(second.prev_hash, first[2].hash);
            assert_eq!(log.verify().unwrap(), 4);
            log.flush().unwrap();
            // reopening on the same db handle works too
            let again = AuditLog::open(&db, Some(&KEY)).unwrap();
            assert_eq!(again.next_index(), 4);
            assert_eq!(again.last_hash(), second.hash);
        }
        let db = sled::open(dir.path()).unwrap();
        // a wrong key, or none, cannot read the chain
        assert!(matches!(
            AuditLog::open(&db, Some(&[8; 32])),
            Err(AuditError::Tampered { index: 3 })
        ));
        assert!(matches!(
            AuditLog::open(&db, None),
            Err(AuditError::Tampered { index: 3 })
        ));
        assert_eq!(
            AuditLog::open(&db, Some(&KEY)).unwrap().verify().unwrap(),
            4
        );
    }

    fn tree(db: &sled::Db) -> sled::Tree {
        db.open_tree(AUDIT_TREE).unwrap()
    }

    #[test]
    fn flipped_byte_is_detected_at_its_index() {
        for key in [None, Some(&KEY)] {
            let db = temp_db();
            let mut log = AuditLog::open(&db, key).unwrap();
            fill(&mut log, &every_kind(), 0);
            let t = tree(&db);
            let k = 4u64.to_be_bytes();
            let mut v = t.get(k).unwrap().unwrap().to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x01;
            t.insert(k, v).unwrap();
            assert!(matches!(
                log.verify(),
                Err(AuditError::Tampered { index: 4 })
            ));
            assert!(matches!(
                log.list(&AuditFilter::default()),
                Err(AuditError::Tampered { index: 4 })
            ));
            // other entries still list
            assert_eq!(log.list(&AuditFilter::default().limit(7)).unwrap().len(), 7);
        }
    }

    #[test]
    fn reencoded_event_without_new_hash_is_detected() {
        let db = temp_db();
        let mut log = AuditLog::open(&db, None).unwrap();
        fill(&mut log, &every_kind(), 0);
        let t = tree(&db);
        let k = 2u64.to_be_bytes();
        let mut rec: Record = codec::decode(&t.get(k).unwrap().unwrap(), usize::MAX).unwrap();
        let forged = AuditEvent::SessionOpened {
            peer: amid(3),
            session: SessionId([1; 16]),
            role: "responder".into(),
        };
        rec.event = codec::encode(&forged).unwrap();
        t.insert(k, codec::encode(&rec).unwrap()).unwrap();
        assert!(matches!(
            log.verify(),
            Err(AuditError::Tampered { index: 2 })
        ));
        // recomputing that hash breaks the next link instead
        rec.hash = chain_hash(rec.index, rec.ts_ms, &rec.prev_hash, &rec.event);
        t.insert(k, codec::encode(&rec).unwrap()).unwrap();
        assert!(matches!(
            log.verify(),
            Err(AuditError::Tampered { index: 3 })
        ));
    }

    #[test]
    fn moved_entry_is_detected() {
        for key in [None, Some(&KEY)] {
            let db = temp_db();
            let mut log = AuditLog::open(&db, key).unwrap();
            fill(&mut log, &every_kind(), 0);
            let t = tree(&db);
            let one = t.get(1u64.to_be_bytes()).unwrap().unwrap();
            t.insert(2u64.to_be_bytes(), one).unwrap();
            assert!(matches!(
                log.verify(),
                Err(AuditError::Tampered { index: 2 })
            ));
        }
    }

    #[test]
    fn rebuilt_tail_is_caught_by_the_open_handle() {
        let db = temp_db();
        let mut log = AuditLog::open(&db, None).unwrap();
        fill(&mut log, &every_kind()[..3], 0);
        let t = tree(&db);
        let k = 2u64.to_be_bytes();
        let mut rec: Record = codec::decode(&t.get(k).unwrap().unwrap(), usize::MAX).unwrap();
        rec.event = codec::encode(&AuditEvent::Kill { target: None }).unwrap();
        rec.hash = chain_hash(rec.index, rec.ts_ms, &rec.prev_hash, &rec.event);
        t.insert(k, codec::encode(&rec).unwrap()).unwrap();
        assert!(matches!(
            log.verify(),
            Err(AuditError::Tampered { index: 2 })
        ));
    }

    #[test]
    fn deleted_entries_are_gaps() {
        for key in [None, Some(&KEY)] {
            let db = temp_db();
            let mut log = AuditLog::open(&db, key).unwrap();
            let written = fill(&mut log, &every_kind(), 0);
            let t = tree(&db);
            // the tail, seen by the handle that wrote it
            let last = written.len() as u64 - 1;
            let tail = t.remove(last.to_be_bytes()).unwrap().unwrap();
            assert!(matches!(log.verify(), Err(AuditError::Gap { index }) if index == last));
            t.insert(last.to_be_bytes(), tail).unwrap();
            assert_eq!(log.verify().unwrap(), written.len() as u64);
            // the middle
            t.remove(5u64.to_be_bytes()).unwrap();
            assert!(matches!(log.verify(), Err(AuditError::Gap { index: 5 })));
            // the head
            t.remove(0u64.to_be_bytes()).unwrap();
            assert!(matches!(log.verify(), Err(AuditError::Gap { index: 0 })));
        }
    }

    #[test]
    fn sealed_bytes_leak_no_metadata() {
        let db = temp_db();
        let mut log = AuditLog::open(&db, Some(&KEY)).unwrap();
        let written = fill(&mut log, &every_kind(), 1_700_000_000_000);
        log.flush().unwrap();
        let a = amid(1);
        let needles: Vec<Vec<u8>> = [
            a.to_string().into_bytes(),
            a.as_bytes().to_vec(),
            amid(2).as_bytes().to_vec(),
            b"kind".to_vec(),
            b"weather/forecast".to_vec(),
        ]
        .into_iter()
        .chain(AuditEvent::KINDS.iter().map(|k| k.as_bytes().to_vec()))
        .collect();
        let mut seen = 0;
        for item in tree(&db).iter() {
            let (_, v) = item.unwrap();
            seen += 1;
            for n in &needles {
                assert!(
                    !v.windows(n.len()).any(|w| w == &n[..]),
                    "sealed value contains {:?}",
                    String::from_utf8_lossy(n)
                );
            }
        }
        assert_eq!(seen, written.len());
        assert_eq!(log.verify().unwrap(), written.len() as u64);
        assert_eq!(log.list(&AuditFilter::default()).unwrap(), written);

        // the same log unsealed does hold them: the search above is meaningful
        let db = temp_db();
        let mut plain = AuditLog::open(&db, None).unwrap();
        plain.append(knock(a, true), 1).unwrap();
        let v = tree(&db).get(0u64.to_be_bytes()).unwrap().unwrap();
        assert!(v.windows(14).any(|w| w == b"knock_decision"));
        assert!(v.windows(32).any(|w| w == a.as_bytes()));
    }

    #[test]
    fn oversized_event_is_refused_and_chain_untouched() {
        let db = temp_db();
        let mut log = AuditLog::open(&db, None).unwrap();
        log.append(knock(amid(1), true), 1).unwrap();
        let big = AuditEvent::PolicyChanged {
            policy_hash: "x".repeat(MAX_AUDIT_EVENT_SIZE),
        };
        assert!(matches!(
            log.append(big, 2),
            Err(AuditError::TooLarge { .. })
        ));
        assert_eq!(log.next_index(), 1);
        log.append(msg_in(amid(1), 2), 3).unwrap();
        assert_eq!(log.verify().unwrap(), 2);
    }

    #[test]
    fn second_writer_is_refused() {
        let db = temp_db();
        let mut one = AuditLog::open(&db, None).unwrap();
        let mut two = AuditLog::open(&db, None).unwrap();
        one.append(knock(amid(1), true), 1).unwrap();
        assert!(matches!(
            two.append(knock(amid(2), true), 2),
            Err(AuditError::Corrupt(_))
        ));
        assert_eq!(one.verify().unwrap(), 1);
    }

    #[test]
    fn debug_shows_no_key() {
        let db = temp_db();
        let log = AuditLog::open(&db, Some(&KEY)).unwrap();
        let s = format!("{log:?}");
        assert!(s.contains("sealed: true"), "{s}");
        assert!(!s.contains("[7, 7"), "{s}");
    }

    fn arb_amid() -> impl Strategy<Value = Amid> {
        (0u8..4).prop_map(amid)
    }

    fn arb_reason() -> impl Strategy<Value = RejectReason> {
        prop::sample::select(vec![
            RejectReason::Blocked,
            RejectReason::NotAllowed,
            RejectReason::ReplayedNonce,
            RejectReason::DecryptFailed,
            RejectReason::Unavailable,
        ])
    }

    fn arb_event() -> impl Strategy<Value = AuditEvent> {
        let id16 = any::<[u8; 16]>();
        prop_oneof![
            (
                arb_amid(),
                any::<bool>(),
                prop::option::of(arb_reason()),
                prop::option::of(id16),
                prop::option::of(("[a-z/]{0,20}", "[a-z]{0,10}")),
                prop::option::of("[0-9a-f]{0,64}"),
            )
                .prop_map(|(from, accepted, reason, session, intent, policy_hash)| {
                    AuditEvent::KnockDecision {
                        from,
                        accepted,
                        reason,
                        session: session.map(SessionId),
                        intent: intent.map(|(c, a)| Intent::new(c, a)),
                        policy_hash,
                    }
                }),
            (arb_amid(), id16, ".{0,12}").prop_map(|(peer, s, role)| {
                AuditEvent::SessionOpened {
                    peer,
                    session: SessionId(s),
                    role,
                }
            }),
            (arb_amid(), id16, ".{0,12}").prop_map(|(peer, s, why)| {
                AuditEvent::SessionClosed {
                    peer,
                    session: SessionId(s),
                    why,
                }
            }),
            (arb_amid(), id16, id16, any::<u32>()).prop_map(|(from, m, s, size)| {
                AuditEvent::MessageIn {
                    from,
                    id: MessageId(m),
                    session: SessionId(s),
                    size,
                }
            }),
            (arb_amid(), id16, id16, any::<u32>(), ".{0,8}").prop_map(|(to, m, s, size, path)| {
                AuditEvent::MessageOut {
                    to,
                    id: MessageId(m),
                    session: SessionId(s),
                    size,
                    path,
                }
            }),
            (prop::option::of(".{0,60}"), arb_reason())
                .prop_map(|(from, reason)| AuditEvent::Refused { from, reason }),
            ".{0,64}".prop_map(|policy_hash| AuditEvent::PolicyChanged { policy_hash }),
            prop::option::of(arb_amid()).prop_map(|target| AuditEvent::Kill { target }),
            (arb_amid(), id16).prop_map(|(peer, s)| AuditEvent::KnockSkipped {
                peer,
                session: SessionId(s),
            }),
            (arb_amid(), id16).prop_map(|(to, i)| AuditEvent::MessageDelivered {
                to,
                id: MessageId(i),
                path: "mailbox".into(),
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_events_verify_and_any_flip_is_caught(
            events in prop::collection::vec((arb_event(), any::<u64>()), 1..12),
            sealed: bool,
            which: prop::sample::Index,
            at: prop::sample::Index,
            mask in 1u8..=255,
        ) {
            let db = temp_db();
            let mut log = AuditLog::open(&db, sealed.then_some(&KEY)).unwrap();
            let mut written = Vec::new();
            for (e, ts) in &events {
                written.push(log.append(e.clone(), *ts).unwrap());
            }
            prop_assert_eq!(log.verify().unwrap(), events.len() as u64);
            let listed = log.list(&AuditFilter::default()).unwrap();
            prop_assert_eq!(&listed, &written);

            let i = which.index(events.len()) as u64;
            let t = tree(&db);
            let k = i.to_be_bytes();
            let mut v = t.get(k).unwrap().unwrap().to_vec();
            let j = at.index(v.len());
            v[j] ^= mask;
            t.insert(k, v).unwrap();
            match log.verify() {
                Err(AuditError::Tampered { index }) => prop_assert_eq!(index, i),
                other => prop_assert!(false, "flip at entry {} byte {} gave {:?}", i, j, other),
            }
            // a fresh handle sees the same (or refuses to open on a bad tail)
            match AuditLog::open(&db, sealed.then_some(&KEY)) {
                Ok(fresh) => {
                    let got = fresh.verify();
                    let at_i = matches!(got, Err(AuditError::Tampered { index }) if index == i);
                    prop_assert!(at_i, "fresh handle gave {:?}", got);
                }
                Err(AuditError::Tampered { index }) => prop_assert_eq!(index, i),
                Err(e) => prop_assert!(false, "open gave {:?}", e),
            }
        }
    }
}
