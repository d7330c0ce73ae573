//! Serving the AgentMesh protocols: KNOCKs and message streams from peers.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

use agentmesh_dht::now_ms;
use agentmesh_transports::{
    framing::{FrameError, FramedStream},
    PathKind,
};

use super::{peer_label, Command, Delivery, Shared};
use crate::{
    audit::AuditEvent,
    content::Kind,
    crypto::envelope::{SignedEnvelope, MAX_CLOCK_SKEW_MS},
    crypto::session::{OpenError, SessionStore},
    events::NodeEvent,
    knock::policy::KnockContext,
    knock::{Decision, RejectReason, SignedDecision, SignedKnock},
    wire::{MsgFrame, KNOCK_PROTOCOL, MAX_FRAME_SIZE, MSG_PROTOCOL},
};

/// Most KNOCKs handled at once; more are refused at once (never awaited in
/// the accept loop, so KNOCKs cannot hold up message streams).
const MAX_CONCURRENT_KNOCKS: usize = 64;
/// Most KNOCK streams one peer may have open at once.
const MAX_KNOCKS_PER_PEER: usize = 2;
/// Most message streams served at once; more are refused.
const MAX_MSG_STREAMS: usize = 512;
/// Most message streams one peer may have open at once (a sender keeps one
/// long-lived stream; a few more cover reconnects and one-off frames).
const MAX_MSG_STREAMS_PER_PEER: usize = 8;
/// Time a peer has to send its KNOCK once the stream is open.
const KNOCK_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a peer has to send the first frame on a new message stream.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// A message stream on which nothing arrives for this long is closed; the
/// sender opens a new one when it has something to send.
const MSG_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Most envelopes committed together before their acks are sent.
const ACK_BATCH: usize = 64;

pub(super) async fn run(shared: Arc<Shared>, backlog_done: oneshot::Receiver<()>) {
    // Deliver what was stored before a restart before taking anything new.
    let _ = backlog_done.await;
    let mut control = shared.control.clone();
    let (Ok(mut knocks), Ok(mut msgs)) =
        (control.accept(KNOCK_PROTOCOL), control.accept(MSG_PROTOCOL))
    else {
        warn!("stream protocols already registered");
        return;
    };
    let knock_slots = Arc::new(Semaphore::new(MAX_CONCURRENT_KNOCKS));
    let msg_slots = Arc::new(Semaphore::new(MAX_MSG_STREAMS));
    let knocks_per_peer = PerPeer::new(MAX_KNOCKS_PER_PEER);
    let msgs_per_peer = PerPeer::new(MAX_MSG_STREAMS_PER_PEER);
    let cancel = shared.cancel.clone();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some((peer, stream)) = knocks.next() => {
                let Some(mine) = knocks_per_peer.take(peer) else {
                    debug!(%peer, "too many knocks from one peer; refusing one");
                    continue;
                };
                let Ok(permit) = knock_slots.clone().try_acquire_owned() else {
                    debug!(%peer, "too many knocks at once; refusing one");
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    handle_knock(&shared, peer, stream).await;
                    drop((permit, mine));
                });
            }
            Some((peer, stream)) = msgs.next() => {
                let Some(mine) = msgs_per_peer.take(peer) else {
                    warn!(%peer, "too many message streams from one peer; refusing one");
                    continue;
                };
                let Ok(permit) = msg_slots.clone().try_acquire_owned() else {
                    warn!(%peer, "too many message streams; refusing one");
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_messages(&shared, peer, stream).await;
                    drop((permit, mine));
                });
            }
            else => break,
        }
    }
}

/// Counts open streams per peer, up to a cap each.
#[derive(Clone)]
struct PerPeer {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, usize>>>,
}

/// One stream of a peer, counted while held.
struct PeerSlot {
    peer: PeerId,
    open: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, usize>>>,
}

impl PerPeer {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for `peer`, unless it has `max` open.
    fn take(&self, peer: PeerId) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(peer).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peer,
            open: self.open.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

pub(super) fn refuse(shared: &Shared, from: Option<String>, reason: RejectReason, detail: String) {
    warn!(from = from.as_deref().unwrap_or("?"), %reason, %detail, "refused");
    shared.audit(AuditEvent::Refused {
        from: from.clone(),
        reason,
    });
    shared.emit(NodeEvent::Refused {
        from,
        reason,
        detail,
    });
}

/// A stream read failed: an oversized frame is the peer's fault and is
/// refused; anything else is the connection going away.
fn stream_failed(shared: &Shared, peer: &PeerId, e: FrameError) {
    match e {
        FrameError::TooLarge { max } => refuse(
            shared,
            Some(peer_label(peer)),
            RejectReason::Malformed,
            format!("frame over {max} bytes"),
        ),
        e => debug!(%peer, error = %e, "stream ended"),
    }
}

async fn handle_knock(shared: &Arc<Shared>, peer: PeerId, stream: Stream) {
    let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
    let frame = match tokio::time::timeout(KNOCK_READ_TIMEOUT, framed.recv()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            stream_failed(shared, &peer, e);
            return;
        }
        Err(_) => {
            debug!(%peer, "knock timed out");
            return;
        }
    };
    let knock = match SignedKnock::from_bytes(&frame) {
        Ok(k) => k,
        Err(e) => {
            // Not even a KNOCK: reset the stream.
            refuse(
                shared,
                Some(peer_label(&peer)),
                RejectReason::Malformed,
                e.to_string(),
            );
            return;
        }
    };
    // A chain not checked before: the registry's word on its keys first.
    super::registry::check_on_knock(shared, &knock, now_ms()).await;
    let now = now_ms();
    let mut policy_hash = shared.policy.read().map(|p| p.hash()).unwrap_or_default();
    let (decision, delivered) =
        decide(shared, Via::Connection(peer), &knock, now, &mut policy_hash);
    // The session and first message must be on disk before we say yes.
    if matches!(decision, Decision::Accept { .. }) {
        if let Err(e) = shared.db.flush_async().await {
            warn!(error = %e, "flush failed; not answering the knock");
            return;
        }
    }
    let signed = SignedDecision::sign(&shared.identity, &knock, decision.clone(), policy_hash, now);
    if let Err(e) = framed.send(signed.to_bytes()).await {
        debug!(%peer, error = %e, "could not answer knock");
    }
    let _ = framed.close().await;
    if let Some(d) = delivered {
        deliver(shared, vec![d]).await;
    }
}

/// Where a KNOCK came from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via {
    /// Live, on a connection of this peer.
    Connection(PeerId),
    /// Left in our mailbox in a control envelope this agent signed; it may
    /// be as old as a mailbox keeps mail ([`MAILED_KNOCK_MAX_AGE_MS`]).
    Mailbox(crate::identity::Amid),
}

/// How old a KNOCK that waited in a mailbox may be: as long as a message
/// lives, and the clock skew.
pub(super) const MAILED_KNOCK_MAX_AGE_MS: u64 =
    crate::crypto::session::DEFAULT_MESSAGE_TTL_MS + MAX_CLOCK_SKEW_MS;

impl Via {
    fn label(&self) -> String {
        match self {
            Via::Connection(peer) => peer_label(peer),
            Via::Mailbox(from) => from.to_string(),
        }
    }

    /// How old the KNOCK may be.
    fn max_age_ms(&self) -> u64 {
        match self {
            Via::Connection(_) => MAX_CLOCK_SKEW_MS,
            Via::Mailbox(_) => MAILED_KNOCK_MAX_AGE_MS,
        }
    }
}

/// Runs the policy on a KNOCK and, when accepted, opens its first message.
/// `policy_hash` becomes the hash of the policy that decided (the one the
/// signed decision must name, even if the policy is reloaded meanwhile);
/// it is left as it was for a KNOCK refused before any policy was read.
pub(super) fn decide(
    shared: &Arc<Shared>,
    via: Via,
    knock: &SignedKnock,
    now: u64,
    policy_hash: &mut [u8; 32],
) -> (Decision, Option<Delivery>) {
    let reject = |reason| {
        (
            Decision::Reject {
                reason,
                retry_after_ms: None,
            },
            None,
        )
    };
    // The budget of all peers together comes before any signature work.
    let over_budget = shared
        .knock_budget
        .lock()
        .map(|mut b| b.try_acquire(&(), now).err())
        .unwrap_or(Some(crate::knock::ratelimit::RetryAfter { ms: 1_000 }));
    if let Some(wait) = over_budget {
        debug!(from = %via.label(), "knock budget used up; refusing");
        // Counted (an event, no audit entry: a flood must stay cheap).
        shared.emit(NodeEvent::Refused {
            from: Some(via.label()),
            reason: RejectReason::RateLimited,
            detail: "knock budget used up".into(),
        });
        return (
            Decision::Reject {
                reason: RejectReason::RateLimited,
                retry_after_ms: Some(wait.ms.max(1)),
            },
            None,
        );
    }
    let body = match knock.verify() {
        Ok(b) => b,
        Err(e) => {
            let reason = match e {
                crate::knock::KnockError::BadSignature => RejectReason::BadSignature,
                _ => RejectReason::Malformed,
            };
            refuse(shared, Some(via.label()), reason, e.to_string());
            return reject(reason);
        }
    };
    // The connection must belong to the initiator: KNOCKs are not relayed.
    // One from a mailbox came in an envelope the initiator signed.
    let own = match &via {
        Via::Connection(peer) => body.from.peer_id().ok().as_ref() == Some(peer),
        Via::Mailbox(from) => &body.from == from,
    };
    if !own {
        refuse(
            shared,
            Some(body.from.to_string()),
            RejectReason::BadSignature,
            "knock from another peer's connection".into(),
        );
        return reject(RejectReason::BadSignature);
    }
    // Fail closed: a decision never runs on a default policy or without
    // its rate limit because a lock was poisoned.
    let Ok(policy) = shared.policy.read().map(|p| p.clone()) else {
        warn!("policy lock poisoned; refusing the knock");
        return reject(RejectReason::Unavailable);
    };
    *policy_hash = policy.hash();
    let Ok(rate_limited) = shared
        .knock_limiter
        .lock()
        .map(|mut l| l.try_acquire(&body.from, now).err().map(|r| r.ms))
    else {
        warn!("rate limiter lock poisoned; refusing the knock");
        return reject(RejectReason::Unavailable);
    };
    // The nonce is stored only for a KNOCK inside the time window and the
    // rate limit (the policy refuses the others): the nonce store holds at
    // most what the limits let in, each entry for a bounded time.
    let max_age = via.max_age_ms();
    let in_window = body.ts_ms.saturating_add(max_age) >= now
        && body.ts_ms <= now.saturating_add(MAX_CLOCK_SKEW_MS);
    let mut store = shared.store();
    let seen = if in_window && rate_limited.is_none() {
        match store.check_nonce(
            &body.nonce,
            body.ts_ms.saturating_add(max_age + MAX_CLOCK_SKEW_MS),
        ) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "nonce store failed");
                return reject(RejectReason::Unavailable);
            }
        }
    } else {
        false
    };
    let trust = shared.assess(&body, now);
    let ctx = KnockContext {
        tier: trust.checked.tier,
        nonce_seen: seen,
        rate_limited,
        revoked: trust.revoked,
        invalid_credentials: trust.invalid,
        reputation: trust.checked.reputation,
    };
    let mut decision = match via {
        Via::Connection(_) => policy.evaluate(&shared.amid, &body, ctx, now),
        Via::Mailbox(_) => policy.evaluate_mailed(&shared.amid, &body, ctx, now, max_age),
    };
    if matches!(decision, Decision::Accept { .. }) {
        // The schema the KNOCK names must be one we take for its capability.
        if let Err(detail) = crate::schema::knock_schema_ok(
            &shared.schemas,
            &shared.config.accept_schemas,
            &body.intent.capability,
            body.intent.schema.as_deref(),
        ) {
            debug!(from = %body.from, %detail, "knock names no schema we take");
            decision = Decision::Reject {
                reason: RejectReason::UnsupportedSchema,
                retry_after_ms: None,
            };
        }
    }
    if shared.killed_all.load(std::sync::atomic::Ordering::SeqCst) {
        // The owner's kill switch overrides every policy.
        decision = Decision::Reject {
            reason: RejectReason::Blocked,
            retry_after_ms: None,
        };
    }
    let tier = trust.checked.tier;
    let reputation = trust.checked.reputation;
    let hash_hex = hex::encode(*policy_hash);
    let policy_hash = Some(hash_hex.clone());
    let Decision::Accept {
        session,
        expires_ms,
    } = decision
    else {
        let reason = match decision {
            Decision::Reject { reason, .. } => reason,
            Decision::Accept { .. } => RejectReason::Other,
        };
        shared.emit(NodeEvent::KnockDecided {
            from: body.from,
            accepted: false,
            reason: Some(reason),
            session: None,
            tier: Some(tier),
            reputation,
            policy_hash: Some(hash_hex),
        });
        shared.audit(AuditEvent::KnockDecision {
            from: body.from,
            accepted: false,
            reason: Some(reason),
            session: None,
            intent: Some(body.intent.clone()),
            policy_hash,
        });
        return (decision, None);
    };
    super::rotation::note_history(shared, &body);
    let info =
        SessionStore::responder_info(body.from, session, body.intent.clone(), now, expires_ms);
    let first = match SignedEnvelope::from_bytes(&body.first) {
        Ok(e) => e,
        Err(e) => {
            refuse(
                shared,
                Some(body.from.to_string()),
                RejectReason::Malformed,
                e.to_string(),
            );
            return reject(RejectReason::Malformed);
        }
    };
    let received = match store.receive(&first, Some(&info), now) {
        Ok(r) => Ok(Some(r)),
        // Knocked again after losing our answer: the session is set up
        // anew, the message was delivered the first time.
        Err(OpenError::Duplicate) => Ok(None),
        Err(e) => Err(e),
    };
    match received {
        Ok(received) => {
            let changed = store.take_prekeys_changed();
            drop(store);
            // Followed by the revocation syncs from now on.
            shared.watch().watch(*body.from.as_bytes(), now);
            if changed {
                let _ = shared.commands.try_send(Command::Republish);
            }
            shared.emit(NodeEvent::KnockDecided {
                from: body.from,
                accepted: true,
                reason: None,
                session: Some(session),
                tier: Some(tier),
                reputation,
                policy_hash: Some(hash_hex),
            });
            shared.audit(AuditEvent::KnockDecision {
                from: body.from,
                accepted: true,
                reason: None,
                session: Some(session),
                intent: Some(body.intent.clone()),
                policy_hash,
            });
            shared.audit(AuditEvent::SessionOpened {
                peer: body.from,
                session,
                role: "responder".into(),
            });
            if let Some((_, r)) = &received {
                shared.audit(AuditEvent::MessageIn {
                    from: r.from,
                    id: r.id,
                    session: r.session,
                    size: body.first.len() as u32,
                });
            }
            let path = match via {
                Via::Connection(peer) => shared.path_to(&peer),
                Via::Mailbox(_) => PathKind::Mailbox,
            };
            let delivery = received.map(|(arrival, r)| super::exchange::delivery(arrival, r, path));
            (decision, delivery)
        }
        Err(e) => {
            let reason = e.reason();
            refuse(shared, Some(body.from.to_string()), reason, e.to_string());
            reject(reason)
        }
    }
}

/// Hands messages to the application, replies to their requests, chunks
/// to their streams (waiting for room: back-pressure reaches the sender
/// through withheld acks) and reports them.
pub(super) async fn deliver(shared: &Arc<Shared>, batch: Vec<Delivery>) {
    for d in batch {
        if !super::exchange::route(shared, d).await {
            return;
        }
    }
}

/// Serves one inbound message stream: the envelopes of a burst (what is
/// buffered when the stream is read, up to [`ACK_BATCH`]) are checked,
/// decrypted and committed in one write, flushed to disk together, then
/// handed to the application and acknowledged.
async fn serve_messages(shared: &Arc<Shared>, peer: PeerId, stream: Stream) {
    let sender = super::amid_of_peer(&peer);
    let (mut writer, mut reader) = FramedStream::new(stream, MAX_FRAME_SIZE).split();
    let cancel = shared.cancel.clone();
    let mut burst = Burst {
        peer,
        envs: Vec::new(),
        acks: Vec::new(),
        batch: Vec::new(),
        stream_path: shared.path_to(&peer),
    };
    let mut idle_limit = FIRST_FRAME_TIMEOUT;
    loop {
        // Take what is already buffered without waiting; when nothing is,
        // commit the burst before blocking on the next frame. A stream that
        // stays silent is closed: a peer cannot hold slots open for nothing.
        let next = if burst.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                f = reader.recv() => Some(f),
                _ = tokio::time::sleep(idle_limit) => {
                    debug!(%peer, "message stream idle; closing it");
                    return;
                }
            }
        } else if burst.len() >= ACK_BATCH {
            None
        } else {
            reader.recv().now_or_never()
        };
        let frame = match next {
            None => {
                if !burst.commit(shared, &mut writer).await {
                    return;
                }
                continue;
            }
            Some(Ok(Some(f))) => {
                idle_limit = MSG_IDLE_TIMEOUT;
                f
            }
            Some(Ok(None)) => {
                burst.commit(shared, &mut writer).await;
                return;
            }
            Some(Err(e)) => {
                burst.commit(shared, &mut writer).await;
                stream_failed(shared, &peer, e);
                return;
            }
        };
        let frame = MsgFrame::from_bytes(&frame);
        if !matches!(frame, Ok(MsgFrame::Envelope(_))) {
            // Whatever else comes acts on what came before it (a close
            // ends the session its messages were in).
            burst.open(shared);
        }
        let bytes = match frame {
            Ok(MsgFrame::Envelope(b)) => b,
            Ok(MsgFrame::Close { session, receipt }) => {
                let info =
                    sender.and_then(|from| shared.store().session(&from, &session, now_ms()));
                let closed = sender.filter(|from| {
                    matches!(shared.store().forget_session(from, &session), Ok(true))
                });
                if let Some(from) = closed {
                    if let (Some(info), Some(p)) = (&info, &receipt) {
                        super::registry::on_proposal(shared, info, p, false);
                    }
                    super::exchange::end_streams(shared, &from, &session);
                    shared.audit(AuditEvent::SessionClosed {
                        peer: from,
                        session,
                        why: "closed by peer".into(),
                    });
                    shared.emit(NodeEvent::SessionClosed {
                        peer: from,
                        session,
                        by_peer: true,
                    });
                }
                continue;
            }
            Ok(MsgFrame::Delivered { ids }) => {
                if let Some(from) = sender {
                    super::mailbox::on_receipts(shared, &from, &ids);
                }
                continue;
            }
            Ok(MsgFrame::Countersigned { session, signature }) => {
                if let Some(from) = sender {
                    super::registry::on_countersigned(shared, &from, session, signature);
                }
                continue;
            }
            Ok(MsgFrame::Decision(decision)) => {
                if let Some(from) = sender {
                    super::first_contact::on_decision(shared, &from, &decision);
                }
                continue;
            }
            Ok(other) => {
                debug!(%peer, ?other, "unexpected frame on inbound stream");
                continue;
            }
            Err(e) => {
                // Garbage on the stream: commit what was good, then reset.
                burst.commit(shared, &mut writer).await;
                refuse(
                    shared,
                    Some(peer_label(&peer)),
                    RejectReason::Malformed,
                    e.to_string(),
                );
                return;
            }
        };
        let env = match SignedEnvelope::from_bytes(&bytes) {
            Ok(e) => e,
            Err(e) => {
                burst.commit(shared, &mut writer).await;
                refuse(
                    shared,
                    Some(peer_label(&peer)),
                    RejectReason::Malformed,
                    e.to_string(),
                );
                return;
            }
        };
        let now = now_ms();
        // Rate limit by the connection's authenticated peer, before any
        // signature check or decryption: over-limit costs almost nothing.
        let acquire = || {
            sender.and_then(|a| {
                shared
                    .msg_limiter
                    .lock()
                    .map(|mut l| l.try_acquire(&a, now).err())
                    .unwrap_or(None)
            })
        };
        let mut limited = acquire();
        if limited.is_some() && !burst.envs.is_empty() {
            // The stream chunks among the envelopes gathered give their
            // tokens back once opened (a stream counts as one message).
            burst.open(shared);
            limited = acquire();
        }
        if let Some(retry) = limited {
            debug!(%peer, retry_ms = retry.ms, "message rate limited");
            // Counted (an event, no audit entry: a flood must stay cheap).
            // Not a refusal: the sender sends it again after the wait.
            shared.emit(NodeEvent::Throttled {
                from: peer_label(&peer),
                retry_after_ms: retry.ms,
            });
            burst.open(shared);
            if let Some(id) = env.peek_id() {
                burst.acks.push(MsgFrame::Nack {
                    id,
                    reason: RejectReason::RateLimited,
                    retry_after_ms: Some(retry.ms),
                });
            }
            continue;
        }
        burst.envs.push((env, bytes.len()));
    }
}

/// The envelopes of a stream read but not opened yet, and what the opened
/// ones left to do: their deliveries, and the acks to send once they are on
/// disk. Acks stay in the order the envelopes came.
struct Burst {
    peer: PeerId,
    /// Envelopes with their size on the wire.
    envs: Vec<(SignedEnvelope, usize)>,
    acks: Vec<MsgFrame>,
    batch: Vec<Delivery>,
    /// The path last seen on this stream.
    stream_path: PathKind,
}

impl Burst {
    fn is_empty(&self) -> bool {
        self.envs.is_empty() && self.acks.is_empty()
    }

    fn len(&self) -> usize {
        self.envs.len() + self.acks.len()
    }

    /// Opens the envelopes gathered so far, all in one write (see
    /// [`crate::crypto::session::SessionStore::receive_burst`]).
    fn open(&mut self, shared: &Arc<Shared>) {
        if self.envs.is_empty() {
            return;
        }
        let envs: Vec<(SignedEnvelope, usize)> = std::mem::take(&mut self.envs);
        let now = now_ms();
        let list: Vec<SignedEnvelope> = envs.iter().map(|(e, _)| e.clone()).collect();
        let results = shared.store().receive_burst(&list, now);
        let peer = self.peer;
        let sender = super::amid_of_peer(&peer);
        for ((env, size), result) in envs.into_iter().zip(results) {
            match result {
                Ok((_, received)) if !super::exchange::accepts(shared, &received.kind) => {
                    refuse(
                        shared,
                        Some(peer_label(&peer)),
                        RejectReason::Unavailable,
                        "streams are not accepted".into(),
                    );
                    self.acks.push(MsgFrame::Nack {
                        id: received.id,
                        reason: RejectReason::Unavailable,
                        retry_after_ms: None,
                    });
                }
                Ok((arrival, received)) => {
                    if matches!(received.kind, Kind::Chunk { .. }) {
                        // A stream counts as one message (its end); its chunks
                        // are paced by the stream's window and the receiver's
                        // buffer, not by the message rate.
                        if let (Some(a), Ok(mut l)) = (sender, shared.msg_limiter.lock()) {
                            l.refund(&a);
                        }
                    }
                    // While no connection to the peer is known (one just
                    // closed, the one this stream is on not yet seen), the
                    // path last seen on this stream.
                    let path = match shared.path_to(&peer) {
                        PathKind::Other => self.stream_path,
                        p => {
                            self.stream_path = p;
                            p
                        }
                    };
                    shared.audit(AuditEvent::MessageIn {
                        from: received.from,
                        id: received.id,
                        session: received.session,
                        size: size as u32,
                    });
                    self.acks.push(MsgFrame::Ack { id: received.id });
                    self.batch
                        .push(super::exchange::delivery(arrival, received, path));
                }
                Err(OpenError::Duplicate) => {
                    debug!(%peer, "duplicate envelope acknowledged, not delivered");
                    if let Some(id) = env.peek_id() {
                        self.acks.push(MsgFrame::Ack { id });
                    }
                }
                Err(e) => {
                    let reason = e.reason();
                    refuse(shared, Some(peer_label(&peer)), reason, e.to_string());
                    if let Some(id) = env.peek_id() {
                        self.acks.push(MsgFrame::Nack {
                            id,
                            reason,
                            retry_after_ms: None,
                        });
                    }
                }
            }
        }
    }

    /// Opens what is gathered, flushes the burst to disk, delivers it, and
    /// sends its acks. Returns whether the stream is still usable.
    async fn commit(
        &mut self,
        shared: &Arc<Shared>,
        writer: &mut agentmesh_transports::framing::FrameWriter,
    ) -> bool {
        self.open(shared);
        if self.acks.is_empty() {
            return true;
        }
        if !self.batch.is_empty() {
            if let Err(e) = shared.db.flush_async().await {
                warn!(error = %e, "flush failed; withholding acks");
                return false;
            }
            deliver(shared, std::mem::take(&mut self.batch)).await;
        }
        for a in self.acks.drain(..) {
            if writer.feed(a.to_bytes()).await.is_err() {
                return false;
            }
        }
        writer.flush().await.is_ok()
    }
}
