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

mod card;
mod knock;
mod mailbox;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use libp2p::PeerId;
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, warn};

use agentmesh_dht::now_ms;
use agentmesh_transports::{
    framing::{FrameReader, FrameWriter, FramedStream},
    PathKind,
};

use super::{
    cores::delivery::{
        AfterSeal, Delivery, Failure, Nacked, Pending, StreamFailure, MAX_BACKOFF, MIN_BACKOFF,
    },
    Outgoing, SendError, Shared, PEER_QUEUE,
};
use crate::{
    audit::AuditEvent,
    card::AgentCard,
    crypto::envelope::SessionId,
    crypto::session::SealError,
    events::{NodeEvent, Receipt},
    identity::Amid,
    knock::RejectReason,
    wire::{MsgFrame, MAX_FRAME_SIZE, MSG_PROTOCOL},
};

/// Time to wait for a KNOCK's answer.
const KNOCK_TIMEOUT: Duration = Duration::from_secs(15);
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
        moved_checked: None,
        stream_path: PathKind::Other,
        writer: None,
        reader: None,
        delivery: Delivery::new(shared.config.window, shared.config.delivery_timeout),
        skipped_knock_for: None,
        card_imported: false,
        skip_imported: false,
        peer_relays: Vec::new(),
    };
    tokio::spawn(link.run());
    tx
}

/// A sealed message, as the delivery machine holds it.
struct InFlight {
    out: Outgoing,
    /// The envelope's frame.
    bytes: Vec<u8>,
    session: SessionId,
}

impl Pending for InFlight {
    fn id(&self) -> crate::crypto::envelope::MessageId {
        self.out.id
    }

    fn deadline(&self) -> std::time::Instant {
        self.out.deadline.into_std()
    }

    fn pinned(&self) -> bool {
        self.out.session.is_some()
    }

    fn reopened(&self) -> u8 {
        self.out.reknocks
    }
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
    /// When the DHT was last asked whether the peer moved to a new key
    /// (before mail goes to its mailbox).
    moved_checked: Option<Instant>,
    /// The path of the connection the message stream was opened on.
    stream_path: PathKind,
    writer: Option<FrameWriter>,
    reader: Option<FrameReader>,
    /// The window, back-off, stream retries and mailbox fallback; it knows
    /// whether sealed messages must reach the disk before any of them is
    /// sent (see [`Link::make_durable`]). The stream is open in it exactly
    /// when `writer` is set.
    delivery: Delivery<InFlight>,
    /// The session last used without a KNOCK (for the audit log).
    skipped_knock_for: Option<SessionId>,
    /// Whether `card` was imported out of band.
    card_imported: bool,
    /// Dialling the imported card failed: ask the DHT first next time.
    skip_imported: bool,
    /// The peer's mailbox relays, from its last card.
    peer_relays: Vec<(PeerId, libp2p::Multiaddr)>,
}

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

impl StreamError {
    fn kind(&self) -> StreamFailure {
        match self {
            Self::Unreachable(_) => StreamFailure::Unreachable,
            Self::Stream(_) => StreamFailure::Stream,
            Self::NotDurable => StreamFailure::NotDurable,
        }
    }
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
            let window_open = self.delivery.window_open();
            let reconnect_at = self.delivery.reconnect_at().map(Instant::from_std);
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
                    self.delivery.handle_reconnect_due();
                    if self.writer.is_none() && self.said_offline(peer_id).await {
                        // Not a failure of the peer's: it said it stopped.
                        debug!(peer = %self.peer.short(), "offline by its card: to the mailbox");
                        self.close_stream();
                        self.deposit_inflight().await;
                        continue;
                    }
                    let allowed = self.shared.breakers().allow(&self.peer, now_ms());
                    match allowed {
                        Err(open) => {
                            // Wait out the cool-down; deadlines still apply.
                            self.delivery.reconnect_later(
                                std::time::Instant::now() + Duration::from_millis(open.retry_after_ms.clamp(10, 60_000)),
                            );
                        }
                        Ok(()) => {
                            if let Err(e) = self.ensure_stream(peer_id).await {
                                self.stream_failed(e).await;
                            }
                        }
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
        let pending: Vec<Outgoing> = self
            .delivery
            .drain()
            .into_iter()
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
    /// [`Config::link_idle`]: crate::runtime::Config::link_idle
    fn retire(&mut self) -> bool {
        let idle = self.delivery.is_idle()
            && self.requeued.is_empty()
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

    /// The stream closed or broke: another is opened after the back-off.
    fn close_stream(&mut self) {
        self.writer = None;
        self.reader = None;
        self.delivery
            .handle_stream_closed(std::time::Instant::now());
    }

    /// Opening the stream failed: open it again at once (a few times), or
    /// later, or take the peer to be unreachable and use its mailbox.
    async fn stream_failed(&mut self, e: StreamError) {
        self.writer = None;
        self.reader = None;
        let now = std::time::Instant::now();
        match self.delivery.handle_stream_failed(e.kind(), now) {
            Failure::RetrySoon => {
                debug!(peer = %self.peer.short(), error = %e, "message stream failed; opening it again");
            }
            Failure::Later => {}
            Failure::Unreachable => {
                debug!(peer = %self.peer.short(), error = %e, "reconnect failed");
                self.shared.breakers().record_failure(&self.peer, now_ms());
                self.deposit_inflight().await;
            }
        }
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

    /// Fails messages whose delivery deadline passed, gives up a stream
    /// whose oldest message waited too long, and puts messages the peer
    /// rate-limited back in flight once their wait is over.
    async fn expire(&mut self) {
        let tick = self.delivery.handle_tick(std::time::Instant::now());
        for m in tick.expired {
            self.fail(m.out, SendError::NotAcknowledged);
        }
        if tick.stale {
            self.deposit_unacknowledged().await;
        }
        let released = self.delivery.release_delayed(std::time::Instant::now());
        for m in released.rate_limited {
            self.fail(m.out, SendError::Rejected(RejectReason::RateLimited));
        }
        if self.writer.is_some() {
            // Also writes a burst held back by a failed flush.
            self.write_pending().await;
        }
    }

    async fn process(&mut self, peer_id: PeerId, out: Outgoing) {
        if out.deadline <= Instant::now() {
            self.fail(out, SendError::DeliveryTimeout);
            return;
        }
        let current = match out.session {
            // A message naming a schema goes in a session we opened with
            // that schema (the peer checks it there); one naming none, in
            // any session where our messages are not checked.
            None => self
                .shared
                .store()
                .current_session_where(&self.peer, now_ms(), |s| {
                    crate::schema::session_fits(s, out.intent.schema.as_deref())
                })
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
        let m = InFlight {
            out,
            bytes: MsgFrame::Envelope(env.to_bytes()).to_bytes(),
            session,
        };
        let connected = self.writer.is_none() && self.is_connected(peer_id);
        match self
            .delivery
            .handle_sealed(m, connected, std::time::Instant::now())
        {
            // Dialled and failed moments ago: straight to the mailbox.
            AfterSeal::Deposit => self.deposit_inflight().await,
            // The reconnection due now sends everything in flight, in
            // order; with a stream open, the message is written when the
            // burst ends (see `flush_if_idle`).
            AfterSeal::Connect | AfterSeal::Wait => {}
        }
    }

    /// Ends a burst once no more messages are waiting, when the window is
    /// full (the acks we wait for need the frames out), or when a quarter
    /// of the window is sealed and not written (so that the peer opens one
    /// part of a long burst while we seal the next, rather than both sides
    /// taking turns): writes what it sealed, after one flush for all of it.
    async fn flush_if_idle(&mut self) {
        if self
            .delivery
            .should_end_burst(self.rx.is_empty() && self.requeued.is_empty())
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
        if !self.delivery.needs_durable() {
            return true;
        }
        // The ratchets sealing advanced are written once per burst, here.
        if let Err(e) = self.shared.store().save(now_ms()) {
            warn!(peer = %self.peer.short(), error = %e, "saving sealed sessions failed; sealed messages held back");
            return false;
        }
        match self.shared.db.flush_async().await {
            Ok(_) => {
                self.delivery.handle_durable();
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
        if !self.delivery.has_unwritten() {
            return;
        }
        if !self.make_durable().await {
            return;
        }
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let mut result = Ok(());
        for m in self.delivery.unwritten(std::time::Instant::now()) {
            result = w.feed(m.bytes.clone()).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = w.flush().await;
        }
        if let Err(e) = result {
            // The next stream carries everything in flight again.
            debug!(peer = %self.peer.short(), error = %e, "send failed");
            self.close_stream();
        }
    }

    fn on_frame(
        &mut self,
        frame: Result<Option<bytes::Bytes>, agentmesh_transports::framing::FrameError>,
    ) {
        let Ok(Some(bytes)) = frame else {
            debug!(peer = %self.peer.short(), "message stream closed");
            self.close_stream();
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
                self.close_stream();
                return;
            }
        };
        let Some(reason) = nack else {
            match self.delivery.handle_ack(id) {
                Some(m) => self.acknowledged(m),
                None => debug!(%id, "ack for a message not in flight"),
            }
            return;
        };
        let retry_after = retry_after_ms.map(Duration::from_millis);
        let now = std::time::Instant::now();
        match self.delivery.handle_nack(id, reason, retry_after, now) {
            None => debug!(%id, "nack for a message not in flight"),
            Some(Nacked::SessionEnded(m)) => {
                // The peer ended the session this message belongs to.
                let _ = self.shared.store().forget_session(&self.peer, &m.session);
                self.fail(
                    m.out,
                    SendError::SessionEnded {
                        session: Some(m.session),
                    },
                );
            }
            Some(Nacked::Reopen(m)) => {
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
            Some(Nacked::Delayed) => {
                debug!(peer = %self.peer.short(), ?retry_after, "rate limited by peer; will resend");
            }
            Some(Nacked::Rejected(m, reason)) => self.fail(m.out, SendError::Rejected(reason)),
        }
    }

    /// The peer acknowledged `m`: it is delivered.
    fn acknowledged(&mut self, m: InFlight) {
        self.shared.breakers().record_success(&self.peer, now_ms());
        // The peer's best connection; while none is known (one just
        // closed, the next not yet seen), the stream's.
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
        for m in self.delivery.all_in_flight() {
            w.feed(m.bytes.clone()).await.map_err(|e| failed(&e))?;
        }
        w.flush().await.map_err(|e| failed(&e))?;
        self.delivery
            .handle_stream_opened(std::time::Instant::now());
        self.writer = Some(w);
        self.reader = Some(r);
        Ok(())
    }
}
