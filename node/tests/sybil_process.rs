//! A Sybil KNOCK flood against an agent in a process of its own: bob is a
//! real `agentmesh run`, and 1 000 fresh identities (each its own libp2p
//! swarm, on a QUIC connection of its own, 50 at a time) KNOCK him from
//! this process while alice, who already has a session with him, keeps
//! sending. Alice's messages all arrive, once and in order (bob prints
//! them); KNOCKs past bob's global budget are refused `rate_limited`; bob's
//! peak resident memory (`VmHWM`) stays under a stated bound. Unlike
//! `tests/sybil.rs`, bob's memory is his alone, not shared with the
//! flooders'.

use std::{
    path::Path,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::Multiaddr;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use agentmesh_node::{
    crypto::keystore::KdfParams, knock::Decision, Amid, Config, Node, Passphrase, RejectReason,
};

mod support;

use support::sybil_knock;

const WAIT: Duration = Duration::from_secs(120);
const SYBILS: usize = 1_000;
/// Identities knocking at once.
const AT_ONCE: usize = 50;
/// Alice's messages during the flood.
const MESSAGES: u64 = 50;
/// The node's global KNOCK budget (`node/src/node.rs`): 600 a minute,
/// bursts of 200.
const BUDGET_BURST: f64 = 200.0;
const BUDGET_PER_SEC: f64 = 10.0;
/// Bob's peak resident memory through start, the flood and the end.
const BOB_RSS_BOUND: u64 = 256 << 20;

/// Peak resident memory (`VmHWM`, bytes) of process `pid`.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM in /proc/<pid>/status")
        * 1024
}

/// A UDP port free on loopback a moment ago.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bob: `agentmesh run --json` listening on QUIC at `port`. Returns the
/// process, his AMID, and his printed messages (other lines are only
/// counted, so his stdout never fills up whatever he prints).
async fn bob(dir: &Path, port: u16) -> (Child, Amid, mpsc::Receiver<Value>, Arc<AtomicUsize>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .env("AGENTMESH_PASSPHRASE", "sybil process")
        .env_remove("AGENTMESH_PASSPHRASE_FILE")
        .env_remove("AGENTMESH_HOME")
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "run", "--listen"])
        .arg(format!("/ip4/127.0.0.1/udp/{port}/quic-v1"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("agentmesh run starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let others = Arc::new(AtomicUsize::new(0));
    let counted = others.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if matches!(v["event"].as_str(), Some("started" | "message")) {
                if tx.send(v).await.is_err() {
                    break;
                }
            } else {
                counted.fetch_add(1, Relaxed);
            }
        }
    });
    let started = tokio::time::timeout(WAIT, async {
        loop {
            let v = rx.recv().await.expect("bob runs");
            if v["event"] == "started" {
                return v;
            }
        }
    })
    .await
    .expect("bob started in time");
    let amid = started["amid"].as_str().unwrap().parse().unwrap();
    (child, amid, rx, others)
}

/// Bob's next printed message.
async fn next_message(inbox: &mut mpsc::Receiver<Value>) -> Value {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a message in time")
        .expect("bob runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sybil_knock_flood_on_a_separate_process_leaves_a_known_peers_messages_flowing() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let (mut bob_proc, bob, mut inbox, other_lines) = bob(&dir.path().join("bob"), port).await;
    let bob_pid = bob_proc.id().expect("bob runs");
    let bob_peer = bob.peer_id().unwrap();
    let bob_addr: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
        .parse()
        .unwrap();

    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    let alice = Node::builder(c)
        .data_dir(dir.path().join("alice"))
        .passphrase(Passphrase::new("alice"))
        .spawn()
        .await
        .unwrap();
    // Bob prints `started` once his node runs; his listener may come up a
    // moment later.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::timeout(
        Duration::from_secs(10),
        alice.connect(bob_peer, vec![bob_addr.clone()]),
    )
    .await
    .map_or(true, |r| r.is_err())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never reached bob"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alice and bob talk before the flood.
    let r = tokio::time::timeout(WAIT, alice.send(&bob, json!(0)))
        .await
        .unwrap()
        .unwrap();
    assert!(r.knocked);
    assert_eq!(next_message(&mut inbox).await["payload"], json!(0));
    let rss_before = peak_rss(bob_pid);

    let started = Instant::now();
    // Alice keeps sending while the flood runs.
    let talker = {
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 1..=MESSAGES {
                let r = tokio::time::timeout(WAIT, alice.send(&bob, json!(i)))
                    .await
                    .expect("alice's send finished")
                    .expect("delivered during the flood");
                assert!(!r.knocked, "alice's session stays open");
            }
        })
    };
    let answers: Vec<Option<Decision>> = futures::stream::iter(0..SYBILS)
        .map(|i| tokio::time::timeout(WAIT, sybil_knock(0x5c, i, bob, bob_peer, bob_addr.clone())))
        .buffer_unordered(AT_ONCE)
        .map(|d| d.expect("bob answered in time"))
        .collect()
        .await;
    let flood_secs = started.elapsed().as_secs_f64();
    talker.await.unwrap();
    let shed = answers.iter().filter(|a| a.is_none()).count();
    let decisions: Vec<Decision> = answers.into_iter().flatten().collect();

    // Every message of alice's arrived, once, in order, then a sentinel
    // sent now is the next one bob prints: nothing twice.
    let alice_amid = alice.amid().to_string();
    for i in 1..=MESSAGES {
        let m = next_message(&mut inbox).await;
        assert_eq!(m["from"], alice_amid.as_str());
        assert_eq!(m["payload"], json!(i));
    }
    let r = tokio::time::timeout(WAIT, alice.send(&bob, json!("end")))
        .await
        .unwrap()
        .unwrap();
    assert!(!r.knocked);
    assert_eq!(
        next_message(&mut inbox).await["payload"],
        json!("end"),
        "nothing more, nothing twice"
    );
    let rss = peak_rss(bob_pid);

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
    eprintln!(
        "sybil flood on a process: {SYBILS} identities in {flood_secs:.1} s, {} answered, \
         {shed} shed, {limited} refused rate_limited, {past_budget} past the budget; \
         {} other lines printed by bob; bob's peak RSS {} MiB ({} MiB before the flood)",
        decisions.len(),
        other_lines.load(Relaxed),
        rss >> 20,
        rss_before >> 20
    );
    let allowed = BUDGET_BURST + BUDGET_PER_SEC * flood_secs + 1.0;
    assert!(
        (past_budget as f64) <= allowed,
        "{past_budget} KNOCKs got past a budget of {allowed:.0} in {flood_secs:.1} s"
    );
    if allowed < 0.9 * SYBILS as f64 {
        assert!(limited > 0, "the flood outran the budget");
    }
    assert!(
        decisions.len() as f64 >= BUDGET_BURST,
        "only {} of {SYBILS} KNOCKs answered",
        decisions.len()
    );
    // None of them was let in.
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Decision::Reject { .. })));
    assert!(rss < BOB_RSS_BOUND, "bob's peak RSS {} MiB", rss >> 20);

    alice.shutdown().await;
    let _ = bob_proc.start_kill();
    let _ = tokio::time::timeout(WAIT, bob_proc.wait()).await;
}
