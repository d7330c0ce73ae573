//! The application's side of messaging: the inbox ([`Messages`],
//! [`InboxKey`]), message handlers ([`MessageFilter`]) and sending.

use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

use crate::{
    content::{Content, Kind},
    crypto::envelope::{MessageId, SessionId},
    events::{Message, MessageKind, Receipt},
    identity::Amid,
    knock::Intent,
};

use super::{
    json_content, link, Delivery, Node, Outgoing, Registered, SendError, Shared, INBOX_QUEUE,
};

/// Which messages a handler registered with [`Node::on_message_filtered`]
/// gets: of these kinds, from these senders (empty: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageFilter {
    /// The kinds taken; empty for all.
    pub kinds: Vec<MessageKind>,
    /// The senders taken; empty for all.
    pub from: Vec<Amid>,
}

impl MessageFilter {
    /// Also takes messages of `kind` (a filter with no kind takes all).
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Also takes messages from `amid` (a filter with no sender takes all).
    pub fn from(mut self, amid: Amid) -> Self {
        self.from.push(amid);
        self
    }

    /// Whether `m` passes.
    pub fn matches(&self, m: &Message) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&m.kind))
            && (self.from.is_empty() || self.from.contains(&m.from))
    }
}

/// The application's end of the inbox: received messages, in arrival order.
///
/// A message stays in the node's durable inbox until it is taken from here;
/// its removal is on disk before it is returned, so a crash never hands the
/// same message to the application twice (and never loses one it was not
/// given).
pub struct Messages {
    rx: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
    ready: std::collections::VecDeque<Message>,
    unflushed: bool,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages").finish_non_exhaustive()
    }
}

impl Messages {
    /// The next message; `None` once the node stopped.
    ///
    /// Cancel-safe: a message is never lost when this future is dropped.
    pub async fn recv(&mut self) -> Option<Message> {
        if self.ready.is_empty() {
            // Take everything already waiting and remove it from the inbox;
            // one flush below makes the removals durable.
            let first = self.rx.recv().await?;
            let mut batch = vec![first];
            while batch.len() < INBOX_QUEUE {
                match self.rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            let store = self.shared.store();
            for d in &batch {
                let Some(arrival) = d.arrival else { continue };
                if let Err(e) = store.take_inbox(arrival) {
                    tracing::warn!(error = %e, "could not remove message from inbox");
                }
            }
            drop(store);
            self.ready.extend(batch.into_iter().map(|d| d.message));
            self.unflushed = true;
        }
        if self.unflushed {
            if let Err(e) = self.shared.db.flush_async().await {
                tracing::warn!(error = %e, "inbox flush failed");
            }
            self.unflushed = false;
        }
        self.ready.pop_front()
    }

    /// The next message, left in the node's durable inbox until
    /// [`Node::ack`] is called with its key: a message the application got
    /// but did not acknowledge is handed to it again after a restart.
    /// `None` once the node stopped.
    ///
    /// Use either this or [`Messages::recv`] on one inbox. Cancel-safe.
    pub async fn recv_unacked(&mut self) -> Option<(Message, InboxKey)> {
        if let Some(m) = self.ready.pop_front() {
            // Already removed by `recv`.
            return Some((
                m,
                InboxKey {
                    arrival: None,
                    restored: false,
                },
            ));
        }
        let d = self.rx.recv().await?;
        Some((
            d.message,
            InboxKey {
                arrival: d.arrival,
                restored: d.restored,
            },
        ))
    }
}

/// Names a message in the node's durable inbox (see
/// [`Messages::recv_unacked`] and [`Node::ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboxKey {
    arrival: Option<u64>,
    restored: bool,
}

impl InboxKey {
    /// True for a message stored before the node last started and handed
    /// out again because nobody acknowledged it; false for one that
    /// arrived while this node ran.
    pub fn restored(&self) -> bool {
        self.restored
    }

    #[cfg(test)]
    pub(crate) fn test(arrival: u64) -> Self {
        Self {
            arrival: Some(arrival),
            restored: false,
        }
    }
}

impl Node {
    /// The received messages. Returns `Some` once: there is one inbox.
    pub fn messages(&self) -> Option<Messages> {
        let rx = self.inbox.lock().ok()?.take()?;
        Some(Messages {
            rx,
            shared: self.shared.clone(),
            ready: std::collections::VecDeque::new(),
            unflushed: false,
        })
    }

    /// Removes messages the application has handled from the durable inbox
    /// (see [`Messages::recv_unacked`]), with one flush for all of them: once
    /// this returns, they are not handed out again after a restart.
    pub async fn ack(&self, keys: impl IntoIterator<Item = InboxKey>) -> Result<(), SendError> {
        let mut removed = false;
        {
            let store = self.shared.store();
            for arrival in keys.into_iter().filter_map(|k| k.arrival) {
                store
                    .take_inbox(arrival)
                    .map_err(|e| SendError::Storage(e.to_string()))?;
                removed = true;
            }
        }
        if removed {
            self.shared
                .db
                .flush_async()
                .await
                .map_err(|e| SendError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// Calls `handler` for every received message, in order, on a task.
    /// Several handlers may be registered: each gets every message (a copy),
    /// in registration order. The first registration takes the inbox:
    /// returns `false` if [`Node::messages`] took it already.
    pub fn on_message<F>(&self, handler: F) -> bool
    where
        F: FnMut(Message) + Send + 'static,
    {
        self.on_message_filtered(MessageFilter::default(), handler)
    }

    /// [`Node::on_message`] for the messages that pass `filter` only (of
    /// some kinds, from some senders).
    pub fn on_message_filtered<F>(&self, filter: MessageFilter, handler: F) -> bool
    where
        F: FnMut(Message) + Send + 'static,
    {
        let entry = Registered {
            filter,
            handler: Box::new(handler),
        };
        let mut slot = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = slot.as_ref() {
            list.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            return true;
        }
        let Some(mut inbox) = self.messages() else {
            return false;
        };
        // Registered before the first message can be read.
        let list = Arc::new(Mutex::new(vec![entry]));
        *slot = Some(list.clone());
        tokio::spawn(async move {
            while let Some(m) = inbox.recv().await {
                let mut handlers = list.lock().unwrap_or_else(|e| e.into_inner());
                for h in handlers.iter_mut().filter(|h| h.filter.matches(&m)) {
                    (h.handler)(m.clone());
                }
            }
        });
        true
    }

    /// Sends `payload` to `to` and waits until the recipient acknowledged it
    /// (or refused it). Resolves the recipient through the DHT and KNOCKs
    /// first when there is no session; the first message rides in the KNOCK.
    pub async fn send(&self, to: &Amid, payload: serde_json::Value) -> Result<Receipt, SendError> {
        self.send_with(to, payload, Intent::default()).await
    }

    /// As [`Node::send`], with the intent declared in a KNOCK.
    pub async fn send_with(
        &self,
        to: &Amid,
        payload: serde_json::Value,
        intent: Intent,
    ) -> Result<Receipt, SendError> {
        let to = self.current_amid(to);
        let content = json_content(Kind::Message, &payload)?;
        let once = |to: Amid| {
            let (content, intent) = (content.clone(), intent.clone());
            async move {
                let (tx, rx) = oneshot::channel();
                self.enqueue(&to, MessageId::random(), content, None, intent, Some(tx))
                    .await?;
                rx.await.map_err(|_| SendError::Stopped)?
            }
        };
        match once(to).await {
            // An agent that moved to a new key is followed, once.
            Err(e) if super::rotation::maybe_moved(&e) => match self.follow_rotation(&to).await {
                Some((now, _)) if now != to => once(now).await,
                _ => Err(e),
            },
            r => r,
        }
    }

    /// Queues `payload` for `to` and returns at once with its id; the outcome
    /// arrives as a [`NodeEvent::Delivered`](crate::NodeEvent::Delivered),
    /// `Rejected` or `Failed` naming that id.
    pub async fn send_nowait(
        &self,
        to: &Amid,
        payload: serde_json::Value,
    ) -> Result<MessageId, SendError> {
        self.send_nowait_with(to, payload, Intent::default()).await
    }

    /// As [`Node::send_nowait`], with the intent declared in a KNOCK.
    pub async fn send_nowait_with(
        &self,
        to: &Amid,
        payload: serde_json::Value,
        intent: Intent,
    ) -> Result<MessageId, SendError> {
        let content = json_content(Kind::Message, &payload)?;
        let id = MessageId::random();
        let to = self.current_amid(to);
        self.enqueue(&to, id, content, None, intent, None).await
    }

    /// Checks a message or request naming a schema against it before it is
    /// sealed, when the schema is known here (the receiver checks again).
    fn check_schema(&self, intent: &Intent, content: &Content) -> Result<(), SendError> {
        let Some(id) = &intent.schema else {
            return Ok(());
        };
        if !crate::schema::is_valid_schema_id(id) {
            return Err(SendError::InvalidPayload(format!(
                "invalid schema id {id:?}"
            )));
        }
        if !matches!(content.kind, Kind::Message | Kind::Request)
            || !self.shared.schemas.contains(id)
        {
            return Ok(());
        }
        let payload = content
            .payload()
            .map_err(|e| SendError::InvalidPayload(e.to_string()))?;
        self.shared
            .schemas
            .validate(id, &payload)
            .map_err(|e| SendError::InvalidPayload(e.to_string()))
    }

    /// Queues `content` for `to` in `session` (or the current one).
    pub(super) async fn enqueue(
        &self,
        to: &Amid,
        id: MessageId,
        content: Content,
        session: Option<SessionId>,
        intent: Intent,
        reply: Option<oneshot::Sender<Result<Receipt, SendError>>>,
    ) -> Result<MessageId, SendError> {
        if self.is_killed() {
            return Err(SendError::Killed);
        }
        if to == &self.shared.amid {
            return Err(SendError::InvalidPayload("cannot send to self".into()));
        }
        self.check_schema(&intent, &content)?;
        let out = Outgoing {
            id,
            content,
            session,
            intent,
            reply,
            deadline: tokio::time::Instant::now() + self.shared.config.delivery_timeout,
            queued: tokio::time::Instant::now(),
            reknocks: 0,
        };
        let tx = link::sender_for(&self.shared, *to);
        let out = match tx.send(out).await {
            Ok(()) => return Ok(id),
            Err(mpsc::error::SendError(out)) => out,
        };
        // The link ended as it went idle, between our taking its queue and
        // sending: the next one takes the message.
        let tx = link::sender_for(&self.shared, *to);
        tx.send(out).await.map_err(|_| SendError::Stopped)?;
        Ok(id)
    }
}
