//! The swarm actor: owns the libp2p swarm, publishes the agent card, answers
//! resolve / connect / status commands, and tracks the path of every
//! connection.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use libp2p::{
    core::ConnectedPoint,
    identify,
    identity::Keypair,
    multiaddr::Protocol,
    ping,
    swarm::{dial_opts::DialOpts, NetworkBehaviour, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, warn};

use agentmesh_dht::{now_ms, Dht, DhtConfig, DhtEvent, QueryId, SignedRecord, VerifiedRecord};
use agentmesh_transports::{path_of, PathKind};

use super::{peer_label, Command, NetStatus, PeerStatus, Shared};
use crate::{
    card::{AgentCard, CARD_NAMESPACE},
    events::NodeEvent,
};

/// How often to retry publishing while no peer has stored the card.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);
/// How often to check the bootstrap connections.
const BOOTSTRAP_CHECK: Duration = Duration::from_secs(10);

/// The node's composed behaviour.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    dht: Dht,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub(super) fn new(
        key: &Keypair,
        db: &sled::Db,
        dht: DhtConfig,
        stream: libp2p_stream::Behaviour,
    ) -> Result<Self, agentmesh_dht::DhtError> {
        let local = key.public().to_peer_id();
        Ok(Self {
            dht: Dht::new(local, db, dht)?,
            identify: identify::Behaviour::new(
                identify::Config::new("/agentmesh/id/1".into(), key.public())
                    .with_agent_version(format!("agentmesh/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(25))),
            stream,
        })
    }
}

struct Actor {
    shared: Arc<Shared>,
    key: Keypair,
    swarm: Swarm<Behaviour>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    listen: Vec<Multiaddr>,
    resolves: HashMap<QueryId, Vec<oneshot::Sender<Option<AgentCard>>>>,
    resolving: HashMap<PeerId, QueryId>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<PathKind, String>>>>,
    connections: HashMap<PeerId, HashSet<libp2p::swarm::ConnectionId>>,
    publish_query: Option<QueryId>,
    published_remotely: bool,
    record_puts: HashMap<QueryId, oneshot::Sender<Result<bool, String>>>,
    record_gets: HashMap<QueryId, oneshot::Sender<Option<VerifiedRecord>>>,
    next_publish: Option<Instant>,
    last_seq: u64,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    bootstrap: Vec<Multiaddr>,
) {
    let bootstrap = bootstrap
        .into_iter()
        .filter_map(|a| match a.iter().last() {
            Some(Protocol::P2p(p)) => Some((p, a)),
            _ => {
                warn!(addr = %a, "bootstrap address lacks /p2p/<peer id>; ignored");
                None
            }
        })
        .collect();
    let key = match shared.identity.libp2p_keypair() {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "identity is not a valid libp2p key");
            return;
        }
    };
    let mut actor = Actor {
        key,
        shared: shared.clone(),
        swarm,
        bootstrap,
        listen: Vec::new(),
        resolves: HashMap::new(),
        resolving: HashMap::new(),
        dials: HashMap::new(),
        connections: HashMap::new(),
        publish_query: None,
        published_remotely: false,
        record_puts: HashMap::new(),
        record_gets: HashMap::new(),
        next_publish: None,
        last_seq: 0,
    };
    actor.dial_bootstraps();
    let mut bootstrap_check =
        tokio::time::interval_at(Instant::now() + BOOTSTRAP_CHECK, BOOTSTRAP_CHECK);
    let mut sweep = tokio::time::interval(Duration::from_secs(600));
    let cancel = shared.cancel.clone();
    loop {
        let publish_at = actor.next_publish;
        tokio::select! {
            biased;
            // Shutdown first.
            _ = cancel.cancelled() => break,
            // Local work before remote work.
            cmd = commands.recv() => match cmd {
                Some(c) => actor.on_command(c),
                None => break,
            },
            _ = async { tokio::time::sleep_until(publish_at.unwrap_or_else(Instant::now)).await }, if publish_at.is_some() => {
                actor.publish_card();
            }
            _ = bootstrap_check.tick() => actor.check_bootstrap(),
            _ = sweep.tick() => {
                let _ = shared.store().sweep(now_ms());
            }
            event = actor.swarm.select_next_some() => actor.on_swarm_event(event),
        }
    }
    debug!("swarm actor stopped");
}

impl Actor {
    fn dial_bootstraps(&mut self) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in &self.bootstrap {
            self.swarm
                .behaviour_mut()
                .dht
                .add_address(peer, addr.clone());
            by_peer.entry(*peer).or_default().push(addr.clone());
        }
        // One dial per bootstrap peer, its addresses in preference order.
        for (peer, mut addrs) in by_peer {
            agentmesh_transports::sort_by_preference(&mut addrs);
            let opts = DialOpts::peer_id(peer).addresses(addrs).build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "bootstrap dial not started");
            }
        }
    }

    fn check_bootstrap(&mut self) {
        if self.bootstrap.is_empty() {
            return;
        }
        let connected = self
            .bootstrap
            .iter()
            .any(|(p, _)| self.swarm.is_connected(p));
        if !connected {
            debug!("no bootstrap connected; redialling");
            self.dial_bootstraps();
        }
    }

    fn publish_card(&mut self) {
        self.next_publish = None;
        if self.listen.is_empty() {
            return;
        }
        let (olm_identity_key, otks, fallback_key) = self.shared.store().card_keys();
        let card = AgentCard {
            amid: self.shared.amid,
            olm_identity_key,
            one_time_keys: otks.into_iter().map(serde_bytes::ByteArray::new).collect(),
            fallback_key,
            capabilities: self.shared.config.capabilities.clone(),
            addrs: self.listen.iter().map(|a| a.to_string()).collect(),
            presence: self.shared.presence.read().map(|p| *p).unwrap_or_default(),
            seq: 0,
            expires_ms: 0,
        };
        let now = now_ms();
        let seq = now.max(self.last_seq.saturating_add(1));
        self.last_seq = seq;
        let expires = now.saturating_add(self.shared.config.card_ttl.as_millis() as u64);
        let record = card.to_payload().map_err(|e| e.to_string()).and_then(|p| {
            SignedRecord::sign(&self.key, CARD_NAMESPACE, p, seq, expires)
                .map_err(|e| e.to_string())
        });
        match record.map(|r| self.swarm.behaviour_mut().dht.put(r)) {
            Ok(Ok(q)) => {
                debug!(seq, "publishing card");
                self.publish_query = Some(q);
            }
            Ok(Err(e)) => warn!(error = %e, "card publish failed"),
            Err(e) => warn!(error = %e, "card could not be signed"),
        }
        // Republish before expiry regardless of the outcome.
        self.next_publish = Some(Instant::now() + self.shared.config.republish_every);
    }

    fn on_command(&mut self, cmd: Command) {
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
            Command::Connect {
                peer,
                mut addrs,
                reply,
            } => {
                agentmesh_transports::sort_by_preference(&mut addrs);
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
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .extend_addresses_through_behaviour()
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        self.finish_dial(peer, Err(e.to_string()));
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
                let put = SignedRecord::sign(&self.key, &namespace, payload, now, expires)
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
            Command::GetRecord {
                namespace,
                subject,
                reply,
            } => {
                let q = self.swarm.behaviour_mut().dht.get(&namespace, &subject);
                self.record_gets.insert(q, reply);
            }
            Command::Republish => {
                self.next_publish = Some(Instant::now());
            }
            Command::Status { reply } => {
                let peer_id = *self.swarm.local_peer_id();
                let connected = self
                    .connections
                    .keys()
                    .map(|p| PeerStatus {
                        peer: peer_label(p),
                        path: self.shared.path_to(p),
                    })
                    .collect();
                let dht = &mut self.swarm.behaviour_mut().dht;
                let _ = reply.send(NetStatus {
                    listen_addrs: self
                        .listen
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
                    dht_records: dht.stored_records(),
                    card_published: self.published_remotely,
                });
            }
        }
    }

    fn finish_dial(&mut self, peer: PeerId, result: Result<PathKind, String>) {
        for w in self.dials.remove(&peer).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
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
                self.listen.push(address);
                agentmesh_transports::sort_by_preference(&mut self.listen);
                // Let the other listeners come up, then publish once.
                self.next_publish = Some(Instant::now() + Duration::from_millis(200));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                };
                let path = path_of(addr);
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
                }
                if self.bootstrap.iter().any(|(p, _)| p == &peer_id) {
                    let _ = self.swarm.behaviour_mut().dht.bootstrap();
                    if !self.published_remotely {
                        self.next_publish = Some(Instant::now() + Duration::from_millis(200));
                    }
                }
                self.finish_dial(peer_id, Ok(path));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                let gone = match self.connections.get_mut(&peer_id) {
                    Some(c) => {
                        c.remove(&connection_id);
                        c.is_empty()
                    }
                    None => false,
                };
                if gone {
                    self.connections.remove(&peer_id);
                    if let Ok(mut p) = self.shared.paths.lock() {
                        p.remove(&peer_id);
                    }
                    self.shared.emit(NodeEvent::Disconnected {
                        peer: peer_label(&peer_id),
                    });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                debug!(%peer, %error, "dial failed");
                if !self.swarm.is_connected(&peer) {
                    self.finish_dial(peer, Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let mut addrs = info.listen_addrs;
                agentmesh_transports::sort_by_preference(&mut addrs);
                for addr in addrs {
                    self.swarm.behaviour_mut().dht.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dht(e)) => self.on_dht_event(e),
            _ => {}
        }
    }

    fn on_dht_event(&mut self, event: DhtEvent) {
        match event {
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
            } if self.publish_query == Some(query) => {
                self.publish_query = None;
                if stored_remotely {
                    self.published_remotely = true;
                } else {
                    self.next_publish = Some(Instant::now() + PUBLISH_RETRY);
                }
                self.shared.emit(NodeEvent::CardPublished {
                    seq: self.last_seq,
                    stored_remotely,
                });
            }
            DhtEvent::RoutingUpdated { .. }
                if !self.published_remotely && self.publish_query.is_none() =>
            {
                self.next_publish = Some(Instant::now() + Duration::from_millis(200));
            }
            DhtEvent::InboundRejected { from, error } => {
                debug!(%from, %error, "refused DHT record");
            }
            _ => {}
        }
    }
}
