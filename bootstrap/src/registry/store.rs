//! Registry storage: the trees of [`crate::storage`] (sled or PostgreSQL)
//! with JSON values.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `agents` | agent key | [`AgentRecord`] |
//! | `caps` | capability ‖ 0 ‖ agent key | empty (search index) |
//! | `prekeys` | agent key | [`StoredPrekeys`] |
//! | `receipts` | session id | [`SessionReceipt`] |
//! | `receipts_by` | agent key ‖ session id | empty |
//! | `feedback` | target ‖ rater ‖ session id | [`FeedbackRecord`] |
//! | `rated_by` | rater ‖ target | empty (mutual rule) |
//! | `revocations` | subject key | CBOR [`SignedRevocation`] |
//! | `orgs` | domain | [`OrgRecord`] |
//! | `org_keys` | organization key | domain |
//! | `seen` | SHA-256 of a request signature | timestamp (replay store) |
//! | `meta` | name | bytes |

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use agentmesh_node::{
    card::Presence,
    registry::{SessionReceipt, SignedRequest, SignedRevocation},
    Amid, Tier,
};

pub use crate::storage::StoreError;
use crate::storage::{Database, Tree};

/// What the registry knows of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub amid: Amid,
    /// Display name.
    pub display_name: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Curve25519 key-agreement key, hex.
    pub x25519_key: Option<String>,
    /// Mailbox relays.
    pub relays: Vec<String>,
    /// Listen addresses.
    pub addrs: Vec<String>,
    /// Presence.
    pub presence: Presence,
    /// Tier proven by the stored certificate chain.
    pub tier: Tier,
    /// Certificate chain (CBOR, hex), when tier 1 or 1.5.
    pub certificate: Option<String>,
    /// Organization domain, for tier 1.5.
    pub org: Option<String>,
    /// First registration, ms since the epoch.
    pub registered_ms: u64,
    /// Last signed request, ms since the epoch.
    pub last_seen_ms: u64,
    /// Whether the agent is revoked.
    pub revoked: bool,
    /// The keys this agent rotated away from, oldest first: their
    /// reputation history is its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<Amid>,
    /// The key this agent rotated to (its registration moved there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<Amid>,
}

/// A stored prekey bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPrekeys {
    /// Olm identity key, hex.
    pub identity_key: String,
    /// Fallback key, hex.
    pub fallback_key: String,
    /// Remaining one-time keys, hex.
    pub one_time_keys: Vec<String>,
    /// Upload time.
    pub uploaded_ms: u64,
    /// The agent's signed card (exported form), checked when uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
}

/// A stored rating, with the signed request that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// Who rated.
    pub rater: Amid,
    /// Who was rated.
    pub target: Amid,
    /// The session rated.
    pub session_id: String,
    /// The rating.
    pub score: f64,
    /// When the registry received it.
    pub ts_ms: u64,
    /// The rater's tier then.
    pub rater_tier: Tier,
    /// The rater's registration time.
    pub rater_registered_ms: u64,
    /// Opaque tag of the network origin.
    pub origin: String,
    /// The rater's signed request, as posted.
    pub request: SignedRequest,
}

/// A registered organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// Domain.
    pub domain: String,
    /// Display name.
    pub name: String,
    /// Organization key.
    pub key: Amid,
    /// Token to publish in DNS TXT `_agentmesh.<domain>`.
    pub challenge: String,
    /// Whether DNS verification succeeded.
    pub verified: bool,
    /// Organization certificate (CBOR, hex), once verified.
    pub certificate: Option<String>,
    /// Registration time.
    pub registered_ms: u64,
}

/// The registry's trees.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    pub(crate) agents: Tree,
    pub(crate) caps: Tree,
    pub(crate) prekeys: Tree,
    pub(crate) receipts: Tree,
    pub(crate) receipts_by: Tree,
    pub(crate) feedback: Tree,
    pub(crate) rated_by: Tree,
    pub(crate) revocations: Tree,
    pub(crate) orgs: Tree,
    pub(crate) org_keys: Tree,
    pub(crate) seen: Tree,
    pub(crate) meta: Tree,
}

impl Store {
    /// Checks that the database takes a write and gives it back, flushed to
    /// disk: what the health check reports.
    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = agentmesh_dht::now_ms().to_be_bytes();
        self.meta.insert(b"health/probe", probe)?;
        if self.meta.get(b"health/probe")?.as_deref() != Some(&probe[..]) {
            return Err(StoreError::Corrupt {
                tree: "meta",
                message: "the health probe did not read back".into(),
            });
        }
        self.db.flush().await
    }
}

pub(crate) fn get_json<T: DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                tree: name,
                message: e.to_string(),
            }),
    }
}

pub(crate) fn put_json<T: Serialize>(tree: &Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        tree: "encode",
        message: e.to_string(),
    })?;
    tree.insert(key, bytes)?;
    Ok(())
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Store {
    /// Opens (or creates) an embedded store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        Self::with_database(Database::open_sled(dir)?)
    }

    /// Opens the store in `db` (sled or PostgreSQL).
    pub fn with_database(db: Database) -> Result<Self, StoreError> {
        Ok(Self {
            agents: db.tree("agents")?,
            caps: db.tree("caps")?,
            prekeys: db.tree("prekeys")?,
            receipts: db.tree("receipts")?,
            receipts_by: db.tree("receipts_by")?,
            feedback: db.tree("feedback")?,
            rated_by: db.tree("rated_by")?,
            revocations: db.tree("revocations")?,
            orgs: db.tree("orgs")?,
            org_keys: db.tree("org_keys")?,
            seen: db.tree("seen")?,
            meta: db.tree("meta")?,
            db,
        })
    }

    /// The database (the transparency log keeps its trees in it).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }

    /// The agent record of `amid`.
    pub fn agent(&self, amid: &Amid) -> Result<Option<AgentRecord>, StoreError> {
        get_json(&self.agents, "agents", amid.as_bytes())
    }

    /// Stores an agent record and keeps the capability index in step.
    pub fn put_agent(
        &self,
        rec: &AgentRecord,
        old: Option<&AgentRecord>,
    ) -> Result<(), StoreError> {
        let key = rec.amid.as_bytes();
        if let Some(old) = old {
            for c in &old.capabilities {
                self.caps.remove(cat(&[c.as_bytes(), &[0], key]))?;
            }
        }
        if !rec.revoked {
            for c in &rec.capabilities {
                self.caps.insert(cat(&[c.as_bytes(), &[0], key]), [])?;
            }
        }
        put_json(&self.agents, key, rec)
    }

    /// Agents advertising `capability`, or any capability under it
    /// (`weather` finds `weather/forecast`).
    pub fn agents_with(&self, capability: &str) -> Result<Vec<Amid>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.caps.scan_prefix(capability.as_bytes())? {
            // Key: capability ‖ 0 ‖ 32-byte agent key (which may hold zeros).
            if k.len() < 33 || k[k.len() - 33] != 0 {
                continue;
            }
            let cap = &k[..k.len() - 33];
            let rest = &cap[capability.len().min(cap.len())..];
            if !(rest.is_empty() || rest.first() == Some(&b'/')) {
                continue;
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&k[k.len() - 32..]);
            if let Ok(a) = Amid::from_bytes(&key) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Every agent record.
    pub fn all_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .entries()?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    tree: "agents",
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The stored revocation of `key`.
    pub fn revocation(&self, key: &[u8; 32]) -> Result<Option<SignedRevocation>, StoreError> {
        match self.revocations.get(key)? {
            None => Ok(None),
            Some(v) => {
                SignedRevocation::from_bytes(&v)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        tree: "revocations",
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Every stored revocation.
    pub fn all_revocations(&self) -> Result<Vec<SignedRevocation>, StoreError> {
        self.revocations
            .entries()?
            .into_iter()
            .map(|(_, v)| {
                SignedRevocation::from_bytes(&v).map_err(|e| StoreError::Corrupt {
                    tree: "revocations",
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Receipts naming `amid`.
    pub fn receipts_of(&self, amid: &Amid) -> Result<Vec<SessionReceipt>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.receipts_by.scan_prefix(amid.as_bytes())? {
            if let Some(r) = get_json(&self.receipts, "receipts", &k[32..])? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Ratings of `target`.
    pub fn feedback_of(&self, target: &Amid) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.feedback
            .scan_prefix(target.as_bytes())?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    tree: "feedback",
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Agents `rater` has rated.
    pub fn rated_by(&self, rater: &Amid) -> Result<Vec<Amid>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.rated_by.scan_prefix(rater.as_bytes())? {
            let mut key = [0u8; 32];
            if k.len() == 64 {
                key.copy_from_slice(&k[32..]);
                if let Ok(a) = Amid::from_bytes(&key) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// The organization registered for `domain`.
    pub fn org(&self, domain: &str) -> Result<Option<OrgRecord>, StoreError> {
        get_json(&self.orgs, "orgs", domain.as_bytes())
    }

    /// The organization whose key is `key`.
    pub fn org_by_key(&self, key: &Amid) -> Result<Option<OrgRecord>, StoreError> {
        match self.org_keys.get(key.as_bytes())? {
            None => Ok(None),
            Some(d) => self.org(&String::from_utf8_lossy(&d)),
        }
    }

    /// Stores an organization.
    pub fn put_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        self.org_keys
            .insert(org.key.as_bytes(), org.domain.as_bytes())?;
        put_json(&self.orgs, org.domain.as_bytes(), org)
    }

    /// Records a request signature as seen; false when it was already.
    pub fn mark_seen(&self, signature: &str, ts_ms: u64) -> Result<bool, StoreError> {
        use sha2::Digest;
        let key = sha2::Sha256::digest(signature.as_bytes());
        let fresh = self
            .seen
            .compare_and_swap(key.as_slice(), None, Some(&ts_ms.to_be_bytes()))?;
        Ok(fresh)
    }

    /// Forgets seen signatures older than `before_ms` (they are outside the
    /// timestamp window, so refused anyway).
    pub fn prune_seen(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for (k, v) in self.seen.entries()? {
            let ts = v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if ts < before_ms {
                self.seen.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// A 32-byte secret kept in `meta` under `name`, created on first use.
    pub fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        if let Some(v) = self.meta.get(name)? {
            if let Ok(s) = <[u8; 32]>::try_from(v.as_ref()) {
                return Ok(s);
            }
        }
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).map_err(|e| StoreError::Random(e.to_string()))?;
        let _ = self.meta.compare_and_swap(name, None, Some(&s[..]))?;
        match self.meta.get(name)? {
            Some(v) => <[u8; 32]>::try_from(v.as_ref()).map_err(|_| StoreError::Corrupt {
                tree: "meta",
                message: name.to_owned(),
            }),
            None => Ok(s),
        }
    }
}
