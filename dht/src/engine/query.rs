//! One iterative lookup: the peers it knows, closest first, and which of
//! them were asked, answered or failed (rust-libp2p's `closest.rs`
//! semantics: a lookup ends when the `k` closest peers it knows have all
//! answered, or when nobody is left to ask).

use std::collections::BTreeMap;

use super::table::Distance;
use super::{Contact, KadKey, RequestId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    NotContacted,
    Waiting(RequestId),
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
pub(crate) struct QueryPeer<P> {
    pub(crate) contact: Contact<P>,
    pub(crate) state: PeerState,
    /// 1 for a peer from our own table, n + 1 for a peer named by a peer at
    /// hop n.
    pub(crate) hop: u32,
}

/// The peer set of a lookup.
#[derive(Debug, Clone)]
pub(crate) struct Lookup<P> {
    target: KadKey,
    k: usize,
    alpha: usize,
    pub(crate) peers: BTreeMap<Distance, QueryPeer<P>>,
    pub(crate) rpcs: u32,
}

impl<P: Clone + Eq> Lookup<P> {
    pub(crate) fn new(target: KadKey, k: usize, alpha: usize, seeds: Vec<Contact<P>>) -> Self {
        let mut lookup = Self {
            target,
            k,
            alpha,
            peers: BTreeMap::new(),
            rpcs: 0,
        };
        for contact in seeds {
            lookup.add(contact, 1);
        }
        lookup
    }

    /// The key looked for.
    pub(crate) fn target(&self) -> KadKey {
        self.target
    }

    /// Adds a peer learned at `hop`; known peers are left as they are.
    pub(crate) fn add(&mut self, contact: Contact<P>, hop: u32) {
        let distance = contact.key.distance(&self.target);
        self.peers.entry(distance).or_insert(QueryPeer {
            contact,
            state: PeerState::NotContacted,
            hop,
        });
    }

    fn in_flight(&self) -> usize {
        self.peers
            .values()
            .filter(|p| matches!(p.state, PeerState::Waiting(_)))
            .count()
    }

    /// The next peers to ask (at most α in flight), closest first, or none.
    /// Only peers among the `k` closest not yet failed are asked.
    pub(crate) fn next_to_ask(&self) -> Vec<Contact<P>> {
        let room = self.alpha.saturating_sub(self.in_flight());
        if room == 0 {
            return Vec::new();
        }
        self.peers
            .values()
            .filter(|p| p.state != PeerState::Failed)
            .take(self.k)
            .filter(|p| p.state == PeerState::NotContacted)
            .take(room)
            .map(|p| p.contact.clone())
            .collect()
    }

    pub(crate) fn mark(&mut self, id: &P, key: &KadKey, state: PeerState) -> Option<u32> {
        let distance = key.distance(&self.target);
        let peer = self.peers.get_mut(&distance)?;
        if &peer.contact.id != id {
            return None;
        }
        if matches!(state, PeerState::Waiting(_)) {
            self.rpcs += 1;
        }
        peer.state = state;
        Some(peer.hop)
    }

    /// True once the `k` closest peers not failed have all answered, or
    /// nobody is left to ask and nothing is in flight.
    pub(crate) fn is_finished(&self) -> bool {
        let mut considered = 0;
        for peer in self.peers.values() {
            match peer.state {
                PeerState::Failed => continue,
                PeerState::Succeeded => {}
                PeerState::NotContacted | PeerState::Waiting(_) => return false,
            }
            considered += 1;
            if considered == self.k {
                break;
            }
        }
        true
    }

    /// The closest peers that answered, closest first.
    pub(crate) fn succeeded(&self) -> Vec<(Contact<P>, u32)> {
        self.peers
            .values()
            .filter(|p| p.state == PeerState::Succeeded)
            .take(self.k)
            .map(|p| (p.contact.clone(), p.hop))
            .collect()
    }
}
