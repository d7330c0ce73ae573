//! Prekey bundles: an agent uploads its Olm identity, fallback and
//! one-time keys; each fetch hands out one one-time key and removes it.

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

/// An agent's prekey bundle with one one-time key, as it is handed out.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PrekeyHandout {
    /// The agent.
    pub amid: Amid,
    /// Olm identity key, hex.
    pub identity_key: String,
    /// Fallback key, hex.
    pub fallback_key: String,
    /// The one-time key handed out (now removed); `null` when none was
    /// left, and the fallback key is to be used.
    pub one_time_key: Option<String>,
    /// One-time keys left.
    pub remaining: usize,
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
        let stored = StoredPrekeys {
            identity_key: b.identity_key,
            fallback_key: b.fallback_key,
            one_time_keys: b.one_time_keys,
            uploaded_ms: now_ms,
        };
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.prekeys, signer.as_bytes(), &stored)?;
        Ok(PrekeysStored {
            amid: *signer,
            one_time_keys: stored.one_time_keys.len(),
        })
    }

    /// Hands out `amid`'s prekey bundle with one one-time key, which is
    /// removed (the fallback key is given when none is left).
    pub async fn take_prekeys(&self, amid: &Amid) -> Result<PrekeyHandout, TakePrekeysError> {
        let a = self
            .inner
            .store
            .agent(amid)?
            .ok_or(TakePrekeysError::UnknownAgent(*amid))?;
        if a.revoked {
            return Err(TakePrekeysError::Revoked);
        }
        let mut taken: Option<StoredPrekeys> = None;
        self.inner
            .store
            .prekeys
            .fetch_and_update(amid.as_bytes(), |old| {
                let old = old?;
                let mut p: StoredPrekeys = serde_json::from_slice(old).ok()?;
                taken = Some(p.clone());
                if !p.one_time_keys.is_empty() {
                    p.one_time_keys.remove(0);
                }
                serde_json::to_vec(&p).ok()
            })?;
        let p = taken.ok_or(TakePrekeysError::NoPrekeys(*amid))?;
        self.flush().await?;
        let remaining = p.one_time_keys.len().saturating_sub(1);
        Ok(PrekeyHandout {
            amid: *amid,
            identity_key: p.identity_key,
            fallback_key: p.fallback_key,
            one_time_key: p.one_time_keys.into_iter().next(),
            remaining,
        })
    }
}
