//! The node: a handle to a running agent.
//!
//! [`Node`] is a cheap handle; the work happens in tasks it spawns: the swarm
//! actor (libp2p: transports, DHT, identify, ping, streams), one acceptor per
//! stream protocol, and one outbound link per peer that owns the long-lived
//! message stream, its window of unacknowledged messages and reconnection.
//! Dropping every handle, or [`Node::shutdown`], stops them all.

mod builder;
mod cards;
mod config;
mod controls;
pub(crate) mod cores;
mod errors;
mod exchange;
mod first_contact;
mod inbound;
mod link;
mod mailbox;
mod messages;
mod paths;
mod registry;
mod rotation;
mod status;
mod swarm;
mod trust;
mod upgrade;

pub use exchange::{
    StreamError, StreamReceiver, StreamSender, Streams, STREAM_BUFFER, STREAM_WINDOW,
};

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use agentmesh_dht::now_ms;
use agentmesh_transports::PathKind;

pub use paths::{LearnedPath, PathCounters};
pub use registry::{
    CredentialsState, LogCheck, RegistryClientError, RevocationSource, RevocationSync,
};
pub use trust::{RootPinError, TrustError};

pub use builder::NodeBuilder;
pub use config::{
    Config, ConnectionCaps, HolePunch, Reachability, UnknownHolePunch, KNOWN_NAMESPACES,
};
pub use errors::{DialError, PublishError, SendError, SpawnError};
pub use messages::{InboxKey, MessageFilter, Messages};
pub use status::{
    KnownPeer, NatStatus, NetStatus, NodeStatus, PeerStatus, RelayStatus, RelayTotals,
    SessionStatus,
};

use crate::{
    audit::{AuditEvent, AuditLog},
    card::{AgentCard, Presence},
    contacts::Contacts,
    content::{Content, Kind},
    crypto::envelope::{MessageId, SessionId},
    crypto::session::SessionStore,
    events::{Message, NodeEvent, Receipt},
    identity::{Amid, Identity},
    knock::breaker::CircuitBreakers,
    knock::policy::Policy,
    knock::ratelimit::{RateLimit, RateLimiter},
    knock::Intent,
    plugin::Plugin,
    trust::credentials::Credentials,
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
    /// Stores a record signed elsewhere (a rotation record, signed by a key
    /// the node left).
    PutSigned {
        record: agentmesh_dht::SignedRecord,
        reply: oneshot::Sender<Result<bool, String>>,
    },
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
    /// The message schemas known (standard and custom).
    schemas: Arc<crate::schema::Schemas>,
    /// Our own rotation statements, oldest first: our KNOCKs show them so
    /// that peers' lists follow us to this key.
    rotations: Vec<crate::identity::rotation::SignedRotation>,
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
    receipts: crate::trust::receipts::ReceiptStore,
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
    /// Held while the answers to mailed KNOCKs are sent (one run at a time).
    answer_lock: tokio::sync::Mutex<()>,
    /// The agent registered with its registry in this run (its prekey
    /// bundle and card may be uploaded).
    registered: std::sync::atomic::AtomicBool,
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

impl Node {
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
    /// [`crate::crypto::session::MAX_CACHED_PEERS`]; the others wait on disk).
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
    if content.body.len() > crate::crypto::envelope::MAX_PAYLOAD_SIZE {
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

/// Replaces the fallback prekey when it is due (see
/// [`SessionStore::rotate_fallback_key`]); whether the card must be
/// published again.
fn rotate_prekeys(shared: &Shared) -> bool {
    let rotated = shared.store().rotate_fallback_key(
        now_ms(),
        crate::crypto::session::FALLBACK_KEY_ROTATION_MS,
        crate::crypto::session::FALLBACK_KEY_GRACE_MS,
    );
    match rotated {
        Ok(r) => {
            if r {
                tracing::info!("fallback prekey replaced");
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "rotating the fallback prekey failed");
            false
        }
    }
}
