//! A Kademlia engine without I/O and without a clock of its own, in the
//! style of quinn-proto: the caller feeds it what arrived
//! ([`Kademlia::handle_request`], [`Kademlia::handle_response`],
//! [`Kademlia::handle_failure`]) and the time ([`Kademlia::handle_timeout`]),
//! and takes out what it has to send ([`Kademlia::poll_transmit`]), what
//! happened ([`Kademlia::poll_event`]) and when to wake it next
//! ([`Kademlia::poll_timeout`]).
//!
//! It keeps k-buckets (k = 20, one pending entry per full bucket replacing
//! an unresponsive peer), runs iterative lookups (α = 3; a lookup ends when
//! the k closest peers it knows have all answered, or nobody is left to
//! ask), and gets and puts records checked by a [`RecordValidator`] — by
//! default the DHT's own [`SignedRecord`] validation. Nothing inside reads
//! the system clock or a random source, so the same inputs give the same
//! outputs: the simulator runs tens of thousands of engines in one thread,
//! in virtual time.
//!
//! Peers are any cheap `P` (a libp2p `PeerId` in a node, an index in the
//! simulator); each carries its [`KadKey`] (SHA-256 of its id bytes, as in
//! libp2p-kad).
//!
//! ```
//! use agentmesh_dht::engine::{Contact, EngineConfig, Event, KadKey, Kademlia, Request};
//!
//! let key = |n: u32| KadKey::from_bytes(&n.to_be_bytes());
//! let mut a = Kademlia::new(Contact::new(1u32, key(1)), EngineConfig::default());
//! let mut b = Kademlia::new(Contact::new(2u32, key(2)), EngineConfig::default());
//! a.add_contact(Contact::new(2, key(2)), 0);
//! let query = a.find_node(key(3), 0);
//! // Carry a's requests to b and b's answers back, until the lookup ends.
//! while let Some(out) = a.poll_transmit() {
//!     let answer = b.handle_request(&Contact::new(1, key(1)), true, out.request, 5);
//!     a.handle_response(out.id, answer, 10);
//! }
//! assert!(matches!(a.poll_event(), Some(Event::FindNodeDone { id, .. }) if id == query));
//! ```

mod query;
mod table;

use std::collections::{BTreeMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::record::{RecordError, SignedRecord};
use query::{Lookup, PeerState};
use table::RoutingTable;

/// A position in the keyspace: SHA-256 of a peer id's or record key's
/// bytes, as libp2p-kad computes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KadKey([u8; 32]);

impl std::fmt::Debug for KadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KadKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl KadKey {
    /// The key of `bytes` (a peer id's bytes, or a record key).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// A key given as its 32 bytes (for instance a random lookup target).
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self(raw)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// XOR distance to `other`; compare distances as byte arrays.
    pub fn distance(&self, other: &KadKey) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        d
    }

    /// The bucket `other` falls in seen from `self`: 255 minus the number
    /// of leading bits they share; `None` for the same key.
    pub(crate) fn bucket_index(&self, other: &KadKey) -> Option<u8> {
        let d = self.distance(other);
        let zeros = leading_zeros(&d);
        if zeros == 256 {
            return None;
        }
        u8::try_from(255 - zeros).ok()
    }
}

fn leading_zeros(d: &[u8; 32]) -> u32 {
    let mut zeros = 0;
    for byte in d {
        if *byte == 0 {
            zeros += 8;
        } else {
            return zeros + byte.leading_zeros();
        }
    }
    zeros
}

/// A peer as the engine knows it: its id and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact<P> {
    /// The peer's id.
    pub id: P,
    /// Its position in the keyspace.
    pub key: KadKey,
}

impl<P> Contact<P> {
    /// A contact.
    pub fn new(id: P, key: KadKey) -> Self {
        Self { id, key }
    }
}

/// Engine parameters. The defaults are libp2p-kad's.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bucket size and replication factor.
    pub k: usize,
    /// Requests in flight per lookup.
    pub alpha: usize,
    /// How long one request may take, in ms.
    pub rpc_timeout_ms: u64,
    /// How long one lookup may take, in ms.
    pub query_timeout_ms: u64,
    /// How long a peer waits for a place in a full bucket before it may
    /// replace an entry not heard from since, in ms.
    pub pending_timeout_ms: u64,
    /// How often the engine looks itself up to refresh its neighbourhood,
    /// in ms; `None` never.
    pub refresh_interval_ms: Option<u64>,
    /// Most records stored for others.
    pub max_records: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            rpc_timeout_ms: 10_000,
            query_timeout_ms: 60_000,
            pending_timeout_ms: 60_000,
            refresh_interval_ms: Some(5 * 60_000),
            max_records: 4096,
        }
    }
}

/// What a validated record says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Sequence number; a newer record has a higher one.
    pub seq: u64,
    /// Expiry, ms on the caller's clock.
    pub expires_ms: u64,
}

/// Checks a record before it is stored or returned.
pub trait RecordValidator {
    /// Validates `value` stored under `key` at `now_ms`.
    fn validate(&self, key: &[u8], value: &[u8], now_ms: u64) -> Result<RecordMeta, RecordError>;
}

/// The DHT's own validation: a [`SignedRecord`] signed by its subject, in
/// a valid namespace, not expired, under the key it names.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedRecordValidator;

impl RecordValidator for SignedRecordValidator {
    fn validate(&self, key: &[u8], value: &[u8], now_ms: u64) -> Result<RecordMeta, RecordError> {
        let record = SignedRecord::validate(value, key, now_ms)?;
        Ok(RecordMeta {
            seq: record.seq,
            expires_ms: record.expires_ms,
        })
    }
}

/// Identifies one request the engine sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Identifies one lookup, get or put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u64);

/// A request between engines (the content of a libp2p Kademlia message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The closest peers to a key.
    FindNode {
        /// The key looked for.
        target: KadKey,
    },
    /// A record, or the closest peers to its key.
    GetRecord {
        /// The record key.
        key: Vec<u8>,
    },
    /// Store a record.
    PutRecord {
        /// The record key.
        key: Vec<u8>,
        /// The record.
        value: Vec<u8>,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<P> {
    /// Closer peers.
    Nodes {
        /// Up to k peers closest to the key, from the answerer's table.
        closer: Vec<Contact<P>>,
    },
    /// The record if held, and closer peers.
    Record {
        /// The record, if the answerer holds a valid one.
        value: Option<Vec<u8>>,
        /// Up to k peers closest to the key.
        closer: Vec<Contact<P>>,
    },
    /// Whether a put was stored.
    Stored {
        /// True if the record was kept.
        ok: bool,
    },
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Outgoing<P> {
    /// Where to.
    pub to: Contact<P>,
    /// Give this id back with the answer or the failure.
    pub id: RequestId,
    /// What to send.
    pub request: Request,
}

/// How a query went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryStats {
    /// Requests sent.
    pub rpcs: u32,
    /// Hops to the answer: 1 for a peer from our own table, n + 1 for a
    /// peer named by one at hop n.
    pub hops: u32,
    /// Time from start to end, in ms.
    pub duration_ms: u64,
    /// True if the query ran out of time.
    pub timed_out: bool,
}

/// What the engine reports.
#[derive(Debug, Clone)]
pub enum Event<P> {
    /// A node lookup ended.
    FindNodeDone {
        /// Which.
        id: QueryId,
        /// The closest peers that answered, closest first.
        closest: Vec<Contact<P>>,
        /// How it went.
        stats: QueryStats,
    },
    /// A record lookup ended.
    GetRecordDone {
        /// Which.
        id: QueryId,
        /// The record, if found and valid.
        record: Option<Vec<u8>>,
        /// How it went.
        stats: QueryStats,
    },
    /// A put ended.
    PutRecordDone {
        /// Which.
        id: QueryId,
        /// How many of the closest peers stored it.
        stored_at: usize,
        /// How it went.
        stats: QueryStats,
    },
    /// A peer stored a record with us.
    RecordStored {
        /// The record key.
        key: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
enum QueryKind {
    FindNode,
    Refresh,
    GetRecord { key: Vec<u8> },
    PutRecord { key: Vec<u8>, value: Vec<u8> },
}

#[derive(Debug, Clone)]
struct QueryState<P> {
    kind: QueryKind,
    lookup: Lookup<P>,
    started: u64,
    deadline: u64,
    found: Option<(Vec<u8>, u32)>,
    putting: Option<Putting>,
}

#[derive(Debug, Clone, Copy)]
struct Putting {
    sent: usize,
    outstanding: usize,
    ok: usize,
    hops: u32,
}

#[derive(Debug, Clone)]
struct Outstanding<P> {
    to: Contact<P>,
    query: Option<QueryId>,
    deadline: u64,
}

#[derive(Debug, Clone)]
struct StoredRecord {
    value: Vec<u8>,
    meta: RecordMeta,
}

/// The engine. See the [module docs](self).
#[derive(Debug)]
pub struct Kademlia<P, V = SignedRecordValidator> {
    local: Contact<P>,
    config: EngineConfig,
    validator: V,
    table: RoutingTable<P>,
    records: BTreeMap<Vec<u8>, StoredRecord>,
    queries: BTreeMap<QueryId, QueryState<P>>,
    requests: BTreeMap<RequestId, Outstanding<P>>,
    outbox: VecDeque<Outgoing<P>>,
    events: VecDeque<Event<P>>,
    next_id: u64,
    next_refresh: Option<u64>,
}

impl<P: Clone + Eq> Kademlia<P, SignedRecordValidator> {
    /// An engine for `local`, validating records as signed records.
    pub fn new(local: Contact<P>, config: EngineConfig) -> Self {
        Self::with_validator(local, config, SignedRecordValidator)
    }
}

impl<P: Clone + Eq, V: RecordValidator> Kademlia<P, V> {
    /// An engine for `local` with its own record validation.
    pub fn with_validator(local: Contact<P>, config: EngineConfig, validator: V) -> Self {
        let table = RoutingTable::new(local.key, config.k, config.pending_timeout_ms);
        Self {
            local,
            validator,
            table,
            records: BTreeMap::new(),
            queries: BTreeMap::new(),
            requests: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            next_refresh: None,
            config,
        }
    }

    /// This engine's own contact.
    pub fn local(&self) -> &Contact<P> {
        &self.local
    }

    /// Contacts in the routing table.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Records held (our own and others').
    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    /// The valid record held here under `key`, if any.
    pub fn record(&self, key: &[u8], now: u64) -> Option<&[u8]> {
        self.records
            .get(key)
            .filter(|r| r.meta.expires_ms > now)
            .map(|r| r.value.as_slice())
    }

    /// Lookups, gets and puts under way.
    pub fn queries_len(&self) -> usize {
        self.queries.len()
    }

    /// The `count` contacts of the table closest to `target`.
    pub fn closest(&self, target: &KadKey, count: usize) -> Vec<Contact<P>> {
        self.table.closest(target, count)
    }

    /// Adds a known peer (a bootstrap node, or a peer met another way).
    pub fn add_contact(&mut self, contact: Contact<P>, now: u64) {
        if contact.id != self.local.id {
            self.table.seen(&contact, now);
        }
    }

    /// Joins or refreshes: looks up our own key. Also arms the periodic
    /// refresh if configured.
    pub fn bootstrap(&mut self, now: u64) -> QueryId {
        if let Some(every) = self.config.refresh_interval_ms {
            self.next_refresh = Some(now.saturating_add(every));
        }
        self.start(self.local.key, QueryKind::Refresh, now)
    }

    /// Looks up the peers closest to `target`.
    pub fn find_node(&mut self, target: KadKey, now: u64) -> QueryId {
        self.start(target, QueryKind::FindNode, now)
    }

    /// Looks up the record under `key`: our own copy if we hold one, else
    /// the network's.
    pub fn get_record(&mut self, key: Vec<u8>, now: u64) -> QueryId {
        self.start(KadKey::from_bytes(&key), QueryKind::GetRecord { key }, now)
    }

    /// Stores a record here and at the k peers closest to its key.
    pub fn put_record(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        now: u64,
    ) -> Result<QueryId, RecordError> {
        self.store(&key, &value, now)?;
        let target = KadKey::from_bytes(&key);
        Ok(self.start(target, QueryKind::PutRecord { key, value }, now))
    }

    /// Answers a request from `from`. A peer that serves the DHT itself
    /// (`from_server`) is added to the routing table; a client is not.
    pub fn handle_request(
        &mut self,
        from: &Contact<P>,
        from_server: bool,
        request: Request,
        now: u64,
    ) -> Response<P> {
        if from_server && from.id != self.local.id {
            self.table.seen(from, now);
        }
        match request {
            Request::FindNode { target } => Response::Nodes {
                closer: self.closer(&target, &from.id),
            },
            Request::GetRecord { key } => {
                let value = self.local_record(&key, now);
                let closer = self.closer(&KadKey::from_bytes(&key), &from.id);
                Response::Record { value, closer }
            }
            Request::PutRecord { key, value } => {
                let ok = self.store(&key, &value, now).is_ok();
                if ok {
                    self.events.push_back(Event::RecordStored { key });
                }
                Response::Stored { ok }
            }
        }
    }

    /// Takes the answer to request `id`.
    pub fn handle_response(&mut self, id: RequestId, response: Response<P>, now: u64) {
        let Some(out) = self.requests.remove(&id) else {
            return;
        };
        self.table.seen(&out.to, now);
        let Some(qid) = out.query else {
            return;
        };
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        if let Some(putting) = q.putting.as_mut() {
            putting.outstanding = putting.outstanding.saturating_sub(1);
            if matches!(response, Response::Stored { ok: true }) {
                putting.ok += 1;
            }
            self.advance(qid, now);
            return;
        }
        let Some(hop) = q.lookup.mark(&out.to.id, &out.to.key, PeerState::Succeeded) else {
            return;
        };
        let (closer, value) = match response {
            Response::Nodes { closer } => (closer, None),
            Response::Record { value, closer } => (closer, value),
            Response::Stored { .. } => (Vec::new(), None),
        };
        for contact in closer.into_iter().take(self.config.k) {
            if contact.id != self.local.id {
                q.lookup.add(contact, hop + 1);
            }
        }
        if let (QueryKind::GetRecord { key }, Some(value)) = (&q.kind, value) {
            if q.found.is_none() && self.validator.validate(key, &value, now).is_ok() {
                q.found = Some((value, hop));
            }
        }
        self.advance(qid, now);
    }

    /// Request `id` could not be delivered or was refused: the peer is
    /// dropped from the table and the lookup goes on without it.
    pub fn handle_failure(&mut self, id: RequestId, now: u64) {
        let Some(out) = self.requests.remove(&id) else {
            return;
        };
        self.table.remove(&out.to.id, &out.to.key, now);
        let Some(qid) = out.query else {
            return;
        };
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        if let Some(putting) = q.putting.as_mut() {
            putting.outstanding = putting.outstanding.saturating_sub(1);
        } else {
            q.lookup.mark(&out.to.id, &out.to.key, PeerState::Failed);
        }
        self.advance(qid, now);
    }

    /// Lets time pass: requests and queries past their deadline fail, the
    /// refresh runs when due, expired records go.
    pub fn handle_timeout(&mut self, now: u64) {
        let late: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.handle_failure(id, now);
        }
        let overdue: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.finish(id, now, true);
        }
        if self.next_refresh.is_some_and(|at| at <= now) {
            self.bootstrap(now);
        }
        self.records.retain(|_, r| r.meta.expires_ms > now);
    }

    /// The next request to send.
    pub fn poll_transmit(&mut self) -> Option<Outgoing<P>> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let requests = self.requests.values().map(|o| o.deadline).min();
        let queries = self.queries.values().map(|q| q.deadline).min();
        [requests, queries, self.next_refresh]
            .into_iter()
            .flatten()
            .min()
    }

    fn closer(&self, target: &KadKey, except: &P) -> Vec<Contact<P>> {
        let mut closer = self.table.closest(target, self.config.k + 1);
        closer.retain(|c| &c.id != except);
        closer.truncate(self.config.k);
        closer
    }

    fn local_record(&self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        self.records
            .get(key)
            .filter(|r| r.meta.expires_ms > now)
            .map(|r| r.value.clone())
    }

    fn store(&mut self, key: &[u8], value: &[u8], now: u64) -> Result<(), RecordError> {
        let meta = self.validator.validate(key, value, now)?;
        match self.records.get(key) {
            Some(existing)
                if existing.meta.seq > meta.seq
                    || (existing.meta.seq == meta.seq && existing.value != value) =>
            {
                return Err(RecordError::StaleSequence {
                    got: meta.seq,
                    have: existing.meta.seq,
                })
            }
            Some(_) => {}
            None if self.records.len() >= self.config.max_records => {
                return Err(RecordError::StoreFull)
            }
            None => {}
        }
        self.records.insert(
            key.to_vec(),
            StoredRecord {
                value: value.to_vec(),
                meta,
            },
        );
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn start(&mut self, target: KadKey, kind: QueryKind, now: u64) -> QueryId {
        let id = QueryId(self.next_id());
        let seeds = self.table.closest(&target, self.config.k);
        let found = match &kind {
            QueryKind::GetRecord { key } => self.local_record(key, now).map(|v| (v, 0)),
            _ => None,
        };
        self.queries.insert(
            id,
            QueryState {
                kind,
                lookup: Lookup::new(target, self.config.k, self.config.alpha, seeds),
                started: now,
                deadline: now.saturating_add(self.config.query_timeout_ms),
                found,
                putting: None,
            },
        );
        self.advance(id, now);
        id
    }

    fn send(&mut self, to: Contact<P>, query: QueryId, request: Request, now: u64) -> RequestId {
        let id = RequestId(self.next_id());
        self.requests.insert(
            id,
            Outstanding {
                to: to.clone(),
                query: Some(query),
                deadline: now.saturating_add(self.config.rpc_timeout_ms),
            },
        );
        self.outbox.push_back(Outgoing { to, id, request });
        id
    }

    fn advance(&mut self, qid: QueryId, now: u64) {
        let Some(q) = self.queries.get(&qid) else {
            return;
        };
        if let Some(putting) = q.putting {
            if putting.outstanding == 0 {
                self.finish(qid, now, false);
            }
            return;
        }
        if q.found.is_some() {
            self.finish(qid, now, false);
            return;
        }
        if q.lookup.is_finished() {
            if let QueryKind::PutRecord { key, value } = &q.kind {
                let (key, value) = (key.clone(), value.clone());
                let targets = q.lookup.succeeded();
                let hops = targets.first().map_or(0, |(_, h)| *h);
                let count = targets.len();
                for (contact, _) in targets {
                    let request = Request::PutRecord {
                        key: key.clone(),
                        value: value.clone(),
                    };
                    self.send(contact, qid, request, now);
                }
                if let Some(q) = self.queries.get_mut(&qid) {
                    q.putting = Some(Putting {
                        sent: count,
                        outstanding: count,
                        ok: 0,
                        hops,
                    });
                }
                if count == 0 {
                    self.finish(qid, now, false);
                }
                return;
            }
            self.finish(qid, now, false);
            return;
        }
        let next = q.lookup.next_to_ask();
        let request = match &q.kind {
            QueryKind::FindNode | QueryKind::Refresh | QueryKind::PutRecord { .. } => {
                Request::FindNode {
                    target: q.lookup.target(),
                }
            }
            QueryKind::GetRecord { key } => Request::GetRecord { key: key.clone() },
        };
        for contact in next {
            let rid = self.send(contact.clone(), qid, request.clone(), now);
            if let Some(q) = self.queries.get_mut(&qid) {
                q.lookup
                    .mark(&contact.id, &contact.key, PeerState::Waiting(rid));
            }
        }
    }

    fn finish(&mut self, qid: QueryId, now: u64, timed_out: bool) {
        let Some(q) = self.queries.remove(&qid) else {
            return;
        };
        // Answers still out update the table when they come, but no
        // longer drive this query.
        for out in self.requests.values_mut() {
            if out.query == Some(qid) {
                out.query = None;
            }
        }
        let succeeded = q.lookup.succeeded();
        let mut stats = QueryStats {
            rpcs: q.lookup.rpcs,
            hops: succeeded.first().map_or(0, |(_, h)| *h),
            duration_ms: now.saturating_sub(q.started),
            timed_out,
        };
        let event = match q.kind {
            QueryKind::Refresh => return,
            QueryKind::FindNode => Event::FindNodeDone {
                id: qid,
                closest: succeeded.into_iter().map(|(c, _)| c).collect(),
                stats,
            },
            QueryKind::GetRecord { .. } => {
                let record = q.found.map(|(value, hop)| {
                    stats.hops = hop;
                    value
                });
                Event::GetRecordDone {
                    id: qid,
                    record,
                    stats,
                }
            }
            QueryKind::PutRecord { .. } => {
                let (stored_at, hops) = q.putting.map_or((0, 0), |p| (p.ok, p.hops));
                stats.hops = hops;
                stats.rpcs += q
                    .putting
                    .map_or(0, |p| u32::try_from(p.sent).unwrap_or(u32::MAX));
                Event::PutRecordDone {
                    id: qid,
                    stored_at,
                    stats,
                }
            }
        };
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests;
