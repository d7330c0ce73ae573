//! What we know of our own reachability, and what follows from it.
//!
//! Inputs: the configured [`Reachability`], what AutoNAT reports
//! ([`NatStatus`]), our listen addresses, and the external addresses peers
//! confirmed they can dial. From them:
//!
//! - **behind a NAT**: declared [`Reachability::Private`], or reported
//!   behind a NAT in automatic mode;
//! - **translated**: in automatic mode, every confirmed external address is
//!   on an IP none of our listen addresses has (a NAT lets peers in, but it
//!   may filter those we did not contact first);
//! - **wants relays**: either of the above, so we also listen through our
//!   relays' reservations;
//! - the **card's addresses**: only relayed ones behind a NAT; when
//!   translated, confirmed external addresses then relayed ones; otherwise
//!   confirmed external addresses then the listen addresses;
//! - the **DHT mode** that follows reachability in automatic mode (a node
//!   behind a NAT only queries: peers could not dial it to ask).
//!
//! Nothing here depends on time, so no input takes `now`.

use std::net::IpAddr;

use agentmesh_dht::DhtMode;
use agentmesh_transports::{path_of, sort_by_preference, PathKind};
use libp2p::{multiaddr::Protocol, Multiaddr};

use crate::runtime::{NatStatus, Reachability};

/// Our reachability as configured, reported and observed.
#[derive(Debug)]
pub(crate) struct ReachabilityState {
    /// What the configuration declares.
    configured: Reachability,
    /// What AutoNAT reported last.
    nat: NatStatus,
    /// Our listen addresses, in preference order.
    listen: Vec<Multiaddr>,
    /// Our direct addresses that peers confirmed they can dial, oldest
    /// first.
    external: Vec<Multiaddr>,
}

impl ReachabilityState {
    /// Nothing known yet but the configuration.
    pub(crate) fn new(configured: Reachability) -> Self {
        Self {
            configured,
            nat: NatStatus::Unknown,
            listen: Vec::new(),
            external: Vec::new(),
        }
    }

    /// We listen on `addr` (a relayed address included). Returns whether it
    /// is new.
    pub(crate) fn handle_listen_addr(&mut self, addr: Multiaddr) -> bool {
        if self.listen.contains(&addr) {
            return false;
        }
        self.listen.push(addr);
        sort_by_preference(&mut self.listen);
        true
    }

    /// We no longer listen on `addr`.
    pub(crate) fn handle_listen_closed(&mut self, addr: &Multiaddr) {
        self.listen.retain(|l| l != addr);
    }

    /// AutoNAT reports `status`.
    pub(crate) fn handle_nat_status(&mut self, status: NatStatus) {
        self.nat = status;
    }

    /// A peer confirmed it can dial us on `addr`. Returns whether that is
    /// news: relay reservations are confirmed too but are not our own
    /// addresses, and AutoNAT confirms again on every probe.
    pub(crate) fn handle_external_confirmed(&mut self, addr: &Multiaddr) -> bool {
        if path_of(addr) == PathKind::Relayed || self.external.contains(addr) {
            return false;
        }
        self.external.push(addr.clone());
        true
    }

    /// `addr` is no longer confirmed.
    pub(crate) fn handle_external_expired(&mut self, addr: &Multiaddr) {
        self.external.retain(|a| a != addr);
    }

    /// What AutoNAT reported last.
    pub(crate) fn nat_status(&self) -> NatStatus {
        self.nat
    }

    /// Our listen addresses, in preference order.
    pub(crate) fn listen(&self) -> &[Multiaddr] {
        &self.listen
    }

    /// Our confirmed external addresses.
    pub(crate) fn external(&self) -> &[Multiaddr] {
        &self.external
    }

    /// Whether we are taken to be unreachable directly: declared so, or
    /// reported behind a NAT in automatic mode.
    pub(crate) fn behind_nat(&self) -> bool {
        match self.configured {
            Reachability::Private => true,
            Reachability::Auto => self.nat == NatStatus::BehindNat,
            _ => false,
        }
    }

    /// Whether peers reach us on an address that is none of ours: a NAT
    /// that lets them in (a full-cone or address-restricted one; the
    /// latter only for peers we contacted), in automatic mode.
    pub(crate) fn translated(&self) -> bool {
        self.configured == Reachability::Auto
            && !self.external.is_empty()
            && self
                .external
                .iter()
                .all(|e| !self.listen.iter().any(|l| ip_of(l) == ip_of(e)))
    }

    /// Whether to listen through our relays too: behind a NAT, or
    /// reachable only through a translation that may filter.
    pub(crate) fn wants_relays(&self) -> bool {
        self.behind_nat() || self.translated()
    }

    /// The DHT mode reachability calls for, when a DHT configured as
    /// `configured` follows it: only in automatic mode, only a server, and
    /// only once AutoNAT is sure. `None` leaves the mode as it is.
    pub(crate) fn dht_mode(&self, configured: DhtMode) -> Option<DhtMode> {
        if self.configured != Reachability::Auto || configured != DhtMode::Server {
            return None;
        }
        match self.nat {
            NatStatus::BehindNat => Some(DhtMode::Client),
            NatStatus::Public => Some(DhtMode::Server),
            _ => None,
        }
    }

    /// The addresses our card lists: only relayed ones behind a NAT;
    /// behind a translation, confirmed external addresses then relayed
    /// ones; otherwise confirmed external addresses, then the listen
    /// addresses.
    pub(crate) fn card_addrs(&self) -> Vec<String> {
        let relayed = |a: &&Multiaddr| path_of(a) == PathKind::Relayed;
        if self.behind_nat() {
            return self
                .listen
                .iter()
                .filter(relayed)
                .map(|a| a.to_string())
                .collect();
        }
        let mut addrs: Vec<String> = self.external.iter().map(|a| a.to_string()).collect();
        let translated = self.translated();
        for a in &self.listen {
            if translated && !relayed(&a) {
                // A LAN address: nobody outside can dial it.
                continue;
            }
            let a = a.to_string();
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }
}

/// The IP address of `addr`, if it has one.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    const LAN_QUIC: &str = "/ip4/192.168.1.5/udp/4001/quic-v1";
    const LAN_TCP: &str = "/ip4/192.168.1.5/tcp/4001";
    const PUBLIC_QUIC: &str = "/ip4/203.0.113.5/udp/4001/quic-v1";
    const NAT_QUIC: &str = "/ip4/198.51.100.7/udp/31000/quic-v1";
    const RELAYED: &str = "/ip4/203.0.113.9/udp/4001/quic-v1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp/p2p-circuit";

    #[test]
    fn listen_addresses_are_kept_in_preference_order_once() {
        let mut r = ReachabilityState::new(Reachability::Auto);
        assert!(r.handle_listen_addr(a(LAN_TCP)));
        assert!(r.handle_listen_addr(a(RELAYED)));
        assert!(r.handle_listen_addr(a(LAN_QUIC)));
        assert!(!r.handle_listen_addr(a(LAN_TCP)));
        assert_eq!(r.listen(), &[a(LAN_QUIC), a(LAN_TCP), a(RELAYED)]);
        r.handle_listen_closed(&a(LAN_TCP));
        assert_eq!(r.listen(), &[a(LAN_QUIC), a(RELAYED)]);
    }

    #[test]
    fn only_new_direct_external_addresses_are_news() {
        let mut r = ReachabilityState::new(Reachability::Auto);
        assert!(!r.handle_external_confirmed(&a(RELAYED)));
        assert!(r.handle_external_confirmed(&a(PUBLIC_QUIC)));
        assert!(!r.handle_external_confirmed(&a(PUBLIC_QUIC)));
        assert_eq!(r.external(), &[a(PUBLIC_QUIC)]);
        r.handle_external_expired(&a(PUBLIC_QUIC));
        assert!(r.external().is_empty());
    }

    #[test]
    fn declared_reachability_wins_over_autonat() {
        for nat in [NatStatus::Public, NatStatus::BehindNat, NatStatus::Unknown] {
            let mut private = ReachabilityState::new(Reachability::Private);
            private.handle_nat_status(nat);
            assert!(private.behind_nat());
            assert!(private.wants_relays());
            let mut public = ReachabilityState::new(Reachability::Public);
            public.handle_nat_status(nat);
            public.handle_listen_addr(a(LAN_QUIC));
            public.handle_external_confirmed(&a(NAT_QUIC));
            assert!(!public.behind_nat());
            assert!(!public.translated(), "only learned in automatic mode");
            assert!(!public.wants_relays());
            assert_eq!(public.nat_status(), nat);
        }
    }

    #[test]
    fn automatic_mode_follows_autonat() {
        let mut r = ReachabilityState::new(Reachability::Auto);
        assert_eq!(r.nat_status(), NatStatus::Unknown);
        assert!(!r.behind_nat());
        assert_eq!(r.dht_mode(DhtMode::Server), None);
        r.handle_nat_status(NatStatus::BehindNat);
        assert!(r.behind_nat());
        assert!(r.wants_relays());
        assert_eq!(r.dht_mode(DhtMode::Server), Some(DhtMode::Client));
        assert_eq!(r.dht_mode(DhtMode::Client), None, "a client stays one");
        r.handle_nat_status(NatStatus::Public);
        assert!(!r.wants_relays());
        assert_eq!(r.dht_mode(DhtMode::Server), Some(DhtMode::Server));
        let declared = ReachabilityState::new(Reachability::Private);
        assert_eq!(declared.dht_mode(DhtMode::Server), None);
    }

    #[test]
    fn the_card_lists_what_peers_can_dial() {
        // Public: confirmed addresses first, then the listen addresses.
        let mut r = ReachabilityState::new(Reachability::Auto);
        r.handle_listen_addr(a(PUBLIC_QUIC));
        r.handle_listen_addr(a(LAN_TCP));
        r.handle_external_confirmed(&a(PUBLIC_QUIC));
        assert!(!r.translated());
        assert_eq!(r.card_addrs(), vec![PUBLIC_QUIC, LAN_TCP]);

        // Translated: the NAT's address and relayed ones, no LAN address.
        let mut r = ReachabilityState::new(Reachability::Auto);
        r.handle_listen_addr(a(LAN_QUIC));
        r.handle_listen_addr(a(RELAYED));
        r.handle_external_confirmed(&a(NAT_QUIC));
        assert!(r.translated());
        assert!(r.wants_relays());
        assert_eq!(r.card_addrs(), vec![NAT_QUIC, RELAYED]);

        // Behind a NAT: relayed addresses only.
        r.handle_nat_status(NatStatus::BehindNat);
        assert_eq!(r.card_addrs(), vec![RELAYED]);
    }

    /// One input of the property test.
    #[derive(Debug, Clone)]
    enum Input {
        Listen(usize),
        ListenClosed(usize),
        Confirmed(usize),
        Expired(usize),
        Nat(NatStatus),
    }

    const POOL: [&str; 6] = [
        LAN_QUIC,
        LAN_TCP,
        PUBLIC_QUIC,
        NAT_QUIC,
        RELAYED,
        "/ip6/2001:db8::1/tcp/4001",
    ];

    fn input() -> impl Strategy<Value = Input> {
        let i = 0..POOL.len();
        prop_oneof![
            i.clone().prop_map(Input::Listen),
            i.clone().prop_map(Input::ListenClosed),
            i.clone().prop_map(Input::Confirmed),
            i.prop_map(Input::Expired),
            prop_oneof![
                Just(NatStatus::Public),
                Just(NatStatus::BehindNat),
                Just(NatStatus::Unknown)
            ]
            .prop_map(Input::Nat),
        ]
    }

    fn configured() -> impl Strategy<Value = Reachability> {
        prop_oneof![
            Just(Reachability::Public),
            Just(Reachability::Private),
            Just(Reachability::Auto)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the inputs: relays are wanted exactly when behind a NAT
        /// or translated; the declared modes are never overridden; behind a
        /// NAT the card lists only relayed addresses, and translated it
        /// lists no direct address that is not confirmed; the card and the
        /// address lists hold no duplicates and no relayed external
        /// address.
        #[test]
        fn inference_invariants(
            configured in configured(),
            inputs in proptest::collection::vec(input(), 0..40),
        ) {
            let mut r = ReachabilityState::new(configured);
            for input in inputs {
                match input {
                    Input::Listen(i) => { r.handle_listen_addr(a(POOL[i])); }
                    Input::ListenClosed(i) => r.handle_listen_closed(&a(POOL[i])),
                    Input::Confirmed(i) => { r.handle_external_confirmed(&a(POOL[i])); }
                    Input::Expired(i) => r.handle_external_expired(&a(POOL[i])),
                    Input::Nat(s) => r.handle_nat_status(s),
                }
                prop_assert_eq!(r.wants_relays(), r.behind_nat() || r.translated());
                match configured {
                    Reachability::Private => prop_assert!(r.behind_nat()),
                    Reachability::Public => prop_assert!(!r.wants_relays()),
                    _ => prop_assert_eq!(
                        r.behind_nat(),
                        r.nat_status() == NatStatus::BehindNat
                    ),
                }
                let card = r.card_addrs();
                let mut unique = card.clone();
                unique.sort();
                unique.dedup();
                prop_assert_eq!(unique.len(), card.len(), "duplicates in {:?}", card);
                let external: Vec<String> = r.external().iter().map(|a| a.to_string()).collect();
                for c in &card {
                    let relayed = path_of(&a(c)) == PathKind::Relayed;
                    if r.behind_nat() {
                        prop_assert!(relayed, "{} listed behind a NAT", c);
                    } else if r.translated() {
                        prop_assert!(relayed || external.contains(c), "{} listed when translated", c);
                    }
                }
                prop_assert!(r.external().iter().all(|e| path_of(e) != PathKind::Relayed));
                for list in [r.listen(), r.external()] {
                    for (i, x) in list.iter().enumerate() {
                        prop_assert!(!list[i + 1..].contains(x));
                    }
                }
            }
        }
    }
}
