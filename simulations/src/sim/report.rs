//! What a run measured, and the report, CSV files and plots made of it.

use std::fmt::Write as _;
use std::path::Path as FsPath;

use super::scenario::Scenario;
use super::svg;

const MINUTE: u64 = 60_000;

/// The path a message took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// A direct QUIC connection dialled at once.
    Direct,
    /// A direct connection made by a hole punch after a relayed start.
    HolePunched,
    /// Through a relay's circuit.
    Relayed,
    /// Left in the recipient's mailbox at its relay, fetched on return.
    Mailbox,
}

impl Path {
    /// Every path, in report order.
    pub const ALL: [Path; 4] = [
        Path::Direct,
        Path::HolePunched,
        Path::Relayed,
        Path::Mailbox,
    ];

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::HolePunched => "hole-punched",
            Path::Relayed => "relayed",
            Path::Mailbox => "mailbox",
        }
    }
}

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Failure {
    NoCard,
    Unreachable,
    MailboxFull,
    SenderShare,
    StrangersTotal,
    RelayLost,
    Expired,
    NotAcknowledged,
}

impl Failure {
    const ALL: [Failure; 8] = [
        Failure::NoCard,
        Failure::Unreachable,
        Failure::MailboxFull,
        Failure::SenderShare,
        Failure::StrangersTotal,
        Failure::RelayLost,
        Failure::Expired,
        Failure::NotAcknowledged,
    ];

    fn name(self) -> &'static str {
        match self {
            Failure::NoCard => "card not found",
            Failure::Unreachable => "unreachable (no relay)",
            Failure::MailboxFull => "mailbox full",
            Failure::SenderShare => "mailbox: sender's share used",
            Failure::StrangersTotal => "mailbox: strangers' part used",
            Failure::RelayLost => "lost with a relay",
            Failure::Expired => "expired in a mailbox",
            Failure::NotAcknowledged => "not acknowledged before its deadline",
        }
    }
}

/// Collects figures while the world runs.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) name: String,
    pub(crate) nodes: u32,
    pub(crate) seed: u64,
    pub(crate) duration_min: u64,
    pub(crate) warmup: u64,
    pub(crate) events: u64,
    pub(crate) kad_messages: u64,
    sent: u64,
    pub(crate) deposits: u64,
    pub(crate) no_relay: u64,
    /// Message streams given up for want of an acknowledgement (their
    /// messages went to the mailbox).
    pub(crate) stale_streams: u64,
    /// (started, hops, latency, found), after the warm-up.
    lookups: Vec<(u64, u32, u64, bool)>,
    /// (at, replicas)
    puts: Vec<(u64, usize)>,
    /// (sent, path, latency, first contact)
    deliveries: Vec<(u64, Path, u64, bool)>,
    failures: Vec<Failure>,
    /// (minute, agents online, mail waiting)
    timeline: Vec<(u64, usize, usize)>,
    /// Per relay: messages relayed, mail deposited.
    relay_load: std::collections::BTreeMap<u32, (u64, u64)>,
}

impl Recorder {
    pub(crate) fn new(s: &Scenario) -> Self {
        Self {
            name: s.name.clone(),
            nodes: s.nodes,
            seed: s.seed,
            duration_min: s.duration_min,
            warmup: s.warmup_min * MINUTE,
            events: 0,
            kad_messages: 0,
            sent: 0,
            deposits: 0,
            no_relay: 0,
            stale_streams: 0,
            lookups: Vec::new(),
            puts: Vec::new(),
            deliveries: Vec::new(),
            failures: Vec::new(),
            timeline: Vec::new(),
            relay_load: std::collections::BTreeMap::new(),
        }
    }

    pub(crate) fn relayed(&mut self, relay: u32, sent: u64) {
        if sent >= self.warmup {
            self.relay_load.entry(relay).or_default().0 += 1;
        }
    }

    pub(crate) fn deposited(&mut self, relay: u32, sent: u64) {
        self.deposits += 1;
        if sent >= self.warmup {
            self.relay_load.entry(relay).or_default().1 += 1;
        }
    }

    pub(crate) fn lookup(&mut self, started: u64, hops: u32, latency: u64, found: bool) {
        if started >= self.warmup {
            self.lookups.push((started, hops, latency, found));
        }
    }

    pub(crate) fn put(&mut self, at: u64, replicas: usize) {
        if at >= self.warmup {
            self.puts.push((at, replicas));
        }
    }

    pub(crate) fn sent(&mut self, at: u64) {
        if at >= self.warmup {
            self.sent += 1;
        }
    }

    pub(crate) fn delivered(&mut self, sent: u64, path: Path, latency: u64, first: bool) {
        if sent >= self.warmup {
            self.deliveries.push((sent, path, latency, first));
        }
    }

    pub(crate) fn failed(&mut self, sent: u64, why: Failure) {
        if sent >= self.warmup {
            self.failures.push(why);
        }
    }

    pub(crate) fn sample(&mut self, at: u64, online: usize, waiting: usize) {
        self.timeline.push((at / MINUTE, online, waiting));
    }

    pub(crate) fn finish(self, waiting: usize, relays: Vec<RelayRow>) -> Report {
        Report {
            rec: self,
            waiting,
            relays,
        }
    }
}

/// The figures of one run.
#[derive(Debug)]
pub struct Report {
    rec: Recorder,
    waiting: usize,
    relays: Vec<RelayRow>,
}

/// A relay at the end of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayRow {
    pub(crate) id: u32,
    pub(crate) alive: bool,
    pub(crate) reservations: usize,
    pub(crate) waiting: usize,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl Report {
    /// Lookups measured after the warm-up.
    pub fn lookups(&self) -> usize {
        self.rec.lookups.len()
    }

    /// Share of those lookups that found the card, in percent.
    pub fn lookup_success(&self) -> f64 {
        pct(
            self.rec.lookups.iter().filter(|l| l.3).count(),
            self.rec.lookups.len(),
        )
    }

    /// Median hops of successful lookups.
    pub fn median_hops(&self) -> u64 {
        let mut hops: Vec<u64> = self
            .rec
            .lookups
            .iter()
            .filter(|l| l.3)
            .map(|l| u64::from(l.1))
            .collect();
        hops.sort_unstable();
        percentile(&hops, 0.5)
    }

    /// Messages delivered (sent after the warm-up), by path, first contacts
    /// and messages in sessions together.
    pub fn delivered_by(&self, path: Path) -> usize {
        self.rec.deliveries.iter().filter(|d| d.1 == path).count()
    }

    /// First contacts delivered (sent after the warm-up), by path.
    pub fn first_contacts_by(&self, path: Path) -> usize {
        self.rec
            .deliveries
            .iter()
            .filter(|d| d.1 == path && d.3)
            .count()
    }

    /// Message streams a sender gave up because their acknowledgements
    /// stopped (a recipient that crashed); their messages went to the
    /// mailbox.
    pub fn stale_streams(&self) -> u64 {
        self.rec.stale_streams
    }

    /// Messages sent after the warm-up that were delivered, by any path.
    pub fn delivered(&self) -> usize {
        self.rec.deliveries.len()
    }

    /// Events the simulator handled.
    pub fn events(&self) -> u64 {
        self.rec.events
    }

    /// The printed report: deterministic for a scenario and seed.
    pub fn text(&self) -> String {
        let r = &self.rec;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} — {} agents, {} min virtual, seed {}",
            r.name, r.nodes, r.duration_min, r.seed
        );
        let _ = writeln!(
            out,
            "figures from minute {} on; {} events, {} DHT messages\n",
            r.warmup / MINUTE,
            r.events,
            r.kad_messages
        );

        let mut hops: Vec<u64> = r
            .lookups
            .iter()
            .filter(|l| l.3)
            .map(|l| u64::from(l.1))
            .collect();
        hops.sort_unstable();
        let mut lat: Vec<u64> = r.lookups.iter().filter(|l| l.3).map(|l| l.2).collect();
        lat.sort_unstable();
        let found = r.lookups.iter().filter(|l| l.3).count();
        let _ = writeln!(out, "card lookups (DHT get)");
        let _ = writeln!(
            out,
            "| lookups | found | hops p50 | hops p90 | hops p99 | ms p50 | ms p90 | ms p99 |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        let _ = writeln!(
            out,
            "| {} | {:.2} % | {} | {} | {} | {} | {} | {} |\n",
            r.lookups.len(),
            pct(found, r.lookups.len()),
            percentile(&hops, 0.5),
            percentile(&hops, 0.9),
            percentile(&hops, 0.99),
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
        );

        let mut reps: Vec<u64> = r.puts.iter().map(|p| p.1 as u64).collect();
        reps.sort_unstable();
        let _ = writeln!(
            out,
            "card publishes: {} after warm-up, stored at p50 {} / p10 {} of 20 closest peers\n",
            r.puts.len(),
            percentile(&reps, 0.5),
            percentile(&reps, 0.1)
        );

        let delivered = r.deliveries.len();
        let failed = r.failures.len();
        for (first, title) in [
            (
                true,
                "first contacts (card lookup, connection, KNOCK, message; mailbox: until fetched)",
            ),
            (false, "messages in a session (mailbox: the stream was given up unacknowledged; until fetched)"),
        ] {
            let _ = writeln!(out, "{title}");
            let _ = writeln!(
                out,
                "| path | delivered | share | ms p50 | ms p90 | ms p99 |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|");
            let of_kind = r.deliveries.iter().filter(|d| d.3 == first).count();
            for path in Path::ALL {
                let mut l: Vec<u64> = r
                    .deliveries
                    .iter()
                    .filter(|d| d.1 == path && d.3 == first)
                    .map(|d| d.2)
                    .collect();
                if l.is_empty() {
                    continue;
                }
                l.sort_unstable();
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} % | {} | {} | {} |",
                    path.name(),
                    l.len(),
                    pct(l.len(), of_kind),
                    percentile(&l, 0.5),
                    percentile(&l, 0.9),
                    percentile(&l, 0.99)
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "messages sent {}, delivered {} ({:.2} %), waiting in mailboxes at the end {}; \
             mailbox deposits {}; agents behind a NAT left without a relay {}; \
             streams given up unacknowledged {}",
            r.sent,
            delivered,
            pct(delivered, r.sent as usize),
            self.waiting,
            r.deposits,
            r.no_relay,
            r.stale_streams
        );
        let _ = writeln!(out, "not delivered: {failed}");
        for why in Failure::ALL {
            let n = r.failures.iter().filter(|f| **f == why).count();
            if n > 0 {
                let _ = writeln!(out, "- {}: {n}", why.name());
            }
        }
        let _ = writeln!(out, "\nrelays");
        let _ = writeln!(out, "| relay | up at the end | reservations | messages relayed | mail deposited | mail waiting |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for row in &self.relays {
            let (relayed, deposited) = r.relay_load.get(&row.id).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {relayed} | {deposited} | {} |",
                row.id,
                if row.alive { "yes" } else { "no" },
                row.reservations,
                row.waiting
            );
        }
        out
    }

    /// Writes `report.txt`, CSV files and SVG plots into `dir`.
    pub fn write(&self, dir: &FsPath) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let r = &self.rec;
        let mut written = Vec::new();
        let mut put = |name: &str, body: String| -> std::io::Result<()> {
            std::fs::write(dir.join(name), body)?;
            written.push(name.to_string());
            Ok(())
        };
        put("report.txt", self.text())?;

        let mut csv = String::from("started_ms,hops,latency_ms,found\n");
        for (s, h, l, f) in &r.lookups {
            let _ = writeln!(csv, "{s},{h},{l},{}", u8::from(*f));
        }
        put("lookups.csv", csv)?;
        let mut csv = String::from("sent_ms,path,latency_ms,first_contact\n");
        for (s, p, l, f) in &r.deliveries {
            let _ = writeln!(csv, "{s},{},{l},{}", p.name(), u8::from(*f));
        }
        put("deliveries.csv", csv)?;

        // Lookup success per minute of start.
        let minutes = r.duration_min as usize + 1;
        let mut per_min = vec![(0usize, 0usize); minutes];
        for (s, _, _, f) in &r.lookups {
            let m = ((s / MINUTE) as usize).min(minutes - 1);
            per_min[m].0 += 1;
            per_min[m].1 += usize::from(*f);
        }
        let mut csv = String::from("minute,agents_online,mail_waiting,lookups,lookups_found\n");
        for (m, online, waiting) in &r.timeline {
            let (n, f) = per_min.get(*m as usize).copied().unwrap_or_default();
            let _ = writeln!(csv, "{m},{online},{waiting},{n},{f}");
        }
        put("timeline.csv", csv)?;

        // Plots.
        let mut hist = [0usize; 12];
        for (_, h, _, f) in &r.lookups {
            if *f {
                hist[(*h as usize).min(11)] += 1;
            }
        }
        let bars: Vec<(String, f64)> = hist
            .iter()
            .enumerate()
            .skip(1)
            .map(|(h, n)| {
                (
                    if h == 11 { "11+".into() } else { h.to_string() },
                    *n as f64,
                )
            })
            .collect();
        put(
            "lookup-hops.svg",
            svg::bars("Card lookups: hops to the record", "hops", "lookups", &bars),
        )?;

        let mut lat: Vec<u64> = r.lookups.iter().filter(|l| l.3).map(|l| l.2).collect();
        lat.sort_unstable();
        put(
            "lookup-latency-cdf.svg",
            svg::lines(
                "Card lookups: latency (CDF)",
                "ms",
                "share of lookups",
                &[("lookups".to_string(), cdf(&lat))],
            ),
        )?;

        let success: Vec<(f64, f64)> = per_min
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 0)
            .map(|(m, (n, f))| (m as f64, 100.0 * *f as f64 / *n as f64))
            .collect();
        let online: Vec<(f64, f64)> = r
            .timeline
            .iter()
            .map(|(m, o, _)| (*m as f64, 100.0 * *o as f64 / f64::from(r.nodes.max(1))))
            .collect();
        put(
            "lookup-success.svg",
            svg::lines(
                "Lookup success and agents online over time",
                "minute",
                "%",
                &[
                    ("lookups found".to_string(), success),
                    ("agents online".to_string(), online),
                ],
            ),
        )?;

        let series: Vec<(String, Vec<(f64, f64)>)> = Path::ALL
            .iter()
            .filter_map(|p| {
                let mut l: Vec<u64> = r
                    .deliveries
                    .iter()
                    .filter(|d| d.1 == *p && d.3)
                    .map(|d| d.2)
                    .collect();
                l.sort_unstable();
                (!l.is_empty()).then(|| (p.name().to_string(), cdf(&l)))
            })
            .collect();
        put(
            "delivery-latency-cdf.svg",
            svg::lines(
                "First contact: delivery latency by path (CDF)",
                "ms",
                "share of first messages",
                &series,
            ),
        )?;

        let mix: Vec<(String, f64)> = Path::ALL
            .iter()
            .map(|p| (p.name().to_string(), self.delivered_by(*p) as f64))
            .collect();
        put(
            "path-mix.svg",
            svg::bars("Messages delivered by path", "path", "messages", &mix),
        )?;

        let waiting: Vec<(f64, f64)> = r
            .timeline
            .iter()
            .map(|(m, _, w)| (*m as f64, *w as f64))
            .collect();
        put(
            "mailbox-occupancy.svg",
            svg::lines(
                "Mail waiting at relays",
                "minute",
                "envelopes",
                &[("waiting".to_string(), waiting)],
            ),
        )?;
        Ok(written)
    }
}

/// (value, cumulative share) for sorted values, thinned to ~200 points.
fn cdf(sorted: &[u64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let step = (n / 200).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (sorted[i] as f64, (i + 1) as f64 / n as f64))
        .collect();
    points.push((sorted[n - 1] as f64, 1.0));
    points
}
