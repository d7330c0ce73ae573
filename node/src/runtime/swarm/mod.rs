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
    autonat, dcutr, identify,
    identity::Keypair,
    multiaddr::Protocol,
    ping, relay,
    swarm::{behaviour::toggle::Toggle, dial_opts::DialOpts, NetworkBehaviour},
    Multiaddr, PeerId, Swarm,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, warn};

use agentmesh_dht::{now_ms, Dht, QueryId, SignedRecord, VerifiedRecord};
use agentmesh_transports::PathKind;

use super::{
    cores::{publish::PublishSchedule, reachability::ReachabilityState, relays::RelaySelection},
    Command, Reachability, RelayTotals, Shared,
};
use crate::{
    card::{AgentCard, CARD_NAMESPACE},
    events::NodeEvent,
    plugin::Plugin,
};

mod commands;
mod events;
mod relays;

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
                if super::rotate_prekeys(&shared) {
                    let _ = shared.commands.try_send(Command::Republish);
                }
            }
            event = actor.swarm.select_next_some() => actor.on_swarm_event(event),
        }
    }
    actor.close_all().await;
    debug!("swarm actor stopped");
}

/// Lifetime of the card a node with mailbox relays publishes as it stops:
/// as long as a relay keeps mail.
const OFFLINE_CARD_TTL: Duration =
    Duration::from_millis(crate::crypto::session::DEFAULT_MESSAGE_TTL_MS);

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
            schemas: self.shared.config.accept_schemas.clone(),
            seq: 0,
            expires_ms: 0,
        };
        let now = now_ms();
        let seq = now.max(self.last_seq.saturating_add(1));
        self.last_seq = seq;
        // The card a node leaves as it stops lives as long as its mailbox
        // keeps mail: senders, first contacts included, find its relays
        // while it is away (a newer card replaces it when it is back).
        let lifetime = if to_connected && !card.relays.is_empty() {
            self.shared.config.card_ttl.max(OFFLINE_CARD_TTL)
        } else {
            self.shared.config.card_ttl
        };
        let expires = now.saturating_add(lifetime.as_millis() as u64);
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
