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
//!
//! This module holds the [`Registry`] handle, its settings and the errors
//! every operation shares; each concern has its own file, whose answers are
//! typed structs the front ends ([`crate::http`], [`crate::p2p`]) serialise:
//!
//! | file | concern |
//! |---|---|
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
mod issuance;
mod log;
mod prekeys;
mod reputation;
mod revocation;
pub mod scores;
mod search;
pub mod store;

use std::{
    future::Future,
    net::IpAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use agentmesh_node::{
    cert::CertError,
    identity::Identity,
    keystore::{KdfParams, Keystore, KeystoreError, KEYSTORE_FILE},
    ratelimit::RateLimit,
    registry::{
        check_capabilities, Operation, RegistryError as WireError, RequestBody, SignedRequest,
        MAX_CLOCK_SKEW_MS,
    },
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
pub use search::{
    parse_tier, SearchError, SearchQuery, SearchResults, DEFAULT_LIMIT, MAX_LIMIT,
    MAX_SEARCH_CAPABILITY,
};
pub use store::{AgentRecord, FeedbackRecord, OrgRecord, Store, StoreError};

/// Why a registry operation was refused. Each has a stable `code` and an
/// HTTP status. Operations with errors of their own ([`SearchError`],
/// [`LogQueryError`], [`TakePrekeysError`]) convert into it, keeping the
/// code and message.
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
    /// The client sent more requests than its limit allows.
    #[error("rate limited: retry in {retry_after_ms} ms")]
    RateLimited {
        /// Milliseconds until the next request is allowed.
        retry_after_ms: u64,
    },
    /// Too many requests are in flight; try again shortly.
    #[error("busy: too many requests in flight")]
    Busy,
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
            Self::Store(StoreError::Postgres(_)) => "database_unavailable",
            Self::Store(_) => "internal",
            Self::RateLimited { .. } => "rate_limited",
            Self::Busy => "busy",
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
            Self::Store(StoreError::Postgres(_)) => 503,
            Self::Store(_) => 500,
            Self::RateLimited { .. } => 429,
            Self::Busy => 503,
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
            other => Self::Store(log_store_error(other)),
        }
    }
}

/// A transparency-log failure other than a range error, as storage failure.
fn log_store_error(e: LogError) -> StoreError {
    match e {
        LogError::Storage(e) => e,
        other => StoreError::Corrupt {
            tree: "translog",
            message: other.to_string(),
        },
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
    /// Requests per client address over HTTP (every route but
    /// `/v1/health`); over it the answer is `429 rate_limited` with
    /// `Retry-After`. Defaults to [`DEFAULT_HTTP_RATE`]: 600 a minute,
    /// bursts of 120.
    pub http_rate: RateLimit,
    /// Prekey bundle fetches (`GET /v1/registry/prekeys/{amid}`, each of
    /// which uses up a one-time key) per client address, on top of
    /// [`http_rate`](Self::http_rate). A refused fetch uses up nothing.
    /// Defaults to [`DEFAULT_PREKEY_RATE`]: 10 a minute, bursts of 10.
    pub prekey_rate: RateLimit,
    /// Requests per peer on `/agentmesh/registry/1`; over it the answer is
    /// the error `rate_limited`. Defaults to [`DEFAULT_HTTP_RATE`].
    pub p2p_rate: RateLimit,
    /// Client addresses (or peers) whose buckets are remembered, per
    /// limiter. Defaults to [`DEFAULT_RATE_MAX_CLIENTS`].
    pub rate_max_clients: usize,
    /// HTTP requests served at once; further ones are answered at once with
    /// `503 busy`. Defaults to [`DEFAULT_HTTP_MAX_IN_FLIGHT`].
    pub http_max_in_flight: usize,
    /// PostgreSQL URL (`postgres://user@host/db`) of a database shared with
    /// other bootstrap nodes. Defaults to none: an embedded sled database
    /// under `<data dir>/registry`.
    pub database: Option<String>,
}

/// Default [`RegistrySettings::http_rate`] and
/// [`RegistrySettings::p2p_rate`]: 600 requests a minute, bursts of 120.
pub const DEFAULT_HTTP_RATE: RateLimit = RateLimit::new(600, 120);
/// Default [`RegistrySettings::prekey_rate`]: 10 fetches a minute, bursts
/// of 10.
pub const DEFAULT_PREKEY_RATE: RateLimit = RateLimit::new(10, 10);
/// Default [`RegistrySettings::rate_max_clients`].
pub const DEFAULT_RATE_MAX_CLIENTS: usize = 65_536;
/// Default [`RegistrySettings::http_max_in_flight`].
pub const DEFAULT_HTTP_MAX_IN_FLIGHT: usize = 256;

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
            http_rate: DEFAULT_HTTP_RATE,
            prekey_rate: DEFAULT_PREKEY_RATE,
            p2p_rate: DEFAULT_HTTP_RATE,
            rate_max_clients: DEFAULT_RATE_MAX_CLIENTS,
            http_max_in_flight: DEFAULT_HTTP_MAX_IN_FLIGHT,
            database: None,
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

/// Key in `meta` of the root keystore (encrypted) shared by the bootstrap
/// nodes of one database.
const SHARED_ROOT_KEY: &[u8] = b"root_keystore";

/// Writes the database's root keystore to `root_dir` when this node has
/// none yet, so a second bootstrap node joins with the same root.
fn adopt_shared_root(store: &Store, root_dir: &Path) -> Result<(), OpenError> {
    let path = root_dir.join(KEYSTORE_FILE);
    if path.exists() {
        return Ok(());
    }
    if let Some(bytes) = store.meta.get(SHARED_ROOT_KEY)? {
        write_keystore(&path, &bytes)?;
        info!(path = %path.display(), "adopted the registry root key of the shared database");
    }
    Ok(())
}

/// Stores this node's root keystore in the shared database when it holds
/// none; a node whose root differs from the database's adopts the
/// database's if it has just created its own, and refuses to start if not.
fn publish_root(
    store: &Store,
    root_dir: &Path,
    root: Keystore,
    created: bool,
    pass: &Passphrase,
) -> Result<Keystore, OpenError> {
    let path = root_dir.join(KEYSTORE_FILE);
    let local = std::fs::read(&path).map_err(|source| KeystoreError::Io {
        path: path.clone(),
        source,
    })?;
    store
        .meta
        .compare_and_swap(SHARED_ROOT_KEY, None, Some(&local))?;
    let shared = store.meta.get(SHARED_ROOT_KEY)?.unwrap_or_default();
    if shared == local {
        return Ok(root);
    }
    let theirs = Keystore::decrypt(&shared, pass)?;
    if theirs.identity().amid() == root.identity().amid() {
        return Ok(root);
    }
    if !created {
        return Err(OpenError::RootMismatch(path));
    }
    // Another node created the shared root a moment before this one.
    write_keystore(&path, &shared)?;
    info!(root = %theirs.identity().amid(), "adopted the registry root key of the shared database");
    Ok(theirs)
}

/// Writes an encrypted keystore readable by its owner only.
fn write_keystore(path: &Path, bytes: &[u8]) -> Result<(), OpenError> {
    let io = |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
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
        if self.inner.store.mark_seen(&req.signature, now_ms)? {
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
        let out = match body.op {
            Operation::Register(r) => Applied::Registered(self.register(req, &signer, r, now_ms)?),
            Operation::Status { presence } => {
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
