//! First contact through a mailbox.
//!
//! A KNOCK for a peer that cannot be reached is left at the peer's mailbox
//! relays in a control envelope ([`OLM_TYPE_KNOCK`]) with the id and expiry
//! of its first message. The peer judges it by its policy when it drains
//! its mailbox, as it judges a live KNOCK (only the time window is as wide
//! as a message's lifetime), and sends its signed decision back: on a
//! message stream when the initiator can be reached, else in a control
//! envelope ([`OLM_TYPE_DECISION`]) at the initiator's own mailbox relays.
//!
//! The initiator keeps the session it proposed from the moment a relay
//! holds the KNOCK, so later messages to the peer follow the KNOCK into the
//! mailbox, in order, and open once it is accepted. An acceptance reports
//! the first message delivered; a rejection ends the session and reports
//! the message rejected, with the peer's reason.
//!
//! Both sides keep what they need on disk: the initiator the KNOCKs it waits
//! on (tree `mail_knocks`), the receiver the decisions it made (tree
//! `mail_decisions`). A KNOCK fetched again (a drain cut short by a crash)
//! gets the same signed answer, not a refusal as a replay, and an answer
//! that could not be sent is sent again after the next drain.
//!
//! What a relay sees of a KNOCK left with it: the intent and the
//! credentials, besides what it sees of any mail (who writes to whom, when,
//! how much). The first message itself is encrypted.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use agentmesh_dht::now_ms;
use agentmesh_transports::{codec, PathKind};

use super::{inbound, Command, Delivery, Shared};
use crate::{
    audit::AuditEvent,
    crypto::envelope::{
        EnvelopeBody, EnvelopeError, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION,
        MAX_CLOCK_SKEW_MS, OLM_TYPE_DECISION, OLM_TYPE_KNOCK,
    },
    crypto::session::DEFAULT_MESSAGE_TTL_MS,
    events::NodeEvent,
    identity::{Amid, Identity},
    knock::{Decision, RejectReason, SignedDecision, SignedKnock},
    wire::MsgFrame,
};

/// The initiator's tree: KNOCK hash → [`Sent`].
const SENT_TREE: &str = "mail_knocks";
/// The receiver's tree: KNOCK hash → [`Decided`].
const DECIDED_TREE: &str = "mail_decisions";
/// Largest record read back from either tree.
const MAX_RECORD: usize = 2048;
/// Most answers sent (or tried) after one drain.
const MAX_ANSWERS_PER_RUN: usize = 256;
/// How long either side keeps its record: as long as the KNOCK can wait in
/// a mailbox, and the skew.
const KEEP_MS: u64 = DEFAULT_MESSAGE_TTL_MS + 2 * MAX_CLOCK_SKEW_MS;

/// A KNOCK we left in a peer's mailbox, waiting for its decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sent {
    peer: Amid,
    /// The first message.
    id: MessageId,
    /// The session proposed.
    session: SessionId,
    sent_ms: u64,
}

/// A decision we made on a KNOCK from our mailbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decided {
    /// The initiator.
    to: Amid,
    /// The signed decision, encoded.
    #[serde(with = "serde_bytes")]
    decision: Vec<u8>,
    decided_ms: u64,
    /// Whether it reached the initiator (or its mailbox).
    sent: bool,
}

/// Wraps `knock` in a control envelope for its receiver's mailbox, with the
/// id and expiry of its first message `first`.
pub(super) fn seal_knock(
    identity: &Identity,
    knock: &SignedKnock,
    first: &EnvelopeBody,
) -> Result<SignedEnvelope, EnvelopeError> {
    SignedEnvelope::seal(
        identity,
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: first.id,
            from: first.from,
            to: first.to,
            session: first.session,
            seq: 0,
            ts_ms: first.ts_ms,
            expires_ms: first.expires_ms,
            olm_type: OLM_TYPE_KNOCK,
            ciphertext: knock.to_bytes(),
        },
    )
}

/// Notes that we wait for `peer`'s decision on `knock`, whose first message
/// `id` proposed `session`. Written, not flushed: the caller flushes.
pub(super) fn remember_sent(
    shared: &Shared,
    knock: &SignedKnock,
    peer: Amid,
    id: MessageId,
    session: SessionId,
    now: u64,
) -> Result<(), String> {
    let tree = shared.db.open_tree(SENT_TREE).map_err(|e| e.to_string())?;
    purge(&tree, now, |s: &Sent| s.sent_ms);
    let record = Sent {
        peer,
        id,
        session,
        sent_ms: now,
    };
    let bytes = codec::encode(&record).map_err(|e| e.to_string())?;
    tree.insert(knock.hash(), bytes)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Removes the records of `tree` older than [`KEEP_MS`].
fn purge<T: for<'de> Deserialize<'de>>(tree: &sled::Tree, now: u64, at: impl Fn(&T) -> u64) {
    let old: Vec<sled::IVec> = tree
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| {
            codec::decode::<T>(v, MAX_RECORD).map_or(true, |r| at(&r).saturating_add(KEEP_MS) < now)
        })
        .map(|(k, _)| k)
        .collect();
    for k in old {
        let _ = tree.remove(k);
    }
}

/// What the drain does with a KNOCK it found in the mailbox.
pub(super) struct Judged {
    /// Acknowledge it to the relay (judged, or not a KNOCK worth keeping).
    /// `false` when it could not be judged now (over a rate limit, storage
    /// failing): it stays at the relay for the next drain.
    pub ack: bool,
    /// Its first message, when accepted.
    pub delivery: Option<Delivery>,
}

impl Judged {
    fn dropped() -> Self {
        Self {
            ack: true,
            delivery: None,
        }
    }
}

/// Judges the KNOCK in control envelope `env` from our mailbox, as a live
/// KNOCK is judged, and keeps the signed decision to send back. A KNOCK
/// judged before gets the decision made then.
pub(super) async fn judge(shared: &Arc<Shared>, env: &SignedEnvelope, now: u64) -> Judged {
    let body = match env.open(&shared.amid, now) {
        Ok(b) => b,
        Err(e) => {
            inbound::refuse(
                shared,
                env.peek().map(|b| b.from.to_string()),
                RejectReason::Malformed,
                e.to_string(),
            );
            return Judged::dropped();
        }
    };
    let knock = match SignedKnock::from_bytes(&body.ciphertext) {
        Ok(k) => k,
        Err(e) => {
            inbound::refuse(
                shared,
                Some(body.from.to_string()),
                RejectReason::Malformed,
                e.to_string(),
            );
            return Judged::dropped();
        }
    };
    let Ok(tree) = shared.db.open_tree(DECIDED_TREE) else {
        return Judged {
            ack: false,
            delivery: None,
        };
    };
    let hash = knock.hash();
    if let Ok(Some(_)) = tree.get(hash) {
        // Judged before (the drain that fetched it did not acknowledge it):
        // the same answer, sent again if it was not.
        debug!(from = %body.from.short(), "mailed knock judged before");
        return Judged {
            ack: true,
            delivery: None,
        };
    }
    // A chain not checked before: the registry's word on its keys first.
    super::registry::check_on_knock(shared, &knock, now).await;
    let mut policy_hash = shared.policy.read().map(|p| p.hash()).unwrap_or_default();
    let (decision, delivery) = inbound::decide(
        shared,
        inbound::Via::Mailbox(body.from),
        &knock,
        now,
        &mut policy_hash,
    );
    if let Decision::Reject {
        reason: RejectReason::RateLimited | RejectReason::Unavailable,
        ..
    } = decision
    {
        // Not judged: it waits at the relay for a later drain.
        debug!(from = %body.from.short(), "mailed knock left for later");
        return Judged {
            ack: false,
            delivery: None,
        };
    }
    let signed = SignedDecision::sign(&shared.identity, &knock, decision.clone(), policy_hash, now);
    let record = Decided {
        to: body.from,
        decision: signed.to_bytes(),
        decided_ms: now,
        sent: false,
    };
    purge(&tree, now, |d: &Decided| d.decided_ms);
    let stored = codec::encode(&record)
        .map_err(|e| e.to_string())
        .and_then(|b| tree.insert(hash, b).map_err(|e| e.to_string()));
    if let Err(e) = stored {
        // The session may be set up already; the KNOCK is judged again on
        // the next drain and its first message dropped as a duplicate.
        warn!(error = %e, "keeping a mailed knock's decision failed");
        return Judged {
            ack: false,
            delivery: None,
        };
    }
    info!(
        from = %body.from.short(),
        accepted = matches!(decision, Decision::Accept { .. }),
        "knock from the mailbox judged"
    );
    Judged {
        ack: true,
        delivery,
    }
}

/// Sends the decisions not yet sent to their initiators: on a message
/// stream, or else in a control envelope at the initiator's mailbox
/// relays. One left unsent is tried again after the next drain.
pub(super) async fn send_answers(shared: Arc<Shared>) {
    // A run under way sends what this one would.
    let Ok(_turn) = shared.answer_lock.try_lock() else {
        return;
    };
    let Ok(tree) = shared.db.open_tree(DECIDED_TREE) else {
        return;
    };
    let unsent: Vec<(sled::IVec, Decided)> = tree
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(k, v)| Some((k, codec::decode::<Decided>(&v, MAX_RECORD).ok()?)))
        .filter(|(_, d)| !d.sent)
        .take(MAX_ANSWERS_PER_RUN)
        .collect();
    for (key, mut d) in unsent {
        if !send_answer(&shared, &d).await {
            continue;
        }
        d.sent = true;
        if let Ok(bytes) = codec::encode(&d) {
            let _ = tree.insert(key, bytes);
        }
    }
}

/// Whether the decision reached its initiator or its mailbox.
async fn send_answer(shared: &Shared, d: &Decided) -> bool {
    if super::mailbox::send_frame(shared, &d.to, MsgFrame::Decision(d.decision.clone())).await {
        debug!(to = %d.to.short(), "knock decision sent");
        return true;
    }
    let now = now_ms();
    let env = SignedEnvelope::seal(
        &shared.identity,
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: MessageId::random(),
            from: shared.amid,
            to: d.to,
            session: SessionId([0; 16]),
            seq: 0,
            ts_ms: now,
            expires_ms: d
                .decided_ms
                .saturating_add(DEFAULT_MESSAGE_TTL_MS)
                .max(now + 1),
            olm_type: OLM_TYPE_DECISION,
            ciphertext: d.decision.clone(),
        },
    );
    let Ok(env) = env else { return false };
    let relays = relays_of(shared, &d.to).await;
    match super::mailbox::deposit_at(shared, &d.to, &relays, &env.to_bytes()).await {
        Ok(_) => {
            debug!(to = %d.to.short(), "knock decision left in its mailbox");
            true
        }
        Err(e) => {
            debug!(to = %d.to.short(), error = %e, "knock decision not sent yet");
            false
        }
    }
}

/// The mailbox relays `amid`'s card lists (none when no card is found).
async fn relays_of(shared: &Shared, amid: &Amid) -> Vec<(libp2p::PeerId, libp2p::Multiaddr)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared
        .commands
        .send(Command::Resolve {
            amid: *amid,
            reply: tx,
        })
        .await
        .is_err()
    {
        return Vec::new();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(15), rx).await {
        Ok(Ok(Some(card))) => card.relay_addrs(),
        _ => Vec::new(),
    }
}

/// A decision in a control envelope from our mailbox.
pub(super) fn on_decision_envelope(shared: &Shared, env: &SignedEnvelope, now: u64) {
    match env.open(&shared.amid, now) {
        Ok(body) => on_decision(shared, &body.from, &body.ciphertext),
        Err(e) => debug!(error = %e, "mailed knock decision refused"),
    }
}

/// `from`'s signed decision on a KNOCK we left in its mailbox: an
/// acceptance reports the first message delivered, a rejection ends the
/// session we proposed and reports the message rejected. Anything that is
/// not the answer to a KNOCK we wait on is ignored.
pub(super) fn on_decision(shared: &Shared, from: &Amid, bytes: &[u8]) {
    let Ok(signed) = SignedDecision::from_bytes(bytes) else {
        debug!(from = %from.short(), "malformed knock decision");
        return;
    };
    let Some(hash) = signed.peek_knock_hash() else {
        return;
    };
    let Ok(tree) = shared.db.open_tree(SENT_TREE) else {
        return;
    };
    let sent = tree
        .get(hash)
        .ok()
        .flatten()
        .and_then(|v| codec::decode::<Sent>(&v, MAX_RECORD).ok());
    let Some(sent) = sent.filter(|s| &s.peer == from) else {
        debug!(from = %from.short(), "decision on a knock not waiting for one");
        return;
    };
    let decision = match signed.verify_hash(from, &hash) {
        Ok((d, _)) => d,
        Err(e) => {
            warn!(from = %from.short(), error = %e, "invalid knock decision");
            return;
        }
    };
    if tree.remove(hash).is_err() {
        return;
    }
    shared
        .awaiting_receipt
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&sent.id);
    match decision {
        Decision::Accept { session, .. } if session == sent.session => {
            info!(peer = %from.short(), id = %sent.id, "mailed knock accepted");
            shared.audit(AuditEvent::SessionOpened {
                peer: *from,
                session,
                role: "initiator".into(),
            });
            shared.audit(AuditEvent::MessageDelivered {
                to: *from,
                id: sent.id,
                path: PathKind::Mailbox.to_string(),
            });
            shared.emit(NodeEvent::Delivered {
                id: sent.id,
                to: *from,
                path: PathKind::Mailbox,
                knocked: true,
                latency_ms: Some(now_ms().saturating_sub(sent.sent_ms)),
            });
        }
        other => {
            let reason = match other {
                Decision::Reject { reason, .. } => reason,
                // Accepted, but another session than the one proposed.
                Decision::Accept { .. } => RejectReason::Other,
            };
            info!(peer = %from.short(), id = %sent.id, %reason, "mailed knock rejected");
            let _ = shared.store().forget_session(from, &sent.session);
            shared.emit(NodeEvent::Rejected {
                id: sent.id,
                to: *from,
                reason,
            });
        }
    }
}
