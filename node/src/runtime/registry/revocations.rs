//! Revocations: synced from the registry (its list, or key by key) or the
//! DHT, and checked before a KNOCK showing an unchecked chain is decided.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use agentmesh_dht::now_ms;

use crate::{
    events::NodeEvent,
    identity::Amid,
    knock::SignedKnock,
    registry::{protocol::Request, revocation_namespace, SignedRevocation},
    runtime::{trust, Command, Shared},
};

use super::{call, registry_peer, registry_root, RegistryClientError, CALL_TIMEOUT};

/// Most keys asked about one by one in a sync, when the registry does not
/// serve its whole list (below its per-peer burst); the longest unchecked
/// go first.
const MAX_KEYS_PER_SYNC: usize = 64;
/// How long a KNOCK waits for the registry's word on a chain not checked
/// before (the initiator waits 15 s for the decision).
const KNOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most KNOCKs waiting on the registry at once; others are decided on the
/// local revocation set alone.
pub(in crate::runtime) const MAX_KNOCK_CHECKS: usize = 8;
/// The registry's code for a request it does not serve.
const INVALID_REQUEST: &str = "invalid_request";
/// The registry's code for a key it has no record of.
const UNKNOWN_KEY: &str = "unknown_agent";

/// Where a revocation sync got its revocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevocationSource {
    /// The registry's whole list (its CRL).
    Crl,
    /// The registry, key by key.
    Registry,
    /// The registry's records in the DHT, key by key (the registry was
    /// not reached).
    Dht,
}

/// What a revocation sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RevocationSync {
    /// Where the revocations came from.
    pub source: RevocationSource,
    /// Revocations listed, or keys asked about.
    pub checked: usize,
    /// Revocations believed that were not in the local set yet.
    pub added: usize,
    /// Revocations that do not verify under the pinned root: dropped.
    pub refused: usize,
}

impl RevocationSync {
    fn new(source: RevocationSource) -> Self {
        Self {
            source,
            checked: 0,
            added: 0,
            refused: 0,
        }
    }

    /// Checks `signed` against the pinned root and adds it to the set.
    fn believe(&mut self, shared: &Shared, signed: &SignedRevocation, from: &str) {
        match shared.believe(signed, from) {
            Ok(true) => self.added += 1,
            Ok(false) => {}
            Err(trust::TrustError::BadRevocation { .. }) => self.refused += 1,
            Err(e) => warn!(error = %e, "revocation not stored"),
        }
    }
}

fn signed_of(hex_cbor: Option<&str>) -> Option<SignedRevocation> {
    let bytes = hex::decode(hex_cbor?).ok()?;
    SignedRevocation::from_bytes(&bytes).ok()
}

/// Syncs the local revocation set with the registry: its root checked
/// against the pin first, then its whole list, or key by key.
async fn sync(shared: &Shared) -> Result<RevocationSync, RegistryClientError> {
    let root = match registry_root(shared).await {
        Ok(root) => root,
        // The registry is down: its records in the DHT, under the pin.
        Err(RegistryClientError::Unreachable(e)) if shared.registry_root().is_some() => {
            debug!(error = %e, "registry unreachable; revocations from the DHT");
            return by_key(shared, RevocationSource::Dht).await;
        }
        Err(e) => return Err(e),
    };
    match call(shared, Request::Crl).await {
        Ok(crl) => from_crl(shared, &root, &crl),
        Err(RegistryClientError::Refused { code, .. }) if code == INVALID_REQUEST => {
            by_key(shared, RevocationSource::Registry).await
        }
        Err(e) => Err(e),
    }
}

/// Believes the revocations of a CRL that verify under the pinned `root`.
fn from_crl(
    shared: &Shared,
    root: &VerifyingKey,
    crl: &serde_json::Value,
) -> Result<RevocationSync, RegistryClientError> {
    let issuer = crl["issuer_key"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| RegistryClientError::Answer("the CRL names no issuer".into()))?;
    if issuer != root.to_bytes() {
        // Refused, with a warning and an event.
        shared.pin_root(&issuer)?;
    }
    let entries = crl["revocations"]
        .as_array()
        .ok_or_else(|| RegistryClientError::Answer("the CRL lists no revocations".into()))?;
    let mut done = RevocationSync::new(RevocationSource::Crl);
    for entry in entries {
        done.checked += 1;
        match signed_of(entry["signed"].as_str()) {
            Some(signed) => done.believe(shared, &signed, "crl"),
            None => {
                warn!("a CRL entry does not decode; dropped");
                done.refused += 1;
            }
        }
    }
    Ok(done)
}

/// Asks about the followed keys one by one: the registry, or from the
/// first key it does not answer on, the DHT.
async fn by_key(
    shared: &Shared,
    mut source: RevocationSource,
) -> Result<RevocationSync, RegistryClientError> {
    let keys = shared.watch().due(MAX_KEYS_PER_SYNC);
    let mut done = RevocationSync::new(source);
    check_keys(shared, &keys, &mut source, &mut done).await;
    done.source = source;
    Ok(done)
}

/// Asks about each of `keys` at `source` (switching from the registry to
/// the DHT when the registry is not reached).
async fn check_keys(
    shared: &Shared,
    keys: &[[u8; 32]],
    source: &mut RevocationSource,
    done: &mut RevocationSync,
) {
    for key in keys {
        let Ok(amid) = Amid::from_bytes(key) else {
            continue;
        };
        if shared.is_revoked(crate::trust::cert::Revocable::Key(key)) {
            continue;
        }
        if *source != RevocationSource::Dht {
            match call(shared, Request::Revocation { amid }).await {
                Ok(v) => {
                    done.checked += 1;
                    if v["revoked"].as_bool() == Some(true) {
                        match signed_of(v["signed"].as_str()) {
                            Some(signed) => done.believe(shared, &signed, "registry"),
                            None => {
                                warn!(%amid, "the registry says revoked but shows no revocation; not believed");
                                done.refused += 1;
                            }
                        }
                    }
                    shared.watch().checked(key, now_ms());
                    continue;
                }
                Err(RegistryClientError::Refused { code, .. }) if code == UNKNOWN_KEY => {
                    done.checked += 1;
                    shared.watch().checked(key, now_ms());
                    continue;
                }
                Err(RegistryClientError::Refused { code, message }) => {
                    // Rate limited, say: the rest waits for the next sync.
                    debug!(%code, %message, "revocation status not given; next sync");
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "registry unreachable; revocations from the DHT");
                    *source = RevocationSource::Dht;
                }
            }
        }
        let Some(signed) = dht_revocation(shared, &amid).await else {
            done.checked += 1;
            shared.watch().checked(key, now_ms());
            continue;
        };
        done.checked += 1;
        done.believe(shared, &signed, "dht");
        shared.watch().checked(key, now_ms());
    }
}

/// The revocation of `subject` the registry node published in the DHT.
async fn dht_revocation(shared: &Shared, subject: &Amid) -> Option<SignedRevocation> {
    let registry = registry_peer(shared.config.registry.as_ref()?).ok()?;
    let (reply, rx) = oneshot::channel();
    shared
        .commands
        .send(Command::GetRecord {
            namespace: revocation_namespace(subject.as_bytes()),
            subject: registry,
            reply,
        })
        .await
        .ok()?;
    let record = tokio::time::timeout(CALL_TIMEOUT, rx).await.ok()?.ok()??;
    SignedRevocation::from_bytes(&record.payload).ok()
}

/// Syncs, logs the outcome and reports it to the application.
pub(super) async fn sync_and_report(
    shared: &Shared,
) -> Result<RevocationSync, RegistryClientError> {
    let done = sync(shared).await?;
    if done.refused > 0 {
        warn!(
            refused = done.refused,
            "revocations not signed by the pinned registry root were dropped"
        );
    }
    info!(
        source = ?done.source, checked = done.checked, added = done.added,
        "revocations synced"
    );
    shared.emit(NodeEvent::RevocationsSynced(done.clone()));
    Ok(done)
}

/// Before a KNOCK is decided: when it shows a certificate chain valid under
/// the pinned root that this node has not checked before, asks the registry
/// (or else the DHT) whether the chain's keys are revoked, waiting at most
/// [`KNOCK_CHECK_TIMEOUT`]. The keys are followed by later syncs.
pub(in crate::runtime) async fn check_on_knock(shared: &Shared, knock: &SignedKnock, now: u64) {
    if shared.config.registry.is_none() {
        return;
    }
    let Some(root) = shared.registry_root() else {
        return;
    };
    // Only a signed KNOCK whose chain verifies under the pinned root makes
    // the node ask the registry, so strangers cannot make it send requests;
    // the signatures are checked again by the decision.
    let Ok(body) = knock.verify() else {
        return;
    };
    let Some(chain) = &body.credentials.chain else {
        return;
    };
    if chain.verify(&body.from, &root, now, |_| false).is_err() {
        return;
    }
    let Ok(_permit) = shared.knock_checks.try_acquire() else {
        debug!(from = %body.from.short(), "too many KNOCKs waiting on the registry; decided on the local set");
        return;
    };
    let keys = {
        let mut watch = shared.watch();
        if !watch.first_sight(chain, now) {
            return;
        }
        let keys = trust::chain_keys(chain);
        for key in &keys {
            watch.watch(*key, now);
        }
        keys
    };
    let mut source = RevocationSource::Registry;
    let mut done = RevocationSync::new(source);
    let checked = check_keys(shared, &keys, &mut source, &mut done);
    if tokio::time::timeout(KNOCK_CHECK_TIMEOUT, checked)
        .await
        .is_err()
    {
        debug!(from = %body.from.short(), "no word from the registry in time; decided on the local set");
    } else if done.added > 0 {
        info!(from = %body.from.short(), added = done.added, "revocation learned before a KNOCK");
    }
}
