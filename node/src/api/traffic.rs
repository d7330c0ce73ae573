//! Messages each way per peer since the node started, for the dashboard's
//! Peers table (`GET /v1/peers`: `messages_sent`, `messages_received`).
//!
//! Fed with node events. A message we sent is counted once: when delivered
//! over a connection, or when deposited in the peer's mailboxes (its
//! receipt, when the peer fetches it, is not counted again), as the
//! dashboard's plots count it. At most [`MAX_PEERS`] peers are kept, the
//! least recently counted going first, so a flood of strangers cannot grow
//! it.

use std::sync::Mutex;

use agentmesh_transports::PathKind;

use crate::{events::NodeEvent, identity::Amid, lru::BoundedLru, runtime::KnownPeer};

/// Most peers counted.
pub(super) const MAX_PEERS: usize = 4096;

/// Messages sent to and received from each peer.
#[derive(Debug)]
pub(super) struct Traffic {
    /// Per peer: (sent, received). Entries are never idle: the least
    /// recently counted goes first.
    peers: Mutex<BoundedLru<Amid, (u64, u64)>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            peers: Mutex::new(BoundedLru::new(MAX_PEERS)),
        }
    }
}

impl Traffic {
    /// Counts `e` when it moved a message.
    pub(super) fn count(&self, e: &NodeEvent) {
        let (peer, sent) = match e {
            NodeEvent::MessageReceived { from, .. } => (*from, false),
            // Mail is counted when deposited; its receipt comes later.
            NodeEvent::Delivered {
                path: PathKind::Mailbox,
                ..
            } => return,
            NodeEvent::Delivered { to, .. } | NodeEvent::Deposited { to, .. } => (*to, true),
            _ => return,
        };
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).upsert(
            peer,
            0,
            || (0, 0),
            |(s, r)| {
                if sent {
                    *s += 1;
                } else {
                    *r += 1;
                }
                ((), u64::MAX)
            },
        );
    }

    /// (sent, received) for `peer`.
    pub(super) fn of(&self, peer: &Amid) -> (u64, u64) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .copied()
            .unwrap_or_default()
    }

    /// Fills in `messages_sent` and `messages_received` of each peer.
    pub(super) fn describe(&self, peers: &mut [KnownPeer]) {
        for p in peers {
            (p.messages_sent, p.messages_received) = self.of(&p.amid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::MessageId, identity::Identity};

    #[test]
    fn each_message_is_counted_once_per_peer_and_direction() {
        let t = Traffic::default();
        let bob = Identity::from_seed(&[1; 32]).amid();
        let carol = Identity::from_seed(&[2; 32]).amid();
        let id = MessageId::random;
        t.count(&NodeEvent::MessageReceived {
            id: id(),
            from: bob,
            path: PathKind::DirectQuic,
        });
        t.count(&NodeEvent::Delivered {
            id: id(),
            to: bob,
            path: PathKind::Relayed,
            knocked: true,
            latency_ms: Some(3),
        });
        let mailed = id();
        t.count(&NodeEvent::Deposited {
            id: mailed,
            to: carol,
            relays: 1,
        });
        // Its receipt, once carol fetched it: not a second message.
        t.count(&NodeEvent::Delivered {
            id: mailed,
            to: carol,
            path: PathKind::Mailbox,
            knocked: false,
            latency_ms: None,
        });
        t.count(&NodeEvent::Disconnected {
            peer: bob.to_string(),
        });
        assert_eq!(t.of(&bob), (1, 1));
        assert_eq!(t.of(&carol), (1, 0));
        let mut peers = vec![KnownPeer::new(carol)];
        t.describe(&mut peers);
        assert_eq!((peers[0].messages_sent, peers[0].messages_received), (1, 0));
    }

    #[test]
    fn strangers_cannot_grow_it_past_its_bound() {
        let t = Traffic::default();
        for i in 0..(MAX_PEERS + 10) {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            t.count(&NodeEvent::MessageReceived {
                id: MessageId::random(),
                from: Identity::from_seed(&seed).amid(),
                path: PathKind::DirectQuic,
            });
        }
        assert_eq!(
            t.peers.lock().unwrap().len(),
            MAX_PEERS,
            "the oldest are dropped"
        );
    }
}
