//! Prekey bundles: an agent uploads its Olm identity, fallback and
//! one-time keys, with its signed card; a fetch hands out the identity and
//! fallback keys and the card, and uses up nothing. One-time keys are not
//! handed out: the fetch is unauthenticated, and anyone could use them all
//! up. An initiator gets one-time keys from the agent's card, where using
//! one takes a KNOCK signed by a known identity.
//!
//! The card is what lets a sender whose DHT lookup finds nothing reach the
//! agent (its addresses and relays) and start a session (its keys): the
//! registry checks it when it is uploaded (the agent's own signature, not
//! expired, the bundle's keys), and the sender checks it again by its
//! signature, so a registry can withhold a card but not forge one.

use serde::Serialize;

use agentmesh_node::{
    registry::{PrekeyBundle, SignedRequest},
    Amid,
};

use super::{
    store::{self, StoredPrekeys},
    Registry, RegistryError, StoreError,
};

/// The answer to `prekeys`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PrekeysStored {
    /// The agent.
    pub amid: Amid,
    /// One-time keys stored.
    pub one_time_keys: usize,
}

/// An agent's prekey bundle, as it is handed out: its identity and
/// fallback keys, never a one-time key.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PrekeyHandout {
    /// The agent.
    pub amid: Amid,
    /// Olm identity key, hex.
    pub identity_key: String,
    /// Fallback key, hex: the key to start a session with.
    pub fallback_key: String,
    /// Always `null`: no one-time key is handed out here (clients that
    /// read it use the fallback key, as when none was left).
    pub one_time_key: Option<String>,
    /// One-time keys the agent has stored (none is used up by a fetch).
    pub remaining: usize,
    /// The agent's signed card (as `agentmesh card export` writes it), when
    /// it uploaded one: verify it by its own signature before use.
    pub card: Option<String>,
}

/// Why no prekey bundle was handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakePrekeysError {
    /// The agent is not registered.
    #[error("unknown agent {0}")]
    UnknownAgent(Amid),
    /// The agent is revoked.
    #[error("revoked")]
    Revoked,
    /// The agent uploaded no bundle.
    #[error("no prekeys for {0}")]
    NoPrekeys(Amid),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for TakePrekeysError {
    fn from(e: sled::Error) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

impl From<TakePrekeysError> for RegistryError {
    fn from(e: TakePrekeysError) -> Self {
        match e {
            TakePrekeysError::UnknownAgent(amid) => Self::UnknownAgent(amid.to_string()),
            TakePrekeysError::Revoked => Self::Revoked,
            e @ TakePrekeysError::NoPrekeys(_) => Self::NotFound(e.to_string()),
            TakePrekeysError::Store(e) => Self::Store(e),
        }
    }
}

impl Registry {
    pub(super) fn upload_prekeys(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        b: PrekeyBundle,
        now_ms: u64,
    ) -> Result<PrekeysStored, RegistryError> {
        b.check()?;
        self.live_agent(signer)?;
        if let Some(text) = &b.card {
            let (card, _) = agentmesh_node::contacts::decode_card(text.as_bytes(), now_ms)
                .map_err(|e| RegistryError::Invalid(format!("card: {e}")))?;
            if &card.amid != signer {
                return Err(RegistryError::Invalid("the card is another agent's".into()));
            }
            if hex::encode(card.olm_identity_key) != b.identity_key
                || hex::encode(card.fallback_key) != b.fallback_key
            {
                return Err(RegistryError::Invalid(
                    "the card's keys differ from the bundle's".into(),
                ));
            }
        }
        let stored = StoredPrekeys {
            identity_key: b.identity_key,
            fallback_key: b.fallback_key,
            one_time_keys: b.one_time_keys,
            uploaded_ms: now_ms,
            card: b.card,
        };
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.prekeys, signer.as_bytes(), &stored)?;
        Ok(PrekeysStored {
            amid: *signer,
            one_time_keys: stored.one_time_keys.len(),
        })
    }

    /// Hands out `amid`'s prekey bundle: its identity and fallback keys.
    /// Nothing is used up or written, so fetches, however many and from
    /// whomever, cannot drain the agent's one-time keys.
    pub fn prekey_bundle(&self, amid: &Amid) -> Result<PrekeyHandout, TakePrekeysError> {
        let a = self
            .inner
            .store
            .agent(amid)?
            .ok_or(TakePrekeysError::UnknownAgent(*amid))?;
        if a.revoked {
            return Err(TakePrekeysError::Revoked);
        }
        let p: StoredPrekeys =
            store::get_json(&self.inner.store.prekeys, "prekeys", amid.as_bytes())?
                .ok_or(TakePrekeysError::NoPrekeys(*amid))?;
        Ok(PrekeyHandout {
            amid: *amid,
            identity_key: p.identity_key,
            fallback_key: p.fallback_key,
            one_time_key: None,
            remaining: p.one_time_keys.len(),
            card: p.card,
        })
    }
}
