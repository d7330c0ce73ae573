//! `GET /metrics`: the node's counters and gauges in the Prometheus text
//! format (names `agentmesh_*`, following Prometheus' conventions).

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::{events::NodeEvent, runtime::NodeStatus};

/// Counters fed by node events.
#[derive(Debug, Default)]
pub(super) struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    deposited: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    knocks_accepted: AtomicU64,
    knocks_rejected: AtomicU64,
    refused: AtomicU64,
    hole_punch_ok: AtomicU64,
    hole_punch_failed: AtomicU64,
    connections: AtomicU64,
    /// Delivery latency: counts per bucket of [`LATENCY_BUCKETS_MS`] (not
    /// cumulative), then the sum in ms and the count.
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_sum_ms: AtomicU64,
    latency_count: AtomicU64,
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
            NodeEvent::MessageReceived { .. } => &self.received,
            NodeEvent::Delivered { .. } => &self.delivered,
            NodeEvent::Deposited { .. } => &self.deposited,
            NodeEvent::Rejected { .. } => &self.rejected,
            NodeEvent::Failed { .. } => &self.failed,
            NodeEvent::KnockDecided { accepted: true, .. } => &self.knocks_accepted,
            NodeEvent::KnockDecided { .. } => &self.knocks_rejected,
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

    /// The exposition text.
    pub(super) fn render(&self, s: &NodeStatus, inbox: (usize, usize)) -> String {
        let mut out = String::new();
        self.render_latency(&mut out);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let get = |c: &AtomicU64| c.load(Relaxed);
        metric(
            "agentmesh_messages_received_total",
            "counter",
            "Messages received and stored in the inbox.",
            &[("", get(&self.received))],
        );
        metric(
            "agentmesh_messages_sent_total",
            "counter",
            "Messages sent, by outcome.",
            &[
                ("{outcome=\"delivered\"}", get(&self.delivered)),
                ("{outcome=\"deposited\"}", get(&self.deposited)),
                ("{outcome=\"rejected\"}", get(&self.rejected)),
                ("{outcome=\"failed\"}", get(&self.failed)),
            ],
        );
        metric(
            "agentmesh_knocks_total",
            "counter",
            "Incoming KNOCKs decided, by decision.",
            &[
                ("{decision=\"accepted\"}", get(&self.knocks_accepted)),
                ("{decision=\"rejected\"}", get(&self.knocks_rejected)),
            ],
        );
        metric(
            "agentmesh_refused_inputs_total",
            "counter",
            "Incoming envelopes or KNOCKs refused before a decision (bad input, floods).",
            &[("", get(&self.refused))],
        );
        metric(
            "agentmesh_hole_punches_total",
            "counter",
            "Hole punches over relayed connections, by result.",
            &[
                ("{result=\"ok\"}", get(&self.hole_punch_ok)),
                ("{result=\"failed\"}", get(&self.hole_punch_failed)),
            ],
        );
        metric(
            "agentmesh_connections_opened_total",
            "counter",
            "Connections opened to peers.",
            &[("", get(&self.connections))],
        );
        let mut paths: std::collections::BTreeMap<String, u64> = Default::default();
        for c in &s.net.connected {
            *paths.entry(c.path.to_string()).or_default() += 1;
        }
        let labels: Vec<(String, u64)> = paths
            .into_iter()
            .map(|(p, n)| (format!("{{path=\"{p}\"}}"), n))
            .collect();
        let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "agentmesh_peers_connected",
            "gauge",
            "Peers connected now, by path.",
            &samples,
        );
        metric(
            "agentmesh_sessions",
            "gauge",
            "Cached sessions.",
            &[("", s.sessions.len() as u64)],
        );
        metric(
            "agentmesh_dht_routing_table_peers",
            "gauge",
            "Peers in the DHT routing table.",
            &[("", s.net.routing_table as u64)],
        );
        metric(
            "agentmesh_dht_records",
            "gauge",
            "Records in the local DHT store.",
            &[("", s.net.dht_records as u64)],
        );
        metric(
            "agentmesh_card_published",
            "gauge",
            "1 when this agent's card is stored on another peer.",
            &[("", u64::from(s.net.card_published))],
        );
        metric(
            "agentmesh_inbox_messages",
            "gauge",
            "Messages in the local API's inbox, by state.",
            &[
                ("{state=\"ready\"}", inbox.0 as u64),
                ("{state=\"leased\"}", inbox.1 as u64),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{envelope::MessageId, identity::Identity};
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
}
