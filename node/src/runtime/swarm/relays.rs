//! The swarm actor's relays and reachability: choosing mailbox relays,
//! listening through them, serving as one, and following AutoNAT.

use libp2p::{autonat, multiaddr::Protocol, relay, swarm::dial_opts::DialOpts, Multiaddr, PeerId};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use agentmesh_transports::PathKind;

use crate::{
    events::NodeEvent,
    runtime::{peer_label, NatStatus},
};

use super::{path_rank, Actor};

impl Actor {
    /// Picks up to `mailbox_relays` relays among the candidates, nearest to
    /// our id first (so a restart picks the same ones), and dials the new
    /// picks.
    pub(super) fn choose_relays(&mut self) {
        let picks = self.relays.selection.choose(*self.swarm.local_peer_id());
        if picks.is_empty() {
            return;
        }
        if let Ok(mut mine) = self.shared.my_relays.write() {
            *mine = self.relays.selection.chosen().to_vec();
        }
        for (peer, addr) in &picks {
            info!(relay = %addr, "mailbox relay chosen");
            self.swarm
                .behaviour_mut()
                .dht
                .add_address(peer, addr.clone());
            if self.swarm.is_connected(peer) {
                self.on_relay_connected(*peer);
            } else {
                let opts = DialOpts::peer_id(*peer)
                    .addresses(vec![addr.clone()])
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    debug!(%peer, error = %e, "relay dial not started");
                }
            }
        }
        self.publish.handle_relays_changed(Instant::now());
    }

    /// Looks for relays in the DHT while we have fewer than we want and
    /// none were configured.
    pub(super) fn find_relays(&mut self) {
        let now = Instant::now();
        if !self.relays.selection.should_search(now) {
            return;
        }
        let q = self
            .swarm
            .behaviour_mut()
            .dht
            .providers(crate::mailbox::RELAY_PROVIDER_KEY);
        self.relays.selection.handle_search_started(q, now);
    }

    /// Whether a plugin has us serve circuit relay.
    pub(super) fn serves_circuits(&self) -> bool {
        self.swarm.behaviour().relay.is_enabled()
    }

    /// A node announces its plugins' provider keys (a relay's, for one) in
    /// the DHT once it is connected to the network.
    pub(super) fn announce_relay(&mut self) {
        if self.relays.provided {
            return;
        }
        let keys: Vec<Vec<u8>> = self
            .shared
            .plugins
            .iter()
            .flat_map(|p| p.provides())
            .collect();
        let mut ok = true;
        for key in keys {
            if let Err(e) = self.swarm.behaviour_mut().dht.provide(&key) {
                warn!(error = %e, "provider announcement failed");
                ok = false;
            }
        }
        self.relays.provided = ok;
    }

    /// Redials chosen relays that dropped, and keeps looking for more.
    pub(super) fn check_relays(&mut self) {
        for (peer, addr) in self.relays.selection.chosen().to_vec() {
            if !self.swarm.is_connected(&peer) {
                let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                let _ = self.swarm.dial(opts);
            }
        }
        if self.swarm.connected_peers().next().is_some() {
            self.find_relays();
        }
    }

    /// Starts listening through every connected relay when we want to.
    fn listen_through_relays_if_needed(&mut self) {
        if !self.reach.wants_relays() {
            return;
        }
        let connected: Vec<PeerId> = self
            .relays
            .selection
            .chosen()
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| self.swarm.is_connected(p))
            .collect();
        for relay in connected {
            self.listen_through(relay);
        }
    }

    /// A new connection to a peer we are already connected to: when it is
    /// direct and the path so far was relayed, it becomes the path and the
    /// relayed connections close, so every stream moves to the direct one.
    /// A relayed connection next to a direct one is closed at once.
    pub(super) fn prefer_direct(
        &mut self,
        peer: PeerId,
        new: libp2p::swarm::ConnectionId,
        path: PathKind,
        addr: &Multiaddr,
    ) {
        let conns: Vec<_> = self
            .connections
            .get(&peer)
            .map(|c| c.iter().copied().filter(|c| *c != new).collect())
            .unwrap_or_default();
        let relayed: Vec<_> = conns
            .iter()
            .copied()
            .filter(|c| {
                self.conn_info
                    .get(c)
                    .is_some_and(|(p, _)| *p == PathKind::Relayed)
            })
            .collect();
        if path_rank(path) > path_rank(PathKind::Relayed) {
            return;
        }
        if path == PathKind::Relayed {
            if relayed.len() < conns.len() {
                debug!(%peer, "relayed connection next to a direct one; closing it");
                self.swarm.close_connection(new);
            }
            return;
        }
        let was = self.shared.path_to(&peer);
        if path_rank(path) < path_rank(was) {
            if let Ok(mut p) = self.shared.paths.lock() {
                p.insert(peer, path);
            }
        }
        if relayed.is_empty() {
            return;
        }
        info!(%peer, %addr, %path, "direct connection; closing the relayed one");
        for c in relayed {
            self.swarm.close_connection(c);
        }
        self.shared.emit(NodeEvent::PathUpgraded {
            peer: peer_label(&peer),
            path,
            addr: addr.to_string(),
        });
    }

    pub(super) fn on_autonat_event(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            debug!(?event, "autonat");
            return;
        };
        let (status, addr) = match &new {
            autonat::NatStatus::Public(a) => (NatStatus::Public, Some(a.to_string())),
            autonat::NatStatus::Private => (NatStatus::BehindNat, None),
            autonat::NatStatus::Unknown => (NatStatus::Unknown, None),
        };
        info!(?old, ?new, "reachability changed");
        self.reach.handle_nat_status(status);
        if let Ok(mut n) = self.shared.nat.write() {
            *n = status;
        }
        self.follow_reachability_in_dht();
        self.shared.emit(NodeEvent::Reachability { status, addr });
        self.listen_through_relays_if_needed();
        self.publish.handle_reachability_changed(Instant::now());
    }

    /// A peer confirmed it can dial us on `address`. Relay reservations
    /// are confirmed too; they are listed with the listen addresses, not as
    /// our own. AutoNAT confirms again on every probe: only news counts.
    pub(super) fn on_external_confirmed(&mut self, address: &Multiaddr) {
        if self.reach.handle_external_confirmed(address) {
            info!(addr = %address, "external address confirmed");
            self.listen_through_relays_if_needed();
            self.publish.handle_addresses_changed(Instant::now());
        }
    }

    /// With automatic reachability and a DHT configured to serve, a node
    /// behind a NAT only queries the DHT (peers could not dial it to ask),
    /// and serves again once it is found public.
    fn follow_reachability_in_dht(&mut self) {
        let Some(mode) = self.reach.dht_mode(self.shared.config.dht.mode) else {
            return;
        };
        let dht = &mut self.swarm.behaviour_mut().dht;
        if dht.mode() != mode {
            info!(?mode, "DHT mode follows reachability");
            dht.set_mode(mode);
        }
    }

    /// Listens through `relay`'s reservation, once.
    fn listen_through(&mut self, relay: PeerId) {
        if self.relays.reserved.contains(&relay) {
            return;
        }
        if let Some(addr) = self.relays.selection.chosen_addr(&relay) {
            let circuit = addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(_) => {
                    info!(addr = %circuit, "listening through relay");
                    self.relays.reserved.insert(relay);
                }
                Err(e) => warn!(addr = %circuit, error = %e, "relay listen failed"),
            }
        }
    }

    /// A mailbox relay is connected: listen through it when we are not
    /// reachable directly, and collect our mail.
    pub(super) fn on_relay_connected(&mut self, relay: PeerId) {
        if self.reach.wants_relays() {
            self.listen_through(relay);
        }
        tokio::spawn(crate::runtime::mailbox::drain(self.shared.clone(), relay));
    }

    /// Collects mail from every connected mailbox relay.
    pub(super) fn drain_all(&mut self) {
        for (peer, _) in self.relays.selection.chosen() {
            if self.swarm.is_connected(peer) {
                tokio::spawn(crate::runtime::mailbox::drain(self.shared.clone(), *peer));
            }
        }
    }

    pub(super) fn on_relay_event(&mut self, event: relay::Event) {
        let r = &mut self.relays;
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                if !renewed {
                    r.reservations += 1;
                }
                r.totals.reservations_accepted += 1;
                debug!(peer = %src_peer_id, renewed, "reservation accepted");
            }
            relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
                r.reservations = r.reservations.saturating_sub(1);
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                r.circuits += 1;
                r.totals.circuits_accepted += 1;
                debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
            }
            relay::Event::CircuitClosed { .. } => r.circuits = r.circuits.saturating_sub(1),
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                r.totals.reservations_denied += 1;
                debug!(peer = %src_peer_id, "reservation denied");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                r.totals.circuits_denied += 1;
                debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit denied");
            }
            _ => {}
        }
    }
}
