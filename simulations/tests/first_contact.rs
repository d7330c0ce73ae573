//! First contact while the recipient is offline, with real processes: alice
//! writes to bob, who has never been online with her; the KNOCK waits in
//! bob's mailbox with its first message; bob judges it by his policy when
//! he starts, and alice gets his signed decision, even when she went
//! offline in the meantime.

use std::{path::Path, time::Duration};

use agentmesh_node::{control::Response, PathKind};
use agentmesh_sim::process::{control_send, start_agent, start_bootstrap, start_relay, Proc};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

async fn send(dir: &Path, to: &str, payload: Value) -> Response {
    control_send(dir, to, payload, WAIT).await.expect("send")
}

/// A bootstrap, a relay, and bob's card with that relay published before
/// he stops. Returns what the test needs to go on.
struct World {
    _root: tempfile::TempDir,
    _boot: Proc,
    _relay: Proc,
    boot_addr: String,
    bob_dir: std::path::PathBuf,
    bob_args: Vec<String>,
    bob_amid: String,
    alice: Proc,
    alice_amid: String,
}

async fn bob_offline_then_alice() -> World {
    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (relay, relay_addrs) = start_relay(exe(), &root.path().join("relay"), &boot_addr, &[], &[])
        .await
        .unwrap();
    let bob_args = vec!["--relay".to_string(), relay_addrs[0].clone()];
    let bob_dir = root.path().join("bob");
    // Bob publishes his card (listing his relay) and stops.
    let (bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
        .await
        .unwrap();
    bob.terminate().await.unwrap();
    // Alice has never met bob.
    let (alice, alice_amid) =
        start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
            .await
            .unwrap();
    World {
        _root: root,
        _boot: boot,
        _relay: relay,
        boot_addr,
        bob_dir,
        bob_args,
        bob_amid,
        alice,
        alice_amid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_to_an_offline_agent_waits_in_its_mailbox_and_is_accepted_when_it_starts() {
    let mut w = bob_offline_then_alice().await;

    // The first message knocks through the mailbox; the second follows it
    // in the session the KNOCK proposed.
    let first = send(&w.alice.dir, &w.bob_amid, json!({ "n": 0 })).await;
    assert!(first.ok, "{first:?}");
    let first = first.receipt.unwrap();
    assert_eq!(first.path, PathKind::Mailbox);
    assert!(first.knocked, "the first message carried a KNOCK");
    let second = send(&w.alice.dir, &w.bob_amid, json!({ "n": 1 })).await;
    assert!(second.ok, "{second:?}");
    let second = second.receipt.unwrap();
    assert_eq!(second.path, PathKind::Mailbox);
    assert!(!second.knocked, "the second message rides the same session");
    assert_eq!(second.session, first.session);

    // Bob starts: his policy accepts alice; both arrive, once, in order.
    let (mut bob, _) = start_agent(exe(), "bob", &w.bob_dir, &w.boot_addr, &w.bob_args)
        .await
        .unwrap();
    let decided = bob
        .wait_for(WAIT, |v| v["event"] == "knock_decided")
        .await
        .unwrap();
    assert_eq!(decided["accepted"], true, "{decided}");
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = match bob.wait_for(WAIT, |v| v["event"] == "message").await {
            Ok(m) => m,
            Err(e) => panic!("{e}; got {got:?}; bob said {:#?}", bob.drain()),
        };
        assert_eq!(m["path"], "mailbox");
        got.push(m["payload"]["n"].as_i64().unwrap());
    }
    assert_eq!(got, vec![0, 1]);

    // Alice learns that the KNOCK was accepted and the message delivered.
    let id = first.id.to_string();
    let delivered = w
        .alice
        .wait_for(WAIT, |v| {
            v["event"] == "delivered" && v["id"] == id.as_str()
        })
        .await
        .unwrap();
    assert_eq!(delivered["knocked"], true, "{delivered}");
    assert_eq!(delivered["path"], "mailbox");

    // The session works both ways now, without another KNOCK.
    let reply = send(&bob.dir, &w.alice_amid, json!("back")).await;
    assert!(reply.ok, "{reply:?}");
    assert!(
        !reply.receipt.unwrap().knocked,
        "bob answers in alice's session"
    );

    // Nothing arrives twice.
    let more: Vec<Value> = bob
        .drain()
        .into_iter()
        .filter(|v| v["event"] == "message")
        .collect();
    assert!(more.is_empty(), "delivered twice: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_agent_whose_policy_refuses_the_first_contact_sends_a_signed_rejection() {
    let mut w = bob_offline_then_alice().await;
    let alice_amid = w.alice_amid.clone();

    let sent = send(&w.alice.dir, &w.bob_amid, json!("hello?")).await;
    assert!(sent.ok, "{sent:?}");
    let receipt = sent.receipt.unwrap();
    assert_eq!(receipt.path, PathKind::Mailbox);
    assert!(receipt.knocked);

    // Bob starts with alice on his blocklist.
    let mut args = w.bob_args.clone();
    args.extend(["--block".to_string(), alice_amid]);
    let (mut bob, _) = start_agent(exe(), "bob", &w.bob_dir, &w.boot_addr, &args)
        .await
        .unwrap();
    let decided = bob
        .wait_for(WAIT, |v| v["event"] == "knock_decided")
        .await
        .unwrap();
    assert_eq!(decided["accepted"], false, "{decided}");
    assert_eq!(decided["reason"], "blocked");

    // Alice gets the signed rejection, with bob's reason.
    let id = receipt.id.to_string();
    let rejected = w
        .alice
        .wait_for(WAIT, |v| v["event"] == "rejected" && v["id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(rejected["reason"], "blocked", "{rejected}");
    // Bob never saw the message.
    let seen: Vec<Value> = bob
        .drain()
        .into_iter()
        .filter(|v| v["event"] == "message")
        .collect();
    assert!(seen.is_empty(), "a refused message was delivered: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_reaches_an_initiator_that_went_offline_too_once_it_is_back() {
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (_relay, relay_addrs) =
        start_relay(exe(), &root.path().join("relay"), &boot_addr, &[], &[])
            .await
            .unwrap();
    // Both keep their mail at the relay.
    let with_relay = vec!["--relay".to_string(), relay_addrs[0].clone()];
    let bob_dir = root.path().join("bob");
    let (bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &with_relay)
        .await
        .unwrap();
    bob.terminate().await.unwrap();
    let alice_dir = root.path().join("alice");
    let (alice, _) = start_agent(exe(), "alice", &alice_dir, &boot_addr, &with_relay)
        .await
        .unwrap();
    let sent = send(&alice.dir, &bob_amid, json!("while you were out")).await;
    assert!(sent.ok, "{sent:?}");
    let receipt = sent.receipt.unwrap();
    assert_eq!(receipt.path, PathKind::Mailbox);
    assert!(receipt.knocked);
    // Alice stops before bob is back: his answer cannot reach her directly.
    alice.terminate().await.unwrap();

    let (mut bob, _) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &with_relay)
        .await
        .unwrap();
    let m = bob
        .wait_for(WAIT, |v| v["event"] == "message")
        .await
        .unwrap();
    assert_eq!(m["payload"], "while you were out");

    // Alice comes back and gets bob's decision (left in her mailbox, or
    // sent again after his next drain).
    let (mut alice, _) = start_agent(exe(), "alice", &alice_dir, &boot_addr, &with_relay)
        .await
        .unwrap();
    let id = receipt.id.to_string();
    let delivered = alice
        .wait_for(WAIT, |v| {
            v["event"] == "delivered" && v["id"] == id.as_str()
        })
        .await
        .unwrap();
    assert_eq!(delivered["knocked"], true, "{delivered}");
    assert_eq!(delivered["path"], "mailbox");
}
