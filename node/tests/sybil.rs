//! A Sybil KNOCK flood: 1 000 fresh identities, each on a connection of its
//! own (an identity costs nothing to make), KNOCK one agent as fast as they
//! can while a peer it already talks to keeps sending. The peer's messages
//! all arrive, once and in order; the KNOCKs beyond the node's global
//! budget are refused `rate_limited` before any signature work; the nonce
//! store holds no more than the budget let through.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{swarm::SwarmEvent, Multiaddr, PeerId};
use serde_json::json;

use agentmesh_node::{
    envelope::SessionId,
    keystore::KdfParams,
    knock::{Decision, KnockBody, SignedDecision, SignedKnock},
    wire::{KNOCK_PROTOCOL, MAX_FRAME_SIZE},
    Amid, Config, Identity, Intent, Node, Passphrase, RejectReason,
};
use agentmesh_transports::framing::FramedStream;

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

/// One fresh identity: its own libp2p swarm (QUIC and the stream protocol
/// only), one connection to bob, one KNOCK, then gone. Returns bob's
/// decision, or `None` when the stream was shed unanswered (under a flood
/// the transport drops inbound streams its queue has no room for).
async fn sybil_knock(
    i: usize,
    bob: Amid,
    bob_peer: PeerId,
    bob_addr: Multiaddr,
) -> Option<Decision> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    seed[8] = 0x5b;
    let id = Identity::from_seed(&seed);
    let keypair = id.libp2p_keypair().unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(bob_addr).unwrap();
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == bob_peer => break,
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("sybil {i}: {error}"),
            _ => {}
        }
    }
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let knock = SignedKnock::sign(
        &id,
        &KnockBody {
            from: id.amid(),
            to: bob,
            intent: Intent::default(),
            session: SessionId::random(),
            ts_ms: agentmesh_dht::now_ms(),
            nonce: seed[..16].try_into().unwrap(),
            first: Vec::new(),
            credentials: Default::default(),
        },
    )
    .unwrap();
    let answer = async {
        let s = control.open_stream(bob_peer, KNOCK_PROTOCOL).await.ok()?;
        let mut s = FramedStream::new(s, MAX_FRAME_SIZE);
        s.send(knock.to_bytes()).await.ok()?;
        s.recv().await.ok()?
    }
    .await;
    driver.abort();
    let answer = answer?;
    let decision = SignedDecision::from_bytes(&answer).unwrap();
    let (decision, _) = decision
        .verify(&bob, &knock)
        .expect("bob signs every answer, refusals included");
    Some(decision)
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
        .map(|i| tokio::time::timeout(WAIT, sybil_knock(i, bob.amid(), bob_peer, bob_quic.clone())))
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
