//! `agentmesh-sim scale` in small: agents in one process on loopback, every
//! message checked at its recipient, also while agents stop and start.

use std::collections::HashSet;

use agentmesh_sim::scale::{pairs, run, ScaleOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_first_contact_sessions_offline_and_churn() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let opts = ScaleOptions {
        agents: 6,
        messages: 12,
        offline: 2,
        concurrency: 4,
        churn: 1,
    };
    let report = run(&opts, |_| {}).await.expect("the simulation runs");
    let table = report.table();
    let [first, again, offline, churn] = &report.phases[..] else {
        panic!("four phases: {table}");
    };
    for p in [first, again, offline, churn] {
        assert!(p.errors.is_empty(), "{}: {:?}", p.name, p.errors);
        assert_eq!(p.delivered, p.sent, "{table}");
        // Every copy of the phase's messages, also those that turned up
        // while later phases ran, counted once the run settled (the relay
        // held no mail, and a last message per pair came through behind
        // everything sent before it).
        assert_eq!(p.duplicates, 0, "{table}");
        assert_eq!(p.latencies.len(), p.sent);
    }
    assert_eq!(
        (first.sent, again.sent, offline.sent),
        (12, 12, 2),
        "{table}"
    );
    // 12 distinct pairs. A session serves both ways: the first message
    // between two agents KNOCKs (both, when they write at the same time),
    // a message the other way may ride the session already open.
    let unordered: HashSet<(usize, usize)> = pairs(6, 12)
        .into_iter()
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();
    assert!(
        (unordered.len()..=12).contains(&first.knocked),
        "{} pairs of agents: {table}",
        unordered.len()
    );
    assert_eq!(again.knocked, 0, "{table}");
    // Loopback: every online agent is reached directly; the stopped ones
    // through their mailbox.
    assert_eq!(first.paths.get("direct-quic"), Some(&12), "{table}");
    assert_eq!(again.paths.get("direct-quic"), Some(&12), "{table}");
    assert_eq!(offline.paths.get("mailbox"), Some(&2), "{table}");
    // Churn: agents 0 and 1 stop; the others write to all their recipients
    // (the two stopped ones too, whose mail waits at the relay).
    let from_online = pairs(6, 12)
        .into_iter()
        .filter(|(from, _)| *from > 1)
        .count();
    assert_eq!(churn.sent, from_online, "{table}");
    assert_eq!(churn.knocked, 0, "sessions survive restarts: {table}");
}
