//! The DHT facade: a [`NetworkBehaviour`] that wraps the Kademlia engine,
//! validates every record it stores or returns, and reports results as
//! [`DhtEvent`]s keyed by the [`QueryId`] its methods return.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    num::NonZeroUsize,
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    core::{transport::PortUse, Endpoint},
    kad::{
        self, store::RecordStore, GetRecordOk, InboundRequest, PeerRecord, QueryResult, Quorum,
        RecordKey, StoreInserts,
    },
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId, StreamProtocol,
};
use tracing::{debug, warn};

use crate::{
    record::{now_ms, record_key, RecordError, SignedRecord, VerifiedRecord},
    store::SledStore,
};

/// Protocol id of the AgentMesh Kademlia overlay.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/kad/1");

/// Whether this node answers DHT requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DhtMode {
    /// Serve the DHT (store records, answer queries).
    #[default]
    Server,
    /// Only query; do not serve.
    Client,
}

/// DHT settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DhtConfig {
    /// Server or client mode. Defaults to [`DhtMode::Server`]: on loopback
    /// and small networks nothing confirms an external address, and a
    /// client-mode overlay cannot store anything.
    pub mode: DhtMode,
    /// How long one query may run. Defaults to 10 s.
    pub query_timeout: Duration,
    /// Replication factor (k). Defaults to 20.
    pub replication: NonZeroUsize,
    /// What the record store takes (size, lifetime, namespaces).
    pub store: crate::StoreLimits,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            mode: DhtMode::Server,
            query_timeout: Duration::from_secs(10),
            replication: NonZeroUsize::new(20).unwrap_or(NonZeroUsize::MIN),
            store: crate::StoreLimits::default(),
        }
    }
}

fn kad_mode(mode: DhtMode) -> kad::Mode {
    match mode {
        DhtMode::Server => kad::Mode::Server,
        DhtMode::Client => kad::Mode::Client,
    }
}

/// Identifies an operation started on the [`Dht`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryId(u64);

/// Errors starting a DHT operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The record is invalid.
    #[error("invalid record: {0}")]
    Record(#[from] RecordError),
    /// The local store refused it.
    #[error("store: {0}")]
    Store(String),
    /// The store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// No peer is known yet.
    #[error("no known peers")]
    NoKnownPeers,
}

/// What the DHT reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum DhtEvent {
    /// A `get` finished: the valid record with the highest sequence, if any.
    RecordFound {
        /// The query.
        query: QueryId,
        /// The best record found.
        record: Option<Box<VerifiedRecord>>,
    },
    /// A `put` finished.
    PutDone {
        /// The query.
        query: QueryId,
        /// How many remote peers stored it (0 when alone).
        stored_remotely: bool,
    },
    /// A closest-peers lookup finished.
    ClosestPeers {
        /// The query.
        query: QueryId,
        /// The peers found.
        peers: Vec<PeerId>,
    },
    /// A `provide` finished.
    Provided {
        /// The query.
        query: QueryId,
        /// Whether at least one remote peer took the announcement.
        stored_remotely: bool,
    },
    /// A `providers` lookup finished.
    ProvidersFound {
        /// The query.
        query: QueryId,
        /// The peers that announced they provide the key.
        providers: Vec<PeerId>,
    },
    /// The routing table learned or refreshed a peer.
    RoutingUpdated {
        /// The peer.
        peer: PeerId,
    },
    /// A peer sent a record that failed validation.
    InboundRejected {
        /// The sender.
        from: PeerId,
        /// Why.
        error: RecordError,
    },
}

enum Pending {
    Get(Option<Box<VerifiedRecord>>),
    Put,
    Closest,
    Provide,
    Providers(HashSet<PeerId>),
}

/// The DHT behaviour: Kademlia over signed records.
pub struct Dht {
    kad: kad::Behaviour<SledStore>,
    mode: DhtMode,
    queries: HashMap<kad::QueryId, (QueryId, Pending)>,
    next_id: u64,
    events: VecDeque<DhtEvent>,
    metrics: Option<std::sync::Arc<libp2p::metrics::Metrics>>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("queries", &self.queries.len())
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// Creates the DHT for `local`, storing records in `db`.
    pub fn new(local: PeerId, db: &sled::Db, config: DhtConfig) -> Result<Self, DhtError> {
        let store = SledStore::open_with(local, db, config.store.clone())?;
        let mut cfg = kad::Config::new(PROTOCOL);
        cfg.set_record_filtering(StoreInserts::FilterBoth)
            .set_query_timeout(config.query_timeout)
            .set_replication_factor(config.replication)
            .set_max_packet_size(crate::MAX_RECORD_SIZE * 2)
            // Expiry is carried inside the signed record.
            .set_record_ttl(None)
            .set_provider_record_ttl(Some(Duration::from_secs(24 * 3600)));
        let mut kad = kad::Behaviour::with_config(local, store, cfg);
        kad.set_mode(Some(kad_mode(config.mode)));
        Ok(Self {
            mode: config.mode,
            kad,
            queries: HashMap::new(),
            next_id: 0,
            events: VecDeque::new(),
            metrics: None,
        })
    }

    fn track(&mut self, q: kad::QueryId, p: Pending) -> QueryId {
        self.next_id += 1;
        let id = QueryId(self.next_id);
        self.queries.insert(q, (id, p));
        id
    }

    /// Stores `record` locally and on the closest peers.
    pub fn put(&mut self, record: SignedRecord) -> Result<QueryId, DhtError> {
        let now = now_ms();
        let v = record.verify(now)?;
        let bytes = v.signed.to_bytes()?;
        self.kad.store_mut().put_verified(&v)?;
        let q = self
            .kad
            .put_record(crate::store::to_kad(&v, bytes, now), Quorum::One)
            .map_err(|e| DhtError::Store(format!("{e:?}")))?;
        Ok(self.track(q, Pending::Put))
    }

    /// Stores `record` locally and on `peers` only, in their order, without
    /// looking up the closest peers first: done once `quorum` of them
    /// stored it. For a quick update when there is no time for a lookup (a
    /// node stopping), to peers it is connected to.
    pub fn put_to(
        &mut self,
        record: SignedRecord,
        peers: Vec<PeerId>,
        quorum: usize,
    ) -> Result<QueryId, DhtError> {
        let quorum = match NonZeroUsize::new(quorum.min(peers.len())) {
            Some(n) => Quorum::N(n),
            None => Quorum::One,
        };
        let now = now_ms();
        let v = record.verify(now)?;
        let bytes = v.signed.to_bytes()?;
        self.kad.store_mut().put_verified(&v)?;
        let q = self.kad.put_record_to(
            crate::store::to_kad(&v, bytes, now),
            peers.into_iter(),
            quorum,
        );
        Ok(self.track(q, Pending::Put))
    }

    /// Looks up the record in `namespace` about `subject`.
    pub fn get(&mut self, namespace: &str, subject: &PeerId) -> QueryId {
        let q = self
            .kad
            .get_record(RecordKey::new(&record_key(namespace, subject)));
        self.track(q, Pending::Get(None))
    }

    /// The locally stored record in `namespace` about `subject`, if valid.
    pub fn get_local(&mut self, namespace: &str, subject: &PeerId) -> Option<VerifiedRecord> {
        let key = record_key(namespace, subject);
        self.kad.store_mut().get_verified(&key, now_ms())
    }

    /// Announces that the local peer provides `key` (e.g. a capability).
    pub fn provide(&mut self, key: &[u8]) -> Result<QueryId, DhtError> {
        let q = self
            .kad
            .start_providing(RecordKey::new(&key))
            .map_err(|e| DhtError::Store(format!("{e:?}")))?;
        Ok(self.track(q, Pending::Provide))
    }

    /// Looks up the peers that provide `key`.
    pub fn providers(&mut self, key: &[u8]) -> QueryId {
        let q = self.kad.get_providers(RecordKey::new(&key));
        self.track(q, Pending::Providers(HashSet::new()))
    }

    /// Looks up the peers closest to `peer`.
    pub fn closest_peers(&mut self, peer: PeerId) -> QueryId {
        let q = self.kad.get_closest_peers(peer);
        self.track(q, Pending::Closest)
    }

    /// Adds a known address of `peer` to the routing table.
    pub fn add_address(&mut self, peer: &PeerId, addr: Multiaddr) {
        self.kad.add_address(peer, addr);
    }

    /// Refreshes the routing table by looking up the local peer.
    pub fn bootstrap(&mut self) -> Result<(), DhtError> {
        self.kad
            .bootstrap()
            .map(|_| ())
            .map_err(|_| DhtError::NoKnownPeers)
    }

    /// Number of records held locally.
    pub fn stored_records(&mut self) -> usize {
        self.kad.store_mut().len()
    }

    /// Serves the DHT or stops serving it. Peers learn of the change through
    /// identify and drop (or add) this node in their routing tables.
    pub fn set_mode(&mut self, mode: DhtMode) {
        if mode != self.mode {
            self.mode = mode;
            self.kad.set_mode(Some(kad_mode(mode)));
        }
    }

    /// Whether this node serves the DHT.
    pub fn mode(&self) -> DhtMode {
        self.mode
    }

    /// Number of peers in the routing table.
    pub fn routing_table_size(&mut self) -> usize {
        self.kad.kbuckets().map(|b| b.num_entries()).sum()
    }

    /// Records libp2p-kad's events in `metrics` from now on (the
    /// `libp2p_kad_*` families of libp2p's Prometheus metrics).
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<libp2p::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        if let Some(m) = &self.metrics {
            libp2p::metrics::Recorder::record(m.as_ref(), &event);
        }
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => self.on_query(id, result, step.last),
            kad::Event::InboundRequest {
                request:
                    InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                let now = now_ms();
                let outcome = SignedRecord::validate(&record.value, record.key.as_ref(), now)
                    .and_then(|v| self.kad.store_mut().put_verified(&v));
                if let Err(error) = outcome {
                    debug!(%source, %error, "refused inbound record");
                    self.events.push_back(DhtEvent::InboundRejected {
                        from: source,
                        error,
                    });
                }
            }
            kad::Event::InboundRequest {
                request:
                    InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                // kad has checked that the provider is the sending peer.
                if let Err(e) = self.kad.store_mut().add_provider(record) {
                    debug!(error = ?e, "provider record not stored");
                }
            }
            kad::Event::RoutingUpdated { peer, .. } => {
                self.events.push_back(DhtEvent::RoutingUpdated { peer });
            }
            _ => {}
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: QueryResult, last: bool) {
        let Some((qid, pending)) = self.queries.get_mut(&id) else {
            return;
        };
        debug!(?id, last, query = ?qid, "query progressed");
        let qid = *qid;
        match (result, pending) {
            (QueryResult::GetRecord(res), Pending::Get(best)) => {
                if let Ok(GetRecordOk::FoundRecord(PeerRecord { record, peer })) = res {
                    match SignedRecord::validate(&record.value, record.key.as_ref(), now_ms()) {
                        Ok(v) => {
                            if best.as_ref().is_none_or(|b| v.seq > b.seq) {
                                *best = Some(Box::new(v));
                            }
                        }
                        Err(e) => warn!(?peer, error = %e, "invalid record in lookup"),
                    }
                    if !last {
                        return;
                    }
                }
                // Finished (or failed, e.g. timed out): report the best seen.
                let record = best.take();
                if let Some(r) = &record {
                    // Keep the freshest copy locally.
                    let _ = self.kad.store_mut().put_verified(r);
                }
                self.queries.remove(&id);
                self.events
                    .push_back(DhtEvent::RecordFound { query: qid, record });
            }
            (QueryResult::PutRecord(res), Pending::Put) => {
                if !last {
                    return;
                }
                self.queries.remove(&id);
                self.events.push_back(DhtEvent::PutDone {
                    query: qid,
                    stored_remotely: res.is_ok(),
                });
            }
            (QueryResult::GetClosestPeers(res), Pending::Closest) => {
                if !last {
                    return;
                }
                let peers = match res {
                    Ok(ok) => ok.peers.into_iter().map(|p| p.peer_id).collect(),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                        peers.into_iter().map(|p| p.peer_id).collect()
                    }
                };
                self.queries.remove(&id);
                self.events
                    .push_back(DhtEvent::ClosestPeers { query: qid, peers });
            }
            (QueryResult::StartProviding(res), Pending::Provide) => {
                if !last {
                    return;
                }
                self.queries.remove(&id);
                self.events.push_back(DhtEvent::Provided {
                    query: qid,
                    stored_remotely: res.is_ok(),
                });
            }
            (QueryResult::GetProviders(res), Pending::Providers(found)) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = res {
                    found.extend(providers);
                }
                if !last {
                    return;
                }
                let providers = found.drain().collect();
                self.queries.remove(&id);
                self.events.push_back(DhtEvent::ProvidersFound {
                    query: qid,
                    providers,
                });
            }
            _ => {
                if last {
                    self.queries.remove(&id);
                }
            }
        }
    }
}

impl NetworkBehaviour for Dht {
    type ConnectionHandler = <kad::Behaviour<SledStore> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = DhtEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.kad
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.kad
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.kad.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.kad.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<DhtEvent, THandlerInEvent<Self>>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(e));
            }
            match self.kad.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(e)) => self.on_kad_event(e),
                Poll::Ready(other) => {
                    return Poll::Ready(other.map_out(|_| unreachable_event()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// `map_out` is only called on non-`GenerateEvent` variants, whose closure
/// never runs; this value type-checks the call.
fn unreachable_event() -> DhtEvent {
    DhtEvent::RoutingUpdated {
        peer: PeerId::random(),
    }
}
