//! A map with a hard cap on its size, for per-peer state that strangers can
//! create at will (rate limiter buckets, circuit breakers, deposit windows).
//!
//! Each entry carries an *idle-at* time: from then on, dropping it loses
//! nothing (a bucket that has refilled, a breaker that is closed). When the
//! map is full and a new key arrives, the entry that has been idle longest
//! goes first; when none is idle, the least recently used one goes. So a
//! flood of fresh keys evicts other flood keys, not the state of a peer that
//! is still being limited. Nothing here reads the clock: callers pass `now`.
//!
//! ```
//! use agentmesh_node::lru::BoundedLru;
//!
//! let mut m: BoundedLru<&str, u32> = BoundedLru::new(2);
//! // (value, idle at): "a" is idle from t = 10, "b" never.
//! m.upsert("a", 0, || 0, |v| { *v += 1; ((), 10) });
//! m.upsert("b", 0, || 0, |v| { *v += 1; ((), u64::MAX) });
//! // At t = 20 a third key evicts "a", idle since 10, although "a" is older.
//! m.upsert("c", 20, || 0, |_| ((), u64::MAX));
//! assert!(m.get(&"a").is_none());
//! assert_eq!(m.get(&"b"), Some(&1));
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

#[derive(Debug, Clone)]
struct Slot<V> {
    value: V,
    /// Recency stamp: larger is more recent.
    tick: u64,
    /// From when dropping the entry loses nothing.
    idle_at: u64,
}

/// A map of at most `max` entries, evicting the longest idle entry, or else
/// the least recently used one. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct BoundedLru<K, V> {
    max: usize,
    entries: HashMap<K, Slot<V>>,
    /// Keys by recency stamp: the first is the least recently used.
    by_recency: BTreeMap<u64, K>,
    /// Keys by (idle at, recency stamp): the first is the first idle.
    by_idle: BTreeMap<(u64, u64), K>,
    next_tick: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedLru<K, V> {
    /// An empty map holding at most `max` entries (`0` is treated as 1).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            entries: HashMap::new(),
            by_recency: BTreeMap::new(),
            by_idle: BTreeMap::new(),
            next_tick: 0,
        }
    }

    /// The most entries held at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many entries are held (never more than [`max`](Self::max)).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value for `key`, without marking it used.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|s| &s.value)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, s)| (k, &s.value))
    }

    /// Applies `f` to `key`'s value, inserting `make()` first if the key is
    /// new (evicting another entry at `now` if the map is full), and marks
    /// it the most recently used. `f` returns its result and the entry's new
    /// idle-at time.
    pub fn upsert<R>(
        &mut self,
        key: K,
        now: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> (R, u64),
    ) -> R {
        let tick = self.bump_tick();
        let mut slot = match self.take_slot(&key) {
            Some(s) => s,
            None => {
                while self.entries.len() >= self.max {
                    if !self.evict_one(now) {
                        break;
                    }
                }
                Slot {
                    value: make(),
                    tick,
                    idle_at: u64::MAX,
                }
            }
        };
        let (r, idle_at) = f(&mut slot.value);
        slot.tick = tick;
        slot.idle_at = idle_at;
        self.put_slot(key, slot);
        r
    }

    /// Applies `f` to `key`'s value, if held, without marking it used; `f`
    /// returns its result and the entry's new idle-at time.
    pub fn update<R>(&mut self, key: &K, f: impl FnOnce(&mut V) -> (R, u64)) -> Option<R> {
        let (key, mut slot) = self.entries.remove_entry(key)?;
        self.by_recency.remove(&slot.tick);
        self.by_idle.remove(&(slot.idle_at, slot.tick));
        let (r, idle_at) = f(&mut slot.value);
        slot.idle_at = idle_at;
        self.put_slot(key, slot);
        Some(r)
    }

    /// Applies `f` to every entry, without marking any used; `f` returns
    /// each entry's new idle-at time.
    pub fn update_all(&mut self, mut f: impl FnMut(&K, &mut V) -> u64) {
        self.by_idle.clear();
        for (key, slot) in &mut self.entries {
            slot.idle_at = f(key, &mut slot.value);
            self.by_idle.insert((slot.idle_at, slot.tick), key.clone());
        }
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (_, slot) = self.take_entry(key)?;
        Some(slot.value)
    }

    /// Removes `key`'s entry, returning the stored key with its value.
    pub fn remove_entry(&mut self, key: &K) -> Option<(K, V)> {
        let (key, slot) = self.take_entry(key)?;
        Some((key, slot.value))
    }

    /// Stores `value` for `key` (replacing any), idle from `idle_at`, as the
    /// most recently used entry, evicting another at `now` if the map is
    /// full.
    pub fn insert(&mut self, key: K, value: V, idle_at: u64, now: u64) {
        let tick = self.bump_tick();
        if self.take_entry(&key).is_none() {
            while self.entries.len() >= self.max {
                if !self.evict_one(now) {
                    break;
                }
            }
        }
        self.put_slot(
            key,
            Slot {
                value,
                tick,
                idle_at,
            },
        );
    }

    fn take_slot(&mut self, key: &K) -> Option<Slot<V>> {
        self.take_entry(key).map(|(_, s)| s)
    }

    fn take_entry(&mut self, key: &K) -> Option<(K, Slot<V>)> {
        let (key, slot) = self.entries.remove_entry(key)?;
        self.by_recency.remove(&slot.tick);
        self.by_idle.remove(&(slot.idle_at, slot.tick));
        Some((key, slot))
    }

    fn put_slot(&mut self, key: K, slot: Slot<V>) {
        self.by_recency.insert(slot.tick, key.clone());
        self.by_idle.insert((slot.idle_at, slot.tick), key.clone());
        self.entries.insert(key, slot);
    }

    /// Drops the entry idle longest if one is idle at `now`, or else the
    /// least recently used. Returns whether one was dropped.
    fn evict_one(&mut self, now: u64) -> bool {
        let idle = self
            .by_idle
            .first_key_value()
            .filter(|((idle_at, _), _)| *idle_at <= now)
            .map(|(_, k)| k.clone());
        let lru = || self.by_recency.first_key_value().map(|(_, k)| k.clone());
        let Some(victim) = idle.or_else(lru) else {
            return false;
        };
        self.take_entry(&victim).is_some()
    }

    /// A fresh recency stamp; stamps are renumbered densely in the (never
    /// expected) case the counter runs out.
    fn bump_tick(&mut self) -> u64 {
        if self.next_tick == u64::MAX {
            self.renumber();
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        tick
    }

    /// Reassigns recency stamps `0..len` in the same order.
    fn renumber(&mut self) {
        let old = std::mem::take(&mut self.by_recency);
        self.by_idle.clear();
        let mut next = 0u64;
        for (_, key) in old {
            if let Some(slot) = self.entries.get_mut(&key) {
                slot.tick = next;
                self.by_idle.insert((slot.idle_at, next), key.clone());
                self.by_recency.insert(next, key);
                next += 1;
            }
        }
        self.next_tick = next;
    }

    /// Checks the indexes against the map (for tests).
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        assert!(self.entries.len() <= self.max);
        assert_eq!(self.by_recency.len(), self.entries.len());
        assert_eq!(self.by_idle.len(), self.entries.len());
        for (k, s) in &self.entries {
            assert!(self.by_recency.get(&s.tick) == Some(k));
            assert!(self.by_idle.get(&(s.idle_at, s.tick)) == Some(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn touch(m: &mut BoundedLru<u32, u32>, k: u32, now: u64, idle_at: u64) {
        m.upsert(
            k,
            now,
            || 0,
            |v| {
                *v += 1;
                ((), idle_at)
            },
        );
    }

    #[test]
    fn evicts_the_longest_idle_then_the_least_recently_used() {
        let mut m = BoundedLru::new(3);
        touch(&mut m, 1, 0, u64::MAX);
        touch(&mut m, 2, 0, 50);
        touch(&mut m, 3, 0, 40);
        // At 45 only 3 is idle: it goes, although 1 is older.
        touch(&mut m, 4, 45, u64::MAX);
        assert!(m.get(&3).is_none());
        // At 100, 2 is idle.
        touch(&mut m, 5, 100, u64::MAX);
        assert!(m.get(&2).is_none());
        // Nothing idle: the least recently used (1) goes.
        touch(&mut m, 6, 100, u64::MAX);
        assert!(m.get(&1).is_none());
        assert_eq!(m.len(), 3);
        m.assert_consistent();
    }

    #[test]
    fn update_does_not_touch_recency_and_remove_frees_room() {
        let mut m = BoundedLru::new(2);
        touch(&mut m, 1, 0, u64::MAX);
        touch(&mut m, 2, 0, u64::MAX);
        assert_eq!(m.update(&1, |v| (*v, u64::MAX)), Some(1));
        assert_eq!(m.update(&9, |v| (*v, 0)), None);
        touch(&mut m, 3, 0, u64::MAX);
        assert!(m.get(&1).is_none(), "1 stayed least recently used");
        assert_eq!(m.remove(&2), Some(1));
        touch(&mut m, 4, 0, u64::MAX);
        assert_eq!(m.len(), 2);
        m.update_all(|_, _| 7);
        m.assert_consistent();
    }

    #[test]
    fn renumbering_keeps_the_order() {
        let mut m = BoundedLru::new(3);
        for k in 0..3 {
            touch(&mut m, k, 0, u64::MAX);
        }
        m.next_tick = u64::MAX;
        touch(&mut m, 0, 0, u64::MAX);
        m.assert_consistent();
        touch(&mut m, 9, 0, u64::MAX);
        assert!(m.get(&1).is_none(), "1 is the least recently used");
    }

    proptest! {
        #[test]
        fn never_over_the_cap_and_always_consistent(
            max in 1usize..8,
            ops in proptest::collection::vec((0u32..20, 0u64..100, 0u64..200, 0u8..3), 0..200),
        ) {
            let mut m = BoundedLru::new(max);
            for (k, now, idle, op) in ops {
                match op {
                    0 => touch(&mut m, k, now, idle),
                    1 => { m.update(&k, |v| (*v, idle)); }
                    _ => { m.remove(&k); }
                }
                prop_assert!(m.len() <= max);
                m.assert_consistent();
            }
        }

        #[test]
        fn a_busy_key_survives_a_flood_of_fresh_ones(flood in 1u32..500) {
            // Key 0 is never idle and touched between flood keys, which are
            // idle at once: they evict each other, never key 0.
            let mut m = BoundedLru::new(4);
            touch(&mut m, 0, 0, u64::MAX);
            for k in 1..=flood {
                touch(&mut m, k, u64::from(k), 0);
                touch(&mut m, 0, u64::from(k), u64::MAX);
            }
            prop_assert_eq!(m.get(&0), Some(&(flood + 1)));
        }
    }
}
