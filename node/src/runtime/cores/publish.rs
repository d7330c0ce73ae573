//! When to publish our agent card in the DHT.
//!
//! The card lists our addresses and mailbox relays, so it is published
//! again whenever they change. Changes come in bursts (every listener comes
//! up within a few milliseconds; a reachability change brings relay
//! listeners), so each change (re)arms a short [`SETTLE`] delay and one
//! publish follows the last change of a burst.
//!
//! | input                                         | next publish            |
//! |-----------------------------------------------|-------------------------|
//! | addresses, relays or reachability changed     | `now + SETTLE`          |
//! | bootstrap connected, card not stored yet      | `now + SETTLE`          |
//! | routing table grew, card not stored, no put   | `now + SETTLE`          |
//! | forced (republish asked for)                  | `now`                   |
//! | publish sent                                  | `now + republish_every` |
//! | put done, no peer stored the card             | `now + PUBLISH_RETRY`   |
//! | put done, stored remotely                     | unchanged               |
//!
//! Each input replaces whatever was due, so a burst postpones the publish
//! until it settles. [`PublishSchedule::poll_publish`] says when to publish;
//! the caller then reports the put it sent with
//! [`PublishSchedule::handle_put_sent`] (or nothing, when it had nothing to
//! publish: then nothing is due until the next input).
//!
//! `Q` identifies a put (the DHT's query id), so that only the outcome of
//! the latest put counts.

use std::time::Duration;

use tokio::time::Instant;

/// How long a change waits for the rest of its burst before the card is
/// published.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);
/// How soon to try again after a put that no peer stored.
pub(crate) const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// The card publishing schedule.
#[derive(Debug)]
pub(crate) struct PublishSchedule<Q> {
    /// How often the card is published regardless of changes (before it
    /// expires).
    republish_every: Duration,
    /// When the next publish is due.
    next: Option<Instant>,
    /// The latest put sent whose outcome is not known yet.
    put: Option<Q>,
    /// Whether some peer ever stored the card.
    stored_remotely: bool,
}

impl<Q: Copy + Eq> PublishSchedule<Q> {
    /// A schedule that republishes every `republish_every`, with nothing due
    /// until the first input.
    pub(crate) fn new(republish_every: Duration) -> Self {
        Self {
            republish_every,
            next: None,
            put: None,
            stored_remotely: false,
        }
    }

    /// A listen or confirmed external address appeared or went away.
    pub(crate) fn handle_addresses_changed(&mut self, now: Instant) {
        self.settle(now);
    }

    /// The set of mailbox relays changed.
    pub(crate) fn handle_relays_changed(&mut self, now: Instant) {
        self.settle(now);
    }

    /// What the network says about our reachability changed.
    pub(crate) fn handle_reachability_changed(&mut self, now: Instant) {
        self.settle(now);
    }

    /// A bootstrap peer is connected: a card no peer has stored yet gets
    /// another chance.
    pub(crate) fn handle_bootstrap_connected(&mut self, now: Instant) {
        if !self.stored_remotely {
            self.settle(now);
        }
    }

    /// The routing table grew: a card no peer has stored yet, and that is
    /// not being put, gets another chance.
    pub(crate) fn handle_routing_updated(&mut self, now: Instant) {
        if !self.stored_remotely && self.put.is_none() {
            self.settle(now);
        }
    }

    /// Publish at once (on request, or before stopping).
    pub(crate) fn handle_forced(&mut self, now: Instant) {
        self.next = Some(now);
    }

    /// Whether a publish is due at `now`. Returns true once per due
    /// publish; the caller publishes and reports it with
    /// [`Self::handle_put_sent`].
    pub(crate) fn poll_publish(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|at| at <= now) {
            self.next = None;
            return true;
        }
        false
    }

    /// The card was published at `now`: `put` is the put under way, or
    /// `None` when it could not be started (the card could not be signed,
    /// say). Either way the next publish is a period away.
    pub(crate) fn handle_put_sent(&mut self, put: Option<Q>, now: Instant) {
        if let Some(q) = put {
            self.put = Some(q);
        }
        self.next = Some(now + self.republish_every);
    }

    /// Whether `query` is the latest put of the card.
    pub(crate) fn is_put(&self, query: Q) -> bool {
        self.put == Some(query)
    }

    /// The put `query` finished. Returns false (and changes nothing) when it
    /// is not the latest put of the card. A put that no peer stored is
    /// tried again after [`PUBLISH_RETRY`].
    pub(crate) fn handle_put_done(
        &mut self,
        query: Q,
        stored_remotely: bool,
        now: Instant,
    ) -> bool {
        if !self.is_put(query) {
            return false;
        }
        self.put = None;
        if stored_remotely {
            self.stored_remotely = true;
        } else {
            self.next = Some(now + PUBLISH_RETRY);
        }
        true
    }

    /// When the next publish is due, if one is.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether some peer ever stored the card.
    pub(crate) fn stored_remotely(&self) -> bool {
        self.stored_remotely
    }

    /// (Re)arms the settle delay.
    fn settle(&mut self, now: Instant) {
        self.next = Some(now + SETTLE);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const MS: Duration = Duration::from_millis(1);

    /// Polls at the deadline, asserting it is not due a moment before.
    fn fire(s: &mut PublishSchedule<u32>) -> Instant {
        let at = s.next_deadline().expect("a publish is due");
        assert!(!s.poll_publish(at - MS), "due early");
        assert!(s.poll_publish(at));
        assert!(!s.poll_publish(at), "due twice");
        at
    }

    #[test]
    fn nothing_is_due_before_the_first_input() {
        let mut s = PublishSchedule::<u32>::new(HOUR);
        assert_eq!(s.next_deadline(), None);
        assert!(!s.poll_publish(Instant::now() + 2 * HOUR));
    }

    #[test]
    fn a_burst_of_changes_settles_into_one_publish() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::<u32>::new(HOUR);
        s.handle_addresses_changed(t0);
        s.handle_addresses_changed(t0 + 50 * MS);
        s.handle_relays_changed(t0 + 120 * MS);
        s.handle_reachability_changed(t0 + 150 * MS);
        assert!(!s.poll_publish(t0 + SETTLE), "the burst postponed it");
        assert_eq!(fire(&mut s), t0 + 150 * MS + SETTLE);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_sent_publish_is_repeated_every_period() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::new(HOUR);
        s.handle_addresses_changed(t0);
        let at = fire(&mut s);
        s.handle_put_sent(Some(1), at);
        assert_eq!(s.next_deadline(), Some(at + HOUR));
        assert!(s.handle_put_done(1, true, at + MS));
        assert!(s.stored_remotely());
        assert_eq!(
            s.next_deadline(),
            Some(at + HOUR),
            "a success changes nothing"
        );
        // A put that could not start is also repeated a period later.
        let at = fire(&mut s);
        s.handle_put_sent(None, at);
        assert_eq!(s.next_deadline(), Some(at + HOUR));
    }

    #[test]
    fn a_put_nobody_stored_is_retried() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::new(HOUR);
        s.handle_forced(t0);
        let at = fire(&mut s);
        assert_eq!(at, t0);
        s.handle_put_sent(Some(7), at);
        // The outcome of another query is not ours.
        assert!(!s.handle_put_done(8, false, at));
        assert_eq!(s.next_deadline(), Some(at + HOUR));
        let done = at + Duration::from_secs(3);
        assert!(s.handle_put_done(7, false, done));
        assert!(!s.stored_remotely());
        assert_eq!(s.next_deadline(), Some(done + PUBLISH_RETRY));
        // Once done, the same id is no longer ours.
        assert!(!s.is_put(7));
        assert!(!s.handle_put_done(7, true, done));
        assert!(!s.stored_remotely());
    }

    #[test]
    fn only_the_latest_put_counts() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::new(HOUR);
        s.handle_put_sent(Some(1), t0);
        s.handle_put_sent(Some(2), t0);
        assert!(!s.is_put(1));
        assert!(s.is_put(2));
        // A put that did not start leaves the one under way.
        s.handle_put_sent(None, t0);
        assert!(s.is_put(2));
    }

    #[test]
    fn the_network_growing_helps_only_a_card_not_stored_yet() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::new(HOUR);
        s.handle_bootstrap_connected(t0);
        assert_eq!(s.next_deadline(), Some(t0 + SETTLE));
        let at = fire(&mut s);
        s.handle_put_sent(Some(1), at);
        // A put is under way: the routing table growing waits for it.
        s.handle_routing_updated(at + MS);
        assert_eq!(s.next_deadline(), Some(at + HOUR));
        // The bootstrap connecting does not wait.
        s.handle_bootstrap_connected(at + MS);
        assert_eq!(s.next_deadline(), Some(at + MS + SETTLE));
        let at = fire(&mut s);
        s.handle_put_sent(Some(2), at);
        assert!(s.handle_put_done(2, true, at + MS));
        // Stored: neither input schedules anything any more.
        s.handle_routing_updated(at + 2 * MS);
        s.handle_bootstrap_connected(at + 2 * MS);
        assert_eq!(s.next_deadline(), Some(at + HOUR));
    }

    #[test]
    fn a_change_replaces_a_forced_publish() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::<u32>::new(HOUR);
        s.handle_forced(t0);
        s.handle_addresses_changed(t0);
        assert!(!s.poll_publish(t0));
        assert_eq!(fire(&mut s), t0 + SETTLE);
    }

    /// One input of the property test.
    #[derive(Debug, Clone)]
    enum Input {
        Addresses,
        Relays,
        Reachability,
        Bootstrap,
        Routing,
        Forced,
        /// The latest put finished.
        PutDone(bool),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Addresses),
            Just(Input::Relays),
            Just(Input::Reachability),
            Just(Input::Bootstrap),
            Just(Input::Routing),
            Just(Input::Forced),
            any::<bool>().prop_map(Input::PutDone),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Drives the schedule as the actor does (publishing whenever it is
        /// due) through random inputs at random times, and checks that:
        /// a deadline is never before the latest input's `now`; two
        /// publishes without a forcing input between them are never closer
        /// than the settle delay (or the period, if shorter); once sent, a
        /// card always has a next publish scheduled.
        #[test]
        fn schedule_invariants(
            period_ms in 50u64..10_000,
            steps in proptest::collection::vec((0u64..3_000, input(), any::<bool>()), 1..60),
        ) {
            let period = Duration::from_millis(period_ms);
            let min_gap = SETTLE.min(period).min(PUBLISH_RETRY);
            let mut s = PublishSchedule::new(period);
            let mut now = Instant::now();
            let mut last_publish: Option<Instant> = None;
            let mut forced_since = false;
            let mut sent_once = false;
            let mut next_id = 0u32;
            for (dt, input, put_starts) in steps {
                let until = now + Duration::from_millis(dt);
                // Publish whenever due, up to the next input.
                while let Some(at) = s.next_deadline().filter(|at| *at <= until) {
                    prop_assert!(at >= now, "deadline in the past");
                    prop_assert!(!s.poll_publish(at - MS), "due early");
                    now = at;
                    prop_assert!(s.poll_publish(now));
                    prop_assert!(!s.poll_publish(now));
                    if let (Some(last), false) = (last_publish, forced_since) {
                        prop_assert!(now - last >= min_gap, "published again after {:?}", now - last);
                    }
                    last_publish = Some(now);
                    forced_since = false;
                    // Sometimes the put cannot start (signing failed).
                    if put_starts {
                        next_id += 1;
                        s.handle_put_sent(Some(next_id), now);
                    } else {
                        s.handle_put_sent(None, now);
                    }
                    sent_once = true;
                }
                now = until;
                match input {
                    Input::Addresses => s.handle_addresses_changed(now),
                    Input::Relays => s.handle_relays_changed(now),
                    Input::Reachability => s.handle_reachability_changed(now),
                    Input::Bootstrap => s.handle_bootstrap_connected(now),
                    Input::Routing => s.handle_routing_updated(now),
                    Input::Forced => {
                        s.handle_forced(now);
                        forced_since = true;
                    }
                    Input::PutDone(stored) => {
                        s.handle_put_done(next_id, stored, now);
                    }
                }
                if let Some(at) = s.next_deadline() {
                    prop_assert!(at >= now, "deadline before the input's now");
                }
                if sent_once {
                    prop_assert!(s.next_deadline().is_some(), "a sent card is never forgotten");
                }
            }
        }
    }
}
