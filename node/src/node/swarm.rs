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
    autonat,
    core::ConnectedPoint,
    dcutr, identify,
    identity::Keypair,
    multiaddr::Protocol,
    ping, relay,
    swarm::{behaviour::toggle::Toggle, dial_opts::DialOpts, NetworkBehaviour, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, warn};

use agentmesh_dht::{now_ms, Dht, DhtEvent, QueryId, SignedRecord, VerifiedRecord};
use agentmesh_transports::{path_of, PathKind};

use super::{
    cores::{publish::PublishSchedule, reachability::ReachabilityState, relays::RelaySelection},
    peer_label, Command, NatStatus, NetStatus, PeerStatus, Reachability, RelayStatus, RelayTotals,
    Shared,
};
use crate::{
    audit::AuditEvent,
    card::{AgentCard, CARD_NAMESPACE},
    diagnostics::{PeerProbe, PeerRole},
    events::NodeEvent,
    plugin::{Plugin, Stored},
};

/// How often to check the bootstrap connections (and, while we have no
/// relay, to look for one).
const BOOTSTRAP_CHECK: Duration = Duration::from_secs(10);
/// How often to look for mail at our relays, besides on each reconnection.
const DRAIN_EVERY: Duration = Duration::from_secs(30);
/// AutoNAT: first probe this long after start.
const AUTONAT_BOOT_DELAY: Duration = Duration::from_secs(1);
/// AutoNAT: probe again this often while unsure.
const AUTONAT_RETRY: Duration = Duration::from_secs(10);
/// AutoNAT: probe again this often once sure.
const AUTONAT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// AutoNAT: ask the same peer again no sooner than this.
const AUTONAT_SERVER_THROTTLE: Duration = Duration::from_secs(15);

/// The node's composed behaviour.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    memory: Toggle<libp2p::memory_connection_limits::Behaviour>,
    dht: Dht,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    autonat: autonat::Behaviour,
    dcutr: Toggle<dcutr::Behaviour>,
}

impl Behaviour {
    pub(super) fn new(
        key: &Keypair,
        dht: Dht,
        config: &super::Config,
        stream: libp2p_stream::Behaviour,
        relay_client: relay::client::Behaviour,
        plugins: &[Arc<dyn Plugin>],
    ) -> Self {
        let local = key.public().to_peer_id();
        let caps = config.connections;
        Self {
            limits: libp2p::connection_limits::Behaviour::new(
                libp2p::connection_limits::ConnectionLimits::default()
                    .with_max_established_incoming(Some(caps.max_incoming))
                    .with_max_pending_incoming(Some(caps.max_pending_incoming))
                    .with_max_established_per_peer(Some(caps.max_per_peer)),
            ),
            // Refuses new connections, both ways, while the process's
            // resident memory is over the cap.
            memory: Toggle::from(caps.max_memory.behaviour()),
            dht,
            identify: identify::Behaviour::new(
                identify::Config::new("/agentmesh/id/1".into(), key.public())
                    .with_agent_version(format!("agentmesh/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(25))),
            stream,
            relay_client,
            // A plugin's circuit relay server, advertised from the start (a
            // volunteer relay is reachable by definition; libp2p would
            // otherwise wait for a confirmed external address).
            relay: Toggle::from(plugins.iter().find_map(|p| p.circuit_relay()).map(|c| {
                let mut b = relay::Behaviour::new(local, c);
                b.set_status(Some(relay::Status::Enable));
                b
            })),
            // Every node answers dial-back requests (bootstraps and relays
            // are the ones agents behind NATs reach) and asks its peers.
            // Addresses are not filtered to global ones, so private and
            // documentation networks (a LAN, a test lab) work too.
            autonat: autonat::Behaviour::new(
                local,
                autonat::Config {
                    boot_delay: AUTONAT_BOOT_DELAY,
                    retry_interval: AUTONAT_RETRY,
                    refresh_interval: AUTONAT_REFRESH,
                    throttle_server_period: AUTONAT_SERVER_THROTTLE,
                    only_global_ips: false,
                    ..Default::default()
                },
            ),
            // QUIC hole punching unless only WebRTC is wanted, or the node
            // is declared private (relayed only: it has no listener for
            // the NAT to map).
            dcutr: Toggle::from(
                (config.hole_punch.quic() && config.reachability != Reachability::Private)
                    .then(|| dcutr::Behaviour::new(local)),
            ),
        }
    }
}

struct Actor {
    shared: Arc<Shared>,
    key: Keypair,
    swarm: Swarm<Behaviour>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Our addresses and what the network says of our reachability.
    reach: ReachabilityState,
    resolves: HashMap<QueryId, Vec<oneshot::Sender<Option<AgentCard>>>>,
    resolving: HashMap<PeerId, QueryId>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<PathKind, String>>>>,
    /// When each dial in `dials` began.
    dial_started: HashMap<PeerId, Instant>,
    /// Which paths reached which peers.
    path_memory: super::paths::PathMemory,
    connections: HashMap<PeerId, HashSet<libp2p::swarm::ConnectionId>>,
    /// Path and remote address of every open connection.
    conn_info: HashMap<libp2p::swarm::ConnectionId, (PathKind, Multiaddr)>,
    /// When to publish the card.
    publish: PublishSchedule<QueryId>,
    record_puts: HashMap<QueryId, oneshot::Sender<Result<bool, String>>>,
    record_gets: HashMap<QueryId, oneshot::Sender<Option<VerifiedRecord>>>,
    last_seq: u64,
    relays: Relays,
    /// WebRTC upgrades of relayed connections, retried when they fail.
    webrtc_upgrades: super::upgrade::WebRtcUpgrades,
    /// Peers whose last connection, a relayed one, closed lately: the
    /// other side may have closed it for a direct connection we have not
    /// seen come up yet.
    relayed_closed: HashMap<PeerId, Instant>,
    /// Per connected peer: the last ping round trip and the address it saw
    /// us at (for the doctor). Dropped when its last connection closes.
    seen: HashMap<PeerId, Seen>,
    /// Open connections we dialed from a fresh port rather than our listen
    /// socket: what a peer sees of them says nothing of our NAT's mapping of
    /// the listen socket, so the doctor does not use it.
    fresh_port: HashSet<libp2p::swarm::ConnectionId>,
}

/// What we measured of a connected peer.
#[derive(Debug, Default, Clone)]
struct Seen {
    rtt: Option<Duration>,
    observed: Option<Multiaddr>,
}

/// At most this many connected peers are kept in [`Actor::seen`].
const MAX_SEEN: usize = 1024;
/// At most this many peers other than bootstrap nodes and relays are listed
/// in the status's probes (those that saw us over QUIC first).
const MAX_PROBED_PEERS: usize = 16;

/// How long after its relayed connection closed a direct connection to a
/// peer still counts as an upgrade of that path.
const UPGRADE_WINDOW: Duration = Duration::from_secs(10);

/// Relay state: the mailbox relays we picked, and what we carry when we
/// serve as a relay.
struct Relays {
    /// Candidates and the relays keeping our mailbox (the chosen ones are
    /// also in `Shared::my_relays`).
    selection: RelaySelection<QueryId>,
    /// Relays we listen through (private reachability).
    reserved: HashSet<PeerId>,
    /// Whether we announced ourselves as a relay in the DHT.
    provided: bool,
    /// Reservations held on us.
    reservations: usize,
    /// Circuits open through us.
    circuits: usize,
    /// Totals since start: reservations and circuits accepted and denied.
    totals: RelayTotals,
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
        reach: ReachabilityState::new(shared.config.reachability),
        resolves: HashMap::new(),
        resolving: HashMap::new(),
        dials: HashMap::new(),
        dial_started: HashMap::new(),
        path_memory: Default::default(),
        connections: HashMap::new(),
        conn_info: HashMap::new(),
        relayed_closed: HashMap::new(),
        seen: HashMap::new(),
        fresh_port: HashSet::new(),
        publish: PublishSchedule::new(shared.config.republish_every),
        record_puts: HashMap::new(),
        record_gets: HashMap::new(),
        last_seq: 0,
        relays: Relays {
            selection: RelaySelection::new(shared.config.mailbox_relays, BOOTSTRAP_CHECK),
            reserved: HashSet::new(),
            provided: false,
            reservations: 0,
            circuits: 0,
            totals: RelayTotals::default(),
        },
        webrtc_upgrades: Default::default(),
    };
    for a in actor
        .relays
        .selection
        .handle_configured(&shared.config.relays)
    {
        warn!(addr = %a, "relay address lacks /p2p/<peer id>; ignored");
    }
    actor.choose_relays();
    actor.dial_bootstraps();
    let mut bootstrap_check =
        tokio::time::interval_at(Instant::now() + BOOTSTRAP_CHECK, BOOTSTRAP_CHECK);
    let mut sweep = tokio::time::interval(Duration::from_secs(600));
    let mut drain_tick = tokio::time::interval_at(Instant::now() + DRAIN_EVERY, DRAIN_EVERY);
    let cancel = shared.cancel.clone();
    loop {
        let publish_at = actor.publish.next_deadline();
        let upgrade_at = actor.webrtc_upgrades.next_due();
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
                if actor.publish.poll_publish(Instant::now()) {
                    actor.publish_card(false);
                }
            }
            _ = bootstrap_check.tick() => {
                actor.check_bootstrap();
                actor.check_relays();
            }
            _ = async { tokio::time::sleep_until(upgrade_at.unwrap_or_else(Instant::now)).await }, if upgrade_at.is_some() => {
                actor.retry_webrtc();
            }
            _ = drain_tick.tick() => actor.drain_all(),
            _ = sweep.tick() => {
                let _ = shared.store().sweep(now_ms());
            }
            event = actor.swarm.select_next_some() => actor.on_swarm_event(event),
        }
    }
    actor.close_all().await;
    debug!("swarm actor stopped");
}

/// Longest wait, as the node stops, for its connections to close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

impl Actor {
    /// Closes every connection and drives the swarm until they are closed
    /// (or [`CLOSE_GRACE`]), so peers learn at once that we left instead
    /// of at their idle timeout, and write to our mailbox meanwhile.
    async fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let closed = tokio::time::timeout(CLOSE_GRACE, async {
            while self.swarm.connected_peers().next().is_some() {
                self.swarm.select_next_some().await;
            }
        })
        .await;
        if closed.is_err() {
            debug!("connections still open as the node stops");
        }
    }

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

    /// Publishes the card, as [`PublishSchedule::poll_publish`] said to;
    /// `to_connected` (as the node stops) puts it to the peers we are
    /// connected to only.
    fn publish_card(&mut self, to_connected: bool) {
        // When stopping there is no time for a lookup of the closest peers
        // (a stale address of one can take a handshake timeout): the card
        // goes straight to the peers we are connected to, if any.
        if self.reach.listen().is_empty() || (to_connected && self.connections.is_empty()) {
            if to_connected {
                info!("the card is not republished before stopping: no peer or no address");
                self.shared.emit(NodeEvent::CardPublished {
                    seq: now_ms().max(self.last_seq),
                    stored_remotely: false,
                });
            }
            return;
        }
        let (olm_identity_key, otks, fallback_key) = self.shared.store().card_keys();
        let card = AgentCard {
            amid: self.shared.amid,
            olm_identity_key,
            one_time_keys: otks.into_iter().map(serde_bytes::ByteArray::new).collect(),
            fallback_key,
            capabilities: self.shared.config.capabilities.clone(),
            addrs: self.reach.card_addrs(),
            presence: self.shared.presence.read().map(|p| *p).unwrap_or_default(),
            relays: self
                .relays
                .selection
                .chosen()
                .iter()
                .map(|(_, a)| a.to_string())
                .collect(),
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
        // Peers we have a session with first: they are the ones that may
        // write to us next. Done once as many peers as those stored it.
        let (mut connected, others): (Vec<PeerId>, Vec<PeerId>) = if to_connected {
            let store = self.shared.store();
            self.connections.keys().copied().partition(|p| {
                super::amid_of_peer(p).is_some_and(|a| store.current_session(&a, now).is_some())
            })
        } else {
            (Vec::new(), Vec::new())
        };
        let quorum = connected.len().max(1);
        connected.extend(others);
        let dht = &mut self.swarm.behaviour_mut().dht;
        let put = match record.map(|r| {
            if to_connected {
                dht.put_to(r, connected, quorum)
            } else {
                dht.put(r)
            }
        }) {
            Ok(Ok(q)) => {
                debug!(seq, "publishing card");
                Some(q)
            }
            Ok(Err(e)) => {
                warn!(error = %e, "card publish failed");
                None
            }
            Err(e) => {
                warn!(error = %e, "card could not be signed");
                None
            }
        };
        // Republish before expiry regardless of the outcome.
        self.publish.handle_put_sent(put, Instant::now());
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
            Command::Republish => self.publish.handle_forced(Instant::now()),
            Command::PublishToConnected => {
                let now = Instant::now();
                self.publish.handle_forced(now);
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
    fn note_seen(&mut self, peer: PeerId, update: impl FnOnce(&mut Seen)) {
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
    fn record_attempt(&mut self, peer: PeerId, addr: &Multiaddr, error: Option<String>) {
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

    /// WebRTC hole punching: a relayed connection we dialled is upgraded by
    /// dialling `<relayed address>/webrtc/p2p/<peer>` (signalled over it);
    /// once the WebRTC connection is up, [`Self::prefer_direct`] closes the
    /// relayed one. A failed attempt is retried ([`super::upgrade`]).
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
    fn retry_webrtc(&mut self) {
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

    fn finish_dial(&mut self, peer: PeerId, result: Result<PathKind, String>) {
        self.dial_started.remove(&peer);
        for w in self.dials.remove(&peer).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
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

    /// Picks up to `mailbox_relays` relays among the candidates, nearest to
    /// our id first (so a restart picks the same ones), and dials the new
    /// picks.
    fn choose_relays(&mut self) {
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
    fn find_relays(&mut self) {
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
    fn serves_circuits(&self) -> bool {
        self.swarm.behaviour().relay.is_enabled()
    }

    /// A node announces its plugins' provider keys (a relay's, for one) in
    /// the DHT once it is connected to the network.
    fn announce_relay(&mut self) {
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
    fn check_relays(&mut self) {
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
    fn prefer_direct(
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

    fn on_autonat_event(&mut self, event: autonat::Event) {
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
    fn on_external_confirmed(&mut self, address: &Multiaddr) {
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
    fn on_relay_connected(&mut self, relay: PeerId) {
        if self.reach.wants_relays() {
            self.listen_through(relay);
        }
        tokio::spawn(super::mailbox::drain(self.shared.clone(), relay));
    }

    /// Collects mail from every connected mailbox relay.
    fn drain_all(&mut self) {
        for (peer, _) in self.relays.selection.chosen() {
            if self.swarm.is_connected(peer) {
                tokio::spawn(super::mailbox::drain(self.shared.clone(), *peer));
            }
        }
    }

    fn on_relay_event(&mut self, event: relay::Event) {
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

    fn on_dht_event(&mut self, event: DhtEvent) {
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

/// Order of preference between paths (lower is better).
fn path_rank(path: PathKind) -> u8 {
    match path {
        PathKind::DirectQuic => 0,
        PathKind::DirectTcp => 1,
        PathKind::DirectWebRtc => 2,
        PathKind::Relayed => 3,
        _ => 4,
    }
}

/// The relay a circuit address goes through.
/// How much an observed address of ours tells the doctor: a direct UDP
/// one most, a relayed one least.
fn observed_rank(addr: &Multiaddr) -> u8 {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        0
    } else if addr.iter().any(|p| matches!(p, Protocol::Udp(_))) {
        2
    } else {
        1
    }
}

fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}
