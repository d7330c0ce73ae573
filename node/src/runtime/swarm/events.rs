//! The swarm actor's handling of swarm events: connections opened and
//! closed, their paths, dials, and WebRTC upgrades of relayed connections.

use libp2p::{
    core::ConnectedPoint,
    dcutr, identify,
    multiaddr::Protocol,
    ping,
    swarm::{dial_opts::DialOpts, SwarmEvent},
    Multiaddr, PeerId,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use agentmesh_transports::{path_of, PathKind};

use crate::{events::NodeEvent, runtime::peer_label};

use super::{observed_rank, path_rank, relay_of, Actor, BehaviourEvent, UPGRADE_WINDOW};

impl Actor {
    /// WebRTC hole punching: a relayed connection we dialled is upgraded by
    /// dialling `<relayed address>/webrtc/p2p/<peer>` (signalled over it);
    /// once the WebRTC connection is up, [`Self::prefer_direct`] closes the
    /// relayed one. A failed attempt is retried ([`crate::runtime::upgrade`]).
    fn on_webrtc(&mut self, peer: PeerId, endpoint: &ConnectedPoint, path: PathKind) {
        if path == PathKind::DirectWebRtc {
            self.webrtc_upgrades.finish(&peer);
        }
        if path != PathKind::Relayed
            || !self.shared.config.hole_punch.webrtc()
            || self.webrtc_upgrades.is_active(&peer)
        {
            return;
        }
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            let mut addr = address.clone();
            if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                addr.pop();
            }
            let addr = addr.with(Protocol::WebRTC).with(Protocol::P2p(peer));
            if let Some(dial) = self.dial_webrtc(peer, addr.clone()) {
                self.webrtc_upgrades.start(peer, addr, dial);
            }
        }
    }

    /// Starts one WebRTC attempt; returns its connection id.
    fn dial_webrtc(
        &mut self,
        peer: PeerId,
        addr: Multiaddr,
    ) -> Option<libp2p::swarm::ConnectionId> {
        debug!(%peer, %addr, "trying webrtc");
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![addr])
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => Some(id),
            Err(e) => {
                debug!(%peer, error = %e, "webrtc dial not started");
                None
            }
        }
    }

    /// Dials the WebRTC attempts that are due, for peers still reached
    /// only through a relay.
    pub(super) fn retry_webrtc(&mut self) {
        for (peer, addr) in self.webrtc_upgrades.take_due(Instant::now()) {
            let relayed_only = self.connections.get(&peer).is_some_and(|conns| {
                conns.iter().all(|c| {
                    self.conn_info
                        .get(c)
                        .is_some_and(|(p, _)| *p == PathKind::Relayed)
                })
            });
            if !relayed_only {
                self.webrtc_upgrades.finish(&peer);
                continue;
            }
            match self.dial_webrtc(peer, addr) {
                Some(dial) => self.webrtc_upgrades.dialled(peer, dial),
                None => self.webrtc_upgrades.finish(&peer),
            }
        }
    }

    pub(super) fn finish_dial(&mut self, peer: PeerId, result: Result<PathKind, String>) {
        self.dial_started.remove(&peer);
        for w in self.dials.remove(&peer).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }

    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        {
            use libp2p::metrics::Recorder;
            let m = &self.shared.libp2p_metrics;
            m.record(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .clone()
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or_else(|a| a);
                info!(addr = %full, "listening");
                self.shared.emit(NodeEvent::Listening {
                    addr: full.to_string(),
                });
                let relayed = path_of(&address) == PathKind::Relayed;
                if self.serves_circuits() && !relayed {
                    // A relay is reachable by definition: its listen
                    // addresses go into reservations and provider records.
                    self.swarm.add_external_address(address.clone());
                }
                self.reach.handle_listen_addr(address);
                // Let the other listeners come up, then publish once.
                self.publish.handle_addresses_changed(Instant::now());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                concurrent_dial_errors,
                ..
            } => {
                if let ConnectedPoint::Dialer {
                    port_use: libp2p::core::transport::PortUse::New,
                    ..
                } = &endpoint
                {
                    self.fresh_port.insert(connection_id);
                }
                let path = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => path_of(address),
                    // A connection that came through a relay arrives on our
                    // circuit listener.
                    ConnectedPoint::Listener { local_addr, .. }
                        if path_of(local_addr) == PathKind::Relayed =>
                    {
                        PathKind::Relayed
                    }
                    ConnectedPoint::Listener { send_back_addr, .. } => path_of(send_back_addr),
                };
                debug!(peer = %peer_id, ?endpoint, %path, "connection established");
                let remote = endpoint.get_remote_address().clone();
                self.conn_info.insert(connection_id, (path, remote.clone()));
                let first = self
                    .connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id)
                    && self.connections.get(&peer_id).is_some_and(|c| c.len() == 1);
                if first {
                    if let Ok(mut p) = self.shared.paths.lock() {
                        p.insert(peer_id, path);
                    }
                    self.shared.emit(NodeEvent::Connected {
                        peer: peer_label(&peer_id),
                        path,
                    });
                    let upgraded = self
                        .relayed_closed
                        .remove(&peer_id)
                        .is_some_and(|at| at.elapsed() < UPGRADE_WINDOW);
                    if upgraded && path != PathKind::Relayed {
                        // The peer closed the relayed connection as soon as
                        // it saw this one, before we did.
                        self.shared.emit(NodeEvent::PathUpgraded {
                            peer: peer_label(&peer_id),
                            path,
                            addr: remote.to_string(),
                        });
                    }
                } else {
                    self.prefer_direct(peer_id, connection_id, path, &remote);
                }
                self.on_webrtc(peer_id, &endpoint, path);
                if self.bootstrap.iter().any(|(p, _)| p == &peer_id) {
                    let _ = self.swarm.behaviour_mut().dht.bootstrap();
                    self.publish.handle_bootstrap_connected(Instant::now());
                    self.announce_relay();
                    self.find_relays();
                }
                if first && self.relays.selection.is_chosen(&peer_id) {
                    self.on_relay_connected(peer_id);
                }
                for (addr, e) in concurrent_dial_errors.unwrap_or_default() {
                    self.record_attempt(peer_id, &addr, Some(e.to_string()));
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.record_attempt(peer_id, address, None);
                }
                self.finish_dial(peer_id, Ok(path));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                self.fresh_port.remove(&connection_id);
                let closed = self.conn_info.remove(&connection_id);
                let gone = match self.connections.get_mut(&peer_id) {
                    Some(c) => {
                        c.remove(&connection_id);
                        c.is_empty()
                    }
                    None => false,
                };
                if !gone {
                    // The path is that of the best connection left.
                    let best = self.connections.get(&peer_id).and_then(|c| {
                        c.iter()
                            .filter_map(|id| self.conn_info.get(id).map(|(p, _)| *p))
                            .min_by_key(|p| path_rank(*p))
                    });
                    if let (Some(best), Ok(mut p)) = (best, self.shared.paths.lock()) {
                        p.insert(peer_id, best);
                    }
                }
                if gone {
                    if closed.is_some_and(|(p, _)| p == PathKind::Relayed) {
                        let now = Instant::now();
                        self.relayed_closed
                            .retain(|_, at| now.duration_since(*at) < UPGRADE_WINDOW);
                        self.relayed_closed.insert(peer_id, now);
                    }
                    self.webrtc_upgrades.finish(&peer_id);
                    self.connections.remove(&peer_id);
                    self.seen.remove(&peer_id);
                    if let Ok(mut p) = self.shared.paths.lock() {
                        p.remove(&peer_id);
                    }
                    self.shared.emit(NodeEvent::Disconnected {
                        peer: peer_label(&peer_id),
                    });
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } => {
                if let Some(over) = cause
                    .downcast_ref::<libp2p::memory_connection_limits::MemoryUsageLimitExceeded>()
                {
                    warn!(
                        target: "agentmesh::limits",
                        from = %send_back_addr,
                        rss = over.process_physical_memory_bytes(),
                        cap = over.max_allowed_bytes(),
                        "incoming connection refused: memory over the cap"
                    );
                } else {
                    debug!(from = %send_back_addr, %cause, "incoming connection refused");
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                connection_id,
            } => {
                debug!(%peer, %error, "dial failed");
                if let Some(pause) = self.webrtc_upgrades.failed(connection_id, Instant::now()) {
                    debug!(%peer, ?pause, "webrtc attempt failed; trying again");
                }
                if let libp2p::swarm::DialError::Transport(failed) = &error {
                    for (addr, e) in failed {
                        self.record_attempt(peer, addr, Some(e.to_string()));
                    }
                }
                if !self.swarm.is_connected(&peer) {
                    self.finish_dial(peer, Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                // A direct QUIC observation is kept over a TCP one, and
                // either over a relayed circuit's; one of a connection from
                // a fresh port is not kept.
                let observed = info.observed_addr.clone();
                let from_listen_socket = !self.fresh_port.contains(&connection_id);
                self.note_seen(peer_id, |s| {
                    if !from_listen_socket {
                        return;
                    }
                    if s.observed
                        .as_ref()
                        .is_none_or(|o| observed_rank(o) <= observed_rank(&observed))
                    {
                        s.observed = Some(observed);
                    }
                });
                // Only DHT servers go into the routing table: a client (an
                // agent behind a NAT, say) would be handed out to others
                // who cannot query it.
                if !info.protocols.contains(&agentmesh_dht::PROTOCOL) {
                    return;
                }
                let mut addrs = info.listen_addrs;
                agentmesh_transports::sort_by_preference(&mut addrs);
                for addr in addrs {
                    self.swarm.behaviour_mut().dht.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.note_seen(peer, |s| s.rtt = Some(rtt)),
            SwarmEvent::Behaviour(BehaviourEvent::Dht(e)) => self.on_dht_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => self.on_autonat_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                match &result {
                    Ok(_) => info!(peer = %remote_peer_id, "hole punch succeeded"),
                    Err(e) => info!(peer = %remote_peer_id, error = %e, "hole punch failed"),
                }
                self.shared.emit(NodeEvent::HolePunch {
                    peer: peer_label(&remote_peer_id),
                    ok: result.is_ok(),
                    error: result.err().map(|e| e.to_string()),
                });
            }
            SwarmEvent::ExternalAddrConfirmed { address } => self.on_external_confirmed(&address),
            SwarmEvent::ExternalAddrExpired { address } => {
                self.reach.handle_external_expired(&address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => self.on_relay_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => {
                debug!(?e, "relay client");
            }
            SwarmEvent::ListenerClosed { addresses, .. } => {
                for a in addresses {
                    self.reach.handle_listen_closed(&a);
                    if let Some(relay) = relay_of(&a) {
                        debug!(%relay, "relay reservation lost");
                        self.relays.reserved.remove(&relay);
                    }
                }
                self.publish.handle_addresses_changed(Instant::now());
            }
            _ => {}
        }
    }
}
