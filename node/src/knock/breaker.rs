//! Per-peer circuit breakers: stop calling a peer that keeps failing, then
//! probe it again after a cool-down.
//!
//! ```text
//!            failures >= threshold               cool-down elapsed
//!  Closed ---------------------------> Open ---------------------> HalfOpen
//!    ^          (or trip)               ^                            |  |
//!    |                                  +----- probe failed ---------+  |
//!    +------------------------ probe succeeded -------------------------+
//! ```
//!
//! - **Closed**: every call is allowed; consecutive failures are counted and
//!   a success clears the count. Reaching
//!   [`failure_threshold`](BreakerConfig::failure_threshold) opens it.
//! - **Open**: every call is refused with a [`BreakerOpen`] saying how long
//!   until the cool-down ends. Results of calls allowed before it opened are
//!   stale and ignored.
//! - **HalfOpen**: up to [`half_open_probes`](BreakerConfig::half_open_probes)
//!   calls are let through. A success closes the breaker, a failure re-opens
//!   it for another cool-down. If every probe is out and none reports back
//!   within a cool-down (the caller dropped it), the probes are re-armed, so
//!   a lost result never wedges a peer's breaker for good.
//!
//! Pure logic, no I/O: nothing here reads the clock; every method takes
//! `now_ms`, milliseconds since the Unix epoch. Transitions that only depend
//! on time (Open to HalfOpen) happen lazily when a method sees `now_ms`.
//! Timestamps saturate (`u64::MAX` never panics), and time going backwards
//! never shortens an open period.
//!
//! Only breakers with something to remember are stored: a closed breaker
//! with no failures is the same as an unknown key. At most `max_keys` are
//! kept; at capacity, closed breakers (some failures, not yet open) are
//! dropped first, least recently used first, then the least recently used
//! of the rest. Every operation is `O(log n)`.

use std::hash::Hash;

use crate::lru::BoundedLru;

use serde::{Deserialize, Serialize};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker; `0` is treated as 1.
    /// Defaults to 5.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before probing, in ms; also how
    /// long half-open probes may take to report before they are re-armed.
    /// Defaults to 30 000.
    pub cool_down_ms: u64,
    /// Calls let through while half-open; `0` is treated as 1. Defaults to 1.
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// A configuration with the given threshold, cool-down and probe count.
    pub const fn new(failure_threshold: u32, cool_down_ms: u64, half_open_probes: u32) -> Self {
        Self {
            failure_threshold,
            cool_down_ms,
            half_open_probes,
        }
    }

    /// The effective threshold (at least 1).
    fn threshold(&self) -> u32 {
        self.failure_threshold.max(1)
    }

    /// The effective probe count (at least 1).
    fn probes(&self) -> u32 {
        self.half_open_probes.max(1)
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self::new(5, 30_000, 1)
    }
}

/// The state of one key's breaker, as of some `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls are allowed.
    Closed,
    /// Calls are refused until `until_ms`.
    Open {
        /// When the cool-down ends and the breaker half-opens.
        until_ms: u64,
    },
    /// Probing: `probes_left` more calls are allowed until one reports.
    HalfOpen {
        /// Calls that will still be let through.
        probes_left: u32,
    },
}

/// Refusal: the breaker is open, or half-open with every probe out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("circuit breaker open: retry in {retry_after_ms} ms")]
#[non_exhaustive]
pub struct BreakerOpen {
    /// Milliseconds from `now_ms` until a call may be allowed again (the end
    /// of the cool-down, or the probe re-arm deadline).
    pub retry_after_ms: u64,
}

/// Internal state, with what the public [`BreakerState`] leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Allowing calls; `failures` consecutive failures so far (at least 1
    /// when stored).
    Closed { failures: u32 },
    /// Refusing calls until `until_ms`.
    Open { until_ms: u64 },
    /// Letting `probes_left` calls through; once all are out, they are
    /// re-armed strictly after `rearm_at_ms` (a full cool-down after the last
    /// one went out) if none has reported. Strictly, so that even a zero
    /// cool-down or a saturated clock never lets more than the probe count
    /// through within one millisecond.
    HalfOpen { probes_left: u32, rearm_at_ms: u64 },
}

impl Phase {
    /// The phase once time-driven transitions up to `now_ms` are applied.
    fn at(self, config: &BreakerConfig, now_ms: u64) -> Self {
        match self {
            Self::Open { until_ms } if now_ms >= until_ms => Self::HalfOpen {
                probes_left: config.probes(),
                rearm_at_ms: until_ms,
            },
            Self::HalfOpen {
                probes_left: 0,
                rearm_at_ms,
            } if now_ms > rearm_at_ms => Self::HalfOpen {
                probes_left: config.probes(),
                rearm_at_ms,
            },
            other => other,
        }
    }

    fn public(self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { until_ms } => BreakerState::Open { until_ms },
            Self::HalfOpen { probes_left, .. } => BreakerState::HalfOpen { probes_left },
        }
    }
}

/// Circuit breakers for many keys (usually peer [`Amid`](crate::identity::Amid)s),
/// with a bound on how many are remembered.
///
/// ```
/// use agentmesh_node::knock::breaker::{BreakerConfig, BreakerState, CircuitBreakers};
///
/// let mut breakers = CircuitBreakers::new(BreakerConfig::new(2, 30_000, 1), 10_000);
/// let t = 1_700_000_000_000;
/// breakers.record_failure(&"bob", t);
/// breakers.record_failure(&"bob", t);
/// assert_eq!(breakers.allow(&"bob", t + 10_000).unwrap_err().retry_after_ms, 20_000);
/// assert!(breakers.allow(&"bob", t + 30_000).is_ok()); // the probe
/// breakers.record_success(&"bob", t + 30_500);
/// assert_eq!(breakers.state(&"bob", t + 30_500), BreakerState::Closed);
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakers<K> {
    config: BreakerConfig,
    /// A closed breaker (some failures, not yet open) is idle at once:
    /// dropping it loses little, so it goes first when room is needed.
    entries: BoundedLru<K, Phase>,
}

/// When a stored breaker in `phase` may be dropped.
fn idle_at(phase: &Phase) -> u64 {
    match phase {
        Phase::Closed { .. } => 0,
        _ => u64::MAX,
    }
}

impl<K: Hash + Eq + Clone> CircuitBreakers<K> {
    /// Breakers following `config`, remembering at most `max_keys` of them
    /// (`0` is treated as 1).
    pub fn new(config: BreakerConfig, max_keys: usize) -> Self {
        Self {
            config,
            entries: BoundedLru::new(max_keys),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// Replaces the configuration (e.g. on a config reload) without forgetting
    /// any breaker. Open periods already running keep their end; half-open
    /// breakers keep at most the new probe count; a closed breaker whose count
    /// reaches the new threshold opens on its next failure.
    pub fn set_config(&mut self, config: BreakerConfig) {
        self.config = config;
        let probes = config.probes();
        self.entries.update_all(|_, phase| {
            if let Phase::HalfOpen { probes_left, .. } = phase {
                *probes_left = (*probes_left).min(probes);
            }
            idle_at(phase)
        });
    }

    /// The most breakers remembered at once.
    pub fn max_keys(&self) -> usize {
        self.entries.max()
    }

    /// How many breakers are remembered (never more than
    /// [`max_keys`](Self::max_keys)).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no breaker is remembered (every key is closed with no failures).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Asks to make a call to `key` at `now_ms`. While half-open, each `Ok`
    /// uses up one probe: report its outcome with
    /// [`record_success`](Self::record_success) or
    /// [`record_failure`](Self::record_failure).
    pub fn allow(&mut self, key: &K, now_ms: u64) -> Result<(), BreakerOpen> {
        let Some((key, phase)) = self.take(key) else {
            return Ok(());
        };
        let (phase, result) = match phase.at(&self.config, now_ms) {
            closed @ Phase::Closed { .. } => (closed, Ok(())),
            open @ Phase::Open { until_ms } => (
                open,
                Err(BreakerOpen {
                    retry_after_ms: until_ms.saturating_sub(now_ms),
                }),
            ),
            Phase::HalfOpen {
                probes_left: 0,
                rearm_at_ms,
            } => (
                Phase::HalfOpen {
                    probes_left: 0,
                    rearm_at_ms,
                },
                Err(BreakerOpen {
                    retry_after_ms: rearm_at_ms.saturating_sub(now_ms).saturating_add(1),
                }),
            ),
            Phase::HalfOpen {
                probes_left,
                rearm_at_ms,
            } => {
                let probes_left = probes_left - 1;
                let rearm_at_ms = if probes_left == 0 {
                    now_ms.saturating_add(self.config.cool_down_ms)
                } else {
                    rearm_at_ms
                };
                (
                    Phase::HalfOpen {
                        probes_left,
                        rearm_at_ms,
                    },
                    Ok(()),
                )
            }
        };
        self.put(key, phase);
        result
    }

    /// Reports that a call to `key` succeeded: clears a closed breaker's
    /// failure count and closes a half-open one. Ignored while open.
    pub fn record_success(&mut self, key: &K, now_ms: u64) {
        let Some((key, phase)) = self.take(key) else {
            return;
        };
        match phase.at(&self.config, now_ms) {
            // Forgetting a breaker is closing it with no failures.
            Phase::Closed { .. } | Phase::HalfOpen { .. } => {}
            open @ Phase::Open { .. } => self.put(key, open),
        }
    }

    /// Reports that a call to `key` failed: counts it while closed (opening
    /// the breaker at the threshold) and re-opens a half-open one. Ignored
    /// while open.
    pub fn record_failure(&mut self, key: &K, now_ms: u64) {
        let (key, phase) = match self.take(key) {
            Some((key, phase)) => (key, phase.at(&self.config, now_ms)),
            None => (key.clone(), Phase::Closed { failures: 0 }),
        };
        let phase = match phase {
            Phase::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.threshold() {
                    self.open_from(now_ms)
                } else {
                    Phase::Closed { failures }
                }
            }
            Phase::HalfOpen { .. } => self.open_from(now_ms),
            open @ Phase::Open { .. } => open,
        };
        self.put(key, phase);
    }

    /// Forces `key`'s breaker open for a cool-down from `now_ms` (e.g. on the
    /// owner's request). An open period already ending later is kept.
    pub fn trip(&mut self, key: &K, now_ms: u64) {
        let (key, phase) = match self.take(key) {
            Some((key, phase)) => (key, phase),
            None => (key.clone(), Phase::Closed { failures: 0 }),
        };
        let until_ms = now_ms.saturating_add(self.config.cool_down_ms);
        let until_ms = match phase {
            Phase::Open { until_ms: current } => current.max(until_ms),
            _ => until_ms,
        };
        self.put(key, Phase::Open { until_ms });
    }

    /// Closes `key`'s breaker and forgets its failures.
    pub fn reset(&mut self, key: &K) {
        let _ = self.take(key);
    }

    /// `key`'s breaker state as of `now_ms`; an unknown key is closed.
    pub fn state(&self, key: &K, now_ms: u64) -> BreakerState {
        match self.entries.get(key) {
            Some(phase) => phase.at(&self.config, now_ms).public(),
            None => BreakerState::Closed,
        }
    }

    /// An open phase starting at `now_ms`.
    fn open_from(&self, now_ms: u64) -> Phase {
        Phase::Open {
            until_ms: now_ms.saturating_add(self.config.cool_down_ms),
        }
    }

    /// Removes `key`'s breaker.
    fn take(&mut self, key: &K) -> Option<(K, Phase)> {
        self.entries.remove_entry(key)
    }

    /// Stores a breaker for a key not in the map, as the most recently used,
    /// making room first if needed (closed breakers go first).
    fn put(&mut self, key: K, phase: Phase) {
        let idle = idle_at(&phase);
        self.entries.insert(key, phase, idle, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Amid, Identity};
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000_000;
    const COOL: u64 = 30_000;

    fn amid(n: u8) -> Amid {
        Identity::from_seed(&[n; 32]).amid()
    }

    fn breakers() -> CircuitBreakers<Amid> {
        CircuitBreakers::new(BreakerConfig::default(), 64)
    }

    fn assert_consistent<K: Hash + Eq + Clone + std::fmt::Debug>(b: &CircuitBreakers<K>) {
        assert!(b.len() <= b.max_keys());
        b.entries.assert_consistent();
        for (_, phase) in b.entries.iter() {
            if let Phase::Closed { failures } = phase {
                assert!(*failures >= 1 && *failures < b.config.threshold());
            }
        }
    }

    /// Opens `key`'s breaker at `now` with threshold failures.
    fn open(b: &mut CircuitBreakers<Amid>, key: &Amid, now: u64) {
        for _ in 0..b.config().threshold() {
            b.record_failure(key, now);
        }
        let until_ms = now.saturating_add(b.config().cool_down_ms);
        assert_eq!(b.state(key, now), BreakerState::Open { until_ms });
    }

    #[test]
    fn defaults() {
        let c = BreakerConfig::default();
        assert_eq!(c, BreakerConfig::new(5, 30_000, 1));
        let parsed: BreakerConfig = serde_json::from_str(r#"{"cool_down_ms": 5}"#).unwrap();
        assert_eq!(parsed, BreakerConfig::new(5, 5, 1));
    }

    #[test]
    fn unknown_keys_are_closed_and_not_stored() {
        let mut b = breakers();
        let k = amid(1);
        assert_eq!(b.state(&k, T0), BreakerState::Closed);
        b.allow(&k, T0).unwrap();
        b.record_success(&k, T0);
        b.reset(&k);
        assert!(b.is_empty());
    }

    #[test]
    fn closed_opens_after_threshold_consecutive_failures() {
        let mut b = breakers();
        let k = amid(1);
        for i in 0..4 {
            b.record_failure(&k, T0 + i);
            assert_eq!(b.state(&k, T0 + i), BreakerState::Closed);
            b.allow(&k, T0 + i).unwrap();
        }
        b.record_failure(&k, T0 + 4);
        assert_eq!(
            b.state(&k, T0 + 4),
            BreakerState::Open {
                until_ms: T0 + 4 + COOL
            }
        );
        assert_consistent(&b);
    }

    #[test]
    fn success_clears_the_failure_count() {
        let mut b = breakers();
        let k = amid(1);
        for _ in 0..4 {
            b.record_failure(&k, T0);
        }
        b.record_success(&k, T0);
        assert!(b.is_empty());
        for _ in 0..4 {
            b.record_failure(&k, T0);
        }
        assert_eq!(b.state(&k, T0), BreakerState::Closed);
    }

    #[test]
    fn open_refuses_with_time_left_and_ignores_stale_results() {
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, T0);
        assert_eq!(
            b.allow(&k, T0),
            Err(BreakerOpen {
                retry_after_ms: COOL
            })
        );
        assert_eq!(
            b.allow(&k, T0 + 29_999),
            Err(BreakerOpen { retry_after_ms: 1 })
        );
        b.record_success(&k, T0 + 10);
        b.record_failure(&k, T0 + 20);
        assert_eq!(
            b.state(&k, T0 + 20),
            BreakerState::Open {
                until_ms: T0 + COOL
            }
        );
    }

    #[test]
    fn open_half_opens_after_cool_down_and_allows_only_the_probes() {
        let mut b = CircuitBreakers::new(BreakerConfig::new(1, COOL, 2), 8);
        let k = amid(1);
        open(&mut b, &k, T0);
        let t = T0 + COOL;
        assert_eq!(b.state(&k, t), BreakerState::HalfOpen { probes_left: 2 });
        b.allow(&k, t).unwrap();
        assert_eq!(b.state(&k, t), BreakerState::HalfOpen { probes_left: 1 });
        b.allow(&k, t + 1).unwrap();
        assert_eq!(
            b.state(&k, t + 1),
            BreakerState::HalfOpen { probes_left: 0 }
        );
        assert_eq!(
            b.allow(&k, t + 2),
            Err(BreakerOpen {
                retry_after_ms: COOL
            })
        );
        assert_consistent(&b);
    }

    #[test]
    fn half_open_success_closes() {
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, T0);
        b.allow(&k, T0 + COOL).unwrap();
        b.record_success(&k, T0 + COOL + 5);
        assert_eq!(b.state(&k, T0 + COOL + 5), BreakerState::Closed);
        assert!(b.is_empty());
        // Closed again with a fresh count.
        for _ in 0..4 {
            b.record_failure(&k, T0 + COOL + 6);
        }
        b.allow(&k, T0 + COOL + 6).unwrap();
    }

    #[test]
    fn half_open_failure_reopens() {
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, T0);
        let t = T0 + COOL + 100;
        b.allow(&k, t).unwrap();
        b.record_failure(&k, t + 50);
        assert_eq!(
            b.state(&k, t + 50),
            BreakerState::Open {
                until_ms: t + 50 + COOL
            }
        );
        assert!(b.allow(&k, t + 51).is_err());
        assert_eq!(
            b.state(&k, t + 50 + COOL),
            BreakerState::HalfOpen { probes_left: 1 }
        );
    }

    #[test]
    fn lost_probe_is_rearmed_after_a_cool_down() {
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, T0);
        let t = T0 + COOL;
        b.allow(&k, t).unwrap();
        // The probe never reports: re-armed once a full cool-down has passed.
        assert_eq!(
            b.allow(&k, t + COOL - 1),
            Err(BreakerOpen { retry_after_ms: 2 })
        );
        assert_eq!(
            b.allow(&k, t + COOL),
            Err(BreakerOpen { retry_after_ms: 1 })
        );
        assert_eq!(
            b.state(&k, t + COOL + 1),
            BreakerState::HalfOpen { probes_left: 1 }
        );
        b.allow(&k, t + COOL + 1).unwrap();
        assert!(b.allow(&k, t + COOL + 1).is_err());
    }

    #[test]
    fn trip_forces_open_from_any_state() {
        let mut b = breakers();
        let (k1, k2, k3) = (amid(1), amid(2), amid(3));
        // From unknown/closed.
        b.trip(&k1, T0);
        assert_eq!(
            b.state(&k1, T0),
            BreakerState::Open {
                until_ms: T0 + COOL
            }
        );
        assert!(b.allow(&k1, T0 + 1).is_err());
        // From closed with failures.
        b.record_failure(&k2, T0);
        b.trip(&k2, T0);
        assert_eq!(
            b.state(&k2, T0),
            BreakerState::Open {
                until_ms: T0 + COOL
            }
        );
        // From half-open.
        open(&mut b, &k3, T0);
        b.allow(&k3, T0 + COOL).unwrap();
        b.trip(&k3, T0 + COOL);
        assert_eq!(
            b.state(&k3, T0 + COOL),
            BreakerState::Open {
                until_ms: T0 + 2 * COOL
            }
        );
        // From open: a later end is kept, an earlier one extended.
        b.trip(&k1, T0 + 10);
        assert_eq!(
            b.state(&k1, T0 + 10),
            BreakerState::Open {
                until_ms: T0 + 10 + COOL
            }
        );
        b.trip(&k1, T0);
        assert_eq!(
            b.state(&k1, T0),
            BreakerState::Open {
                until_ms: T0 + 10 + COOL
            }
        );
        assert_consistent(&b);
    }

    #[test]
    fn reset_closes_from_any_state() {
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, T0);
        b.reset(&k);
        assert_eq!(b.state(&k, T0), BreakerState::Closed);
        b.allow(&k, T0).unwrap();
        open(&mut b, &k, T0);
        b.allow(&k, T0 + COOL).unwrap();
        b.reset(&k);
        assert_eq!(b.state(&k, T0 + COOL), BreakerState::Closed);
        assert!(b.is_empty());
    }

    #[test]
    fn keys_are_independent() {
        let mut b = breakers();
        let (bad, good) = (amid(1), amid(2));
        open(&mut b, &bad, T0);
        b.record_failure(&good, T0);
        b.allow(&good, T0).unwrap();
        assert!(b.allow(&bad, T0).is_err());
    }

    #[test]
    fn bounded_and_evicts_closed_breakers_first() {
        let mut b = CircuitBreakers::new(BreakerConfig::new(3, COOL, 1), 3);
        b.trip(&0u32, T0); // open, least recently used
        b.record_failure(&1u32, T0); // closed, one failure
        b.trip(&2u32, T0); // open
        b.record_failure(&3u32, T0); // evicts 1 (closed) rather than 0
        assert_eq!(b.len(), 3);
        assert_eq!(
            b.state(&0, T0),
            BreakerState::Open {
                until_ms: T0 + COOL
            }
        );
        assert!(b.entries.get(&1).is_none());
        for i in 10..10_000u32 {
            b.record_failure(&i, T0);
            assert!(b.len() <= 3);
        }
        // The open ones survive a flood of closed ones.
        assert!(b.allow(&0, T0).is_err());
        assert!(b.allow(&2, T0).is_err());
        // With only open breakers, the least recently used go.
        for i in 20_000..20_003 {
            b.trip(&i, T0);
        }
        assert!(b.entries.get(&0).is_none());
        assert!(b.entries.get(&2).is_none());
        assert_consistent(&b);
    }

    #[test]
    fn zero_settings_are_clamped() {
        let mut b = CircuitBreakers::new(BreakerConfig::new(0, 0, 0), 0);
        assert_eq!(b.max_keys(), 1);
        b.allow(&1, T0).unwrap();
        b.record_failure(&1, T0);
        // Threshold 1, no cool-down: straight to half-open with one probe.
        assert_eq!(b.state(&1, T0), BreakerState::HalfOpen { probes_left: 1 });
        b.allow(&1, T0).unwrap();
        // The probe is re-armed after a zero cool-down, but not within the
        // same millisecond.
        assert_eq!(b.allow(&1, T0), Err(BreakerOpen { retry_after_ms: 1 }));
        b.allow(&1, T0 + 1).unwrap();
    }

    #[test]
    fn set_config_keeps_state() {
        let mut b = CircuitBreakers::new(BreakerConfig::new(5, COOL, 3), 8);
        let k = amid(1);
        open(&mut b, &k, T0);
        b.allow(&k, T0 + COOL).unwrap();
        b.record_failure(&amid(2), T0);
        b.record_failure(&amid(2), T0);
        b.set_config(BreakerConfig::new(2, 1_000, 1));
        assert_eq!(
            b.state(&k, T0 + COOL),
            BreakerState::HalfOpen { probes_left: 1 }
        );
        assert_eq!(b.len(), 2);
        b.record_failure(&amid(2), T0 + 1);
        assert_eq!(
            b.state(&amid(2), T0 + 1),
            BreakerState::Open {
                until_ms: T0 + 1_001
            }
        );
        assert_eq!(b.config(), BreakerConfig::new(2, 1_000, 1));
    }

    #[test]
    fn time_going_backwards_never_shortens_an_open_period() {
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, T0);
        assert_eq!(
            b.allow(&k, 0),
            Err(BreakerOpen {
                retry_after_ms: T0 + COOL
            })
        );
        assert!(b.allow(&k, T0 - 1).is_err());
        b.allow(&k, T0 + COOL).unwrap();
        // Back in time while half-open with the probe out: still refused.
        assert!(b.allow(&k, T0).is_err());
    }

    #[test]
    fn extreme_timestamps_do_not_panic() {
        let mut b = CircuitBreakers::new(BreakerConfig::new(1, u64::MAX, u32::MAX), 2);
        for now in [u64::MAX, 0, u64::MAX - 1, u64::MAX] {
            for key in 0..3u8 {
                let _ = b.allow(&key, now);
                b.record_failure(&key, now);
                let _ = b.state(&key, now);
                let _ = b.allow(&key, now);
                b.record_success(&key, now);
                b.trip(&key, now);
            }
            assert_consistent(&b);
        }
        let mut b = breakers();
        let k = amid(1);
        open(&mut b, &k, u64::MAX - 1);
        assert_eq!(
            b.state(&k, u64::MAX - 1),
            BreakerState::Open { until_ms: u64::MAX }
        );
        assert_eq!(
            b.state(&k, u64::MAX),
            BreakerState::HalfOpen { probes_left: 1 }
        );
        b.allow(&k, u64::MAX).unwrap();
        // The clock cannot move on, so the probe is never re-armed.
        assert_eq!(
            b.allow(&k, u64::MAX),
            Err(BreakerOpen { retry_after_ms: 1 })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allow(u8),
        Success(u8),
        Failure(u8),
        Trip(u8),
        Reset(u8),
        Advance(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..5).prop_map(Op::Allow),
            2 => (0u8..5).prop_map(Op::Success),
            3 => (0u8..5).prop_map(Op::Failure),
            1 => (0u8..5).prop_map(Op::Trip),
            1 => (0u8..5).prop_map(Op::Reset),
            3 => (-2_000i64..6_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_half_open_allows_at_most_the_probes(
            threshold in 0u32..4,
            cool_down_ms in prop_oneof![Just(0u64), 1u64..5_000, Just(u64::MAX)],
            probes in 0u32..4,
            max_keys in 0usize..5,
            start in prop_oneof![Just(0u64), Just(T0), Just(u64::MAX - 10_000), Just(u64::MAX)],
            ops in prop::collection::vec(op(), 0..300),
        ) {
            let config = BreakerConfig::new(threshold, cool_down_ms, probes);
            let mut b = CircuitBreakers::new(config, max_keys);
            let mut now = start;
            // Probes granted in each key's current half-open round.
            let mut granted: std::collections::HashMap<u8, u32> = Default::default();
            for op in ops {
                match op {
                    Op::Allow(k) => {
                        let before = b.state(&k, now);
                        let result = b.allow(&k, now);
                        match before {
                            BreakerState::Closed => {
                                granted.remove(&k);
                                prop_assert!(result.is_ok());
                            }
                            BreakerState::Open { until_ms } => {
                                granted.remove(&k);
                                prop_assert!(now < until_ms);
                                prop_assert_eq!(result, Err(BreakerOpen { retry_after_ms: until_ms - now }));
                            }
                            BreakerState::HalfOpen { probes_left } => {
                                if probes_left == config.probes() {
                                    granted.remove(&k);
                                }
                                prop_assert_eq!(result.is_ok(), probes_left > 0);
                                if result.is_ok() {
                                    let n = granted.entry(k).or_default();
                                    *n += 1;
                                    prop_assert!(*n <= config.probes());
                                    prop_assert_eq!(
                                        b.state(&k, now),
                                        BreakerState::HalfOpen { probes_left: probes_left - 1 }
                                    );
                                }
                            }
                        }
                    }
                    Op::Success(k) => b.record_success(&k, now),
                    Op::Failure(k) => b.record_failure(&k, now),
                    Op::Trip(k) => {
                        b.trip(&k, now);
                        let open = matches!(b.state(&k, now), BreakerState::Open { .. });
                        prop_assert!(open || cool_down_ms == 0 || now == u64::MAX);
                    }
                    Op::Reset(k) => {
                        b.reset(&k);
                        prop_assert_eq!(b.state(&k, now), BreakerState::Closed);
                    }
                    Op::Advance(dt) => {
                        now = if dt >= 0 {
                            now.saturating_add(dt.unsigned_abs())
                        } else {
                            now.saturating_sub(dt.unsigned_abs())
                        };
                    }
                }
                prop_assert!(b.len() <= max_keys.max(1));
            }
            assert_consistent(&b);
        }
    }
}
