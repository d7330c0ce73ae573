//! The delivery machine of one outbound link: the window of messages in
//! flight, when a burst is written, when the stream is taken to be dead,
//! reconnection with back-off, messages the peer rate-limited, and when
//! mail goes to the peer's mailbox instead of a dial.
//!
//! The link owns the I/O (sealing, the stream, the mailbox, the swarm) and
//! tells the machine what happened; the machine says what to do next.
//!
//! | input                                   | state change / answer                                  |
//! |-----------------------------------------|--------------------------------------------------------|
//! | [`handle_sealed`]                       | in flight, unwritten; [`AfterSeal`]: deposit, connect now, or wait for the burst's end |
//! | [`should_end_burst`]                    | window full, a quarter of it unwritten, or nothing more queued |
//! | [`unwritten`]                           | marks the burst written at `now`                       |
//! | [`handle_stream_opened`]                | everything in flight written at `now`; retries reset   |
//! | [`handle_stream_closed`]                | reconnect after the back-off, which doubles            |
//! | [`handle_stream_failed`]                | [`Failure`]: retry at once (a few times), wait, or deposit |
//! | [`handle_ack`] / [`handle_nack`]        | out of flight; back-off reset; [`Nacked`] says why     |
//! | [`handle_tick`]                         | expired messages out; [`Tick::stale`] when the oldest waited too long |
//! | [`release_delayed`]                     | rate-limited messages back in flight after their wait  |
//! | [`handle_deposited`]                    | the peer counts as unreachable for a while             |
//!
//! Nothing here reads the clock: every input that depends on time takes
//! `now`, so unit tests, property tests and simulations drive it directly.
//!
//! [`handle_sealed`]: Delivery::handle_sealed
//! [`should_end_burst`]: Delivery::should_end_burst
//! [`unwritten`]: Delivery::unwritten
//! [`handle_stream_opened`]: Delivery::handle_stream_opened
//! [`handle_stream_closed`]: Delivery::handle_stream_closed
//! [`handle_stream_failed`]: Delivery::handle_stream_failed
//! [`handle_ack`]: Delivery::handle_ack
//! [`handle_nack`]: Delivery::handle_nack
//! [`handle_tick`]: Delivery::handle_tick
//! [`release_delayed`]: Delivery::release_delayed
//! [`handle_deposited`]: Delivery::handle_deposited

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::{crypto::envelope::MessageId, knock::RejectReason};

/// First reconnection delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the oldest message in flight waits for its acknowledgement
/// before the stream is taken to be dead (at most half the delivery
/// timeout).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times in a row a message stream that failed on a peer we
/// reached is opened again at once, before the peer counts as unreachable
/// (and its mail goes to the mailbox).
pub const STREAM_RETRIES: u8 = 3;
/// How long a peer whose mail went to its mailbox is taken to be
/// unreachable: messages go straight to the mailbox, without a dial.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// What the machine needs to know of a message it holds.
pub trait Pending {
    /// The message's id (acknowledgements name it).
    fn id(&self) -> MessageId;
    /// When delivery is given up.
    fn deadline(&self) -> Instant;
    /// Whether the message belongs to one given session (a reply, a
    /// conversation's end), which it never leaves.
    fn pinned(&self) -> bool;
    /// Times its session was opened again for it.
    fn reopened(&self) -> u8;
}

/// A message in flight.
#[derive(Debug)]
struct InFlight<M> {
    msg: M,
    /// When it was last written to a stream.
    sent: Instant,
    /// Whether it is on the current stream.
    written: bool,
}

/// What to do with a message just sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSeal {
    /// The peer failed a dial moments ago: everything in flight goes to its
    /// mailbox.
    Deposit,
    /// No stream: connect now (the attempt writes everything in flight).
    Connect,
    /// The stream is open: the message is written when its burst ends.
    Wait,
}

/// Why opening the message stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// The peer could not be reached.
    Unreachable,
    /// The peer was reached, and opening or writing the stream failed.
    Stream,
    /// Our own disk: the sealed messages could not be made durable.
    NotDurable,
}

/// What follows a failed attempt to open the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Open it again right away (a stream opened on a connection closed
    /// under it, say).
    RetrySoon,
    /// Our fault, not the peer's: try again after the back-off.
    Later,
    /// The peer is unreachable: count a failure, and hand what is in
    /// flight to its mailbox.
    Unreachable,
}

/// What a negative acknowledgement means for its message.
#[derive(Debug)]
pub enum Nacked<M> {
    /// The peer ended the session the (pinned) message belongs to.
    SessionEnded(M),
    /// The peer lost the session or cannot decrypt: open a new session
    /// with a KNOCK and send the message in it (once per message).
    Reopen(M),
    /// Rate limited: held back, and put in flight again after the wait.
    Delayed,
    /// Refused for good.
    Rejected(M, RejectReason),
}

/// What a tick found.
#[derive(Debug)]
pub struct Tick<M> {
    /// Messages whose deadline passed while in flight.
    pub expired: Vec<M>,
    /// The oldest message in flight waited too long for its
    /// acknowledgement on an open stream: the stream is taken to be dead.
    pub stale: bool,
}

/// Rate-limited messages whose wait is over.
#[derive(Debug)]
pub struct Released<M> {
    /// Those whose deadline passed while held back; the others went back
    /// in flight (unwritten).
    pub rate_limited: Vec<M>,
}

/// The delivery machine of one link.
#[derive(Debug)]
pub struct Delivery<M> {
    window: usize,
    /// How long the oldest message waits for its acknowledgement.
    ack_wait: Duration,
    inflight: VecDeque<InFlight<M>>,
    /// Rate-limited messages, with when to put them in flight again.
    delayed: VecDeque<(Instant, InFlight<M>)>,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    /// Streams opened again at once since the last one that worked.
    stream_retries: u8,
    stream_open: bool,
    /// Until then, the peer is taken to be unreachable.
    mailbox_until: Option<Instant>,
    /// Whether messages were sealed since the last
    /// [`handle_durable`](Self::handle_durable).
    undurable: bool,
}

impl<M: Pending> Delivery<M> {
    /// A machine with `window` messages in flight at most, whose messages
    /// are given up after `delivery_timeout`.
    pub fn new(window: usize, delivery_timeout: Duration) -> Self {
        Self {
            window: window.max(1),
            ack_wait: ACK_TIMEOUT.min(delivery_timeout / 2),
            inflight: VecDeque::new(),
            delayed: VecDeque::new(),
            backoff: MIN_BACKOFF,
            reconnect_at: None,
            stream_retries: 0,
            stream_open: false,
            mailbox_until: None,
            undurable: false,
        }
    }

    /// Whether another message may be sealed. Messages the peer
    /// rate-limited count against the window while they wait: they come
    /// back in flight, and a peer that holds us back gets no more at once.
    pub fn window_open(&self) -> bool {
        self.inflight.len() + self.delayed.len() < self.window
    }

    /// How many messages are in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// When to try to open the stream again.
    pub fn reconnect_at(&self) -> Option<Instant> {
        self.reconnect_at
    }

    /// The reconnection is being made now.
    pub fn handle_reconnect_due(&mut self) {
        self.reconnect_at = None;
    }

    /// Try to open the stream again at `at` (a circuit breaker's
    /// cool-down, say).
    pub fn reconnect_later(&mut self, at: Instant) {
        self.reconnect_at = Some(at);
    }

    /// Whether nothing is in flight, held back, or due for a reconnection.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.delayed.is_empty() && self.reconnect_at.is_none()
    }

    /// Whether the peer, not connected now, had its mail deposited
    /// moments ago.
    pub fn unreachable(&self, connected: bool, now: Instant) -> bool {
        !connected && self.mailbox_until.is_some_and(|t| t > now)
    }

    /// Whether sealed messages wait to be made durable.
    pub fn needs_durable(&self) -> bool {
        self.undurable
    }

    /// Everything sealed so far is on disk.
    pub fn handle_durable(&mut self) {
        self.undurable = false;
    }

    /// A message was sealed and joins the window, unwritten. `connected`:
    /// whether the peer has a connection now.
    pub fn handle_sealed(&mut self, msg: M, connected: bool, now: Instant) -> AfterSeal {
        self.undurable = true;
        self.inflight.push_back(InFlight {
            msg,
            sent: now,
            written: false,
        });
        if self.stream_open {
            return AfterSeal::Wait;
        }
        if self.unreachable(connected, now) {
            return AfterSeal::Deposit;
        }
        // New work: connect now rather than at the end of the back-off.
        self.backoff = MIN_BACKOFF;
        self.reconnect_at = Some(now);
        AfterSeal::Connect
    }

    /// Whether the burst ends now: the window is full (the acks we wait
    /// for need the frames out), a quarter of the window is sealed and not
    /// written (so that the peer opens one part of a long burst while we
    /// seal the next), or nothing more is queued.
    pub fn should_end_burst(&self, queue_empty: bool) -> bool {
        let unwritten = self
            .inflight
            .iter()
            .rev()
            .take_while(|m| !m.written)
            .count();
        !self.window_open() || unwritten >= (self.window / 4).max(1) || queue_empty
    }

    /// Whether messages in flight wait to be written to the open stream.
    pub fn has_unwritten(&self) -> bool {
        self.stream_open && self.inflight.iter().any(|m| !m.written)
    }

    /// The messages to write to the open stream now, in order; they count
    /// as written at `now`. Should the write fail, report
    /// [`handle_stream_closed`](Self::handle_stream_closed): the next
    /// stream carries everything in flight again.
    pub fn unwritten(&mut self, now: Instant) -> impl Iterator<Item = &M> {
        self.inflight
            .iter_mut()
            .filter(|m| !m.written)
            .map(move |m| {
                m.written = true;
                m.sent = now;
                &m.msg
            })
    }

    /// Everything in flight, in order, for a new stream.
    pub fn all_in_flight(&self) -> impl Iterator<Item = &M> {
        self.inflight.iter().map(|m| &m.msg)
    }

    /// A new stream is open and carries everything in flight, written at
    /// `now`.
    pub fn handle_stream_opened(&mut self, now: Instant) {
        for m in &mut self.inflight {
            m.sent = now;
            m.written = true;
        }
        self.stream_open = true;
        self.stream_retries = 0;
    }

    /// The stream closed or broke: open another after the back-off, which
    /// doubles up to [`MAX_BACKOFF`].
    pub fn handle_stream_closed(&mut self, now: Instant) {
        self.stream_open = false;
        self.reconnect_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Opening the stream failed.
    pub fn handle_stream_failed(&mut self, why: StreamFailure, now: Instant) -> Failure {
        match why {
            StreamFailure::Stream if self.stream_retries < STREAM_RETRIES => {
                // Reached, but the stream failed: most often it was opened
                // on a connection closed under it (a relayed one replaced
                // by a direct one). Try again now rather than call the peer
                // unreachable.
                self.stream_retries += 1;
                self.stream_open = false;
                self.reconnect_at = Some(now + MIN_BACKOFF);
                Failure::RetrySoon
            }
            StreamFailure::NotDurable => {
                self.handle_stream_closed(now);
                Failure::Later
            }
            StreamFailure::Stream | StreamFailure::Unreachable => {
                self.stream_retries = 0;
                self.handle_stream_closed(now);
                Failure::Unreachable
            }
        }
    }

    /// The stream was given up (no acknowledgement in time): closed
    /// without a reconnection of its own.
    pub fn handle_stream_abandoned(&mut self) {
        self.stream_open = false;
    }

    fn take(&mut self, id: MessageId) -> Option<M> {
        let pos = self.inflight.iter().position(|m| m.msg.id() == id)?;
        let m = self.inflight.remove(pos)?;
        self.backoff = MIN_BACKOFF;
        Some(m.msg)
    }

    /// The peer acknowledged `id`: the message, when it was in flight.
    pub fn handle_ack(&mut self, id: MessageId) -> Option<M> {
        self.take(id)
    }

    /// The peer refused `id` for `reason`; `retry_after`: when a
    /// rate-limited message may be sent again. `None` when the message
    /// was not in flight.
    pub fn handle_nack(
        &mut self,
        id: MessageId,
        reason: RejectReason,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Nacked<M>> {
        let msg = self.take(id)?;
        Some(match reason {
            RejectReason::UnknownSession if msg.pinned() => Nacked::SessionEnded(msg),
            RejectReason::UnknownSession | RejectReason::DecryptFailed if msg.reopened() == 0 => {
                Nacked::Reopen(msg)
            }
            RejectReason::RateLimited if msg.deadline() > now => {
                // Not opened by the peer: the same envelope goes again once
                // the peer's bucket has a token.
                let wait = retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .clamp(Duration::from_millis(10), Duration::from_secs(60));
                self.delayed.push_back((
                    now + wait,
                    InFlight {
                        msg,
                        sent: now,
                        written: false,
                    },
                ));
                Nacked::Delayed
            }
            reason => Nacked::Rejected(msg, reason),
        })
    }

    /// Time passes: messages whose deadline passed leave, and a stream
    /// whose oldest message waited too long is reported stale.
    pub fn handle_tick(&mut self, now: Instant) -> Tick<M> {
        let mut expired = Vec::new();
        while self
            .inflight
            .front()
            .is_some_and(|m| m.msg.deadline() <= now)
        {
            if let Some(m) = self.inflight.pop_front() {
                expired.push(m.msg);
            }
        }
        let stale = self.stream_open
            && self
                .inflight
                .front()
                .is_some_and(|m| now.saturating_duration_since(m.sent) >= self.ack_wait);
        Tick { expired, stale }
    }

    /// Rate-limited messages whose wait is over go back in flight (and
    /// those whose deadline passed leave); without a stream, the next one
    /// is opened now.
    pub fn release_delayed(&mut self, now: Instant) -> Released<M> {
        let (mut rate_limited, mut resend) = (Vec::new(), false);
        while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, m)) = self.delayed.pop_front() {
                if m.msg.deadline() <= now {
                    rate_limited.push(m.msg);
                } else {
                    resend = true;
                    self.inflight.push_back(InFlight {
                        sent: now,
                        written: false,
                        ..m
                    });
                }
            }
        }
        if resend && !self.stream_open {
            // The next stream carries everything in flight.
            self.reconnect_at = Some(now);
        }
        Released { rate_limited }
    }

    /// The oldest message in flight, to hand to the mailbox.
    pub fn pop_front(&mut self) -> Option<M> {
        self.inflight.pop_front().map(|m| m.msg)
    }

    /// A message the mailbox could not take back at the front, unwritten.
    pub fn push_front(&mut self, msg: M, now: Instant) {
        self.inflight.push_front(InFlight {
            msg,
            sent: now,
            written: false,
        });
    }

    /// A message went to the peer's mailbox: the peer counts as unreachable
    /// for [`UNREACHABLE_FOR`].
    pub fn handle_deposited(&mut self, now: Instant) {
        self.mailbox_until = Some(now + UNREACHABLE_FOR);
    }

    /// Everything in flight is with the mailbox: no reason to dial.
    pub fn handle_all_deposited(&mut self) {
        self.reconnect_at = None;
    }

    /// Everything held (in flight, then held back), to fail as the link
    /// stops.
    pub fn drain(&mut self) -> Vec<M> {
        let delayed = self.delayed.drain(..).map(|(_, m)| m.msg);
        self.inflight
            .drain(..)
            .map(|m| m.msg)
            .chain(delayed)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Msg {
        id: u8,
        deadline: Instant,
        pinned: bool,
        reopened: u8,
    }

    impl Pending for Msg {
        fn id(&self) -> MessageId {
            MessageId([self.id; 16])
        }
        fn deadline(&self) -> Instant {
            self.deadline
        }
        fn pinned(&self) -> bool {
            self.pinned
        }
        fn reopened(&self) -> u8 {
            self.reopened
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn msg(id: u8, t0: Instant) -> Msg {
        Msg {
            id,
            deadline: t0 + TIMEOUT,
            pinned: false,
            reopened: 0,
        }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Msg>) -> Vec<u8> {
        it.map(|m| m.id).collect()
    }

    #[test]
    fn a_first_message_connects_at_once_and_the_stream_carries_the_window() {
        let t0 = Instant::now();
        let mut d = Delivery::new(8, TIMEOUT);
        assert!(d.is_idle());
        assert_eq!(d.handle_sealed(msg(1, t0), false, t0), AfterSeal::Connect);
        assert_eq!(d.reconnect_at(), Some(t0));
        assert!(d.needs_durable());
        assert_eq!(d.handle_sealed(msg(2, t0), false, t0), AfterSeal::Connect);
        d.handle_reconnect_due();
        d.handle_durable();
        assert_eq!(ids(d.all_in_flight()), [1, 2]);
        d.handle_stream_opened(t0);
        assert!(!d.has_unwritten());
        assert_eq!(d.handle_sealed(msg(3, t0), true, t0), AfterSeal::Wait);
        assert!(d.has_unwritten());
        assert_eq!(ids(d.unwritten(t0)), [3]);
        assert!(!d.has_unwritten());
        assert_eq!(d.handle_ack(MessageId([2; 16])).map(|m| m.id), Some(2));
        assert_eq!(d.handle_ack(MessageId([2; 16])), None, "acknowledged once");
        assert_eq!(d.in_flight(), 2);
    }

    #[test]
    fn a_burst_ends_at_a_quarter_of_the_window_when_the_window_fills_or_the_queue_empties() {
        let t0 = Instant::now();
        let mut d = Delivery::new(8, TIMEOUT);
        d.handle_stream_opened(t0);
        d.handle_sealed(msg(1, t0), true, t0);
        assert!(!d.should_end_burst(false));
        assert!(d.should_end_burst(true));
        d.handle_sealed(msg(2, t0), true, t0);
        assert!(d.should_end_burst(false), "a quarter of 8 unwritten");
        let _ = d.unwritten(t0).count();
        for i in 3..=8 {
            d.handle_sealed(msg(i, t0), true, t0);
            let _ = d.unwritten(t0).count();
        }
        assert!(!d.window_open());
        assert!(d.should_end_burst(false), "window full");
    }

    #[test]
    fn back_off_doubles_to_its_cap_and_an_ack_resets_it() {
        let t0 = Instant::now();
        let mut d = Delivery::new(4, TIMEOUT);
        d.handle_sealed(msg(1, t0), false, t0);
        let mut waits = Vec::new();
        for _ in 0..8 {
            d.handle_stream_closed(t0);
            waits.push(d.reconnect_at().unwrap() - t0);
        }
        assert_eq!(waits[0], MIN_BACKOFF);
        assert_eq!(waits[1], MIN_BACKOFF * 2);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        d.handle_stream_opened(t0);
        d.handle_ack(MessageId([1; 16]));
        d.handle_stream_closed(t0);
        assert_eq!(d.reconnect_at(), Some(t0 + MIN_BACKOFF));
    }

    #[test]
    fn a_failing_stream_is_retried_a_few_times_then_the_peer_is_unreachable() {
        let t0 = Instant::now();
        let mut d = Delivery::new(4, TIMEOUT);
        d.handle_sealed(msg(1, t0), false, t0);
        for _ in 0..STREAM_RETRIES {
            assert_eq!(
                d.handle_stream_failed(StreamFailure::Stream, t0),
                Failure::RetrySoon
            );
            assert_eq!(d.reconnect_at(), Some(t0 + MIN_BACKOFF));
        }
        assert_eq!(
            d.handle_stream_failed(StreamFailure::Stream, t0),
            Failure::Unreachable
        );
        // The count starts again: the next failure is retried.
        assert_eq!(
            d.handle_stream_failed(StreamFailure::Stream, t0),
            Failure::RetrySoon
        );
        assert_eq!(
            d.handle_stream_failed(StreamFailure::NotDurable, t0),
            Failure::Later
        );
        assert_eq!(
            d.handle_stream_failed(StreamFailure::Unreachable, t0),
            Failure::Unreachable
        );
    }

    #[test]
    fn after_a_deposit_new_mail_goes_to_the_mailbox_until_the_peer_connects_or_time_passes() {
        let t0 = Instant::now();
        let mut d = Delivery::new(4, TIMEOUT);
        d.handle_sealed(msg(1, t0), false, t0);
        assert_eq!(d.pop_front().map(|m| m.id), Some(1));
        d.handle_deposited(t0);
        d.handle_all_deposited();
        assert!(d.is_idle());
        assert_eq!(d.handle_sealed(msg(2, t0), false, t0), AfterSeal::Deposit);
        assert_eq!(d.handle_sealed(msg(3, t0), true, t0), AfterSeal::Connect);
        let later = t0 + UNREACHABLE_FOR;
        assert_eq!(
            d.handle_sealed(msg(4, later), false, later),
            AfterSeal::Connect
        );
    }

    #[test]
    fn expired_messages_leave_and_a_silent_stream_goes_stale() {
        let t0 = Instant::now();
        let mut d = Delivery::new(4, TIMEOUT);
        d.handle_sealed(msg(1, t0), false, t0);
        let tick = d.handle_tick(t0 + ACK_TIMEOUT);
        assert!(!tick.stale, "no stream: nothing to call dead");
        d.handle_stream_opened(t0);
        assert!(!d.handle_tick(t0 + ACK_TIMEOUT / 2).stale);
        assert!(d.handle_tick(t0 + ACK_TIMEOUT).stale);
        let tick = d.handle_tick(t0 + TIMEOUT);
        assert_eq!(tick.expired, [msg(1, t0)]);
        assert!(!tick.stale);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn nacks_say_what_to_do() {
        let t0 = Instant::now();
        let mut d = Delivery::new(8, TIMEOUT);
        let pinned = Msg {
            pinned: true,
            ..msg(1, t0)
        };
        let again = Msg {
            reopened: 1,
            ..msg(3, t0)
        };
        for m in [pinned, msg(2, t0), again, msg(4, t0), msg(5, t0)] {
            d.handle_sealed(m, true, t0);
        }
        let nack =
            |d: &mut Delivery<Msg>, id: u8, r| d.handle_nack(MessageId([id; 16]), r, None, t0);
        assert!(matches!(
            nack(&mut d, 1, RejectReason::UnknownSession),
            Some(Nacked::SessionEnded(m)) if m.id == 1
        ));
        assert!(matches!(
            nack(&mut d, 2, RejectReason::DecryptFailed),
            Some(Nacked::Reopen(m)) if m.id == 2
        ));
        assert!(matches!(
            nack(&mut d, 3, RejectReason::DecryptFailed),
            Some(Nacked::Rejected(m, RejectReason::DecryptFailed)) if m.id == 3
        ));
        assert!(matches!(
            nack(&mut d, 4, RejectReason::RateLimited),
            Some(Nacked::Delayed)
        ));
        assert!(matches!(
            nack(&mut d, 5, RejectReason::NotAllowed),
            Some(Nacked::Rejected(_, RejectReason::NotAllowed))
        ));
        assert!(nack(&mut d, 5, RejectReason::NotAllowed).is_none());
        // The rate-limited one comes back after its wait (1 s by default).
        assert!(!d.is_idle());
        let released = d.release_delayed(t0);
        assert!(released.rate_limited.is_empty());
        assert_eq!(d.in_flight(), 0, "still held back");
        let released = d.release_delayed(t0 + Duration::from_secs(1));
        assert!(released.rate_limited.is_empty());
        assert_eq!(ids(d.all_in_flight()), [4]);
        assert_eq!(d.reconnect_at(), Some(t0 + Duration::from_secs(1)));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Input {
            Seal { connected: bool },
            EndBurst,
            Open,
            Close,
            Fail(u8),
            Ack(u8),
            Nack(u8, u8),
            Tick,
            Deposit,
            Advance(u16),
        }

        fn input() -> impl Strategy<Value = Input> {
            prop_oneof![
                4 => any::<bool>().prop_map(|connected| Input::Seal { connected }),
                2 => Just(Input::EndBurst),
                1 => Just(Input::Open),
                1 => Just(Input::Close),
                1 => (0u8..3).prop_map(Input::Fail),
                3 => any::<u8>().prop_map(Input::Ack),
                1 => (any::<u8>(), 0u8..4).prop_map(|(i, r)| Input::Nack(i, r)),
                1 => Just(Input::Tick),
                1 => Just(Input::Deposit),
                2 => (0u16..20_000).prop_map(Input::Advance),
            ]
        }

        proptest! {
            /// Whatever happens, the window is never exceeded (rate-limited
            /// messages waiting to go again count against it), every
            /// message sealed comes out exactly once (acknowledged,
            /// refused, expired, deposited or drained), the back-off stays
            /// in its bounds, and a burst is written in the order its
            /// messages were sealed (a rate-limited message goes again
            /// after those sealed while it waited).
            #[test]
            fn every_message_leaves_exactly_once(inputs in proptest::collection::vec(input(), 1..200)) {
                let t0 = Instant::now();
                let mut now = t0;
                let mut d: Delivery<Msg> = Delivery::new(8, TIMEOUT);
                let mut next = 0u8;
                let mut sealed = Vec::new();
                let mut out = Vec::new();
                let mut resent = std::collections::HashSet::new();
                for i in inputs {
                    match i {
                        Input::Seal { connected } => {
                            if d.window_open() && next < u8::MAX {
                                let m = Msg { id: next, deadline: now + TIMEOUT, pinned: next.is_multiple_of(5), reopened: next % 3 };
                                sealed.push(next);
                                next += 1;
                                d.handle_sealed(m, connected, now);
                            }
                        }
                        Input::EndBurst => {
                            if d.stream_open {
                                let written: Vec<u8> = ids(d.unwritten(now))
                                    .into_iter()
                                    .filter(|id| !resent.contains(id))
                                    .collect();
                                let mut sorted = written.clone();
                                sorted.sort_unstable();
                                prop_assert_eq!(written, sorted, "a burst is written in order");
                            }
                        }
                        Input::Open => d.handle_stream_opened(now),
                        Input::Close => d.handle_stream_closed(now),
                        Input::Fail(k) => {
                            let why = [StreamFailure::Stream, StreamFailure::Unreachable, StreamFailure::NotDurable][k as usize];
                            d.handle_stream_failed(why, now);
                        }
                        Input::Ack(k) => {
                            if let Some(m) = d.handle_ack(MessageId([k; 16])) {
                                out.push(m.id);
                            }
                        }
                        Input::Nack(k, r) => {
                            let reason = [RejectReason::UnknownSession, RejectReason::DecryptFailed, RejectReason::RateLimited, RejectReason::NotAllowed][r as usize];
                            match d.handle_nack(MessageId([k; 16]), reason, None, now) {
                                Some(Nacked::SessionEnded(m) | Nacked::Reopen(m) | Nacked::Rejected(m, _)) => out.push(m.id),
                                Some(Nacked::Delayed) => {
                                    resent.insert(k);
                                }
                                None => {}
                            }
                        }
                        Input::Tick => {
                            let t = d.handle_tick(now);
                            out.extend(t.expired.iter().map(|m| m.id));
                            let r = d.release_delayed(now);
                            out.extend(r.rate_limited.iter().map(|m| m.id));
                        }
                        Input::Deposit => {
                            while let Some(m) = d.pop_front() {
                                out.push(m.id);
                            }
                            d.handle_deposited(now);
                            d.handle_all_deposited();
                        }
                        Input::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                    }
                    prop_assert!(d.in_flight() + d.delayed.len() <= 8);
                    prop_assert!(d.backoff >= MIN_BACKOFF && d.backoff <= MAX_BACKOFF);
                    if let Some(at) = d.reconnect_at() {
                        prop_assert!(at <= now + MAX_BACKOFF);
                    }
                }
                out.extend(d.drain().iter().map(|m| m.id));
                out.sort_unstable();
                prop_assert_eq!(out, sealed);
            }
        }
    }
}
