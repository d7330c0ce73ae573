//! Outbound links: one task per peer that resolves its card, KNOCKs when
//! there is no session, and carries messages on one long-lived stream with a
//! window of unacknowledged messages. On a broken stream it reconnects with
//! back-off (re-resolving the card when dialling fails) and resends what was
//! not acknowledged, in order; the receiver drops duplicates by message id.
//!
//! Sealing advances the Olm ratchet in memory. No envelope leaves the
//! process (on the stream, or to a mailbox) before the state that sealed it
//! is written and flushed, once for the whole burst: a sender that
//! died and came back with an older ratchet would seal its next message
//! under the message key of the last one it sent. Messages are sealed as
//! they come, and written to the stream at the end of the burst, after one
//! flush for all of them (see [`Link::make_durable`]).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use libp2p::PeerId;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, warn};

use agentmesh_dht::now_ms;
use agentmesh_transports::{
    framing::{FrameReader, FrameWriter, FramedStream},
    PathKind,
};

use super::{Command, Outgoing, SendError, Shared, PEER_QUEUE};
use crate::{
    audit::AuditEvent,
    card::{AgentCard, Presence},
    envelope::SessionId,
    events::{NodeEvent, Receipt},
    identity::Amid,
    knock::{Decision, KnockBody, RejectReason, SignedDecision, SignedKnock},
    session::{SealError, SessionStore},
    wire::{MsgFrame, KNOCK_PROTOCOL, MAX_FRAME_SIZE, MSG_PROTOCOL},
};

/// Time to wait for a KNOCK's answer.
const KNOCK_TIMEOUT: Duration = Duration::from_secs(15);
/// First reconnection delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Time to wait for a card lookup.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

type Links =
    std::collections::HashMap<Amid, (mpsc::Sender<Outgoing>, tokio_util::sync::CancellationToken)>;

/// The queue of the link to `peer`, starting the link if needed.
pub(super) fn sender_for(shared: &Arc<Shared>, peer: Amid) -> mpsc::Sender<Outgoing> {
    let mut links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((tx, _)) = links.get(&peer) {
        if !tx.is_closed() {
            return tx.clone();
        }
    }
    spawn_link(shared, &mut links, peer)
}

/// How many links run now.
pub(super) fn running(shared: &Shared) -> usize {
    shared
        .links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|(tx, _)| !tx.is_closed())
        .count()
}

/// Starts the link to `peer`, with `links` locked.
fn spawn_link(shared: &Arc<Shared>, links: &mut Links, peer: Amid) -> mpsc::Sender<Outgoing> {
    let (tx, rx) = mpsc::channel(PEER_QUEUE);
    let cancel = shared.cancel.child_token();
    links.insert(peer, (tx.clone(), cancel.clone()));
    let link = Link {
        cancel,
        shared: shared.clone(),
        peer,
        peer_id: peer.peer_id().ok(),
        queue: tx.downgrade(),
        rx,
        last_active: Instant::now(),
        requeued: VecDeque::new(),
        card: None,
        card_at: None,
        stream_retries: 0,
        stream_path: PathKind::Other,
        writer: None,
        reader: None,
        inflight: VecDeque::new(),
        undurable: false,
        backoff: MIN_BACKOFF,
        reconnect_at: None,
        skipped_knock_for: None,
        card_imported: false,
        skip_imported: false,
        delayed: VecDeque::new(),
        peer_relays: Vec::new(),
        mailbox_until: None,
    };
    tokio::spawn(link.run());
    tx
}

struct InFlight {
    out: Outgoing,
    bytes: Vec<u8>,
    session: SessionId,
    /// When it was last written to a stream.
    sent: Instant,
    /// Whether it was written to the current stream. A message sealed
    /// while the stream is open waits for the end of its burst (see
    /// [`Link::write_pending`]).
    written: bool,
}

struct Link {
    /// Cancelled when the node stops or the owner kills this peer.
    cancel: tokio_util::sync::CancellationToken,
    shared: Arc<Shared>,
    peer: Amid,
    peer_id: Option<PeerId>,
    /// This link's own queue, to tell its entry in `Shared::links` from a
    /// newer link's.
    queue: mpsc::WeakSender<Outgoing>,
    rx: mpsc::Receiver<Outgoing>,
    /// When a message was last queued or a frame last came in.
    last_active: Instant,
    requeued: VecDeque<Outgoing>,
    card: Option<AgentCard>,
    /// When `card` was looked up or read.
    card_at: Option<Instant>,
    /// Streams opened again at once since the last one that worked.
    stream_retries: u8,
    /// The path of the connection the message stream was opened on.
    stream_path: PathKind,
    writer: Option<FrameWriter>,
    reader: Option<FrameReader>,
    inflight: VecDeque<InFlight>,
    /// Whether messages were sealed since the store was last flushed: their
    /// ratchet state must reach the disk before any of them is sent (see
    /// [`Link::make_durable`]).
    undurable: bool,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    /// The session last used without a KNOCK (for the audit log).
    skipped_knock_for: Option<SessionId>,
    /// Whether `card` was imported out of band.
    card_imported: bool,
    /// Dialling the imported card failed: ask the DHT first next time.
    skip_imported: bool,
    /// Messages the peer rate-limited, with when to send them again.
    delayed: VecDeque<(Instant, InFlight)>,
    /// The peer's mailbox relays, from its last card.
    peer_relays: Vec<(PeerId, libp2p::Multiaddr)>,
    /// Until then, the peer is taken to be unreachable: messages go to its
    /// mailbox without a dial first.
    mailbox_until: Option<Instant>,
}

/// How long the oldest message in flight waits for its acknowledgement
/// before the stream is taken to be dead (at most half the delivery
/// timeout).
const ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times in a row a message stream that failed on a peer we
/// reached is opened again at once, before the peer counts as unreachable
/// (and its mail goes to the mailbox).
const STREAM_RETRIES: u8 = 3;

/// How long a peer that could not be dialled is taken to be unreachable.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// How long a card that says `offline` is believed before it is looked up
/// again (the peer may have come back and published a newer one).
const OFFLINE_RECHECK: Duration = Duration::from_secs(30);

/// Why the message stream could not be opened.
enum StreamError {
    /// The peer could not be reached.
    Unreachable(String),
    /// The peer was reached, and opening or writing the stream failed.
    Stream(String),
    /// The messages in flight could not be made durable, so none was sent.
    NotDurable,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "unreachable: {e}"),
            Self::Stream(e) => write!(f, "stream: {e}"),
            Self::NotDurable => write!(f, "sealed messages not on disk"),
        }
    }
}

enum LinkError {
    /// Try again later.
    Retry(String),
    /// Give up on this message.
    Fatal(SendError),
}

impl Link {
    async fn run(mut self) {
        let Some(peer_id) = self.peer_id else {
            while let Some(out) = self.rx.recv().await {
                self.fail(out, SendError::InvalidRecipient);
            }
            return;
        };
        let cancel = self.cancel.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let window_open = self.inflight.len() < self.shared.config.window.max(1);
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                frame = async {
                    match self.reader.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.last_active = Instant::now();
                    self.on_frame(frame);
                }
                _ = async { tokio::time::sleep_until(reconnect_at.unwrap_or_else(Instant::now)).await },
                    if reconnect_at.is_some() => {
                    self.reconnect_at = None;
                    if self.writer.is_none() && self.said_offline(peer_id).await {
                        // Not a failure of the peer's: it said it stopped.
                        debug!(peer = %self.peer.short(), "offline by its card: to the mailbox");
                        self.schedule_reconnect();
                        self.deposit_inflight().await;
                        continue;
                    }
                    let allowed = self.shared.breakers().allow(&self.peer, now_ms());
                    match allowed {
                        Err(open) => {
                            // Wait out the cool-down; deadlines still apply.
                            self.reconnect_at = Some(
                                Instant::now() + Duration::from_millis(open.retry_after_ms.clamp(10, 60_000)),
                            );
                        }
                        Ok(()) => match self.ensure_stream(peer_id).await {
                            Ok(()) => self.stream_retries = 0,
                            Err(StreamError::Stream(e)) if self.stream_retries < STREAM_RETRIES => {
                                // Reached, but the stream failed: most often it
                                // was opened on a connection closed under it (a
                                // relayed one replaced by a direct one). Try
                                // again now rather than call the peer
                                // unreachable.
                                debug!(peer = %self.peer.short(), error = %e, "message stream failed; opening it again");
                                self.stream_retries += 1;
                                self.writer = None;
                                self.reader = None;
                                self.reconnect_at = Some(Instant::now() + MIN_BACKOFF);
                            }
                            // Our disk, not the peer: try again later.
                            Err(StreamError::NotDurable) => self.schedule_reconnect(),
                            Err(e) => {
                                debug!(peer = %self.peer.short(), error = %e, "reconnect failed");
                                self.stream_retries = 0;
                                self.shared.breakers().record_failure(&self.peer, now_ms());
                                self.schedule_reconnect();
                                self.deposit_inflight().await;
                            }
                        },
                    }
                }
                Some(out) = async {
                    match self.requeued.pop_front() {
                        Some(o) => Some(o),
                        None => self.rx.recv().await,
                    }
                }, if window_open => {
                    self.last_active = Instant::now();
                    self.process(peer_id, out).await;
                    self.flush_if_idle().await;
                }
                _ = tick.tick() => {
                    self.expire().await;
                    if self.retire() {
                        return;
                    }
                }
            }
        }
        // Stopped or killed: whatever was not delivered fails, visibly.
        self.rx.close();
        let delayed: Vec<InFlight> = self.delayed.drain(..).map(|(_, m)| m).collect();
        let pending: Vec<Outgoing> = self
            .inflight
            .drain(..)
            .chain(delayed)
            .map(|m| m.out)
            .chain(self.requeued.drain(..))
            .collect();
        for out in pending {
            self.fail(out, SendError::Stopped);
        }
        while let Ok(out) = self.rx.try_recv() {
            self.fail(out, SendError::Stopped);
        }
    }

    /// Ends the link when it has been idle for [`Config::link_idle`]
    /// (nothing queued, in flight, held back or due for a reconnect), so
    /// that a node that wrote to many peers does not keep a task, a queue
    /// and a stream for each for ever. Its entry leaves `Shared::links`
    /// first, under the lock [`sender_for`] takes: a message queued after
    /// that starts a new link; one that slipped into the queue before it
    /// closed is handed to a new link too, before anything else can reach
    /// it, so the order of sends is kept. Returns whether the link ended.
    ///
    /// [`Config::link_idle`]: crate::node::Config::link_idle
    fn retire(&mut self) -> bool {
        let idle = self.inflight.is_empty()
            && self.delayed.is_empty()
            && self.requeued.is_empty()
            && self.reconnect_at.is_none()
            && self.rx.is_empty()
            && self.last_active.elapsed() >= self.shared.config.link_idle;
        if !idle {
            return false;
        }
        let shared = self.shared.clone();
        let mut links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
        let ours = match (links.get(&self.peer), self.queue.upgrade()) {
            (Some((tx, _)), Some(me)) => tx.same_channel(&me),
            _ => false,
        };
        if ours {
            links.remove(&self.peer);
        }
        self.rx.close();
        let mut late = Vec::new();
        while let Ok(out) = self.rx.try_recv() {
            late.push(out);
        }
        if !late.is_empty() {
            let tx = spawn_link(&shared, &mut links, self.peer);
            for out in late {
                // The new queue is empty and as deep as this one was.
                if let Err(e) = tx.try_send(out) {
                    let out = match e {
                        mpsc::error::TrySendError::Full(o)
                        | mpsc::error::TrySendError::Closed(o) => o,
                    };
                    self.fail(out, SendError::Stopped);
                }
            }
        }
        drop(links);
        debug!(peer = %self.peer.short(), "link idle: ended");
        true
    }

    fn schedule_reconnect(&mut self) {
        self.writer = None;
        self.reader = None;
        self.reconnect_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn fail(&self, out: Outgoing, err: SendError) {
        let event = match &err {
            SendError::Rejected(reason) => NodeEvent::Rejected {
                id: out.id,
                to: self.peer,
                reason: *reason,
            },
            e => NodeEvent::Failed {
                id: out.id,
                to: self.peer,
                error: e.to_string(),
            },
        };
        warn!(peer = %self.peer.short(), id = %out.id, error = %err, "message not delivered");
        self.shared.emit(event);
        if let Some(r) = out.reply {
            let _ = r.send(Err(err));
        }
    }

    fn delivered(&self, out: Outgoing, path: PathKind, knocked: bool, session: SessionId) {
        let receipt = Receipt {
            id: out.id,
            to: self.peer,
            path,
            knocked,
            session,
        };
        self.shared.emit(NodeEvent::Delivered {
            id: out.id,
            to: self.peer,
            path,
            knocked,
            latency_ms: Some(u64::try_from(out.queued.elapsed().as_millis()).unwrap_or(u64::MAX)),
        });
        if let Some(r) = out.reply {
            let _ = r.send(Ok(receipt));
        }
    }

    /// Fails messages whose delivery deadline passed, and puts messages
    /// the peer rate-limited back in flight once their wait is over.
    async fn expire(&mut self) {
        let now = Instant::now();
        while self.inflight.front().is_some_and(|m| m.out.deadline <= now) {
            if let Some(m) = self.inflight.pop_front() {
                self.fail(m.out, SendError::NotAcknowledged);
            }
        }
        self.deposit_unacknowledged(now).await;
        let mut resend = false;
        while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, m)) = self.delayed.pop_front() {
                if m.out.deadline <= now {
                    self.fail(m.out, SendError::Rejected(RejectReason::RateLimited));
                } else {
                    resend = true;
                    self.inflight.push_back(InFlight {
                        sent: now,
                        written: false,
                        ..m
                    });
                }
            }
        }
        if self.writer.is_some() {
            // Also writes a burst held back by a failed flush.
            self.write_pending().await;
        } else if resend {
            // ensure_stream resends everything in flight.
            self.reconnect_at = Some(now);
        }
    }

    /// A stream on which the oldest message waited [`ACK_TIMEOUT`] for its
    /// acknowledgement is taken to be dead (a peer that hangs, a connection
    /// that broke without a word): its connection is closed and what is in
    /// flight goes to the peer's mailbox. Should the peer have stored a
    /// message after all, it drops the mailbox copy by envelope id.
    async fn deposit_unacknowledged(&mut self, now: Instant) {
        let wait = ACK_TIMEOUT.min(self.shared.config.delivery_timeout / 2);
        let stale = self
            .inflight
            .front()
            .is_some_and(|m| now.saturating_duration_since(m.sent) >= wait);
        if !stale || self.writer.is_none() || self.peer_relays.is_empty() {
            return;
        }
        warn!(
            peer = %self.peer.short(),
            in_flight = self.inflight.len(),
            "no acknowledgement in time; closing the connection and using the mailbox"
        );
        self.writer = None;
        self.reader = None;
        if let Some(peer) = self.peer_id {
            let _ = self
                .shared
                .commands
                .send(Command::Disconnect { peer })
                .await;
        }
        self.deposit_inflight().await;
        if !self.inflight.is_empty() {
            self.schedule_reconnect();
        }
    }

    async fn process(&mut self, peer_id: PeerId, out: Outgoing) {
        if out.deadline <= Instant::now() {
            self.fail(out, SendError::DeliveryTimeout);
            return;
        }
        let current = match out.session {
            None => self
                .shared
                .store()
                .current_session(&self.peer, now_ms())
                .map(|s| s.id),
            // A message of a given session (a reply, a conversation's end)
            // never opens another one.
            Some(s) => match self.shared.store().session(&self.peer, &s, now_ms()) {
                Some(_) => Some(s),
                None => {
                    self.fail(out, SendError::SessionEnded { session: Some(s) });
                    return;
                }
            },
        };
        let Some(session) = current else {
            self.knock(peer_id, out).await;
            return;
        };
        if self.skipped_knock_for != Some(session) {
            // A cached contact: no KNOCK. Noted once per session.
            self.skipped_knock_for = Some(session);
            self.shared.audit(AuditEvent::KnockSkipped {
                peer: self.peer,
                session,
            });
        }
        let sealed = self.shared.store().seal(
            &self.shared.identity,
            &self.peer,
            Some(session),
            out.id,
            &out.content,
            now_ms(),
        );
        let env = match sealed {
            Ok(e) => e,
            Err(SealError::SessionEnded(s)) => {
                self.fail(out, SendError::SessionEnded { session: Some(s) });
                return;
            }
            Err(e) => {
                self.fail(out, SendError::InvalidPayload(e.to_string()));
                return;
            }
        };
        self.undurable = true;
        self.inflight.push_back(InFlight {
            out,
            bytes: MsgFrame::Envelope(env.to_bytes()).to_bytes(),
            session,
            sent: Instant::now(),
            written: false,
        });
        if self.writer.is_none() && self.unreachable(peer_id) {
            // Dialled and failed moments ago: straight to the mailbox.
            self.deposit_inflight().await;
            return;
        }
        if self.writer.is_none() {
            // New work: try to connect now rather than at the end of the
            // back-off; the attempt sends everything in flight, in order.
            self.backoff = MIN_BACKOFF;
            self.reconnect_at = Some(Instant::now());
        }
        // With a stream open, the message is written when the burst ends
        // (see `flush_if_idle`).
    }

    /// Ends a burst once no more messages are waiting, when the window is
    /// full (the acks we wait for need the frames out), or when a quarter
    /// of the window is sealed and not written (so that the peer opens one
    /// part of a long burst while we seal the next, rather than both sides
    /// taking turns): writes what it sealed, after one flush for all of it.
    async fn flush_if_idle(&mut self) {
        let window = self.shared.config.window.max(1);
        let window_full = self.inflight.len() >= window;
        let unwritten = self
            .inflight
            .iter()
            .rev()
            .take_while(|m| !m.written)
            .count();
        if window_full
            || unwritten >= (window / 4).max(1)
            || (self.rx.is_empty() && self.requeued.is_empty())
        {
            self.write_pending().await;
        }
    }

    /// Puts the ratchet state of every message sealed so far on disk, with
    /// one flush for all of them. Call it before any sealed envelope leaves
    /// the process: a sender killed after sending, and restarted on the
    /// ratchet it had before, would seal its next message under the same
    /// message key as the last one (two plaintexts under one key, and a
    /// peer that cannot decrypt the second). Returns `false` when the flush
    /// failed; then nothing may be sent until a later call succeeds.
    async fn make_durable(&mut self) -> bool {
        if !self.undurable {
            return true;
        }
        // The ratchets sealing advanced are written once per burst, here.
        if let Err(e) = self.shared.store().save(now_ms()) {
            warn!(peer = %self.peer.short(), error = %e, "saving sealed sessions failed; sealed messages held back");
            return false;
        }
        match self.shared.db.flush_async().await {
            Ok(_) => {
                self.undurable = false;
                true
            }
            Err(e) => {
                warn!(peer = %self.peer.short(), error = %e, "flush failed; sealed messages held back");
                false
            }
        }
    }

    /// Writes the messages in flight that are not on the open stream yet,
    /// in order, once they are durable, and flushes the stream. After a
    /// failed flush they stay unwritten, and the next tick tries again
    /// (see `expire`).
    async fn write_pending(&mut self) {
        if self.writer.is_none() || self.inflight.iter().all(|m| m.written) {
            return;
        }
        if !self.make_durable().await {
            return;
        }
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut result = Ok(());
        for m in self.inflight.iter_mut().filter(|m| !m.written) {
            result = w.feed(m.bytes.clone()).await;
            if result.is_err() {
                break;
            }
            m.written = true;
            m.sent = now;
        }
        if result.is_ok() {
            result = w.flush().await;
        }
        if let Err(e) = result {
            debug!(peer = %self.peer.short(), error = %e, "send failed");
            self.schedule_reconnect();
        }
    }

    fn on_frame(
        &mut self,
        frame: Result<Option<bytes::Bytes>, agentmesh_transports::framing::FrameError>,
    ) {
        let Ok(Some(bytes)) = frame else {
            debug!(peer = %self.peer.short(), "message stream closed");
            self.schedule_reconnect();
            return;
        };
        let (id, nack, retry_after_ms) = match MsgFrame::from_bytes(&bytes) {
            Ok(MsgFrame::Ack { id }) => (id, None, None),
            Ok(MsgFrame::Nack {
                id,
                reason,
                retry_after_ms,
            }) => (id, Some(reason), retry_after_ms),
            Ok(_) | Err(_) => {
                warn!(peer = %self.peer.short(), "peer broke the message protocol");
                self.schedule_reconnect();
                return;
            }
        };
        let Some(pos) = self.inflight.iter().position(|m| m.out.id == id) else {
            debug!(%id, "ack for a message not in flight");
            return;
        };
        let Some(m) = self.inflight.remove(pos) else {
            return;
        };
        self.backoff = MIN_BACKOFF;
        match nack {
            None => {
                self.shared.breakers().record_success(&self.peer, now_ms());
                // The peer's best connection; while none is known (one
                // just closed, the next not yet seen), the stream's.
                let path = match self.peer_id.map(|p| self.shared.path_to(&p)) {
                    Some(p) if p != PathKind::Other => p,
                    _ => self.stream_path,
                };
                self.shared.audit(AuditEvent::MessageOut {
                    to: self.peer,
                    id: m.out.id,
                    session: m.session,
                    size: m.bytes.len() as u32,
                    path: path.to_string(),
                });
                self.delivered(m.out, path, false, m.session);
            }
            Some(RejectReason::UnknownSession) if m.out.session.is_some() => {
                // The peer ended the session this message belongs to.
                let _ = self.shared.store().forget_session(&self.peer, &m.session);
                self.fail(
                    m.out,
                    SendError::SessionEnded {
                        session: Some(m.session),
                    },
                );
            }
            Some(reason @ (RejectReason::UnknownSession | RejectReason::DecryptFailed))
                if m.out.reknocks == 0 =>
            {
                // The peer lost or expired the session, or our ratchet state
                // and theirs diverged (e.g. a crash before a flush): open a
                // new session with a KNOCK, once per message.
                let mut store = self.shared.store();
                if let Some(s) = store.current_session(&self.peer, now_ms()) {
                    let _ = store.forget_session(&self.peer, &s.id);
                }
                drop(store);
                debug!(peer = %self.peer.short(), %reason, "re-opening the session with a knock");
                let mut out = m.out;
                out.reknocks += 1;
                self.requeued.push_back(out);
            }
            Some(RejectReason::RateLimited) if m.out.deadline > Instant::now() => {
                // Not opened by the peer: the same envelope is sent again
                // once the peer's bucket has a token.
                let wait = Duration::from_millis(retry_after_ms.unwrap_or(1000).clamp(10, 60_000));
                debug!(peer = %self.peer.short(), ?wait, "rate limited by peer; will resend");
                self.delayed.push_back((Instant::now() + wait, m));
            }
            Some(reason) => self.fail(m.out, SendError::Rejected(reason)),
        }
    }

    async fn resolve(&mut self) -> Result<AgentCard, LinkError> {
        if let Some(c) = &self.card {
            if c.expires_ms > now_ms() {
                return Ok(c.clone());
            }
        }
        // A card imported out of band reaches the peer with no DHT; once
        // dialling it failed, the DHT is asked first (the peer may have
        // moved and published a newer card), and the imported card is
        // tried again only when the DHT has none.
        if !self.skip_imported {
            if let Some(card) = self.shared.contacts.card(&self.peer, now_ms()) {
                self.take_card(card.clone(), true);
                return Ok(card);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Resolve {
                amid: self.peer,
                reply: tx,
            })
            .await
            .map_err(|_| LinkError::Fatal(SendError::Stopped))?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
            Ok(Ok(Some(card))) => {
                self.take_card(card.clone(), false);
                Ok(card)
            }
            Ok(Ok(None)) | Err(_) => {
                if std::mem::take(&mut self.skip_imported) {
                    if let Some(card) = self.shared.contacts.card(&self.peer, now_ms()) {
                        self.take_card(card.clone(), true);
                        return Ok(card);
                    }
                }
                Err(LinkError::Retry("card not found".into()))
            }
            Ok(Err(_)) => Err(LinkError::Fatal(SendError::Stopped)),
        }
    }

    /// Uses `card` from now on (`imported`: out of band, not from the DHT).
    fn take_card(&mut self, card: AgentCard, imported: bool) {
        self.peer_relays = card.relay_addrs();
        self.card = Some(card);
        self.card_at = Some(Instant::now());
        self.card_imported = imported;
    }

    /// Whether the peer, not connected to us, said it went offline: a
    /// newer card in our own DHT store (a peer pushes its offline card to
    /// the peers it is connected to as it stops) or a looked-up one.
    /// Messages for it then go to its mailbox without a dial that could
    /// only time out. A card that says `offline` is looked up again after
    /// [`OFFLINE_RECHECK`], so a peer that came back is dialled again.
    async fn said_offline(&mut self, peer_id: PeerId) -> bool {
        if self.peer_relays.is_empty() || self.is_connected(peer_id) {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        let asked = self
            .shared
            .commands
            .send(Command::LocalCard {
                amid: self.peer,
                reply: tx,
            })
            .await;
        if let (Ok(()), Ok(Some(local))) = (asked, rx.await) {
            if self.card.as_ref().is_none_or(|c| local.seq > c.seq) {
                self.take_card(local, false);
            }
        }
        let offline = |c: &Option<AgentCard>| {
            c.as_ref()
                .is_some_and(|c| c.presence == Presence::Offline && c.expires_ms > now_ms())
        };
        let stale = self.card_at.is_none_or(|t| t.elapsed() >= OFFLINE_RECHECK);
        if offline(&self.card) && stale {
            let believed = self.card.take();
            if self.resolve().await.is_err() {
                // Not found now: keep what we had, and ask again later.
                self.card = believed;
                self.card_at = Some(Instant::now());
            }
        }
        offline(&self.card)
    }

    fn is_connected(&self, peer_id: PeerId) -> bool {
        self.shared
            .paths
            .lock()
            .map(|p| p.contains_key(&peer_id))
            .unwrap_or(false)
    }

    async fn connect(&mut self, peer_id: PeerId) -> Result<PathKind, LinkError> {
        let card = self.resolve().await?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Connect {
                peer: peer_id,
                addrs: card.multiaddrs(),
                reply: tx,
            })
            .await
            .map_err(|_| LinkError::Fatal(SendError::Stopped))?;
        match rx.await {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(e)) => {
                // The card may be stale (the peer restarted elsewhere).
                self.card = None;
                self.skip_imported = self.card_imported;
                Err(LinkError::Retry(e))
            }
            Err(_) => Err(LinkError::Fatal(SendError::Stopped)),
        }
    }

    /// Whether the peer failed a dial moments ago and has not connected
    /// since.
    fn unreachable(&self, peer_id: PeerId) -> bool {
        !self.is_connected(peer_id) && self.mailbox_until.is_some_and(|t| t > Instant::now())
    }

    /// The peer cannot be reached: hands everything in flight, in order, to
    /// its mailbox relays. A message is done once a relay holds it on disk;
    /// its receipt says `mailbox`, and [`NodeEvent::Delivered`] follows when
    /// the peer has fetched it.
    async fn deposit_inflight(&mut self) {
        if self.inflight.is_empty() || self.peer_relays.is_empty() {
            return;
        }
        if !self.make_durable().await {
            // Nothing leaves before it is durable: try again later.
            if self.reconnect_at.is_none() {
                self.schedule_reconnect();
            }
            return;
        }
        while let Some(m) = self.inflight.pop_front() {
            let Ok(MsgFrame::Envelope(envelope)) = MsgFrame::from_bytes(&m.bytes) else {
                self.fail(m.out, SendError::InvalidPayload("not an envelope".into()));
                continue;
            };
            let relays = self.peer_relays.clone();
            match super::mailbox::deposit(&self.shared, &self.peer, &relays, &envelope).await {
                Ok(n) => {
                    self.mailbox_until = Some(Instant::now() + UNREACHABLE_FOR);
                    self.shared.audit(AuditEvent::MessageOut {
                        to: self.peer,
                        id: m.out.id,
                        session: m.session,
                        size: envelope.len() as u32,
                        path: PathKind::Mailbox.to_string(),
                    });
                    self.shared.emit(NodeEvent::Deposited {
                        id: m.out.id,
                        to: self.peer,
                        relays: n,
                    });
                    if let Some(r) = m.out.reply {
                        let _ = r.send(Ok(Receipt {
                            id: m.out.id,
                            to: self.peer,
                            path: PathKind::Mailbox,
                            knocked: false,
                            session: m.session,
                        }));
                    }
                }
                Err(e @ crate::mailbox::MailboxError::Refused { .. }) => {
                    self.fail(m.out, SendError::Mailbox(e));
                }
                Err(e) => {
                    // No relay reachable either: keep it for the next try.
                    debug!(peer = %self.peer.short(), error = %e, "mailbox unreachable");
                    self.inflight.push_front(m);
                    return;
                }
            }
        }
        // Nothing left to resend: no reason to keep dialling.
        self.reconnect_at = None;
    }

    /// Opens the message stream and resends everything in flight.
    /// An error means the peer could not be reached
    /// ([`StreamError::Unreachable`]) or was reached and the stream failed
    /// ([`StreamError::Stream`]).
    async fn ensure_stream(&mut self, peer_id: PeerId) -> Result<(), StreamError> {
        if self.writer.is_some() {
            return Ok(());
        }
        if !self.make_durable().await {
            return Err(StreamError::NotDurable);
        }
        match self.connect(peer_id).await {
            Ok(path) => self.stream_path = path,
            Err(LinkError::Retry(e)) => return Err(StreamError::Unreachable(e)),
            Err(LinkError::Fatal(e)) => return Err(StreamError::Unreachable(e.to_string())),
        }
        let failed = |e: &dyn std::fmt::Display| StreamError::Stream(e.to_string());
        let mut control = self.shared.control.clone();
        let stream = control
            .open_stream(peer_id, MSG_PROTOCOL)
            .await
            .map_err(|e| failed(&e))?;
        let (mut w, r) = FramedStream::new(stream, MAX_FRAME_SIZE).split();
        for m in &self.inflight {
            w.feed(m.bytes.clone()).await.map_err(|e| failed(&e))?;
        }
        w.flush().await.map_err(|e| failed(&e))?;
        let now = Instant::now();
        for m in &mut self.inflight {
            m.sent = now;
            m.written = true;
        }
        self.writer = Some(w);
        self.reader = Some(r);
        Ok(())
    }

    /// Opens a session with a KNOCK that carries `out` as its first message.
    async fn knock(&mut self, peer_id: PeerId, out: Outgoing) {
        let mut use_fallback = false;
        let mut backoff = MIN_BACKOFF;
        loop {
            if out.deadline <= Instant::now() {
                let err = if self.card.is_none() {
                    SendError::NotFound(self.peer)
                } else {
                    SendError::DeliveryTimeout
                };
                self.fail(out, err);
                return;
            }
            if let Err(open) = self.shared.breakers().allow(&self.peer, now_ms()) {
                self.fail(
                    out,
                    SendError::CircuitOpen {
                        retry_after_ms: open.retry_after_ms,
                    },
                );
                return;
            }
            let attempt = self.try_knock(peer_id, &out, use_fallback).await;
            match &attempt {
                Ok((Decision::Accept { .. }, _, _)) => {
                    self.shared.breakers().record_success(&self.peer, now_ms())
                }
                Ok((
                    Decision::Reject {
                        reason: RejectReason::PrekeyUnavailable,
                        ..
                    },
                    _,
                    _,
                )) => {}
                Ok(_) | Err(LinkError::Retry(_)) => {
                    self.shared.breakers().record_failure(&self.peer, now_ms())
                }
                Err(LinkError::Fatal(_)) => {}
            }
            match attempt {
                Ok((decision, pending, path)) => match decision {
                    Decision::Accept { expires_ms, .. } => {
                        // No flush needed: the first message was sealed in
                        // a session made for this KNOCK from a fresh
                        // ephemeral key, and the session is stored only
                        // here. Should we die before it reaches the disk,
                        // we come back without it and KNOCK again with a
                        // new session: no message key is used twice. The
                        // next messages in it flush it with their burst
                        // (`make_durable`).
                        let committed = self.shared.store().commit_outbound(pending, expires_ms);
                        let info = match committed {
                            Ok(info) => info,
                            Err(e) => {
                                self.fail(out, SendError::Storage(e.to_string()));
                                return;
                            }
                        };
                        self.shared.audit(AuditEvent::SessionOpened {
                            peer: self.peer,
                            session: info.id,
                            role: "initiator".into(),
                        });
                        self.shared.audit(AuditEvent::MessageOut {
                            to: self.peer,
                            id: out.id,
                            session: info.id,
                            size: 0,
                            path: path.to_string(),
                        });
                        self.delivered(out, path, true, info.id);
                        return;
                    }
                    Decision::Reject {
                        reason: RejectReason::PrekeyUnavailable,
                        ..
                    } if !use_fallback => {
                        debug!(peer = %self.peer.short(), "prekey used up; retrying with the fallback key");
                        use_fallback = true;
                        self.card = None;
                    }
                    Decision::Reject { reason, .. } => {
                        self.fail(out, SendError::Rejected(reason));
                        return;
                    }
                },
                Err(LinkError::Fatal(e)) => {
                    self.fail(out, e);
                    return;
                }
                Err(LinkError::Retry(e)) => {
                    debug!(peer = %self.peer.short(), error = %e, "knock attempt failed");
                    let wait = backoff.min(out.deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_knock(
        &mut self,
        peer_id: PeerId,
        out: &Outgoing,
        use_fallback: bool,
    ) -> Result<(Decision, crate::session::PendingOutbound, PathKind), LinkError> {
        let path = self.connect(peer_id).await?;
        let card = self.resolve().await?;
        let now = now_ms();
        let (pending, first) = self
            .shared
            .store()
            .seal_first(
                &self.shared.identity,
                &card,
                use_fallback,
                out.intent.clone(),
                out.id,
                &out.content,
                now,
            )
            .map_err(|e| LinkError::Fatal(SendError::InvalidPayload(e.to_string())))?;
        let body = KnockBody {
            from: self.shared.amid,
            to: self.peer,
            intent: out.intent.clone(),
            session: SessionStore::pending_session_id(&pending),
            ts_ms: now,
            nonce: crate::storage::random_array(),
            first: first.to_bytes(),
            credentials: self.shared.credentials(),
        };
        let knock = SignedKnock::sign(&self.shared.identity, &body)
            .map_err(|e| LinkError::Fatal(SendError::InvalidPayload(e.to_string())))?;
        let mut control = self.shared.control.clone();
        let stream = control
            .open_stream(peer_id, KNOCK_PROTOCOL)
            .await
            .map_err(|e| LinkError::Retry(e.to_string()))?;
        let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
        framed
            .send(knock.to_bytes())
            .await
            .map_err(|e| LinkError::Retry(e.to_string()))?;
        let answer = tokio::time::timeout(KNOCK_TIMEOUT, framed.recv())
            .await
            .map_err(|_| LinkError::Retry("knock timed out".into()))?
            .map_err(|e| LinkError::Retry(e.to_string()))?
            .ok_or_else(|| LinkError::Retry("peer closed the knock stream".into()))?;
        let decision = SignedDecision::from_bytes(&answer)
            .and_then(|d| d.verify(&self.peer, &knock))
            .map(|(decision, _policy_hash)| decision)
            .map_err(|e| {
                warn!(peer = %self.peer.short(), error = %e, "invalid knock answer");
                LinkError::Retry(e.to_string())
            })?;
        Ok((decision, pending, path))
    }
}
