//! A Kademlia record store on sled.
//!
//! Records are kept as the exact signed bytes that travelled, keyed by their
//! DHT key, and re-validated when read, so an expired or corrupt entry is
//! never served. Provider records are kept in memory (they are short-lived
//! and re-announced).

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use libp2p::{
    kad::{
        store::{MemoryStore, RecordStore, Result as StoreResult},
        ProviderRecord, Record, RecordKey,
    },
    PeerId,
};
use tracing::warn;

use crate::record::{now_ms, SignedRecord, VerifiedRecord};

/// Name of the sled tree holding records.
const TREE: &str = "dht-records";

/// A sled-backed [`RecordStore`] that holds only valid signed records.
pub struct SledStore {
    tree: sled::Tree,
    providers: MemoryStore,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("records", &self.tree.len())
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens the store in `db` for the local peer `local`.
    pub fn open(local: PeerId, db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            tree: db.open_tree(TREE)?,
            providers: MemoryStore::new(local),
        })
    }

    /// Reads and validates the record under `key` at `now_ms`; removes it if
    /// it has expired or no longer validates.
    pub fn get_verified(&self, key: &[u8], now_ms: u64) -> Option<VerifiedRecord> {
        let bytes = self.tree.get(key).ok()??;
        match SignedRecord::validate(&bytes, key, now_ms) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "dropping stored record");
                let _ = self.tree.remove(key);
                None
            }
        }
    }

    /// Stores a verified record if it may replace what is held. Returns
    /// whether it was written.
    pub fn put_verified(&self, record: &VerifiedRecord) -> Result<bool, crate::RecordError> {
        let key = record.key();
        if let Some(existing) = self.get_verified(&key, now_ms()) {
            record.may_replace(&existing)?;
            if existing.signed == record.signed {
                return Ok(false);
            }
        }
        let bytes = record.signed.to_bytes()?;
        if let Err(e) = self.tree.insert(key, bytes) {
            warn!(error = %e, "dht store write failed");
            return Ok(false);
        }
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
        let _ = self.tree.remove(k.as_ref());
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

    #[test]
    fn persists_and_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keypair::generate_ed25519();
        let peer = k.public().to_peer_id();
        let key = crate::record_key("card", &peer);
        {
            let db = sled::open(dir.path()).unwrap();
            let mut s = SledStore::open(peer, &db).unwrap();
            let r2 = SignedRecord::sign(&k, "card", b"two".to_vec(), 2, u64::MAX).unwrap();
            let r1 = SignedRecord::sign(&k, "card", b"one".to_vec(), 1, u64::MAX).unwrap();
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
