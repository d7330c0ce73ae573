//! The local API's inbox: received messages handed out under a lease, and
//! removed from the node's durable inbox only when acknowledged.
//!
//! A message handed to one reader is leased to it: no other reader gets it
//! until the lease ends or the reader releases it. A message whose lease
//! ends unacknowledged goes back in front of the queue, in arrival order.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, Notify};

use crate::{crypto::envelope::MessageId, events::Message, runtime::InboxKey};

/// Most messages held (ready and leased) before the inbox stops taking more
/// from the node; the rest wait in the node's durable inbox.
pub(crate) const MAX_HELD: usize = 4096;
/// Most payload bytes held (ready and leased), likewise.
pub(crate) const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug)]
struct Held {
    message: Message,
    key: InboxKey,
    deliveries: u32,
    /// Size of the payload's JSON.
    bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    /// By arrival order.
    ready: BTreeMap<u64, Held>,
    /// Arrival order and lease end, by message id.
    leased: HashMap<MessageId, (u64, Held, Instant)>,
    /// Arrival order of every held message, by id.
    order: HashMap<MessageId, u64>,
    next: u64,
    /// Payload bytes held.
    bytes: usize,
}

impl State {
    fn expire(&mut self, now: Instant) -> bool {
        let ended: Vec<MessageId> = self
            .leased
            .iter()
            .filter(|(_, (_, _, until))| *until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &ended {
            if let Some((order, held, _)) = self.leased.remove(id) {
                self.ready.insert(order, held);
            }
        }
        !ended.is_empty()
    }

    fn held(&self) -> usize {
        self.ready.len() + self.leased.len()
    }
}

/// A message as handed out: the message and how many times it was.
#[derive(Debug, Clone)]
pub(crate) struct Handed {
    pub(crate) message: Message,
    pub(crate) deliveries: u32,
}

/// The inbox of the local API.
#[derive(Debug)]
pub(crate) struct LeasedInbox {
    state: Mutex<State>,
    /// Woken when messages become ready.
    ready: Notify,
    /// Woken when there is room again.
    room: Notify,
    arrivals: broadcast::Sender<Message>,
    cap: usize,
    max_bytes: usize,
}

impl LeasedInbox {
    pub(crate) fn new(cap: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            room: Notify::new(),
            arrivals: broadcast::channel(256).0,
            cap,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every message as it arrives (for printing; not a reader).
    pub(crate) fn arrivals(&self) -> broadcast::Receiver<Message> {
        self.arrivals.subscribe()
    }

    /// Waits until there is room for one more message.
    pub(crate) async fn wait_room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                // One message always fits, however large.
                if s.held() == 0 || (s.held() < self.cap && s.bytes < self.max_bytes) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Adds a message taken from the node. A message already held (the
    /// same id) is not added twice. Only messages that arrived while the
    /// node ran are announced to [`arrivals`](Self::arrivals); one stored
    /// before a restart was announced then.
    pub(crate) fn push(&self, message: Message, key: InboxKey) {
        let announce = !key.restored();
        {
            let mut s = self.lock();
            if s.order.contains_key(&message.id) {
                return;
            }
            let order = s.next;
            s.next += 1;
            s.order.insert(message.id, order);
            let bytes = message.payload.to_string().len();
            s.bytes += bytes;
            s.ready.insert(
                order,
                Held {
                    message: message.clone(),
                    key,
                    deliveries: 0,
                    bytes,
                },
            );
        }
        if announce {
            let _ = self.arrivals.send(message);
        }
        self.ready.notify_waiters();
    }

    /// Hands out up to `max` messages, leased until `now + lease`.
    pub(crate) fn take(&self, max: usize, lease: Duration, now: Instant) -> Vec<Handed> {
        let mut s = self.lock();
        s.expire(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some((order, mut held)) = s.ready.pop_first() else {
                break;
            };
            held.deliveries = held.deliveries.saturating_add(1);
            out.push(Handed {
                message: held.message.clone(),
                deliveries: held.deliveries,
            });
            s.leased.insert(held.message.id, (order, held, now + lease));
        }
        out
    }

    /// Hands out up to `max` messages, waiting up to `wait` for the first.
    pub(crate) async fn take_wait(
        &self,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Vec<Handed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let out = self.take(max, lease, Instant::now());
            if !out.is_empty() {
                return out;
            }
            // The next lease end may hand a message back before the deadline.
            let next_lease = self
                .lock()
                .leased
                .values()
                .map(|(_, _, until)| *until)
                .min()
                .map(|until| {
                    tokio::time::Instant::now() + until.saturating_duration_since(Instant::now())
                });
            let until = next_lease.map_or(deadline, |l| l.min(deadline));
            if tokio::time::Instant::now() >= deadline {
                return out;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Forgets acknowledged messages (leased or ready again); returns the
    /// inbox keys to remove from the node's durable inbox.
    pub(crate) fn ack(&self, ids: &[MessageId]) -> Vec<InboxKey> {
        let mut keys = Vec::new();
        {
            let mut s = self.lock();
            for id in ids {
                let Some(order) = s.order.remove(id) else {
                    continue;
                };
                let held = match s.leased.remove(id) {
                    Some((_, held, _)) => Some(held),
                    None => s.ready.remove(&order),
                };
                if let Some(held) = held {
                    s.bytes = s.bytes.saturating_sub(held.bytes);
                    keys.push(held.key);
                }
            }
        }
        if !keys.is_empty() {
            self.room.notify_waiters();
        }
        keys
    }

    /// Ends the leases of `ids` now: they are handed out again. Returns how
    /// many were leased.
    pub(crate) fn release(&self, ids: &[MessageId]) -> usize {
        let n = {
            let mut s = self.lock();
            let mut n = 0;
            for id in ids {
                if let Some((order, held, _)) = s.leased.remove(id) {
                    s.ready.insert(order, held);
                    n += 1;
                }
            }
            n
        };
        if n > 0 {
            self.ready.notify_waiters();
        }
        n
    }

    /// Messages held: ready to hand out, and leased.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.ready.len(), s.leased.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::SessionId, events::MessageKind, identity::Identity, PathKind};

    fn msg(n: u8) -> Message {
        Message {
            id: MessageId([n; 16]),
            from: Identity::generate().amid(),
            session: SessionId([0; 16]),
            seq: u64::from(n),
            ts_ms: 0,
            payload: serde_json::json!({ "n": n }),
            path: PathKind::Other,
            kind: MessageKind::Message,
            reply_to: None,
        }
    }

    #[test]
    fn leased_messages_go_to_one_reader_until_the_lease_ends() {
        let inbox = LeasedInbox::new(10, usize::MAX);
        inbox.push(msg(1), InboxKey::test(1));
        inbox.push(msg(2), InboxKey::test(2));
        let t0 = Instant::now();
        let lease = Duration::from_secs(30);
        let a = inbox.take(1, lease, t0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].message.id, MessageId([1; 16]));
        assert_eq!(a[0].deliveries, 1);
        // A second reader gets the next one, not the leased one.
        let b = inbox.take(10, lease, t0);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].message.id, MessageId([2; 16]));
        assert!(inbox
            .take(10, lease, t0 + Duration::from_secs(29))
            .is_empty());
        // Both leases end: both come back, in arrival order.
        let again = inbox.take(10, lease, t0 + Duration::from_secs(31));
        let ids: Vec<_> = again.iter().map(|h| h.message.id).collect();
        assert_eq!(ids, vec![MessageId([1; 16]), MessageId([2; 16])]);
        assert!(again.iter().all(|h| h.deliveries == 2));
    }

    #[test]
    fn acknowledged_messages_are_gone_and_their_keys_returned() {
        let inbox = LeasedInbox::new(10, usize::MAX);
        inbox.push(msg(1), InboxKey::test(1));
        inbox.push(msg(2), InboxKey::test(2));
        let t0 = Instant::now();
        let got = inbox.take(1, Duration::from_secs(1), t0);
        // One leased, one still ready: both can be acknowledged.
        let keys = inbox.ack(&[got[0].message.id, MessageId([2; 16]), MessageId([9; 16])]);
        assert_eq!(keys, vec![InboxKey::test(1), InboxKey::test(2)]);
        assert!(inbox
            .take(10, Duration::from_secs(1), t0 + Duration::from_secs(5))
            .is_empty());
        assert_eq!(inbox.counts(), (0, 0));
        // Acknowledging again does nothing.
        assert!(inbox.ack(&[MessageId([1; 16])]).is_empty());
    }

    #[test]
    fn released_messages_are_handed_out_again_at_once() {
        let inbox = LeasedInbox::new(10, usize::MAX);
        inbox.push(msg(1), InboxKey::test(1));
        let t0 = Instant::now();
        let got = inbox.take(1, Duration::from_secs(60), t0);
        assert_eq!(inbox.release(&[got[0].message.id, MessageId([7; 16])]), 1);
        let again = inbox.take(1, Duration::from_secs(60), t0);
        assert_eq!(again[0].deliveries, 2);
    }

    #[test]
    fn the_same_message_is_held_once() {
        let inbox = LeasedInbox::new(10, usize::MAX);
        inbox.push(msg(1), InboxKey::test(1));
        inbox.push(msg(1), InboxKey::test(1));
        assert_eq!(inbox.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_arrival_and_room_frees_on_ack() {
        let inbox = std::sync::Arc::new(LeasedInbox::new(1, usize::MAX));
        let reader = {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                inbox
                    .take_wait(5, Duration::from_secs(30), Duration::from_secs(60))
                    .await
            })
        };
        tokio::task::yield_now().await;
        inbox.push(msg(3), InboxKey::test(3));
        let got = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("reader woke")
            .unwrap();
        assert_eq!(got.len(), 1);
        // Full (cap 1): room only after the ack.
        let waiter = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.wait_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        inbox.ack(&[MessageId([3; 16])]);
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("room freed")
            .unwrap();
    }

    #[tokio::test]
    async fn room_is_bounded_by_bytes_too_but_one_message_always_fits() {
        let inbox = std::sync::Arc::new(LeasedInbox::new(100, 10));
        inbox.wait_room().await;
        inbox.push(msg(1), InboxKey::test(1)); // {"n":1}: 7 bytes
        inbox.wait_room().await;
        inbox.push(msg(2), InboxKey::test(2)); // 14 bytes now: full
        let waiter = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.wait_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        inbox.ack(&[MessageId([1; 16])]);
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("room freed")
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiting_reader_gets_a_message_whose_lease_ended() {
        let inbox = LeasedInbox::new(10, usize::MAX);
        inbox.push(msg(4), InboxKey::test(4));
        let first = inbox.take(1, Duration::from_millis(200), Instant::now());
        assert_eq!(first.len(), 1);
        let again = tokio::time::timeout(
            Duration::from_secs(30),
            inbox.take_wait(1, Duration::from_secs(30), Duration::from_secs(20)),
        )
        .await
        .expect("handed out again");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].deliveries, 2);
    }
}
