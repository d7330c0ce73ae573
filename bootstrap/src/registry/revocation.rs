//! Revocations: an agent (by itself or its organization) or an
//! organization key is revoked with a record the root signs, which is
//! logged, listed in the CRL and published in the DHT (again every
//! [`crate::REPUBLISH_EVERY`], as records expire after
//! [`REVOCATION_RECORD_TTL`]).

use std::time::Duration;

use serde::Serialize;
use tracing::{debug, info, warn};

use agentmesh_node::{
    registry::{revocation_namespace, Revocation, SignedRequest, SignedRevocation, MAX_REASON},
    trust::transparency::LeafKind,
    Amid,
};

use super::{Registry, RegistryError};

/// How long a revocation record lives in the DHT before it must be
/// republished.
pub const REVOCATION_RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The answer to `revoke`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Revoked {
    /// The revoked key.
    pub subject: Amid,
    /// Always true.
    pub revoked: bool,
    /// The signed revocation, CBOR hex.
    pub revocation: String,
}

/// A stored revocation as the API lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum RevocationEntry {
    /// A revocation the root's signature verifies.
    Verified {
        /// The revoked key as an AMID (hex when it is not a valid key).
        subject: String,
        /// Always true.
        revoked: bool,
        /// Why.
        reason: String,
        /// When.
        revoked_ms: u64,
        /// The signed revocation, CBOR hex.
        signed: String,
    },
    /// A stored record that does not verify under the root key: only its
    /// bytes are shown.
    Unverified {
        /// Always true.
        revoked: bool,
        /// The signed revocation, CBOR hex.
        signed: String,
    },
}

impl RevocationEntry {
    fn of(s: &SignedRevocation, root: &ed25519_dalek::VerifyingKey) -> Self {
        let signed = hex::encode(s.to_bytes().unwrap_or_default());
        match s.verify(root) {
            Ok(r) => Self::Verified {
                subject: Amid::from_bytes(&r.subject_key)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| hex::encode(r.subject_key)),
                revoked: true,
                reason: r.reason,
                revoked_ms: r.revoked_ms,
                signed,
            },
            Err(_) => Self::Unverified {
                revoked: true,
                signed,
            },
        }
    }
}

/// Whether a key is revoked.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum RevocationStatus {
    /// Not revoked.
    NotRevoked {
        /// The key.
        amid: Amid,
        /// Always false.
        revoked: bool,
    },
    /// Revoked, with the revocation.
    Revoked(RevocationEntry),
}

/// The certificate revocation list.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Crl {
    /// The root key as an AMID.
    pub issuer: Amid,
    /// The root key, hex.
    pub issuer_key: String,
    /// When the list was made.
    pub generated_ms: u64,
    /// Revocations listed.
    pub count: usize,
    /// Every revocation.
    pub revocations: Vec<RevocationEntry>,
}

impl Registry {
    pub(super) fn revoke(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        subject: Amid,
        reason: String,
        now_ms: u64,
    ) -> Result<Revoked, RegistryError> {
        if reason.len() > MAX_REASON {
            return Err(RegistryError::Invalid("reason too long".into()));
        }
        let agent = self.inner.store.agent(&subject)?;
        let org = self.inner.store.org_by_key(&subject)?;
        let allowed = if *signer == subject {
            agent.is_some() || org.is_some()
        } else if let Some(domain) = agent.as_ref().and_then(|a| a.org.clone()) {
            self.inner
                .store
                .org(&domain)?
                .is_some_and(|o| o.key == *signer)
        } else {
            false
        };
        if agent.is_none() && org.is_none() {
            return Err(RegistryError::UnknownAgent(subject.to_string()));
        }
        if !allowed {
            return Err(RegistryError::Forbidden(
                "only the agent itself or its organization may revoke it".into(),
            ));
        }
        if self.is_revoked_key(subject.as_bytes())? {
            return Err(RegistryError::Conflict("already revoked".into()));
        }
        self.mark_seen(req, now_ms)?;
        let bytes = self.revoke_key(&subject, reason, now_ms)?;
        if let Some(old) = agent {
            let mut rec = old.clone();
            rec.revoked = true;
            self.put_agent(&rec, Some(&old))?;
        }
        info!(target: "agentmesh::registry", amid = %subject, by = %signer, "revoked");
        Ok(Revoked {
            subject,
            revoked: true,
            revocation: hex::encode(bytes),
        })
    }

    /// Revokes `subject`'s key: a revocation signed by the root, stored,
    /// logged and published; the key's prekeys are dropped. The caller
    /// marks the agent record. Returns the signed revocation, encoded.
    pub(super) fn revoke_key(
        &self,
        subject: &Amid,
        reason: String,
        now_ms: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let rev = Revocation {
            subject_key: *subject.as_bytes(),
            serial: None,
            reason,
            revoked_ms: now_ms,
            issuer_key: *self.root_amid().as_bytes(),
        };
        let signed = rev.sign(self.root())?;
        let bytes = signed.to_bytes()?;
        self.inner
            .store
            .revocations
            .insert(subject.as_bytes(), bytes.clone())?;
        self.log_append(LeafKind::Revocation, &bytes)?;
        self.inner.store.prekeys.remove(subject.as_bytes())?;
        self.publish_revocation(&signed);
        Ok(bytes)
    }

    /// Publishes a revocation in the DHT in the background (when running on
    /// a node).
    pub fn publish_revocation(&self, signed: &SignedRevocation) {
        let Some(node) = self.inner.node.get().cloned() else {
            return;
        };
        let Ok(rev) = signed.verify(&self.root_key()) else {
            return;
        };
        let Ok(bytes) = signed.to_bytes() else {
            return;
        };
        tokio::spawn(async move {
            let ns = revocation_namespace(&rev.subject_key);
            match node.publish_record(&ns, bytes, REVOCATION_RECORD_TTL).await {
                Ok(remote) => debug!(ns, remote, "revocation published"),
                Err(e) => warn!(ns, error = %e, "revocation not published"),
            }
        });
    }

    /// Publishes every revocation again (records expire after
    /// [`REVOCATION_RECORD_TTL`]).
    pub fn republish_revocations(&self) -> Result<usize, RegistryError> {
        let all = self.inner.store.all_revocations()?;
        for r in &all {
            self.publish_revocation(r);
        }
        Ok(all.len())
    }

    /// Revocation status of a key (agent or organization).
    pub fn revocation(&self, amid: &Amid) -> Result<RevocationStatus, RegistryError> {
        let known =
            self.inner.store.agent(amid)?.is_some() || self.inner.store.org_by_key(amid)?.is_some();
        let rev = self.inner.store.revocation(amid.as_bytes())?;
        if !known && rev.is_none() {
            return Err(RegistryError::UnknownAgent(amid.to_string()));
        }
        Ok(match rev {
            None => RevocationStatus::NotRevoked {
                amid: *amid,
                revoked: false,
            },
            Some(s) => RevocationStatus::Revoked(RevocationEntry::of(&s, &self.root_key())),
        })
    }

    /// The certificate revocation list: every revocation, signed by the
    /// root.
    pub fn crl(&self, now_ms: u64) -> Result<Crl, RegistryError> {
        let root = self.root_key();
        let revocations: Vec<RevocationEntry> = self
            .inner
            .store
            .all_revocations()?
            .iter()
            .map(|s| RevocationEntry::of(s, &root))
            .collect();
        Ok(Crl {
            issuer: self.root_amid(),
            issuer_key: hex::encode(root.to_bytes()),
            generated_ms: now_ms,
            count: revocations.len(),
            revocations,
        })
    }
}
