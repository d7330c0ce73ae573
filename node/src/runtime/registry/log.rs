//! The registry log's consistency: each tree head it serves must extend the
//! last one this node checked.
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use agentmesh_transports::codec;

use crate::{
    registry::protocol::Request,
    runtime::Shared,
    trust::transparency::{ConsistencyProof, SignedTreeHead},
};

use super::{call, registry_root, RegistryClientError};

/// Where the last registry log head this node checked is kept.
const LOG_HEAD_KEY: &[u8] = b"registry/log_head";

/// What [`Node::check_registry_log`](crate::Node::check_registry_log) found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogCheck {
    /// The first head seen (signed by the pinned root): kept, to check
    /// later heads against.
    First {
        /// Its size.
        size: u64,
    },
    /// The head now extends the one seen before: a consistency proof
    /// between them verified (or they are the same tree).
    Consistent {
        /// Size of the head seen before.
        from: u64,
        /// Size of the head now (kept from now on).
        to: u64,
    },
}

/// Fetches the registry's signed log head, checks it against the pinned
/// root and, against the head kept from the last check, asks for and
/// verifies a consistency proof. A head that is no extension of the kept
/// one is refused ([`RegistryClientError::LogForked`]) and the kept head
/// stays: every later check compares against it too.
pub(super) async fn check_log(shared: &Shared) -> Result<LogCheck, RegistryClientError> {
    let root = registry_root(shared).await?;
    let body = call(shared, Request::LogHead { size: None }).await?;
    let head: SignedTreeHead = serde_json::from_value(body)
        .map_err(|e| RegistryClientError::Answer(format!("log head: {e}")))?;
    head.verify(&root)
        .map_err(|e| RegistryClientError::Answer(format!("log head: {e}")))?;
    let seen: Option<SignedTreeHead> = shared
        .db
        .get(LOG_HEAD_KEY)
        .map_err(|e| RegistryClientError::Db(e.to_string()))?
        .and_then(|b| codec::decode(&b, 1024).ok());
    let keep = |h: &SignedTreeHead| -> Result<(), RegistryClientError> {
        let bytes = codec::encode(h).map_err(|e| RegistryClientError::Db(e.to_string()))?;
        shared
            .db
            .insert(LOG_HEAD_KEY, bytes)
            .map_err(|e| RegistryClientError::Db(e.to_string()))?;
        Ok(())
    };
    let Some(seen) = seen else {
        keep(&head)?;
        return Ok(LogCheck::First { size: head.size });
    };
    let forked = |why: String| RegistryClientError::LogForked {
        seen: seen.size,
        now: head.size,
        why,
    };
    if head.size < seen.size {
        return Err(forked("the log shrank".into()));
    }
    if head.size == seen.size {
        if head.root != seen.root {
            return Err(forked("same size, another root".into()));
        }
        return Ok(LogCheck::Consistent {
            from: seen.size,
            to: head.size,
        });
    }
    let body = call(
        shared,
        Request::LogConsistency {
            first: seen.size,
            second: Some(head.size),
        },
    )
    .await?;
    let proof: ConsistencyProof = serde_json::from_value(body["proof"].clone())
        .map_err(|e| RegistryClientError::Answer(format!("consistency proof: {e}")))?;
    proof
        .verify(&seen, &head)
        .map_err(|e| forked(format!("the consistency proof does not verify: {e}")))?;
    keep(&head)?;
    Ok(LogCheck::Consistent {
        from: seen.size,
        to: head.size,
    })
}

/// [`check_log`], logged: a fork loudly.
pub(super) async fn check_log_and_report(shared: &Shared) {
    match check_log(shared).await {
        Ok(check) => debug!(?check, "registry log checked"),
        Err(e @ RegistryClientError::LogForked { .. }) => {
            warn!(error = %e, "the registry's transparency log is not consistent with what it served before")
        }
        Err(e) => debug!(error = %e, "registry log not checked"),
    }
}
