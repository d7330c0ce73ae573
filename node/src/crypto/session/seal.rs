//! Sealing outbound messages: the first message of a session (with its
//! KNOCK) and the messages that follow.
use vodozemac::{
    olm::{Session, SessionConfig},
    Curve25519PublicKey,
};
use zeroize::Zeroizing;

use crate::{
    card::AgentCard,
    content::{Content, MAX_CONTENT_SIZE},
    crypto::envelope::{EnvelopeBody, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION},
    identity::{Amid, Identity},
    knock::Intent,
    storage::StorageError,
};

use super::{Role, SessionInfo, SessionStore, DEFAULT_MESSAGE_TTL_MS};

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No session with the peer.
    #[error("no session with {0}")]
    NoSession(Amid),
    /// The session the message belongs to ended (closed, or expired).
    #[error("session {0} has ended")]
    SessionEnded(SessionId),
    /// The payload is over [`MAX_CONTENT_SIZE`].
    #[error("payload of {0} bytes is too large")]
    PayloadTooLarge(usize),
    /// The peer's card holds an invalid key.
    #[error("peer card holds an invalid key")]
    BadCard,
    /// Olm failed.
    #[error("olm: {0}")]
    Olm(String),
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// An outbound Olm session waiting for the KNOCK's answer.
pub struct PendingOutbound {
    peer: Amid,
    olm: Session,
    info: SessionInfo,
}

impl std::fmt::Debug for PendingOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOutbound")
            .field("peer", &self.peer)
            .field("session", &self.info.id)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    fn encrypt(&self, olm: &mut Session, content: &Content) -> Result<(u8, Vec<u8>), SealError> {
        let plain = Zeroizing::new(content.to_bytes().map_err(|e| match e {
            crate::content::ContentError::TooLarge(n) => SealError::PayloadTooLarge(n),
            e => SealError::Olm(e.to_string()),
        })?);
        if plain.len() > MAX_CONTENT_SIZE {
            return Err(SealError::PayloadTooLarge(plain.len()));
        }
        let msg = olm
            .encrypt(&*plain)
            .map_err(|e| SealError::Olm(e.to_string()))?;
        let (t, ct) = msg.to_parts();
        Ok((t as u8, ct))
    }

    /// Starts an outbound session to `card`'s agent and seals the first
    /// message in it. Nothing is stored until [`Self::commit_outbound`].
    #[allow(clippy::too_many_arguments)]
    pub fn seal_first(
        &self,
        identity: &Identity,
        card: &AgentCard,
        use_fallback: bool,
        intent: Intent,
        id: MessageId,
        content: &Content,
        now_ms: u64,
    ) -> Result<(PendingOutbound, SignedEnvelope), SealError> {
        let their_id = Curve25519PublicKey::from_bytes(card.olm_identity_key);
        let otk = if use_fallback || card.one_time_keys.is_empty() {
            card.fallback_key
        } else {
            let i = usize::from(crate::storage::random_array::<1>()[0]) % card.one_time_keys.len();
            *card.one_time_keys[i]
        };
        let mut olm = self
            .account
            .create_outbound_session(
                SessionConfig::version_1(),
                their_id,
                Curve25519PublicKey::from_bytes(otk),
            )
            .map_err(|_| SealError::BadCard)?;
        let info = SessionInfo {
            id: SessionId::random(),
            peer: card.amid,
            role: Role::Initiator,
            intent,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(crate::knock::DEFAULT_SESSION_TTL_MS),
            next_seq: 1,
        };
        let (olm_type, ciphertext) = self.encrypt(&mut olm, content)?;
        let env = SignedEnvelope::seal(
            identity,
            &EnvelopeBody {
                v: ENVELOPE_VERSION,
                id,
                from: self.me,
                to: card.amid,
                session: info.id,
                seq: 0,
                ts_ms: now_ms,
                expires_ms: now_ms.saturating_add(DEFAULT_MESSAGE_TTL_MS),
                olm_type,
                ciphertext,
            },
        )
        .map_err(|e| SealError::Olm(e.to_string()))?;
        Ok((
            PendingOutbound {
                peer: card.amid,
                olm,
                info,
            },
            env,
        ))
    }

    /// The session id a pending outbound session proposes.
    pub fn pending_session_id(p: &PendingOutbound) -> SessionId {
        p.info.id
    }

    /// Stores an outbound session once the peer accepted it.
    pub fn commit_outbound(
        &mut self,
        p: PendingOutbound,
        expires_ms: u64,
    ) -> Result<SessionInfo, StorageError> {
        let mut info = p.info;
        info.expires_ms = expires_ms.min(info.expires_ms);
        self.load_olm(&p.peer)?;
        let mut batch = sled::Batch::default();
        self.put_info(&mut batch, &info)?;
        self.put_olm(&mut batch, &p.peer, &p.olm, info.created_ms);
        self.tree.apply_batch(batch)?;
        self.push_olm(p.peer, p.olm);
        self.cache_info(info.clone());
        Ok(info)
    }

    /// Seals a message to `peer` in session `session`, or in the current
    /// session when `None`. The advanced ratchet is written by the next
    /// [`Self::save`], which must come (and be flushed) before the envelope
    /// leaves the process: a burst of messages costs one write.
    pub fn seal(
        &mut self,
        identity: &Identity,
        peer: &Amid,
        session: Option<SessionId>,
        id: MessageId,
        content: &Content,
        now_ms: u64,
    ) -> Result<SignedEnvelope, SealError> {
        let mut info = match session {
            None => self
                .current_session(peer, now_ms)
                .ok_or(SealError::NoSession(*peer))?,
            Some(s) => self
                .session(peer, &s, now_ms)
                .ok_or(SealError::SessionEnded(s))?,
        };
        self.load_olm(peer)?;
        let mut olm = self
            .olm
            .get_mut(peer)
            .and_then(Vec::pop)
            .ok_or(SealError::NoSession(*peer))?;
        let sealed = self.encrypt(&mut olm, content);
        let result = sealed.and_then(|(olm_type, ciphertext)| {
            let env = SignedEnvelope::seal(
                identity,
                &EnvelopeBody {
                    v: ENVELOPE_VERSION,
                    id,
                    from: self.me,
                    to: *peer,
                    session: info.id,
                    seq: info.next_seq,
                    ts_ms: now_ms,
                    expires_ms: now_ms.saturating_add(DEFAULT_MESSAGE_TTL_MS),
                    olm_type,
                    ciphertext,
                },
            )
            .map_err(|e| SealError::Olm(e.to_string()))?;
            info.next_seq += 1;
            Ok((env, info))
        });
        let result = result.map(|(env, info)| {
            self.cache_info(info);
            self.unsaved.insert(*peer);
            env
        });
        self.olm.entry(*peer).or_default().push(olm);
        result
    }
}
