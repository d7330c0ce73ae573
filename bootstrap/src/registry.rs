//! The registry: agents, capabilities, presence, prekeys, tier certificates,
//! reputation evidence and revocations, kept in sled.
//!
//! Every state change arrives as a [`SignedRequest`] and goes through
//! [`Registry::apply`]: signature and timestamp window first, then the
//! operation's own checks, then the replay store (a request body is accepted
//! once), then the writes, flushed to disk before the answer. A refused
//! request stores nothing.
//!
//! The registry root key (Ed25519, in an encrypted keystore under
//! `<data dir>/root`) signs tier certificates ([`agentmesh_node::trust::cert`]) and
//! revocations. Revocations are also published in the DHT when the
//! registry runs on a node ([`Registry::set_node`]).
//!
//! This module holds the [`Registry`] handle; its settings, the errors
//! every operation shares and each concern have their own file, and the
//! concerns' answers are typed structs the front ends ([`crate::http`],
//! [`crate::p2p`]) serialise:
//!
//! | file | concern |
//! |---|---|
//! | `errors.rs` | the errors every operation shares |
//! | `settings.rs` | the registry's settings |
//! | `root.rs` | the root keystore shared through the database |
//! | `agents.rs` | registration, presence, capabilities, lookup, stats |
//! | `prekeys.rs` | prekey bundles |
//! | `reputation.rs` | receipts, ratings, scores, evidence, leaderboard |
//! | `revocation.rs` | revocations, the CRL, DHT publication |
//! | `issuance.rs` | tier certificates, OAuth, organizations, credentials |
//! | `log.rs` | the transparency log's heads and proofs |
//! | `search.rs` | search by capability |
//! | `did.rs` | DID documents |
//! | `scores.rs` | the score-input cache |
//! | `store.rs` | the sled trees |

mod agents;
pub mod did;
mod errors;
mod issuance;
mod log;
mod prekeys;
mod reputation;
mod revocation;
mod root;
mod rotation;
pub mod scores;
mod search;
mod settings;
pub mod store;

use std::{
    future::Future,
    net::IpAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use agentmesh_node::{
    crypto::keystore::{Keystore, KeystoreError},
    identity::Identity,
    registry::{check_capabilities, Operation, RequestBody, SignedRequest, MAX_CLOCK_SKEW_MS},
    Amid, Node, Passphrase,
};

use crate::{
    storage::Database,
    translog::{LogError, TransLog},
};

pub use agents::{AgentView, KeyBinding, Registered, Stats, TierCounts, Updated};
pub use issuance::{
    dns_challenge, CredentialsView, OauthIssued, OauthStarted, OrgAgent, OrgAgentFiled,
    OrgChallenge, OrgInfo, OrgVerified, DNS_CHALLENGE_LABEL, DNS_CHALLENGE_PREFIX, MAX_ORG_NAME,
};
pub use log::{parse_leaf_hash, Consistency, LeafProof, LogQueryError};
pub use prekeys::{PrekeyHandout, PrekeysStored, TakePrekeysError};
pub use reputation::{
    AgentScore, Evidence, Leaderboard, LeaderboardRow, Rated, ReceiptFiled,
    DEFAULT_LEADERBOARD_LIMIT,
};
pub use revocation::{Crl, RevocationEntry, RevocationStatus, Revoked, REVOCATION_RECORD_TTL};
pub use rotation::Rotated;
pub use search::{
    parse_tier, SearchError, SearchQuery, SearchResults, DEFAULT_LIMIT, MAX_LIMIT,
    MAX_SEARCH_CAPABILITY,
};
pub use store::{AgentRecord, FeedbackRecord, OrgRecord, Store, StoreError};

use errors::log_store_error;
pub use errors::RegistryError;
use root::{adopt_shared_root, publish_root};
pub use settings::{
    RegistrySettings, DEFAULT_HTTP_MAX_IN_FLIGHT, DEFAULT_HTTP_RATE, DEFAULT_PREKEY_RATE,
    DEFAULT_RATE_MAX_CLIENTS, DEFAULT_SIGNER_RATE,
};

/// Checks that an organization controls a domain (DNS TXT lookup).
pub trait DomainVerifier: Send + Sync + std::fmt::Debug {
    /// Whether a TXT record at `name` holds exactly `value` (`false` when
    /// there is no such record); an error when the lookup itself failed.
    fn verify<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, crate::dns::DnsChallengeError>> + Send + 'a>>;
}

/// Organizations' TXT records checked at a real nameserver.
impl DomainVerifier for crate::dns::DnsVerifier {
    fn verify<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, crate::dns::DnsChallengeError>> + Send + 'a>>
    {
        Box::pin(async move {
            let fqdn = if name.ends_with('.') {
                name.to_owned()
            } else {
                format!("{name}.")
            };
            match self.txt(&fqdn).await {
                Ok(values) => Ok(values.iter().any(|v| v.trim() == value)),
                Err(crate::dns::DnsChallengeError::NoRecord { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}

/// Errors opening a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The root keystore could not be opened or created.
    #[error("root keystore: {0}")]
    Keystore(#[from] KeystoreError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The root keystore holds no valid Ed25519 key.
    #[error("invalid root key")]
    InvalidRootKey,
    /// The shared database names another root key than this node's.
    #[error(
        "the database's registry root key differs from the one in {0}: every bootstrap \
         node of one registry signs with one root (move that keystore away to adopt the \
         database's)"
    )]
    RootMismatch(std::path::PathBuf),
}

struct Inner {
    store: Store,
    log: TransLog,
    root: Keystore,
    root_key: ed25519_dalek::VerifyingKey,
    settings: RegistrySettings,
    origin_salt: [u8; 32],
    node: OnceLock<Node>,
    verifier: OnceLock<Arc<dyn DomainVerifier>>,
    oauth: OnceLock<Arc<crate::oauth::OAuth>>,
    scores: scores::ScoreCache,
    /// Leaves of the log known to be on disk (on sled: those appended
    /// before the last flush began). No head is signed over more.
    durable_leaves: std::sync::atomic::AtomicU64,
    /// Signed requests per signer ([`RegistrySettings::signer_rate`]),
    /// whichever front end and client address they come from.
    signers: std::sync::Mutex<agentmesh_node::knock::ratelimit::RateLimiter<Amid>>,
}

/// A registry. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root_amid())
            .finish_non_exhaustive()
    }
}

/// A signed request whose signature and timestamp were checked, with its
/// body; made by [`Registry::verify_request`], applied by
/// [`Registry::apply_verified`].
#[derive(Debug)]
pub struct VerifiedRequest<'a> {
    request: &'a SignedRequest,
    body: RequestBody,
}

impl VerifiedRequest<'_> {
    /// The operation's name, e.g. `register`.
    pub fn op_name(&self) -> &'static str {
        self.body.op.name()
    }

    /// Who signed it.
    pub fn signer(&self) -> &Amid {
        &self.request.signer
    }
}

/// What an accepted signed request answers: one shape per operation. It
/// serialises as the shape it holds.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Applied {
    /// `register`.
    Registered(Registered),
    /// `status` and `capabilities`.
    Updated(Updated),
    /// `prekeys`.
    Prekeys(PrekeysStored),
    /// `session`.
    Receipt(ReceiptFiled),
    /// `feedback`.
    Rated(Rated),
    /// `revoke`.
    Revoked(Revoked),
    /// `org_register`.
    OrgChallenge(OrgChallenge),
    /// `org_verify`.
    OrgVerified(OrgVerified),
    /// `org_agent`.
    OrgAgent(OrgAgentFiled),
    /// `oauth_authorize`.
    OauthStarted(OauthStarted),
    /// `rotate`.
    Rotated(Rotated),
}

/// The root key, the registry node and where revocations are in the DHT.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RootInfo {
    /// The root key as an AMID.
    pub root: Amid,
    /// The root key, hex.
    pub root_key: String,
    /// The node the registry runs on, if any.
    pub node: Option<Amid>,
    /// That node's libp2p peer id.
    pub node_peer_id: Option<String>,
    /// Prefix of the DHT namespaces revocations are published under.
    pub revocation_namespace_prefix: &'static str,
}

fn random16() -> Result<[u8; 16], RegistryError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(s)
}

impl Registry {
    /// Opens the registry in `dir` (database under `dir/registry`, root
    /// keystore under `dir/root`), creating both on first use.
    pub fn open(
        dir: &Path,
        root_passphrase: &Passphrase,
        settings: RegistrySettings,
    ) -> Result<Self, OpenError> {
        let db = match &settings.database {
            None => Database::open_sled(&dir.join("registry"))?,
            Some(url) => Database::open_postgres(url)?,
        };
        let store = Store::with_database(db)?;
        let root_dir = dir.join("root");
        if store.db().is_shared() {
            adopt_shared_root(&store, &root_dir)?;
        }
        let (mut root, created) =
            Keystore::load_or_create(&root_dir, root_passphrase, settings.kdf)?;
        if created {
            info!(root = %root.identity().amid(), "created registry root key");
        }
        if store.db().is_shared() {
            root = publish_root(&store, &root_dir, root, created, root_passphrase)?;
        }
        let root_key = root
            .identity()
            .amid()
            .verifying_key()
            .map_err(|_| OpenError::InvalidRootKey)?;
        let origin_salt = store.secret("origin_salt")?;
        let log = TransLog::open(store.db()).map_err(log_store_error)?;
        // What is in the log at start is what the disk kept.
        let durable_leaves = std::sync::atomic::AtomicU64::new(log.size().unwrap_or(0));
        let (settings_signer_rate, settings_max_clients) =
            (settings.signer_rate, settings.rate_max_clients);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                log,
                root,
                root_key,
                settings,
                origin_salt,
                node: OnceLock::new(),
                verifier: OnceLock::new(),
                oauth: OnceLock::new(),
                scores: scores::ScoreCache::default(),
                durable_leaves,
                signers: std::sync::Mutex::new(agentmesh_node::knock::ratelimit::RateLimiter::new(
                    settings_signer_rate,
                    settings_max_clients,
                )),
            }),
        })
    }

    /// Makes every write so far durable, and with them the log's leaves
    /// appended before this call: heads may cover those from now on.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let size = self.inner.log.size().unwrap_or(0);
        self.inner.store.flush().await?;
        self.inner
            .durable_leaves
            .fetch_max(size, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How many leaves of the log a signed head may cover: on sled, those
    /// a flush has made durable (a head over a leaf lost in a crash would
    /// fork the log once another leaf takes its place); on PostgreSQL,
    /// every leaf (each append is committed).
    pub(crate) fn durable_leaves(&self) -> Result<u64, LogError> {
        let size = self.inner.log.size()?;
        Ok(match self.inner.store.db() {
            Database::Postgres(_) => size,
            Database::Sled(_) => size.min(
                self.inner
                    .durable_leaves
                    .load(std::sync::atomic::Ordering::SeqCst),
            ),
        })
    }

    /// Publishes revocations through `node` from now on (first call wins).
    pub fn set_node(&self, node: Node) {
        let _ = self.inner.node.set(node);
    }

    /// Uses `verifier` for organization DNS checks (first call wins).
    pub fn set_domain_verifier(&self, verifier: Arc<dyn DomainVerifier>) {
        let _ = self.inner.verifier.set(verifier);
    }

    /// Verifies tier 1 with `oauth` from now on (first call wins).
    pub fn set_oauth(&self, oauth: crate::oauth::OAuth) {
        let _ = self.inner.oauth.set(Arc::new(oauth));
    }

    /// The storage.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings.
    pub fn settings(&self) -> &RegistrySettings {
        &self.inner.settings
    }

    fn root(&self) -> &Identity {
        self.inner.root.identity()
    }

    /// The root key as an AMID-form key.
    pub fn root_amid(&self) -> Amid {
        self.root().amid()
    }

    /// The root verifying key.
    pub fn root_key(&self) -> ed25519_dalek::VerifyingKey {
        self.inner.root_key
    }

    /// The node publishing revocations, if any.
    pub fn node(&self) -> Option<&Node> {
        self.inner.node.get()
    }

    /// The root key, the registry node and where revocations are in the
    /// DHT.
    pub fn root_info(&self) -> RootInfo {
        RootInfo {
            root: self.root_amid(),
            root_key: hex::encode(self.root_key().to_bytes()),
            node: self.node().map(|n| n.amid()),
            node_peer_id: self
                .node()
                .and_then(|n| n.amid().peer_id().ok())
                .map(|p| p.to_string()),
            revocation_namespace_prefix: agentmesh_node::registry::REVOCATION_NAMESPACE_PREFIX,
        }
    }

    /// Opaque tag of a client address for the same-origin rating rule.
    pub fn origin_tag(&self, ip: Option<IpAddr>) -> String {
        let Some(ip) = ip else {
            return String::new();
        };
        let mut h = Sha256::new();
        h.update(self.inner.origin_salt);
        h.update(ip.to_string().as_bytes());
        hex::encode(&h.finalize()[..8])
    }

    fn is_revoked_key(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        self.inner.store.revocations.contains_key(key)
    }

    fn agent_or_unknown(&self, amid: &Amid) -> Result<AgentRecord, RegistryError> {
        self.inner
            .store
            .agent(amid)?
            .ok_or_else(|| RegistryError::UnknownAgent(amid.to_string()))
    }

    fn live_agent(&self, amid: &Amid) -> Result<AgentRecord, RegistryError> {
        let a = self.agent_or_unknown(amid)?;
        if a.revoked {
            return Err(RegistryError::Revoked);
        }
        Ok(a)
    }

    /// Writes an agent record; its score inputs change with it.
    fn put_agent(&self, rec: &AgentRecord, old: Option<&AgentRecord>) -> Result<(), RegistryError> {
        self.inner.store.put_agent(rec, old)?;
        self.invalidate_scores(&[&rec.amid])?;
        Ok(())
    }

    /// Drops the cached score inputs of `amids`, here and (through the
    /// database's write generation) on every node sharing the database.
    fn invalidate_scores(&self, amids: &[&Amid]) -> Result<(), StoreError> {
        self.inner.scores.invalidate(amids);
        self.inner.store.db().bump_generation()
    }

    /// Records `req` in the replay store; refuses it if it was seen.
    fn mark_seen(&self, req: &SignedRequest, now_ms: u64) -> Result<(), RegistryError> {
        // Hex is case-blind: the same signature in other letters is the
        // same request, and must be refused as a replay.
        let signature = req.signature.to_ascii_lowercase();
        if self.inner.store.mark_seen(&signature, now_ms)? {
            Ok(())
        } else {
            Err(RegistryError::Replayed)
        }
    }

    /// Checks `req`'s size, signature and timestamp window, and that it
    /// asks for `expected` (the operation an endpoint serves; `None`: any).
    /// Nothing is stored: the replay store is checked when it is applied.
    pub fn verify_request<'a>(
        &self,
        req: &'a SignedRequest,
        expected: Option<&str>,
        now_ms: u64,
    ) -> Result<VerifiedRequest<'a>, RegistryError> {
        let body = req.verify(now_ms)?;
        if let Some(op) = expected {
            if body.op.name() != op {
                return Err(RegistryError::Invalid(format!(
                    "this endpoint takes `{op}`, not `{}`",
                    body.op.name()
                )));
            }
        }
        Ok(VerifiedRequest { request: req, body })
    }

    /// Verifies and applies a signed request: [`Registry::verify_request`]
    /// then [`Registry::apply_verified`]. `expected` is the operation the
    /// endpoint serves (`None`: any); `client` the client address.
    pub async fn apply(
        &self,
        req: &SignedRequest,
        expected: Option<&str>,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<Applied, RegistryError> {
        let verified = self.verify_request(req, expected, now_ms)?;
        self.apply_verified(verified, client, now_ms).await
    }

    /// Applies a verified request (its operation's checks, the replay
    /// store, the writes) and flushes the database before answering.
    /// `client` is the client address, for the same-origin rating rule.
    pub async fn apply_verified(
        &self,
        verified: VerifiedRequest<'_>,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<Applied, RegistryError> {
        let VerifiedRequest { request: req, body } = verified;
        let signer = req.signer;
        // One signer's budget, however many addresses or peers it uses;
        // a poisoned limiter refuses (fails closed).
        match self.inner.signers.lock() {
            Ok(mut l) => {
                l.try_acquire(&signer, now_ms)
                    .map_err(|r| RegistryError::RateLimited {
                        retry_after_ms: r.ms.max(1),
                    })?
            }
            Err(_) => return Err(RegistryError::Busy),
        }
        let out = match body.op {
            Operation::Register(r) => Applied::Registered(self.register(req, &signer, r, now_ms)?),
            Operation::Status { presence } => {
                if matches!(
                    presence,
                    agentmesh_node::Presence::Unknown | agentmesh_node::Presence::Moved
                ) {
                    return Err(RegistryError::Invalid(
                        "presence is online, away, dnd or offline".into(),
                    ));
                }
                Applied::Updated(self.update(req, &signer, now_ms, |a| {
                    a.presence = presence;
                    Ok(())
                })?)
            }
            Operation::Capabilities { capabilities } => {
                check_capabilities(&capabilities)?;
                Applied::Updated(self.update(req, &signer, now_ms, |a| {
                    a.capabilities = capabilities;
                    Ok(())
                })?)
            }
            Operation::Prekeys(b) => {
                Applied::Prekeys(self.upload_prekeys(req, &signer, b, now_ms)?)
            }
            Operation::Feedback(f) => {
                Applied::Rated(self.feedback(req, &signer, f, client, now_ms)?)
            }
            Operation::Session { receipt } => {
                Applied::Receipt(self.session(req, &signer, receipt, now_ms)?)
            }
            Operation::Revoke { subject, reason } => {
                Applied::Revoked(self.revoke(req, &signer, subject, reason, now_ms)?)
            }
            Operation::OrgRegister { domain, name } => {
                Applied::OrgChallenge(self.org_register(req, &signer, domain, name, now_ms)?)
            }
            Operation::OrgVerify { domain } => {
                Applied::OrgVerified(self.org_verify(req, &signer, domain, now_ms).await?)
            }
            Operation::OauthAuthorize {} => {
                Applied::OauthStarted(self.oauth_authorize(req, &signer, now_ms)?)
            }
            Operation::OrgAgent { agent, certificate } => {
                Applied::OrgAgent(self.org_agent(req, &signer, agent, certificate, now_ms)?)
            }
            Operation::Rotate { rotations } => {
                Applied::Rotated(self.rotate(req, &signer, rotations, now_ms)?)
            }
            _ => return Err(RegistryError::Invalid("unsupported operation".into())),
        };
        self.flush().await?;
        Ok(out)
    }

    /// Forgets replay-store entries that are outside the timestamp window.
    pub fn prune(&self, now_ms: u64) -> Result<usize, RegistryError> {
        Ok(self
            .inner
            .store
            .prune_seen(now_ms.saturating_sub(2 * MAX_CLOCK_SKEW_MS))?)
    }
}

#[cfg(test)]
mod tests;
