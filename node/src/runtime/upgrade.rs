//! Retries of WebRTC upgrades: a relayed connection we dialled is upgraded
//! by dialling `<relayed address>/webrtc/p2p/<peer>`. ICE may fail once
//! where it succeeds the next time (a binding request lost, a NAT mapping
//! not yet open, a loaded host), so a failed attempt is tried again after a
//! growing pause, like DCUtR retries its hole punch, while the relayed
//! connection lasts.

use std::{collections::HashMap, time::Duration};

use libp2p::{swarm::ConnectionId, Multiaddr, PeerId};
use tokio::time::Instant;

/// Attempts per relayed connection, the first included.
pub(super) const MAX_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each further one.
const FIRST_PAUSE: Duration = Duration::from_secs(1);

struct Upgrade {
    addr: Multiaddr,
    attempts: u32,
    /// The dial in flight.
    dial: Option<ConnectionId>,
    /// When the next attempt is due, if one is scheduled.
    due: Option<Instant>,
}

/// Upgrades in progress, per peer.
#[derive(Default)]
pub(super) struct WebRtcUpgrades {
    peers: HashMap<PeerId, Upgrade>,
}

impl WebRtcUpgrades {
    /// A first attempt on `addr` is dialled as `dial`. Returns false (and
    /// records nothing) when an upgrade to `peer` is already under way.
    pub(super) fn start(&mut self, peer: PeerId, addr: Multiaddr, dial: ConnectionId) -> bool {
        if self.peers.contains_key(&peer) {
            return false;
        }
        self.peers.insert(
            peer,
            Upgrade {
                addr,
                attempts: 1,
                dial: Some(dial),
                due: None,
            },
        );
        true
    }

    /// The dial `dial` failed. When it was an upgrade attempt with attempts
    /// left, schedules the next one and returns the pause; otherwise the
    /// upgrade is given up.
    pub(super) fn failed(&mut self, dial: ConnectionId, now: Instant) -> Option<Duration> {
        let peer = *self
            .peers
            .iter()
            .find(|(_, u)| u.dial == Some(dial))
            .map(|(p, _)| p)?;
        let u = self.peers.get_mut(&peer)?;
        u.dial = None;
        if u.attempts >= MAX_ATTEMPTS {
            self.peers.remove(&peer);
            return None;
        }
        let pause = FIRST_PAUSE * 2u32.saturating_pow(u.attempts - 1);
        u.due = Some(now + pause);
        Some(pause)
    }

    /// Whether an upgrade to `peer` is under way (dialling or waiting).
    pub(super) fn is_active(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// When the earliest scheduled attempt is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.peers.values().filter_map(|u| u.due).min()
    }

    /// The attempts due at `now`: each peer and address to dial. The caller
    /// reports each dial with [`Self::dialled`].
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        let mut due = Vec::new();
        for (peer, u) in &mut self.peers {
            if u.due.is_some_and(|d| d <= now) {
                u.due = None;
                u.attempts += 1;
                due.push((*peer, u.addr.clone()));
            }
        }
        due
    }

    /// The attempt on `peer` is under way as `dial`.
    pub(super) fn dialled(&mut self, peer: PeerId, dial: ConnectionId) {
        if let Some(u) = self.peers.get_mut(&peer) {
            u.dial = Some(dial);
        }
    }

    /// Nothing more to do for `peer`: the upgrade succeeded, or the relayed
    /// connection is gone.
    pub(super) fn finish(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The attempt number of the next (or running) attempt on `peer`.
    #[cfg(test)]
    fn attempts(&self, peer: &PeerId) -> Option<u32> {
        self.peers.get(peer).map(|u| u.attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_are_retried_with_growing_pauses_then_given_up() {
        let mut u = WebRtcUpgrades::default();
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/10.0.0.1/udp/1/quic-v1/p2p-circuit/webrtc"
            .parse()
            .unwrap();
        let t0 = Instant::now();
        let first = ConnectionId::new_unchecked(1);
        assert!(u.start(peer, addr.clone(), first));
        assert!(u.is_active(&peer));
        assert!(!u.start(peer, addr.clone(), ConnectionId::new_unchecked(9)));
        assert_eq!(u.next_due(), None);

        // An unrelated dial failing changes nothing.
        assert_eq!(u.failed(ConnectionId::new_unchecked(7), t0), None);
        assert_eq!(u.attempts(&peer), Some(1));

        assert_eq!(u.failed(first, t0), Some(Duration::from_secs(1)));
        assert_eq!(u.next_due(), Some(t0 + Duration::from_secs(1)));
        assert!(u.take_due(t0).is_empty(), "not due yet");
        let due = u.take_due(t0 + Duration::from_secs(1));
        assert_eq!(due, vec![(peer, addr.clone())]);
        assert_eq!(u.next_due(), None);
        let second = ConnectionId::new_unchecked(2);
        u.dialled(peer, second);

        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(u.failed(second, t1), Some(Duration::from_secs(2)));
        assert_eq!(u.take_due(t1 + Duration::from_secs(2)).len(), 1);
        let third = ConnectionId::new_unchecked(3);
        u.dialled(peer, third);
        assert_eq!(u.attempts(&peer), Some(MAX_ATTEMPTS));

        // The last attempt failing gives up.
        assert_eq!(u.failed(third, t1), None);
        assert_eq!(u.attempts(&peer), None);
        assert_eq!(u.next_due(), None);

        // A new relayed connection may start over.
        assert!(u.start(peer, addr, ConnectionId::new_unchecked(4)));
        u.finish(&peer);
        assert_eq!(u.attempts(&peer), None);
    }
}
