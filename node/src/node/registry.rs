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

use std::{collections::HashMap, sync::Arc, time::Duration};

use ed25519_dalek::VerifyingKey;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use agentmesh_dht::now_ms;
use agentmesh_transports::codec;

use super::{mailbox, trust, Command, Node, Shared};
use crate::{
    credentials::{self, Checked, Credentials},
    diagnostics::ClockReading,
    envelope::SessionId,
    events::NodeEvent,
    identity::Amid,
    knock::SignedKnock,
    policy::Tier,
    receipts::{self, Filing, Held, Proposal, Proposed, PROPOSAL_TTL_MS},
    registry::{
        protocol::{self, ProtocolError, Request, Response},
        revocation_namespace, Operation, SignedRequest, SignedRevocation,
    },
    session::SessionInfo,
    transparency::{ConsistencyProof, SignedTreeHead},
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

// ---- revocations ----

/// Most keys asked about one by one in a sync, when the registry does not
/// serve its whole list (below its per-peer burst); the longest unchecked
/// go first.
const MAX_KEYS_PER_SYNC: usize = 64;
/// How long a KNOCK waits for the registry's word on a chain not checked
/// before (the initiator waits 15 s for the decision).
const KNOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most KNOCKs waiting on the registry at once; others are decided on the
/// local revocation set alone.
pub(super) const MAX_KNOCK_CHECKS: usize = 8;
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
        if shared.is_revoked(crate::cert::Revocable::Key(key)) {
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
async fn sync_and_report(shared: &Shared) -> Result<RevocationSync, RegistryClientError> {
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
pub(super) async fn check_on_knock(shared: &Shared, knock: &SignedKnock, now: u64) {
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

// ---- the log's consistency ----

/// Where the last registry log head this node checked is kept.
const LOG_HEAD_KEY: &[u8] = b"registry/log_head";

/// What [`Node::check_registry_log`] found.
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
async fn check_log(shared: &Shared) -> Result<LogCheck, RegistryClientError> {
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
async fn check_log_and_report(shared: &Shared) {
    match check_log(shared).await {
        Ok(check) => debug!(?check, "registry log checked"),
        Err(e @ RegistryClientError::LogForked { .. }) => {
            warn!(error = %e, "the registry's transparency log is not consistent with what it served before")
        }
        Err(e) => debug!(error = %e, "registry log not checked"),
    }
}

// ---- the background task ----

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

    /// Syncs the local revocation set with the configured registry now (the
    /// node also does so every [`Config::revocation_sync`](super::Config)):
    /// checks the root it names against the pinned one
    /// ([`RegistryClientError::Root`] when it differs: nothing is
    /// believed), then believes every revocation it serves that verifies
    /// under the pinned root. Also reported as
    /// [`NodeEvent::RevocationsSynced`].
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
