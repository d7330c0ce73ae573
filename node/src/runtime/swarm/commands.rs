//! The swarm actor's answers to the node's commands (resolve, connect,
//! status, records) and to the DHT's query results.

use std::collections::HashSet;

use libp2p::{multiaddr::Protocol, swarm::dial_opts::DialOpts, Multiaddr, PeerId};
use tokio::time::Instant;
use tracing::{debug, warn};

use agentmesh_dht::{now_ms, DhtEvent, SignedRecord};
use agentmesh_transports::{path_of, PathKind};

use crate::{
    audit::AuditEvent,
    card::{AgentCard, CARD_NAMESPACE},
    diagnostics::{PeerProbe, PeerRole},
    events::NodeEvent,
    plugin::Stored,
    runtime::{peer_label, Command, NetStatus, PeerStatus, RelayStatus},
};

use super::{path_rank, Actor, Seen, MAX_PROBED_PEERS, MAX_SEEN};

impl Actor {
    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Resolve { amid, reply } => {
                let Ok(peer) = amid.peer_id() else {
                    let _ = reply.send(None);
                    return;
                };
                if let Some(q) = self.resolving.get(&peer) {
                    if let Some(waiters) = self.resolves.get_mut(q) {
                        waiters.push(reply);
                        return;
                    }
                }
                let q = self.swarm.behaviour_mut().dht.get(CARD_NAMESPACE, &peer);
                self.resolving.insert(peer, q);
                self.resolves.insert(q, vec![reply]);
            }
            Command::LocalCard { amid, reply } => {
                let card = amid.peer_id().ok().and_then(|peer| {
                    let record = self
                        .swarm
                        .behaviour_mut()
                        .dht
                        .get_local(CARD_NAMESPACE, &peer)?;
                    AgentCard::from_record(&record).ok()
                });
                let _ = reply.send(card);
            }
            Command::OwnCard { reply } => {
                let own = self.shared.amid.peer_id().ok();
                let local = |actor: &mut Self| {
                    let peer = own?;
                    actor
                        .swarm
                        .behaviour_mut()
                        .dht
                        .get_local(CARD_NAMESPACE, &peer)
                        .map(|r| r.signed)
                };
                let mut record = local(self);
                if record.is_none() {
                    // Not signed yet (no address, or the first publish is
                    // still to come): sign and publish it now.
                    self.publish_card(false);
                    record = local(self);
                }
                let _ = reply.send(record);
            }
            Command::Connect {
                peer,
                mut addrs,
                reply,
            } => {
                self.path_memory.order(&peer, &mut addrs, Instant::now());
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(self.shared.path_to(&peer)));
                    return;
                }
                for a in &addrs {
                    self.swarm.behaviour_mut().dht.add_address(&peer, a.clone());
                }
                let first = !self.dials.contains_key(&peer);
                self.dials.entry(peer).or_default().push(reply);
                if first {
                    self.dial_started.insert(peer, Instant::now());
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .extend_addresses_through_behaviour()
                        .build();
                    match self.swarm.dial(opts) {
                        // Someone else is dialling it: its outcome is ours.
                        Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
                        Err(e) => self.finish_dial(peer, Err(e.to_string())),
                    }
                }
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::PutRecord {
                namespace,
                payload,
                ttl,
                reply,
            } => {
                let now = now_ms();
                let expires = now.saturating_add(ttl.as_millis() as u64);
                // Sequence numbers are milliseconds: a record published
                // again within the same one (a background publish and a
                // caller's) must still go up, or peers refuse it as stale.
                let me = *self.swarm.local_peer_id();
                let seq = self
                    .swarm
                    .behaviour_mut()
                    .dht
                    .get_local(&namespace, &me)
                    .map_or(now, |r| now.max(r.seq.saturating_add(1)));
                let put = SignedRecord::sign(&self.key, &namespace, payload, seq, expires)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        self.swarm
                            .behaviour_mut()
                            .dht
                            .put(r)
                            .map_err(|e| e.to_string())
                    });
                match put {
                    Ok(q) => {
                        self.record_puts.insert(q, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::PutSigned { record, reply } => {
                match self.swarm.behaviour_mut().dht.put(record) {
                    Ok(q) => {
                        self.record_puts.insert(q, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::GetRecord {
                namespace,
                subject,
                reply,
            } => {
                let q = self.swarm.behaviour_mut().dht.get(&namespace, &subject);
                self.record_gets.insert(q, reply);
            }
            Command::Republish => self.publish.handle_forced(Instant::now()),
            Command::PublishToConnected => {
                let now = Instant::now();
                self.publish.handle_stopping(now);
                if self.publish.poll_publish(now) {
                    self.publish_card(true);
                }
            }
            Command::Status { reply } => {
                let peer_id = *self.swarm.local_peer_id();
                let connected = self
                    .connections
                    .iter()
                    .map(|(p, conns)| {
                        let mut addrs: Vec<_> =
                            conns.iter().filter_map(|c| self.conn_info.get(c)).collect();
                        addrs.sort_by_key(|(path, _)| path_rank(*path));
                        PeerStatus {
                            peer: peer_label(p),
                            path: self.shared.path_to(p),
                            addrs: addrs.iter().map(|(_, a)| a.to_string()).collect(),
                        }
                    })
                    .collect();
                let nat = self.reach.nat_status();
                let external_addrs = self
                    .reach
                    .external()
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                let dht = &mut self.swarm.behaviour_mut().dht;
                let _ = reply.send(NetStatus {
                    listen_addrs: self
                        .reach
                        .listen()
                        .iter()
                        .map(|a| {
                            a.clone()
                                .with_p2p(peer_id)
                                .unwrap_or_else(|a| a)
                                .to_string()
                        })
                        .collect(),
                    connected,
                    routing_table: dht.routing_table_size(),
                    dht_mode: dht.mode(),
                    dht_records: dht.stored_records(),
                    card_published: self.publish.stored_remotely(),
                    reachability: self.shared.config.reachability,
                    nat,
                    external_addrs,
                    mailbox_relays: self
                        .relays
                        .selection
                        .chosen()
                        .iter()
                        .map(|(_, a)| a.to_string())
                        .collect(),
                    relay: self.serves_circuits().then(|| {
                        let stored = self.shared.plugins.iter().filter_map(|p| p.stored()).fold(
                            Stored::default(),
                            |a, s| Stored {
                                items: a.items + s.items,
                                bytes: a.bytes + s.bytes,
                            },
                        );
                        RelayStatus {
                            reservations: self.relays.reservations,
                            circuits: self.relays.circuits,
                            envelopes: stored.items,
                            bytes: stored.bytes,
                            totals: self.relays.totals,
                        }
                    }),
                    path_attempts: self.path_memory.counters(),
                    learned_paths: self.path_memory.learned(Instant::now(), peer_label),
                    probes: self.probes(),
                });
            }
        }
    }

    /// Updates what we measured of a connected peer.
    pub(super) fn note_seen(&mut self, peer: PeerId, update: impl FnOnce(&mut Seen)) {
        if !self.swarm.is_connected(&peer) {
            return;
        }
        if self.seen.len() >= MAX_SEEN && !self.seen.contains_key(&peer) {
            warn!(%peer, cap = MAX_SEEN, "measurements of peers at capacity; dropped");
            return;
        }
        update(self.seen.entry(peer).or_default());
    }

    /// The doctor's probes: every bootstrap node and relay, connected or
    /// not, then a few other peers that reported the address they saw us at.
    fn probes(&self) -> Vec<PeerProbe> {
        let probe = |peer: &PeerId, role, addr: Option<&Multiaddr>| {
            let mut p = PeerProbe::new(peer_label(peer), role);
            p.addr = addr.map(ToString::to_string);
            p.connected = self.swarm.is_connected(peer);
            if let Some(seen) = self.seen.get(peer) {
                p.rtt_ms = seen.rtt.map(|d| d.as_millis() as u64);
                p.observed_addr = seen.observed.as_ref().map(ToString::to_string);
            }
            p
        };
        let mut listed = HashSet::new();
        let mut out = Vec::new();
        for (peer, addr) in &self.bootstrap {
            if listed.insert(*peer) {
                out.push(probe(peer, PeerRole::Bootstrap, Some(addr)));
            }
        }
        let configured = self
            .shared
            .config
            .relays
            .iter()
            .filter_map(|a| match a.iter().last() {
                Some(Protocol::P2p(p)) => Some((p, a.clone())),
                _ => None,
            });
        let chosen = self.relays.selection.chosen().iter().cloned();
        for (peer, addr) in configured.chain(chosen) {
            if listed.insert(peer) {
                out.push(probe(&peer, PeerRole::Relay, Some(&addr)));
            }
        }
        let mut others: Vec<_> = self
            .seen
            .iter()
            .filter(|(p, s)| s.observed.is_some() && !listed.contains(*p))
            .collect();
        others.sort_by_key(|(p, _)| p.to_bytes());
        for (peer, _) in others.into_iter().take(MAX_PROBED_PEERS) {
            let addr = self
                .connections
                .get(peer)
                .into_iter()
                .flatten()
                .filter_map(|c| self.conn_info.get(c))
                .find(|(path, _)| *path != PathKind::Relayed)
                .map(|(_, a)| a);
            out.push(probe(peer, PeerRole::Peer, addr));
        }
        out
    }

    /// Records one attempt of a dial that a link asked for (see
    /// [`Command::Connect`]): in the path memory and the audit log.
    pub(super) fn record_attempt(&mut self, peer: PeerId, addr: &Multiaddr, error: Option<String>) {
        let Some(started) = self.dial_started.get(&peer) else {
            return;
        };
        let now = Instant::now();
        self.path_memory.record(peer, addr, error.is_none(), now);
        self.shared.audit(AuditEvent::PathAttempt {
            peer: peer_label(&peer),
            path: path_of(addr).to_string(),
            addr: addr.to_string(),
            ok: error.is_none(),
            error,
            ms: now.saturating_duration_since(*started).as_millis() as u64,
        });
    }

    pub(super) fn on_dht_event(&mut self, event: DhtEvent) {
        match event {
            DhtEvent::ProvidersFound { query, providers } => {
                let me = *self.swarm.local_peer_id();
                let new = self
                    .relays
                    .selection
                    .handle_providers_found(query, me, providers);
                for p in new {
                    let q = self.swarm.behaviour_mut().dht.get(CARD_NAMESPACE, &p);
                    self.relays.selection.handle_lookup_started(q, p);
                }
            }
            DhtEvent::RecordFound { query, record } if self.relays.selection.is_lookup(query) => {
                let card = record.and_then(|r| AgentCard::from_record(&r).ok());
                let addrs = card.map(|c| c.multiaddrs()).unwrap_or_default();
                if let Some((peer, addr)) = self.relays.selection.handle_lookup_done(query, addrs) {
                    debug!(%peer, %addr, "relay discovered");
                    self.choose_relays();
                }
            }
            DhtEvent::RecordFound { query, record } if self.record_gets.contains_key(&query) => {
                if let Some(w) = self.record_gets.remove(&query) {
                    let _ = w.send(record.map(|r| *r));
                }
            }
            DhtEvent::PutDone {
                query,
                stored_remotely,
            } if self.record_puts.contains_key(&query) => {
                if let Some(w) = self.record_puts.remove(&query) {
                    let _ = w.send(Ok(stored_remotely));
                }
            }
            DhtEvent::RecordFound { query, record } => {
                let card = record.and_then(|r| match AgentCard::from_record(&r) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(error = %e, "invalid card in DHT");
                        None
                    }
                });
                if let Some(c) = &card {
                    if let Ok(p) = c.amid.peer_id() {
                        self.resolving.remove(&p);
                    }
                } else {
                    self.resolving.retain(|_, q| *q != query);
                }
                for w in self.resolves.remove(&query).unwrap_or_default() {
                    let _ = w.send(card.clone());
                }
            }
            DhtEvent::PutDone {
                query,
                stored_remotely,
            } if self.publish.is_put(query) => {
                self.publish
                    .handle_put_done(query, stored_remotely, Instant::now());
                self.shared.emit(NodeEvent::CardPublished {
                    seq: self.last_seq,
                    stored_remotely,
                });
                // The registry keeps the card too (see `registry::bundle`).
                self.shared.registry_wake.notify_one();
            }
            DhtEvent::RoutingUpdated { .. } => {
                self.publish.handle_routing_updated(Instant::now());
            }
            DhtEvent::InboundRejected { from, error } => {
                debug!(%from, %error, "refused DHT record");
            }
            _ => {}
        }
    }
}
