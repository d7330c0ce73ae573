//! The node: a handle to a running agent.
//!
//! [`Node`] is a cheap handle; the work happens in tasks it spawns: the swarm
//! actor (libp2p: transports, DHT, identify, ping, streams), one acceptor per
//! stream protocol, and one outbound link per peer that owns the long-lived
//! message stream, its window of unacknowledged messages and reconnection.
//! Dropping every handle, or [`Node::shutdown`], stops them all.

mod cores;
mod exchange;
mod inbound;
mod link;
mod mailbox;
mod paths;
mod registry;
mod swarm;
mod trust;
mod upgrade;

pub use exchange::{
    StreamError, StreamReceiver, StreamSender, Streams, STREAM_BUFFER, STREAM_WINDOW,
};

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::mailbox::MailboxError;
use agentmesh_dht::{now_ms, DhtConfig};
use agentmesh_transports::{PathKind, TransportConfig};

pub use paths::{LearnedPath, PathCounters};
pub use registry::{
    CredentialsState, LogCheck, RegistryClientError, RevocationSource, RevocationSync,
};
pub use trust::{RootPinError, TrustError};

use crate::{
    audit::{AuditEntry, AuditError, AuditEvent, AuditFilter, AuditLog},
    breaker::{BreakerConfig, CircuitBreakers},
    card::{AgentCard, Presence},
    contacts::{CardImportError, Contacts, NameError},
    content::{Content, Kind},
    credentials::Credentials,
    envelope::{MessageId, SessionId},
    events::{Message, MessageKind, NodeEvent, Receipt},
    identity::{Amid, Identity},
    keystore::{KdfParams, Keystore, KeystoreError, Passphrase},
    knock::{Intent, RejectReason},
    plugin::{Plugin, PluginContext},
    policy::Policy,
    ratelimit::{RateLimit, RateLimiter},
    session::{Role, SessionInfo, SessionStore},
    storage::StorageError,
};

/// Most senders tracked by each rate limiter.
const MAX_RATE_KEYS: usize = 65_536;

fn rate_limits(p: &Policy) -> (RateLimit, RateLimit) {
    let k = p.rate.knocks_per_minute;
    let m = p.rate.messages_per_minute;
    (RateLimit::new(k, k), RateLimit::new(m, m))
}

/// Key of the persisted "kill everything" switch.
const KILLED_ALL_KEY: &[u8] = b"killed-all";
/// Depth of the command channel to the swarm actor.
const COMMAND_QUEUE: usize = 256;
/// Depth of each peer's outbound queue.
const PEER_QUEUE: usize = 1024;
/// Depth of the channel of received messages to the application.
const INBOX_QUEUE: usize = 256;
/// Depth of the event broadcast.
const EVENT_QUEUE: usize = 4096;
/// Longest wait, on [`Node::shutdown`], for the card with presence
/// `offline` to be stored by a peer.
pub const SHUTDOWN_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Node settings. Build with a preset ([`Config::local`]) and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Transport settings. Defaults to QUIC + TCP on 127.0.0.1.
    pub transport: TransportConfig,
    /// DHT settings. Defaults to server mode.
    pub dht: DhtConfig,
    /// Capabilities advertised in the card. Defaults to
    /// `["communication/messaging"]`.
    pub capabilities: Vec<String>,
    /// Lifetime of a published card. Defaults to 1 h.
    pub card_ttl: Duration,
    /// Republish the card after this long. Defaults to 20 min.
    pub republish_every: Duration,
    /// How long a send keeps trying before it fails. Defaults to 60 s.
    pub delivery_timeout: Duration,
    /// Most unacknowledged messages in flight per peer. Defaults to 64.
    pub window: usize,
    /// A peer's outbound link (its task, queue and message stream) ends
    /// after this long with nothing to send or wait for; the next message
    /// to the peer starts a new one. Defaults to 5 min.
    pub link_idle: Duration,
    /// Keystore key derivation cost. Defaults to Argon2id 19 MiB, t=2.
    pub kdf: KdfParams,
    /// The receiver's policy. Defaults to the `default` preset.
    pub policy: Policy,
    /// A TOML policy file: read at start (replacing `policy`) and again by
    /// [`Node::reload_policy`]. Defaults to none.
    pub policy_file: Option<PathBuf>,
    /// Outbound circuit breakers: after this many consecutive failures or
    /// rejections by a peer, sends to it fail at once until a cool-down has
    /// passed. Defaults to 5 failures, 30 s.
    pub breaker: BreakerConfig,
    /// Relays to use, each ending in `/p2p/<relay id>`. When empty, relays
    /// are found in the DHT. Defaults to none.
    pub relays: Vec<Multiaddr>,
    /// How many relays keep our mailbox (listed in the card). Defaults to 2.
    pub mailbox_relays: usize,
    /// Whether peers can dial us directly: declared, or learned with
    /// AutoNAT. Defaults to [`Reachability::Auto`].
    pub reachability: Reachability,
    /// The registry root key: initiators' certificates, log proofs,
    /// reputation attestations and revocations are checked against it.
    /// Without it every initiator is [`Tier::Anonymous`](crate::Tier) and
    /// shows no reputation. Defaults to none.
    pub registry_root: Option<[u8; 32]>,
    /// Refuse certificate chains that come without a transparency-log
    /// inclusion proof. Defaults to false.
    pub require_log_inclusion: bool,
    /// What this node shows in its KNOCKs (certificates, log proof,
    /// reputation); see also [`Node::set_credentials`]. Defaults to none.
    pub credentials: Credentials,
    /// How a relayed connection is upgraded to a direct one. Defaults to
    /// [`HolePunch::Quic`].
    pub hole_punch: HolePunch,
    /// STUN servers (`host:port`) WebRTC learns its public address from.
    /// Defaults to none (host candidates only).
    pub stun_servers: Vec<String>,
    /// The registry's node (a multiaddr ending in `/p2p/<peer id>`,
    /// usually a bootstrap node): session receipts are filed with it over
    /// `/agentmesh/registry/1`, and the credentials KNOCKs show are fetched
    /// from it at start and every [`Config::credentials_refresh`]. Defaults
    /// to none.
    pub registry: Option<Multiaddr>,
    /// How often fresh credentials (and so a fresh 24 h reputation
    /// attestation) are fetched from [`Config::registry`]. Defaults to 6 h.
    pub credentials_refresh: Duration,
    /// How often the revocation set is synced with [`Config::registry`]
    /// (its revocation list, or else the status of the keys this node
    /// follows, or else the registry's records in the DHT; each checked
    /// against the pinned root), from start on. `None` or zero: never on a
    /// schedule (KNOCKs showing a certificate chain not checked before are
    /// still checked, and [`Node::sync_revocations`] syncs at once).
    /// Defaults to 5 min.
    pub revocation_sync: Option<Duration>,
    /// Caps on connections, enforced before any protocol runs on them.
    pub connections: ConnectionCaps,
}

/// Caps on connections (libp2p's `connection_limits`): a connection over a
/// cap is closed before any protocol runs on it, so many identities cannot
/// hold a node's sockets and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCaps {
    /// Established incoming connections, all peers together.
    pub max_incoming: u32,
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Established connections with one peer, both directions (a peer
    /// needs a few: QUIC, TCP, relayed, WebRTC).
    pub max_per_peer: u32,
    /// The process's resident memory above which new connections (both
    /// directions) are refused. Defaults to
    /// [`DEFAULT_MEMORY_CAP`](crate::memory_cap::DEFAULT_MEMORY_CAP), 90 %
    /// of the system's memory.
    pub max_memory: crate::memory_cap::MemoryCap,
}

impl Default for ConnectionCaps {
    /// An agent's: 1024 incoming, 128 in their handshake, 8 per peer; no
    /// new connection over 90 % of the system's memory.
    fn default() -> Self {
        Self {
            max_incoming: 1024,
            max_pending_incoming: 128,
            max_per_peer: 8,
            max_memory: crate::memory_cap::DEFAULT_MEMORY_CAP,
        }
    }
}

impl ConnectionCaps {
    /// A relay's or a bootstrap's, which every agent connects to: 16 384
    /// incoming, 1024 in their handshake, 8 per peer.
    pub fn server() -> Self {
        Self {
            max_incoming: 16_384,
            max_pending_incoming: 1024,
            max_per_peer: 8,
            max_memory: crate::memory_cap::DEFAULT_MEMORY_CAP,
        }
    }
}

/// How a node turns a relayed connection into a direct one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HolePunch {
    /// QUIC hole punching coordinated over the relay (DCUtR).
    #[default]
    Quic,
    /// WebRTC (ICE with STUN) signalled over the relayed connection; the
    /// node also answers WebRTC from peers.
    Webrtc,
    /// Both: the node answers WebRTC and, for relayed connections it
    /// dialled, tries WebRTC alongside QUIC hole punching.
    Both,
}

impl HolePunch {
    /// Whether WebRTC is tried and answered.
    pub fn webrtc(self) -> bool {
        matches!(self, HolePunch::Webrtc | HolePunch::Both)
    }

    /// Whether QUIC hole punching is used.
    pub fn quic(self) -> bool {
        matches!(self, HolePunch::Quic | HolePunch::Both)
    }
}

impl std::str::FromStr for HolePunch {
    type Err = UnknownHolePunch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(HolePunch::Quic),
            "webrtc" => Ok(HolePunch::Webrtc),
            "both" => Ok(HolePunch::Both),
            other => Err(UnknownHolePunch(other.to_owned())),
        }
    }
}

/// A hole-punching mode other than `quic`, `webrtc` or `both`.
#[derive(Debug, thiserror::Error)]
#[error("unknown hole punching mode {0:?} (quic, webrtc or both)")]
pub struct UnknownHolePunch(pub String);

/// Whether a node can be dialled directly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reachability {
    /// Declared reachable: listens on its own addresses and lists them in
    /// its card.
    Public,
    /// Declared behind a NAT or firewall: listens only through relay
    /// reservations and lists only relayed addresses.
    Private,
    /// Learned: listens on its own addresses, and asks peers (AutoNAT) to
    /// dial it back. Once they report it [`NatStatus::BehindNat`], it also
    /// listens through its relays' reservations and its card lists only
    /// relayed addresses; hole punching (DCUtR) then upgrades relayed
    /// connections to direct ones where the NATs allow it.
    #[default]
    Auto,
}

/// What the network reports about our reachability (AutoNAT).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NatStatus {
    /// Peers dialled us back on an address of ours.
    Public,
    /// Peers could not dial us back: behind a NAT or firewall.
    BehindNat,
    /// Not known yet.
    #[default]
    Unknown,
}

impl std::fmt::Display for NatStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatStatus::Public => "public",
            NatStatus::BehindNat => "behind NAT",
            NatStatus::Unknown => "unknown",
        })
    }
}

impl Config {
    /// Everything on loopback: the preset for a local network and tests.
    pub fn local() -> Self {
        Self {
            transport: TransportConfig::default(),
            dht: DhtConfig::default(),
            capabilities: vec!["communication/messaging".into()],
            card_ttl: Duration::from_secs(3600),
            republish_every: Duration::from_secs(20 * 60),
            delivery_timeout: Duration::from_secs(60),
            window: 64,
            link_idle: Duration::from_secs(300),
            kdf: KdfParams::default(),
            policy: Policy::default(),
            policy_file: None,
            breaker: BreakerConfig::default(),
            relays: Vec::new(),
            mailbox_relays: 2,
            reachability: Reachability::Auto,
            registry_root: None,
            require_log_inclusion: false,
            credentials: Credentials::default(),
            hole_punch: HolePunch::default(),
            stun_servers: Vec::new(),
            registry: None,
            credentials_refresh: Duration::from_secs(6 * 3600),
            revocation_sync: Some(Duration::from_secs(5 * 60)),
            connections: ConnectionCaps::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::local()
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// No data directory was given.
    #[error("no data directory")]
    NoDataDir,
    /// The keystore could not be opened.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// The database could not be opened (is another node using it?).
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    /// Sessions could not be loaded.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The DHT could not be started.
    #[error(transparent)]
    Dht(#[from] agentmesh_dht::DhtError),
    /// The transports could not be started.
    #[error(transparent)]
    Transport(#[from] agentmesh_transports::TransportError),
    /// An identity error.
    #[error(transparent)]
    Identity(#[from] crate::identity::AmidError),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The audit log does not open (tampered, or another key).
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// A plugin did not start.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// The registry address is not usable.
    #[error(transparent)]
    Registry(#[from] RegistryClientError),
    /// A capability in the configuration is not a valid capability (see
    /// [`crate::policy::is_valid_capability`]).
    #[error("capability {0:?} is not a lowercase path such as `chat` or `weather/forecast`")]
    InvalidCapability(String),
}

/// Why a dial made through the node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The node is shutting down.
    #[error("node stopped")]
    Stopped,
    /// No connection within the dial timeout.
    #[error("dial timed out")]
    Timeout,
    /// The transports gave up, with their reason.
    #[error("dial failed: {0}")]
    Failed(String),
}

/// Why a record could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The node is shutting down.
    #[error("node stopped")]
    Stopped,
    /// The DHT did not finish the put in time.
    #[error("publish timed out")]
    Timeout,
    /// The record could not be signed or stored locally, with the reason.
    #[error("record refused: {0}")]
    Record(String),
}

/// Errors sending a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The recipient refused the KNOCK or the message.
    #[error("rejected by recipient: {0}")]
    Rejected(RejectReason),
    /// The recipient's card was not found in the DHT.
    #[error("no card found for {0}")]
    NotFound(Amid),
    /// The delivery deadline passed before the message was delivered (or
    /// deposited in a mailbox).
    #[error("delivery failed: not delivered in time")]
    DeliveryTimeout,
    /// The message was written but the recipient did not acknowledge it
    /// before the delivery deadline.
    #[error("delivery failed: not acknowledged in time")]
    NotAcknowledged,
    /// The recipient's AMID holds no usable key.
    #[error("delivery failed: the AMID has no valid key")]
    InvalidRecipient,
    /// Too many requests are waiting for their replies.
    #[error("too many requests waiting for replies")]
    Busy,
    /// Our own storage failed; nothing was sent.
    #[error("storage: {0}")]
    Storage(String),
    /// The payload is too large or not serializable.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The node is shutting down, or the owner killed the peer's link.
    #[error("node stopped")]
    Stopped,
    /// The owner's kill switch is on: nothing is sent.
    #[error("the owner's kill switch is on")]
    Killed,
    /// Too many recent failures with this peer: not tried again before the
    /// cool-down ends.
    #[error("circuit open; retry in {retry_after_ms} ms")]
    CircuitOpen {
        /// Time left in the cool-down.
        retry_after_ms: u64,
    },
    /// The recipient could not be reached and no relay took the envelope
    /// for its mailbox.
    #[error("mailbox deposit failed: {0}")]
    Mailbox(#[from] MailboxError),
    /// The session (conversation) this message belongs to has ended: one
    /// side ended or closed it, or it expired. A plain `send` opens a new one.
    #[error("the session has ended")]
    SessionEnded {
        /// The session, when there was one.
        session: Option<SessionId>,
    },
    /// No reply to a request came in time.
    #[error("no reply within {timeout_ms} ms")]
    Timeout {
        /// The time waited.
        timeout_ms: u64,
    },
}

/// A message waiting in a peer link.
struct Outgoing {
    id: MessageId,
    content: Content,
    /// The session the message must go in; `None` for the current one (or a
    /// new one, opened with a KNOCK).
    session: Option<SessionId>,
    intent: Intent,
    reply: Option<oneshot::Sender<Result<Receipt, SendError>>>,
    deadline: tokio::time::Instant,
    /// When the application handed the message over.
    queued: tokio::time::Instant,
    /// Times the session was re-opened for this message.
    reknocks: u8,
}

/// Command to the swarm actor.
enum Command {
    Resolve {
        amid: Amid,
        reply: oneshot::Sender<Option<AgentCard>>,
    },
    /// The card about `amid` in our own DHT store, without a lookup (e.g.
    /// the offline card a peer pushed to us as it stopped).
    LocalCard {
        amid: Amid,
        reply: oneshot::Sender<Option<AgentCard>>,
    },
    /// Our own signed card, as published (signed now if not yet).
    OwnCard {
        reply: oneshot::Sender<Option<agentmesh_dht::SignedRecord>>,
    },
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<PathKind, String>>,
    },
    Republish,
    /// Publish the card now to the connected peers only (stopping).
    PublishToConnected,
    Disconnect {
        peer: PeerId,
    },
    Status {
        reply: oneshot::Sender<NetStatus>,
    },
    PutRecord {
        namespace: String,
        payload: Vec<u8>,
        ttl: Duration,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    GetRecord {
        namespace: String,
        subject: PeerId,
        reply: oneshot::Sender<Option<agentmesh_dht::VerifiedRecord>>,
    },
}

/// Network part of [`NodeStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetStatus {
    /// Our listen addresses.
    pub listen_addrs: Vec<String>,
    /// Connected peers and the path of their connection.
    pub connected: Vec<PeerStatus>,
    /// Peers in the DHT routing table.
    pub routing_table: usize,
    /// Whether we serve the DHT (`server`) or only query it (`client`).
    /// With [`Reachability::Auto`], a node AutoNAT finds behind a NAT
    /// switches to `client`, and back to `server` when found public.
    #[serde(default)]
    pub dht_mode: agentmesh_dht::DhtMode,
    /// Records held in the local DHT store.
    pub dht_records: usize,
    /// Whether our card is published on at least one other peer.
    pub card_published: bool,
    /// Whether peers can dial us directly (the configured mode).
    pub reachability: Reachability,
    /// What the network reports about our reachability (AutoNAT).
    #[serde(default)]
    pub nat: NatStatus,
    /// Our own addresses that peers confirmed they can dial directly
    /// (relayed addresses are in `listen_addrs`).
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// The relays that keep our mailbox.
    pub mailbox_relays: Vec<String>,
    /// When we serve as a relay: what it carries and stores.
    pub relay: Option<RelayStatus>,
    /// Connection attempts per kind of path (`direct-quic`, `relayed`, …).
    #[serde(default)]
    pub path_attempts: std::collections::BTreeMap<String, PathCounters>,
    /// Per peer: the kind of path that last reached it (tried first next
    /// time) and the kinds that failed lately (tried last).
    #[serde(default)]
    pub learned_paths: Vec<LearnedPath>,
    /// What the node measured about its bootstrap nodes, relays and other
    /// connected peers (round trips, the address each saw us at), for
    /// [`crate::diagnostics`].
    #[serde(default)]
    pub probes: Vec<crate::diagnostics::PeerProbe>,
}

/// What a relay node carries and stores.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Reservations held by peers listening through us.
    pub reservations: usize,
    /// Circuits open through us.
    pub circuits: usize,
    /// Envelopes in the mailbox.
    pub envelopes: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Reservations and circuits accepted and denied since the node started.
    #[serde(default)]
    pub totals: RelayTotals,
}

/// Counts of a relay's circuit relay decisions since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RelayTotals {
    /// Reservations accepted (renewals included).
    pub reservations_accepted: u64,
    /// Reservations refused (over a limit, or not allowed).
    pub reservations_denied: u64,
    /// Circuits opened through us.
    pub circuits_accepted: u64,
    /// Circuits refused (over a limit, no reservation for the target, …).
    pub circuits_denied: u64,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer (AMID when it is an agent key).
    pub peer: String,
    /// Path of the connection.
    pub path: PathKind,
    /// The remote address of each open connection, preferred first.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// A cached session, as listed by [`Node::status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The other agent.
    pub peer: Amid,
    /// Session id.
    pub session: SessionId,
    /// Our side.
    pub role: Role,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
}

/// What [`Node::status`] reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Our AMID.
    pub amid: Amid,
    /// Our key fingerprint.
    pub fingerprint: String,
    /// Our key as a `did:key` DID ([`Amid::did_key`]).
    #[serde(default)]
    pub did: String,
    /// Network state.
    #[serde(flatten)]
    pub net: NetStatus,
    /// Cached sessions.
    pub sessions: Vec<SessionStatus>,
    /// Peers we have sessions with.
    pub known_peers: Vec<Amid>,
}

/// An agent this node knows, as listed by [`Node::peers`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KnownPeer {
    /// The agent.
    pub amid: Amid,
    /// Our petname for it.
    pub name: Option<String>,
    /// Its presence, from the freshest card we hold of it.
    pub presence: Option<Presence>,
    /// When that card expires, ms since the epoch.
    pub card_expires_ms: Option<u64>,
    /// Whether we hold a card of it imported out of band.
    pub card_imported: bool,
    /// When it was last seen (connected, wrote to us, acknowledged), ms
    /// since the epoch; `None` when not since this node started.
    pub last_seen_ms: Option<u64>,
    /// The path of the connection to it, when connected.
    pub path: Option<PathKind>,
    /// Sessions cached with it.
    pub sessions: usize,
    /// When the latest of those sessions expires, ms since the epoch.
    pub session_expires_ms: Option<u64>,
}

impl KnownPeer {
    fn new(amid: Amid) -> Self {
        Self {
            amid,
            name: None,
            presence: None,
            card_expires_ms: None,
            card_imported: false,
            last_seen_ms: None,
            path: None,
            sessions: 0,
            session_expires_ms: None,
        }
    }
}

/// Notes when each agent is seen, from the node's events.
async fn track_last_seen(shared: Arc<Shared>) {
    let mut events = shared.events.subscribe();
    loop {
        let amid = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            e = events.recv() => match e {
                Ok(NodeEvent::Connected { peer, .. } | NodeEvent::Disconnected { peer }) => peer.parse().ok(),
                Ok(NodeEvent::MessageReceived { from, .. }) => Some(from),
                Ok(NodeEvent::Delivered { to, .. }) => Some(to),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let Some(amid) = amid else { continue };
        let mut seen = shared.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_RATE_KEYS && !seen.contains_key(&amid) {
            // Full: forget the longest unseen.
            if let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a) {
                seen.remove(&oldest);
            }
        }
        seen.insert(amid, now_ms());
    }
}

/// Which messages a handler registered with [`Node::on_message_filtered`]
/// gets: of these kinds, from these senders (empty: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageFilter {
    /// The kinds taken; empty for all.
    pub kinds: Vec<MessageKind>,
    /// The senders taken; empty for all.
    pub from: Vec<Amid>,
}

impl MessageFilter {
    /// Also takes messages of `kind` (a filter with no kind takes all).
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Also takes messages from `amid` (a filter with no sender takes all).
    pub fn from(mut self, amid: Amid) -> Self {
        self.from.push(amid);
        self
    }

    /// Whether `m` passes.
    pub fn matches(&self, m: &Message) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&m.kind))
            && (self.from.is_empty() || self.from.contains(&m.from))
    }
}

/// The handlers registered with [`Node::on_message`], shared with the task
/// that runs them.
type HandlerList = Arc<Mutex<Vec<Registered>>>;

/// A handler and its filter.
struct Registered {
    filter: MessageFilter,
    handler: Box<dyn FnMut(Message) + Send>,
}

/// A message on its way to the application, with its inbox key.
struct Delivery {
    /// Inbox key; `None` for stream chunks and ends, which are not stored.
    arrival: Option<u64>,
    /// Stored before this start and handed out again.
    restored: bool,
    message: Message,
    /// The bytes of a stream chunk.
    data: Vec<u8>,
    /// How the message is used.
    kind: Kind,
}

struct Shared {
    identity: Identity,
    amid: Amid,
    config: Config,
    store: Mutex<SessionStore>,
    policy: RwLock<Policy>,
    events: broadcast::Sender<NodeEvent>,
    inbox_tx: mpsc::Sender<Delivery>,
    commands: mpsc::Sender<Command>,
    links: Mutex<HashMap<Amid, (mpsc::Sender<Outgoing>, CancellationToken)>>,
    /// KNOCKs per initiator.
    /// KNOCKs from everyone together, checked before any signature: many
    /// fresh identities, each within its own limit, cannot take all the CPU.
    knock_budget: Mutex<RateLimiter<()>>,
    knock_limiter: Mutex<RateLimiter<Amid>>,
    /// Messages per sender.
    msg_limiter: Mutex<RateLimiter<Amid>>,
    /// Presence published in the card.
    presence: RwLock<Presence>,
    /// Outbound circuit breakers per peer.
    breakers: Mutex<CircuitBreakers<Amid>>,
    /// The owner's kill switch for everyone is on: refuse all, send nothing.
    killed_all: std::sync::atomic::AtomicBool,
    paths: Mutex<HashMap<PeerId, PathKind>>,
    /// What AutoNAT reports.
    nat: RwLock<NatStatus>,
    /// Requests waiting for their reply.
    requests: Mutex<HashMap<MessageId, oneshot::Sender<Message>>>,
    /// Incoming streams being received.
    streams_in: Mutex<exchange::Incoming>,
    /// New incoming streams, to the application.
    streams_tx: mpsc::Sender<StreamReceiver>,
    control: libp2p_stream::Control,
    db: sled::Db,
    /// Revoked keys and serials (verified revocations, by key or serial).
    revoked: sled::Tree,
    /// What the node keeps about its registry (the pinned root).
    trust_tree: sled::Tree,
    /// The pinned registry root key, once known; never replaced.
    root_pin: std::sync::OnceLock<ed25519_dalek::VerifyingKey>,
    /// Held while a root is pinned on first use.
    root_pin_lock: Mutex<()>,
    /// Chains checked with the registry and keys followed there.
    revocation_watch: Mutex<trust::RevocationWatch>,
    /// KNOCKs waiting on the registry's word on their chain.
    knock_checks: tokio::sync::Semaphore,
    /// What our KNOCKs show.
    credentials: RwLock<Credentials>,
    /// Session receipts proposed and held.
    receipts: crate::receipts::ReceiptStore,
    /// Wakes the registry task (a receipt to file).
    registry_wake: tokio::sync::Notify,
    /// The data directory (stored credentials).
    dir: PathBuf,
    audit: Mutex<AuditLog>,
    /// The plugins this node carries (a relay's circuit relay and mailbox).
    plugins: Vec<Arc<dyn Plugin>>,
    /// The relays that keep our mailbox (chosen by the swarm actor).
    my_relays: RwLock<Vec<(PeerId, Multiaddr)>>,
    /// Messages deposited in a mailbox, waiting for the recipient's
    /// delivery receipt.
    awaiting_receipt: Mutex<HashMap<MessageId, Amid>>,
    /// One mailbox drain at a time, so mail is delivered in order.
    drain_lock: tokio::sync::Mutex<()>,
    /// Per mailbox relay: a digest of the senders last named there.
    named_senders: Mutex<HashMap<PeerId, u64>>,
    /// libp2p's own metrics (swarm, kad, identify, ping, relay, dcutr),
    /// recorded by the swarm actor and the DHT.
    libp2p_metrics: Arc<libp2p::metrics::Metrics>,
    /// The registry `libp2p_metrics` registered its families in.
    libp2p_registry: prometheus_client::registry::Registry,
    /// Cards imported out of band, and petnames.
    contacts: Contacts,
    /// When each agent was last seen (connected, wrote, acknowledged), ms
    /// since the epoch.
    last_seen: Mutex<HashMap<Amid, u64>>,
    cancel: CancellationToken,
}

impl Shared {
    fn emit(&self, e: NodeEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(e);
    }

    fn path_to(&self, peer: &PeerId) -> PathKind {
        self.paths
            .lock()
            .ok()
            .and_then(|p| p.get(peer).copied())
            .unwrap_or(PathKind::Other)
    }

    /// Appends to the audit log; a failure is logged, never fatal.
    fn audit(&self, event: AuditEvent) {
        let mut log = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = log.append(event, now_ms()) {
            tracing::warn!(error = %e, "audit log append failed");
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, CircuitBreakers<Amid>> {
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, SessionStore> {
        // A panic while holding the lock is a bug; keep serving with the
        // state as it is rather than poisoning the whole node.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// KNOCKs all peers together may make a node judge: 600 a minute, in bursts
/// of up to 200.
const KNOCK_BUDGET: RateLimit = RateLimit::new(600, 200);

/// Builder of a [`Node`].
#[derive(Debug)]
pub struct NodeBuilder {
    config: Config,
    data_dir: Option<PathBuf>,
    passphrase: Option<Passphrase>,
    bootstrap: Vec<Multiaddr>,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl NodeBuilder {
    /// Where the keystore and database live.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The keystore passphrase. Defaults to [`Passphrase::from_env`].
    pub fn passphrase(mut self, p: Passphrase) -> Self {
        self.passphrase = Some(p);
        self
    }

    /// A bootstrap peer to join through (with `/p2p/<peer id>`).
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Several bootstrap peers.
    pub fn bootstraps(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.bootstrap.extend(addrs);
        self
    }

    /// A plugin the node carries (see [`crate::plugin`]). Its capabilities
    /// join the node's card.
    pub fn plugin(mut self, plugin: impl Plugin) -> Self {
        for c in plugin.capabilities() {
            if !self.config.capabilities.contains(&c) {
                self.config.capabilities.push(c);
            }
        }
        self.plugins.push(Arc::new(plugin));
        self
    }

    /// Starts the node.
    pub async fn spawn(mut self) -> Result<Node, SpawnError> {
        let dir = self.data_dir.ok_or(SpawnError::NoDataDir)?;
        if let Some(bad) = self
            .config
            .capabilities
            .iter()
            .find(|c| !crate::policy::is_valid_capability(c))
        {
            return Err(SpawnError::InvalidCapability(bad.clone()));
        }
        if let Some(path) = &self.config.policy_file {
            self.config.policy = Policy::from_file(path)?;
        }
        let pass = match self.passphrase {
            Some(p) => p,
            None => Passphrase::from_env()?,
        };
        let kdf = self.config.kdf;
        let (keystore, _) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || Keystore::load_or_create(&dir, &pass, kdf)
        })
        .await
        .map_err(|_| SpawnError::NoDataDir)??;
        Node::start(keystore, dir, self.config, self.bootstrap, self.plugins)
    }
}

/// A running AgentMesh node.
///
/// ```no_run
/// use agentmesh_node::{Config, Node, Passphrase};
///
/// # async fn run(bob: agentmesh_node::Amid, bootstrap: libp2p::Multiaddr) -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::builder(Config::local())
///     .data_dir("/tmp/alice")
///     .passphrase(Passphrase::new("correct horse battery staple"))
///     .bootstrap(bootstrap)
///     .spawn()
///     .await?;
/// let receipt = node.send(&bob, serde_json::json!({"text": "hello"})).await?;
/// println!("delivered over {}", receipt.path);
/// let mut inbox = node.messages().expect("first call");
/// while let Some(msg) = inbox.recv().await {
///     println!("{} says {}", msg.from, msg.payload);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    inbox: Arc<Mutex<Option<mpsc::Receiver<Delivery>>>>,
    /// The handlers [`Node::on_message`] registered, once one was.
    handlers: Arc<Mutex<Option<HandlerList>>>,
    streams: Arc<Mutex<Option<mpsc::Receiver<StreamReceiver>>>>,
    _guard: Arc<DropGuard>,
}

struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("amid", &self.shared.amid)
            .finish_non_exhaustive()
    }
}

/// The application's end of the inbox: received messages, in arrival order.
///
/// A message stays in the node's durable inbox until it is taken from here;
/// its removal is on disk before it is returned, so a crash never hands the
/// same message to the application twice (and never loses one it was not
/// given).
pub struct Messages {
    rx: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
    ready: std::collections::VecDeque<Message>,
    unflushed: bool,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages").finish_non_exhaustive()
    }
}

impl Messages {
    /// The next message; `None` once the node stopped.
    ///
    /// Cancel-safe: a message is never lost when this future is dropped.
    pub async fn recv(&mut self) -> Option<Message> {
        if self.ready.is_empty() {
            // Take everything already waiting and remove it from the inbox;
            // one flush below makes the removals durable.
            let first = self.rx.recv().await?;
            let mut batch = vec![first];
            while batch.len() < INBOX_QUEUE {
                match self.rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            let store = self.shared.store();
            for d in &batch {
                let Some(arrival) = d.arrival else { continue };
                if let Err(e) = store.take_inbox(arrival) {
                    tracing::warn!(error = %e, "could not remove message from inbox");
                }
            }
            drop(store);
            self.ready.extend(batch.into_iter().map(|d| d.message));
            self.unflushed = true;
        }
        if self.unflushed {
            if let Err(e) = self.shared.db.flush_async().await {
                tracing::warn!(error = %e, "inbox flush failed");
            }
            self.unflushed = false;
        }
        self.ready.pop_front()
    }

    /// The next message, left in the node's durable inbox until
    /// [`Node::ack`] is called with its key: a message the application got
    /// but did not acknowledge is handed to it again after a restart.
    /// `None` once the node stopped.
    ///
    /// Use either this or [`Messages::recv`] on one inbox. Cancel-safe.
    pub async fn recv_unacked(&mut self) -> Option<(Message, InboxKey)> {
        if let Some(m) = self.ready.pop_front() {
            // Already removed by `recv`.
            return Some((
                m,
                InboxKey {
                    arrival: None,
                    restored: false,
                },
            ));
        }
        let d = self.rx.recv().await?;
        Some((
            d.message,
            InboxKey {
                arrival: d.arrival,
                restored: d.restored,
            },
        ))
    }
}

/// Names a message in the node's durable inbox (see
/// [`Messages::recv_unacked`] and [`Node::ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboxKey {
    arrival: Option<u64>,
    restored: bool,
}

impl InboxKey {
    /// True for a message stored before the node last started and handed
    /// out again because nobody acknowledged it; false for one that
    /// arrived while this node ran.
    pub fn restored(&self) -> bool {
        self.restored
    }

    #[cfg(test)]
    pub(crate) fn test(arrival: u64) -> Self {
        Self {
            arrival: Some(arrival),
            restored: false,
        }
    }
}

impl Node {
    /// A builder with `config`.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            data_dir: None,
            passphrase: None,
            bootstrap: Vec::new(),
            plugins: Vec::new(),
        }
    }

    fn start(
        keystore: Keystore,
        dir: PathBuf,
        config: Config,
        bootstrap: Vec<Multiaddr>,
        plugins: Vec<Arc<dyn Plugin>>,
    ) -> Result<Node, SpawnError> {
        let identity = Identity::from_seed(&keystore.identity().seed());
        let amid = identity.amid();
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(Some(200))
            .open()?;
        let mut store = SessionStore::open(amid, &db, keystore.storage_key())?;
        let audit = AuditLog::open(&db, Some(keystore.storage_key()))?;
        let killed_all = db.get(KILLED_ALL_KEY)?.is_some();
        let (knock_rate, msg_rate) = rate_limits(&config.policy);
        let breaker = config.breaker;
        let _ = store.sweep(now_ms());
        let backlog = store.inbox();
        drop(keystore);

        if let Some(addr) = &config.registry {
            registry::registry_peer(addr)?;
        }
        let receipts = crate::receipts::ReceiptStore::open(&db)?;
        let _ = receipts.sweep(now_ms());
        let mut config = config;
        if config.reachability == Reachability::Private {
            // Reachable only through relays: no direct listener at all, and
            // not a DHT server others would try to dial.
            config.transport.listen.clear();
            config.dht.mode = agentmesh_dht::DhtMode::Client;
        }
        if config.hole_punch.webrtc() {
            config.transport.webrtc.stun_servers = config.stun_servers.clone();
            let webrtc = Multiaddr::empty().with(libp2p::multiaddr::Protocol::WebRTC);
            if !config.transport.listen.contains(&webrtc) {
                config.transport.listen.push(webrtc);
            }
        }
        let keypair = identity.libp2p_keypair()?;
        let stream_behaviour = libp2p_stream::Behaviour::new();
        let control = stream_behaviour.new_control();
        let mut libp2p_registry = prometheus_client::registry::Registry::default();
        let libp2p_metrics = Arc::new(libp2p::metrics::Metrics::new(&mut libp2p_registry));
        let mut dht =
            agentmesh_dht::Dht::new(keypair.public().to_peer_id(), &db, config.dht.clone())?;
        dht.set_metrics(libp2p_metrics.clone());
        let swarm = agentmesh_transports::build_swarm_with_metrics(
            keypair,
            &config.transport,
            Some(control.clone()),
            &mut libp2p_registry,
            |key, relay| {
                swarm::Behaviour::new(key, dht, &config, stream_behaviour, relay, &plugins)
            },
        )?;

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_QUEUE);
        let (streams_tx, streams_rx) = mpsc::channel(exchange::NEW_STREAM_QUEUE);
        let cancel = CancellationToken::new();
        let revoked = db.open_tree(trust::REVOKED_TREE)?;
        let (trust_tree, root_pin) = trust::open_root_pin(&db, config.registry_root)?;
        let credentials = RwLock::new(config.credentials.clone());
        let contacts = Contacts::open(&db)?;
        let shared = Arc::new(Shared {
            identity,
            amid,
            policy: RwLock::new(config.policy.clone()),
            config,
            store: Mutex::new(store),
            events,
            inbox_tx,
            commands: cmd_tx,
            links: Mutex::new(HashMap::new()),
            knock_limiter: Mutex::new(RateLimiter::new(knock_rate, MAX_RATE_KEYS)),
            knock_budget: Mutex::new(RateLimiter::new(KNOCK_BUDGET, 1)),
            msg_limiter: Mutex::new(RateLimiter::new(msg_rate, MAX_RATE_KEYS)),
            breakers: Mutex::new(CircuitBreakers::new(breaker, MAX_RATE_KEYS)),
            presence: RwLock::new(Presence::Online),
            killed_all: std::sync::atomic::AtomicBool::new(killed_all),
            paths: Mutex::new(HashMap::new()),
            nat: RwLock::new(NatStatus::Unknown),
            requests: Mutex::new(HashMap::new()),
            streams_in: Mutex::new(exchange::Incoming::default()),
            streams_tx,
            control,
            db,
            revoked,
            trust_tree,
            root_pin,
            root_pin_lock: Mutex::new(()),
            revocation_watch: Mutex::new(trust::RevocationWatch::default()),
            knock_checks: tokio::sync::Semaphore::new(registry::MAX_KNOCK_CHECKS),
            credentials,
            receipts,
            registry_wake: tokio::sync::Notify::new(),
            dir,
            audit: Mutex::new(audit),
            plugins,
            my_relays: RwLock::new(Vec::new()),
            awaiting_receipt: Mutex::new(HashMap::new()),
            drain_lock: tokio::sync::Mutex::new(()),
            named_senders: Mutex::new(HashMap::new()),
            libp2p_metrics,
            libp2p_registry,
            contacts,
            last_seen: Mutex::new(HashMap::new()),
            cancel: cancel.clone(),
        });
        let span = tracing::info_span!("node", id = %amid.short());
        info!(parent: &span, %amid, "node starting");

        for plugin in &shared.plugins {
            let _entered = span.enter();
            plugin.start(PluginContext {
                control: shared.control.clone(),
                db: shared.db.clone(),
                dir: shared.dir.clone(),
                cancel: cancel.clone(),
            })?;
            info!(plugin = plugin.name(), "plugin started");
        }
        tokio::spawn(swarm::run(shared.clone(), swarm, cmd_rx, bootstrap).instrument(span.clone()));
        // Messages stored before a restart go to the application first.
        let (backlog_done_tx, backlog_done) = oneshot::channel();
        {
            let shared = shared.clone();
            tokio::spawn(async move {
                for (arrival, r) in backlog {
                    let message = Message::new(r, PathKind::Other);
                    if shared
                        .inbox_tx
                        .send(Delivery {
                            arrival: Some(arrival),
                            restored: true,
                            message,
                            data: Vec::new(),
                            kind: Kind::Message,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = backlog_done_tx.send(());
            });
        }
        if shared.config.registry.is_some() {
            tokio::spawn(registry::run(shared.clone()).instrument(span.clone()));
        }
        tokio::spawn(track_last_seen(shared.clone()).instrument(span.clone()));
        tokio::spawn(inbound::run(shared.clone(), backlog_done).instrument(span));
        Ok(Node {
            _guard: Arc::new(DropGuard(cancel)),
            shared,
            inbox: Arc::new(Mutex::new(Some(inbox_rx))),
            handlers: Arc::new(Mutex::new(None)),
            streams: Arc::new(Mutex::new(Some(streams_rx))),
        })
    }

    /// Our AMID.
    pub fn amid(&self) -> Amid {
        self.shared.amid
    }

    /// How many outbound links (one per peer written to lately, see
    /// [`Config::link_idle`]) run now.
    pub fn link_count(&self) -> usize {
        link::running(&self.shared)
    }

    /// How many peers' Olm sessions are held in memory (at most
    /// [`crate::session::MAX_CACHED_PEERS`]; the others wait on disk).
    pub fn cached_session_peers(&self) -> usize {
        self.shared.store().cached_peers()
    }

    /// What the network reports about our reachability: public, behind a
    /// NAT, or not known yet (AutoNAT).
    pub fn reachability(&self) -> NatStatus {
        self.shared.nat.read().map(|n| *n).unwrap_or_default()
    }

    /// Our key fingerprint.
    pub fn fingerprint(&self) -> String {
        self.shared.amid.fingerprint()
    }

    /// Subscribes to node events.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// The received messages. Returns `Some` once: there is one inbox.
    pub fn messages(&self) -> Option<Messages> {
        let rx = self.inbox.lock().ok()?.take()?;
        Some(Messages {
            rx,
            shared: self.shared.clone(),
            ready: std::collections::VecDeque::new(),
            unflushed: false,
        })
    }

    /// Removes messages the application has handled from the durable inbox
    /// (see [`Messages::recv_unacked`]), with one flush for all of them: once
    /// this returns, they are not handed out again after a restart.
    pub async fn ack(&self, keys: impl IntoIterator<Item = InboxKey>) -> Result<(), SendError> {
        let mut removed = false;
        {
            let store = self.shared.store();
            for arrival in keys.into_iter().filter_map(|k| k.arrival) {
                store
                    .take_inbox(arrival)
                    .map_err(|e| SendError::Storage(e.to_string()))?;
                removed = true;
            }
        }
        if removed {
            self.shared
                .db
                .flush_async()
                .await
                .map_err(|e| SendError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// Calls `handler` for every received message, in order, on a task.
    /// Several handlers may be registered: each gets every message (a copy),
    /// in registration order. The first registration takes the inbox:
    /// returns `false` if [`Node::messages`] took it already.
    pub fn on_message<F>(&self, handler: F) -> bool
    where
        F: FnMut(Message) + Send + 'static,
    {
        self.on_message_filtered(MessageFilter::default(), handler)
    }

    /// [`Node::on_message`] for the messages that pass `filter` only (of
    /// some kinds, from some senders).
    pub fn on_message_filtered<F>(&self, filter: MessageFilter, handler: F) -> bool
    where
        F: FnMut(Message) + Send + 'static,
    {
        let entry = Registered {
            filter,
            handler: Box::new(handler),
        };
        let mut slot = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = slot.as_ref() {
            list.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            return true;
        }
        let Some(mut inbox) = self.messages() else {
            return false;
        };
        // Registered before the first message can be read.
        let list = Arc::new(Mutex::new(vec![entry]));
        *slot = Some(list.clone());
        tokio::spawn(async move {
            while let Some(m) = inbox.recv().await {
                let mut handlers = list.lock().unwrap_or_else(|e| e.into_inner());
                for h in handlers.iter_mut().filter(|h| h.filter.matches(&m)) {
                    (h.handler)(m.clone());
                }
            }
        });
        true
    }

    /// Sends `payload` to `to` and waits until the recipient acknowledged it
    /// (or refused it). Resolves the recipient through the DHT and KNOCKs
    /// first when there is no session; the first message rides in the KNOCK.
    pub async fn send(&self, to: &Amid, payload: serde_json::Value) -> Result<Receipt, SendError> {
        self.send_with(to, payload, Intent::default()).await
    }

    /// As [`Node::send`], with the intent declared in a KNOCK.
    pub async fn send_with(
        &self,
        to: &Amid,
        payload: serde_json::Value,
        intent: Intent,
    ) -> Result<Receipt, SendError> {
        let (tx, rx) = oneshot::channel();
        let content = json_content(Kind::Message, &payload)?;
        self.enqueue(to, MessageId::random(), content, None, intent, Some(tx))
            .await?;
        rx.await.map_err(|_| SendError::Stopped)?
    }

    /// Queues `payload` for `to` and returns at once with its id; the
    /// outcome arrives as a [`NodeEvent::Delivered`], `Rejected` or `Failed`
    /// naming that id.
    pub async fn send_nowait(
        &self,
        to: &Amid,
        payload: serde_json::Value,
    ) -> Result<MessageId, SendError> {
        self.send_nowait_with(to, payload, Intent::default()).await
    }

    /// As [`Node::send_nowait`], with the intent declared in a KNOCK.
    pub async fn send_nowait_with(
        &self,
        to: &Amid,
        payload: serde_json::Value,
        intent: Intent,
    ) -> Result<MessageId, SendError> {
        let content = json_content(Kind::Message, &payload)?;
        let id = MessageId::random();
        self.enqueue(to, id, content, None, intent, None).await
    }

    /// Queues `content` for `to` in `session` (or the current one).
    async fn enqueue(
        &self,
        to: &Amid,
        id: MessageId,
        content: Content,
        session: Option<SessionId>,
        intent: Intent,
        reply: Option<oneshot::Sender<Result<Receipt, SendError>>>,
    ) -> Result<MessageId, SendError> {
        if self.is_killed() {
            return Err(SendError::Killed);
        }
        if to == &self.shared.amid {
            return Err(SendError::InvalidPayload("cannot send to self".into()));
        }
        let out = Outgoing {
            id,
            content,
            session,
            intent,
            reply,
            deadline: tokio::time::Instant::now() + self.shared.config.delivery_timeout,
            queued: tokio::time::Instant::now(),
            reknocks: 0,
        };
        let tx = link::sender_for(&self.shared, *to);
        let out = match tx.send(out).await {
            Ok(()) => return Ok(id),
            Err(mpsc::error::SendError(out)) => out,
        };
        // The link ended as it went idle, between our taking its queue and
        // sending: the next one takes the message.
        let tx = link::sender_for(&self.shared, *to);
        tx.send(out).await.map_err(|_| SendError::Stopped)?;
        Ok(id)
    }

    /// Adds `amid` to the blocklist: its KNOCKs are refused from now on and
    /// its cached sessions are dropped.
    pub fn block(&self, amid: Amid) {
        if let Ok(mut p) = self.shared.policy.write() {
            p.block.insert(amid);
        }
        self.shared.store().forget_peer(&amid);
    }

    /// Replaces the policy. Sessions already accepted stay open; blocked
    /// agents lose theirs at once.
    pub fn set_policy(&self, policy: Policy) {
        self.shared.audit(AuditEvent::PolicyChanged {
            policy_hash: hex::encode(policy.hash()),
        });
        let blocked: Vec<Amid> = policy.block.iter().copied().collect();
        let (knock_rate, msg_rate) = rate_limits(&policy);
        let now = now_ms();
        if let Ok(mut l) = self.shared.knock_limiter.lock() {
            l.set_limit(knock_rate, now);
        }
        if let Ok(mut l) = self.shared.msg_limiter.lock() {
            l.set_limit(msg_rate, now);
        }
        if let Ok(mut p) = self.shared.policy.write() {
            *p = policy;
        }
        for amid in blocked {
            self.block(amid);
        }
    }

    /// The policy file the node was started with (see
    /// [`Config::policy_file`]), if any.
    pub fn policy_file(&self) -> Option<&Path> {
        self.shared.config.policy_file.as_deref()
    }

    /// Reads the policy file again (see [`Config::policy_file`]) and applies
    /// it. Returns the new policy's hash.
    pub fn reload_policy(&self) -> Result<[u8; 32], crate::policy::PolicyError> {
        let Some(path) = &self.shared.config.policy_file else {
            return Ok(self.policy().hash());
        };
        let policy = Policy::from_file(path)?;
        let hash = policy.hash();
        self.set_policy(policy);
        tracing::info!(hash = %hex::encode(hash), "policy reloaded");
        Ok(hash)
    }

    /// The owner's kill switch. With `Some(amid)`: block the agent, close
    /// its sessions and connections at once, and fail what was queued for
    /// it. With `None`: do that for every peer, refuse every KNOCK and
    /// message, and send nothing, until [`Node::clear_kill`]; this switch
    /// survives restarts.
    pub async fn kill(&self, target: Option<Amid>) {
        self.shared.audit(AuditEvent::Kill { target });
        let peers: Vec<Amid> = match target {
            Some(a) => vec![a],
            None => {
                self.shared
                    .killed_all
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = self.shared.db.insert(KILLED_ALL_KEY, &[1u8]);
                let _ = self.shared.db.flush_async().await;
                let mut all: Vec<Amid> = self
                    .shared
                    .store()
                    .all_sessions()
                    .into_iter()
                    .map(|s| s.peer)
                    .collect();
                all.extend(
                    self.shared
                        .links
                        .lock()
                        .map(|l| l.keys().copied().collect::<Vec<_>>())
                        .unwrap_or_default(),
                );
                all.sort();
                all.dedup();
                all
            }
        };
        for amid in peers {
            if target.is_some() {
                self.block(amid);
            } else {
                self.shared.store().forget_peer(&amid);
            }
            let link = self
                .shared
                .links
                .lock()
                .ok()
                .and_then(|mut l| l.remove(&amid));
            if let Some((_, cancel)) = link {
                cancel.cancel();
            }
            if let Ok(peer) = amid.peer_id() {
                let _ = self
                    .shared
                    .commands
                    .send(Command::Disconnect { peer })
                    .await;
            }
        }
    }

    /// Ends every session with `peer`: both sides forget it (the peer is
    /// told over a message stream when it is reachable), and the next
    /// message to or from it needs a new KNOCK. Returns how many sessions
    /// were closed.
    pub async fn close_session(&self, peer: &Amid) -> usize {
        let mut infos: HashMap<SessionId, SessionInfo> = self
            .shared
            .store()
            .all_sessions()
            .into_iter()
            .filter(|s| s.peer == *peer)
            .map(|s| (s.id, s))
            .collect();
        let sessions = self.shared.store().forget_peer(peer);
        for session in &sessions {
            exchange::end_streams(&self.shared, peer, session);
            self.shared.audit(AuditEvent::SessionClosed {
                peer: *peer,
                session: *session,
                why: "closed by us".into(),
            });
            self.shared.emit(NodeEvent::SessionClosed {
                peer: *peer,
                session: *session,
                by_peer: false,
            });
        }
        // Tell the peer, best effort: an unreachable peer learns it from
        // `unknown_session` on its next message.
        if let (Ok(peer_id), false) = (peer.peer_id(), sessions.is_empty()) {
            let mut control = self.shared.control.clone();
            let opened = tokio::time::timeout(
                Duration::from_secs(10),
                control.open_stream(peer_id, crate::wire::MSG_PROTOCOL),
            )
            .await;
            if let Ok(Ok(stream)) = opened {
                let mut framed = agentmesh_transports::framing::FramedStream::new(
                    stream,
                    crate::wire::MAX_FRAME_SIZE,
                );
                for session in &sessions {
                    // Our half of a receipt recording the session as not
                    // completed.
                    let receipt = infos
                        .remove(session)
                        .and_then(|info| registry::propose(&self.shared, &info, false));
                    let frame = crate::wire::MsgFrame::Close {
                        session: *session,
                        receipt,
                    };
                    if framed.send(frame.to_bytes()).await.is_err() {
                        break;
                    }
                }
                let _ = framed.close().await;
            }
        }
        sessions.len()
    }

    /// Sets the presence published in the card and republishes it.
    pub async fn set_presence(&self, presence: Presence) {
        if let Ok(mut p) = self.shared.presence.write() {
            *p = presence;
        }
        let _ = self.shared.commands.send(Command::Republish).await;
    }

    /// Republishes the card with presence `offline` and waits until a peer
    /// stored it, or the timeout.
    async fn publish_offline(&self) {
        let mut events = self.events();
        if let Ok(mut p) = self.shared.presence.write() {
            *p = Presence::Offline;
        }
        // The new record's sequence number is at least the current time.
        let since = now_ms();
        if self
            .shared
            .commands
            .send(Command::PublishToConnected)
            .await
            .is_err()
        {
            return;
        }
        let stored = tokio::time::timeout(SHUTDOWN_PUBLISH_TIMEOUT, async {
            loop {
                match events.recv().await {
                    // Stored, or there was no peer to store it.
                    Ok(NodeEvent::CardPublished { seq, .. }) if seq >= since => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
        if stored.is_err() {
            tracing::warn!("could not publish presence offline before stopping");
        }
    }

    /// Looks up an agent's card (keys, addresses, capabilities, presence)
    /// through the DHT.
    pub async fn lookup(&self, amid: &Amid) -> Option<AgentCard> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Resolve {
                amid: *amid,
                reply: tx,
            })
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()?
    }

    /// This agent's own signed card, the record it publishes in the DHT
    /// (signed now when it has not been yet). `None` while the node listens
    /// on no address, or once it stopped.
    pub async fn card_record(&self) -> Option<agentmesh_dht::SignedRecord> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::OwnCard { reply: tx })
            .await
            .ok()?;
        rx.await.ok()?
    }

    /// This agent's own signed card as a string to hand out of band
    /// ([`crate::contacts::encode_card`]): whoever imports it
    /// ([`Node::import_card`]) can reach this agent with no DHT.
    pub async fn export_card(&self) -> Option<String> {
        self.card_record()
            .await
            .map(|r| crate::contacts::encode_card(&r))
    }

    /// Imports another agent's card (an exported string, or the signed
    /// record's bytes): verifies its signature, namespace and expiry, keeps
    /// it in the node's database, and reaches that agent with it before any
    /// DHT lookup. A newer card of the same agent is kept over an older one.
    pub fn import_card(&self, input: &[u8]) -> Result<AgentCard, CardImportError> {
        let now = now_ms();
        let (card, signed) = crate::contacts::decode_card(input, now)?;
        if card.amid == self.shared.amid {
            return Err(CardImportError::Own);
        }
        self.shared.contacts.import(&card, &signed, now)?;
        info!(peer = %card.amid.short(), seq = card.seq, "card imported");
        Ok(card)
    }

    /// The imported cards still valid.
    pub fn imported_cards(&self) -> Vec<AgentCard> {
        self.shared.contacts.cards(now_ms())
    }

    /// Names `amid` `name` locally (never published); a name given again
    /// names the new AMID.
    pub fn set_name(&self, name: &str, amid: &Amid) -> Result<(), NameError> {
        self.shared.contacts.set_name(name, amid)
    }

    /// Forgets the petname `name`; returns the AMID it named.
    pub fn remove_name(&self, name: &str) -> Result<Amid, NameError> {
        self.shared.contacts.remove_name(name)
    }

    /// Every petname with its AMID, by name.
    pub fn names(&self) -> Vec<(String, Amid)> {
        self.shared.contacts.names()
    }

    /// The petname of `amid`, if it has one.
    pub fn name_of(&self, amid: &Amid) -> Option<String> {
        self.shared.contacts.name_of(amid)
    }

    /// An AMID, or the AMID a petname names: the one place a recipient
    /// given by the application is read.
    pub fn resolve_name(&self, text: &str) -> Result<Amid, NameError> {
        self.shared.contacts.resolve(text)
    }

    /// Every agent this node knows: sessions, imported cards, petnames and
    /// connected agents, with what is known of each.
    pub async fn peers(&self) -> Vec<KnownPeer> {
        let status = self.status().await;
        let now = now_ms();
        let mut peers: std::collections::BTreeMap<Amid, KnownPeer> = Default::default();
        fn add(
            peers: &mut std::collections::BTreeMap<Amid, KnownPeer>,
            amid: Amid,
        ) -> &mut KnownPeer {
            peers.entry(amid).or_insert_with(|| KnownPeer::new(amid))
        }
        for s in &status.sessions {
            let p = add(&mut peers, s.peer);
            p.sessions += 1;
            p.session_expires_ms = p.session_expires_ms.max(Some(s.expires_ms));
        }
        for card in self.shared.contacts.cards(now) {
            let p = add(&mut peers, card.amid);
            p.card_imported = true;
            p.presence = Some(card.presence);
            p.card_expires_ms = Some(card.expires_ms);
        }
        for (name, amid) in self.shared.contacts.names() {
            let p = add(&mut peers, amid);
            if p.name.is_none() {
                p.name = Some(name);
            }
        }
        for c in &status.net.connected {
            if let Ok(amid) = c.peer.parse::<Amid>() {
                add(&mut peers, amid).path = Some(c.path);
            }
        }
        let seen = self
            .shared
            .last_seen
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        for (amid, at) in &seen {
            if let Some(p) = peers.get_mut(amid) {
                p.last_seen_ms = Some(*at);
            }
        }
        // Presence from the freshest card we hold (a DHT one may be newer).
        for p in peers.values_mut() {
            if let Some(card) = self.local_card(&p.amid).await {
                if p.card_expires_ms.is_none_or(|e| card.expires_ms > e) {
                    p.presence = Some(card.presence);
                    p.card_expires_ms = Some(card.expires_ms);
                }
            }
        }
        peers.into_values().collect()
    }

    /// The card of `amid` in our own DHT store, without a lookup.
    async fn local_card(&self, amid: &Amid) -> Option<AgentCard> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::LocalCard {
                amid: *amid,
                reply: tx,
            })
            .await
            .ok()?;
        rx.await.ok()?
    }

    /// Publishes a record about this node in `namespace` (signed by the
    /// node's key, sequence = current time in ms, expiring after `ttl`) to
    /// the DHT, for services built on a node (a registry publishing
    /// revocations, for instance). Returns whether at least one other peer
    /// stored it; `Err` when it could not be signed or stored locally.
    pub async fn publish_record(
        &self,
        namespace: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, PublishError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::PutRecord {
                namespace: namespace.to_owned(),
                payload,
                ttl,
                reply: tx,
            })
            .await
            .map_err(|_| PublishError::Stopped)?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| PublishError::Timeout)?
            .map_err(|_| PublishError::Stopped)?
            .map_err(PublishError::Record)
    }

    /// Looks up the record in `namespace` about `subject` through the DHT
    /// (validated: signed by `subject`, not expired). `None` when no peer
    /// has one.
    pub async fn get_record(
        &self,
        namespace: &str,
        subject: &PeerId,
    ) -> Option<agentmesh_dht::VerifiedRecord> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::GetRecord {
                namespace: namespace.to_owned(),
                subject: *subject,
                reply: tx,
            })
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()?
    }

    /// Turns the kill switch for everyone off again.
    pub fn clear_kill(&self) {
        self.shared
            .killed_all
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.shared.db.remove(KILLED_ALL_KEY);
    }

    /// Whether the kill switch for everyone is on.
    pub fn is_killed(&self) -> bool {
        self.shared
            .killed_all
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Entries of the audit log that match `filter`, oldest first.
    pub fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, AuditError> {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list(filter)
    }

    /// Verifies the whole audit chain; returns the number of entries, or
    /// the position of the first tampered one.
    pub fn verify_audit_log(&self) -> Result<u64, AuditError> {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verify()
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        self.shared
            .policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Sessions, known peers and network state.
    pub async fn status(&self) -> NodeStatus {
        let (tx, rx) = oneshot::channel();
        let net = if self
            .shared
            .commands
            .send(Command::Status { reply: tx })
            .await
            .is_ok()
        {
            rx.await.unwrap_or_default()
        } else {
            NetStatus::default()
        };
        let now = now_ms();
        let sessions: Vec<SessionStatus> = self
            .shared
            .store()
            .all_sessions()
            .into_iter()
            .filter(|s| s.expires_ms > now)
            .map(|s| SessionStatus {
                peer: s.peer,
                session: s.id,
                role: s.role,
                expires_ms: s.expires_ms,
            })
            .collect();
        let mut known_peers: Vec<Amid> = sessions.iter().map(|s| s.peer).collect();
        known_peers.sort();
        known_peers.dedup();
        NodeStatus {
            amid: self.shared.amid,
            fingerprint: self.fingerprint(),
            did: self.shared.amid.did_key(),
            net,
            sessions,
            known_peers,
        }
    }

    /// Waits until the card is published on at least one other peer, or
    /// `timeout` passes. Returns whether it was published.
    pub async fn wait_published(&self, timeout: Duration) -> bool {
        let mut events = self.events();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.status().await.net.card_published {
                return true;
            }
            let next = tokio::time::timeout_at(deadline, events.recv()).await;
            match next {
                Err(_) => return false,
                Ok(Err(broadcast::error::RecvError::Closed)) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Waits until we listen on `count` addresses (or `timeout` passes) and
    /// returns them, QUIC first, each ending in `/p2p/<peer id>`.
    pub async fn wait_listening(&self, count: usize, timeout: Duration) -> Vec<Multiaddr> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.events();
        loop {
            let addrs = self.listen_addrs().await;
            if addrs.len() >= count || tokio::time::Instant::now() >= deadline {
                return addrs;
            }
            // Woken by the next event (a new listener is one), at the latest
            // when the deadline passes.
            let _ = tokio::time::timeout_at(deadline, events.recv()).await;
        }
    }

    /// Our listen addresses (with `/p2p/<peer id>`), once listening.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.status()
            .await
            .net
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// Stops the node and flushes its database. A node whose card is
    /// published first republishes it with presence `offline` (waiting at
    /// most [`SHUTDOWN_PUBLISH_TIMEOUT`] for a peer to store it), so that
    /// lookups see it gone.
    pub async fn shutdown(self) {
        // Our relays learn who may fill our mailbox while we are away.
        let relays: Vec<PeerId> = self
            .shared
            .my_relays
            .read()
            .map(|r| r.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default();
        for relay in relays {
            let named = mailbox::name_senders(&self.shared, relay);
            let _ = tokio::time::timeout(SHUTDOWN_PUBLISH_TIMEOUT, named).await;
        }
        if !self.is_killed() && self.status().await.net.card_published {
            self.publish_offline().await;
        }
        self.shared.cancel.cancel();
        let _ = self.shared.store().flush();
        if let Ok(log) = self.shared.audit.lock() {
            let _ = log.flush();
        }
        let _ = self.shared.db.flush_async().await;
    }

    /// The libp2p stream control, for tests that speak the wire protocol
    /// directly.
    #[doc(hidden)]
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.shared.control.clone()
    }

    /// Closes every connection to `peer`. Sessions stay: the next message
    /// reconnects.
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self
            .shared
            .commands
            .send(Command::Disconnect { peer })
            .await;
    }

    /// Dials `peer` at `addrs` and returns the path of the connection made
    /// (the doctor's hole-punch probe starts from it).
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<PathKind, DialError> {
        mailbox::connect(&self.shared, peer, addrs).await
    }

    /// libp2p's own metrics in the Prometheus text format (the
    /// `libp2p_swarm_*`, `libp2p_kad_*`, `libp2p_identify_*`,
    /// `libp2p_ping_*`, `libp2p_relay_*` and `libp2p_dcutr_*` families of
    /// libp2p-metrics, and `libp2p_bandwidth_bytes_total`, the bytes the
    /// node's connections carried by direction and protocol stack), without
    /// a closing `# EOF`, ready to follow the node's own metrics.
    pub fn libp2p_metrics(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode_registry(
            &mut out,
            &self.shared.libp2p_registry,
        ) {
            Ok(()) => out,
            Err(_) => String::new(),
        }
    }

    /// How many KNOCK nonces the node holds (for tests of bounded state).
    #[doc(hidden)]
    pub fn stored_nonces(&self) -> usize {
        self.shared.store().nonces()
    }

    /// The identity (for tests that sign wire messages directly).
    #[doc(hidden)]
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }
}

/// The content of a JSON message of `kind`, size-checked.
fn json_content(kind: Kind, payload: &serde_json::Value) -> Result<Content, SendError> {
    let content =
        Content::json(kind, payload).map_err(|e| SendError::InvalidPayload(e.to_string()))?;
    if content.body.len() > crate::envelope::MAX_PAYLOAD_SIZE {
        return Err(SendError::InvalidPayload(format!(
            "{} bytes is too large",
            content.body.len()
        )));
    }
    Ok(content)
}

/// The AMID of a peer id, when the peer's key is Ed25519.
pub fn amid_of_peer(peer: &PeerId) -> Option<Amid> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Amid::from_libp2p(&pk)
}

fn peer_label(peer: &PeerId) -> String {
    amid_of_peer(peer)
        .map(|a| a.to_string())
        .unwrap_or_else(|| peer.to_string())
}
