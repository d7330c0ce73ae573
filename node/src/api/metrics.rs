//! `GET /metrics`: the node's counters and gauges in the Prometheus text
//! format (names `agentmesh_*`, following Prometheus' conventions).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
};

use agentmesh_transports::PathKind;

use crate::{events::NodeEvent, knock::RejectReason, runtime::NodeStatus};

/// Counters fed by node events.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Messages received, by path.
    received: ByPath,
    /// Messages sent, by outcome and path (see [`Counters::count`]).
    delivered: ByPath,
    deposited: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    /// KNOCKs decided: by decision and reason (`none` when accepted).
    knocks: Mutex<BTreeMap<(&'static str, String), u64>>,
    refused: AtomicU64,
    /// Refusals over a rate limit: KNOCKs and inputs we refused, and our
    /// messages a peer refused.
    rate_limited_knocks: AtomicU64,
    rate_limited_inputs: AtomicU64,
    rate_limited_ours: AtomicU64,
    hole_punch_ok: AtomicU64,
    hole_punch_failed: AtomicU64,
    connections: AtomicU64,
    /// Delivery latency: counts per bucket of [`LATENCY_BUCKETS_MS`] (not
    /// cumulative), then the sum in ms and the count.
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_sum_ms: AtomicU64,
    latency_count: AtomicU64,
}

/// The paths a message can take, as labels, in the order they are printed.
const PATHS: [PathKind; 6] = [
    PathKind::DirectQuic,
    PathKind::DirectTcp,
    PathKind::DirectWebRtc,
    PathKind::Relayed,
    PathKind::Mailbox,
    PathKind::Other,
];

/// A counter per path of [`PATHS`].
#[derive(Debug, Default)]
struct ByPath([AtomicU64; PATHS.len()]);

impl ByPath {
    fn add(&self, path: PathKind) {
        // Kinds this version does not know count as `other`.
        let i = PATHS
            .iter()
            .position(|p| *p == path)
            .unwrap_or(PATHS.len() - 1);
        self.0[i].fetch_add(1, Relaxed);
    }

    /// `(path label, count)` for every path.
    fn samples(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        PATHS
            .iter()
            .zip(&self.0)
            .map(|(p, c)| (p.to_string(), c.load(Relaxed)))
    }
}

/// The name of a KNOCK refusal's reason as the API writes it
/// (`rate_limited`).
fn reason_label(reason: &RejectReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".into())
}

/// Upper bounds of the delivery latency histogram's buckets, ms.
const LATENCY_BUCKETS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

impl Counters {
    /// Hole punches since start: succeeded, failed.
    pub(super) fn hole_punches(&self) -> (u64, u64) {
        (
            self.hole_punch_ok.load(Relaxed),
            self.hole_punch_failed.load(Relaxed),
        )
    }

    /// Counts `e`. A message we sent is counted once per outcome: a
    /// delivery by the path that carried it (`mailbox` when its recipient
    /// fetched it from a mailbox, later), a deposit in mailboxes as
    /// `deposited` on `mailbox`, a refusal or failure on path `none`.
    pub(super) fn count(&self, e: &NodeEvent) {
        if let NodeEvent::Delivered {
            latency_ms: Some(ms),
            ..
        } = e
        {
            if let Some(i) = LATENCY_BUCKETS_MS.iter().position(|b| ms <= b) {
                self.latency[i].fetch_add(1, Relaxed);
            }
            self.latency_sum_ms.fetch_add(*ms, Relaxed);
            self.latency_count.fetch_add(1, Relaxed);
        }
        let c = match e {
            NodeEvent::MessageReceived { path, .. } => return self.received.add(*path),
            NodeEvent::Delivered { path, .. } => return self.delivered.add(*path),
            NodeEvent::KnockDecided {
                accepted, reason, ..
            } => {
                let decision = if *accepted { "accepted" } else { "rejected" };
                if !accepted && *reason == Some(RejectReason::RateLimited) {
                    self.rate_limited_knocks.fetch_add(1, Relaxed);
                }
                let reason = match (accepted, reason) {
                    (false, Some(r)) => reason_label(r),
                    _ => "none".to_owned(),
                };
                *self
                    .knocks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((decision, reason))
                    .or_default() += 1;
                return;
            }
            NodeEvent::Refused {
                reason: RejectReason::RateLimited,
                ..
            } => {
                self.rate_limited_inputs.fetch_add(1, Relaxed);
                &self.refused
            }
            NodeEvent::Throttled { .. } => {
                self.rate_limited_inputs.fetch_add(1, Relaxed);
                return;
            }
            NodeEvent::Rejected {
                reason: RejectReason::RateLimited,
                ..
            } => {
                self.rate_limited_ours.fetch_add(1, Relaxed);
                &self.rejected
            }
            NodeEvent::Deposited { .. } => &self.deposited,
            NodeEvent::Rejected { .. } => &self.rejected,
            NodeEvent::Failed { .. } => &self.failed,
            NodeEvent::Refused { .. } => &self.refused,
            NodeEvent::HolePunch { ok: true, .. } => &self.hole_punch_ok,
            NodeEvent::HolePunch { .. } => &self.hole_punch_failed,
            NodeEvent::Connected { .. } => &self.connections,
            _ => return,
        };
        c.fetch_add(1, Relaxed);
    }

    /// The delivery latency histogram as the dashboard plots it: the count
    /// in each bucket (not cumulative) with its upper bound in ms, the last
    /// bucket unbounded (`le_ms` null), then the count and sum.
    pub(super) fn latency_json(&self) -> serde_json::Value {
        let count = self.latency_count.load(Relaxed);
        let mut below = 0;
        let mut buckets: Vec<serde_json::Value> = LATENCY_BUCKETS_MS
            .iter()
            .zip(&self.latency)
            .map(|(bound, c)| {
                let n = c.load(Relaxed);
                below += n;
                serde_json::json!({ "le_ms": bound, "count": n })
            })
            .collect();
        buckets.push(serde_json::json!({ "le_ms": null, "count": count.saturating_sub(below) }));
        serde_json::json!({
            "buckets": buckets,
            "count": count,
            "sum_ms": self.latency_sum_ms.load(Relaxed),
        })
    }

    /// The delivery latency histogram, in the exposition format.
    fn render_latency(&self, out: &mut String) {
        let name = "agentmesh_delivery_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from send to the recipient's receipt, for messages delivered over a connection.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, c) in LATENCY_BUCKETS_MS.iter().zip(&self.latency) {
            cumulative += c.load(Relaxed);
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }

    /// The exposition text. `killed`: whether the kill switch for everyone
    /// is on.
    pub(super) fn render(&self, s: &NodeStatus, inbox: (usize, usize), killed: bool) -> String {
        let mut out = String::new();
        self.render_latency(&mut out);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let get = |c: &AtomicU64| c.load(Relaxed);
        let one = |v: u64| vec![(String::new(), v)];
        metric(
            "agentmesh_messages_received_total",
            "counter",
            "Messages received and stored in the inbox, by path.",
            &self
                .received
                .samples()
                .map(|(p, n)| (format!("{{path=\"{p}\"}}"), n))
                .collect::<Vec<_>>(),
        );
        let mut sent: Vec<(String, u64)> = self
            .delivered
            .samples()
            .map(|(p, n)| (format!("{{outcome=\"delivered\",path=\"{p}\"}}"), n))
            .collect();
        sent.extend([
            (
                "{outcome=\"deposited\",path=\"mailbox\"}".to_owned(),
                get(&self.deposited),
            ),
            (
                "{outcome=\"rejected\",path=\"none\"}".to_owned(),
                get(&self.rejected),
            ),
            (
                "{outcome=\"failed\",path=\"none\"}".to_owned(),
                get(&self.failed),
            ),
        ]);
        metric(
            "agentmesh_messages_sent_total",
            "counter",
            "Messages sent, by outcome and path: delivered by the path that carried it (mailbox: fetched by its recipient), deposited in mailboxes, refused by the recipient or failed.",
            &sent,
        );
        let mut knocks = self
            .knocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        knocks.entry(("accepted", "none".into())).or_default();
        metric(
            "agentmesh_knocks_total",
            "counter",
            "Incoming KNOCKs decided, by decision and reason (none when accepted).",
            &knocks
                .into_iter()
                .map(|((d, r), n)| (format!("{{decision=\"{d}\",reason=\"{r}\"}}"), n))
                .collect::<Vec<_>>(),
        );
        metric(
            "agentmesh_rate_limited_total",
            "counter",
            "Refusals over a rate limit: KNOCKs and other inputs this node refused (inbound), and this node's messages or KNOCKs a peer refused (outbound).",
            &[
                (
                    "{direction=\"inbound\",kind=\"knock\"}".to_owned(),
                    get(&self.rate_limited_knocks),
                ),
                (
                    "{direction=\"inbound\",kind=\"input\"}".to_owned(),
                    get(&self.rate_limited_inputs),
                ),
                (
                    "{direction=\"outbound\",kind=\"message\"}".to_owned(),
                    get(&self.rate_limited_ours),
                ),
            ],
        );
        metric(
            "agentmesh_refused_inputs_total",
            "counter",
            "Incoming envelopes or KNOCKs refused before a decision (bad input, floods).",
            &one(get(&self.refused)),
        );
        metric(
            "agentmesh_hole_punches_total",
            "counter",
            "Hole punches over relayed connections, by result.",
            &[
                ("{result=\"ok\"}".to_owned(), get(&self.hole_punch_ok)),
                (
                    "{result=\"failed\"}".to_owned(),
                    get(&self.hole_punch_failed),
                ),
            ],
        );
        metric(
            "agentmesh_connections_opened_total",
            "counter",
            "Connections opened to peers.",
            &one(get(&self.connections)),
        );
        let mut paths: BTreeMap<String, u64> = Default::default();
        for c in &s.net.connected {
            *paths.entry(c.path.to_string()).or_default() += 1;
        }
        metric(
            "agentmesh_peers_connected",
            "gauge",
            "Peers connected now, by path.",
            &paths
                .into_iter()
                .map(|(p, n)| (format!("{{path=\"{p}\"}}"), n))
                .collect::<Vec<_>>(),
        );
        metric(
            "agentmesh_sessions",
            "gauge",
            "Cached sessions.",
            &one(s.sessions.len() as u64),
        );
        metric(
            "agentmesh_dht_routing_table_peers",
            "gauge",
            "Peers in the DHT routing table.",
            &one(s.net.routing_table as u64),
        );
        metric(
            "agentmesh_dht_records",
            "gauge",
            "Records in the local DHT store.",
            &one(s.net.dht_records as u64),
        );
        metric(
            "agentmesh_card_published",
            "gauge",
            "1 when this agent's card is stored on another peer.",
            &one(u64::from(s.net.card_published)),
        );
        metric(
            "agentmesh_mailbox_relays",
            "gauge",
            "Relays that keep this agent's mailbox.",
            &one(s.net.mailbox_relays.len() as u64),
        );
        metric(
            "agentmesh_relay_reservations",
            "gauge",
            "Relays this node holds a circuit relay reservation on (listens through).",
            &one(s.net.relay_reservations().len() as u64),
        );
        metric(
            "agentmesh_kill_switch",
            "gauge",
            "1 while the owner's kill switch for everyone is on.",
            &one(u64::from(killed)),
        );
        metric(
            "agentmesh_inbox_messages",
            "gauge",
            "Messages in the local API's inbox, by state.",
            &[
                ("{state=\"ready\"}".to_owned(), inbox.0 as u64),
                ("{state=\"leased\"}".to_owned(), inbox.1 as u64),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::MessageId, identity::Identity};
    use agentmesh_transports::PathKind;

    #[test]
    fn delivery_latency_is_a_cumulative_histogram() {
        let c = Counters::default();
        let to = Identity::from_seed(&[7; 32]).amid();
        for ms in [3, 30, 2_000] {
            c.count(&NodeEvent::Delivered {
                id: MessageId::random(),
                to,
                path: PathKind::DirectQuic,
                knocked: false,
                latency_ms: Some(ms),
            });
        }
        // Mail fetched later has no latency and is not counted.
        c.count(&NodeEvent::Delivered {
            id: MessageId::random(),
            to,
            path: PathKind::Mailbox,
            knocked: false,
            latency_ms: None,
        });
        let json = c.latency_json();
        assert_eq!(json["count"], 3);
        assert_eq!(json["sum_ms"], 2_033);
        let counts: Vec<u64> = json["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(json["buckets"][12]["le_ms"], serde_json::Value::Null);
        let mut out = String::new();
        c.render_latency(&mut out);
        let name = "agentmesh_delivery_latency_seconds";
        for line in [
            format!("# TYPE {name} histogram"),
            format!("{name}_bucket{{le=\"0.005\"}} 1"),
            format!("{name}_bucket{{le=\"0.025\"}} 1"),
            format!("{name}_bucket{{le=\"0.05\"}} 2"),
            format!("{name}_bucket{{le=\"2.5\"}} 3"),
            format!("{name}_bucket{{le=\"+Inf\"}} 3"),
            format!("{name}_sum 2.033"),
            format!("{name}_count 3"),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }

    const ME: &str = "12D3KooWEvTWQ3Ra5t34kDy5ABwxT7Qm6PZ5rc21sX8SrGBJpa5i";
    const RELAY: &str = "12D3KooWB644s7yVBhhQquFs8Nhr8ZTg3UACtzL55YAVA4fSDLB9";

    fn status() -> NodeStatus {
        serde_json::from_value(serde_json::json!({
            "amid": Identity::from_seed(&[1; 32]).amid(),
            "fingerprint": "f",
            "listen_addrs": [
                format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{RELAY}/p2p-circuit/p2p/{ME}"),
                format!("/ip4/127.0.0.1/tcp/2/p2p/{RELAY}/p2p-circuit/p2p/{ME}"),
                format!("/ip4/127.0.0.1/udp/3/quic-v1/p2p/{ME}")
            ],
            "connected": [],
            "routing_table": 0,
            "dht_records": 0,
            "card_published": false,
            "reachability": "auto",
            "mailbox_relays": [format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{RELAY}")],
            "relay": null,
            "sessions": [],
            "known_peers": []
        }))
        .unwrap()
    }

    #[test]
    fn knocks_by_decision_and_reason_messages_by_path_and_rate_limits() {
        let c = Counters::default();
        let bob = Identity::from_seed(&[2; 32]).amid();
        let knock = |accepted: bool, reason: Option<RejectReason>| NodeEvent::KnockDecided {
            from: bob,
            accepted,
            reason,
            session: None,
            tier: None,
            reputation: None,
            policy_hash: None,
        };
        c.count(&knock(true, None));
        c.count(&knock(false, Some(RejectReason::Blocked)));
        c.count(&knock(false, Some(RejectReason::RateLimited)));
        c.count(&knock(false, Some(RejectReason::RateLimited)));
        c.count(&NodeEvent::Refused {
            from: None,
            reason: RejectReason::RateLimited,
            detail: String::new(),
        });
        c.count(&NodeEvent::Rejected {
            id: MessageId::random(),
            to: bob,
            reason: RejectReason::RateLimited,
        });
        c.count(&NodeEvent::MessageReceived {
            id: MessageId::random(),
            from: bob,
            path: PathKind::Relayed,
        });
        c.count(&NodeEvent::MessageReceived {
            id: MessageId::random(),
            from: bob,
            path: PathKind::Mailbox,
        });
        for path in [
            PathKind::DirectQuic,
            PathKind::DirectWebRtc,
            PathKind::Mailbox,
        ] {
            c.count(&NodeEvent::Delivered {
                id: MessageId::random(),
                to: bob,
                path,
                knocked: false,
                latency_ms: None,
            });
        }
        c.count(&NodeEvent::Deposited {
            id: MessageId::random(),
            to: bob,
            relays: 2,
        });
        let out = c.render(&status(), (0, 0), true);
        for line in [
            "agentmesh_knocks_total{decision=\"accepted\",reason=\"none\"} 1",
            "agentmesh_knocks_total{decision=\"rejected\",reason=\"blocked\"} 1",
            "agentmesh_knocks_total{decision=\"rejected\",reason=\"rate_limited\"} 2",
            "agentmesh_rate_limited_total{direction=\"inbound\",kind=\"knock\"} 2",
            "agentmesh_rate_limited_total{direction=\"inbound\",kind=\"input\"} 1",
            "agentmesh_rate_limited_total{direction=\"outbound\",kind=\"message\"} 1",
            "agentmesh_refused_inputs_total 1",
            "agentmesh_messages_received_total{path=\"relayed\"} 1",
            "agentmesh_messages_received_total{path=\"mailbox\"} 1",
            "agentmesh_messages_received_total{path=\"direct-quic\"} 0",
            "agentmesh_messages_sent_total{outcome=\"delivered\",path=\"direct-quic\"} 1",
            "agentmesh_messages_sent_total{outcome=\"delivered\",path=\"direct-webrtc\"} 1",
            "agentmesh_messages_sent_total{outcome=\"delivered\",path=\"relayed\"} 0",
            "agentmesh_messages_sent_total{outcome=\"delivered\",path=\"mailbox\"} 1",
            "agentmesh_messages_sent_total{outcome=\"deposited\",path=\"mailbox\"} 1",
            "agentmesh_messages_sent_total{outcome=\"rejected\",path=\"none\"} 1",
            "agentmesh_relay_reservations 1",
            "agentmesh_mailbox_relays 1",
            "agentmesh_kill_switch 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        // Every family once, with its type.
        for family in [
            "agentmesh_knocks_total",
            "agentmesh_messages_sent_total",
            "agentmesh_rate_limited_total",
        ] {
            let typed = format!("# TYPE {family} counter");
            assert_eq!(out.lines().filter(|l| *l == typed).count(), 1, "{family}");
        }
        // Before any KNOCK, the accepted series is there at 0.
        let fresh = Counters::default().render(&status(), (0, 0), false);
        assert!(fresh
            .lines()
            .any(|l| l == "agentmesh_knocks_total{decision=\"accepted\",reason=\"none\"} 0"));
        assert!(fresh.lines().any(|l| l == "agentmesh_kill_switch 0"));
    }
}
