//! The routing table: 256 k-buckets by XOR distance, least recently seen
//! first, with one pending entry per full bucket (libp2p-kad's
//! `OnConnected` policy).

use std::collections::BTreeMap;

use super::{Contact, KadKey};

/// One bucket: at most `k` entries, least recently seen first.
#[derive(Debug, Clone)]
struct Bucket<P> {
    entries: Vec<Entry<P>>,
    /// A peer waiting for a place, and since when.
    pending: Option<(Contact<P>, u64)>,
}

#[derive(Debug, Clone)]
struct Entry<P> {
    contact: Contact<P>,
    last_seen: u64,
}

/// A Kademlia routing table. Buckets are created on first use, so a table
/// holding a few hundred contacts costs a few kilobytes.
#[derive(Debug, Clone)]
pub(crate) struct RoutingTable<P> {
    local: KadKey,
    k: usize,
    pending_timeout_ms: u64,
    buckets: BTreeMap<u8, Bucket<P>>,
}

impl<P: Clone + Eq> RoutingTable<P> {
    pub(crate) fn new(local: KadKey, k: usize, pending_timeout_ms: u64) -> Self {
        Self {
            local,
            k,
            pending_timeout_ms,
            buckets: BTreeMap::new(),
        }
    }

    /// Number of contacts held.
    pub(crate) fn len(&self) -> usize {
        self.buckets.values().map(|b| b.entries.len()).sum()
    }

    /// Records that `contact` answered or asked us something at `now`.
    /// Returns true if the contact is (now) in the table.
    pub(crate) fn seen(&mut self, contact: &Contact<P>, now: u64) -> bool {
        let Some(index) = self.local.bucket_index(&contact.key) else {
            return false;
        };
        let k = self.k;
        let pending_timeout = self.pending_timeout_ms;
        let bucket = self.buckets.entry(index).or_insert_with(|| Bucket {
            entries: Vec::new(),
            pending: None,
        });
        if let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.id == contact.id)
        {
            let mut entry = bucket.entries.remove(pos);
            entry.last_seen = now;
            entry.contact.key = contact.key;
            bucket.entries.push(entry);
            return true;
        }
        if bucket.entries.len() < k {
            bucket.entries.push(Entry {
                contact: contact.clone(),
                last_seen: now,
            });
            return true;
        }
        // Full: the least recently seen entry gives way to a pending peer
        // if it has not been heard of since the peer started waiting for
        // longer than the pending timeout.
        match &bucket.pending {
            Some((waiting, since)) => {
                let oldest_seen = bucket.entries.first().map_or(0, |e| e.last_seen);
                if now.saturating_sub(*since) >= pending_timeout && oldest_seen < *since {
                    let promoted = waiting.clone();
                    bucket.entries.remove(0);
                    bucket.entries.push(Entry {
                        contact: promoted.clone(),
                        last_seen: now,
                    });
                    bucket.pending = None;
                    if promoted.id == contact.id {
                        return true;
                    }
                    bucket.pending = Some((contact.clone(), now));
                } else if waiting.id == contact.id {
                    // Still waiting.
                } else if now.saturating_sub(*since) >= pending_timeout {
                    bucket.pending = Some((contact.clone(), now));
                }
            }
            None => bucket.pending = Some((contact.clone(), now)),
        }
        false
    }

    /// Removes a contact that failed to answer; a pending peer takes its
    /// place.
    pub(crate) fn remove(&mut self, id: &P, key: &KadKey, now: u64) -> bool {
        let Some(index) = self.local.bucket_index(key) else {
            return false;
        };
        let Some(bucket) = self.buckets.get_mut(&index) else {
            return false;
        };
        let Some(pos) = bucket.entries.iter().position(|e| &e.contact.id == id) else {
            if bucket.pending.as_ref().is_some_and(|(c, _)| &c.id == id) {
                bucket.pending = None;
            }
            return false;
        };
        bucket.entries.remove(pos);
        if let Some((contact, _)) = bucket.pending.take() {
            bucket.entries.push(Entry {
                contact,
                last_seen: now,
            });
        }
        if bucket.entries.is_empty() {
            self.buckets.remove(&index);
        }
        true
    }

    /// The `count` contacts closest to `target`, closest first.
    pub(crate) fn closest(&self, target: &KadKey, count: usize) -> Vec<Contact<P>> {
        let mut all: Vec<(Distance, &Contact<P>)> = self
            .buckets
            .values()
            .flat_map(|b| b.entries.iter())
            .map(|e| (e.contact.key.distance(target), &e.contact))
            .collect();
        all.sort_by_key(|a| a.0);
        all.into_iter()
            .take(count)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

/// XOR distance between two keys, compared as a big-endian number.
pub(crate) type Distance = [u8; 32];

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(n: u32) -> Contact<u32> {
        Contact::new(n, KadKey::from_bytes(&n.to_be_bytes()))
    }

    #[test]
    fn full_bucket_keeps_live_entries_and_promotes_pending_on_failure() {
        let local = KadKey::from_bytes(b"local");
        let mut table = RoutingTable::new(local, 2, 60_000);
        // Find three contacts that share one bucket.
        let mut same: Vec<Contact<u32>> = Vec::new();
        let mut n = 0;
        while same.len() < 3 {
            let c = contact(n);
            n += 1;
            if same.is_empty() || local.bucket_index(&c.key) == local.bucket_index(&same[0].key) {
                same.push(c);
            }
        }
        assert!(table.seen(&same[0], 0));
        assert!(table.seen(&same[1], 0));
        assert!(!table.seen(&same[2], 1), "full bucket: pending");
        assert_eq!(table.len(), 2);
        // Both entries answer again: they stay, the pending one waits.
        assert!(table.seen(&same[0], 10));
        assert!(table.seen(&same[1], 20));
        assert!(!table.seen(&same[2], 70_000));
        // A failure of an entry lets the pending peer in.
        assert!(table.remove(&same[1].id, &same[1].key, 80_000));
        let ids: Vec<u32> = table
            .closest(&local, 10)
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert!(ids.contains(&same[2].id));
        assert!(ids.contains(&same[0].id));
    }

    #[test]
    fn an_entry_not_heard_from_gives_way_to_a_waiting_peer() {
        let local = KadKey::from_bytes(b"local");
        let mut table = RoutingTable::new(local, 1, 60_000);
        let first = contact(0);
        let index = local.bucket_index(&first.key);
        let second = (1..)
            .map(contact)
            .find(|c| local.bucket_index(&c.key) == index)
            .unwrap();
        assert!(table.seen(&first, 0));
        assert!(!table.seen(&second, 1));
        assert!(
            !table.seen(&second, 30_000),
            "still within the pending timeout"
        );
        assert!(table.seen(&second, 61_000), "the silent entry is replaced");
        assert_eq!(table.closest(&local, 5), vec![second]);
    }

    #[test]
    fn closest_is_sorted_by_distance() {
        let local = KadKey::from_bytes(b"local");
        let mut table = RoutingTable::new(local, 20, 60_000);
        for n in 0..500 {
            table.seen(&contact(n), 0);
        }
        let target = KadKey::from_bytes(b"target");
        let closest = table.closest(&target, 20);
        assert_eq!(closest.len(), 20);
        for pair in closest.windows(2) {
            assert!(pair[0].key.distance(&target) <= pair[1].key.distance(&target));
        }
    }
}
