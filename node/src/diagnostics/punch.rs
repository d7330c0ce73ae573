//! The hole-punch probe: what the node saw of its connections to one peer
//! ([`PunchWatch`]) and the outcome it reports ([`PunchOutcome`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::PathKind;

/// What the hole-punch probe found out about reaching one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PunchOutcome {
    /// A direct connection to the peer.
    Direct {
        /// Its path.
        path: PathKind,
        /// Whether it replaced a relayed connection (a hole punch or
        /// another upgrade); `false`: the peer was dialled directly.
        upgraded: bool,
        /// Whether it was up before the probe started (then `ms` is 0).
        already: bool,
        /// Time to direct: from the relayed connection to the direct one
        /// when upgraded, else from the start of the probe.
        ms: u64,
    },
    /// Reached through a relay only: no direct connection came within the
    /// wait.
    RelayedOnly {
        /// How long the probe waited after the relayed connection.
        waited_ms: u64,
        /// Whether the relayed connection was up before the probe started
        /// (its hole punch was tried when it opened, none is tried again).
        #[serde(default)]
        already: bool,
    },
    /// Not reached at all.
    Unreachable {
        /// Why.
        error: String,
    },
}

/// The hole-punch probe of one peer and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PunchProbe {
    /// The peer (its AMID).
    pub peer: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: PunchOutcome,
}

impl PunchProbe {
    /// The probe of `peer` that ended in `outcome`.
    pub fn new(peer: impl Into<String>, outcome: PunchOutcome) -> Self {
        Self {
            peer: peer.into(),
            outcome,
        }
    }
}

/// The hole-punch probe's decision, without I/O: fed the paths of the
/// connections to the peer as they come (`at`: time since the probe
/// started), it says when the probe is over and how it ended.
#[derive(Debug, Clone)]
pub struct PunchWatch {
    wait: Duration,
    relayed_at: Option<Duration>,
    relayed_before: bool,
    done: Option<PunchOutcome>,
}

impl PunchWatch {
    /// A probe that waits `wait` after a relayed connection for a direct
    /// one ([`PUNCH_WAIT`](super::PUNCH_WAIT) in the node).
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            relayed_at: None,
            relayed_before: false,
            done: None,
        }
    }

    /// A connection to the peer is up on `path`, `at` after the probe
    /// started; `before`: it was up before the probe started.
    pub fn handle_path(&mut self, path: PathKind, at: Duration, before: bool) {
        if self.done.is_some() {
            return;
        }
        match path {
            PathKind::Relayed => {
                if self.relayed_at.is_none() {
                    self.relayed_at = Some(at);
                    self.relayed_before = before;
                }
            }
            // Not a connection.
            PathKind::Mailbox => {}
            direct => {
                let upgraded = self.relayed_at.is_some();
                let ms = match self.relayed_at {
                    _ if before => Duration::ZERO,
                    Some(r) => at.saturating_sub(r),
                    None => at,
                };
                self.done = Some(PunchOutcome::Direct {
                    path: direct,
                    upgraded,
                    already: before,
                    ms: ms.as_millis() as u64,
                });
            }
        }
    }

    /// The peer could not be reached (no card, every dial failed).
    pub fn handle_unreachable(&mut self, error: impl Into<String>) {
        if self.done.is_none() {
            self.done = Some(PunchOutcome::Unreachable {
                error: error.into(),
            });
        }
    }

    /// When the probe stops waiting for a direct connection (time since
    /// it started); `None` until a relayed connection is up.
    pub fn deadline(&self) -> Option<Duration> {
        self.relayed_at.map(|r| r + self.wait)
    }

    /// The outcome, once there is one at `at` (a direct connection, the
    /// peer unreachable, or the wait over).
    pub fn poll_outcome(&self, at: Duration) -> Option<PunchOutcome> {
        if let Some(done) = &self.done {
            return Some(done.clone());
        }
        let relayed_at = self.relayed_at?;
        (at >= relayed_at + self.wait).then(|| PunchOutcome::RelayedOnly {
            waited_ms: at.saturating_sub(relayed_at).as_millis() as u64,
            already: self.relayed_before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::PUNCH_WAIT;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_punch_probe_ends_direct_relayed_only_or_unreachable() {
        // Relayed at 300 ms, direct 1.2 s later: upgraded.
        let mut w = PunchWatch::new(PUNCH_WAIT);
        assert_eq!(w.poll_outcome(100 * MS), None);
        assert_eq!(w.deadline(), None);
        w.handle_path(PathKind::Relayed, 300 * MS, false);
        assert_eq!(w.deadline(), Some(300 * MS + PUNCH_WAIT));
        assert_eq!(w.poll_outcome(1000 * MS), None);
        w.handle_path(PathKind::DirectQuic, 1500 * MS, false);
        let direct = PunchOutcome::Direct {
            path: PathKind::DirectQuic,
            upgraded: true,
            already: false,
            ms: 1200,
        };
        assert_eq!(w.poll_outcome(1500 * MS), Some(direct.clone()));
        // What comes after the outcome changes nothing.
        w.handle_path(PathKind::Relayed, 1600 * MS, false);
        w.handle_unreachable("gone");
        assert_eq!(w.poll_outcome(60_000 * MS), Some(direct));

        // Relayed, and nothing else within the wait.
        let mut w = PunchWatch::new(PUNCH_WAIT);
        w.handle_path(PathKind::Relayed, 300 * MS, false);
        // A second relayed connection does not restart the wait.
        w.handle_path(PathKind::Relayed, 5000 * MS, false);
        assert_eq!(w.poll_outcome(300 * MS + PUNCH_WAIT - MS), None);
        assert_eq!(
            w.poll_outcome(300 * MS + PUNCH_WAIT),
            Some(PunchOutcome::RelayedOnly {
                waited_ms: 10_000,
                already: false
            })
        );
        // Relayed before the probe: said so.
        let mut w = PunchWatch::new(PUNCH_WAIT);
        w.handle_path(PathKind::Relayed, 2 * MS, true);
        assert_eq!(
            w.poll_outcome(2 * MS + PUNCH_WAIT),
            Some(PunchOutcome::RelayedOnly {
                waited_ms: 10_000,
                already: true
            })
        );

        // Dialled directly at once, or already direct.
        let mut w = PunchWatch::new(PUNCH_WAIT);
        w.handle_path(PathKind::DirectTcp, 80 * MS, false);
        assert_eq!(
            w.poll_outcome(80 * MS),
            Some(PunchOutcome::Direct {
                path: PathKind::DirectTcp,
                upgraded: false,
                already: false,
                ms: 80
            })
        );
        let mut w = PunchWatch::new(PUNCH_WAIT);
        w.handle_path(PathKind::DirectWebRtc, 5 * MS, true);
        assert!(matches!(
            w.poll_outcome(5 * MS),
            Some(PunchOutcome::Direct {
                already: true,
                ms: 0,
                ..
            })
        ));

        // Never reached; a mailbox is not a connection.
        let mut w = PunchWatch::new(PUNCH_WAIT);
        w.handle_path(PathKind::Mailbox, MS, false);
        assert_eq!(w.poll_outcome(2 * MS), None);
        w.handle_unreachable("no card found");
        assert_eq!(
            w.poll_outcome(3 * MS),
            Some(PunchOutcome::Unreachable {
                error: "no card found".into()
            })
        );
    }
}
