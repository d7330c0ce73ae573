//! What a relay counts, and how it shows it: the mailbox server's counters
//! ([`RelayMetrics`], atomics fed by [`mailbox::serve`](crate::mailbox::serve)),
//! a [`RelaySnapshot`] of everything a volunteer looks at (the node's
//! circuit relay figures, the bytes its connections carry, the mailbox's
//! counters and occupancy, uptime),
//! and its Prometheus text exposition ([`RelaySnapshot::to_prometheus`],
//! names `agentmesh_relay_*`).
//!
//! Mailbox occupancy is shown per recipient only as counts: how many
//! recipients hold how many envelopes, never who they are.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use agentmesh_node::{mailbox::ErrorCode, Node, RelayStatus};
use serde::Serialize;

use crate::mailbox::{MailboxStats, MailboxStore, Response};

/// How long a count of the mailbox's occupancy is reused: counting reads
/// every stored envelope, and a page and a scraper may ask every few
/// seconds.
pub const OCCUPANCY_CACHE: Duration = Duration::from_secs(5);

/// The refusal codes counted one by one; anything else counts as `other`.
pub const REFUSAL_REASONS: [&str; 12] = [
    "mailbox_full",
    "sender_quota",
    "relay_full",
    "forged",
    "rate_limited",
    "too_large",
    "expired",
    "invalid_recipient",
    "forbidden",
    "malformed",
    "storage",
    "other",
];

/// Upper bounds of the occupancy classes: a recipient holding `n`
/// envelopes is in the first class whose bound is at least `n` (the last,
/// `u64::MAX`, takes the rest).
pub const OCCUPANCY_CLASSES: [u64; 6] = [1, 5, 10, 25, 50, u64::MAX];

/// The mailbox server's counters since the relay started.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    deposits: AtomicU64,
    duplicates: AtomicU64,
    fetches: AtomicU64,
    fetched: AtomicU64,
    acks: AtomicU64,
    acked: AtomicU64,
    named: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
    refusals: [AtomicU64; REFUSAL_REASONS.len()],
}

impl RelayMetrics {
    /// Counts an answer the mailbox server sent.
    pub fn count_response(&self, response: &Response) {
        match response {
            Response::Deposited { duplicate } => {
                self.deposits.fetch_add(1, Relaxed);
                if *duplicate {
                    self.duplicates.fetch_add(1, Relaxed);
                }
            }
            Response::Mail { items, .. } => {
                self.fetches.fetch_add(1, Relaxed);
                self.fetched.fetch_add(items.len() as u64, Relaxed);
            }
            Response::Acked { removed, .. } => {
                self.acks.fetch_add(1, Relaxed);
                self.acked.fetch_add(u64::from(*removed), Relaxed);
            }
            Response::Named { .. } => {
                self.named.fetch_add(1, Relaxed);
            }
            // A recipient asking how much waits changes nothing.
            Response::Held { .. } => {}
            Response::Error { code, .. } => self.count_refusal(*code),
        }
    }

    /// Counts a request refused with `code`.
    pub fn count_refusal(&self, code: ErrorCode) {
        let name = code.to_string();
        let i = REFUSAL_REASONS
            .iter()
            .position(|r| *r == name)
            .unwrap_or(REFUSAL_REASONS.len() - 1);
        self.refusals[i].fetch_add(1, Relaxed);
    }

    /// Counts a request dropped because the server was at capacity.
    pub fn count_dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// Counts envelopes purged because they expired.
    pub fn count_expired(&self, n: usize) {
        self.expired.fetch_add(n as u64, Relaxed);
    }

    /// The counters as they are now.
    pub fn counters(&self) -> MailboxCounters {
        MailboxCounters {
            deposits: self.deposits.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            envelopes_fetched: self.fetched.load(Relaxed),
            acks: self.acks.load(Relaxed),
            envelopes_acked: self.acked.load(Relaxed),
            senders_named: self.named.load(Relaxed),
            dropped_busy: self.dropped.load(Relaxed),
            expired: self.expired.load(Relaxed),
            refusals: REFUSAL_REASONS
                .iter()
                .zip(&self.refusals)
                .map(|(r, c)| ((*r).to_owned(), c.load(Relaxed)))
                .collect(),
        }
    }
}

/// The mailbox server's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MailboxCounters {
    /// Deposits stored (duplicates included).
    pub deposits: u64,
    /// Of those, envelopes that were already held.
    pub duplicates: u64,
    /// Fetches answered.
    pub fetches: u64,
    /// Envelopes handed out by those fetches.
    pub envelopes_fetched: u64,
    /// Acknowledgements answered.
    pub acks: u64,
    /// Envelopes removed by those acknowledgements.
    pub envelopes_acked: u64,
    /// Requests naming a recipient's known senders.
    pub senders_named: u64,
    /// Requests dropped because the server was at capacity.
    pub dropped_busy: u64,
    /// Envelopes purged because they expired.
    pub expired: u64,
    /// Refused requests, by the code of the answer, in
    /// [`REFUSAL_REASONS`] order.
    pub refusals: Vec<(String, u64)>,
}

/// What the mailbox holds, per recipient as counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Occupancy {
    /// Envelopes, bytes and recipients in all.
    pub stats: MailboxStats,
    /// Recipients by how many envelopes they hold: `(upper bound, count)`
    /// per class of [`OCCUPANCY_CLASSES`] (`null` bound for the last).
    pub classes: Vec<(Option<u64>, u64)>,
    /// The fullest recipients' envelope counts, largest first (at most
    /// [`TOP_RECIPIENTS`]); no recipient is named.
    pub largest: Vec<u64>,
}

/// How many of the fullest recipients' counts an [`Occupancy`] keeps.
pub const TOP_RECIPIENTS: usize = 10;

impl Occupancy {
    /// The occupancy of a mailbox whose recipients hold `per_recipient`
    /// envelopes each (in any order).
    pub fn from_counts(stats: MailboxStats, mut per_recipient: Vec<u64>) -> Self {
        let mut classes: Vec<(Option<u64>, u64)> = OCCUPANCY_CLASSES
            .iter()
            .map(|b| ((*b != u64::MAX).then_some(*b), 0))
            .collect();
        for n in &per_recipient {
            if let Some(i) = OCCUPANCY_CLASSES.iter().position(|b| n <= b) {
                classes[i].1 += 1;
            }
        }
        per_recipient.sort_unstable_by(|a, b| b.cmp(a));
        per_recipient.truncate(TOP_RECIPIENTS);
        Self {
            stats,
            classes,
            largest: per_recipient,
        }
    }
}

/// The window over which [`Bandwidth`] rates are averaged.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The least time between two samples a [`RateMeter`] keeps, which bounds
/// it to `RATE_WINDOW / RATE_STEP + 2` samples however often it is asked.
pub const RATE_STEP: Duration = Duration::from_secs(5);

/// The bytes all of the relay's connections carried: circuits (which
/// dominate on a busy relay; a byte relayed through a circuit is counted
/// once in, from one end, and once out, to the other), mailbox requests,
/// the DHT, identify and ping. What the connections' streams carry, from
/// the node's `libp2p_bandwidth_bytes_total` counters; the transports'
/// own framing and encryption (TCP and QUIC headers, Noise, Yamux frame
/// heads) are not in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Bandwidth {
    /// Bytes received since the relay started.
    pub bytes_in: u64,
    /// Bytes sent since the relay started.
    pub bytes_out: u64,
    /// Bytes received per second, over the last [`RATE_WINDOW`] (or since
    /// the relay started, if that is shorter).
    pub in_per_sec: f64,
    /// Bytes sent per second, over the same window.
    pub out_per_sec: f64,
}

impl Bandwidth {
    /// The totals of the `libp2p_bandwidth_bytes_total` samples in a
    /// Prometheus text exposition, `(in, out)`, summed over every protocol
    /// stack; `(0, 0)` when there are none.
    pub fn totals_from_exposition(text: &str) -> (u64, u64) {
        let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("libp2p_bandwidth_bytes_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Ok(n) = value.trim().parse::<u64>() else {
                continue;
            };
            if labels.contains("direction=\"Inbound\"") {
                bytes_in = bytes_in.saturating_add(n);
            } else if labels.contains("direction=\"Outbound\"") {
                bytes_out = bytes_out.saturating_add(n);
            }
        }
        (bytes_in, bytes_out)
    }
}

/// Rates of two growing byte counters over the last [`RATE_WINDOW`]: fed
/// the counters' values with the time they were read, it answers the
/// bytes per second between the oldest sample in the window and now.
/// Holds at most one sample per [`RATE_STEP`]; reads no clock.
#[derive(Debug, Clone)]
pub struct RateMeter {
    /// `(when, in, out)`, oldest first; never empty.
    samples: VecDeque<(Instant, u64, u64)>,
}

impl RateMeter {
    /// A meter whose counters were zero at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            samples: VecDeque::from([(start, 0, 0)]),
        }
    }

    /// Takes the counters' values `bytes_in` and `bytes_out` read at `now`
    /// and returns the rates `(in, out)` in bytes per second since the
    /// oldest sample within [`RATE_WINDOW`] of `now`; zeros if no time has
    /// passed since it. A counter that went down (it never should) counts
    /// as no growth.
    pub fn handle_sample(&mut self, now: Instant, bytes_in: u64, bytes_out: u64) -> (f64, f64) {
        // Drop samples while the next one is still a whole window old, so
        // the oldest kept spans the window (or all there is).
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|(t, ..)| now.saturating_duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let newest = self.samples.back().map_or(now, |(t, ..)| *t);
        if now.saturating_duration_since(newest) >= RATE_STEP {
            self.samples.push_back((now, bytes_in, bytes_out));
        }
        let Some(&(t0, in0, out0)) = self.samples.front() else {
            return (0.0, 0.0);
        };
        let secs = now.saturating_duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            bytes_in.saturating_sub(in0) as f64 / secs,
            bytes_out.saturating_sub(out0) as f64 / secs,
        )
    }
}

/// Everything a relay's volunteer looks at, at one moment: what the
/// `/status` route answers, the page shows and `/metrics` exposes.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RelaySnapshot {
    /// The relay's AMID.
    pub amid: String,
    /// Seconds since the relay started.
    pub uptime_secs: u64,
    /// Peers connected now.
    pub peers_connected: u64,
    /// Circuit relay: reservations and circuits held now and in total.
    pub circuit: RelayStatus,
    /// The bytes all of the relay's connections carried, and their rate.
    pub bandwidth: Bandwidth,
    /// The mailbox server's counters.
    pub mailbox: MailboxCounters,
    /// What the mailbox holds.
    pub occupancy: Occupancy,
}

impl RelaySnapshot {
    /// A snapshot of these figures.
    pub fn new(
        amid: String,
        uptime_secs: u64,
        peers_connected: u64,
        circuit: RelayStatus,
        bandwidth: Bandwidth,
        mailbox: MailboxCounters,
        occupancy: Occupancy,
    ) -> Self {
        Self {
            amid,
            uptime_secs,
            peers_connected,
            circuit,
            bandwidth,
            mailbox,
            occupancy,
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of this snapshot.
    /// The bytes carried are not in it: they are libp2p's
    /// `libp2p_bandwidth_bytes_total`, which the relay's `/metrics` adds
    /// (Prometheus' `rate()` of it is the page's rate).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        let by = |label: &str, pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs
                .iter()
                .map(|(l, v)| (format!("{{{label}=\"{l}\"}}"), *v))
                .collect()
        };
        let c = &self.circuit;
        let m = &self.mailbox;
        let o = &self.occupancy;
        metric(
            "agentmesh_relay_uptime_seconds",
            "gauge",
            "Seconds since the relay started.",
            &one(self.uptime_secs),
        );
        metric(
            "agentmesh_relay_peers_connected",
            "gauge",
            "Peers connected now.",
            &one(self.peers_connected),
        );
        metric(
            "agentmesh_relay_reservations_active",
            "gauge",
            "Circuit relay reservations held by peers now.",
            &one(c.reservations as u64),
        );
        metric(
            "agentmesh_relay_reservations_total",
            "counter",
            "Circuit relay reservation requests, by result (renewals included).",
            &by(
                "result",
                &[
                    ("accepted", c.totals.reservations_accepted),
                    ("denied", c.totals.reservations_denied),
                ],
            ),
        );
        metric(
            "agentmesh_relay_circuits_active",
            "gauge",
            "Circuits open through the relay now.",
            &one(c.circuits as u64),
        );
        metric(
            "agentmesh_relay_circuits_total",
            "counter",
            "Circuit requests, by result.",
            &by(
                "result",
                &[
                    ("accepted", c.totals.circuits_accepted),
                    ("denied", c.totals.circuits_denied),
                ],
            ),
        );
        metric(
            "agentmesh_relay_mailbox_deposits_total",
            "counter",
            "Envelopes deposited and stored (duplicates included).",
            &one(m.deposits),
        );
        metric(
            "agentmesh_relay_mailbox_duplicate_deposits_total",
            "counter",
            "Deposits of an envelope the mailbox already held.",
            &one(m.duplicates),
        );
        metric(
            "agentmesh_relay_mailbox_fetches_total",
            "counter",
            "Fetches answered.",
            &one(m.fetches),
        );
        metric(
            "agentmesh_relay_mailbox_fetched_envelopes_total",
            "counter",
            "Envelopes handed out by fetches.",
            &one(m.envelopes_fetched),
        );
        metric(
            "agentmesh_relay_mailbox_acks_total",
            "counter",
            "Acknowledgements answered.",
            &one(m.acks),
        );
        metric(
            "agentmesh_relay_mailbox_acked_envelopes_total",
            "counter",
            "Envelopes removed by acknowledgements.",
            &one(m.envelopes_acked),
        );
        metric(
            "agentmesh_relay_mailbox_senders_named_total",
            "counter",
            "Requests naming a recipient's known senders.",
            &one(m.senders_named),
        );
        let refusals: Vec<(&str, u64)> = m.refusals.iter().map(|(r, v)| (r.as_str(), *v)).collect();
        metric(
            "agentmesh_relay_mailbox_refusals_total",
            "counter",
            "Mailbox requests refused, by reason (the answer's code).",
            &by("reason", &refusals),
        );
        metric(
            "agentmesh_relay_mailbox_dropped_total",
            "counter",
            "Mailbox requests dropped because the server was at capacity.",
            &one(m.dropped_busy),
        );
        metric(
            "agentmesh_relay_mailbox_expired_envelopes_total",
            "counter",
            "Envelopes purged because they expired.",
            &one(m.expired),
        );
        metric(
            "agentmesh_relay_mailbox_envelopes",
            "gauge",
            "Envelopes held now.",
            &one(o.stats.envelopes),
        );
        metric(
            "agentmesh_relay_mailbox_bytes",
            "gauge",
            "Bytes of the envelopes held now.",
            &one(o.stats.bytes),
        );
        metric(
            "agentmesh_relay_mailbox_recipients",
            "gauge",
            "Recipients with mail waiting now.",
            &one(o.stats.recipients),
        );
        let classes: Vec<(String, u64)> = o
            .classes
            .iter()
            .map(|(b, n)| {
                let b = b.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                (format!("{{max_envelopes=\"{b}\"}}"), *n)
            })
            .collect();
        metric(
            "agentmesh_relay_mailbox_recipients_by_occupancy",
            "gauge",
            "Recipients by the envelopes they hold: those with more than the class below and at most max_envelopes.",
            &classes,
        );
        out
    }
}

/// A handle on a relay plugin's counters and mailbox (cheap to clone): what
/// its page and `/metrics` read. Taken with
/// [`RelayPlugin::monitor`](crate::RelayPlugin::monitor) before the plugin
/// is handed to the node.
#[derive(Debug, Clone)]
pub struct RelayMonitor {
    inner: Arc<MonitorInner>,
}

#[derive(Debug)]
struct MonitorInner {
    started: Instant,
    metrics: Arc<RelayMetrics>,
    store: OnceLock<Arc<MailboxStore>>,
    /// The last occupancy counted, and when.
    occupancy: Mutex<Option<(Instant, Occupancy)>>,
    /// The rates of the bytes the relay's connections carry.
    rates: Mutex<RateMeter>,
}

impl Default for RelayMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMonitor {
    /// A monitor of a relay starting now, with no mailbox yet.
    pub fn new() -> Self {
        let started = Instant::now();
        Self {
            inner: Arc::new(MonitorInner {
                started,
                metrics: Arc::default(),
                store: OnceLock::new(),
                occupancy: Mutex::new(None),
                rates: Mutex::new(RateMeter::new(started)),
            }),
        }
    }

    /// The mailbox server's counters.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.inner.metrics.clone()
    }

    /// The mailbox store, once the node started the plugin.
    pub fn store(&self) -> Option<&Arc<MailboxStore>> {
        self.inner.store.get()
    }

    /// Sets the mailbox store; `false` when one was set already.
    pub(crate) fn set_store(&self, store: Arc<MailboxStore>) -> bool {
        self.inner.store.set(store).is_ok()
    }

    /// How long the relay has run.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The mailbox's occupancy, counted at most every [`OCCUPANCY_CACHE`].
    pub async fn occupancy(&self) -> Occupancy {
        let now = Instant::now();
        let cached = self
            .inner
            .occupancy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((at, o)) = cached {
            if now.duration_since(at) < OCCUPANCY_CACHE {
                return o;
            }
        }
        let Some(store) = self.store().cloned() else {
            return Occupancy::from_counts(MailboxStats::default(), Vec::new());
        };
        let counted = tokio::task::spawn_blocking(move || store.occupancy())
            .await
            .unwrap_or_else(|_| Occupancy::from_counts(MailboxStats::default(), Vec::new()));
        *self
            .inner
            .occupancy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, counted.clone()));
        counted
    }

    /// The bytes `node`'s connections carried (from its libp2p metrics),
    /// and their rates.
    pub fn bandwidth(&self, node: &Node) -> Bandwidth {
        let (bytes_in, bytes_out) = Bandwidth::totals_from_exposition(&node.libp2p_metrics());
        let (in_per_sec, out_per_sec) = self
            .inner
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .handle_sample(Instant::now(), bytes_in, bytes_out);
        Bandwidth {
            bytes_in,
            bytes_out,
            in_per_sec,
            out_per_sec,
        }
    }

    /// Everything the page and `/metrics` show, now: the circuit relay's
    /// figures, the bytes carried and connected peers from `node`, the
    /// mailbox's from this monitor.
    pub async fn snapshot(&self, node: &Node) -> RelaySnapshot {
        let status = node.status().await;
        RelaySnapshot::new(
            node.amid().to_string(),
            self.uptime().as_secs(),
            status.net.connected.len() as u64,
            status.net.relay.unwrap_or_default(),
            self.bandwidth(node),
            self.inner.metrics.counters(),
            self.occupancy().await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_kind_and_reason() {
        let m = RelayMetrics::default();
        m.count_response(&Response::Deposited { duplicate: false });
        m.count_response(&Response::Deposited { duplicate: true });
        m.count_response(&Response::Acked {
            removed: 3,
            unknown: Vec::new(),
        });
        m.count_response(&Response::error(ErrorCode::SenderQuota, "x"));
        m.count_response(&Response::error(ErrorCode::Other, "x"));
        m.count_dropped();
        let c = m.counters();
        assert_eq!((c.deposits, c.duplicates), (2, 1));
        assert_eq!((c.acks, c.envelopes_acked), (1, 3));
        assert_eq!(c.dropped_busy, 1);
        let get = |r: &str| c.refusals.iter().find(|(n, _)| n == r).unwrap().1;
        assert_eq!(get("sender_quota"), 1);
        assert_eq!(get("other"), 1);
        assert_eq!(get("forged"), 0);
    }

    #[test]
    fn bandwidth_totals_sum_every_stack_by_direction() {
        let text = "# HELP libp2p_bandwidth_bytes Bandwidth usage.\n\
            # TYPE libp2p_bandwidth_bytes counter\n\
            # UNIT libp2p_bandwidth_bytes bytes\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Inbound\"} 100\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Outbound\"} 7\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/udp/quic-v1\",direction=\"Inbound\"} 23\n\
            libp2p_swarm_connections_established_total{direction=\"Inbound\"} 5\n\
            libp2p_bandwidth_bytes_total{protocols=\"/x\",direction=\"Inbound\"} not-a-number\n";
        assert_eq!(Bandwidth::totals_from_exposition(text), (123, 7));
        assert_eq!(Bandwidth::totals_from_exposition(""), (0, 0));
    }

    #[test]
    fn rates_span_the_window_and_the_meter_stays_bounded() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut m = RateMeter::new(t0);
        // No time since the start: no rate.
        assert_eq!(m.handle_sample(t0, 0, 0), (0.0, 0.0));
        // Since the start: 1000 bytes in 10 s.
        assert_eq!(m.handle_sample(s(10), 1000, 500), (100.0, 50.0));
        // Asked every second for ten minutes at 10 bytes/s in, 0 out: the
        // rate is over the last minute only, and few samples are kept.
        let mut last = (0.0, 0.0);
        for t in 11..=600 {
            last = m.handle_sample(s(t), 1000 + 10 * (t - 10), 500);
            assert!(
                m.samples.len() <= (RATE_WINDOW.as_secs() / RATE_STEP.as_secs()) as usize + 2,
                "{} samples",
                m.samples.len()
            );
        }
        assert_eq!(last, (10.0, 0.0));
        // A quiet minute brings the rate down to zero.
        let mut quiet = (1.0, 1.0);
        for t in 601..=670 {
            quiet = m.handle_sample(s(t), 1000 + 10 * 590, 500);
        }
        assert_eq!(quiet, (0.0, 0.0));
        // A counter that went down counts as no growth.
        assert_eq!(m.handle_sample(s(700), 0, 0), (0.0, 0.0));
    }

    #[test]
    fn occupancy_classes_count_recipients_and_keep_only_counts() {
        let o = Occupancy::from_counts(MailboxStats::default(), vec![1, 7, 100, 3, 1, 26]);
        let counts: Vec<u64> = o.classes.iter().map(|c| c.1).collect();
        assert_eq!(counts, [2, 1, 1, 0, 1, 1]);
        assert_eq!(o.classes.last().unwrap().0, None);
        assert_eq!(o.largest, [100, 26, 7, 3, 1, 1]);
    }
}
