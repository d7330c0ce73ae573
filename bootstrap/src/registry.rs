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
//! `<data dir>/root`) signs tier certificates ([`agentmesh_node::cert`]) and
//! revocations. Revocations are also published in the DHT when the
//! registry runs on a node ([`Registry::set_node`]).

pub mod did;
pub mod scores;
pub mod store;

use std::{
    collections::HashSet,
    future::Future,
    net::IpAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use agentmesh_node::{
    card::Presence,
    cert::{
        CertChain, CertError, CertKind, Certificate, Revocable, SignedCertificate, CERT_VERSION,
    },
    credentials::{Credentials, LogInclusion, Reputation, ReputationAttestation},
    identity::Identity,
    keystore::{KdfParams, Keystore, KeystoreError},
    registry::{
        check_capabilities, revocation_namespace, Feedback, Operation, PrekeyBundle, ReceiptBody,
        Registration, RegistryError as WireError, Revocation, SessionReceipt, SignedRequest,
        SignedRevocation, MAX_CLOCK_SKEW_MS, MAX_REASON,
    },
    reputation::{Rating, Score, SessionOutcome},
    transparency::{leaf_hash, ConsistencyProof, Hash, InclusionProof, LeafKind, SignedTreeHead},
    Amid, Node, Passphrase, Tier,
};

use crate::translog::{LogError, TransLog};

pub use store::{AgentRecord, FeedbackRecord, OrgRecord, Store, StoreError};

/// How long a revocation record lives in the DHT before it must be
/// republished.
pub const REVOCATION_RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default number of search results.
pub const DEFAULT_LIMIT: usize = 50;
/// What a search asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Capability or category (`weather` also finds `weather/forecast`).
    pub capability: String,
    /// Lowest tier.
    pub tier_min: Tier,
    /// Lowest reputation, 0..1.
    pub reputation_min: f64,
    /// At most this many results (capped at the registry's maximum).
    pub limit: usize,
}

impl SearchQuery {
    /// Any agent with `capability`, at most [`DEFAULT_LIMIT`] of them.
    pub fn new(capability: impl Into<String>) -> Self {
        Self {
            capability: capability.into(),
            tier_min: Tier::Anonymous,
            reputation_min: 0.0,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Leaderboard rows when the request names no limit.
pub const DEFAULT_LEADERBOARD_LIMIT: usize = 10;
/// Longest capability searched for.
pub const MAX_SEARCH_CAPABILITY: usize = 128;
/// Largest number of search or leaderboard results.
pub const MAX_LIMIT: usize = 500;
/// Longest organization name.
pub const MAX_ORG_NAME: usize = 128;
/// DNS label under which an organization publishes its challenge.
pub const DNS_CHALLENGE_LABEL: &str = "_agentmesh";
/// Prefix of the TXT record value.
pub const DNS_CHALLENGE_PREFIX: &str = "agentmesh-verify=";

/// Why a registry operation was refused. Each has a stable `code` and an
/// HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The body is not valid JSON for the operation.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A field is missing or out of bounds.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The request timestamp is outside the accepted window.
    #[error("timestamp outside the accepted window")]
    StaleTimestamp,
    /// This request was already accepted once.
    #[error("request already seen")]
    Replayed,
    /// The AMID is not registered.
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    /// Nothing found.
    #[error("not found: {0}")]
    NotFound(String),
    /// The signer may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The agent or key is revoked.
    #[error("revoked")]
    Revoked,
    /// The state does not allow it (duplicate, already done).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A certificate does not verify.
    #[error("invalid certificate: {0}")]
    Certificate(#[from] CertError),
    /// DNS verification did not find the challenge.
    #[error("verification failed: {0}")]
    VerificationFailed(String),
    /// The feature is not configured on this registry.
    #[error("not available: {0}")]
    NotConfigured(String),
    /// The body is over the size limit.
    #[error("payload too large")]
    TooLarge,
    /// The OAuth flow failed.
    #[error("OAuth: {0}")]
    OAuth(#[from] crate::oauth::OAuthError),
    /// A log index or tree size out of range.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::Invalid(_) => "invalid_request",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Replayed => "replayed",
            Self::UnknownAgent(_) => "unknown_agent",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::Revoked => "revoked",
            Self::Conflict(_) => "conflict",
            Self::Certificate(_) => "invalid_certificate",
            Self::VerificationFailed(_) => "verification_failed",
            Self::NotConfigured(_) => "not_configured",
            Self::TooLarge => "payload_too_large",
            Self::OAuth(e) => e.code(),
            Self::OutOfRange(_) => "out_of_range",
            Self::Store(_) => "internal",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::MalformedJson(_)
            | Self::Invalid(_)
            | Self::Certificate(_)
            | Self::OutOfRange(_) => 400,
            Self::BadSignature | Self::StaleTimestamp => 401,
            Self::Forbidden(_) | Self::Revoked | Self::VerificationFailed(_) => 403,
            Self::UnknownAgent(_) | Self::NotFound(_) => 404,
            Self::Replayed | Self::Conflict(_) => 409,
            Self::TooLarge => 413,
            Self::NotConfigured(_) => 501,
            Self::OAuth(e) if e.is_client_error() => 400,
            Self::OAuth(_) => 502,
            Self::Store(_) => 500,
        }
    }
}

impl From<sled::Error> for RegistryError {
    fn from(e: sled::Error) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

impl From<agentmesh_transports::codec::CodecError> for RegistryError {
    fn from(e: agentmesh_transports::codec::CodecError) -> Self {
        Self::Store(StoreError::Corrupt {
            tree: "encode",
            message: e.to_string(),
        })
    }
}

impl From<LogError> for RegistryError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Range(e) => Self::OutOfRange(e.to_string()),
            LogError::Storage(e) => Self::Store(StoreError::Db(e)),
            other => Self::Store(StoreError::Corrupt {
                tree: "translog",
                message: other.to_string(),
            }),
        }
    }
}

impl From<WireError> for RegistryError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::BadSignature => Self::BadSignature,
            WireError::StaleTimestamp { .. } => Self::StaleTimestamp,
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// Checks that an organization controls a domain (DNS TXT lookup).
pub trait DomainVerifier: Send + Sync + std::fmt::Debug {
    /// Whether a TXT record at `name` holds exactly `value`.
    fn verify<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>;
}

/// Registry settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistrySettings {
    /// Public URL of the HTTP API (without `/v1`), named in DID documents.
    /// Defaults to empty, which [`crate::start_registry`] replaces with
    /// `http://<bound address>`.
    pub public_url: String,
    /// Relays named as services in DID documents of agents that list none.
    /// Defaults to none.
    pub relays: Vec<String>,
    /// Validity of tier 1 agent certificates. Defaults to 365 days.
    pub agent_cert_validity: Duration,
    /// Validity of organization certificates. Defaults to 365 days.
    pub org_cert_validity: Duration,
    /// Take the client address from `X-Forwarded-For` (behind a reverse
    /// proxy). Defaults to false.
    pub trust_forwarded_for: bool,
    /// Argon2 cost of the root keystore. Defaults to [`KdfParams::default`].
    pub kdf: KdfParams,
    /// Validity of the reputation attestations handed out with credentials.
    /// Defaults to 24 hours.
    pub attestation_validity: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            relays: Vec::new(),
            agent_cert_validity: Duration::from_secs(365 * 24 * 3600),
            org_cert_validity: Duration::from_secs(365 * 24 * 3600),
            trust_forwarded_for: false,
            kdf: KdfParams::default(),
            attestation_validity: Duration::from_secs(24 * 3600),
        }
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
}

fn random16() -> Result<[u8; 16], RegistryError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(s)
}

/// Parses a transparency-log leaf hash (64 hex digits).
pub fn parse_leaf_hash(s: &str) -> Result<Hash, RegistryError> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| RegistryError::Invalid("hash must be 32 bytes hex".into()))
}

/// Parses a tier filter: `anonymous`/`2`, `verified`/`1`,
/// `organization`/`1.5`.
pub fn parse_tier(s: &str) -> Option<Tier> {
    match s {
        "anonymous" | "2" => Some(Tier::Anonymous),
        "verified" | "1" => Some(Tier::Verified),
        "organization" | "1.5" => Some(Tier::Organization),
        _ => None,
    }
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && !d.starts_with('.')
        && !d.ends_with('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Registry {
    /// Opens the registry in `dir` (database under `dir/registry`, root
    /// keystore under `dir/root`), creating both on first use.
    pub fn open(
        dir: &Path,
        root_passphrase: &Passphrase,
        settings: RegistrySettings,
    ) -> Result<Self, OpenError> {
        let (root, created) =
            Keystore::load_or_create(&dir.join("root"), root_passphrase, settings.kdf)?;
        if created {
            info!(root = %root.identity().amid(), "created registry root key");
        }
        let root_key = root
            .identity()
            .amid()
            .verifying_key()
            .map_err(|_| OpenError::InvalidRootKey)?;
        let store = Store::open(&dir.join("registry"))?;
        let origin_salt = store.secret("origin_salt")?;
        let log = TransLog::open(store.db()).map_err(|e| match e {
            LogError::Storage(e) => StoreError::Db(e),
            other => StoreError::Corrupt {
                tree: "translog",
                message: other.to_string(),
            },
        })?;
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
            }),
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

    /// The node publishing revocations, if any.
    pub fn node(&self) -> Option<&Node> {
        self.inner.node.get()
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

    fn is_revoked_key(&self, key: &[u8; 32]) -> bool {
        self.inner
            .store
            .revocations
            .contains_key(key)
            .unwrap_or(true)
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
        self.inner.scores.invalidate(&[&rec.amid]);
        Ok(())
    }

    fn mark_seen(&self, req: &SignedRequest, now_ms: u64) -> Result<(), RegistryError> {
        if self.inner.store.mark_seen(&req.signature, now_ms)? {
            Ok(())
        } else {
            Err(RegistryError::Replayed)
        }
    }

    /// Verifies and applies a signed request. `expected` is the operation
    /// the endpoint serves (`None`: any); `client` the client address.
    pub async fn apply(
        &self,
        req: &SignedRequest,
        expected: Option<&str>,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let body = req.verify(now_ms)?;
        if let Some(op) = expected {
            if body.op.name() != op {
                return Err(RegistryError::Invalid(format!(
                    "this endpoint takes `{op}`, not `{}`",
                    body.op.name()
                )));
            }
        }
        let signer = req.signer;
        let out = match body.op {
            Operation::Register(r) => self.register(req, &signer, r, now_ms)?,
            Operation::Status { presence } => self.update(req, &signer, now_ms, |a| {
                a.presence = presence;
                Ok(())
            })?,
            Operation::Capabilities { capabilities } => {
                check_capabilities(&capabilities)?;
                self.update(req, &signer, now_ms, |a| {
                    a.capabilities = capabilities;
                    Ok(())
                })?
            }
            Operation::Prekeys(b) => self.upload_prekeys(req, &signer, b, now_ms)?,
            Operation::Feedback(f) => self.feedback(req, &signer, f, client, now_ms)?,
            Operation::Session { receipt } => self.session(req, &signer, receipt, now_ms)?,
            Operation::Revoke { subject, reason } => {
                self.revoke(req, &signer, subject, reason, now_ms)?
            }
            Operation::OrgRegister { domain, name } => {
                self.org_register(req, &signer, domain, name, now_ms)?
            }
            Operation::OrgVerify { domain } => {
                self.org_verify(req, &signer, domain, now_ms).await?
            }
            Operation::OauthAuthorize {} => self.oauth_authorize(req, &signer, now_ms)?,
            Operation::OrgAgent { agent, certificate } => {
                self.org_agent(req, &signer, agent, certificate, now_ms)?
            }
            _ => return Err(RegistryError::Invalid("unsupported operation".into())),
        };
        self.inner.store.flush().await?;
        Ok(out)
    }

    fn register(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        r: Registration,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        r.check()?;
        if self.is_revoked_key(signer.as_bytes()) {
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
        };
        let rebound = old.as_ref().is_none_or(|o| o.x25519_key != rec.x25519_key);
        self.mark_seen(req, now_ms)?;
        self.put_agent(&rec, old.as_ref())?;
        if rebound {
            let binding = KeyBinding {
                amid: *signer,
                x25519_key: rec.x25519_key.clone(),
                bound_ms: now_ms,
            };
            self.log_append(LeafKind::KeyBinding, &binding.to_bytes()?)?;
        }
        info!(target: "agentmesh::registry", amid = %signer, created, "registered");
        Ok(json!({
            "amid": signer,
            "created": created,
            "tier": rec.tier,
            "registered_ms": rec.registered_ms,
        }))
    }

    fn update(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        now_ms: u64,
        change: impl FnOnce(&mut AgentRecord) -> Result<(), RegistryError>,
    ) -> Result<Value, RegistryError> {
        let old = self.live_agent(signer)?;
        let mut rec = old.clone();
        change(&mut rec)?;
        rec.last_seen_ms = now_ms;
        self.mark_seen(req, now_ms)?;
        self.put_agent(&rec, Some(&old))?;
        Ok(json!({
            "amid": signer,
            "presence": rec.presence,
            "capabilities": rec.capabilities,
        }))
    }

    fn upload_prekeys(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        b: PrekeyBundle,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        b.check()?;
        self.live_agent(signer)?;
        let stored = store::StoredPrekeys {
            identity_key: b.identity_key,
            fallback_key: b.fallback_key,
            one_time_keys: b.one_time_keys,
            uploaded_ms: now_ms,
        };
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.prekeys, signer.as_bytes(), &stored)?;
        Ok(json!({"amid": signer, "one_time_keys": stored.one_time_keys.len()}))
    }

    /// Hands out `amid`'s prekey bundle with one one-time key, which is
    /// removed (the fallback key is given when none is left).
    pub async fn take_prekeys(&self, amid: &Amid) -> Result<Value, RegistryError> {
        let a = self.agent_or_unknown(amid)?;
        if a.revoked {
            return Err(RegistryError::Revoked);
        }
        let mut taken: Option<store::StoredPrekeys> = None;
        self.inner
            .store
            .prekeys
            .fetch_and_update(amid.as_bytes(), |old| {
                let old = old?;
                let mut p: store::StoredPrekeys = serde_json::from_slice(old).ok()?;
                taken = Some(p.clone());
                if !p.one_time_keys.is_empty() {
                    p.one_time_keys.remove(0);
                }
                serde_json::to_vec(&p).ok()
            })?;
        let p = taken.ok_or_else(|| RegistryError::NotFound(format!("no prekeys for {amid}")))?;
        self.inner.store.flush().await?;
        Ok(json!({
            "amid": amid,
            "identity_key": p.identity_key,
            "fallback_key": p.fallback_key,
            "one_time_key": p.one_time_keys.first(),
            "remaining": p.one_time_keys.len().saturating_sub(1),
        }))
    }

    fn session(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        receipt: SessionReceipt,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let body: ReceiptBody = receipt.verify()?;
        if *signer != body.initiator && *signer != body.responder {
            return Err(RegistryError::Forbidden(
                "the signer is not a party of this session".into(),
            ));
        }
        self.live_agent(&body.initiator)?;
        self.live_agent(&body.responder)?;
        if body.ended_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Err(RegistryError::Invalid("session ends in the future".into()));
        }
        let sid = hex::decode(&body.session_id)
            .map_err(|_| RegistryError::Invalid("session_id".into()))?;
        if let Some(filed) = self.inner.store.receipts.get(&sid)? {
            // Both parties file the same receipt: the second filing is
            // answered as the first, and counts nothing twice.
            let same = serde_json::from_slice::<SessionReceipt>(&filed)
                .map(|f| f.body == receipt.body)
                .unwrap_or(false);
            if !same {
                return Err(RegistryError::Conflict(
                    "another receipt is filed for this session".into(),
                ));
            }
            self.mark_seen(req, now_ms)?;
            return Ok(
                json!({"session_id": body.session_id, "completed": body.completed, "duplicate": true}),
            );
        }
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.receipts, &sid, &receipt)?;
        for party in [&body.initiator, &body.responder] {
            self.inner
                .store
                .receipts_by
                .insert(store::cat(&[party.as_bytes(), &sid]), &[])?;
        }
        self.inner
            .scores
            .invalidate(&[&body.initiator, &body.responder]);
        Ok(json!({"session_id": body.session_id, "completed": body.completed, "duplicate": false}))
    }

    fn feedback(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        f: Feedback,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        if !f.score.is_finite() || !(0.0..=1.0).contains(&f.score) {
            return Err(RegistryError::Invalid("score must be in 0..=1".into()));
        }
        if f.target == *signer {
            return Err(RegistryError::Forbidden(
                "agents cannot rate themselves".into(),
            ));
        }
        let rater = self.live_agent(signer)?;
        self.live_agent(&f.target)?;
        let sid = hex::decode(&f.session_id)
            .ok()
            .filter(|s| s.len() == 16)
            .ok_or_else(|| RegistryError::Invalid("session_id must be 16 bytes hex".into()))?;
        let receipt: SessionReceipt =
            store::get_json(&self.inner.store.receipts, "receipts", &sid)?.ok_or_else(|| {
                RegistryError::Forbidden("no receipt signed by both sides for this session".into())
            })?;
        let body = receipt.verify()?;
        let parties = [body.initiator, body.responder];
        if !parties.contains(signer) || !parties.contains(&f.target) {
            return Err(RegistryError::Forbidden(
                "rater and target must be the two sides of the session".into(),
            ));
        }
        let key = store::cat(&[f.target.as_bytes(), signer.as_bytes(), &sid]);
        if self.inner.store.feedback.contains_key(&key)? {
            return Err(RegistryError::Conflict("session already rated".into()));
        }
        let rec = FeedbackRecord {
            rater: *signer,
            target: f.target,
            session_id: f.session_id,
            score: f.score,
            ts_ms: now_ms,
            rater_tier: rater.tier,
            rater_registered_ms: rater.registered_ms,
            origin: self.origin_tag(client),
            request: req.clone(),
        };
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.feedback, &key, &rec)?;
        self.inner
            .store
            .rated_by
            .insert(store::cat(&[signer.as_bytes(), f.target.as_bytes()]), &[])?;
        // The target's ratings and, for the mutual rule, whom the signer rated.
        self.inner.scores.invalidate(&[&f.target, signer]);
        let score = self.score(&f.target, now_ms)?;
        if score.flagged {
            warn!(target: "agentmesh::registry", amid = %f.target, score = score.score, "rapid reputation change flagged for review");
        }
        Ok(
            json!({"target": f.target, "accepted": true, "score": score.score, "flagged": score.flagged}),
        )
    }

    fn evidence(&self, amid: &Amid) -> Result<Gathered, RegistryError> {
        let agent = self.agent_or_unknown(amid)?;
        let mut outcomes = Vec::new();
        for r in self.inner.store.receipts_of(amid)? {
            // Both signatures were checked when the receipt was filed.
            if let Ok(b) = serde_json::from_str::<ReceiptBody>(&r.body) {
                outcomes.push(SessionOutcome {
                    ended_ms: b.ended_ms,
                    completed: b.completed,
                });
            }
        }
        let ratings = self.inner.store.feedback_of(amid)?;
        let rated = self.inner.store.rated_by(amid)?.into_iter().collect();
        Ok(Gathered {
            agent,
            outcomes,
            ratings,
            rated,
        })
    }

    /// The inputs of `amid`'s score, read from storage.
    fn score_inputs(&self, amid: &Amid) -> Result<scores::ScoreInputs, RegistryError> {
        let g = self.evidence(amid)?;
        Ok(scores::ScoreInputs {
            tier: g.agent.tier,
            registered_ms: g.agent.registered_ms,
            outcomes: g.outcomes,
            ratings: g.ratings.iter().map(rating_of).collect(),
            rated: g.rated,
            revoked: g.agent.revoked,
        })
    }

    /// `amid`'s score inputs, from the cache when they are current (see
    /// [`scores`]).
    fn inputs(&self, amid: &Amid) -> Result<Arc<scores::ScoreInputs>, RegistryError> {
        let cache = &self.inner.scores;
        match cache.get(amid) {
            Ok(inputs) => Ok(inputs),
            Err(generation) => {
                let inputs = Arc::new(self.score_inputs(amid)?);
                cache.insert(*amid, generation, inputs.clone());
                Ok(inputs)
            }
        }
    }

    /// `amid`'s reputation now, from cached inputs when they are current
    /// (see [`scores`]).
    pub fn score(&self, amid: &Amid, now_ms: u64) -> Result<Score, RegistryError> {
        Ok(self.inputs(amid)?.score(now_ms))
    }

    /// `amid`'s reputation now, computed from storage without the cache.
    pub fn score_uncached(&self, amid: &Amid, now_ms: u64) -> Result<Score, RegistryError> {
        Ok(self.score_inputs(amid)?.score(now_ms))
    }

    /// The published evidence behind `amid`'s score: receipts, ratings with
    /// their signed requests, and whom the agent rated.
    pub fn evidence_json(&self, amid: &Amid, now_ms: u64) -> Result<Value, RegistryError> {
        let a = self.agent_or_unknown(amid)?;
        let receipts = self.inner.store.receipts_of(amid)?;
        let ratings = self.inner.store.feedback_of(amid)?;
        let rated = self.inner.store.rated_by(amid)?;
        let score = self.score(amid, now_ms)?;
        Ok(json!({
            "amid": amid,
            "tier": a.tier,
            "registered_ms": a.registered_ms,
            "computed_ms": now_ms,
            "receipts": receipts,
            "ratings": ratings,
            "rated": rated,
            "score": score,
        }))
    }

    fn revoke(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        subject: Amid,
        reason: String,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
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
        if self.is_revoked_key(subject.as_bytes()) {
            return Err(RegistryError::Conflict("already revoked".into()));
        }
        let rev = Revocation {
            subject_key: *subject.as_bytes(),
            serial: None,
            reason,
            revoked_ms: now_ms,
            issuer_key: *self.root_amid().as_bytes(),
        };
        let signed = rev.sign(self.root())?;
        let bytes = signed.to_bytes()?;
        self.mark_seen(req, now_ms)?;
        self.inner
            .store
            .revocations
            .insert(subject.as_bytes(), bytes.clone())?;
        self.log_append(LeafKind::Revocation, &bytes)?;
        if let Some(old) = agent {
            let mut rec = old.clone();
            rec.revoked = true;
            self.put_agent(&rec, Some(&old))?;
            self.inner.store.prekeys.remove(subject.as_bytes())?;
        }
        info!(target: "agentmesh::registry", amid = %subject, by = %signer, "revoked");
        self.publish_revocation(&signed);
        Ok(json!({"subject": subject, "revoked": true, "revocation": hex::encode(bytes)}))
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

    /// The root verifying key.
    pub fn root_key(&self) -> ed25519_dalek::VerifyingKey {
        self.inner.root_key
    }

    /// Revocation status of a key (agent or organization).
    pub fn revocation(&self, amid: &Amid) -> Result<Value, RegistryError> {
        let known =
            self.inner.store.agent(amid)?.is_some() || self.inner.store.org_by_key(amid)?.is_some();
        let rev = self.inner.store.revocation(amid.as_bytes())?;
        if !known && rev.is_none() {
            return Err(RegistryError::UnknownAgent(amid.to_string()));
        }
        Ok(match rev {
            None => json!({"amid": amid, "revoked": false}),
            Some(s) => revocation_json(&s, &self.root_key()),
        })
    }

    /// The certificate revocation list: every revocation, signed by the
    /// root.
    pub fn crl(&self, now_ms: u64) -> Result<Value, RegistryError> {
        let root = self.root_key();
        let list: Vec<Value> = self
            .inner
            .store
            .all_revocations()?
            .iter()
            .map(|s| revocation_json(s, &root))
            .collect();
        Ok(json!({
            "issuer": self.root_amid(),
            "issuer_key": hex::encode(root.to_bytes()),
            "generated_ms": now_ms,
            "count": list.len(),
            "revocations": list,
        }))
    }

    fn new_cert(
        &self,
        kind: CertKind,
        subject_key: [u8; 32],
        subject_name: &str,
        tier: Tier,
        validity: Duration,
        now_ms: u64,
    ) -> Result<SignedCertificate, RegistryError> {
        let cert = Certificate {
            version: CERT_VERSION,
            kind,
            subject_key,
            subject_name: subject_name.to_owned(),
            tier,
            issuer_key: *self.root_amid().as_bytes(),
            serial: random16()?,
            not_before_ms: now_ms.saturating_sub(60_000),
            not_after_ms: now_ms.saturating_add(validity.as_millis() as u64),
        };
        Ok(cert.sign_as(self.root())?)
    }

    /// Issues a tier 1 certificate to `amid` after its owner proved an
    /// account at an OAuth provider (`subject_name` = `provider:subject`),
    /// stores it on the agent and returns the chain. An agent of an
    /// organization keeps its tier 1.5 chain.
    pub async fn issue_verified(
        &self,
        amid: &Amid,
        subject_name: &str,
        now_ms: u64,
    ) -> Result<CertChain, RegistryError> {
        let old = self.live_agent(amid)?;
        let cert = self.new_cert(
            CertKind::Agent,
            *amid.as_bytes(),
            subject_name,
            Tier::Verified,
            self.inner.settings.agent_cert_validity,
            now_ms,
        )?;
        let chain = CertChain(vec![cert]);
        self.log_append_leaf(&Credentials::log_leaf(&chain)?)?;
        if old.tier != Tier::Organization {
            let mut rec = old.clone();
            rec.tier = Tier::Verified;
            rec.certificate = Some(hex::encode(chain.to_bytes()?));
            self.put_agent(&rec, Some(&old))?;
        }
        self.inner.store.flush().await?;
        info!(target: "agentmesh::registry", %amid, subject_name, "tier 1 certificate issued");
        Ok(chain)
    }

    fn oauth_authorize(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let oauth = self
            .inner
            .oauth
            .get()
            .cloned()
            .ok_or_else(|| RegistryError::NotConfigured("OAuth verification".into()))?;
        self.live_agent(signer)?;
        self.mark_seen(req, now_ms)?;
        let url = oauth.start(*signer, now_ms)?;
        Ok(json!({
            "amid": signer,
            "provider": oauth.provider().name,
            "authorize_url": url.to_string(),
        }))
    }

    /// Finishes an OAuth verification (the provider's redirect): checks the
    /// state, exchanges the code, and issues the tier 1 certificate to the
    /// agent that started the flow.
    pub async fn oauth_callback(
        &self,
        params: &crate::oauth::CallbackParams,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let oauth = self
            .inner
            .oauth
            .get()
            .cloned()
            .ok_or_else(|| RegistryError::NotConfigured("OAuth verification".into()))?;
        let subject = oauth.finish(params, now_ms).await?;
        let name = format!("{}:{}", subject.provider, subject.subject);
        let chain = self.issue_verified(&subject.amid, &name, now_ms).await?;
        let creds = self.credentials_for(&subject.amid, Some(chain.clone()), now_ms)?;
        Ok(json!({
            "amid": subject.amid,
            "tier": Tier::Verified,
            "subject": name,
            "certificate": hex::encode(chain.to_bytes()?),
            "inclusion": creds.inclusion,
            "credentials": hex::encode(creds.to_bytes()?),
        }))
    }

    fn org_register(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        domain: String,
        name: String,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        if !valid_domain(&domain) {
            return Err(RegistryError::Invalid(
                "domain must be a lowercase DNS name".into(),
            ));
        }
        if name.is_empty() || name.len() > MAX_ORG_NAME {
            return Err(RegistryError::Invalid("name length".into()));
        }
        if self.is_revoked_key(signer.as_bytes()) {
            return Err(RegistryError::Revoked);
        }
        if let Some(o) = self.inner.store.org(&domain)? {
            if o.key != *signer || o.verified {
                return Err(RegistryError::Conflict("domain already registered".into()));
            }
        }
        if let Some(o) = self.inner.store.org_by_key(signer)? {
            if o.domain != domain {
                return Err(RegistryError::Conflict(
                    "key already names another domain".into(),
                ));
            }
        }
        let challenge = hex::encode(random16()?);
        let org = OrgRecord {
            domain,
            name,
            key: *signer,
            challenge,
            verified: false,
            certificate: None,
            registered_ms: now_ms,
        };
        self.mark_seen(req, now_ms)?;
        self.inner.store.put_org(&org)?;
        Ok(org_challenge_json(&org))
    }

    async fn org_verify(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        domain: String,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let org = self
            .inner
            .store
            .org(&domain)?
            .ok_or_else(|| RegistryError::NotFound(format!("organization {domain}")))?;
        if org.key != *signer {
            return Err(RegistryError::Forbidden(
                "not this organization's key".into(),
            ));
        }
        if org.verified {
            return Err(RegistryError::Conflict("already verified".into()));
        }
        let verifier = self
            .inner
            .verifier
            .get()
            .cloned()
            .ok_or_else(|| RegistryError::NotConfigured("DNS verification".into()))?;
        let (name, value) = dns_challenge(&org);
        let ok = verifier
            .verify(&name, &value)
            .await
            .map_err(RegistryError::VerificationFailed)?;
        if !ok {
            return Err(RegistryError::VerificationFailed(format!(
                "TXT {name} does not hold {value}"
            )));
        }
        self.mark_seen(req, now_ms)?;
        let chain = self.verify_org(&domain, now_ms)?;
        Ok(
            json!({"domain": domain, "verified": true, "certificate": hex::encode(chain.to_bytes()?)}),
        )
    }

    /// Marks `domain` verified (its DNS challenge was found) and issues its
    /// organization certificate, signed by the root.
    pub fn verify_org(
        &self,
        domain: &str,
        now_ms: u64,
    ) -> Result<SignedCertificate, RegistryError> {
        let mut org = self
            .inner
            .store
            .org(domain)?
            .ok_or_else(|| RegistryError::NotFound(format!("organization {domain}")))?;
        let cert = self.new_cert(
            CertKind::Organization,
            *org.key.as_bytes(),
            domain,
            Tier::Organization,
            self.inner.settings.org_cert_validity,
            now_ms,
        )?;
        self.log_append_leaf(&Credentials::log_leaf(&CertChain(vec![cert.clone()]))?)?;
        org.verified = true;
        org.certificate = Some(hex::encode(cert.to_bytes()?));
        self.inner.store.put_org(&org)?;
        info!(target: "agentmesh::registry", domain, "organization verified");
        Ok(cert)
    }

    fn org_agent(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        agent: Amid,
        certificate: String,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let org = self
            .inner
            .store
            .org_by_key(signer)?
            .ok_or_else(|| RegistryError::Forbidden("the signer is no organization".into()))?;
        let org_cert_hex = org
            .certificate
            .clone()
            .filter(|_| org.verified)
            .ok_or_else(|| RegistryError::Forbidden("organization not verified".into()))?;
        let old = self.live_agent(&agent)?;
        let bytes = hex::decode(&certificate)
            .map_err(|_| RegistryError::Invalid("certificate must be hex".into()))?;
        let agent_cert = SignedCertificate::from_bytes(&bytes)?;
        let org_bytes = hex::decode(org_cert_hex).map_err(|e| StoreError::Corrupt {
            tree: "orgs",
            message: e.to_string(),
        })?;
        let org_cert = SignedCertificate::from_bytes(&org_bytes)?;
        let chain = CertChain(vec![agent_cert, org_cert]);
        let tier = chain.verify(&agent, &self.root_key(), now_ms, |r| match r {
            Revocable::Key(k) => self.is_revoked_key(k),
            Revocable::Serial(_) => false,
        })?;
        let mut rec = old.clone();
        rec.tier = tier;
        rec.org = Some(org.domain.clone());
        rec.certificate = Some(hex::encode(chain.to_bytes()?));
        self.mark_seen(req, now_ms)?;
        self.put_agent(&rec, Some(&old))?;
        let index = self.log_append_leaf(&Credentials::log_leaf(&chain)?)?;
        Ok(json!({"agent": agent, "org": org.domain, "tier": tier, "log_index": index}))
    }

    /// Public view of `amid`.
    pub fn lookup(&self, amid: &Amid, now_ms: u64) -> Result<AgentView, RegistryError> {
        let a = self.agent_or_unknown(amid)?;
        self.view(a, now_ms)
    }

    fn view(&self, a: AgentRecord, now_ms: u64) -> Result<AgentView, RegistryError> {
        let reputation = self.score(&a.amid, now_ms)?.score;
        Ok(Self::view_scored(a, reputation))
    }

    /// The public view of `a`, whose score is `reputation`.
    fn view_scored(a: AgentRecord, reputation: f64) -> AgentView {
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
        }
    }

    /// Agents matching `q`, best reputation first.
    pub fn search(&self, q: &SearchQuery, now_ms: u64) -> Result<Vec<AgentView>, RegistryError> {
        // Filtered and ranked on the cached score inputs; records are read
        // (and views built) only for the results answered.
        let mut matches = Vec::new();
        for amid in self.inner.store.agents_with(&q.capability)? {
            let inputs = match self.inputs(&amid) {
                Ok(i) => i,
                Err(RegistryError::UnknownAgent(_)) => continue,
                Err(e) => return Err(e),
            };
            if inputs.revoked || inputs.tier < q.tier_min {
                continue;
            }
            let reputation = inputs.score(now_ms).score;
            if reputation >= q.reputation_min {
                matches.push((reputation, amid));
            }
        }
        matches.sort_by(|(ra, a), (rb, b)| rb.total_cmp(ra).then(a.cmp(b)));
        matches.truncate(q.limit.min(MAX_LIMIT));
        let mut out = Vec::with_capacity(matches.len());
        for (reputation, amid) in matches {
            if let Some(a) = self.inner.store.agent(&amid)? {
                out.push(Self::view_scored(a, reputation));
            }
        }
        Ok(out)
    }

    /// [`Registry::search`] as the API answers it, with its bounds checked:
    /// `{"count", "results"}`.
    pub fn search_json(&self, q: &SearchQuery, now_ms: u64) -> Result<Value, RegistryError> {
        if q.capability.is_empty() || q.capability.len() > MAX_SEARCH_CAPABILITY {
            return Err(RegistryError::Invalid("capability length".into()));
        }
        if !q.reputation_min.is_finite() {
            return Err(RegistryError::Invalid("reputation_min".into()));
        }
        let results = self.search(q, now_ms)?;
        Ok(json!({"count": results.len(), "results": results}))
    }

    /// The DID document of a registered, unrevoked agent.
    pub fn did_document(&self, amid: &Amid) -> Result<Value, RegistryError> {
        let rec = self.agent_or_unknown(amid)?;
        if rec.revoked {
            return Err(RegistryError::Revoked);
        }
        let s = self.settings();
        Ok(did::document(&rec, &s.public_url, &s.relays))
    }

    /// The root key, the registry node and where revocations are in the
    /// DHT.
    pub fn root_json(&self) -> Value {
        json!({
            "root": self.root_amid(),
            "root_key": hex::encode(self.root_key().to_bytes()),
            "node": self.node().map(|n| n.amid()),
            "node_peer_id": self.node().and_then(|n| n.amid().peer_id().ok()).map(|p| p.to_string()),
            "revocation_namespace_prefix": agentmesh_node::registry::REVOCATION_NAMESPACE_PREFIX,
        })
    }

    /// The `limit` best reputations.
    pub fn leaderboard(&self, limit: usize, now_ms: u64) -> Result<Value, RegistryError> {
        let mut rows = Vec::new();
        for a in self.inner.store.all_agents() {
            let a = a?;
            if a.revoked {
                continue;
            }
            let s = self.score(&a.amid, now_ms)?;
            rows.push((s.score, a.amid, a.display_name, a.tier, s.flagged));
        }
        rows.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        rows.truncate(limit.min(MAX_LIMIT));
        let list: Vec<Value> = rows
            .into_iter()
            .enumerate()
            .map(|(i, (score, amid, name, tier, flagged))| {
                json!({"rank": i + 1, "amid": amid, "display_name": name, "tier": tier, "score": score, "flagged": flagged})
            })
            .collect();
        Ok(json!({"leaderboard": list}))
    }

    /// Counts: agents by tier and presence, capabilities, receipts, ratings,
    /// revocations, organizations.
    pub fn stats(&self) -> Result<Value, RegistryError> {
        let (mut total, mut anonymous, mut verified, mut organization, mut online, mut revoked) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let mut caps: HashSet<String> = HashSet::new();
        for a in self.inner.store.all_agents() {
            let a = a?;
            total += 1;
            if a.revoked {
                revoked += 1;
                continue;
            }
            match a.tier {
                Tier::Anonymous => anonymous += 1,
                Tier::Verified => verified += 1,
                Tier::Organization => organization += 1,
            }
            if a.presence == Presence::Online {
                online += 1;
            }
            caps.extend(a.capabilities);
        }
        let s = &self.inner.store;
        Ok(json!({
            "agents": total,
            "by_tier": {"anonymous": anonymous, "verified": verified, "organization": organization},
            "online": online,
            "revoked": revoked,
            "capabilities": caps.len(),
            "receipts": s.receipts.len(),
            "ratings": s.feedback.len(),
            "revocations": s.revocations.len(),
            "organizations": s.orgs.len(),
        }))
    }

    /// The organization registered for `domain` and its agents.
    pub fn org_info(&self, domain: &str) -> Result<Value, RegistryError> {
        let org = self
            .inner
            .store
            .org(domain)?
            .ok_or_else(|| RegistryError::NotFound(format!("organization {domain}")))?;
        let mut agents = Vec::new();
        for a in self.inner.store.all_agents() {
            let a = a?;
            if a.org.as_deref() == Some(domain) {
                agents.push(
                    json!({"amid": a.amid, "display_name": a.display_name, "revoked": a.revoked}),
                );
            }
        }
        Ok(json!({
            "domain": org.domain,
            "name": org.name,
            "key": org.key,
            "verified": org.verified,
            "certificate": org.certificate,
            "agents": agents,
        }))
    }

    fn log_append(&self, kind: LeafKind, payload: &[u8]) -> Result<u64, RegistryError> {
        self.log_append_leaf(&kind.leaf(payload))
    }

    /// Appends a leaf to the transparency log; durable with the next flush
    /// of the store, which every caller does before it answers.
    fn log_append_leaf(&self, leaf: &[u8]) -> Result<u64, RegistryError> {
        let index = self.inner.log.append_unflushed(leaf)?;
        debug!(target: "agentmesh::registry", index, kind = leaf.first().copied(), "logged");
        Ok(index)
    }

    /// The transparency log.
    pub fn log(&self) -> &TransLog {
        &self.inner.log
    }

    /// The head of the first `size` leaves of the transparency log (the
    /// whole log when `None`), signed by the root key.
    pub fn log_head(
        &self,
        size: Option<u64>,
        now_ms: u64,
    ) -> Result<SignedTreeHead, RegistryError> {
        let log = &self.inner.log;
        let size = match size {
            Some(s) => s,
            None => log.size()?,
        };
        let root = log.root_at(size)?;
        Ok(SignedTreeHead::sign(self.root(), size, root, now_ms))
    }

    /// Inclusion proof of the leaf at `index` (or with leaf hash `hash`) in
    /// the tree of `size` leaves (the whole log when `None`), with the leaf
    /// data and the signed head the proof leads to.
    pub fn log_proof(
        &self,
        index: Option<u64>,
        hash: Option<&Hash>,
        size: Option<u64>,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let log = &self.inner.log;
        let index = match (index, hash) {
            (Some(i), None) => i,
            (None, Some(h)) => log
                .index_of(h)?
                .ok_or_else(|| RegistryError::NotFound("no leaf with this hash".into()))?,
            _ => {
                return Err(RegistryError::Invalid(
                    "give exactly one of index and hash".into(),
                ))
            }
        };
        let head = self.log_head(size, now_ms)?;
        let proof = log.inclusion_proof(index, head.size)?;
        let leaf = log
            .leaf(index)?
            .ok_or_else(|| RegistryError::OutOfRange(format!("leaf {index}")))?;
        Ok(json!({
            "leaf": hex::encode(&leaf),
            "leaf_hash": hex::encode(leaf_hash(&leaf)),
            "proof": proof,
            "head": head,
        }))
    }

    /// Consistency proof between the trees of `first` and `second` leaves
    /// (the whole log when `None`), with both signed heads.
    pub fn log_consistency(
        &self,
        first: u64,
        second: Option<u64>,
        now_ms: u64,
    ) -> Result<Value, RegistryError> {
        let newer = self.log_head(second, now_ms)?;
        if first > newer.size {
            return Err(RegistryError::OutOfRange(format!(
                "first {first} is beyond the tree of {}",
                newer.size
            )));
        }
        let older = self.log_head(Some(first), now_ms)?;
        let proof: ConsistencyProof = self.inner.log.consistency_proof(first, newer.size)?;
        Ok(json!({"proof": proof, "first": older, "second": newer}))
    }

    /// Where the first certificate of `chain` is in the log, proven against
    /// the current head; `None` when it is not in the log.
    pub fn inclusion_of(
        &self,
        chain: &CertChain,
        now_ms: u64,
    ) -> Result<Option<LogInclusion>, RegistryError> {
        let leaf = Credentials::log_leaf(chain)?;
        let Some(index) = self.inner.log.index_of(&leaf_hash(&leaf))? else {
            return Ok(None);
        };
        let head = self.log_head(None, now_ms)?;
        let proof: InclusionProof = self.inner.log.inclusion_proof(index, head.size)?;
        Ok(Some(LogInclusion { proof, head }))
    }

    /// What `amid`'s KNOCKs should show: its certificate chain (`chain`, or
    /// the stored one), the chain's inclusion proof against the current
    /// signed head, and a reputation attestation signed by the root, valid
    /// for [`RegistrySettings::attestation_validity`].
    pub fn credentials_for(
        &self,
        amid: &Amid,
        chain: Option<CertChain>,
        now_ms: u64,
    ) -> Result<Credentials, RegistryError> {
        let agent = self.live_agent(amid)?;
        let chain = match chain {
            Some(c) => Some(c),
            None => match &agent.certificate {
                Some(h) => {
                    let bytes = hex::decode(h).map_err(|e| StoreError::Corrupt {
                        tree: "agents",
                        message: e.to_string(),
                    })?;
                    Some(CertChain::from_bytes(&bytes)?)
                }
                None => None,
            },
        };
        let inclusion = match &chain {
            Some(c) => self.inclusion_of(c, now_ms)?,
            None => None,
        };
        let score = self.score(amid, now_ms)?.score;
        let validity = self.inner.settings.attestation_validity.as_millis() as u64;
        let reputation = ReputationAttestation {
            amid: *amid,
            score: Reputation::from_f64(score),
            expires_ms: now_ms.saturating_add(validity),
        }
        .sign(self.root());
        Ok(Credentials {
            chain,
            inclusion,
            reputation: Some(reputation),
        })
    }

    /// [`Registry::credentials_for`] as the API returns it: the tier, the
    /// proof and the CBOR credentials (hex) a node loads.
    pub fn credentials_json(&self, amid: &Amid, now_ms: u64) -> Result<Value, RegistryError> {
        let tier = self.live_agent(amid)?.tier;
        let creds = self.credentials_for(amid, None, now_ms)?;
        Ok(json!({
            "amid": amid,
            "tier": tier,
            "certificate": creds.chain.as_ref().map(|c| c.to_bytes().map(hex::encode)).transpose()?,
            "inclusion": creds.inclusion,
            "credentials": hex::encode(creds.to_bytes()?),
        }))
    }

    /// Forgets replay-store entries that are outside the timestamp window.
    pub fn prune(&self, now_ms: u64) -> Result<usize, RegistryError> {
        Ok(self
            .inner
            .store
            .prune_seen(now_ms.saturating_sub(2 * MAX_CLOCK_SKEW_MS))?)
    }
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

struct Gathered {
    agent: AgentRecord,
    outcomes: Vec<SessionOutcome>,
    ratings: Vec<FeedbackRecord>,
    rated: HashSet<Amid>,
}

fn rating_of(f: &FeedbackRecord) -> Rating {
    Rating {
        rater: f.rater,
        score: f.score,
        ts_ms: f.ts_ms,
        rater_tier: f.rater_tier,
        rater_registered_ms: f.rater_registered_ms,
        origin: f.origin.clone(),
    }
}

/// The TXT record name and value an organization publishes.
pub fn dns_challenge(org: &OrgRecord) -> (String, String) {
    (
        format!("{DNS_CHALLENGE_LABEL}.{}", org.domain),
        format!("{DNS_CHALLENGE_PREFIX}{}", org.challenge),
    )
}

fn org_challenge_json(org: &OrgRecord) -> Value {
    let (name, value) = dns_challenge(org);
    json!({
        "domain": org.domain,
        "key": org.key,
        "verified": org.verified,
        "txt_name": name,
        "txt_value": value,
    })
}

fn revocation_json(s: &SignedRevocation, root: &ed25519_dalek::VerifyingKey) -> Value {
    let bytes = s.to_bytes().unwrap_or_default();
    match s.verify(root) {
        Ok(r) => json!({
            "subject": Amid::from_bytes(&r.subject_key).map(|a| a.to_string()).unwrap_or_else(|_| hex::encode(r.subject_key)),
            "revoked": true,
            "reason": r.reason,
            "revoked_ms": r.revoked_ms,
            "signed": hex::encode(bytes),
        }),
        Err(_) => json!({"revoked": true, "signed": hex::encode(bytes)}),
    }
}

#[cfg(test)]
mod tests;

/// Organizations' TXT records checked at a real nameserver.
impl DomainVerifier for crate::dns::DnsVerifier {
    fn verify<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>> {
        Box::pin(async move {
            let fqdn = if name.ends_with('.') {
                name.to_owned()
            } else {
                format!("{name}.")
            };
            match self.txt(&fqdn).await {
                Ok(values) => Ok(values.iter().any(|v| v.trim() == value)),
                Err(crate::dns::DnsChallengeError::NoRecord { .. }) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
