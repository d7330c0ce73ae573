//! A sender killed with SIGKILL right after its messages were acknowledged,
//! and restarted on the same data directory, goes on in the same Olm
//! session: the ratchet state of every message it sent was on disk before
//! the message left, so it never seals again under a message key it used.
//! A receiver killed while messages flow loses none it acknowledged and
//! hands none to its application twice.

use std::{collections::HashSet, path::Path, time::Duration};

use agentmesh_node::control::{Client, Method};

use agentmesh_sim::process::{control_send, start_agent, start_bootstrap, Proc};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);
/// Kills and restarts of the sender. Each one lands within moments of the
/// last seal, well inside the store's periodic flush.
const ROUNDS: usize = 8;
/// Messages sent at once in each round.
const BURST: usize = 4;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

/// Sends `BURST` messages at once, each through its own control
/// connection; returns their ids once every one has its receipt. A receipt
/// that needed a KNOCK means the sender lost its session.
async fn burst(dir: &Path, to: &str, round: usize) -> Vec<String> {
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let (dir, to) = (dir.to_owned(), to.to_owned());
        sends.spawn(async move {
            let payload = json!({"round": round, "i": i});
            control_send(&dir, &to, payload, WAIT).await.expect("send")
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = sends.join_next().await {
        let r = r.expect("send task");
        assert!(r.ok, "round {round}: {r:?}");
        let receipt = r.receipt.expect("receipt");
        assert!(
            !receipt.knocked,
            "round {round}: a new KNOCK was needed: the session did not survive the restart"
        );
        ids.push(receipt.id.to_string());
    }
    ids
}

async fn restart(alice: Proc, boot_addr: &str) -> Proc {
    let dir = alice.dir.clone();
    alice.kill().await.unwrap();
    start_agent(exe(), "alice", &dir, boot_addr, &[])
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_after_sending_never_reuses_a_message_key() {
    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (mut alice, _) = start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
        .await
        .unwrap();
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &root.path().join("bob"), &boot_addr, &[])
        .await
        .unwrap();

    let r = control_send(&alice.dir, &bob_amid, json!("hello"), WAIT)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let receipt = r.receipt.unwrap();
    assert!(receipt.knocked);
    let mut ids = vec![receipt.id.to_string()];

    for round in 0..ROUNDS {
        ids.extend(burst(&alice.dir, &bob_amid, round).await);
        // Right after the last receipt: no time for a periodic flush.
        alice = restart(alice, &boot_addr).await;
    }
    ids.extend(burst(&alice.dir, &bob_amid, ROUNDS).await);

    for id in &ids {
        bob.wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
            .await
            .unwrap_or_else(|e| panic!("message {id} not delivered: {e}"));
    }
    let rest = bob.drain();
    let again: Vec<&Value> = rest.iter().filter(|v| v["event"] == "message").collect();
    assert!(again.is_empty(), "delivered more than once: {again:?}");
    // A reused message key shows as an envelope bob cannot decrypt.
    let refused: Vec<&Value> = rest.iter().filter(|v| v["event"] == "refused").collect();
    assert!(refused.is_empty(), "bob refused envelopes: {refused:?}");

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}

/// Messages alice sends in the receiver test, and how many at once.
const MESSAGES: usize = 240;
const AT_ONCE: usize = 24;

/// Reads what `p` printed until its output ends (after it was killed).
async fn lines_until_exit(p: &mut Proc) -> Vec<Value> {
    let _ = p.wait_for(WAIT, |_| false).await;
    p.drain()
}

/// Bob's application: reads his inbox through the local API and
/// acknowledges each message it read.
struct App {
    api: Client,
    /// Ids handed out, in order.
    handed: Vec<String>,
    /// Ids whose acknowledgement the node confirmed.
    confirmed: HashSet<String>,
}

impl App {
    async fn connect(dir: &Path) -> Self {
        Self {
            api: Client::connect(dir).await.expect("local API"),
            handed: Vec::new(),
            confirmed: HashSet::new(),
        }
    }

    /// Takes what the inbox holds (waiting up to two seconds for the
    /// first message) and acknowledges it.
    async fn read_and_ack(&mut self) {
        let page = self
            .api
            .call(
                Method::GET,
                "/v1/messages?wait_ms=2000&max=64&lease_ms=600000",
                None,
            )
            .await
            .expect("inbox request")
            .expect("inbox answer");
        let ids: Vec<String> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect();
        if ids.is_empty() {
            return;
        }
        self.handed.extend(ids.iter().cloned());
        let r = self
            .api
            .call(
                Method::POST,
                "/v1/messages/ack",
                Some(&json!({ "ids": ids })),
            )
            .await
            .expect("ack request")
            .expect("ack answer");
        assert_eq!(r["acked"], ids.len(), "{r}");
        self.confirmed.extend(ids);
    }

    fn assert_none_twice(&self, run: &str) {
        let mut seen = HashSet::new();
        for id in &self.handed {
            assert!(seen.insert(id), "{run}: message {id} handed out twice");
        }
    }
}

/// Bob is killed while alice's messages flow, right after his application
/// acknowledged some of them. What bob acknowledged to alice (her receipt)
/// reaches his application once he is back, and what his application
/// acknowledged is never handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_burst_loses_no_acknowledged_message_and_delivers_none_twice() {
    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (alice, _) = start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
        .await
        .unwrap();
    let bob_dir = root.path().join("bob");
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &[])
        .await
        .unwrap();
    let r = control_send(&alice.dir, &bob_amid, json!("hello"), WAIT)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");

    // Alice sends in bursts of AT_ONCE, each message waiting for its
    // receipt (which bob sends once the burst is on his disk).
    let sender = {
        let (dir, to) = (alice.dir.clone(), bob_amid.clone());
        tokio::spawn(async move {
            let mut acked = vec![r.receipt.expect("receipt").id.to_string()];
            for round in 0..MESSAGES / AT_ONCE {
                let mut sends = tokio::task::JoinSet::new();
                for i in 0..AT_ONCE {
                    let (dir, to) = (dir.clone(), to.clone());
                    sends.spawn(async move {
                        let n = round * AT_ONCE + i;
                        control_send(&dir, &to, json!({ "n": n }), WAIT).await
                    });
                }
                while let Some(r) = sends.join_next().await {
                    let r = r.expect("send task").expect("control request");
                    assert!(r.ok, "a send failed: {r:?}");
                    acked.push(r.receipt.expect("receipt").id.to_string());
                }
            }
            acked
        })
    };

    // Bob's application handles a quarter of the messages; bob is killed
    // right after it acknowledged the last of them, with more arriving.
    let mut before = App::connect(&bob_dir).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while before.confirmed.len() < MESSAGES / 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's application got only {} messages",
            before.confirmed.len()
        );
        before.read_and_ack().await;
    }
    bob.signal(libc::SIGKILL).unwrap();
    let mut printed = lines_until_exit(&mut bob).await;
    drop(bob);
    let (mut bob, again) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &[])
        .await
        .unwrap();
    assert_eq!(again, bob_amid);

    let acked = tokio::time::timeout(WAIT * 2, sender)
        .await
        .expect("alice's sends finished")
        .unwrap();
    assert_eq!(acked.len(), MESSAGES + 1);

    // After the restart the application reads on until it has every
    // message alice has a receipt for.
    let mut after = App::connect(&bob_dir).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !before.confirmed.contains(*id) && !after.confirmed.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages alice has receipts for never reached bob's application: {missing:?}"
        );
        after.read_and_ack().await;
    }
    before.assert_none_twice("before the kill");
    after.assert_none_twice("after the restart");
    let again: Vec<&String> = after
        .handed
        .iter()
        .filter(|id| before.confirmed.contains(*id))
        .collect();
    assert!(
        again.is_empty(),
        "acknowledged by the application, yet handed out again after the restart: {again:?}"
    );
    printed.extend(bob.drain());
    let refused: Vec<&Value> = printed.iter().filter(|v| v["event"] == "refused").collect();
    assert!(refused.is_empty(), "bob refused envelopes: {refused:?}");

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}
