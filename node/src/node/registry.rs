//! The node's side of its registry (the bootstrap node named by
//! [`Config::registry`](super::Config)): session receipts at the end of a
//! conversation, filed over `/agentmesh/registry/1`, and the credentials
//! its KNOCKs show, renewed before their reputation attestation expires.

use std::{collections::HashMap, sync::Arc, time::Duration};

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use tracing::{debug, info, warn};

use agentmesh_dht::now_ms;

use super::{mailbox, Node, Shared};
use crate::{
    credentials::{self, Checked, Credentials},
    envelope::SessionId,
    events::NodeEvent,
    identity::Amid,
    policy::Tier,
    receipts::{self, Filing, Held, Proposal, Proposed, PROPOSAL_TTL_MS},
    registry::{
        protocol::{self, ProtocolError, Request, Response},
        Operation, SignedRequest,
    },
    session::SessionInfo,
    wire::MsgFrame,
};

/// How long one registry exchange may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before filing again after the registry could not be reached.
const RETRY: Duration = Duration::from_secs(30);
/// Pause before asking for credentials again after the registry refused.
const RETRY_REFUSED: Duration = Duration::from_secs(600);

/// Registry error codes that will not change if the same receipt is filed
/// again later.
const FINAL_REFUSALS: &[&str] = &[
    "bad_signature",
    "malformed_json",
    "invalid_request",
    "forbidden",
    "conflict",
    "revoked",
    "not_configured",
];

/// The registry's code for an agent it has no record of. A receipt it
/// refuses so is filed again, as one of the agents may register later,
/// until [`UNKNOWN_AGENT_GRACE_MS`] after the session ended; then the
/// refusal is final.
const UNKNOWN_AGENT: &str = "unknown_agent";
/// How long after its session ended a receipt naming an agent unknown to
/// the registry is still filed again.
const UNKNOWN_AGENT_GRACE_MS: u64 = 7 * 24 * 3_600_000;
/// Longest pause between filings of such a receipt (the pause doubles from
/// [`RETRY`]).
const RETRY_UNKNOWN_MAX: Duration = Duration::from_secs(3600);

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

/// Sends `request` to the configured registry; its JSON answer.
async fn call(shared: &Shared, request: Request) -> Result<serde_json::Value, RegistryClientError> {
    let addr = shared
        .config
        .registry
        .clone()
        .ok_or(RegistryClientError::NotConfigured)?;
    let peer = registry_peer(&addr)?;
    mailbox::connect(shared, peer, vec![addr])
        .await
        .map_err(|e| RegistryClientError::Unreachable(e.to_string()))?;
    let mut control = shared.control.clone();
    match protocol::call(&mut control, peer, &request, CALL_TIMEOUT).await? {
        Response::Ok { body } => Ok(body),
        Response::Error { code, message } => Err(RegistryClientError::Refused { code, message }),
    }
}

// ---- session receipts ----

/// Our receipt proposal as we end the session `info` (`completed`: with
/// an end message, or closing it abruptly), kept until the peer
/// countersigns it. `None` if it cannot be stored.
pub(super) fn propose(shared: &Shared, info: &SessionInfo, completed: bool) -> Option<Proposal> {
    let now = now_ms();
    let made = receipts::propose(&shared.identity, info, completed, now).and_then(|p| {
        let proposed = Proposed {
            body: p.body.clone(),
            signature: p.signature,
            peer: info.peer,
            role: info.role,
            expires_ms: now + PROPOSAL_TTL_MS,
        };
        shared.receipts.propose(&info.id, &proposed)?;
        Ok(p)
    });
    match made {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(peer = %info.peer.short(), error = %e, "no session receipt proposed");
            None
        }
    }
}

/// The body of our end message for the session `info`: our proposal of a
/// completed receipt, encoded; empty when there is none.
pub(super) fn end_body(shared: &Shared, info: &SessionInfo) -> Vec<u8> {
    propose(shared, info, true)
        .and_then(|p| p.to_bytes().ok())
        .unwrap_or_default()
}

/// The peer ended the session `info` with `data` in its end message:
/// countersigns the completed receipt it proposes.
pub(super) fn on_end(shared: &Arc<Shared>, info: &SessionInfo, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    match Proposal::from_bytes(data) {
        Ok(p) => on_proposal(shared, info, &p, true),
        Err(e) => warn!(peer = %info.peer.short(), error = %e, "malformed session receipt"),
    }
}

/// The peer ended the session `info` (`completed`: with an end message,
/// or closed it abruptly) and proposes `proposal`: countersigns it, keeps
/// the receipt, sends our signature back and files it.
pub(super) fn on_proposal(
    shared: &Arc<Shared>,
    info: &SessionInfo,
    proposal: &Proposal,
    completed: bool,
) {
    let signed = receipts::countersign(&shared.identity, info, proposal, completed, now_ms());
    let receipts::Countersigned { receipt, signature } = match signed {
        Ok(r) => r,
        Err(e) => {
            warn!(peer = %info.peer.short(), error = %e, "session receipt not countersigned");
            return;
        }
    };
    let held = Held {
        receipt,
        peer: info.peer,
        filing: Filing::Pending,
    };
    if let Err(e) = shared.receipts.hold(&info.id, &held) {
        warn!(error = %e, "session receipt not stored");
        return;
    }
    signed_event(shared, &info.peer, info.id);
    let (shared, peer, session) = (shared.clone(), info.peer, info.id);
    tokio::spawn(async move {
        let frame = MsgFrame::Countersigned { session, signature };
        if mailbox::send_frame(&shared, &peer, frame).await {
            debug!(peer = %peer.short(), "receipt countersignature sent");
        } else {
            debug!(peer = %peer.short(), "receipt countersignature not sent");
        }
    });
}

/// `from` countersigned the receipt we proposed for `session`.
pub(super) fn on_countersigned(
    shared: &Shared,
    from: &Amid,
    session: SessionId,
    signature: [u8; 64],
) {
    match shared.receipts.countersigned(&session, from, signature) {
        Ok(_) => signed_event(shared, from, session),
        Err(e) => debug!(peer = %from.short(), error = %e, "countersignature ignored"),
    }
}

fn signed_event(shared: &Shared, peer: &Amid, session: SessionId) {
    info!(peer = %peer.short(), session = %hex::encode(session.0), "session receipt signed by both sides");
    shared.emit(NodeEvent::ReceiptSigned {
        peer: *peer,
        session,
    });
    shared.registry_wake.notify_one();
}

/// Files `held` with the registry; where it stands afterwards
/// ([`Filing::Pending`]: the registry does not know one of the agents yet).
/// An error means the registry was not reached: try again later.
async fn file(shared: &Shared, held: &Held) -> Result<Filing, RegistryClientError> {
    let op = Operation::Session {
        receipt: held.receipt.clone(),
    };
    let now = now_ms();
    let request = SignedRequest::sign(&shared.identity, op, now)
        .map_err(|e| RegistryClientError::Answer(e.to_string()))?;
    match call(shared, Request::Signed { request }).await {
        Ok(_) => Ok(Filing::Filed),
        Err(RegistryClientError::Refused { code, message }) => {
            let in_grace = || {
                held.receipt
                    .verify()
                    .is_ok_and(|b| b.ended_ms.saturating_add(UNKNOWN_AGENT_GRACE_MS) > now)
            };
            if code == UNKNOWN_AGENT && in_grace() {
                info!(%message, "the registry does not know an agent of a session receipt yet; filing it again later");
                Ok(Filing::Pending)
            } else if code == UNKNOWN_AGENT || FINAL_REFUSALS.contains(&code.as_str()) {
                warn!(%code, %message, "the registry refused a session receipt");
                Ok(Filing::Refused { code })
            } else {
                Err(RegistryClientError::Refused { code, message })
            }
        }
        Err(e) => Err(e),
    }
}

/// Receipts put off because the registry did not know one of their
/// agents: when to file each again, and the pause before that.
type Deferred = HashMap<SessionId, (tokio::time::Instant, Duration)>;

/// Files every pending receipt that is due; returns whether all were
/// settled.
async fn file_pending(shared: &Shared, deferred: &mut Deferred) -> bool {
    let mut settled = true;
    for (session, held) in shared.receipts.pending() {
        let now = tokio::time::Instant::now();
        if deferred.get(&session).is_some_and(|(at, _)| *at > now) {
            settled = false;
            continue;
        }
        match file(shared, &held).await {
            Ok(Filing::Pending) => {
                settled = false;
                let pause = deferred
                    .get(&session)
                    .map_or(RETRY, |(_, p)| (*p * 2).min(RETRY_UNKNOWN_MAX));
                deferred.insert(session, (now + pause, pause));
                shared.emit(NodeEvent::ReceiptFiled {
                    peer: held.peer,
                    session,
                    filing: Filing::Pending,
                });
            }
            Ok(filing) => {
                deferred.remove(&session);
                if let Err(e) = shared.receipts.set_filing(&session, filing.clone()) {
                    warn!(error = %e, "receipt filing not recorded");
                }
                shared.emit(NodeEvent::ReceiptFiled {
                    peer: held.peer,
                    session,
                    filing,
                });
            }
            Err(e) => {
                debug!(error = %e, "session receipt not filed yet");
                settled = false;
                // The registry is down or unreachable: the others would
                // fail alike.
                break;
            }
        }
    }
    settled
}

// ---- credentials ----

/// The root key credentials are checked against: the configured one, or
/// the one the registry names.
async fn root(shared: &Shared) -> Result<ed25519_dalek::VerifyingKey, RegistryClientError> {
    if let Some(key) = shared.registry_root() {
        return Ok(key);
    }
    let v = call(shared, Request::Root).await?;
    v["root"]
        .as_str()
        .and_then(|s| s.parse::<Amid>().ok())
        .and_then(|a| a.verifying_key().ok())
        .ok_or_else(|| RegistryClientError::Answer("no root key".into()))
}

/// What [`Node::renew_credentials`] and [`Node::reload_credentials`]
/// installed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct CredentialsState {
    /// The tier the certificate chain proves.
    pub tier: Tier,
    /// The attested reputation.
    pub reputation: Option<credentials::Reputation>,
    /// When the reputation attestation expires, ms since the epoch.
    pub attestation_expires_ms: Option<u64>,
}

impl std::fmt::Display for CredentialsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tier = serde_json::to_value(self.tier).unwrap_or_default();
        write!(f, "tier {}", tier.as_str().unwrap_or("?"))?;
        if let Some(r) = self.reputation {
            write!(f, ", reputation {:.2}", r.as_f64())?;
        }
        if let Some(t) = self.attestation_expires_ms {
            let hours = t.saturating_sub(now_ms()) / 3_600_000;
            write!(f, ", attestation valid {hours} h more")?;
        }
        Ok(())
    }
}

fn state_of(checked: Checked, creds: &Credentials) -> CredentialsState {
    CredentialsState {
        tier: checked.tier,
        reputation: checked.reputation,
        attestation_expires_ms: creds.reputation.as_ref().and_then(|a| a.expires_ms()),
    }
}

/// Fetches fresh credentials from the registry, checks them against the
/// root key, stores them in the data directory and shows them in KNOCKs.
async fn renew(shared: &Shared) -> Result<CredentialsState, RegistryClientError> {
    let v = call(shared, Request::Credentials { amid: shared.amid }).await?;
    let bytes = v["credentials"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| RegistryClientError::Answer("credentials are not hex".into()))?;
    let creds =
        Credentials::from_bytes(&bytes).map_err(|e| RegistryClientError::Answer(e.to_string()))?;
    let key = root(shared).await?;
    let checked = credentials::check(
        &creds,
        &shared.amid,
        &key,
        creds.chain.is_some(),
        now_ms(),
        |_| false,
    )?;
    credentials::save(&shared.dir, &creds)?;
    Ok(install(shared, checked, creds))
}

fn install(shared: &Shared, checked: Checked, creds: Credentials) -> CredentialsState {
    let state = state_of(checked, &creds);
    if let Ok(mut c) = shared.credentials.write() {
        *c = creds;
    }
    info!(tier = ?state.tier, reputation = ?state.reputation.map(|r| r.as_f64()), "credentials installed");
    shared.emit(NodeEvent::CredentialsUpdated(state.clone()));
    state
}

/// Reads the credentials stored in the data directory and shows them in
/// KNOCKs; `None` when none are stored.
fn reload(shared: &Shared) -> Result<Option<CredentialsState>, RegistryClientError> {
    let Some(creds) = credentials::load(&shared.dir)? else {
        return Ok(None);
    };
    let subject = creds
        .chain
        .as_ref()
        .and_then(|c| c.0.first())
        .and_then(|c| c.certificate().ok())
        .map(|c| c.subject_key);
    if subject.is_some_and(|k| k != *shared.amid.as_bytes()) {
        return Err(RegistryClientError::NotOurs);
    }
    // Checked against the root when one is configured; otherwise shown as
    // stored (the receivers check them).
    let checked = match shared.registry_root() {
        Some(key) => credentials::check(&creds, &shared.amid, &key, false, now_ms(), |_| false)?,
        None => Checked::unverified(&creds),
    };
    Ok(Some(install(shared, checked, creds)))
}

// ---- the background task ----

/// Files receipts as they are signed and renews credentials every
/// [`Config::credentials_refresh`](super::Config), while a registry is
/// configured.
pub(super) async fn run(shared: Arc<Shared>) {
    let refresh = shared.config.credentials_refresh;
    let mut next_renewal = tokio::time::Instant::now();
    let mut retry_filing = false;
    let mut deferred = Deferred::new();
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_renewal {
            next_renewal = match renew(&shared).await {
                Ok(_) => now + refresh,
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
        if retry_filing || !shared.receipts.pending().is_empty() {
            retry_filing = !file_pending(&shared, &mut deferred).await;
        }
        let mut wake = next_renewal;
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
        call(&self.shared, Request::Signed { request: signed }).await
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
}
