//! Rotation: an agent that moved to a new key (SPEC §2.4) moves its
//! registration there. The statements are logged, the record, tier and
//! reputation history go to the new key, and the old key is revoked.

use serde::Serialize;
use tracing::info;

use agentmesh_node::{
    identity::rotation::{self, SignedRotation, MAX_HOPS},
    registry::SignedRequest,
    trust::cert::{CertChain, CertKind},
    trust::credentials::Credentials,
    trust::transparency::LeafKind,
    Amid, Presence, Tier,
};

use super::{agents::KeyBinding, AgentRecord, Registry, RegistryError};

/// The answer to `rotate`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Rotated {
    /// The key whose registration moved.
    pub from: Amid,
    /// The key it moved to (the signer).
    pub to: Amid,
    /// The new key's tier.
    pub tier: Tier,
    /// False when the registration had moved there before (nothing done).
    pub moved: bool,
}

impl Registry {
    /// `rotate`: moves the registration of the newest key in the signer's
    /// history that the registry knows to the signer.
    pub(super) fn rotate(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        rotations: Vec<String>,
        now_ms: u64,
    ) -> Result<Rotated, RegistryError> {
        if rotations.is_empty() || rotations.len() > MAX_HOPS {
            return Err(RegistryError::Invalid(format!(
                "a rotation history holds 1 to {MAX_HOPS} statements"
            )));
        }
        let chain = rotations
            .iter()
            .map(|h| {
                let bytes = hex::decode(h)
                    .map_err(|_| RegistryError::Invalid("rotations must be hex".into()))?;
                SignedRotation::from_bytes(&bytes)
                    .map_err(|e| RegistryError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let former = rotation::history(&chain, signer)
            .map_err(|e| RegistryError::Invalid(format!("rotation history: {e}")))?;
        // The newest key of the history that the registry knows.
        let mut found = None;
        for (i, amid) in former.iter().enumerate().rev() {
            if let Some(rec) = self.inner.store.agent(amid)? {
                found = Some((i, rec));
                break;
            }
        }
        let Some((at, old)) = found else {
            return Err(RegistryError::UnknownAgent(
                former.last().map(ToString::to_string).unwrap_or_default(),
            ));
        };
        let new = self.inner.store.agent(signer)?;
        if old.moved_to == Some(*signer) {
            return Ok(Rotated {
                from: old.amid,
                to: *signer,
                tier: new.map(|n| n.tier).unwrap_or_default(),
                moved: false,
            });
        }
        if old.moved_to.is_some() {
            return Err(RegistryError::Conflict(
                "that key's registration moved to another key".into(),
            ));
        }
        if old.revoked {
            return Err(RegistryError::Revoked);
        }
        if let Some(n) = &new {
            if n.revoked {
                return Err(RegistryError::Revoked);
            }
            if n.tier != Tier::Anonymous || !n.previous.is_empty() {
                return Err(RegistryError::Conflict(
                    "the new key holds a registration of its own".into(),
                ));
            }
        }
        self.mark_seen(req, now_ms)?;

        // Logged first, as a registration's binding is: a move cut short
        // leaves logged statements and no moved record, which a retry
        // completes.
        for r in &chain[at..] {
            self.log_append(LeafKind::Rotation, &r.to_bytes())?;
        }
        if new.is_none() {
            let binding = KeyBinding {
                amid: *signer,
                x25519_key: None,
                bound_ms: now_ms,
            };
            self.log_append(LeafKind::KeyBinding, &binding.to_bytes()?)?;
        }
        // A tier 1 certificate names the key: the registry issues one for
        // the new key. A tier 1.5 one is the organization's to issue again.
        let (tier, certificate) = match (old.tier, subject_name(&old)) {
            (Tier::Verified, Some(name)) => {
                let cert = self.new_agent_cert(signer, &name, now_ms)?;
                let chain = CertChain(vec![cert]);
                self.log_append_leaf(&Credentials::log_leaf(&chain)?)?;
                (Tier::Verified, Some(hex::encode(chain.to_bytes()?)))
            }
            _ => (Tier::Anonymous, None),
        };
        let base = new.clone().unwrap_or_else(|| old.clone());
        let mut previous = old.previous.clone();
        previous.push(old.amid);
        let rec = AgentRecord {
            amid: *signer,
            display_name: base.display_name,
            capabilities: base.capabilities,
            // The old key-agreement key is the old key's.
            x25519_key: new.as_ref().and_then(|n| n.x25519_key.clone()),
            relays: base.relays,
            addrs: base.addrs,
            presence: new.as_ref().map(|n| n.presence).unwrap_or_default(),
            tier,
            certificate,
            org: None,
            registered_ms: old.registered_ms,
            last_seen_ms: now_ms,
            revoked: false,
            previous,
            moved_to: None,
        };
        self.put_agent(&rec, new.as_ref())?;
        self.revoke_key(&old.amid, format!("rotated to {signer}"), now_ms)?;
        let mut left = old.clone();
        left.revoked = true;
        left.presence = Presence::Moved;
        left.moved_to = Some(*signer);
        self.put_agent(&left, Some(&old))?;
        info!(target: "agentmesh::registry", from = %old.amid, to = %signer, ?tier, "registration moved");
        Ok(Rotated {
            from: old.amid,
            to: *signer,
            tier,
            moved: true,
        })
    }
}

/// The subject name of a record's tier 1 certificate (`provider:subject`).
fn subject_name(rec: &AgentRecord) -> Option<String> {
    let bytes = hex::decode(rec.certificate.as_deref()?).ok()?;
    let chain = CertChain::from_bytes(&bytes).ok()?;
    let first = chain.0.first()?.certificate().ok()?;
    (first.kind == CertKind::Agent).then_some(first.subject_name)
}
