//! Opening inbound messages: decrypting, replay checks, staging a burst
//! and committing it atomically with the durable inbox.

use serde::{Deserialize, Serialize};
use tracing::debug;
use vodozemac::olm::{OlmMessage, Session, SessionConfig};
use zeroize::Zeroizing;

use agentmesh_transports::codec;

use crate::{
    content::{Content, Kind},
    crypto::envelope::{EnvelopeError, MessageId, SessionId, SignedEnvelope, MAX_CLOCK_SKEW_MS},
    identity::Amid,
    knock::{Intent, RejectReason},
    storage::StorageError,
};

use super::{
    be, key, read_be, Role, SessionInfo, SessionStore, MAX_CACHED_PEERS, ONE_TIME_KEYS,
    ONE_TIME_KEYS_LOW,
};

/// A received, decrypted message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Received {
    /// Message id.
    pub id: MessageId,
    /// Sender.
    pub from: Amid,
    /// Session.
    pub session: SessionId,
    /// Sender's sequence number.
    pub seq: u64,
    /// Sending time, ms since the epoch.
    pub ts_ms: u64,
    /// The decrypted payload (JSON; `Null` for stream chunks and ends).
    pub payload: serde_json::Value,
    /// How the message is used (request, reply, stream chunk, ...).
    #[serde(default)]
    pub kind: Kind,
    /// The bytes of a stream chunk; empty otherwise.
    #[serde(default, with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Why an incoming envelope was not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The envelope itself is invalid.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Already delivered: acknowledge, do not deliver again.
    #[error("duplicate message")]
    Duplicate,
    /// The session is unknown or expired.
    #[error("unknown session")]
    UnknownSession,
    /// The prekey the sender used is gone.
    #[error("one-time prekey unavailable")]
    PrekeyUnavailable,
    /// Olm decryption failed.
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// The payload is not JSON.
    #[error("payload is not valid JSON")]
    BadPayload,
    /// The payload does not conform to the session's schema.
    #[error("{0}")]
    SchemaInvalid(String),
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl OpenError {
    /// The reason sent back to the sender.
    pub fn reason(&self) -> RejectReason {
        match self {
            OpenError::Envelope(EnvelopeError::BadSignature) => RejectReason::BadSignature,
            OpenError::Envelope(EnvelopeError::WrongRecipient(_)) => RejectReason::WrongRecipient,
            OpenError::Envelope(
                EnvelopeError::Expired | EnvelopeError::FromTheFuture | EnvelopeError::ExpiryTooFar,
            ) => RejectReason::StaleTimestamp,
            OpenError::Envelope(_) | OpenError::BadPayload => RejectReason::Malformed,
            OpenError::SchemaInvalid(_) => RejectReason::SchemaInvalid,
            OpenError::UnknownSession => RejectReason::UnknownSession,
            OpenError::PrekeyUnavailable => RejectReason::PrekeyUnavailable,
            OpenError::Decrypt(_) => RejectReason::DecryptFailed,
            OpenError::Duplicate | OpenError::Storage(_) => RejectReason::Unavailable,
        }
    }
}

/// The writes of received messages not committed yet (see
/// [`SessionStore::receive_burst`]).
#[derive(Default)]
struct Staged {
    batch: sled::Batch,
    /// Replay keys in `batch`.
    seen: std::collections::HashSet<Vec<u8>>,
    /// The Olm sessions used, to write once each.
    olm: Vec<(Amid, String)>,
    /// Sessions a KNOCK set up, cached once written.
    infos: Vec<SessionInfo>,
    /// Whether an inbound Olm session was made (the account changed).
    account: bool,
    now_ms: u64,
}

impl SessionStore {
    /// Opens a verified-or-not envelope from the network: checks signature,
    /// recipient, time, session and replay, decrypts, and commits the Olm
    /// state, the replay entry and the inbox entry in one atomic write.
    ///
    /// `knock_session` is the session a KNOCK is creating (its first
    /// envelope); for plain messages it is `None` and the session must be
    /// cached. Returns the inbox key and the message. Messages for the
    /// application (JSON kinds) are put in the inbox; stream chunks and ends
    /// are not (they have no inbox key).
    pub fn receive(
        &mut self,
        env: &SignedEnvelope,
        knock_session: Option<&SessionInfo>,
        now_ms: u64,
    ) -> Result<(Option<u64>, Received), OpenError> {
        let mut staged = Staged::default();
        let result = self.stage(env, knock_session, now_ms, &mut staged);
        self.commit_staged(staged)?;
        result
    }

    /// [`Self::receive`] for a burst of plain messages (from one stream):
    /// each is checked and decrypted in turn, and all of them are committed
    /// in one atomic write holding each Olm session once, however many
    /// messages it opened. One result per envelope, in order; when the
    /// write fails, every message that had opened fails with it.
    pub fn receive_burst(
        &mut self,
        envs: &[SignedEnvelope],
        now_ms: u64,
    ) -> Vec<Result<(Option<u64>, Received), OpenError>> {
        let mut staged = Staged::default();
        let results: Vec<_> = envs
            .iter()
            .map(|env| self.stage(env, None, now_ms, &mut staged))
            .collect();
        match self.commit_staged(staged) {
            Ok(()) => results,
            Err(e) => results
                .into_iter()
                .map(|r| match r {
                    Ok(_) | Err(OpenError::Duplicate) => Err(OpenError::Storage(
                        StorageError::Corrupt(format!("burst not written: {e}")),
                    )),
                    Err(other) => Err(other),
                })
                .collect(),
        }
    }

    /// Checks and decrypts one envelope, adding its writes to `staged`.
    fn stage(
        &mut self,
        env: &SignedEnvelope,
        knock_session: Option<&SessionInfo>,
        now_ms: u64,
        staged: &mut Staged,
    ) -> Result<(Option<u64>, Received), OpenError> {
        let keys = &mut self.keys;
        let body = env.open_with(&self.me, now_ms, |from| {
            if let Some(k) = keys.get(from) {
                return Some(*k);
            }
            let k = from.verifying_key().ok()?;
            if keys.len() >= MAX_CACHED_PEERS {
                keys.clear();
            }
            keys.insert(*from, k);
            Some(k)
        })?;
        let seen_key = key(b"seen/", &[body.from.as_bytes(), &body.id.0]);
        let duplicate = staged.seen.contains(&seen_key)
            || self
                .tree
                .contains_key(&seen_key)
                .map_err(StorageError::from)?;
        // A duplicate plain message is dropped at once. A duplicate first
        // message of a KNOCK (the initiator lost our answer and knocked
        // again) still sets up the new session, but is not delivered again.
        if duplicate && knock_session.is_none() {
            return Err(OpenError::Duplicate);
        }
        let info = match knock_session {
            Some(info) if info.id == body.session && info.peer == body.from => info.clone(),
            Some(_) => return Err(OpenError::UnknownSession),
            None => self
                .sessions
                .get(&body.from)
                .and_then(|l| l.iter().find(|s| s.id == body.session))
                .filter(|s| s.expires_ms > now_ms)
                .cloned()
                .ok_or(OpenError::UnknownSession)?,
        };
        let msg = OlmMessage::from_parts(body.olm_type as usize, &body.ciphertext)
            .map_err(|e| OpenError::Decrypt(e.to_string()))?;
        let (olm, plain, created) = self.decrypt(&body.from, &msg)?;
        let plain = Zeroizing::new(plain);
        let decoded = Content::from_bytes(&plain).and_then(|c| Ok((c.payload()?, c)));
        let Ok((payload, content)) = decoded else {
            // Keep the ratchet where it was: the message is refused.
            self.olm.entry(body.from).or_default().push(olm);
            return Err(OpenError::BadPayload);
        };
        if let Some(check) = &self.payload_check {
            if let Err(detail) = check.check(&info, &content.kind, &payload) {
                // Refused like a payload that is not JSON.
                self.olm.entry(body.from).or_default().push(olm);
                return Err(OpenError::SchemaInvalid(detail));
            }
        }
        let received = Received {
            id: body.id,
            from: body.from,
            session: body.session,
            seq: body.seq,
            ts_ms: body.ts_ms,
            payload,
            kind: content.kind,
            data: if content.kind.carries_json() {
                Vec::new()
            } else {
                content.body
            },
        };
        let olm_id = olm.session_id();
        self.push_olm(body.from, olm);
        if !staged.olm.contains(&(body.from, olm_id.clone())) {
            staged.olm.push((body.from, olm_id));
        }
        staged.now_ms = staged.now_ms.max(now_ms);
        staged.account |= created;
        if knock_session.is_some() {
            self.put_info(&mut staged.batch, &info)?;
            staged.infos.push(info);
        }
        if duplicate {
            return Err(OpenError::Duplicate);
        }
        staged.batch.insert(
            seen_key.clone(),
            &be(body
                .expires_ms
                .max(now_ms)
                .saturating_add(MAX_CLOCK_SKEW_MS)),
        );
        staged.seen.insert(seen_key);
        let mut arrival = None;
        if received.kind.carries_json() {
            let a = self.db.generate_id().map_err(StorageError::from)?;
            let plain_rec = Zeroizing::new(
                codec::encode(&received).map_err(|e| StorageError::Corrupt(e.to_string()))?,
            );
            let inbox_key = key(b"inbox/", &[&be(a)]);
            staged.batch.insert(
                inbox_key.clone(),
                self.inbox_sealer.seal(&plain_rec, &inbox_key),
            );
            arrival = Some(a);
        }
        Ok((arrival, received))
    }

    /// Writes what [`Self::stage`] gathered in one atomic batch: each Olm
    /// session it used once, as it stands now.
    fn commit_staged(&mut self, mut staged: Staged) -> Result<(), StorageError> {
        if staged.olm.is_empty() {
            return Ok(());
        }
        for (peer, id) in &staged.olm {
            let pickle = self
                .olm
                .get(peer)
                .and_then(|l| l.iter().find(|s| &s.session_id() == id))
                .map(|s| s.pickle());
            if let Some(pickle) = pickle {
                self.put_pickle(&mut staged.batch, peer, id, pickle, staged.now_ms);
            }
        }
        if staged.account {
            self.put_account(&mut staged.batch);
        }
        self.tree.apply_batch(staged.batch)?;
        for info in staged.infos {
            self.cache_info(info);
        }
        if staged.account && self.account.stored_one_time_key_count() < ONE_TIME_KEYS_LOW {
            self.account
                .generate_one_time_keys(ONE_TIME_KEYS - self.account.stored_one_time_key_count());
            let mut batch = sled::Batch::default();
            self.put_account(&mut batch);
            self.tree.apply_batch(batch)?;
        }
        if staged.account {
            self.prekeys_changed = true;
        }
        Ok(())
    }

    /// Decrypts with an existing session of `peer` or a new inbound one.
    /// Returns the session (removed from the in-memory list: the caller puts
    /// it back), the plaintext and whether the session is new.
    fn decrypt(
        &mut self,
        peer: &Amid,
        msg: &OlmMessage,
    ) -> Result<(Session, Vec<u8>, bool), OpenError> {
        self.load_olm(peer)?;
        let list = self.olm.entry(*peer).or_default();
        if let OlmMessage::PreKey(pre) = msg {
            let sid = pre.session_id();
            if let Some(i) = list.iter().position(|s| s.session_id() == sid) {
                let mut s = list.remove(i);
                return match s.decrypt(msg) {
                    Ok(p) => Ok((s, p, false)),
                    Err(e) => {
                        list.insert(i, s);
                        Err(OpenError::Decrypt(e.to_string()))
                    }
                };
            }
            let res = self
                .account
                .create_inbound_session(SessionConfig::version_1(), pre.identity_key(), pre)
                .map_err(|e| match e {
                    vodozemac::olm::SessionCreationError::MissingOneTimeKey(_) => {
                        OpenError::PrekeyUnavailable
                    }
                    e => OpenError::Decrypt(e.to_string()),
                })?;
            return Ok((res.session, res.plaintext, true));
        }
        // Newest first.
        for i in (0..list.len()).rev() {
            if let Ok(p) = list[i].decrypt(msg) {
                let s = list.remove(i);
                return Ok((s, p, false));
            }
        }
        debug!(%peer, "no olm session decrypts the message");
        Err(OpenError::Decrypt("no session decrypts the message".into()))
    }

    /// Stores a session accepted by us (responder side) together with the
    /// KNOCK's first message: see [`Self::receive`].
    pub fn responder_info(
        peer: Amid,
        id: SessionId,
        intent: Intent,
        now_ms: u64,
        expires_ms: u64,
    ) -> SessionInfo {
        SessionInfo {
            id,
            peer,
            role: Role::Responder,
            intent,
            created_ms: now_ms,
            expires_ms,
            next_seq: 1,
        }
    }

    /// Messages in the inbox not yet taken by the application, oldest first.
    pub fn inbox(&self) -> Vec<(u64, Received)> {
        self.tree
            .scan_prefix(b"inbox/")
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let plain = self.inbox_sealer.open(&v, &k).ok()?;
                let r: Received = codec::decode(&plain, usize::MAX).ok()?;
                Some((read_be(&k[6..]), r))
            })
            .collect()
    }

    /// Removes a message the application has taken.
    pub fn take_inbox(&self, arrival: u64) -> Result<(), StorageError> {
        self.tree.remove(key(b"inbox/", &[&be(arrival)]))?;
        Ok(())
    }
}
