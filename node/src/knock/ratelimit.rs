//! Per-key token buckets: how many KNOCKs (or messages) one sender may send.
//!
//! Each key (usually a sender [`Amid`](crate::identity::Amid)) owns a bucket of
//! at most [`RateLimit::burst`] tokens that refills continuously at
//! [`RateLimit::per_minute`] tokens a minute. An acquisition takes one token;
//! an empty bucket refuses with a [`RetryAfter`] that says exactly when the
//! next token arrives. One key's flood never touches another key's bucket.
//!
//! This is protocol logic without I/O, in the style of libp2p's relay
//! `rate_limiter.rs` (`try_next(.., now)`): nothing here reads the clock.
//! Every method takes `now_ms`, milliseconds since the Unix epoch, so
//! simulations and property tests drive it with any timeline they like.
//!
//! # Adversarial inputs
//!
//! - **Exact arithmetic.** Balances are kept in units of 1/60 000 of a token,
//!   so a bucket gains exactly `per_minute` units per millisecond: no floats,
//!   no division, no rounding drift, and polling every millisecond refills as
//!   fast as polling once a minute.
//! - **Clock anomalies.** Time that goes backwards refills nothing and never
//!   rewinds a bucket's clock; `u64::MAX` timestamps saturate, never panic.
//! - **Bounded memory.** At most `max_keys` buckets are kept. When a new key
//!   arrives at capacity, a bucket that is already full is dropped first
//!   (dropping it loses nothing: an unknown key starts with a full bucket),
//!   otherwise the least recently used one. Both choices are `O(log n)`
//!   ([`BoundedLru`], with a bucket idle from the time it is full).
//!
//! Eviction of a non-full bucket forgets that key's debt, and any number of
//! fresh identities each start with a full bucket; per-key limits therefore
//! do not bound the total load of many identities. Pair this with a global
//! limiter (a `RateLimiter<()>`) where the total matters.

use std::hash::Hash;

use crate::lru::BoundedLru;

use serde::{Deserialize, Serialize};

/// Balance units per token. A bucket refilling at `per_minute` tokens a
/// minute gains exactly `per_minute` units each millisecond.
const UNITS_PER_TOKEN: u64 = 60_000;

/// A token-bucket limit: sustained rate and burst size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimit {
    /// Tokens added per minute, continuously (one every `60 000 / per_minute`
    /// ms). `0` means a bucket never refills. Defaults to 30.
    pub per_minute: u32,
    /// Capacity of a bucket: the most acquisitions allowed back to back after
    /// a quiet period. `0` refuses everything. Defaults to 30.
    pub burst: u32,
}

impl RateLimit {
    /// Default limit on KNOCKs per sender: 30 a minute, bursts of 30.
    pub const KNOCK_DEFAULT: Self = Self::new(30, 30);
    /// Default limit on messages per sender: 100 a minute, bursts of 100.
    pub const MESSAGE_DEFAULT: Self = Self::new(100, 100);

    /// A limit of `per_minute` tokens a minute with bursts of `burst`.
    pub const fn new(per_minute: u32, burst: u32) -> Self {
        Self { per_minute, burst }
    }

    /// The most acquisitions one key can get within any window of
    /// `window_ms` milliseconds (both ends included):
    /// `burst + floor(per_minute * window_ms / 60 000)`, saturating.
    pub fn max_in_window(&self, window_ms: u64) -> u64 {
        let refill =
            u128::from(self.per_minute) * u128::from(window_ms) / u128::from(UNITS_PER_TOKEN);
        u64::try_from(refill)
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(self.burst))
    }

    /// Capacity of a bucket, in units.
    fn capacity(&self) -> u64 {
        u64::from(self.burst).saturating_mul(UNITS_PER_TOKEN)
    }

    /// Units gained per millisecond.
    fn rate(&self) -> u64 {
        u64::from(self.per_minute)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::KNOCK_DEFAULT
    }
}

/// Refusal: the bucket is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("rate limited: next token in {ms} ms")]
#[non_exhaustive]
pub struct RetryAfter {
    /// Milliseconds from `now_ms` until the next token is available.
    /// `u64::MAX` means never under the current limit (`burst` or
    /// `per_minute` is 0).
    pub ms: u64,
}

impl RetryAfter {
    /// Whether no token will ever arrive under the current limit.
    pub fn is_never(&self) -> bool {
        self.ms == u64::MAX
    }

    /// The timestamp at which the next token is available, saturating.
    pub fn at_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.ms)
    }
}

/// One key's bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bucket {
    /// Balance, in units (`UNITS_PER_TOKEN` per token), at most the capacity.
    units: u64,
    /// Latest timestamp seen; the balance is as of this instant. Never
    /// decreases.
    updated_ms: u64,
}

impl Bucket {
    /// A full bucket as of `now_ms`.
    fn full(limit: &RateLimit, now_ms: u64) -> Self {
        Self {
            units: limit.capacity(),
            updated_ms: now_ms,
        }
    }

    /// Adds what accrued between `updated_ms` and `now_ms`. Time that goes
    /// backwards adds nothing and leaves `updated_ms` alone.
    fn refill(&mut self, limit: &RateLimit, now_ms: u64) {
        if now_ms <= self.updated_ms {
            return;
        }
        let gained = (now_ms - self.updated_ms).saturating_mul(limit.rate());
        self.units = self.units.saturating_add(gained).min(limit.capacity());
        self.updated_ms = now_ms;
    }

    /// Takes one token, or says how long after `now_ms` one will be there.
    fn take(&mut self, limit: &RateLimit, now_ms: u64) -> Result<(), RetryAfter> {
        if self.units >= UNITS_PER_TOKEN {
            self.units -= UNITS_PER_TOKEN;
            return Ok(());
        }
        let rate = limit.rate();
        if rate == 0 || limit.capacity() < UNITS_PER_TOKEN {
            return Err(RetryAfter { ms: u64::MAX });
        }
        let missing = UNITS_PER_TOKEN - self.units;
        // The balance is as of `updated_ms`, which is later than `now_ms`
        // when the clock went backwards.
        let ms = (self.updated_ms.saturating_sub(now_ms)).saturating_add(missing.div_ceil(rate));
        Err(RetryAfter { ms })
    }

    /// When the bucket will be full if nobody takes from it.
    fn compute_full_at(&self, limit: &RateLimit) -> u64 {
        let capacity = limit.capacity();
        if self.units >= capacity {
            return self.updated_ms;
        }
        match limit.rate() {
            0 => u64::MAX,
            rate => self
                .updated_ms
                .saturating_add((capacity - self.units).div_ceil(rate)),
        }
    }
}

/// Token buckets for many keys, with a bound on how many are remembered.
///
/// ```
/// use agentmesh_node::knock::ratelimit::{RateLimit, RateLimiter};
///
/// let mut limiter = RateLimiter::new(RateLimit::new(30, 2), 10_000);
/// let now_ms = 1_700_000_000_000;
/// assert!(limiter.try_acquire(&"alice", now_ms).is_ok());
/// assert!(limiter.try_acquire(&"alice", now_ms).is_ok());
/// let refused = limiter.try_acquire(&"alice", now_ms).unwrap_err();
/// assert_eq!(refused.ms, 2_000); // 30 a minute: one token every 2 s
/// assert!(limiter.try_acquire(&"bob", now_ms).is_ok());
/// assert!(limiter.try_acquire(&"alice", now_ms + 2_000).is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    limit: RateLimit,
    /// Each bucket is idle from the time it is full.
    buckets: BoundedLru<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter applying `limit` to each key, remembering at most
    /// `max_keys` buckets (`0` is treated as 1).
    pub fn new(limit: RateLimit, max_keys: usize) -> Self {
        Self {
            limit,
            buckets: BoundedLru::new(max_keys),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The most buckets remembered at once.
    pub fn max_keys(&self) -> usize {
        self.buckets.max()
    }

    /// How many buckets are remembered (never more than [`max_keys`](Self::max_keys)).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes a token from `key`'s bucket at `now_ms`, or says how long until
    /// the next one. A key seen for the first time starts with a full bucket;
    /// remembering it may evict another key's bucket (see the module docs).
    pub fn try_acquire(&mut self, key: &K, now_ms: u64) -> Result<(), RetryAfter> {
        let limit = self.limit;
        self.buckets.upsert(
            key.clone(),
            now_ms,
            || Bucket::full(&limit, now_ms),
            |bucket| {
                bucket.refill(&limit, now_ms);
                let result = bucket.take(&limit, now_ms);
                (result, bucket.compute_full_at(&limit))
            },
        )
    }

    /// Gives back one token taken from `key`'s bucket, for work that turned
    /// out not to count (never above the burst). Unknown keys are ignored.
    pub fn refund(&mut self, key: &K) {
        let limit = self.limit;
        self.buckets.update(key, |bucket| {
            bucket.units = bucket
                .units
                .saturating_add(UNITS_PER_TOKEN)
                .min(limit.capacity());
            ((), bucket.compute_full_at(&limit))
        });
    }

    /// Replaces the limit (e.g. on a config reload) without forgetting any
    /// bucket. Each bucket first accrues what it earned up to `now_ms` under
    /// the old limit; a balance above the new burst is cut to it, and a
    /// larger burst grants nothing at once (it fills at the new rate).
    pub fn set_limit(&mut self, limit: RateLimit, now_ms: u64) {
        let old = self.limit;
        self.limit = limit;
        self.buckets.update_all(|_, bucket| {
            bucket.refill(&old, now_ms);
            bucket.units = bucket.units.min(limit.capacity());
            bucket.compute_full_at(&limit)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Amid, Identity};
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000_000;

    fn amid(n: u8) -> Amid {
        Identity::from_seed(&[n; 32]).amid()
    }

    /// Checks the internal indexes agree with the buckets.
    fn assert_consistent<K: Hash + Eq + Clone + std::fmt::Debug>(l: &RateLimiter<K>) {
        l.buckets.assert_consistent();
        for (_, b) in l.buckets.iter() {
            assert!(b.units <= l.limit.capacity());
        }
    }

    fn holds<K: Hash + Eq + Clone>(l: &RateLimiter<K>, key: &K) -> bool {
        l.buckets.get(key).is_some()
    }

    #[test]
    fn defaults() {
        assert_eq!(RateLimit::default(), RateLimit::KNOCK_DEFAULT);
        assert_eq!(RateLimit::KNOCK_DEFAULT, RateLimit::new(30, 30));
        assert_eq!(RateLimit::MESSAGE_DEFAULT, RateLimit::new(100, 100));
        let parsed: RateLimit = serde_json::from_str(r#"{"per_minute": 5}"#).unwrap();
        assert_eq!(parsed, RateLimit::new(5, 30));
        let text = serde_json::to_string(&RateLimit::MESSAGE_DEFAULT).unwrap();
        assert_eq!(text, r#"{"per_minute":100,"burst":100}"#);
    }

    #[test]
    fn burst_then_refusal_with_exact_retry_after() {
        let mut l = RateLimiter::new(RateLimit::KNOCK_DEFAULT, 16);
        let a = amid(1);
        for _ in 0..30 {
            l.try_acquire(&a, T0).unwrap();
        }
        let refused = l.try_acquire(&a, T0).unwrap_err();
        assert_eq!(refused, RetryAfter { ms: 2_000 });
        assert_eq!(refused.at_ms(T0), T0 + 2_000);
        assert!(!refused.is_never());
        assert_eq!(l.try_acquire(&a, T0 + 1_999), Err(RetryAfter { ms: 1 }));
        l.try_acquire(&a, T0 + 2_000).unwrap();
        assert_eq!(l.try_acquire(&a, T0 + 2_000), Err(RetryAfter { ms: 2_000 }));
        assert_consistent(&l);
    }

    #[test]
    fn a_refunded_token_can_be_taken_again_but_never_above_the_burst() {
        let mut l = RateLimiter::new(RateLimit::KNOCK_DEFAULT, 16);
        let (a, b) = (amid(1), amid(2));
        // Unknown keys: nothing to give back, nothing remembered.
        l.refund(&a);
        assert!(l.is_empty());
        for _ in 0..30 {
            l.try_acquire(&a, T0).unwrap();
        }
        assert!(l.try_acquire(&a, T0).is_err());
        l.refund(&a);
        l.try_acquire(&a, T0).unwrap();
        assert!(l.try_acquire(&a, T0).is_err());
        assert_consistent(&l);
        // A full bucket stays at the burst.
        l.try_acquire(&b, T0).unwrap();
        l.refund(&b);
        l.refund(&b);
        for _ in 0..30 {
            l.try_acquire(&b, T0).unwrap();
        }
        assert!(l.try_acquire(&b, T0).is_err());
        assert_consistent(&l);
    }

    #[test]
    fn refills_continuously() {
        let mut l = RateLimiter::new(RateLimit::new(30, 30), 16);
        for _ in 0..30 {
            l.try_acquire(&1, T0).unwrap();
        }
        // 20 s at 30/min: 10 tokens.
        for _ in 0..10 {
            l.try_acquire(&1, T0 + 20_000).unwrap();
        }
        assert!(l.try_acquire(&1, T0 + 20_000).is_err());
        // A long pause refills to the burst, not beyond.
        for _ in 0..30 {
            l.try_acquire(&1, T0 + 3_600_000).unwrap();
        }
        assert!(l.try_acquire(&1, T0 + 3_600_000).is_err());
    }

    #[test]
    fn polling_every_ms_does_not_lose_fractions() {
        // 7 a minute does not divide 60 000 ms; exact units keep every
        // fraction of a token however often the bucket is polled. (A burst
        // of 2 keeps the cap out of the way: the bucket never holds more
        // than one token while it is polled.)
        let mut l = RateLimiter::new(RateLimit::new(7, 2), 4);
        l.try_acquire(&0u8, T0).unwrap();
        let granted = (0..=60_000u64)
            .filter(|t| l.try_acquire(&0u8, T0 + t).is_ok())
            .count();
        assert_eq!(granted, 1 + 7);
        assert!(l.try_acquire(&0u8, T0 + 60_000).is_err());
    }

    #[test]
    fn flooder_does_not_affect_well_behaved_sender() {
        // One sender at 10x the KNOCK limit, another
        // exactly at it, for ten minutes.
        let limit = RateLimit::KNOCK_DEFAULT;
        let mut l = RateLimiter::new(limit, 1_000);
        let (flooder, polite) = (amid(1), amid(2));
        let period_polite = 60_000 / u64::from(limit.per_minute);
        let period_flood = period_polite / 10;
        let (mut flood_ok, mut flood_refused) = (0u64, 0u64);
        let end = T0 + 600_000;
        let mut t = T0;
        while t <= end {
            match l.try_acquire(&flooder, t) {
                Ok(()) => flood_ok += 1,
                Err(_) => flood_refused += 1,
            }
            if (t - T0).is_multiple_of(period_polite) {
                assert_eq!(l.try_acquire(&polite, t), Ok(()), "polite refused at {t}");
            }
            t += period_flood;
        }
        assert!(flood_refused > 0);
        assert!(flood_ok <= limit.max_in_window(end - T0));
        // It got its burst plus the sustained rate, no more.
        assert_eq!(flood_ok, 30 + 300);
    }

    #[test]
    fn max_keys_holds_under_a_flood_of_distinct_keys() {
        let mut l = RateLimiter::new(RateLimit::new(1, 1), 100);
        for i in 0..10_000u32 {
            l.try_acquire(&i, T0 + u64::from(i)).unwrap();
            assert!(l.len() <= 100);
        }
        assert_eq!(l.len(), 100);
        assert_consistent(&l);
    }

    #[test]
    fn evicts_full_buckets_before_the_least_recently_used() {
        let mut l = RateLimiter::new(RateLimit::new(30, 30), 2);
        // "debtor" is least recently used, and empty.
        for _ in 0..30 {
            l.try_acquire(&"debtor", T0).unwrap();
        }
        // "light" used one token, full again 2 s later.
        l.try_acquire(&"light", T0 + 1).unwrap();
        l.try_acquire(&"new", T0 + 2_001).unwrap();
        assert_eq!(l.len(), 2);
        assert!(holds(&l, &"debtor"));
        assert!(!holds(&l, &"light"));
        assert!(l.try_acquire(&"debtor", T0 + 2_001).is_ok()); // refilled one
        assert!(l.try_acquire(&"debtor", T0 + 2_001).is_err());
        // With no full bucket, the least recently used goes: "new".
        l.try_acquire(&"newer", T0 + 2_002).unwrap();
        assert!(!holds(&l, &"new"));
        assert!(holds(&l, &"debtor"));
        assert_consistent(&l);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let mut l = RateLimiter::new(RateLimit::new(30, 2), 4);
        l.try_acquire(&1, T0).unwrap();
        l.try_acquire(&1, T0).unwrap();
        // Back an hour: still empty, and the wait counts from T0.
        assert_eq!(
            l.try_acquire(&1, T0 - 3_600_000),
            Err(RetryAfter {
                ms: 3_600_000 + 2_000
            })
        );
        assert!(l.try_acquire(&1, 0).is_err());
        assert!(l.try_acquire(&1, T0 + 1_999).is_err());
        l.try_acquire(&1, T0 + 2_000).unwrap();
        assert!(l.try_acquire(&1, T0 + 2_000).is_err());
        assert_consistent(&l);
    }

    #[test]
    fn extreme_timestamps_and_limits_do_not_panic() {
        for limit in [
            RateLimit::new(0, 0),
            RateLimit::new(u32::MAX, u32::MAX),
            RateLimit::new(1, u32::MAX),
            RateLimit::new(u32::MAX, 1),
        ] {
            let mut l = RateLimiter::new(limit, 2);
            for now in [u64::MAX, 0, u64::MAX, u64::MAX - 1, 1, u64::MAX] {
                for key in 0..3u8 {
                    let _ = l.try_acquire(&key, now);
                }
                l.set_limit(limit, now);
                assert_consistent(&l);
            }
        }
        let mut l = RateLimiter::new(RateLimit::new(60, 1), 2);
        l.try_acquire(&1, u64::MAX).unwrap();
        assert_eq!(l.try_acquire(&1, u64::MAX), Err(RetryAfter { ms: 1_000 }));
        assert_eq!(l.try_acquire(&1, 0), Err(RetryAfter { ms: u64::MAX }));
    }

    #[test]
    fn zero_limits_refuse_forever() {
        let mut l = RateLimiter::new(RateLimit::new(30, 0), 2);
        let refused = l.try_acquire(&1, T0).unwrap_err();
        assert!(refused.is_never());
        assert_eq!(refused.at_ms(T0), u64::MAX);

        let mut l = RateLimiter::new(RateLimit::new(0, 1), 2);
        l.try_acquire(&1, T0).unwrap();
        assert!(l.try_acquire(&1, u64::MAX).unwrap_err().is_never());
    }

    #[test]
    fn set_limit_keeps_state() {
        let mut l = RateLimiter::new(RateLimit::new(30, 2), 4);
        l.try_acquire(&1, T0).unwrap();
        l.try_acquire(&1, T0).unwrap();
        l.try_acquire(&2, T0).unwrap();
        // 1 s later bucket 1 has half a token under the old rate.
        l.set_limit(RateLimit::new(60, 10), T0 + 1_000);
        assert_eq!(l.len(), 2);
        // A bigger burst grants nothing at once; the new rate (1/s) finishes
        // the half token in 500 ms.
        assert_eq!(l.try_acquire(&1, T0 + 1_000), Err(RetryAfter { ms: 500 }));
        l.try_acquire(&1, T0 + 1_500).unwrap();
        // A smaller burst cuts balances down.
        l.set_limit(RateLimit::new(60, 1), T0 + 100_000);
        l.try_acquire(&2, T0 + 100_000).unwrap();
        assert!(l.try_acquire(&2, T0 + 100_000).is_err());
        assert_eq!(l.limit(), RateLimit::new(60, 1));
        assert_consistent(&l);
    }

    /// One call: (key, signed time step in ms).
    fn calls() -> impl Strategy<Value = Vec<(u8, i64)>> {
        prop::collection::vec((0u8..6, -5_000i64..20_000), 0..300)
    }

    fn step(now: u64, dt: i64) -> u64 {
        if dt >= 0 {
            now.saturating_add(dt.unsigned_abs())
        } else {
            now.saturating_sub(dt.unsigned_abs())
        }
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_refill_in_any_window(
            per_minute in 0u32..2_000,
            burst in 0u32..50,
            start in prop_oneof![Just(0u64), Just(T0), Just(u64::MAX - 1_000_000), any::<u64>()],
            calls in calls(),
        ) {
            let limit = RateLimit::new(per_minute, burst);
            // Enough room that nothing is evicted: eviction is allowed to
            // forget debt.
            let mut l = RateLimiter::new(limit, 8);
            let mut now = start;
            // Each key's effective clock is the latest time it was seen
            // at, since time going backwards must not grant anything.
            let mut clocks: std::collections::HashMap<u8, u64> = Default::default();
            let mut granted: std::collections::HashMap<u8, Vec<u64>> = Default::default();
            for (key, dt) in calls {
                now = step(now, dt);
                let clock = clocks.entry(key).or_insert(now);
                *clock = (*clock).max(now);
                if let Ok(()) = l.try_acquire(&key, now) {
                    granted.entry(key).or_default().push(*clock);
                }
            }
            for times in granted.values() {
                for i in 0..times.len() {
                    for j in i..times.len() {
                        let count = (j - i + 1) as u64;
                        let window = times[j] - times[i];
                        prop_assert!(
                            count <= limit.max_in_window(window),
                            "{count} grants in {window} ms under {limit:?}"
                        );
                    }
                }
            }
            assert_consistent(&l);
        }

        #[test]
        fn deterministic_and_bounded(
            per_minute in 0u32..2_000,
            burst in 0u32..5,
            max_keys in 0usize..5,
            calls in prop::collection::vec((0u8..12, -5_000i64..20_000), 0..300),
        ) {
            let limit = RateLimit::new(per_minute, burst);
            let mut a = RateLimiter::new(limit, max_keys);
            let mut b = RateLimiter::new(limit, max_keys);
            let mut now = T0;
            for (i, (key, dt)) in calls.into_iter().enumerate() {
                now = step(now, dt);
                if i == 150 {
                    a.set_limit(RateLimit::new(per_minute / 2, burst + 1), now);
                    b.set_limit(RateLimit::new(per_minute / 2, burst + 1), now);
                }
                prop_assert_eq!(a.try_acquire(&key, now), b.try_acquire(&key, now));
                prop_assert!(a.len() <= max_keys.max(1));
            }
            let held = |l: &RateLimiter<u8>| {
                let mut v: Vec<(u8, Bucket)> = l.buckets.iter().map(|(k, b)| (*k, b.clone())).collect();
                v.sort_by_key(|(k, _)| *k);
                v
            };
            prop_assert_eq!(held(&a), held(&b));
            assert_consistent(&a);
        }
    }
}
