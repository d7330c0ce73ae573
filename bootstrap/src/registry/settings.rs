//! [`RegistrySettings`] and their defaults.

use std::time::Duration;

use agentmesh_node::{crypto::keystore::KdfParams, knock::ratelimit::RateLimit};

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
    /// Prekey bundle fetches (`GET /v1/registry/prekeys/{amid}`) per client
    /// address, on top of [`http_rate`](Self::http_rate).
    /// Defaults to [`DEFAULT_PREKEY_RATE`]: 10 a minute, bursts of 10.
    pub prekey_rate: RateLimit,
    /// Requests per peer on `/agentmesh/registry/1`; over it the answer is
    /// the error `rate_limited`. Defaults to [`DEFAULT_HTTP_RATE`].
    pub p2p_rate: RateLimit,
    /// Signed requests per signing agent, over both front ends together and
    /// whatever its client addresses; over it the answer is
    /// `rate_limited`. Defaults to [`DEFAULT_SIGNER_RATE`]: 120 a minute,
    /// bursts of 60.
    pub signer_rate: RateLimit,
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
/// Default [`RegistrySettings::signer_rate`]: 120 signed requests a
/// minute, bursts of 60.
pub const DEFAULT_SIGNER_RATE: RateLimit = RateLimit::new(120, 60);
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
            signer_rate: DEFAULT_SIGNER_RATE,
            rate_max_clients: DEFAULT_RATE_MAX_CLIENTS,
            http_max_in_flight: DEFAULT_HTTP_MAX_IN_FLIGHT,
            database: None,
        }
    }
}
