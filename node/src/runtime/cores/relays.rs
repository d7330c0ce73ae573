//! Which mailbox relays to use, and when to look for more.
//!
//! Candidates come from the configuration or, when none are configured,
//! from the DHT: a search for relay providers, then a card lookup of each
//! provider not known yet, whose first direct address (in preference order)
//! makes it a candidate.
//!
//! Up to `want` relays are chosen among the candidates, nearest to our
//! peer id first (XOR distance, as in Kademlia), so a restart picks the
//! same ones. A chosen relay is kept for good: when it drops, the actor
//! dials it again.
//!
//! Searches are paced: at most one at a time, none while enough relays are
//! chosen or relays are configured, and the next one no sooner than
//! `search_every_without` after the previous one while none is chosen,
//! [`RELAY_SEARCH_EVERY`] once one is.
//!
//! `Q` identifies a DHT query, so that only our own queries' results count.

use std::{collections::HashMap, hash::Hash, time::Duration};

use agentmesh_transports::{path_of, sort_by_preference, PathKind};
use libp2p::{kad::KBucketKey, multiaddr::Protocol, Multiaddr, PeerId};
use tokio::time::Instant;

/// How often to look for more relays once we have one.
pub(crate) const RELAY_SEARCH_EVERY: Duration = Duration::from_secs(300);
/// How much earlier than its period a search may start, so that a search
/// due at one of the actor's periodic checks is not put off to the next
/// check by a tick that came a little early.
const SEARCH_SLACK: Duration = Duration::from_millis(500);

/// Relay candidates, the chosen ones, and the searches for more.
#[derive(Debug)]
pub(crate) struct RelaySelection<Q> {
    /// How many relays to choose.
    want: usize,
    /// How often to search while no relay is chosen.
    search_every_without: Duration,
    /// Whether relays were configured (then the DHT is never searched).
    configured: bool,
    /// Known relays, from the configuration and the DHT.
    candidates: Vec<(PeerId, Multiaddr)>,
    /// The relays keeping our mailbox, in the order they were chosen.
    chosen: Vec<(PeerId, Multiaddr)>,
    /// The search under way.
    search: Option<Q>,
    /// When the last search started.
    last_search: Option<Instant>,
    /// Card lookups of discovered relays under way.
    lookups: HashMap<Q, PeerId>,
}

impl<Q: Copy + Eq + Hash> RelaySelection<Q> {
    /// Chooses up to `want` relays, searching every `search_every_without`
    /// while it has none.
    pub(crate) fn new(want: usize, search_every_without: Duration) -> Self {
        Self {
            want,
            search_every_without,
            configured: false,
            candidates: Vec::new(),
            chosen: Vec::new(),
            search: None,
            last_search: None,
            lookups: HashMap::new(),
        }
    }

    /// The configured relays become candidates. Returns the addresses
    /// ignored for lacking a final `/p2p/<peer id>`. Any configured
    /// address, even an ignored one, stops searches in the DHT.
    pub(crate) fn handle_configured(&mut self, addrs: &[Multiaddr]) -> Vec<Multiaddr> {
        self.configured |= !addrs.is_empty();
        let mut ignored = Vec::new();
        for a in addrs {
            match a.iter().last() {
                Some(Protocol::P2p(p)) => self.candidates.push((p, a.clone())),
                _ => ignored.push(a.clone()),
            }
        }
        ignored
    }

    /// Chooses relays among the candidates until `want` are chosen, nearest
    /// to `me` first, and returns the new picks. (A relay configured under
    /// two addresses is two candidates, and may fill two places.)
    pub(crate) fn choose(&mut self, me: PeerId) -> Vec<(PeerId, Multiaddr)> {
        if self.chosen.len() >= self.want {
            return Vec::new();
        }
        let me = KBucketKey::from(me);
        let mut candidates: Vec<_> = self
            .candidates
            .iter()
            .filter(|(p, _)| p != me.preimage())
            .filter(|(p, _)| !self.is_chosen(p))
            .cloned()
            .collect();
        // A stable sort: of two addresses of one relay, the first listed
        // comes first.
        candidates.sort_by_key(|(p, _)| me.distance(&KBucketKey::from(*p)));
        let picks: Vec<_> = candidates
            .into_iter()
            .take(self.want - self.chosen.len())
            .collect();
        self.chosen.extend(picks.iter().cloned());
        picks
    }

    /// The chosen relays, in the order they were chosen.
    pub(crate) fn chosen(&self) -> &[(PeerId, Multiaddr)] {
        &self.chosen
    }

    /// Whether `peer` is a chosen relay.
    pub(crate) fn is_chosen(&self, peer: &PeerId) -> bool {
        self.chosen.iter().any(|(p, _)| p == peer)
    }

    /// The address `peer` was chosen with, if it was.
    pub(crate) fn chosen_addr(&self, peer: &PeerId) -> Option<&Multiaddr> {
        self.chosen.iter().find(|(p, _)| p == peer).map(|(_, a)| a)
    }

    /// Whether to search the DHT for relays at `now`. The caller starts the
    /// search and reports it with [`Self::handle_search_started`].
    pub(crate) fn should_search(&self, now: Instant) -> bool {
        // Often while we have none, rarely once we have one.
        let every = if self.chosen.is_empty() {
            self.search_every_without
        } else {
            RELAY_SEARCH_EVERY
        };
        self.chosen.len() < self.want
            && self.search.is_none()
            && !self.configured
            && self.last_search.is_none_or(|t| {
                now.saturating_duration_since(t) >= every.saturating_sub(SEARCH_SLACK)
            })
    }

    /// A search for relay providers started at `now` as `query`.
    pub(crate) fn handle_search_started(&mut self, query: Q, now: Instant) {
        self.search = Some(query);
        self.last_search = Some(now);
    }

    /// The search `query` found `providers`. Returns those to look up: not
    /// `me`, not already candidates or being looked up, each once. Each
    /// lookup is reported with [`Self::handle_lookup_started`]. A query
    /// that is not our search returns nothing.
    pub(crate) fn handle_providers_found(
        &mut self,
        query: Q,
        me: PeerId,
        providers: Vec<PeerId>,
    ) -> Vec<PeerId> {
        if self.search != Some(query) {
            return Vec::new();
        }
        self.search = None;
        let mut new: Vec<PeerId> = Vec::new();
        for p in providers {
            let known = p == me
                || self.candidates.iter().any(|(c, _)| c == &p)
                || self.lookups.values().any(|c| c == &p)
                || new.contains(&p);
            if !known {
                new.push(p);
            }
        }
        new
    }

    /// The card of `peer` is being looked up as `query`.
    pub(crate) fn handle_lookup_started(&mut self, query: Q, peer: PeerId) {
        self.lookups.insert(query, peer);
    }

    /// Whether `query` is a card lookup of a discovered relay.
    pub(crate) fn is_lookup(&self, query: Q) -> bool {
        self.lookups.contains_key(&query)
    }

    /// The card lookup `query` ended with the addresses the card lists
    /// (none when no card was found). The first direct address, in
    /// preference order, makes the relay a candidate: returns it, with the
    /// relay's peer id appended. Call [`Self::choose`] then.
    pub(crate) fn handle_lookup_done(
        &mut self,
        query: Q,
        mut addrs: Vec<Multiaddr>,
    ) -> Option<(PeerId, Multiaddr)> {
        let peer = self.lookups.remove(&query)?;
        sort_by_preference(&mut addrs);
        let addr = addrs
            .into_iter()
            .find(|a| path_of(a) != PathKind::Relayed)?
            .with_p2p(peer)
            .ok()?;
        self.candidates.push((peer, addr.clone()));
        Some((peer, addr))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const CHECK: Duration = Duration::from_secs(10);

    fn peer(i: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([i; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn relay(i: u8) -> (PeerId, Multiaddr) {
        let p = peer(i);
        let a: Multiaddr = format!("/ip4/203.0.113.{i}/udp/4001/quic-v1")
            .parse()
            .unwrap();
        (p, a.with_p2p(p).unwrap())
    }

    fn distance(me: PeerId, p: PeerId) -> libp2p::kad::KBucketDistance {
        KBucketKey::from(me).distance(&KBucketKey::from(p))
    }

    #[test]
    fn configured_relays_are_chosen_nearest_first_and_never_searched() {
        let me = peer(0);
        let mut r = RelaySelection::<u32>::new(2, CHECK);
        let bad: Multiaddr = "/ip4/203.0.113.1/tcp/1".parse().unwrap();
        let relays: Vec<_> = (1..=5).map(relay).collect();
        let mut addrs: Vec<Multiaddr> = relays.iter().map(|(_, a)| a.clone()).collect();
        addrs.push(bad.clone());
        assert_eq!(r.handle_configured(&addrs), vec![bad]);
        let picks = r.choose(me);
        assert_eq!(picks.len(), 2);
        assert_eq!(r.chosen(), picks.as_slice());
        let mut by_distance = relays.clone();
        by_distance.sort_by_key(|(p, _)| distance(me, *p));
        assert_eq!(picks, by_distance[..2]);
        assert!(r.choose(me).is_empty(), "enough chosen");
        assert!(r.is_chosen(&picks[0].0));
        assert_eq!(r.chosen_addr(&picks[1].0), Some(&picks[1].1));

        let mut one = RelaySelection::<u32>::new(3, CHECK);
        one.handle_configured(&[relay(1).1]);
        assert_eq!(one.choose(me).len(), 1);
        assert!(!one.should_search(Instant::now()), "configured: no search");
    }

    #[test]
    fn we_are_never_our_own_relay() {
        let me = peer(1);
        let mut r = RelaySelection::<u32>::new(2, CHECK);
        r.handle_configured(&[relay(1).1, relay(2).1]);
        assert_eq!(r.choose(me), vec![relay(2)]);
    }

    #[test]
    fn searches_are_paced() {
        let t0 = Instant::now();
        let me = peer(0);
        let mut r = RelaySelection::new(2, CHECK);
        assert!(r.should_search(t0));
        r.handle_search_started(1, t0);
        assert!(
            !r.should_search(t0 + Duration::from_secs(60)),
            "one at a time"
        );
        assert!(r.handle_providers_found(9, me, vec![peer(3)]).is_empty());
        assert_eq!(r.handle_providers_found(1, me, vec![]), vec![]);
        // While none is chosen: once per check, with some slack.
        assert!(!r.should_search(t0 + CHECK - SEARCH_SLACK - Duration::from_millis(1)));
        assert!(r.should_search(t0 + CHECK - SEARCH_SLACK));
        let t1 = t0 + CHECK;
        r.handle_search_started(2, t1);
        assert_eq!(
            r.handle_providers_found(2, me, vec![me, peer(3)]),
            vec![peer(3)]
        );
        r.handle_lookup_started(7, peer(3));
        let (_, a) = relay(3);
        let mut card = vec![
            a.clone().with(Protocol::P2pCircuit),
            "/ip4/203.0.113.3/udp/4001/quic-v1".parse().unwrap(),
        ];
        card.reverse();
        assert_eq!(r.handle_lookup_done(7, card), Some(relay(3)));
        assert_eq!(r.choose(me), vec![relay(3)]);
        // One chosen, one more wanted: rarely.
        assert!(!r.should_search(t1 + CHECK));
        assert!(r.should_search(t1 + RELAY_SEARCH_EVERY));
        r.handle_search_started(3, t1 + RELAY_SEARCH_EVERY);
        r.handle_providers_found(3, me, vec![peer(4)]);
        r.handle_lookup_started(8, peer(4));
        assert_eq!(r.handle_lookup_done(8, vec![relay(4).1]), Some(relay(4)));
        assert_eq!(r.choose(me).len(), 1);
        // Enough: never.
        assert!(!r.should_search(t1 + 100 * RELAY_SEARCH_EVERY));
    }

    #[test]
    fn discovered_relays_are_looked_up_once_and_need_a_direct_address() {
        let me = peer(0);
        let t0 = Instant::now();
        let mut r = RelaySelection::new(2, CHECK);
        r.handle_search_started(1, t0);
        let found = r.handle_providers_found(1, me, vec![peer(3), peer(4), peer(3)]);
        assert_eq!(found, vec![peer(3), peer(4)]);
        r.handle_lookup_started(10, peer(3));
        r.handle_lookup_started(11, peer(4));
        assert!(r.is_lookup(10));
        r.handle_search_started(2, t0 + CHECK);
        assert!(
            r.handle_providers_found(2, me, vec![peer(3)]).is_empty(),
            "already being looked up"
        );
        // A card listing only relayed addresses does not make a candidate.
        let relayed = relay(5).1.with(Protocol::P2pCircuit);
        assert_eq!(r.handle_lookup_done(10, vec![relayed]), None);
        assert!(!r.is_lookup(10));
        assert_eq!(r.handle_lookup_done(11, vec![]), None);
        assert_eq!(
            r.handle_lookup_done(11, vec![relay(4).1]),
            None,
            "done once"
        );
        assert!(r.choose(me).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the candidates and the order they come in: never more
        /// than `want` relays, never us, never one twice, a chosen relay is
        /// kept, and once every candidate is known the choice is the `want`
        /// nearest (so a restart picks the same ones).
        #[test]
        fn choice_invariants(
            me in 0u8..20,
            want in 0usize..5,
            order in Just((0u8..20).collect::<Vec<_>>()).prop_shuffle(),
            known in 0usize..20,
            batch in 1usize..6,
        ) {
            // Each relay once, in batches, as searches would find them.
            let batches: Vec<Vec<u8>> = order[..known].chunks(batch).map(<[u8]>::to_vec).collect();
            let me = peer(me);
            let mut r = RelaySelection::<u32>::new(want, CHECK);
            let mut kept: Vec<(PeerId, Multiaddr)> = Vec::new();
            let mut all = HashSet::new();
            for batch in &batches {
                let addrs: Vec<Multiaddr> = batch.iter().map(|i| relay(*i).1).collect();
                r.handle_configured(&addrs);
                all.extend(batch.iter().map(|i| peer(*i)));
                let picks = r.choose(me);
                prop_assert!(r.chosen().len() <= want);
                prop_assert!(r.chosen().starts_with(&kept), "a chosen relay was dropped");
                prop_assert_eq!(&r.chosen()[kept.len()..], picks.as_slice());
                prop_assert!(!r.is_chosen(&me));
                let ids: HashSet<_> = r.chosen().iter().map(|(p, _)| *p).collect();
                prop_assert_eq!(ids.len(), r.chosen().len());
                kept = r.chosen().to_vec();
            }
            all.remove(&me);
            prop_assert_eq!(r.chosen().len(), want.min(all.len()));

            // All at once: the nearest, whatever the order.
            let mut at_once = RelaySelection::<u32>::new(want, CHECK);
            let mut every: Vec<Multiaddr> = batches.concat().iter().map(|i| relay(*i).1).collect();
            every.reverse();
            at_once.handle_configured(&every);
            at_once.choose(me);
            let mut nearest: Vec<PeerId> = all.into_iter().collect();
            nearest.sort_by_key(|p| distance(me, *p));
            nearest.truncate(want);
            let chosen: Vec<PeerId> = at_once.chosen().iter().map(|(p, _)| *p).collect();
            prop_assert_eq!(chosen, nearest);
        }

        /// Driven by periodic checks at random times with random search
        /// results: never two searches at once, never closer than the
        /// period less the slack, never once enough relays are chosen.
        #[test]
        fn search_pacing_invariants(
            want in 1usize..4,
            steps in proptest::collection::vec(
                (0u64..400_000, proptest::option::of(proptest::collection::vec(1u8..12, 0..3))),
                1..40,
            ),
        ) {
            let me = peer(0);
            let mut r = RelaySelection::new(want, CHECK);
            let mut now = Instant::now();
            let mut last: Option<Instant> = None;
            let mut running: Option<u32> = None;
            let mut next_q = 0u32;
            for (dt, result) in steps {
                now += Duration::from_millis(dt);
                // The search under way may end with some providers.
                if let (Some(q), Some(found)) = (running, result) {
                    running = None;
                    let providers: Vec<PeerId> = found.iter().map(|i| peer(*i)).collect();
                    for p in r.handle_providers_found(q, me, providers) {
                        next_q += 1;
                        r.handle_lookup_started(next_q, p);
                        let i = found.iter().copied().find(|i| peer(*i) == p).unwrap();
                        r.handle_lookup_done(next_q, vec![relay(i).1]);
                    }
                    r.choose(me);
                }
                if r.should_search(now) {
                    prop_assert!(running.is_none(), "two searches at once");
                    prop_assert!(r.chosen().len() < want);
                    if let Some(t) = last {
                        prop_assert!(now - t >= CHECK - SEARCH_SLACK);
                        if !r.chosen().is_empty() {
                            prop_assert!(now - t >= RELAY_SEARCH_EVERY - SEARCH_SLACK);
                        }
                    }
                    next_q += 1;
                    r.handle_search_started(next_q, now);
                    running = Some(next_q);
                    last = Some(now);
                }
                prop_assert!(r.chosen().len() <= want);
            }
        }
    }
}
