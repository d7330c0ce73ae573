//! Agents: registration (with the key binding it logs), presence and
//! capability updates, lookups and the registry's counts.

use std::collections::HashSet;

use serde::Serialize;
use tracing::info;

use agentmesh_node::{
    card::Presence,
    registry::{Registration, SignedRequest},
    trust::transparency::LeafKind,
    Amid, Tier,
};

use super::{did, AgentRecord, Registry, RegistryError};

/// A public view of an agent, as lookups and searches return it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// The agent.
    pub amid: Amid,
    /// Display name.
    pub display_name: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Tier.
    pub tier: Tier,
    /// Current reputation.
    pub reputation: f64,
    /// Presence.
    pub presence: Presence,
    /// Key-agreement key, hex.
    pub x25519_key: String,
    /// Mailbox relays.
    pub relays: Vec<String>,
    /// Listen addresses.
    pub addrs: Vec<String>,
    /// Certificate chain, CBOR hex.
    pub certificate: Option<String>,
    /// Organization domain.
    pub org: Option<String>,
    /// Registration time.
    pub registered_ms: u64,
    /// Last signed request.
    pub last_seen_ms: u64,
    /// Whether revoked.
    pub revoked: bool,
    /// The keys the agent rotated away from, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<Amid>,
    /// The key the agent rotated to, when this one was left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<Amid>,
}

/// A transparency-log entry binding an AMID to its key-agreement key, logged
/// when an agent registers or changes that key. Leaf data: the
/// [`LeafKind::KeyBinding`] byte, then this struct in CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyBinding {
    /// The agent.
    pub amid: Amid,
    /// Its key-agreement key (hex), when it named one; otherwise the
    /// Montgomery form of the AMID's key.
    pub x25519_key: Option<String>,
    /// When the binding was registered, ms since the epoch.
    pub bound_ms: u64,
}

impl KeyBinding {
    /// CBOR encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RegistryError> {
        Ok(agentmesh_transports::codec::encode(self)?)
    }
}

/// The answer to `register`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Registered {
    /// The agent.
    pub amid: Amid,
    /// Whether this was its first registration.
    pub created: bool,
    /// Its tier.
    pub tier: Tier,
    /// When it first registered.
    pub registered_ms: u64,
}

/// The answer to `status` and `capabilities`: the agent's state after the
/// change.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Updated {
    /// The agent.
    pub amid: Amid,
    /// Its presence.
    pub presence: Presence,
    /// Its capabilities.
    pub capabilities: Vec<String>,
}

/// Agents by tier (revoked agents not counted).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct TierCounts {
    /// Tier 2.
    pub anonymous: u64,
    /// Tier 1.
    pub verified: u64,
    /// Tier 1.5.
    pub organization: u64,
}

/// The registry's counts.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Agents, revoked ones included.
    pub agents: u64,
    /// Unrevoked agents by tier.
    pub by_tier: TierCounts,
    /// Unrevoked agents online.
    pub online: u64,
    /// Revoked agents.
    pub revoked: u64,
    /// Distinct capabilities of unrevoked agents.
    pub capabilities: usize,
    /// Session receipts filed.
    pub receipts: usize,
    /// Ratings filed.
    pub ratings: usize,
    /// Revocations (agents and organizations).
    pub revocations: usize,
    /// Organizations registered.
    pub organizations: usize,
}

impl Registry {
    pub(super) fn register(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        r: Registration,
        now_ms: u64,
    ) -> Result<Registered, RegistryError> {
        r.check()?;
        if self.is_revoked_key(signer.as_bytes())? {
            return Err(RegistryError::Revoked);
        }
        let old = self.inner.store.agent(signer)?;
        let created = old.is_none();
        let rec = AgentRecord {
            amid: *signer,
            display_name: r.display_name,
            capabilities: r.capabilities,
            x25519_key: r.x25519_key,
            relays: r.relays,
            addrs: r.addrs,
            presence: old.as_ref().map(|o| o.presence).unwrap_or_default(),
            tier: old.as_ref().map(|o| o.tier).unwrap_or_default(),
            certificate: old.as_ref().and_then(|o| o.certificate.clone()),
            org: old.as_ref().and_then(|o| o.org.clone()),
            registered_ms: old.as_ref().map(|o| o.registered_ms).unwrap_or(now_ms),
            last_seen_ms: now_ms,
            revoked: false,
            previous: old.as_ref().map(|o| o.previous.clone()).unwrap_or_default(),
            moved_to: None,
        };
        let rebound = old.as_ref().is_none_or(|o| o.x25519_key != rec.x25519_key);
        self.mark_seen(req, now_ms)?;
        // The binding is logged before the record is written: a
        // registration cut short in between (a crash, the database going
        // away) leaves a logged binding and no record, which the client's
        // retry completes, never a record whose key the log does not show.
        if rebound {
            let binding = KeyBinding {
                amid: *signer,
                x25519_key: rec.x25519_key.clone(),
                bound_ms: now_ms,
            };
            self.log_append(LeafKind::KeyBinding, &binding.to_bytes()?)?;
        }
        self.put_agent(&rec, old.as_ref())?;
        info!(target: "agentmesh::registry", amid = %signer, created, "registered");
        Ok(Registered {
            amid: *signer,
            created,
            tier: rec.tier,
            registered_ms: rec.registered_ms,
        })
    }

    /// Changes the signer's live record with `change`.
    pub(super) fn update(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        now_ms: u64,
        change: impl FnOnce(&mut AgentRecord) -> Result<(), RegistryError>,
    ) -> Result<Updated, RegistryError> {
        let old = self.live_agent(signer)?;
        let mut rec = old.clone();
        change(&mut rec)?;
        rec.last_seen_ms = now_ms;
        self.mark_seen(req, now_ms)?;
        self.put_agent(&rec, Some(&old))?;
        Ok(Updated {
            amid: *signer,
            presence: rec.presence,
            capabilities: rec.capabilities,
        })
    }

    /// Public view of `amid`.
    pub fn lookup(&self, amid: &Amid, now_ms: u64) -> Result<AgentView, RegistryError> {
        let a = self.agent_or_unknown(amid)?;
        let reputation = self.score(&a.amid, now_ms)?.score;
        Ok(Self::view_scored(a, reputation))
    }

    /// The DID document of a registered, unrevoked agent.
    ///
    /// This answer stays a [`serde_json::Value`]: it is a JSON-LD document
    /// ([`did::document`]) whose keys (`@context`, camelCase names) and
    /// service list follow the DID specification, not the registry's types.
    pub fn did_document(&self, amid: &Amid) -> Result<serde_json::Value, RegistryError> {
        let rec = self.agent_or_unknown(amid)?;
        if rec.revoked {
            return Err(RegistryError::Revoked);
        }
        let s = self.settings();
        Ok(did::document(&rec, &s.public_url, &s.relays))
    }

    /// The public view of `a`, whose score is `reputation`.
    pub(super) fn view_scored(a: AgentRecord, reputation: f64) -> AgentView {
        let x25519_key = match &a.x25519_key {
            Some(k) => k.clone(),
            None => did::x25519_of(&a.amid).map(hex::encode).unwrap_or_default(),
        };
        AgentView {
            amid: a.amid,
            display_name: a.display_name,
            capabilities: a.capabilities,
            tier: a.tier,
            reputation,
            presence: a.presence,
            x25519_key,
            relays: a.relays,
            addrs: a.addrs,
            certificate: a.certificate,
            org: a.org,
            registered_ms: a.registered_ms,
            last_seen_ms: a.last_seen_ms,
            revoked: a.revoked,
            previous: a.previous,
            moved_to: a.moved_to,
        }
    }

    /// Counts: agents by tier and presence, capabilities, receipts, ratings,
    /// revocations, organizations.
    pub fn stats(&self) -> Result<Stats, RegistryError> {
        let (mut agents, mut online, mut revoked) = (0u64, 0u64, 0u64);
        let mut by_tier = TierCounts::default();
        let mut caps: HashSet<String> = HashSet::new();
        for a in self.inner.store.all_agents()? {
            agents += 1;
            if a.revoked {
                revoked += 1;
                continue;
            }
            match a.tier {
                Tier::Anonymous => by_tier.anonymous += 1,
                Tier::Verified => by_tier.verified += 1,
                Tier::Organization => by_tier.organization += 1,
            }
            if a.presence == Presence::Online {
                online += 1;
            }
            caps.extend(a.capabilities);
        }
        let s = &self.inner.store;
        Ok(Stats {
            agents,
            by_tier,
            online,
            revoked,
            capabilities: caps.len(),
            receipts: s.receipts.len()?,
            ratings: s.feedback.len()?,
            revocations: s.revocations.len()?,
            organizations: s.orgs.len()?,
        })
    }
}
