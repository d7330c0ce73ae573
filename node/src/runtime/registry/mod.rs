//! The node's side of its registry (the bootstrap node named by
//! [`Config::registry`](super::Config)): session receipts at the end of a
//! conversation, filed over `/agentmesh/registry/1`; the credentials its
//! KNOCKs show, renewed before their reputation attestation expires; and
//! revocations, synced every [`Config::revocation_sync`](super::Config)
//! and before a KNOCK showing a certificate chain not checked before is
//! decided.
//!
//! A sync first asks the registry its root key and checks it against the
//! pinned one (see [`super::trust`]); then it fetches the revocation list
//! ([`Request::Crl`]) or, from a registry that does not serve it, the
//! status of each followed key ([`Request::Revocation`]); from an
//! unreachable registry, the revocation records it published in the DHT.
//! Each revocation is checked against the pinned root before it is
//! believed; one that does not verify is logged and dropped.

use std::{sync::Arc, time::Duration};

use ed25519_dalek::VerifyingKey;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use tracing::{debug, info, warn};

use agentmesh_dht::now_ms;

use super::{mailbox, trust, Node, Shared};
use crate::{
    diagnostics::ClockReading,
    identity::Amid,
    registry::{
        protocol::{self, ProtocolError, Request, Response},
        Operation, SignedRequest,
    },
    trust::credentials,
    trust::receipts::Held,
};

mod bundle;

pub(crate) use bundle::card_from_registry;
mod filing;
mod log;
mod renewal;
mod revocations;

pub(super) use filing::{end_body, on_countersigned, on_end, on_proposal, propose};
use filing::{file_pending, Deferred};
pub use log::LogCheck;
use log::{check_log, check_log_and_report};
pub use renewal::CredentialsState;
use renewal::{reload, renew};
use revocations::sync_and_report;
pub(super) use revocations::{check_on_knock, MAX_KNOCK_CHECKS};
pub use revocations::{RevocationSource, RevocationSync};

/// How long one registry exchange may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before filing again after the registry could not be reached.
const RETRY: Duration = Duration::from_secs(30);
/// Pause before asking for credentials again after the registry refused.
const RETRY_REFUSED: Duration = Duration::from_secs(600);

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryClientError {
    /// No registry is configured ([`Config::registry`](super::Config)).
    #[error("no registry configured")]
    NotConfigured,
    /// The registry address does not end in `/p2p/<peer id>`.
    #[error("the registry address {0} does not end in /p2p/<peer id>")]
    Address(Multiaddr),
    /// The registry was not reached or did not answer.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// The registry refused the request.
    #[error("registry refused: {code}: {message}")]
    Refused {
        /// The registry's stable error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The answer is not what the protocol promises.
    #[error("unexpected answer from the registry: {0}")]
    Answer(String),
    /// The credentials issued do not verify against the registry root.
    #[error("credentials do not verify: {0}")]
    Credentials(#[from] credentials::CredentialError),
    /// The credentials could not be read or stored.
    #[error(transparent)]
    Stored(#[from] credentials::StoredCredentialsError),
    /// The credentials on disk are another agent's.
    #[error("the stored credentials are another agent's")]
    NotOurs,
    /// The registry names a root key other than the pinned one.
    #[error(transparent)]
    Root(#[from] trust::RootPinError),
    /// The revocation set could not be updated.
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    /// The registry's transparency log is not an extension of the one this
    /// node saw before: a head it signed earlier is not a prefix of its
    /// head now (the log forked, shrank or was rewritten).
    #[error("the registry's log forked: the head of size {seen} seen before is not a prefix of the head of size {now}: {why}")]
    LogForked {
        /// Size of the head seen before (kept).
        seen: u64,
        /// Size of the head the registry serves now.
        now: u64,
        /// What did not hold.
        why: String,
    },
    /// The node's database failed.
    #[error("database: {0}")]
    Db(String),
}

impl From<ProtocolError> for RegistryClientError {
    fn from(e: ProtocolError) -> Self {
        Self::Unreachable(e.to_string())
    }
}

/// The registry's peer id and address, from its multiaddr.
pub(super) fn registry_peer(addr: &Multiaddr) -> Result<PeerId, RegistryClientError> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err(RegistryClientError::Address(addr.clone())),
    }
}

/// Connects to the configured registry; its peer id.
async fn connect_registry(shared: &Shared) -> Result<PeerId, RegistryClientError> {
    let addr = shared
        .config
        .registry
        .clone()
        .ok_or(RegistryClientError::NotConfigured)?;
    let peer = registry_peer(&addr)?;
    mailbox::connect(shared, peer, vec![addr])
        .await
        .map_err(|e| RegistryClientError::Unreachable(e.to_string()))?;
    Ok(peer)
}

/// Sends `request` to the configured registry; its JSON answer.
async fn call(shared: &Shared, request: Request) -> Result<serde_json::Value, RegistryClientError> {
    let peer = connect_registry(shared).await?;
    let mut control = shared.control.clone();
    match protocol::call(&mut control, peer, &request, CALL_TIMEOUT).await? {
        Response::Ok { body } => Ok(body),
        Response::Error { code, message } => Err(RegistryClientError::Refused { code, message }),
    }
}

/// The root key credentials are checked against: the pinned one, or else
/// the one the registry names, pinned from then on.
async fn root(shared: &Shared) -> Result<VerifyingKey, RegistryClientError> {
    if let Some(key) = shared.registry_root() {
        return Ok(key);
    }
    registry_root(shared).await
}

/// Asks the registry its root key and checks it against the pin (pinning
/// it when none is).
async fn registry_root(shared: &Shared) -> Result<VerifyingKey, RegistryClientError> {
    let v = call(shared, Request::Root).await?;
    let offered = v["root_key"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .or_else(|| {
            v["root"]
                .as_str()
                .and_then(|s| s.parse::<Amid>().ok())
                .map(|a| *a.as_bytes())
        })
        .ok_or_else(|| RegistryClientError::Answer("no root key".into()))?;
    Ok(shared.pin_root(&offered)?)
}

/// Files receipts as they are signed, renews credentials every
/// [`Config::credentials_refresh`](super::Config) and syncs revocations
/// every [`Config::revocation_sync`](super::Config), while a registry is
/// configured.
pub(super) async fn run(shared: Arc<Shared>) {
    let refresh = shared.config.credentials_refresh;
    let revocation_sync = shared
        .config
        .revocation_sync
        .filter(|every| !every.is_zero());
    let mut next_renewal = tokio::time::Instant::now();
    let mut next_sync = revocation_sync.map(|_| tokio::time::Instant::now());
    let mut retry_filing = false;
    let mut deferred = Deferred::new();
    // The card last uploaded with the prekey bundle.
    let mut uploaded = None;
    let mut registered = false;
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_renewal {
            next_renewal = match renew(&shared).await {
                Ok(_) => {
                    registered = true;
                    now + refresh
                }
                Err(e @ RegistryClientError::Refused { .. }) => {
                    // Not registered yet, say: asking again at once would
                    // get the same answer.
                    info!(error = %e, "credentials not renewed");
                    now + RETRY_REFUSED.min(refresh)
                }
                Err(e) => {
                    warn!(error = %e, "credentials not renewed");
                    now + RETRY.min(refresh)
                }
            };
        }
        if let (Some(at), Some(every)) = (next_sync, revocation_sync) {
            let now = tokio::time::Instant::now();
            if now >= at {
                next_sync = Some(match sync_and_report(&shared).await {
                    Ok(_) => {
                        check_log_and_report(&shared).await;
                        now + every
                    }
                    Err(e @ RegistryClientError::Root(_)) => {
                        warn!(error = %e, "revocations not synced");
                        now + every
                    }
                    Err(e) => {
                        warn!(error = %e, "revocations not synced");
                        now + RETRY.min(every)
                    }
                });
            }
        }
        if registered || shared.registered.load(std::sync::atomic::Ordering::Relaxed) {
            // A changed card goes to the registry too (the card publisher
            // wakes this task); refused while not registered.
            match bundle::upload_if_changed(&shared, &mut uploaded).await {
                Ok(_) => registered = true,
                Err(e) => debug!(error = %e, "prekey bundle not uploaded"),
            }
        }
        if retry_filing || !shared.receipts.pending().is_empty() {
            retry_filing = !file_pending(&shared, &mut deferred).await;
        }
        let mut wake = next_renewal;
        if let Some(at) = next_sync {
            wake = wake.min(at);
        }
        if retry_filing {
            wake = wake.min(tokio::time::Instant::now() + RETRY);
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.registry_wake.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

impl Node {
    /// The session receipts this node holds (both sides signed), and where
    /// each stands with the registry.
    pub fn receipts(&self) -> Vec<Held> {
        self.shared
            .receipts
            .all()
            .into_iter()
            .map(|(_, h)| h)
            .collect()
    }

    /// Asks the configured registry ([`Config::registry`](super::Config))
    /// over libp2p; its JSON answer.
    pub async fn registry_call(
        &self,
        request: Request,
    ) -> Result<serde_json::Value, RegistryClientError> {
        call(&self.shared, request).await
    }

    /// Registers this agent with the configured registry (or updates its
    /// entry): a request signed with the agent's key. Without
    /// `capabilities`, the card's are registered.
    pub async fn register(
        &self,
        display_name: &str,
        capabilities: Option<Vec<String>>,
    ) -> Result<serde_json::Value, RegistryClientError> {
        let capabilities = capabilities.unwrap_or_else(|| self.shared.config.capabilities.clone());
        let mut registration = crate::registry::Registration::new(display_name, capabilities);
        registration.relays = self
            .shared
            .config
            .relays
            .iter()
            .map(ToString::to_string)
            .collect();
        let signed = SignedRequest::sign(
            &self.shared.identity,
            Operation::Register(registration),
            now_ms(),
        )
        .map_err(|e| RegistryClientError::Answer(e.to_string()))?;
        let mut answer = call(&self.shared, Request::Signed { request: signed }).await?;
        // Registered: the prekey bundle and card follow.
        self.shared
            .registered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.registry_wake.notify_one();
        // An agent that rotated its key takes its old registration along.
        if !self.shared.rotations.is_empty() {
            match self.move_registration().await {
                Ok(moved) => answer["rotated"] = moved,
                // None of the old keys was registered: nothing to move.
                Err(RegistryClientError::Refused { code, .. }) if code == "unknown_agent" => {}
                Err(e) => warn!(error = %e, "registration not moved to the new key"),
            }
        }
        Ok(answer)
    }

    /// Moves the registration of the keys this agent rotated away from
    /// to its key now (registry operation `rotate`): the record, a tier 1
    /// certificate issued again for the new key, and the reputation
    /// history; the old key is revoked. Does nothing (`"moved": false`)
    /// when it moved before. [`Node::register`] calls it for an agent that
    /// rotated.
    pub async fn move_registration(&self) -> Result<serde_json::Value, RegistryClientError> {
        let rotations = self
            .shared
            .rotations
            .iter()
            .map(|r| hex::encode(r.to_bytes()))
            .collect();
        let signed = SignedRequest::sign(
            &self.shared.identity,
            Operation::Rotate { rotations },
            now_ms(),
        )
        .map_err(|e| RegistryClientError::Answer(e.to_string()))?;
        let answer = call(&self.shared, Request::Signed { request: signed }).await?;
        if answer["moved"] == true && answer["tier"] != "anonymous" {
            // The new key's certificate: shown in the next KNOCKs.
            if let Err(e) = renew(&self.shared).await {
                warn!(error = %e, "credentials of the new key not fetched");
            }
        }
        Ok(answer)
    }

    /// Fetches fresh credentials from the configured registry now (the
    /// node also does so every [`Config::credentials_refresh`](super::Config)),
    /// checks them, stores them in the data directory and shows them in
    /// the next KNOCKs.
    pub async fn renew_credentials(&self) -> Result<CredentialsState, RegistryClientError> {
        renew(&self.shared).await
    }

    /// Reads the credentials stored in the data directory (by
    /// `agentmesh verify`) again and shows them in the next KNOCKs;
    /// `None` when none are stored.
    pub fn reload_credentials(&self) -> Result<Option<CredentialsState>, RegistryClientError> {
        reload(&self.shared)
    }

    /// Syncs the local revocation set with the configured registry now (the
    /// node also does so every [`Config::revocation_sync`](super::Config)):
    /// checks the root it names against the pinned one
    /// ([`RegistryClientError::Root`] when it differs: nothing is
    /// believed), then believes every revocation it serves that verifies
    /// under the pinned root. Also reported as
    /// [`NodeEvent::RevocationsSynced`](crate::NodeEvent::RevocationsSynced).
    pub async fn sync_revocations(&self) -> Result<RevocationSync, RegistryClientError> {
        sync_and_report(&self.shared).await
    }

    /// Reads the configured registry's clock once ([`Request::Time`]),
    /// connected first so that the dial is not in the round trip: when
    /// the request left (our clock), the round trip, and the registry's
    /// time. A registry that does not tell its time refuses with
    /// `invalid_request` ([`RegistryClientError::Refused`]).
    pub async fn registry_clock(&self) -> Result<ClockReading, RegistryClientError> {
        let peer = connect_registry(&self.shared).await?;
        let mut control = self.shared.control.clone();
        let sent_ms = now_ms();
        let started = std::time::Instant::now();
        let answer = protocol::call(&mut control, peer, &Request::Time, CALL_TIMEOUT).await?;
        let rtt = started.elapsed();
        let body = match answer {
            Response::Ok { body } => body,
            Response::Error { code, message } => {
                return Err(RegistryClientError::Refused { code, message })
            }
        };
        let remote_ms = body["time_ms"]
            .as_u64()
            .ok_or_else(|| RegistryClientError::Answer(format!("no time_ms in {body}")))?;
        Ok(ClockReading::new(
            sent_ms,
            rtt.as_millis() as u64,
            remote_ms,
        ))
    }

    /// Checks the registry's transparency log against the head this node
    /// kept from its last check (the node also does so after each
    /// revocation sync): the registry's head now must be signed by the
    /// pinned root and extend the kept one, by a consistency proof the
    /// registry serves. See [`LogCheck`]; a fork is
    /// [`RegistryClientError::LogForked`].
    pub async fn check_registry_log(&self) -> Result<LogCheck, RegistryClientError> {
        check_log(&self.shared).await
    }

    /// The pinned registry root key: the configured one, or the one the
    /// registry named first. `None` until one is known.
    pub fn registry_root(&self) -> Option<Amid> {
        self.shared
            .registry_root()
            .and_then(|k| Amid::from_bytes(&k.to_bytes()).ok())
    }
}
