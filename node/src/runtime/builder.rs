//! Starting a node: [`NodeBuilder`] and [`Node::start`], which opens the
//! store and spawns the node's tasks.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use libp2p::Multiaddr;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use agentmesh_dht::now_ms;
use agentmesh_transports::PathKind;

use crate::{
    audit::AuditLog,
    card::Presence,
    contacts::Contacts,
    content::Kind,
    crypto::keystore::{Keystore, Passphrase},
    crypto::session::SessionStore,
    events::{Message, NodeEvent},
    identity::Identity,
    knock::breaker::CircuitBreakers,
    knock::policy::Policy,
    knock::ratelimit::{RateLimit, RateLimiter},
    plugin::{Plugin, PluginContext},
};

use super::{
    exchange, inbound, rate_limits, registry, rotation, swarm, trust, Config, Delivery, DropGuard,
    NatStatus, Node, Reachability, Shared, SpawnError, COMMAND_QUEUE, EVENT_QUEUE, INBOX_QUEUE,
    KILLED_ALL_KEY, MAX_RATE_KEYS,
};

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
            .find(|c| !crate::knock::policy::is_valid_capability(c))
        {
            return Err(SpawnError::InvalidCapability(bad.clone()));
        }
        if let Some(path) = &self.config.policy_file {
            self.config.policy = Policy::from_file(path)?;
        }
        let schemas = Arc::new(schemas_of(&self.config)?);
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
        Node::start(
            keystore,
            dir,
            self.config,
            schemas,
            self.bootstrap,
            self.plugins,
        )
    }
}

/// The standard schemas with the configuration's custom ones, after
/// checking that what the card will list is known and advertised.
fn schemas_of(config: &Config) -> Result<crate::schema::Schemas, SpawnError> {
    let mut schemas = crate::schema::Schemas::standard();
    for (id, json) in &config.custom_schemas {
        schemas.add(id, json.clone())?;
    }
    let mut listed = 0;
    for (capability, ids) in &config.accept_schemas {
        if !config.capabilities.contains(capability) {
            return Err(SpawnError::AcceptSchemas(format!(
                "{capability} is not among the capabilities advertised"
            )));
        }
        for id in ids {
            if !schemas.contains(id) {
                return Err(crate::schema::SchemaError::Unknown(id.clone()).into());
            }
        }
        listed += ids.len();
    }
    if listed > crate::schema::MAX_CARD_SCHEMAS {
        return Err(SpawnError::AcceptSchemas(format!(
            "{listed} schemas listed; a card holds at most {}",
            crate::schema::MAX_CARD_SCHEMAS
        )));
    }
    Ok(schemas)
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
        schemas: Arc<crate::schema::Schemas>,
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
        store.set_payload_check(schemas.clone());
        let audit = AuditLog::open(&db, Some(keystore.storage_key()))?;
        let killed_all = db.get(KILLED_ALL_KEY)?.is_some();
        let (knock_rate, msg_rate) = rate_limits(&config.policy);
        let breaker = config.breaker;
        let _ = store.sweep(now_ms());
        if let Err(e) = store.rotate_fallback_key(
            now_ms(),
            crate::crypto::session::FALLBACK_KEY_ROTATION_MS,
            crate::crypto::session::FALLBACK_KEY_GRACE_MS,
        ) {
            tracing::warn!(error = %e, "rotating the fallback prekey failed");
        }
        let backlog = store.inbox();
        let previous: Vec<_> = keystore
            .previous()
            .iter()
            .map(|(id, r)| (Identity::from_seed(&id.seed()), r.clone()))
            .collect();
        let rotations = keystore.rotations();
        drop(keystore);

        if let Some(addr) = &config.registry {
            registry::registry_peer(addr)?;
        }
        let receipts = crate::trust::receipts::ReceiptStore::open(&db)?;
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
            schemas,
            rotations,
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
            answer_lock: tokio::sync::Mutex::new(()),
            registered: std::sync::atomic::AtomicBool::new(false),
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
        tokio::spawn(rotation::publish(shared.clone(), previous).instrument(span.clone()));
        tokio::spawn(inbound::run(shared.clone(), backlog_done).instrument(span));
        Ok(Node {
            _guard: Arc::new(DropGuard(cancel)),
            shared,
            inbox: Arc::new(Mutex::new(Some(inbox_rx))),
            handlers: Arc::new(Mutex::new(None)),
            streams: Arc::new(Mutex::new(Some(streams_rx))),
        })
    }
}
