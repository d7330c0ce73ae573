//! What the registry's HTTP API counts ([`RegistryMetrics`]: requests by
//! route and status, their latency, refusals by the limits, and requests
//! over `/agentmesh/registry/1` by kind and result), what the
//! registry holds ([`RegistryFigures`]: agents by tier, the transparency
//! log's head, the leaderboard), and their Prometheus text exposition
//! ([`render`], names `agentmesh_registry_*`).
//!
//! Routes are the API's route templates, written with `:` before a
//! parameter (`/v1/registry/did/:amid`, plain characters for every
//! exposition parser), or `unmatched` for paths the API does not serve, so
//! no label holds anything a client chose.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::registry::{Leaderboard, Registry, RegistryError, Stats};

/// Upper bounds, in seconds, of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// How many of the best reputations the operator's figures hold.
pub const LEADERBOARD_SIZE: usize = 10;

/// A latency histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum_micros: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum_micros = self
            .sum_micros
            .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Routes {
    /// Requests by (route, status).
    requests: BTreeMap<(String, u16), u64>,
    /// Latency by route.
    latency: BTreeMap<String, Histogram>,
}

/// The HTTP API's counters since the registry started. Routes are the
/// API's templates, so the maps stay as small as the API.
#[derive(Debug)]
pub struct RegistryMetrics {
    started: Instant,
    routes: Mutex<Routes>,
    /// Requests over libp2p by (kind, result).
    p2p: Mutex<BTreeMap<(&'static str, String), u64>>,
    rate_limited_requests: AtomicU64,
    rate_limited_prekeys: AtomicU64,
    busy: AtomicU64,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            routes: Mutex::default(),
            p2p: Mutex::default(),
            rate_limited_requests: AtomicU64::new(0),
            rate_limited_prekeys: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The client's request bucket was empty (`429`).
    RateLimited,
    /// The client's prekey bucket was empty (`429`).
    PrekeyRateLimited,
    /// Too many requests in flight (`503 busy`).
    Busy,
}

impl RegistryMetrics {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request to `route` (a route template, `None` when no route
    /// matched) answered with `status` after `elapsed`.
    pub fn observe(&self, route: Option<&str>, status: u16, elapsed: Duration) {
        let route = route.map_or_else(
            || UNMATCHED.to_owned(),
            |r| r.replace('{', ":").replace('}', ""),
        );
        let mut r = self.routes();
        *r.requests.entry((route.clone(), status)).or_default() += 1;
        r.latency.entry(route).or_default().observe(elapsed);
    }

    /// Counts a request a limit refused.
    pub fn refused(&self, why: Refusal) {
        let c = match why {
            Refusal::RateLimited => &self.rate_limited_requests,
            Refusal::PrekeyRateLimited => &self.rate_limited_prekeys,
            Refusal::Busy => &self.busy,
        };
        c.fetch_add(1, Relaxed);
    }

    /// How long the registry has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts a request over `/agentmesh/registry/1` of `kind` (`lookup`,
    /// `signed`, … or `malformed`) answered with `result` (`ok` or an
    /// error code).
    pub fn observe_p2p(&self, kind: &'static str, result: &str) {
        let mut p = self.p2p.lock().unwrap_or_else(PoisonError::into_inner);
        // Error codes are the registry's own, a bounded set.
        *p.entry((kind, result.to_owned())).or_default() += 1;
    }

    /// Requests over libp2p, by (kind, result).
    pub fn p2p_requests(&self) -> BTreeMap<(&'static str, String), u64> {
        self.p2p
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests answered, by route (all statuses together).
    pub fn requests_by_route(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((route, _), n) in &self.routes().requests {
            *out.entry(route.clone()).or_default() += n;
        }
        out
    }

    /// Requests refused by the limits: `(rate limited, prekey rate limited,
    /// busy)`.
    pub fn refusals(&self) -> (u64, u64, u64) {
        (
            self.rate_limited_requests.load(Relaxed),
            self.rate_limited_prekeys.load(Relaxed),
            self.busy.load(Relaxed),
        )
    }
}

/// The transparency log's head, as the operator sees it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LogHead {
    /// Entries in the log.
    pub size: u64,
    /// Root hash, hex.
    pub root: String,
}

/// What the registry holds, at one moment.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RegistryFigures {
    /// The registry root key.
    pub root_key: String,
    /// Agents by tier and presence, receipts, ratings, revocations.
    pub stats: Stats,
    /// The transparency log's head.
    pub log: LogHead,
    /// The best reputations (at most [`LEADERBOARD_SIZE`]).
    pub leaderboard: Leaderboard,
}

impl RegistryFigures {
    /// Reads the figures of `registry` now (a pass over all agents: call
    /// it from a blocking task).
    pub fn read(registry: &Registry, now_ms: u64) -> Result<Self, RegistryError> {
        let head = registry.log_head(None, now_ms)?;
        Ok(Self {
            root_key: registry.root_amid().to_string(),
            stats: registry.stats()?,
            log: LogHead {
                size: head.size,
                root: hex::encode(head.root),
            },
            leaderboard: registry.leaderboard(LEADERBOARD_SIZE, now_ms)?,
        })
    }
}

/// A gauge to write: name, help and `(labels, value)` samples.
type Gauge<'a> = (&'a str, &'a str, Vec<(String, u64)>);

/// Formats a float the way Prometheus reads it.
fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition (format 0.0.4) of `metrics` and
/// `figures`.
pub fn render(metrics: &RegistryMetrics, figures: &RegistryFigures) -> String {
    let mut out = String::new();
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let (requests, latency) = {
        let r = metrics.routes();
        let requests: Vec<((String, u16), u64)> =
            r.requests.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let latency: Vec<(String, [u64; LATENCY_BUCKETS.len()], u64, u64)> = r
            .latency
            .iter()
            .map(|(k, h)| (k.clone(), h.buckets, h.sum_micros, h.count))
            .collect();
        (requests, latency)
    };
    head(
        &mut out,
        "agentmesh_registry_requests_total",
        "counter",
        "HTTP requests answered, by route template and status.",
    );
    for ((route, status), n) in &requests {
        let _ = writeln!(
            out,
            "agentmesh_registry_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            label(route)
        );
    }
    head(
        &mut out,
        "agentmesh_registry_request_duration_seconds",
        "histogram",
        "Time to answer an HTTP request, by route template.",
    );
    for (route, buckets, sum_micros, count) in &latency {
        let route = label(route);
        let mut cumulative = 0u64;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "agentmesh_registry_request_duration_seconds_bucket{{route=\"{route}\",le=\"{}\"}} {cumulative}",
                float(*bound)
            );
        }
        let _ = writeln!(
            out,
            "agentmesh_registry_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "agentmesh_registry_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            float(*sum_micros as f64 / 1e6)
        );
        let _ = writeln!(
            out,
            "agentmesh_registry_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
    }
    head(
        &mut out,
        "agentmesh_registry_p2p_requests_total",
        "counter",
        "Requests over /agentmesh/registry/1, by kind and result (ok or the error code).",
    );
    for ((kind, result), n) in metrics.p2p_requests() {
        let _ = writeln!(
            out,
            "agentmesh_registry_p2p_requests_total{{request=\"{kind}\",result=\"{}\"}} {n}",
            label(&result)
        );
    }
    let (limited, prekeys, busy) = metrics.refusals();
    head(
        &mut out,
        "agentmesh_registry_refusals_total",
        "counter",
        "HTTP requests refused by the limits before they did anything, by limit.",
    );
    let _ = writeln!(
        out,
        "agentmesh_registry_refusals_total{{limit=\"rate\"}} {limited}\n\
         agentmesh_registry_refusals_total{{limit=\"prekey_rate\"}} {prekeys}\n\
         agentmesh_registry_refusals_total{{limit=\"in_flight\"}} {busy}"
    );
    let s = &figures.stats;
    let gauges: [Gauge<'_>; 8] = [
        (
            "agentmesh_registry_agents",
            "Unrevoked agents registered, by tier.",
            vec![
                ("{tier=\"anonymous\"}".into(), s.by_tier.anonymous),
                ("{tier=\"verified\"}".into(), s.by_tier.verified),
                ("{tier=\"organization\"}".into(), s.by_tier.organization),
            ],
        ),
        (
            "agentmesh_registry_agents_online",
            "Unrevoked agents whose presence is online.",
            vec![(String::new(), s.online)],
        ),
        (
            "agentmesh_registry_agents_revoked",
            "Revoked agents.",
            vec![(String::new(), s.revoked)],
        ),
        (
            "agentmesh_registry_organizations",
            "Organizations registered.",
            vec![(String::new(), s.organizations as u64)],
        ),
        (
            "agentmesh_registry_receipts",
            "Session receipts filed.",
            vec![(String::new(), s.receipts as u64)],
        ),
        (
            "agentmesh_registry_ratings",
            "Ratings filed.",
            vec![(String::new(), s.ratings as u64)],
        ),
        (
            "agentmesh_registry_transparency_log_size",
            "Entries in the transparency log.",
            vec![(String::new(), figures.log.size)],
        ),
        (
            "agentmesh_registry_uptime_seconds",
            "Seconds since the registry started.",
            vec![(String::new(), metrics.uptime().as_secs())],
        ),
    ];
    for (name, help, samples) in gauges {
        head(&mut out, name, "gauge", help);
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket_and_routes_are_counted_by_status() {
        let m = RegistryMetrics::default();
        m.observe(Some("/v1/health"), 200, Duration::from_micros(700));
        m.observe(Some("/v1/health"), 200, Duration::from_millis(30));
        m.observe(Some("/v1/health"), 503, Duration::from_secs(60));
        m.observe(None, 404, Duration::from_micros(10));
        m.observe(Some("/v1/registry/did/{amid}"), 200, Duration::ZERO);
        m.refused(Refusal::Busy);
        let r = m.routes();
        assert_eq!(r.requests[&("/v1/health".to_owned(), 200)], 2);
        assert_eq!(r.requests[&(UNMATCHED.to_owned(), 404)], 1);
        assert_eq!(r.requests[&("/v1/registry/did/:amid".to_owned(), 200)], 1);
        let h = &r.latency["/v1/health"];
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1); // 0.7 ms <= 1 ms
        assert_eq!(h.buckets[5], 1); // 30 ms <= 50 ms
        assert_eq!(h.buckets.iter().sum::<u64>(), 2); // 60 s is only in +Inf
        drop(r);
        assert_eq!(m.refusals(), (0, 0, 1));
        assert_eq!(m.requests_by_route()["/v1/health"], 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
