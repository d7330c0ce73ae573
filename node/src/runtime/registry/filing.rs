//! Session receipts: proposing one as a session ends, countersigning the
//! peer's, and filing the signed ones with the registry.

use std::{collections::HashMap, sync::Arc, time::Duration};
use tracing::{debug, info, warn};

use agentmesh_dht::now_ms;

use crate::{
    crypto::envelope::SessionId,
    crypto::session::SessionInfo,
    events::NodeEvent,
    identity::Amid,
    registry::{protocol::Request, Operation, SignedRequest},
    runtime::{mailbox, Shared},
    trust::receipts::{self, Filing, Held, Proposal, Proposed, PROPOSAL_TTL_MS},
    wire::MsgFrame,
};

use super::{call, RegistryClientError, RETRY};

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

/// Our receipt proposal as we end the session `info` (`completed`: with
/// an end message, or closing it abruptly), kept until the peer
/// countersigns it. `None` if it cannot be stored.
pub(in crate::runtime) fn propose(
    shared: &Shared,
    info: &SessionInfo,
    completed: bool,
) -> Option<Proposal> {
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
pub(in crate::runtime) fn end_body(shared: &Shared, info: &SessionInfo) -> Vec<u8> {
    propose(shared, info, true)
        .and_then(|p| p.to_bytes().ok())
        .unwrap_or_default()
}

/// The peer ended the session `info` with `data` in its end message:
/// countersigns the completed receipt it proposes.
pub(in crate::runtime) fn on_end(shared: &Arc<Shared>, info: &SessionInfo, data: &[u8]) {
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
pub(in crate::runtime) fn on_proposal(
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
pub(in crate::runtime) fn on_countersigned(
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
pub(super) type Deferred = HashMap<SessionId, (tokio::time::Instant, Duration)>;

/// Files every pending receipt that is due; returns whether all were
/// settled.
pub(super) async fn file_pending(shared: &Shared, deferred: &mut Deferred) -> bool {
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
