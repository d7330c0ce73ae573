//! End-to-end encrypted sessions: the Olm account, Olm sessions per peer,
//! KNOCK-accepted sessions, replay protection and the durable inbox, all in
//! one sled tree so that each received message is committed atomically.
//!
//! Layout of the `node` tree (prefix → value):
//! - `acct` → Olm account pickle (vodozemac-encrypted)
//! - `olm/<peer 32><olm session id>` → `0x01`, when it was last used (u64
//!   BE, a counter ordering a peer's sessions), then the Olm session pickle
//!   (vodozemac-encrypted). Values written before the counter existed are
//!   the bare pickle (they start with a base64 character, never `0x01`).
//! - `ses/<peer 32><session 16>` → [`SessionInfo`] (CBOR)
//! - `seen/<sender 32><message 16>` → expiry (u64 BE): replay window
//! - `nonce/<nonce 16>` → expiry (u64 BE): KNOCK nonces
//! - `inbox/<arrival u64 BE>` → received message, sealed with XChaCha20-Poly1305
//!
//! Nothing here does I/O beyond sled or reads the clock: time is an argument.
//!
//! State stays bounded: the Olm sessions of at most [`MAX_CACHED_PEERS`]
//! peers are held in memory (the least recently used are dropped from
//! memory, and read back from disk when next used), and a session that
//! ended (expired, or closed by either side) is deleted with its Olm
//! sessions once the peer has no other session left (see
//! [`SessionStore::sweep`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vodozemac::olm::{Account, AccountPickle, Session, SessionPickle};

use agentmesh_transports::codec;

use crate::{
    crypto::envelope::SessionId,
    identity::Amid,
    knock::Intent,
    storage::{derive, Sealer, StorageError, SubKey},
};

mod olm;
mod receive;
mod seal;

pub use receive::{OpenError, Received};
pub use seal::{PendingOutbound, SealError};

/// One-time prekeys kept published.
pub const ONE_TIME_KEYS: usize = 20;
/// Below this many unused one-time keys, new ones are made.
pub const ONE_TIME_KEYS_LOW: usize = 10;
/// Olm sessions kept per peer.
const MAX_OLM_SESSIONS_PER_PEER: usize = 4;
/// Peers whose Olm sessions are kept in memory; the others stay on disk
/// until they are used again.
pub const MAX_CACHED_PEERS: usize = 2048;
/// First byte of an Olm session value that carries its last-used counter.
const OLM_VALUE_V1: u8 = 1;
/// Default lifetime of a message.
pub const DEFAULT_MESSAGE_TTL_MS: u64 = 72 * 3600 * 1000;

const TREE: &str = "node";
const ACCOUNT_KEY: &[u8] = b"acct";

/// Which side started a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// We sent the KNOCK.
    Initiator,
    /// We accepted the KNOCK.
    Responder,
}

/// A KNOCK-accepted session, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// The other agent.
    pub peer: Amid,
    /// Our side.
    pub role: Role,
    /// What it was opened for.
    pub intent: Intent,
    /// Creation, ms since the epoch.
    pub created_ms: u64,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
    /// Next sequence number we send.
    pub next_seq: u64,
}

impl SessionInfo {
    /// A session with no message sent yet.
    pub fn new(
        id: SessionId,
        peer: Amid,
        role: Role,
        intent: Intent,
        created_ms: u64,
        expires_ms: u64,
    ) -> Self {
        Self {
            id,
            peer,
            role,
            intent,
            created_ms,
            expires_ms,
            next_seq: 0,
        }
    }
}

/// The crypto and session state of a node.
pub struct SessionStore {
    me: Amid,
    tree: sled::Tree,
    db: sled::Db,
    account: Account,
    /// Olm sessions of the peers used lately, oldest first. A peer that is
    /// here has exactly these sessions on disk; one that is not may have
    /// some on disk (see [`Self::load_olm`]).
    olm: HashMap<Amid, Vec<Session>>,
    /// When each peer in `olm` was last used (`olm_clock` then).
    olm_used: HashMap<Amid, u64>,
    /// Counter ordering uses of Olm sessions; stored with each pickle.
    olm_clock: u64,
    /// At most this many peers in `olm`.
    olm_cap: usize,
    /// Peers whose Olm sessions and session infos changed in memory by
    /// sealing, and are not written yet (see [`Self::save`]). They stay in
    /// memory until then.
    unsaved: std::collections::HashSet<Amid>,
    /// Senders' decoded Ed25519 keys (at most [`MAX_CACHED_PEERS`]; emptied
    /// when full).
    keys: HashMap<Amid, ed25519_dalek::VerifyingKey>,
    /// Write-through cache of the `ses/` entries.
    sessions: HashMap<Amid, Vec<SessionInfo>>,
    pickle_key: SubKey,
    inbox_sealer: Sealer,
    prekeys_changed: bool,
    /// Checks payloads before they are accepted (message schemas).
    payload_check: Option<std::sync::Arc<dyn PayloadCheck>>,
}

/// Checks a decrypted payload before the store accepts it: the node's
/// message schemas ([`crate::schema`]). A payload refused is not put in
/// the inbox and its sender gets
/// [`RejectReason::SchemaInvalid`](crate::RejectReason::SchemaInvalid).
pub trait PayloadCheck: Send + Sync {
    /// `Err(detail)` refuses the message.
    fn check(
        &self,
        session: &SessionInfo,
        kind: &crate::content::Kind,
        payload: &serde_json::Value,
    ) -> Result<(), String>;
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("me", &self.me)
            .field("peers", &self.olm.len())
            .finish_non_exhaustive()
    }
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn read_be(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

impl SessionStore {
    /// Opens (or creates) the store in `db` for `me`, with secrets sealed by
    /// keys derived from `storage_key`.
    pub fn open(me: Amid, db: &sled::Db, storage_key: &[u8; 32]) -> Result<Self, StorageError> {
        let tree = db.open_tree(TREE)?;
        let pickle_key = derive(storage_key, "olm-pickle");
        let account = match tree.get(ACCOUNT_KEY)? {
            Some(bytes) => {
                let text = std::str::from_utf8(&bytes)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                let pickle = AccountPickle::from_encrypted(text, &pickle_key.0)
                    .map_err(|e| StorageError::Pickle(e.to_string()))?;
                Account::from_pickle(pickle)
            }
            None => {
                let mut a = Account::new();
                a.generate_one_time_keys(ONE_TIME_KEYS);
                a.generate_fallback_key();
                a
            }
        };
        let mut sessions: HashMap<Amid, Vec<SessionInfo>> = HashMap::new();
        for item in tree.scan_prefix(b"ses/") {
            let (_, v) = item?;
            if let Ok(info) = codec::decode::<SessionInfo>(&v, 4096) {
                sessions.entry(info.peer).or_default().push(info);
            }
        }
        let store = Self {
            sessions,
            me,
            tree,
            db: db.clone(),
            account,
            olm: HashMap::new(),
            olm_used: HashMap::new(),
            olm_clock: 0,
            olm_cap: MAX_CACHED_PEERS,
            unsaved: Default::default(),
            keys: HashMap::new(),
            inbox_sealer: Sealer::new(derive(storage_key, "inbox")),
            pickle_key,
            prekeys_changed: false,
            payload_check: None,
        };
        let mut batch = sled::Batch::default();
        store.put_account(&mut batch);
        store.tree.apply_batch(batch)?;
        Ok(store)
    }

    /// Writes what sealing changed since the last call: the Olm sessions
    /// and session infos of each peer sealed to, once each, in one batch.
    /// Flush the database after it and before sending what was sealed.
    pub fn save(&mut self, now_ms: u64) -> Result<(), StorageError> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let peers: Vec<Amid> = self.unsaved.iter().copied().collect();
        for peer in &peers {
            let pickles: Vec<(String, SessionPickle)> = self
                .olm
                .get(peer)
                .map(|l| l.iter().map(|s| (s.session_id(), s.pickle())).collect())
                .unwrap_or_default();
            // Oldest first, so that the order of use is kept on disk.
            for (id, pickle) in pickles {
                self.put_pickle(&mut batch, peer, &id, pickle, now_ms);
            }
            for info in self.sessions.get(peer).into_iter().flatten() {
                self.put_info(&mut batch, info)?;
            }
        }
        self.tree.apply_batch(batch)?;
        self.unsaved.clear();
        Ok(())
    }

    /// How many peers' Olm sessions are held in memory.
    pub fn cached_peers(&self) -> usize {
        self.olm.len()
    }

    /// Updates the cache once `info` is on disk.
    fn cache_info(&mut self, info: SessionInfo) {
        let list = self.sessions.entry(info.peer).or_default();
        match list.iter_mut().find(|s| s.id == info.id) {
            Some(s) => *s = info,
            None => list.push(info),
        }
    }

    fn put_info(&self, batch: &mut sled::Batch, info: &SessionInfo) -> Result<(), StorageError> {
        let v = codec::encode(info).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        batch.insert(key(b"ses/", &[info.peer.as_bytes(), &info.id.0]), v);
        Ok(())
    }

    /// The keys to publish in the card: Olm identity key, unused one-time
    /// keys and the fallback key. (Keys are never marked "published" in the
    /// account: the card always lists every unused key, so vodozemac's
    /// unpublished set is the set of live keys.)
    pub fn card_keys(&self) -> ([u8; 32], Vec<[u8; 32]>, [u8; 32]) {
        let id = self.account.curve25519_key().to_bytes();
        let mut otks: Vec<[u8; 32]> = self
            .account
            .one_time_keys()
            .values()
            .map(|k| k.to_bytes())
            .collect();
        otks.sort();
        otks.truncate(crate::card::MAX_ONE_TIME_KEYS);
        let fallback = self
            .account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .unwrap_or(id);
        (id, otks, fallback)
    }

    /// Replaces the fallback (signed) prekey once it is `every_ms` old, and
    /// forgets the replaced one `grace_ms` after it was replaced: until
    /// then a KNOCK sealed to it (one that waited in a mailbox, or was sent
    /// with an older card) still opens. Returns whether the keys to publish
    /// changed; the account is written, not flushed.
    pub fn rotate_fallback_key(
        &mut self,
        now_ms: u64,
        every_ms: u64,
        grace_ms: u64,
    ) -> Result<bool, StorageError> {
        let mut meta = match self.tree.get(FALLBACK_META_KEY)? {
            Some(v) => codec::decode::<FallbackMeta>(&v, 64)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?,
            // A store from before rotation: its key counts from now.
            None => FallbackMeta {
                made_ms: now_ms,
                replaced_ms: None,
            },
        };
        let mut rotated = false;
        if now_ms.saturating_sub(meta.made_ms) >= every_ms {
            self.account.generate_fallback_key();
            meta = FallbackMeta {
                made_ms: now_ms,
                replaced_ms: Some(now_ms),
            };
            self.prekeys_changed = true;
            rotated = true;
        } else if meta
            .replaced_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= grace_ms)
        {
            self.account.forget_fallback_key();
            meta.replaced_ms = None;
        }
        let mut batch = sled::Batch::default();
        self.put_account(&mut batch);
        batch.insert(
            FALLBACK_META_KEY,
            codec::encode(&meta).map_err(|e| StorageError::Corrupt(e.to_string()))?,
        );
        self.tree.apply_batch(batch)?;
        Ok(rotated)
    }

    /// Sets the check every received payload passes before it is accepted.
    pub fn set_payload_check(&mut self, check: std::sync::Arc<dyn PayloadCheck>) {
        self.payload_check = Some(check);
    }

    /// Whether the prekeys changed since the last call (the card must be
    /// republished).
    pub fn take_prekeys_changed(&mut self) -> bool {
        std::mem::take(&mut self.prekeys_changed)
    }

    /// The newest valid session with `peer` at `now_ms` that `fits`, for
    /// which we also hold an Olm session.
    pub fn current_session_where(
        &self,
        peer: &Amid,
        now_ms: u64,
        fits: impl Fn(&SessionInfo) -> bool,
    ) -> Option<SessionInfo> {
        if !self.has_olm(peer) {
            return None;
        }
        self.sessions
            .get(peer)?
            .iter()
            .filter(|s| s.expires_ms > now_ms && fits(s))
            .max_by_key(|s| s.created_ms)
            .cloned()
    }

    /// The newest valid session with `peer` at `now_ms` for which we also
    /// hold an Olm session.
    pub fn current_session(&self, peer: &Amid, now_ms: u64) -> Option<SessionInfo> {
        if !self.has_olm(peer) {
            return None;
        }
        self.sessions
            .get(peer)?
            .iter()
            .filter(|s| s.expires_ms > now_ms)
            .max_by_key(|s| s.created_ms)
            .cloned()
    }

    /// Session `id` with `peer`, when it is known and not expired at
    /// `now_ms` (and an Olm session with the peer exists).
    pub fn session(&self, peer: &Amid, id: &SessionId, now_ms: u64) -> Option<SessionInfo> {
        if !self.has_olm(peer) {
            return None;
        }
        self.sessions
            .get(peer)?
            .iter()
            .find(|s| &s.id == id && s.expires_ms > now_ms)
            .cloned()
    }

    /// Every cached session (for status).
    pub fn all_sessions(&self) -> Vec<SessionInfo> {
        self.sessions.values().flatten().cloned().collect()
    }

    /// Forgets every session with `peer`; returns their ids.
    pub fn forget_peer(&mut self, peer: &Amid) -> Vec<SessionId> {
        let ids: Vec<SessionId> = self
            .sessions
            .get(peer)
            .map(|l| l.iter().map(|s| s.id).collect())
            .unwrap_or_default();
        for id in &ids {
            if let Err(e) = self.forget_session(peer, id) {
                tracing::warn!(error = %e, "could not forget a session");
            }
        }
        ids
    }

    /// Forgets session `id` with `peer` (e.g. after the peer said it does not
    /// know it, or either side ended it). Returns whether there was such a
    /// session. When it was the peer's last, the Olm sessions with the peer
    /// are deleted too: nothing can use them any more (a new KNOCK starts a
    /// new one).
    pub fn forget_session(&mut self, peer: &Amid, id: &SessionId) -> Result<bool, StorageError> {
        self.tree.remove(key(b"ses/", &[peer.as_bytes(), &id.0]))?;
        let Some(list) = self.sessions.get_mut(peer) else {
            return Ok(false);
        };
        let before = list.len();
        list.retain(|s| &s.id != id);
        let removed = list.len() < before;
        if list.is_empty() {
            self.sessions.remove(peer);
            self.drop_olm(peer)?;
        }
        Ok(removed)
    }

    /// How many KNOCK nonces are held.
    pub fn nonces(&self) -> usize {
        self.tree.scan_prefix(b"nonce/").count()
    }

    /// Records a KNOCK nonce; returns whether it had been seen before.
    pub fn check_nonce(&mut self, nonce: &[u8; 16], expires_ms: u64) -> Result<bool, StorageError> {
        let k = key(b"nonce/", &[nonce]);
        let prev = self.tree.insert(k, &be(expires_ms))?;
        Ok(prev.is_some())
    }

    /// Drops replay and nonce entries that expired before `now_ms`, and the
    /// sessions that ended by then: a peer left with no session loses its
    /// Olm sessions too. Returns how many entries were dropped.
    pub fn sweep(&mut self, now_ms: u64) -> Result<usize, StorageError> {
        let mut n = 0;
        let ended: Vec<(Amid, SessionId)> = self
            .sessions
            .values()
            .flatten()
            .filter(|s| s.expires_ms <= now_ms)
            .map(|s| (s.peer, s.id))
            .collect();
        for (peer, id) in ended {
            if self.forget_session(&peer, &id)? {
                n += 1;
            }
        }
        for prefix in [&b"seen/"[..], b"nonce/"] {
            for item in self.tree.scan_prefix(prefix) {
                let (k, v) = item?;
                if read_be(&v) < now_ms {
                    self.tree.remove(k)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Flushes to disk.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// Where the fallback key's age is kept.
const FALLBACK_META_KEY: &[u8] = b"meta/fallback";

/// How often the fallback (signed) prekey is replaced.
pub const FALLBACK_KEY_ROTATION_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long a replaced fallback key still opens sessions: as long as a
/// KNOCK sealed to it may wait in a mailbox, and the clock skew.
pub const FALLBACK_KEY_GRACE_MS: u64 =
    DEFAULT_MESSAGE_TTL_MS + 2 * crate::crypto::envelope::MAX_CLOCK_SKEW_MS;

/// When the fallback key was made, and when the one before it was
/// replaced (while it is still kept).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct FallbackMeta {
    made_ms: u64,
    replaced_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        card::AgentCard,
        content::{Content, Kind},
        crypto::envelope::{MessageId, SignedEnvelope},
        identity::Identity,
    };
    use serde_json::json;

    fn msg(v: serde_json::Value) -> Content {
        Content::json(Kind::Message, &v).unwrap()
    }

    fn card_of(store: &SessionStore, amid: Amid) -> AgentCard {
        let (id, otks, fb) = store.card_keys();
        AgentCard {
            amid,
            olm_identity_key: id,
            one_time_keys: otks.into_iter().map(serde_bytes::ByteArray::new).collect(),
            fallback_key: fb,
            capabilities: vec![],
            addrs: vec![],
            presence: Default::default(),
            relays: Vec::new(),
            schemas: Default::default(),
            seq: 0,
            expires_ms: 0,
        }
    }

    struct Side {
        id: Identity,
        store: SessionStore,
        _dir: tempfile::TempDir,
    }

    fn side(seed: u8) -> Side {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let id = Identity::from_seed(&[seed; 32]);
        let store = SessionStore::open(id.amid(), &db, &[seed; 32]).unwrap();
        Side {
            id,
            store,
            _dir: dir,
        }
    }

    #[test]
    fn first_message_then_conversation_then_replay() {
        let mut a = side(1);
        let mut b = side(2);
        let now = 1_000_000;
        let card = card_of(&b.store, b.id.amid());
        let (pending, env) = a
            .store
            .seal_first(
                &a.id,
                &card,
                false,
                Intent::default(),
                MessageId([1; 16]),
                &msg(json!({"n": 1})),
                now,
            )
            .unwrap();
        let sid = SessionStore::pending_session_id(&pending);
        let info = SessionStore::responder_info(
            a.id.amid(),
            sid,
            Intent::default(),
            now,
            now + 10_000_000,
        );
        let (_, got) = b.store.receive(&env, Some(&info), now).unwrap();
        assert_eq!(got.payload, json!({"n": 1}));
        a.store.commit_outbound(pending, now + 10_000_000).unwrap();

        // replay of the first envelope as a plain message is a duplicate
        assert!(matches!(
            b.store.receive(&env, None, now),
            Err(OpenError::Duplicate)
        ));
        assert_eq!(b.store.inbox().len(), 1);

        let env2 = a
            .store
            .seal(
                &a.id,
                &b.id.amid(),
                None,
                MessageId([2; 16]),
                &msg(json!("two")),
                now,
            )
            .unwrap();
        let (_, got) = b.store.receive(&env2, None, now).unwrap();
        assert_eq!(got.payload, json!("two"));
        assert_eq!(got.seq, 1);

        // b answers in the same session
        let env3 = b
            .store
            .seal(
                &b.id,
                &a.id.amid(),
                None,
                MessageId([3; 16]),
                &msg(json!("three")),
                now,
            )
            .unwrap();
        let (_, got) = a.store.receive(&env3, None, now).unwrap();
        assert_eq!(got.payload, json!("three"));
        assert_eq!(b.store.inbox().len(), 2);
        assert!(b.store.take_prekeys_changed());
    }

    #[test]
    fn the_fallback_key_rotates_and_the_old_one_opens_sessions_for_a_grace_period() {
        let mut a = side(1);
        let mut b = side(2);
        let (every, grace) = (1_000, 300);
        let t0 = 1_000_000;
        // First call: the key counts from now.
        assert!(!b.store.rotate_fallback_key(t0, every, grace).unwrap());
        let old_card = card_of(&b.store, b.id.amid());
        assert!(!b
            .store
            .rotate_fallback_key(t0 + every - 1, every, grace)
            .unwrap());
        assert!(b
            .store
            .rotate_fallback_key(t0 + every, every, grace)
            .unwrap());
        assert!(
            b.store.take_prekeys_changed(),
            "the card must be published again"
        );
        let new_card = card_of(&b.store, b.id.amid());
        assert_ne!(new_card.fallback_key, old_card.fallback_key);

        // A KNOCK sealed to the old key (from a card read before, or one
        // that waited in a mailbox) opens within the grace period.
        let open = |a: &mut Side, b: &mut Side, card: &AgentCard, n: u8, now: u64| {
            let (pending, env) = a
                .store
                .seal_first(
                    &a.id,
                    card,
                    true,
                    Intent::default(),
                    MessageId([n; 16]),
                    &msg(json!(n)),
                    now,
                )
                .unwrap();
            let sid = SessionStore::pending_session_id(&pending);
            let info = SessionStore::responder_info(
                a.id.amid(),
                sid,
                Intent::default(),
                now,
                now + 1_000_000,
            );
            b.store
                .receive(&env, Some(&info), now)
                .map(|(_, r)| r.payload)
        };
        let t1 = t0 + every + grace - 1;
        assert!(!b.store.rotate_fallback_key(t1, every, grace).unwrap());
        assert_eq!(open(&mut a, &mut b, &old_card, 1, t1).unwrap(), json!(1));
        // After it, the old key is gone; the new one opens.
        let t2 = t0 + every + grace;
        b.store.rotate_fallback_key(t2, every, grace).unwrap();
        assert!(open(&mut a, &mut b, &old_card, 2, t2).is_err());
        assert_eq!(open(&mut a, &mut b, &new_card, 3, t2).unwrap(), json!(3));
    }

    #[test]
    fn tampered_and_unknown_session_refused() {
        let a = side(1);
        let mut b = side(2);
        let now = 1_000_000;
        let card = card_of(&b.store, b.id.amid());
        let (pending, env) = a
            .store
            .seal_first(
                &a.id,
                &card,
                false,
                Intent::default(),
                MessageId([1; 16]),
                &msg(json!(1)),
                now,
            )
            .unwrap();
        // no KNOCK accepted: the session is unknown
        assert!(matches!(
            b.store.receive(&env, None, now),
            Err(OpenError::UnknownSession)
        ));
        let sid = SessionStore::pending_session_id(&pending);
        let info =
            SessionStore::responder_info(a.id.amid(), sid, Intent::default(), now, now + 10_000);
        let mut bad = env.clone();
        bad.tamper();
        assert!(matches!(
            b.store.receive(&bad, Some(&info), now),
            Err(OpenError::Envelope(_))
        ));
        assert!(b.store.inbox().is_empty());
        // the genuine one still goes through
        assert!(b.store.receive(&env, Some(&info), now).is_ok());
    }

    #[test]
    fn survives_restart() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let ida = Identity::from_seed(&[1; 32]);
        let idb = Identity::from_seed(&[2; 32]);
        let now = 1_000_000;
        let db_a = sled::open(dir_a.path()).unwrap();
        let mut a = SessionStore::open(ida.amid(), &db_a, &[1; 32]).unwrap();
        let info;
        {
            let db_b = sled::open(dir_b.path()).unwrap();
            let mut b = SessionStore::open(idb.amid(), &db_b, &[2; 32]).unwrap();
            let card = card_of(&b, idb.amid());
            let (p, env) = a
                .seal_first(
                    &ida,
                    &card,
                    false,
                    Intent::default(),
                    MessageId([1; 16]),
                    &msg(json!(1)),
                    now,
                )
                .unwrap();
            info = SessionStore::responder_info(
                ida.amid(),
                SessionStore::pending_session_id(&p),
                Intent::default(),
                now,
                now + 10_000_000,
            );
            b.receive(&env, Some(&info), now).unwrap();
            a.commit_outbound(p, now + 10_000_000).unwrap();
            b.flush().unwrap();
        }
        let db_b = sled::open(dir_b.path()).unwrap();
        let mut b = SessionStore::open(idb.amid(), &db_b, &[2; 32]).unwrap();
        let env = a
            .seal(
                &ida,
                &idb.amid(),
                None,
                MessageId([2; 16]),
                &msg(json!("after")),
                now,
            )
            .unwrap();
        assert_eq!(
            b.receive(&env, None, now).unwrap().1.payload,
            json!("after")
        );
        // wrong storage key cannot read the pickles
        drop(b);
        drop(db_b);
        let db_b = sled::open(dir_b.path()).unwrap();
        assert!(SessionStore::open(idb.amid(), &db_b, &[9; 32]).is_err());
    }

    /// `a` KNOCKs `b` and both commit the session, valid until `expires`.
    fn knock(a: &mut Side, b: &mut Side, n: u8, now: u64, expires: u64) {
        let card = card_of(&b.store, b.id.amid());
        let (pending, env) = a
            .store
            .seal_first(
                &a.id,
                &card,
                false,
                Intent::default(),
                MessageId([n; 16]),
                &msg(json!({"knock": n})),
                now,
            )
            .unwrap();
        let info = SessionStore::responder_info(
            a.id.amid(),
            SessionStore::pending_session_id(&pending),
            Intent::default(),
            now,
            expires,
        );
        b.store.receive(&env, Some(&info), now).unwrap();
        a.store.commit_outbound(pending, expires).unwrap();
    }

    /// `from` seals `text` to `to`, and `to` opens it.
    fn exchange(from: &mut Side, to: &mut Side, id: [u8; 16], text: &str, now: u64) {
        let env = from
            .store
            .seal(
                &from.id,
                &to.id.amid(),
                None,
                MessageId(id),
                &msg(json!(text)),
                now,
            )
            .unwrap();
        let (_, got) = to.store.receive(&env, None, now).unwrap();
        assert_eq!(got.payload, json!(text));
    }

    #[test]
    fn olm_sessions_beyond_the_cache_are_read_back_from_disk() {
        let now = 1_000_000;
        let mut b = side(2);
        b.store.olm_cap = 3;
        let mut peers: Vec<Side> = (0..8).map(|i| side(10 + i)).collect();
        for (i, a) in peers.iter_mut().enumerate() {
            knock(a, &mut b, i as u8, now, now + 10_000_000);
        }
        assert!(
            b.store.cached_peers() <= 3,
            "{} cached",
            b.store.cached_peers()
        );
        for round in 0..3u8 {
            for (i, a) in peers.iter_mut().enumerate() {
                let id = [round * 16 + i as u8 + 100; 16];
                exchange(a, &mut b, id, &format!("to b {round} {i}"), now + 1);
                let id = [round * 16 + i as u8 + 50; 16];
                exchange(&mut b, a, id, &format!("from b {round} {i}"), now + 1);
                // What b sealed is written before it leaves (as a link does);
                // until then that peer stays in memory.
                b.store.save(now + 1).unwrap();
                assert!(b.store.cached_peers() <= 3);
            }
        }
        // Every peer's session is on disk, whatever memory holds.
        for a in &peers {
            assert!(b.store.current_session(&a.id.amid(), now + 2).is_some());
        }
    }

    #[test]
    fn a_peers_sessions_come_back_newest_last() {
        let now = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        let ida = Identity::from_seed(&[1; 32]);
        let mut b = side(2);
        let newest;
        {
            let db = sled::open(dir.path()).unwrap();
            let mut a = Side {
                id: Identity::from_seed(&[1; 32]),
                store: SessionStore::open(ida.amid(), &db, &[1; 32]).unwrap(),
                _dir: tempfile::tempdir().unwrap(),
            };
            for n in 0..3 {
                knock(&mut a, &mut b, n, now + u64::from(n), now + 10_000_000);
            }
            newest = a.store.olm[&b.id.amid()].last().unwrap().session_id();
            a.store.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let mut a = SessionStore::open(ida.amid(), &db, &[1; 32]).unwrap();
        a.load_olm(&b.id.amid()).unwrap();
        assert_eq!(a.olm[&b.id.amid()].len(), 3);
        assert_eq!(a.olm[&b.id.amid()].last().unwrap().session_id(), newest);
    }

    #[test]
    fn ended_sessions_and_their_olm_state_are_purged() {
        let now = 1_000_000;
        let mut a = side(1);
        let mut b = side(2);
        let mut c = side(3);
        knock(&mut a, &mut b, 1, now, now + 10_000);
        knock(&mut c, &mut b, 2, now, now + 10_000_000);
        exchange(&mut a, &mut b, [9; 16], "before", now + 1);
        let entries = |s: &SessionStore, prefix: &[u8], peer: &Amid| {
            s.tree.scan_prefix(key(prefix, &[peer.as_bytes()])).count()
        };
        assert_eq!(entries(&b.store, b"olm/", &a.id.amid()), 1);
        assert_eq!(entries(&b.store, b"ses/", &a.id.amid()), 1);

        // Not ended yet: nothing goes.
        b.store.sweep(now + 5_000).unwrap();
        assert!(b.store.current_session(&a.id.amid(), now + 5_000).is_some());

        assert!(b.store.sweep(now + 10_000).unwrap() >= 1);
        assert!(b
            .store
            .current_session(&a.id.amid(), now + 10_000)
            .is_none());
        assert_eq!(entries(&b.store, b"olm/", &a.id.amid()), 0);
        assert_eq!(entries(&b.store, b"ses/", &a.id.amid()), 0);
        // c's session is untouched and still carries messages.
        assert_eq!(entries(&b.store, b"olm/", &c.id.amid()), 1);
        exchange(&mut c, &mut b, [8; 16], "still here", now + 10_001);

        // a's side ends it too; a new KNOCK starts afresh.
        a.store.sweep(now + 10_000).unwrap();
        assert_eq!(entries(&a.store, b"olm/", &b.id.amid()), 0);
        knock(&mut a, &mut b, 3, now + 20_000, now + 10_000_000);
        exchange(&mut a, &mut b, [7; 16], "again", now + 20_001);
        exchange(&mut b, &mut a, [6; 16], "welcome back", now + 20_002);
    }

    #[test]
    fn closing_the_last_session_deletes_the_olm_sessions() {
        let now = 1_000_000;
        let mut a = side(1);
        let mut b = side(2);
        knock(&mut a, &mut b, 1, now, now + 10_000_000);
        let sid = b.store.current_session(&a.id.amid(), now).unwrap().id;
        assert!(b.store.forget_session(&a.id.amid(), &sid).unwrap());
        assert!(!b.store.has_olm(&a.id.amid()));
        assert_eq!(
            b.store
                .tree
                .scan_prefix(key(b"olm/", &[a.id.amid().as_bytes()]))
                .count(),
            0
        );
    }

    fn olm_values(s: &SessionStore, peer: &Amid) -> Vec<Vec<u8>> {
        s.tree
            .scan_prefix(key(b"olm/", &[peer.as_bytes()]))
            .map(|i| i.unwrap().1.to_vec())
            .collect()
    }

    #[test]
    fn sealing_is_written_by_save_once_per_burst() {
        let now = 1_000_000;
        let mut a = side(1);
        let mut b = side(2);
        knock(&mut a, &mut b, 1, now, now + 10_000_000);
        let before = olm_values(&a.store, &b.id.amid());
        let envs: Vec<SignedEnvelope> = (0..5u8)
            .map(|n| {
                a.store
                    .seal(
                        &a.id,
                        &b.id.amid(),
                        None,
                        MessageId([10 + n; 16]),
                        &msg(json!(n)),
                        now,
                    )
                    .unwrap()
            })
            .collect();
        // Nothing written yet: the envelopes must not leave before `save`.
        assert_eq!(olm_values(&a.store, &b.id.amid()), before);
        a.store.save(now).unwrap();
        let after = olm_values(&a.store, &b.id.amid());
        assert_ne!(after, before);
        let info = a.store.current_session(&b.id.amid(), now).unwrap();
        let stored: SessionInfo = codec::decode(
            &a.store
                .tree
                .get(key(b"ses/", &[b.id.amid().as_bytes(), &info.id.0]))
                .unwrap()
                .unwrap(),
            4096,
        )
        .unwrap();
        assert_eq!(stored.next_seq, 6);

        // The receiver opens the burst in one write; a copy of a message
        // inside the same burst is a duplicate, a tampered one is refused.
        let mut bad = envs[3].clone();
        bad.tamper();
        let burst = vec![
            envs[0].clone(),
            envs[1].clone(),
            envs[1].clone(),
            bad,
            envs[2].clone(),
            envs[3].clone(),
            envs[4].clone(),
        ];
        let before_b = olm_values(&b.store, &a.id.amid());
        let results = b.store.receive_burst(&burst, now);
        let kinds: Vec<&str> = results
            .iter()
            .map(|r| match r {
                Ok(_) => "ok",
                Err(OpenError::Duplicate) => "duplicate",
                Err(_) => "refused",
            })
            .collect();
        assert_eq!(
            kinds,
            ["ok", "ok", "duplicate", "refused", "ok", "ok", "ok"]
        );
        assert_eq!(b.store.inbox().len(), 6);
        assert_ne!(olm_values(&b.store, &a.id.amid()), before_b);
        // Replayed later, each is a duplicate.
        assert!(b
            .store
            .receive_burst(&envs, now)
            .iter()
            .all(|r| matches!(r, Err(OpenError::Duplicate))));
    }

    #[test]
    fn a_sender_restarted_after_save_goes_on_where_it_was() {
        let now = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        let ida = Identity::from_seed(&[1; 32]);
        let mut b = side(2);
        {
            let db = sled::open(dir.path()).unwrap();
            let mut a = Side {
                id: Identity::from_seed(&[1; 32]),
                store: SessionStore::open(ida.amid(), &db, &[1; 32]).unwrap(),
                _dir: tempfile::tempdir().unwrap(),
            };
            knock(&mut a, &mut b, 1, now, now + 10_000_000);
            for n in 0..3u8 {
                exchange(&mut a, &mut b, [20 + n; 16], "before", now);
            }
            a.store.save(now).unwrap();
            a.store.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let mut a = Side {
            id: ida,
            store: SessionStore::open(Identity::from_seed(&[1; 32]).amid(), &db, &[1; 32]).unwrap(),
            _dir: tempfile::tempdir().unwrap(),
        };
        let env = a
            .store
            .seal(
                &a.id,
                &b.id.amid(),
                None,
                MessageId([30; 16]),
                &msg(json!("after")),
                now,
            )
            .unwrap();
        let (_, got) = b.store.receive(&env, None, now).unwrap();
        assert_eq!(got.payload, json!("after"));
        assert_eq!(got.seq, 4);
    }
}
