//! What the node did minute by minute over the last hour, for the
//! dashboard's plots (`GET /v1/stats/timeseries`): messages sent and
//! received by path, and KNOCK decisions.
//!
//! A fixed ring of [`MINUTES`] buckets, one per wall-clock minute, fed with
//! node events and the time they were seen; nothing here reads the clock.
//! A bucket is reused when its slot comes round again, so the memory used
//! never grows.

use serde::Serialize;

use agentmesh_transports::PathKind;

use crate::events::NodeEvent;

/// Minutes kept: the last hour.
pub(super) const MINUTES: usize = 60;
/// Length of a bucket, ms.
pub(super) const MINUTE_MS: u64 = 60_000;

/// Messages counted by the path they took (names as the node prints paths).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(super) struct ByPath {
    #[serde(rename = "direct-quic")]
    direct_quic: u64,
    #[serde(rename = "direct-tcp")]
    direct_tcp: u64,
    #[serde(rename = "direct-webrtc")]
    direct_webrtc: u64,
    relayed: u64,
    mailbox: u64,
    other: u64,
}

impl ByPath {
    fn add(&mut self, path: PathKind) {
        let c = match path {
            PathKind::DirectQuic => &mut self.direct_quic,
            PathKind::DirectTcp => &mut self.direct_tcp,
            PathKind::DirectWebRtc => &mut self.direct_webrtc,
            PathKind::Relayed => &mut self.relayed,
            PathKind::Mailbox => &mut self.mailbox,
            // Other, and kinds this version does not know.
            _ => &mut self.other,
        };
        *c += 1;
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.direct_quic
            + self.direct_tcp
            + self.direct_webrtc
            + self.relayed
            + self.mailbox
            + self.other
    }
}

/// KNOCKs decided, by decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(super) struct Knocks {
    accepted: u64,
    rejected: u64,
}

/// One minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(super) struct Bucket {
    /// Start of the minute, ms since the Unix epoch.
    start_ms: u64,
    /// Messages this agent sent, by path: delivered over a connection, or
    /// deposited in mailboxes (counted when deposited, not again when
    /// fetched).
    sent: ByPath,
    /// Messages this agent received, by path.
    received: ByPath,
    /// Incoming KNOCKs decided.
    knocks: Knocks,
}

/// The ring of the last [`MINUTES`] minutes.
#[derive(Debug)]
pub(super) struct Timeseries {
    /// Slot `m % MINUTES` holds minute `m` (its `start_ms / MINUTE_MS`), or
    /// an older minute that is read as empty.
    ring: [Bucket; MINUTES],
}

impl Default for Timeseries {
    fn default() -> Self {
        Self {
            ring: [Bucket::default(); MINUTES],
        }
    }
}

impl Timeseries {
    /// Counts `event`, seen at `now_ms`. Events that move no message and
    /// decide no KNOCK are ignored.
    pub(super) fn handle_event(&mut self, now_ms: u64, event: &NodeEvent) {
        let Some(bucket) = self.bucket_mut(now_ms) else {
            return;
        };
        match event {
            // Mail is counted as sent when deposited; its receipt comes later.
            NodeEvent::Delivered {
                path: PathKind::Mailbox,
                ..
            } => {}
            NodeEvent::Delivered { path, .. } => bucket.sent.add(*path),
            NodeEvent::Deposited { .. } => bucket.sent.add(PathKind::Mailbox),
            NodeEvent::MessageReceived { path, .. } => bucket.received.add(*path),
            NodeEvent::KnockDecided { accepted: true, .. } => bucket.knocks.accepted += 1,
            NodeEvent::KnockDecided { .. } => bucket.knocks.rejected += 1,
            _ => {}
        }
    }

    /// The bucket of `now_ms`'s minute; `None` when its slot already holds
    /// a later minute (the clock went back over an hour).
    fn bucket_mut(&mut self, now_ms: u64) -> Option<&mut Bucket> {
        let minute = now_ms / MINUTE_MS;
        let start_ms = minute * MINUTE_MS;
        let slot = &mut self.ring[(minute % MINUTES as u64) as usize];
        if slot.start_ms > start_ms {
            return None;
        }
        if slot.start_ms != start_ms {
            *slot = Bucket {
                start_ms,
                ..Bucket::default()
            };
        }
        Some(slot)
    }

    /// The last [`MINUTES`] minutes up to the one of `now_ms`, oldest
    /// first; minutes with nothing in them are zeros.
    pub(super) fn snapshot(&self, now_ms: u64) -> Vec<Bucket> {
        let now_minute = now_ms / MINUTE_MS;
        let first = now_minute.saturating_sub(MINUTES as u64 - 1);
        (first..=now_minute)
            .map(|minute| {
                let start_ms = minute * MINUTE_MS;
                let slot = self.ring[(minute % MINUTES as u64) as usize];
                if slot.start_ms == start_ms {
                    slot
                } else {
                    Bucket {
                        start_ms,
                        ..Bucket::default()
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::MessageId, identity::Identity, knock::RejectReason};
    use proptest::prelude::*;

    const T0: u64 = 1_800_000_000_000;

    fn delivered(path: PathKind) -> NodeEvent {
        NodeEvent::Delivered {
            id: MessageId::random(),
            to: Identity::from_seed(&[1; 32]).amid(),
            path,
            knocked: false,
            latency_ms: Some(3),
        }
    }

    fn received(path: PathKind) -> NodeEvent {
        NodeEvent::MessageReceived {
            id: MessageId::random(),
            from: Identity::from_seed(&[2; 32]).amid(),
            path,
        }
    }

    fn knock(accepted: bool) -> NodeEvent {
        NodeEvent::KnockDecided {
            from: Identity::from_seed(&[3; 32]).amid(),
            accepted,
            reason: (!accepted).then_some(RejectReason::Blocked),
            session: None,
            tier: None,
            reputation: None,
            policy_hash: None,
        }
    }

    #[test]
    fn events_land_in_their_minute_by_path_and_decision() {
        let mut t = Timeseries::default();
        t.handle_event(T0, &delivered(PathKind::DirectQuic));
        t.handle_event(T0 + 1, &delivered(PathKind::Relayed));
        t.handle_event(T0 + 2, &received(PathKind::DirectWebRtc));
        t.handle_event(T0 + MINUTE_MS, &knock(true));
        t.handle_event(T0 + MINUTE_MS, &knock(false));
        t.handle_event(
            T0 + MINUTE_MS,
            &NodeEvent::Deposited {
                id: MessageId::random(),
                to: Identity::from_seed(&[1; 32]).amid(),
                relays: 2,
            },
        );
        // The mail's receipt, later: not counted again.
        t.handle_event(T0 + MINUTE_MS, &delivered(PathKind::Mailbox));
        t.handle_event(
            T0 + MINUTE_MS,
            &NodeEvent::Disconnected { peer: "x".into() },
        );

        let s = t.snapshot(T0 + MINUTE_MS + 5);
        assert_eq!(s.len(), MINUTES);
        let (before, last) = s.split_at(MINUTES - 1);
        let prev = before.last().unwrap();
        assert_eq!(prev.start_ms, T0 / MINUTE_MS * MINUTE_MS);
        assert_eq!((prev.sent.direct_quic, prev.sent.relayed), (1, 1));
        assert_eq!(prev.received.direct_webrtc, 1);
        assert_eq!(prev.knocks, Knocks::default());
        let last = last[0];
        assert_eq!(last.start_ms, prev.start_ms + MINUTE_MS);
        assert_eq!(last.sent.mailbox, 1);
        assert_eq!(last.sent.total(), 1);
        assert_eq!(
            last.knocks,
            Knocks {
                accepted: 1,
                rejected: 1
            }
        );
        assert!(before[..MINUTES - 2]
            .iter()
            .all(|b| b.sent.total() + b.received.total() == 0));
        let json = serde_json::to_value(last).unwrap();
        assert_eq!(json["sent"]["mailbox"], 1);
        assert_eq!(json["knocks"]["rejected"], 1);
        assert!(json["received"].get("direct-webrtc").is_some());
    }

    #[test]
    fn minutes_older_than_an_hour_are_forgotten() {
        let mut t = Timeseries::default();
        t.handle_event(T0, &delivered(PathKind::DirectQuic));
        let later = T0 + MINUTES as u64 * MINUTE_MS;
        assert!(t
            .snapshot(later)
            .iter()
            .all(|b| b.sent.total() == 0 && b.start_ms > T0 - MINUTE_MS));
        // Its slot is taken by the new minute, which starts from zero.
        t.handle_event(later, &delivered(PathKind::Relayed));
        let last = *t.snapshot(later).last().unwrap();
        assert_eq!((last.sent.direct_quic, last.sent.relayed), (0, 1));
    }

    proptest! {
        /// Whatever the order and spread of events, the snapshot has one
        /// bucket per minute, consecutive, and counts exactly the events of
        /// the last hour.
        #[test]
        fn the_snapshot_counts_the_last_hour_exactly(
            offsets in proptest::collection::vec(0u64..3 * MINUTES as u64 * MINUTE_MS, 0..200),
        ) {
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            let mut t = Timeseries::default();
            for o in &sorted {
                t.handle_event(T0 + o, &knock(true));
            }
            let now = T0 + sorted.last().copied().unwrap_or(0);
            let s = t.snapshot(now);
            prop_assert_eq!(s.len(), MINUTES);
            prop_assert!(s.windows(2).all(|w| w[1].start_ms == w[0].start_ms + MINUTE_MS));
            let first = s[0].start_ms;
            let expected = sorted.iter().filter(|o| T0 + **o >= first).count() as u64;
            let counted: u64 = s.iter().map(|b| b.knocks.accepted).sum();
            prop_assert_eq!(counted, expected);
        }
    }
}
