//! [`RegistryError`]: why an operation was refused, with its stable code
//! and HTTP status, and the conversions from the errors beneath it.

use agentmesh_node::{registry::RegistryError as WireError, trust::cert::CertError};

use crate::translog::LogError;

use super::StoreError;

/// Why a registry operation was refused. Each has a stable `code` and an HTTP
/// status. Operations with errors of their own
/// ([`SearchError`](super::SearchError),
/// [`LogQueryError`](super::LogQueryError),
/// [`TakePrekeysError`](super::TakePrekeysError)) convert into it, keeping the
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
pub(super) fn log_store_error(e: LogError) -> StoreError {
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
