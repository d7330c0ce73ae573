//! The node's side of relay mailboxes: depositing sealed envelopes for a
//! peer that cannot be reached, draining our own mailboxes (storing before
//! acknowledging), and the delivery receipts that tell a sender its
//! deposited messages arrived.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::mailbox::{self, MailboxError};
use agentmesh_dht::now_ms;
use agentmesh_transports::{framing::FramedStream, PathKind};

use super::{inbound, Command, DialError, Shared};
use crate::{
    audit::AuditEvent,
    crypto::envelope::{MessageId, SignedEnvelope, OLM_TYPE_DECISION, OLM_TYPE_KNOCK},
    crypto::session::OpenError,
    events::NodeEvent,
    identity::Amid,
    wire::{MsgFrame, MAX_FRAME_SIZE, MSG_PROTOCOL},
};

/// Envelopes asked for per fetch.
const FETCH_BATCH: u32 = 50;
/// Most deposited messages remembered while waiting for their receipts.
const MAX_AWAITING_RECEIPTS: usize = 100_000;
/// Time to wait for a card lookup or a dial made for a mailbox exchange.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Dials `peer` at `addrs` through the swarm actor; the path of the
/// connection.
pub(super) async fn connect(
    shared: &Shared,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
) -> Result<PathKind, DialError> {
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .send(Command::Connect {
            peer,
            addrs,
            reply: tx,
        })
        .await
        .map_err(|_| DialError::Stopped)?;
    match tokio::time::timeout(LOOKUP_TIMEOUT, rx).await {
        Ok(Ok(r)) => r.map_err(DialError::Failed),
        Ok(Err(_)) => Err(DialError::Stopped),
        Err(_) => Err(DialError::Timeout),
    }
}

/// Deposits one sealed envelope for `to` at every relay in `relays`, and
/// waits for `to`'s delivery receipt for it. Returns how many relays hold
/// it on disk; an error when none does.
pub(super) async fn deposit(
    shared: &Shared,
    to: &Amid,
    relays: &[(PeerId, Multiaddr)],
    envelope: &[u8],
) -> Result<usize, MailboxError> {
    let (id, stored) = deposit_at(shared, to, relays, envelope).await?;
    let mut awaiting = shared
        .awaiting_receipt
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if awaiting.len() >= MAX_AWAITING_RECEIPTS {
        warn!("too many deposits awaiting receipts; forgetting the oldest");
        awaiting.clear();
    }
    awaiting.insert(id, *to);
    Ok(stored)
}

/// Deposits one sealed envelope for `to` at every relay in `relays`.
/// Returns its id and how many relays hold it on disk; an error when none
/// does.
pub(super) async fn deposit_at(
    shared: &Shared,
    to: &Amid,
    relays: &[(PeerId, Multiaddr)],
    envelope: &[u8],
) -> Result<(MessageId, usize), MailboxError> {
    let to_peer = to
        .peer_id()
        .map_err(|e| MailboxError::Unreachable(e.to_string()))?;
    let body = SignedEnvelope::from_bytes(envelope)
        .ok()
        .and_then(|e| e.peek())
        .ok_or_else(|| MailboxError::Protocol("not a sealed envelope".into()))?;
    let mut stored = 0;
    let mut last = MailboxError::Unreachable("the recipient lists no mailbox relay".into());
    for (relay, addr) in relays {
        if let Err(e) = connect(shared, *relay, vec![addr.clone()]).await {
            last = MailboxError::Unreachable(e.to_string());
            continue;
        }
        let mut control = shared.control.clone();
        match mailbox::deposit(
            &mut control,
            *relay,
            &to_peer,
            body.id.0,
            body.expires_ms,
            envelope.to_vec(),
        )
        .await
        {
            Ok(_) => stored += 1,
            Err(e) => {
                debug!(%relay, error = %e, "deposit refused");
                last = e;
            }
        }
    }
    if stored == 0 {
        return Err(last);
    }
    Ok((body.id, stored))
}

/// A delivery receipt from `from`: reports the messages we deposited for
/// it as delivered. Ids we did not deposit for `from` are ignored.
pub(super) fn on_receipts(shared: &Shared, from: &Amid, ids: &[MessageId]) {
    for id in ids {
        let ours = {
            let mut awaiting = shared
                .awaiting_receipt
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match awaiting.get(id) {
                Some(to) if to == from => awaiting.remove(id).is_some(),
                _ => false,
            }
        };
        if !ours {
            debug!(%id, "receipt for a message not awaiting one");
            continue;
        }
        shared.audit(AuditEvent::MessageDelivered {
            to: *from,
            id: *id,
            path: PathKind::Mailbox.to_string(),
        });
        shared.emit(NodeEvent::Delivered {
            id: *id,
            to: *from,
            path: PathKind::Mailbox,
            knocked: false,
            latency_ms: None,
        });
    }
}

/// Fetches everything held for us at `relay`, stores it, hands it to the
/// application, acknowledges it to the relay, and sends receipts to the
/// senders. One drain at a time, so mail is delivered in order.
pub(super) async fn drain(shared: Arc<Shared>, relay: PeerId) {
    let _turn = shared.drain_lock.lock().await;
    let Ok(me) = shared.amid.peer_id() else {
        return;
    };
    name_senders(&shared, relay).await;
    let mut total = 0usize;
    loop {
        let mut control = shared.control.clone();
        let (items, more) = match mailbox::fetch(&mut control, relay, &me, FETCH_BATCH).await {
            Ok(r) => r,
            Err(e) => {
                debug!(%relay, error = %e, "mailbox fetch failed");
                return;
            }
        };
        if items.is_empty() {
            break;
        }
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut receipts: BTreeMap<Amid, Vec<MessageId>> = BTreeMap::new();
        for item in &items {
            let env = match SignedEnvelope::from_bytes(&item.envelope) {
                Ok(e) => e,
                Err(e) => {
                    inbound::refuse(
                        &shared,
                        Some(format!("mailbox {relay}")),
                        crate::knock::RejectReason::Malformed,
                        e.to_string(),
                    );
                    acks.push(item.id);
                    continue;
                }
            };
            match env.peek().map(|b| b.olm_type) {
                Some(OLM_TYPE_KNOCK) => {
                    // A first contact: judged as a live KNOCK is.
                    let judged = super::first_contact::judge(&shared, &env, now_ms()).await;
                    if judged.ack {
                        acks.push(item.id);
                    }
                    batch.extend(judged.delivery);
                    continue;
                }
                Some(OLM_TYPE_DECISION) => {
                    super::first_contact::on_decision_envelope(&shared, &env, now_ms());
                    acks.push(item.id);
                    continue;
                }
                _ => {}
            }
            let result = shared.store().receive(&env, None, now_ms());
            match result {
                Ok((arrival, received)) => {
                    shared.audit(AuditEvent::MessageIn {
                        from: received.from,
                        id: received.id,
                        session: received.session,
                        size: item.envelope.len() as u32,
                    });
                    receipts.entry(received.from).or_default().push(received.id);
                    acks.push(item.id);
                    batch.push(super::exchange::delivery(
                        arrival,
                        received,
                        PathKind::Mailbox,
                    ));
                }
                Err(OpenError::Duplicate) => {
                    // Already here by another path; the sender may still be
                    // waiting for the receipt of its mailbox copy.
                    acks.push(item.id);
                    if let Some(b) = env.peek() {
                        receipts.entry(b.from).or_default().push(b.id);
                    }
                }
                Err(OpenError::Storage(e)) => {
                    // Left at the relay; fetched again on the next drain.
                    warn!(error = %e, "storing mail failed");
                }
                Err(e) => {
                    inbound::refuse(
                        &shared,
                        env.peek().map(|b| b.from.to_string()),
                        e.reason(),
                        e.to_string(),
                    );
                    acks.push(item.id);
                }
            }
        }
        // On disk before the relay may forget it.
        if let Err(e) = shared.db.flush_async().await {
            warn!(error = %e, "flush failed; mail left at the relay");
            return;
        }
        total += batch.len();
        inbound::deliver(&shared, batch).await;
        let mut control = shared.control.clone();
        if let Err(e) = mailbox::ack(&mut control, relay, &me, &acks).await {
            // Fetched again next time; duplicates are dropped by id.
            debug!(%relay, error = %e, "mailbox ack failed");
        }
        for (from, ids) in receipts {
            tokio::spawn(send_receipts(shared.clone(), from, ids));
        }
        // Nothing taken off this batch: fetching again would return it.
        if !more || acks.is_empty() {
            break;
        }
    }
    // Answers to KNOCKs from the mailbox, and those not sent before.
    tokio::spawn(super::first_contact::send_answers(shared.clone()));
    if total > 0 {
        info!(%relay, messages = total, "mailbox drained");
    }
}

/// Names the peers we have sessions with at `relay`, when that list
/// changed since we last named it there: the relay then keeps a larger
/// share of our mailbox for them than for strangers, so a flood of
/// deposits from other identities cannot lock them out while we are away.
pub(super) async fn name_senders(shared: &Shared, relay: PeerId) {
    let Ok(me) = shared.amid.peer_id() else {
        return;
    };
    let mut peers: Vec<PeerId> = shared
        .store()
        .all_sessions()
        .iter()
        .filter_map(|s| s.peer.peer_id().ok())
        .collect();
    peers.sort();
    peers.dedup();
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        peers.hash(&mut h);
        h.finish()
    };
    let named = |d: u64| {
        shared
            .named_senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(relay, d)
    };
    if shared
        .named_senders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&relay)
        == Some(&digest)
    {
        return;
    }
    let mut control = shared.control.clone();
    match mailbox::name_senders(&mut control, relay, &me, &peers).await {
        Ok(kept) => {
            debug!(%relay, named = peers.len(), kept, "senders named at the relay");
            named(digest);
        }
        Err(MailboxError::Refused { code, .. }) => {
            // An older relay: no shares to ask for; do not ask again.
            debug!(%relay, %code, "relay does not take named senders");
            named(digest);
        }
        Err(e) => debug!(%relay, error = %e, "naming senders failed"),
    }
}

/// Tells `to` that we stored `ids`. Best effort: a sender that is offline
/// does not learn of the delivery.
async fn send_receipts(shared: Arc<Shared>, to: Amid, ids: Vec<MessageId>) {
    let n = ids.len();
    if send_frame(&shared, &to, MsgFrame::Delivered { ids }).await {
        debug!(peer = %to.short(), n, "delivery receipts sent");
    }
}

/// Sends one frame to `to` on a new message stream, finding and dialling
/// it first when it is not connected. Best effort: returns whether the
/// frame was written.
pub(super) async fn send_frame(shared: &Shared, to: &Amid, frame: MsgFrame) -> bool {
    let Ok(peer) = to.peer_id() else { return false };
    let (tx, rx) = oneshot::channel();
    if shared
        .commands
        .send(Command::Resolve {
            amid: *to,
            reply: tx,
        })
        .await
        .is_err()
    {
        return false;
    }
    let addrs = match tokio::time::timeout(LOOKUP_TIMEOUT, rx).await {
        Ok(Ok(Some(card))) => card.multiaddrs(),
        _ => Vec::new(),
    };
    if let Err(e) = connect(shared, peer, addrs).await {
        debug!(peer = %to.short(), error = %e, "frame not sent");
        return false;
    }
    let mut control = shared.control.clone();
    let stream = match control.open_stream(peer, MSG_PROTOCOL).await {
        Ok(s) => s,
        Err(e) => {
            debug!(peer = %to.short(), error = %e, "frame not sent");
            return false;
        }
    };
    let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
    let sent = framed.send(frame.to_bytes()).await.is_ok();
    let _ = framed.close().await;
    sent
}
