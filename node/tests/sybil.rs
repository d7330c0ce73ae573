//! A Sybil KNOCK flood: 1 000 fresh identities, each on a connection of its
//! own (an identity costs nothing to make), KNOCK one agent as fast as they
//! can while a peer it already talks to keeps sending. The peer's messages
//! all arrive, once and in order; the KNOCKs beyond the node's global
//! budget are refused `rate_limited` before any signature work; the nonce
//! store holds no more than the budget let through.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use agentmesh_node::{
    crypto::keystore::KdfParams, knock::Decision, Config, Node, Passphrase, RejectReason,
};

mod support;

use support::sybil_knock;

const WAIT: Duration = Duration::from_secs(120);
const SYBILS: usize = 1_000;
/// Identities knocking at once.
const AT_ONCE: usize = 50;
/// The node's global KNOCK budget (`node/src/node.rs`): 600 a minute,
/// bursts of 200.
const BUDGET_BURST: f64 = 200.0;
const BUDGET_PER_SEC: f64 = 10.0;
/// What the flood may add to this process's resident memory: bob, alice
/// and the 1 000 client swarms (each a QUIC endpoint of its own, 50 alive
/// at a time) together.
const RSS_BOUND_KIB: u64 = 1024 * 1024;

async fn node(dir: &std::path::Path, name: &str) -> Node {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    let n = Node::builder(c)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .spawn()
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while n.listen_addrs().await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    n
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sybil_knock_flood_leaves_a_known_peers_messages_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let bob = node(dir.path(), "bob").await;
    let alice = node(dir.path(), "alice").await;
    let bob_peer = bob.amid().peer_id().unwrap();
    let bob_addrs = bob.listen_addrs().await;
    let bob_quic = bob_addrs
        .iter()
        .find(|a| a.to_string().contains("quic-v1"))
        .expect("a QUIC address")
        .clone();
    alice.connect(bob_peer, bob_addrs).await.unwrap();
    let mut inbox = bob.messages().unwrap();
    // Alice and bob talk before the flood.
    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!(0)))
        .await
        .unwrap()
        .unwrap();
    assert!(r.knocked);
    assert_eq!(inbox.recv().await.unwrap().payload, json!(0));

    let rss_before = rss_kib();
    let started = Instant::now();
    // Alice keeps sending while the flood runs.
    let talker = {
        let (alice, bob) = (alice.clone(), bob.amid());
        tokio::spawn(async move {
            for i in 1..=50 {
                let r = tokio::time::timeout(WAIT, alice.send(&bob, json!(i)))
                    .await
                    .expect("alice's send finished")
                    .expect("delivered during the flood");
                assert!(!r.knocked, "alice's session stays open");
            }
        })
    };
    let answers: Vec<Option<Decision>> = futures::stream::iter(0..SYBILS)
        .map(|i| {
            tokio::time::timeout(
                WAIT,
                sybil_knock(0x5b, i, bob.amid(), bob_peer, bob_quic.clone()),
            )
        })
        .buffer_unordered(AT_ONCE)
        .map(|d| d.expect("bob answered in time"))
        .collect()
        .await;
    let flood_secs = started.elapsed().as_secs_f64();
    let shed = answers.iter().filter(|a| a.is_none()).count();
    let decisions: Vec<Decision> = answers.into_iter().flatten().collect();
    let rss_after = rss_kib();
    talker.await.unwrap();

    // Every message of alice's arrived, once, in order.
    for i in 1..=50 {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, json!(i));
    }
    // Nothing twice: a sentinel sent now is the next message bob reads.
    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!("end")))
        .await
        .unwrap()
        .unwrap();
    assert!(!r.knocked);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!("end"), "nothing more, nothing twice");

    // Past the budget, KNOCKs are refused before any signature work.
    let limited = decisions
        .iter()
        .filter(|d| {
            matches!(
                d,
                Decision::Reject {
                    reason: RejectReason::RateLimited,
                    ..
                }
            )
        })
        .count();
    let past_budget = decisions.len() - limited;
    let allowed = BUDGET_BURST + BUDGET_PER_SEC * flood_secs + 1.0;
    assert!(
        (past_budget as f64) <= allowed,
        "{past_budget} KNOCKs got past a budget of {allowed:.0} in {flood_secs:.1} s"
    );
    if allowed < 0.9 * SYBILS as f64 {
        assert!(limited > 0, "the flood outran the budget");
    }
    // Bob keeps answering (a KNOCK shed unanswered is one the transport's
    // queue had no room for; its sender may try again).
    assert!(
        decisions.len() as f64 >= BUDGET_BURST,
        "only {} of {SYBILS} KNOCKs answered",
        decisions.len()
    );
    // None of them was let in: their first envelope is empty.
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Decision::Reject { .. })));
    // State: nonces only for what got past the budget.
    assert!(
        bob.stored_nonces() <= past_budget + 1,
        "{} nonces for {past_budget} KNOCKs past the budget",
        bob.stored_nonces()
    );
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < RSS_BOUND_KIB,
        "the flood grew this process by {grown} KiB"
    );
    eprintln!(
        "sybil flood: {SYBILS} identities in {flood_secs:.1} s, {shed} streams shed, \
         {limited} refused rate_limited, {past_budget} past the budget, {} nonces, RSS +{} MiB",
        bob.stored_nonces(),
        grown / 1024
    );
}
