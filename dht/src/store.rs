//! A Kademlia record store on sled.
//!
//! Records are kept as the exact signed bytes that travelled, keyed by their
//! DHT key, and re-validated when read, so an expired or corrupt entry is
//! never served. Provider records are kept in memory (they are short-lived
//! and re-announced).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use libp2p::{
    kad::{
        store::{MemoryStore, RecordStore, Result as StoreResult},
        KBucketDistance, KBucketKey, ProviderRecord, Record, RecordKey,
    },
    PeerId,
};
use tracing::warn;

use crate::record::{now_ms, SignedRecord, VerifiedRecord};

/// Name of the sled tree holding records.
const TREE: &str = "dht-records";
/// Most records looked at, farthest first, for one that may give way to a
/// nearer one when every subject holds its share.
const MAX_FAR_SCAN: usize = 64;

/// Keys held per subject (the text after the key's last `/`).
type Owners = BTreeMap<String, BTreeSet<Vec<u8>>>;
/// Keys held, by their distance from the local peer.
type ByDistance = BTreeSet<(KBucketDistance, Vec<u8>)>;

/// A sled-backed [`RecordStore`] that holds only valid signed records.
pub struct SledStore {
    tree: sled::Tree,
    providers: MemoryStore,
    limits: StoreLimits,
    /// Keys held per subject (the text after the key's last `/`).
    owners: Mutex<Owners>,
    /// The local peer in the keyspace.
    local: KBucketKey<PeerId>,
    /// Keys held, by their distance from the local peer.
    by_distance: Mutex<ByDistance>,
}

/// What the record store takes, so that nobody can grow it without bound
/// or push others' records out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most records held. When full, a record from a subject holding fewer
    /// records than the subject holding most takes the place of one of
    /// that subject's. When every subject holds as many as the newcomer's
    /// plus one at most (many identities with a record each, say), it takes
    /// the place of the record farthest from this node in the keyspace, if
    /// it is nearer and that record's subject holds more than the
    /// newcomer's: the records a node is responsible for, near it, win over
    /// records pushed at it from anywhere. Otherwise it is refused.
    /// Defaults to 65 536.
    pub max_records: usize,
    /// Longest lifetime a record may claim (its expiry minus now).
    /// Defaults to 8 days.
    pub max_ttl: Duration,
    /// Namespaces served: exact names, or prefixes written `prefix*`.
    /// Empty: every namespace. Defaults to empty.
    pub namespaces: Vec<String>,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_records: 65_536,
            max_ttl: Duration::from_secs(8 * 24 * 3600),
            namespaces: Vec::new(),
        }
    }
}

impl StoreLimits {
    /// Whether records in `namespace` are stored.
    pub fn serves(&self, namespace: &str) -> bool {
        self.namespaces.is_empty()
            || self.namespaces.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => namespace.starts_with(prefix),
                None => n == namespace,
            })
    }
}

/// How far the record under `key` is from `local` in the keyspace (as
/// Kademlia measures it: the XOR of their SHA-256 hashes).
fn distance(local: &KBucketKey<PeerId>, key: &[u8]) -> KBucketDistance {
    local.distance(&KBucketKey::new(key.to_vec()))
}

/// The subject part of a record key (`/<namespace>/<subject>`).
fn owner_of(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    text.rsplit('/').next().unwrap_or_default().to_string()
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("records", &self.tree.len())
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens the store in `db` for the local peer `local`, with the default
    /// limits.
    pub fn open(local: PeerId, db: &sled::Db) -> Result<Self, sled::Error> {
        Self::open_with(local, db, StoreLimits::default())
    }

    /// Opens the store with `limits`.
    pub fn open_with(
        local: PeerId,
        db: &sled::Db,
        limits: StoreLimits,
    ) -> Result<Self, sled::Error> {
        let tree = db.open_tree(TREE)?;
        let local_key = KBucketKey::from(local);
        let mut owners = Owners::new();
        let mut by_distance = BTreeSet::new();
        for key in tree.iter().keys() {
            let key = key?.to_vec();
            by_distance.insert((distance(&local_key, &key), key.clone()));
            owners.entry(owner_of(&key)).or_default().insert(key);
        }
        Ok(Self {
            tree,
            providers: MemoryStore::new(local),
            limits,
            owners: Mutex::new(owners),
            local: local_key,
            by_distance: Mutex::new(by_distance),
        })
    }

    /// The keys held per subject. A poisoned lock (a thread panicked
    /// holding it, so the counts may be half updated) is refused, not
    /// recovered: admission decisions read these counts, and fail closed.
    fn owners(&self) -> Result<MutexGuard<'_, Owners>, crate::RecordError> {
        self.owners.lock().map_err(|_| {
            warn!("dht store: the per-subject index is poisoned; refusing records");
            crate::RecordError::StorePoisoned
        })
    }

    /// The keys held by distance; a poisoned lock is refused as in
    /// [`Self::owners`].
    fn by_distance(&self) -> Result<MutexGuard<'_, ByDistance>, crate::RecordError> {
        self.by_distance.lock().map_err(|_| {
            warn!("dht store: the distance index is poisoned; refusing records");
            crate::RecordError::StorePoisoned
        })
    }

    /// Removes the record under `key`. The record goes even when an index
    /// is poisoned (nothing is admitted then anyway).
    fn forget(&self, key: &[u8]) {
        let _ = self.tree.remove(key);
        if let Ok(mut by_distance) = self.by_distance() {
            by_distance.remove(&(distance(&self.local, key), key.to_vec()));
        }
        let owner = owner_of(key);
        if let Ok(mut owners) = self.owners() {
            if let Some(keys) = owners.get_mut(&owner) {
                keys.remove(key);
                if keys.is_empty() {
                    owners.remove(&owner);
                }
            }
        }
    }

    /// Makes room for the record under `key`, or says why not.
    fn make_room(&self, key: &[u8]) -> Result<(), crate::RecordError> {
        if self.tree.len() < self.limits.max_records {
            return Ok(());
        }
        let owner = owner_of(key);
        let victim = {
            let owners = self.owners()?;
            let by_distance = self.by_distance()?;
            let mine = owners.get(&owner).map_or(0, BTreeSet::len);
            owners
                .iter()
                .max_by_key(|(_, keys)| keys.len())
                .filter(|(_, keys)| keys.len() > mine + 1)
                .and_then(|(_, keys)| keys.iter().next().cloned())
                .or_else(|| {
                    // Every subject holds about as many as the newcomer's:
                    // the farthest record of a subject holding more gives
                    // way, if the newcomer is nearer.
                    let near = distance(&self.local, key);
                    by_distance
                        .iter()
                        .rev()
                        .take(MAX_FAR_SCAN)
                        .take_while(|(d, _)| *d > near)
                        .find(|(_, k)| {
                            let theirs = owner_of(k);
                            theirs != owner && owners.get(&theirs).map_or(0, BTreeSet::len) > mine
                        })
                        .map(|(_, k)| k.clone())
                })
        };
        match victim {
            Some(key) => {
                self.forget(&key);
                Ok(())
            }
            None => Err(crate::RecordError::StoreFull),
        }
    }

    /// Reads and validates the record under `key` at `now_ms`; removes it if
    /// it has expired or no longer validates.
    pub fn get_verified(&self, key: &[u8], now_ms: u64) -> Option<VerifiedRecord> {
        let bytes = self.tree.get(key).ok()??;
        match SignedRecord::validate(&bytes, key, now_ms) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "dropping stored record");
                self.forget(key);
                None
            }
        }
    }

    /// Stores a verified record if it may replace what is held. Returns
    /// whether it was written.
    ///
    /// Refused: a namespace not served, an expiry further than the limits
    /// allow, a new record when the store is full of records of
    /// subjects holding fewer than the biggest holder (see
    /// [`StoreLimits`]), and every record once the store's indexes are
    /// poisoned ([`crate::RecordError::StorePoisoned`]).
    pub fn put_verified(&self, record: &VerifiedRecord) -> Result<bool, crate::RecordError> {
        // Fail closed before anything is read or written.
        drop(self.owners()?);
        drop(self.by_distance()?);
        if !self.limits.serves(&record.namespace) {
            return Err(crate::RecordError::NamespaceNotServed(
                record.namespace.clone(),
            ));
        }
        let now = now_ms();
        let max_ms = now.saturating_add(self.limits.max_ttl.as_millis() as u64);
        if record.expires_ms > max_ms {
            return Err(crate::RecordError::ExpiryTooFar {
                expires_ms: record.expires_ms,
                max_ms,
            });
        }
        let key = record.key();
        match self.get_verified(&key, now) {
            Some(existing) => {
                record.may_replace(&existing)?;
                if existing.signed == record.signed {
                    return Ok(false);
                }
            }
            None => self.make_room(&key)?,
        }
        let bytes = record.signed.to_bytes()?;
        // Both indexes are taken before the write, so a record is never
        // stored without being counted.
        let mut owners = self.owners()?;
        let mut by_distance = self.by_distance()?;
        if let Err(e) = self.tree.insert(key.clone(), bytes) {
            warn!(error = %e, "dht store write failed");
            return Ok(false);
        }
        by_distance.insert((distance(&self.local, &key), key.clone()));
        owners.entry(owner_of(&key)).or_default().insert(key);
        Ok(true)
    }

    /// Number of stored records.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

/// Converts a verified record into libp2p-kad's form.
pub(crate) fn to_kad(v: &VerifiedRecord, bytes: Vec<u8>, now_ms: u64) -> Record {
    let ttl = Duration::from_millis(v.expires_ms.saturating_sub(now_ms));
    Record {
        key: RecordKey::new(&v.key()),
        value: bytes,
        publisher: Some(v.subject),
        expires: Instant::now().checked_add(ttl),
    }
}

impl RecordStore for SledStore {
    type RecordsIter<'a> = std::vec::IntoIter<Cow<'a, Record>>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        let now = now_ms();
        let v = self.get_verified(k.as_ref(), now)?;
        let bytes = v.signed.to_bytes().ok()?;
        Some(Cow::Owned(to_kad(&v, bytes, now)))
    }

    fn put(&mut self, r: Record) -> StoreResult<()> {
        // Records reach the store from our own `put` and from inbound
        // requests that the behaviour has already validated; validate again
        // so the store can never hold an invalid record.
        match SignedRecord::validate(&r.value, r.key.as_ref(), now_ms()) {
            Ok(v) => {
                if let Err(e) = self.put_verified(&v) {
                    tracing::debug!(error = %e, "record not stored");
                }
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "refusing invalid record");
                Err(libp2p::kad::store::Error::ValueTooLarge)
            }
        }
    }

    fn remove(&mut self, k: &RecordKey) {
        self.forget(k.as_ref());
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        let now = now_ms();
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let rec = SignedRecord::validate(&v, &k, now).ok()?;
                Some(Cow::Owned(to_kad(&rec, v.to_vec(), now)))
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> StoreResult<()> {
        self.providers.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.providers.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn record_in(key: &Keypair, ns: &str, expires: u64) -> VerifiedRecord {
        SignedRecord::sign(key, ns, b"x".to_vec(), 1, expires)
            .unwrap()
            .verify(0)
            .unwrap()
    }

    #[test]
    fn namespaces_and_lifetimes_outside_the_limits_are_refused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let key = Keypair::generate_ed25519();
        let limits = StoreLimits {
            namespaces: vec!["card".into(), "rv-*".into()],
            ..StoreLimits::default()
        };
        let store = SledStore::open_with(key.public().to_peer_id(), &db, limits).unwrap();
        let soon = now_ms() + 3_600_000;
        assert_eq!(store.put_verified(&record_in(&key, "card", soon)), Ok(true));
        assert_eq!(
            store.put_verified(&record_in(&key, "rv-00ff", soon)),
            Ok(true)
        );
        assert_eq!(
            store.put_verified(&record_in(&key, "notes", soon)),
            Err(crate::RecordError::NamespaceNotServed("notes".into()))
        );
        let far = now_ms() + 30 * 24 * 3_600_000;
        assert!(matches!(
            store.put_verified(&record_in(&Keypair::generate_ed25519(), "card", far)),
            Err(crate::RecordError::ExpiryTooFar { .. })
        ));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_full_store_makes_room_from_the_biggest_holder_only() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            max_records: 10,
            ..StoreLimits::default()
        };
        let flooder = Keypair::generate_ed25519();
        let honest = Keypair::generate_ed25519();
        let soon = now_ms() + 3_600_000;
        {
            let db = sled::open(dir.path()).unwrap();
            let store =
                SledStore::open_with(flooder.public().to_peer_id(), &db, limits.clone()).unwrap();
            for i in 0..10 {
                assert_eq!(
                    store.put_verified(&record_in(&flooder, &format!("ns{i}"), soon)),
                    Ok(true)
                );
            }
            // Full of one subject's records: the flooder cannot add more...
            assert_eq!(
                store.put_verified(&record_in(&flooder, "ns10", soon)),
                Err(crate::RecordError::StoreFull)
            );
            // ...but another subject's record takes the place of one of them.
            assert_eq!(
                store.put_verified(&record_in(&honest, "card", soon)),
                Ok(true)
            );
            assert_eq!(store.len(), 10);
            db.flush().unwrap();
        }
        // The counts survive a restart.
        let db = sled::open(dir.path()).unwrap();
        let store = SledStore::open_with(flooder.public().to_peer_id(), &db, limits).unwrap();
        let key = crate::record_key("card", &honest.public().to_peer_id());
        assert!(store.get_verified(&key, now_ms()).is_some());
        let third = Keypair::generate_ed25519();
        assert_eq!(
            store.put_verified(&record_in(&third, "card", soon)),
            Ok(true)
        );
        assert_eq!(
            store.put_verified(&record_in(&flooder, "ns11", soon)),
            Err(crate::RecordError::StoreFull)
        );
        assert_eq!(store.len(), 10);
    }

    #[test]
    fn a_store_full_of_one_record_each_keeps_the_nearest() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let limits = StoreLimits {
            max_records: 10,
            ..StoreLimits::default()
        };
        let store = SledStore::open_with(local, &db, limits).unwrap();
        let soon = now_ms() + 3_600_000;
        let here = KBucketKey::from(local);
        let far_of =
            |k: &Keypair| distance(&here, &crate::record_key("card", &k.public().to_peer_id()));
        // Ten identities, a card each: full, every subject at one.
        let mut held: Vec<Keypair> = (0..10).map(|_| Keypair::generate_ed25519()).collect();
        for k in &held {
            assert_eq!(store.put_verified(&record_in(k, "card", soon)), Ok(true));
        }
        held.sort_by_key(|k| far_of(k));
        let (nearest, farthest) = (far_of(&held[0]), far_of(&held[9]));
        // A newcomer farther than all of them is refused...
        let outer = std::iter::repeat_with(Keypair::generate_ed25519)
            .find(|k| far_of(k) > farthest)
            .unwrap();
        assert_eq!(
            store.put_verified(&record_in(&outer, "card", soon)),
            Err(crate::RecordError::StoreFull)
        );
        // ...one nearer than the farthest takes its place.
        let inner = std::iter::repeat_with(Keypair::generate_ed25519)
            .find(|k| far_of(k) < nearest)
            .unwrap();
        assert_eq!(
            store.put_verified(&record_in(&inner, "card", soon)),
            Ok(true)
        );
        assert_eq!(store.len(), 10);
        let gone = crate::record_key("card", &held[9].public().to_peer_id());
        assert!(store.get_verified(&gone, now_ms()).is_none());
        let kept = crate::record_key("card", &inner.public().to_peer_id());
        assert!(store.get_verified(&kept, now_ms()).is_some());
        // The subject that gained a record cannot push out more: its
        // second record, however near, is refused.
        let again = record_in(&inner, "rv-00", soon);
        assert_eq!(
            store.put_verified(&again),
            Err(crate::RecordError::StoreFull)
        );
    }

    #[test]
    fn a_poisoned_index_refuses_every_record() {
        for which in ["owners", "by_distance"] {
            let db = sled::Config::new().temporary(true).open().unwrap();
            let key = Keypair::generate_ed25519();
            let store = SledStore::open(key.public().to_peer_id(), &db).unwrap();
            let soon = now_ms() + 3_600_000;
            assert_eq!(store.put_verified(&record_in(&key, "card", soon)), Ok(true));
            // A thread panics while holding the lock.
            std::thread::scope(|s| {
                let poisoned = s
                    .spawn(|| {
                        let _held = (
                            (which == "owners").then(|| store.owners.lock().unwrap()),
                            (which == "by_distance").then(|| store.by_distance.lock().unwrap()),
                        );
                        panic!("poisoning the {which} lock");
                    })
                    .join();
                assert!(poisoned.is_err());
            });
            // The counts may be half updated: nothing more is admitted,
            // not even from a subject the store has never seen.
            let newcomer = Keypair::generate_ed25519();
            assert_eq!(
                store.put_verified(&record_in(&newcomer, "card", soon)),
                Err(crate::RecordError::StorePoisoned),
                "{which}"
            );
            assert_eq!(
                store.put_verified(&record_in(&key, "rv-00", soon)),
                Err(crate::RecordError::StorePoisoned),
                "{which}"
            );
            assert_eq!(store.len(), 1);
            // What is held is still served.
            let held = crate::record_key("card", &key.public().to_peer_id());
            assert!(store.get_verified(&held, now_ms()).is_some());
        }
    }

    /// The flood: 10 000 records, each in a namespace never seen
    /// before. A store serving only known namespaces takes none of them; a
    /// store serving every namespace holds at most `max_records`, and
    /// another subject still gets in.
    #[test]
    fn ten_thousand_records_in_fresh_namespaces_leave_the_store_bounded() {
        const FLOOD: usize = 10_000;
        const MAX: usize = 1_000;
        let flooder = Keypair::generate_ed25519();
        let soon = now_ms() + 3_600_000;
        let flood: Vec<VerifiedRecord> = (0..FLOOD)
            .map(|i| record_in(&flooder, &format!("fresh-{i}"), soon))
            .collect();
        let local = Keypair::generate_ed25519().public().to_peer_id();

        let db = sled::Config::new().temporary(true).open().unwrap();
        let known = StoreLimits {
            namespaces: vec!["card".into(), "rv-*".into()],
            max_records: MAX,
            ..StoreLimits::default()
        };
        let store = SledStore::open_with(local, &db, known).unwrap();
        let refused = flood
            .iter()
            .filter(|r| {
                matches!(
                    store.put_verified(r),
                    Err(crate::RecordError::NamespaceNotServed(_))
                )
            })
            .count();
        assert_eq!(refused, FLOOD);
        assert_eq!(store.len(), 0);
        assert_eq!(store.owners().unwrap().len(), 0);
        assert_eq!(store.by_distance().unwrap().len(), 0);

        let db = sled::Config::new().temporary(true).open().unwrap();
        let every = StoreLimits {
            max_records: MAX,
            ..StoreLimits::default()
        };
        let store = SledStore::open_with(local, &db, every).unwrap();
        let mut full = 0;
        for r in &flood {
            match store.put_verified(r) {
                Ok(true) => {}
                Err(crate::RecordError::StoreFull) => full += 1,
                other => panic!("unexpected {other:?}"),
            }
            assert!(store.len() <= MAX);
        }
        assert_eq!(full, FLOOD - MAX);
        assert_eq!(store.len(), MAX);
        // The indexes are bounded with the tree.
        assert_eq!(store.by_distance().unwrap().len(), MAX);
        assert_eq!(
            store
                .owners()
                .unwrap()
                .values()
                .map(BTreeSet::len)
                .sum::<usize>(),
            MAX
        );
        let honest = Keypair::generate_ed25519();
        assert_eq!(
            store.put_verified(&record_in(&honest, "card", soon)),
            Ok(true)
        );
        assert_eq!(store.len(), MAX);
    }

    #[test]
    fn persists_and_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keypair::generate_ed25519();
        let peer = k.public().to_peer_id();
        let key = crate::record_key("card", &peer);
        {
            let db = sled::open(dir.path()).unwrap();
            let mut s = SledStore::open(peer, &db).unwrap();
            let r2 =
                SignedRecord::sign(&k, "card", b"two".to_vec(), 2, now_ms() + 3_600_000).unwrap();
            let r1 =
                SignedRecord::sign(&k, "card", b"one".to_vec(), 1, now_ms() + 3_600_000).unwrap();
            s.put(Record::new(key.clone(), r2.to_bytes().unwrap()))
                .unwrap();
            s.put(Record::new(key.clone(), r1.to_bytes().unwrap()))
                .unwrap();
            // invalid bytes are refused
            assert!(s.put(Record::new(key.clone(), vec![1, 2, 3])).is_err());
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let s = SledStore::open(peer, &db).unwrap();
        let got = s.get_verified(&key, now_ms()).unwrap();
        assert_eq!(got.payload, b"two");
        assert_eq!(s.records().count(), 1);
    }
}
