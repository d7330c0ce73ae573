//! The session types on top of messages: requests with correlated replies,
//! conversations that either side ends, and streams of chunks with
//! back-pressure and a clean end.
//!
//! Each is a [`Kind`] in the encrypted [`Content`] of ordinary envelopes, so
//! it rides the same link, acks, resends and duplicate checks as any message.
//! - A request waits in [`Shared::requests`] under its message id; a reply
//!   naming it goes to the waiter, not to the inbox (a late reply, once the
//!   waiter gave up, goes to the inbox).
//! - A conversation's end is a message of its session: it arrives after
//!   every turn sent before it; then both sides forget the session, and
//!   messages bound to it fail with [`SendError::SessionEnded`].
//! - A stream is a sequence of chunk messages, each its own envelope. The
//!   receiving node buffers [`STREAM_BUFFER`] chunks per stream; when the
//!   application reads slower than that, the chunk's ack is withheld, and
//!   the sender, which keeps at most [`STREAM_WINDOW`] chunks unacknowledged,
//!   waits. A stream is bound to the session of its first chunk and does
//!   not survive a restart of either side.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use agentmesh_transports::PathKind;

use super::{json_content, Delivery, Node, SendError, Shared};
use crate::{
    audit::AuditEvent,
    content::{Content, Kind, MAX_CHUNK_SIZE},
    crypto::envelope::{MessageId, SessionId, StreamId},
    crypto::session::Received,
    events::{Message, NodeEvent, Receipt},
    identity::Amid,
    knock::{Intent, SessionType},
};

/// Depth of the queue of new incoming streams to the application.
pub(super) const NEW_STREAM_QUEUE: usize = 16;
/// Chunks the receiving node buffers per stream before it withholds acks.
pub const STREAM_BUFFER: usize = 16;
/// Chunks a [`StreamSender`] keeps unacknowledged at most.
pub const STREAM_WINDOW: usize = 16;
/// Most incoming streams open at once; more are refused.
const MAX_INCOMING_STREAMS: usize = 64;
/// Most requests waiting for a reply at once.
const MAX_PENDING_REQUESTS: usize = 4096;

/// What a stream's receiver is handed.
#[derive(Debug)]
enum Item {
    Chunk(Vec<u8>),
    End,
    Broken(String),
}

struct InStream {
    tx: mpsc::Sender<Item>,
    next: u64,
    session: SessionId,
}

/// Incoming streams by sender and stream id.
#[derive(Default)]
pub(super) struct Incoming {
    streams: HashMap<(Amid, StreamId), InStream>,
    /// Whether the application took [`Node::streams`]; until then streams
    /// are refused.
    accepting: bool,
}

/// A received message as handed to [`route`].
pub(super) fn delivery(arrival: Option<u64>, mut r: Received, path: PathKind) -> Delivery {
    let data = std::mem::take(&mut r.data);
    let kind = r.kind;
    Delivery {
        arrival,
        restored: false,
        message: Message::new(r, path),
        data,
        kind,
    }
}

/// Whether a received message can be taken: stream chunks are refused
/// while the application does not accept streams.
pub(super) fn accepts(shared: &Shared, kind: &Kind) -> bool {
    match kind {
        Kind::Chunk { .. } | Kind::Finish { .. } => shared
            .streams_in
            .lock()
            .map(|i| i.accepting)
            .unwrap_or(false),
        _ => true,
    }
}

/// Hands one received message to where it belongs: the inbox, a waiting
/// request, an incoming stream, or (an end) closes its session. Waits for
/// room. Returns `false` once the node stops.
pub(super) async fn route(shared: &Arc<Shared>, d: Delivery) -> bool {
    let from = d.message.from;
    match d.kind {
        Kind::Message | Kind::Request => to_inbox(shared, d).await,
        Kind::Reply { to } => {
            let waiter = shared.requests.lock().ok().and_then(|mut r| r.remove(&to));
            let Some(waiter) = waiter else {
                return to_inbox(shared, d).await;
            };
            let event = received_event(&d.message);
            match waiter.send(d.message.clone()) {
                Ok(()) => {
                    if let Some(arrival) = d.arrival {
                        if let Err(e) = shared.store().take_inbox(arrival) {
                            warn!(error = %e, "could not remove a reply from the inbox");
                        }
                    }
                    shared.emit(event);
                    true
                }
                // The requester gave up just now: the reply is a late one.
                Err(_) => to_inbox(shared, d).await,
            }
        }
        Kind::End => {
            let session = d.message.session;
            end_streams(shared, &from, &session);
            let info = shared
                .store()
                .session(&from, &session, agentmesh_dht::now_ms());
            if matches!(shared.store().forget_session(&from, &session), Ok(true)) {
                if let Some(info) = info {
                    super::registry::on_end(shared, &info, &d.data);
                }
                shared.audit(AuditEvent::SessionClosed {
                    peer: from,
                    session,
                    why: "conversation ended by peer".into(),
                });
                shared.emit(NodeEvent::SessionClosed {
                    peer: from,
                    session,
                    by_peer: true,
                });
            }
            true
        }
        Kind::Chunk { stream, index } => {
            on_chunk(shared, &d.message, stream, index, d.data).await;
            true
        }
        Kind::Finish { stream, chunks } => {
            on_finish(shared, &d.message, stream, chunks).await;
            true
        }
    }
}

/// Interrupts the incoming streams of `peer` in `session` (it ended):
/// their receivers report [`StreamError::Interrupted`].
pub(super) fn end_streams(shared: &Shared, peer: &Amid, session: &SessionId) {
    if let Ok(mut i) = shared.streams_in.lock() {
        i.streams
            .retain(|(from, _), s| !(from == peer && &s.session == session));
    }
}

fn received_event(m: &Message) -> NodeEvent {
    NodeEvent::MessageReceived {
        id: m.id,
        from: m.from,
        path: m.path,
    }
}

async fn to_inbox(shared: &Arc<Shared>, d: Delivery) -> bool {
    let event = received_event(&d.message);
    if shared.inbox_tx.send(d).await.is_err() {
        return false;
    }
    shared.emit(event);
    true
}

/// Registers a new incoming stream; `None` when it is refused.
fn open_incoming(
    shared: &Shared,
    incoming: &mut Incoming,
    m: &Message,
    stream: StreamId,
) -> Option<mpsc::Sender<Item>> {
    if !incoming.accepting {
        return None;
    }
    // Forget streams whose receiver the application dropped.
    incoming.streams.retain(|_, s| !s.tx.is_closed());
    if incoming.streams.len() >= MAX_INCOMING_STREAMS {
        warn!(from = %m.from.short(), "too many incoming streams; refusing one");
        return None;
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let receiver = StreamReceiver {
        from: m.from,
        id: stream,
        session: m.session,
        rx,
        done: false,
    };
    if shared.streams_tx.try_send(receiver).is_err() {
        warn!(from = %m.from.short(), "the application is not taking new streams; refusing one");
        return None;
    }
    Some(tx)
}

async fn on_chunk(shared: &Arc<Shared>, m: &Message, stream: StreamId, index: u64, data: Vec<u8>) {
    let key = (m.from, stream);
    let target = {
        let Ok(mut incoming) = shared.streams_in.lock() else {
            return;
        };
        match incoming.streams.get_mut(&key) {
            Some(s) if s.next == index => {
                s.next += 1;
                Ok(s.tx.clone())
            }
            Some(s) => {
                let expected = s.next;
                let tx = s.tx.clone();
                incoming.streams.remove(&key);
                Err(Some((
                    tx,
                    format!("chunk {index} arrived where {expected} was due"),
                )))
            }
            None if index == 0 => match open_incoming(shared, &mut incoming, m, stream) {
                Some(tx) => {
                    incoming.streams.insert(
                        key,
                        InStream {
                            tx: tx.clone(),
                            next: 1,
                            session: m.session,
                        },
                    );
                    Ok(tx)
                }
                None => Err(None),
            },
            None => {
                debug!(%stream, index, "chunk of an unknown stream dropped");
                Err(None)
            }
        }
    };
    match target {
        Ok(tx) => {
            let sent = tokio::select! {
                _ = shared.cancel.cancelled() => return,
                r = tx.send(Item::Chunk(data)) => r,
            };
            if sent.is_err() {
                // The application dropped the receiver.
                if let Ok(mut i) = shared.streams_in.lock() {
                    i.streams.remove(&key);
                }
            }
        }
        Err(Some((tx, why))) => {
            warn!(%stream, %why, "stream broken");
            let _ = tx.try_send(Item::Broken(why));
        }
        Err(None) => {}
    }
}

async fn on_finish(shared: &Arc<Shared>, m: &Message, stream: StreamId, chunks: u64) {
    let key = (m.from, stream);
    let entry = {
        let Ok(mut incoming) = shared.streams_in.lock() else {
            return;
        };
        match incoming.streams.remove(&key) {
            Some(s) => Some((s.tx, s.next)),
            // An empty stream.
            None if chunks == 0 => {
                open_incoming(shared, &mut incoming, m, stream).map(|tx| (tx, 0))
            }
            None => None,
        }
    };
    let Some((tx, received)) = entry else {
        debug!(%stream, "end of an unknown stream dropped");
        return;
    };
    let item = if received == chunks {
        Item::End
    } else {
        Item::Broken(format!("{chunks} chunks sent, {received} received"))
    };
    tokio::select! {
        _ = shared.cancel.cancelled() => {}
        _ = tx.send(item) => {}
    }
}

/// Removes a waiting request when its caller stops waiting.
struct PendingRequest<'a> {
    shared: &'a Shared,
    id: MessageId,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.shared.requests.lock() {
            r.remove(&self.id);
        }
    }
}

impl Node {
    /// Sends a request and waits for its reply (the message whose
    /// [`Message::reply_to`] names the request), at most `timeout` from now.
    /// The first request to a new peer opens a `request_response` session
    /// with a KNOCK declaring `intent`. Several requests may be in flight at
    /// once; each reply goes to its own request.
    pub async fn request(
        &self,
        to: &Amid,
        intent: Intent,
        payload: serde_json::Value,
        timeout: Duration,
    ) -> Result<Message, SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let content = json_content(Kind::Request, &payload)?;
        let id = MessageId::random();
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut waiting = self
                .shared
                .requests
                .lock()
                .map_err(|_| SendError::Stopped)?;
            if waiting.len() >= MAX_PENDING_REQUESTS {
                return Err(SendError::Busy);
            }
            waiting.insert(id, reply_tx);
        }
        let _pending = PendingRequest {
            shared: &self.shared,
            id,
        };
        let intent = intent.with_session_type(SessionType::RequestResponse);
        // An agent known to have moved to a new key is asked there.
        let to = self.current_amid(to);
        let deliver = |to: Amid| {
            let (content, intent) = (content.clone(), intent.clone());
            async move {
                let (tx, rx) = oneshot::channel();
                self.enqueue(&to, id, content, None, intent, Some(tx))
                    .await?;
                rx.await.map_err(|_| SendError::Stopped)?
            }
        };
        let wait = async {
            match deliver(to).await {
                // One that moved without our knowing is followed, once.
                Err(e) if super::rotation::maybe_moved(&e) => {
                    match self.follow_rotation(&to).await {
                        Some((now, _)) if now != to => deliver(now).await?,
                        _ => return Err(e),
                    }
                }
                r => r?,
            };
            reply_rx.await.map_err(|_| SendError::Stopped)
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .map_err(|_| SendError::Timeout {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            })?
    }

    /// Replies to `msg` (a request, or a conversation turn) in its session
    /// and waits for the acknowledgement. Fails with
    /// [`SendError::SessionEnded`] when that session is over.
    pub async fn reply(
        &self,
        msg: &Message,
        payload: serde_json::Value,
    ) -> Result<Receipt, SendError> {
        self.reply_to(&msg.from, msg.id, Some(msg.session), payload)
            .await
    }

    /// Replies to message `id` from `to`, in `session` (or the current
    /// session with `to` when `None`). See [`Node::reply`].
    pub async fn reply_to(
        &self,
        to: &Amid,
        id: MessageId,
        session: Option<SessionId>,
        payload: serde_json::Value,
    ) -> Result<Receipt, SendError> {
        let content = json_content(Kind::Reply { to: id }, &payload)?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            to,
            MessageId::random(),
            content,
            session,
            Intent::default(),
            Some(tx),
        )
        .await?;
        rx.await.map_err(|_| SendError::Stopped)?
    }

    /// Ends the conversation with `peer`: an end message goes in the
    /// current session, after everything sent before it; once acknowledged
    /// (or failed), both sides forget the session and report
    /// [`NodeEvent::SessionClosed`]. Messages bound to it (replies) then
    /// fail with [`SendError::SessionEnded`]; a new `send` opens a new
    /// session with a KNOCK. Returns the ended session.
    pub async fn end_conversation(&self, peer: &Amid) -> Result<SessionId, SendError> {
        let now = agentmesh_dht::now_ms();
        let info = self
            .shared
            .store()
            .current_session(peer, now)
            .ok_or(SendError::SessionEnded { session: None })?;
        let session = info.id;
        let (tx, rx) = oneshot::channel();
        // The end carries our half of the session receipt.
        let end = Content::bytes(Kind::End, super::registry::end_body(&self.shared, &info));
        let queued = self
            .enqueue(
                peer,
                MessageId::random(),
                end,
                Some(session),
                Intent::default(),
                Some(tx),
            )
            .await;
        let outcome = match queued {
            Ok(_) => rx.await.map_err(|_| SendError::Stopped).and_then(|r| r),
            Err(e) => Err(e),
        };
        // Over on our side whatever the outcome: a peer that missed the end
        // learns it from `unknown_session` on its next message.
        end_streams(&self.shared, peer, &session);
        if matches!(self.shared.store().forget_session(peer, &session), Ok(true)) {
            self.shared.audit(AuditEvent::SessionClosed {
                peer: *peer,
                session,
                why: "conversation ended by us".into(),
            });
            self.shared.emit(NodeEvent::SessionClosed {
                peer: *peer,
                session,
                by_peer: false,
            });
        }
        outcome.map(|_| session)
    }

    /// Opens a stream to `to`. The first chunk opens a `stream` session
    /// with a KNOCK declaring `intent` when there is none.
    pub fn open_stream(&self, to: &Amid, intent: Intent) -> StreamSender {
        StreamSender {
            node: self.clone(),
            to: *to,
            id: StreamId::random(),
            intent: intent.with_session_type(SessionType::Stream),
            next: 0,
            session: None,
            pending: VecDeque::new(),
        }
    }

    /// The incoming streams. Returns `Some` once; until it is called,
    /// incoming streams are refused.
    pub fn streams(&self) -> Option<Streams> {
        let rx = self.streams.lock().ok()?.take()?;
        if let Ok(mut i) = self.shared.streams_in.lock() {
            i.accepting = true;
        }
        Some(Streams { rx })
    }
}

/// The sending end of a stream: chunks go in order, each in its own
/// end-to-end encrypted envelope.
pub struct StreamSender {
    node: Node,
    to: Amid,
    id: StreamId,
    intent: Intent,
    next: u64,
    session: Option<SessionId>,
    pending: VecDeque<oneshot::Receiver<Result<Receipt, SendError>>>,
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("to", &self.to)
            .field("id", &self.id)
            .field("sent", &self.next)
            .finish_non_exhaustive()
    }
}

impl StreamSender {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Chunks sent so far.
    pub fn sent(&self) -> u64 {
        self.next
    }

    /// Chunks sent and not yet acknowledged by the receiver.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    async fn wait_oldest(&mut self) -> Result<(), SendError> {
        if let Some(rx) = self.pending.pop_front() {
            rx.await.map_err(|_| SendError::Stopped)??;
        }
        Ok(())
    }

    async fn push(&mut self, kind: Kind, data: Vec<u8>) -> Result<(), SendError> {
        let (tx, rx) = oneshot::channel();
        self.node
            .enqueue(
                &self.to,
                MessageId::random(),
                Content::bytes(kind, data),
                self.session,
                self.intent.clone(),
                Some(tx),
            )
            .await?;
        if self.session.is_none() {
            // The first message opens (or picks) the session the whole
            // stream then stays in.
            let receipt = rx.await.map_err(|_| SendError::Stopped)??;
            self.session = Some(receipt.session);
        } else {
            self.pending.push_back(rx);
        }
        Ok(())
    }

    /// Sends one chunk (at most [`MAX_CHUNK_SIZE`] bytes). Waits while
    /// [`STREAM_WINDOW`] chunks are unacknowledged: a slow receiver holds
    /// the sender back. An error (the receiver refused or went away) ends
    /// the stream.
    pub async fn send_chunk(&mut self, data: impl Into<Vec<u8>>) -> Result<(), SendError> {
        let data = data.into();
        if data.len() > MAX_CHUNK_SIZE {
            return Err(SendError::InvalidPayload(format!(
                "chunk of {} bytes is over {MAX_CHUNK_SIZE}",
                data.len()
            )));
        }
        while self.pending.len() >= STREAM_WINDOW {
            self.wait_oldest().await?;
        }
        let kind = Kind::Chunk {
            stream: self.id,
            index: self.next,
        };
        self.push(kind, data).await?;
        self.next += 1;
        Ok(())
    }

    /// Ends the stream cleanly and waits until every chunk and the end
    /// are acknowledged. Returns the number of chunks.
    pub async fn finish(mut self) -> Result<u64, SendError> {
        let kind = Kind::Finish {
            stream: self.id,
            chunks: self.next,
        };
        self.push(kind, Vec::new()).await?;
        while !self.pending.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(self.next)
    }
}

/// Why an incoming stream did not end cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Chunks were missing or out of order.
    #[error("stream broken: {0}")]
    Broken(String),
    /// The stream stopped before its end (the node stopped, or the sender's
    /// session ended).
    #[error("stream interrupted before its end")]
    Interrupted,
}

/// The receiving end of a stream: chunks in order, then a clean end.
pub struct StreamReceiver {
    from: Amid,
    id: StreamId,
    session: SessionId,
    rx: mpsc::Receiver<Item>,
    done: bool,
}

impl std::fmt::Debug for StreamReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReceiver")
            .field("from", &self.from)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StreamReceiver {
    /// The sender.
    pub fn from(&self) -> Amid {
        self.from
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The session the stream rides in.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The next chunk; `Ok(None)` once the stream ended cleanly.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        if self.done {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Item::Chunk(b)) => Ok(Some(b)),
            Some(Item::End) => {
                self.done = true;
                Ok(None)
            }
            Some(Item::Broken(why)) => {
                self.done = true;
                Err(StreamError::Broken(why))
            }
            None => {
                self.done = true;
                Err(StreamError::Interrupted)
            }
        }
    }
}

/// New incoming streams, in the order they opened.
pub struct Streams {
    rx: mpsc::Receiver<StreamReceiver>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

impl Streams {
    /// The next new stream; `None` once the node stopped.
    pub async fn next(&mut self) -> Option<StreamReceiver> {
        self.rx.recv().await
    }
}
