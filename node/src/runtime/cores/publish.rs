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
//! | forced, within the forced budget              | `now`                   |
//! | forced, budget spent                          | the earlier of what was due and `max(now + FORCED_SETTLE, when the budget allows)` |
//! | publish sent                                  | `now + republish_every` |
//! | put done, no peer stored the card             | `now + PUBLISH_RETRY`   |
//! | put done, stored remotely                     | unchanged               |
//!
//! Each input but a forced one replaces whatever was due, so a burst
//! postpones the publish until it settles.
//!
//! **Forced publishes are coalesced.** A forced publish is asked for on a
//! presence change, before stopping, and whenever an accepted KNOCK used a
//! one-time key (the card lists the keys left), so a peer can ask for them
//! at the rate it gets KNOCKs accepted. They are held to a budget (a
//! generic cell rate: [`FORCED_BURST`] at once, then one every
//! [`MIN_FORCED_INTERVAL`]). Within it a forced publish goes at once: the
//! publish before stopping is forced and polled in the same step, and must
//! not wait. Past it, the publish waits for the budget, and at least
//! [`FORCED_SETTLE`], and every forced publish asked for meanwhile joins
//! it (a later one never postpones it). So in any span of time `W` at most
//! `FORCED_BURST + W / MIN_FORCED_INTERVAL` forced publishes go out (100
//! KNOCKs accepted in a second: 4), and each forced publish is sent within
//! [`MIN_FORCED_INTERVAL`] of being asked for. A publish for any reason
//! while a forced one is pending counts against the budget and carries it. [`PublishSchedule::poll_publish`] says when to publish;
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
/// Forced publishes that may go at once, before [`MIN_FORCED_INTERVAL`]
/// holds them back.
pub(crate) const FORCED_BURST: u32 = 3;
/// Average time between forced publishes, past the first [`FORCED_BURST`].
pub(crate) const MIN_FORCED_INTERVAL: Duration = Duration::from_secs(10);
/// Least wait of a forced publish held back by the budget, so that the
/// rest of its burst joins it.
pub(crate) const FORCED_SETTLE: Duration = Duration::from_secs(2);

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
    /// Whether a forced publish was asked for and not sent yet.
    forced_pending: bool,
    /// The forced budget's theoretical arrival time (generic cell rate):
    /// a forced publish conforms at `t` when `t >= forced_tat - (FORCED_BURST
    /// - 1) * MIN_FORCED_INTERVAL`. `None`: the budget is whole.
    forced_tat: Option<Instant>,
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
            forced_pending: false,
            forced_tat: None,
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

    /// A publish is asked for (a presence change, stopping, a one-time key
    /// used up): at once while the forced budget allows, else coalesced
    /// with the others asked for meanwhile (see the module documentation).
    pub(crate) fn handle_forced(&mut self, now: Instant) {
        self.forced_pending = true;
        let due = match self.forced_allowed_at() {
            Some(at) if at > now => at.max(now + FORCED_SETTLE),
            _ => now,
        };
        self.next = Some(self.next.map_or(due, |n| n.min(due)));
    }

    /// The node stops: its last card (presence `offline`) is due at once,
    /// whatever the forced budget (a node that accepted many KNOCKs just
    /// before stopping would otherwise wait out the coalescing delay).
    pub(crate) fn handle_stopping(&mut self, now: Instant) {
        self.forced_pending = false;
        self.next = Some(now);
    }

    /// Whether a publish is due at `now`. Returns true once per due
    /// publish; the caller publishes and reports it with
    /// [`Self::handle_put_sent`].
    pub(crate) fn poll_publish(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|at| at <= now) {
            self.next = None;
            if std::mem::take(&mut self.forced_pending) {
                self.spend_forced(now);
            }
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

    /// The earliest time a forced publish conforms to the budget; `None`
    /// when it conforms at any time.
    fn forced_allowed_at(&self) -> Option<Instant> {
        self.forced_tat
            .and_then(|tat| tat.checked_sub(MIN_FORCED_INTERVAL * (FORCED_BURST - 1)))
    }

    /// A publish carried a forced one at `now`: one less in the budget. A
    /// publish sent early for another reason takes no more than a whole
    /// burst, so it cannot hold later forced publishes back for longer.
    fn spend_forced(&mut self, now: Instant) {
        let tat = self.forced_tat.map_or(now, |t| t.max(now)) + MIN_FORCED_INTERVAL;
        self.forced_tat = Some(tat.min(now + MIN_FORCED_INTERVAL * FORCED_BURST));
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

    #[test]
    fn a_hundred_forced_publishes_in_a_second_are_coalesced() {
        let t0 = Instant::now();
        let mut s = PublishSchedule::new(HOUR);
        let mut sent = Vec::new();
        let mut now = t0;
        let mut id = 0;
        let mut drive = |s: &mut PublishSchedule<u32>, until: Instant, now: &mut Instant| {
            while let Some(at) = s.next_deadline().filter(|at| *at <= until) {
                *now = at;
                assert!(s.poll_publish(at));
                id += 1;
                s.handle_put_sent(Some(id), at);
                assert!(s.handle_put_done(id, true, at));
                sent.push(at);
            }
            *now = until;
        };
        // An accepted KNOCK every 10 ms for a second, each forcing one.
        for i in 0..100 {
            drive(&mut s, t0 + i * 10 * MS, &mut now);
            s.handle_forced(now);
        }
        let last_forced = now;
        drive(&mut s, t0 + Duration::from_secs(60), &mut now);
        assert_eq!(
            sent.len(),
            FORCED_BURST as usize + 1,
            "publishes at {:?}",
            sent.iter().map(|t| *t - t0).collect::<Vec<_>>()
        );
        // The first ones at once; the rest joined into one, which carries
        // the last KNOCK's change.
        assert_eq!(sent[0], t0);
        let last = *sent.last().unwrap();
        assert!(last >= last_forced);
        assert!(last <= last_forced + MIN_FORCED_INTERVAL);
        // After a quiet spell the budget is whole again: at once.
        let later = t0 + Duration::from_secs(600);
        s.handle_forced(later);
        assert!(s.poll_publish(later));
    }

    #[test]
    fn the_publish_before_stopping_goes_at_once_after_a_few_forced_ones() {
        // A presence change and a KNOCK, then the node stops: forced and
        // polled in the same step, it is due at once.
        let t0 = Instant::now();
        let mut s = PublishSchedule::<u32>::new(HOUR);
        for i in 0..FORCED_BURST - 1 {
            let at = t0 + i * 100 * MS;
            s.handle_forced(at);
            assert!(s.poll_publish(at));
            s.handle_put_sent(Some(i), at);
        }
        let stop = t0 + Duration::from_secs(1);
        s.handle_forced(stop);
        assert!(s.poll_publish(stop));
    }

    #[test]
    fn the_publish_before_stopping_goes_at_once_after_many_forced_ones() {
        // A hundred KNOCKs used up the forced budget; then the node stops.
        let t0 = Instant::now();
        let mut s = PublishSchedule::<u32>::new(HOUR);
        let mut id = 0;
        for i in 0..100 {
            let at = t0 + i * 10 * MS;
            s.handle_forced(at);
            if s.poll_publish(at) {
                s.handle_put_sent(Some(id), at);
                id += 1;
            }
        }
        let stop = t0 + Duration::from_secs(1);
        s.handle_forced(stop);
        assert!(!s.poll_publish(stop), "the budget is used up");
        s.handle_stopping(stop);
        assert!(s.poll_publish(stop), "the last card goes at once");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Forced publishes at random times (KNOCKs accepted at any rate):
        /// in any span `W` at most `FORCED_BURST + W / MIN_FORCED_INTERVAL`
        /// publishes go out, and each forced one is followed by a publish
        /// within `MIN_FORCED_INTERVAL`.
        #[test]
        fn forced_publishes_are_bounded_and_never_starved(
            gaps in proptest::collection::vec(0u64..4_000, 1..200),
        ) {
            let mut s = PublishSchedule::new(HOUR);
            let t0 = Instant::now();
            let mut now = t0;
            let mut sent: Vec<Instant> = Vec::new();
            let mut forced: Vec<Instant> = Vec::new();
            let mut id = 0u32;
            let end = t0
                + Duration::from_millis(gaps.iter().sum::<u64>())
                + 2 * MIN_FORCED_INTERVAL;
            let times = gaps
                .iter()
                .scan(t0, |t, g| {
                    *t += Duration::from_millis(*g);
                    Some(*t)
                })
                .map(Some)
                .chain([None]);
            for at in times {
                let until = at.unwrap_or(end);
                while let Some(due) = s.next_deadline().filter(|d| *d <= until) {
                    prop_assert!(due >= now);
                    now = due;
                    prop_assert!(s.poll_publish(now));
                    id += 1;
                    s.handle_put_sent(Some(id), now);
                    s.handle_put_done(id, true, now);
                    sent.push(now);
                }
                now = until;
                if at.is_some() {
                    s.handle_forced(now);
                    forced.push(now);
                }
            }
            for i in 0..sent.len() {
                for j in i..sent.len() {
                    let span = sent[j] - sent[i];
                    let allowed = FORCED_BURST as usize
                        + (span.as_millis() / MIN_FORCED_INTERVAL.as_millis()) as usize;
                    prop_assert!(j - i < allowed, "{} publishes in {span:?}", j - i + 1);
                }
            }
            for f in &forced {
                prop_assert!(
                    sent.iter().any(|p| p >= f && *p <= *f + MIN_FORCED_INTERVAL),
                    "a forced publish at {:?} waited too long", *f - t0
                );
            }
        }
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
