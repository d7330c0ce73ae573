//! Identity rotation end to end, nodes in one process on real loopback
//! sockets and sled databases: bob moves to a new key while alice is
//! offline; when she is back, a send to his old AMID finds where he went
//! (his rotation record in the DHT, signed by both keys), reaches him, and
//! her petname for him follows.

use std::{path::Path, time::Duration};

use agentmesh_node::{
    crypto::keystore::{KdfParams, Keystore},
    identity::rotation::follow,
    Config, Intent, MessageKind, Node, Passphrase, Presence,
};
use serde_json::json;

mod support;

const WAIT: Duration = Duration::from_secs(90);

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

/// Starts `name` in `dir` (again, once a stopped node let go of its
/// database).
async fn start(dir: &Path, name: &str, boot: Option<&Node>) -> Node {
    support::start_node(dir, name, config(), boot, WAIT).await
}

/// Starts the bootstrap node in `dir`, once it listens.
async fn start_bootstrap(dir: &Path) -> Node {
    let boot = start(dir, "bootstrap", None).await;
    tokio::time::timeout(WAIT, async {
        while boot.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bootstrap listens");
    boot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_offline_during_a_rotation_follows_the_agent_to_its_new_key() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = start_bootstrap(dir.path()).await;
    let alice = start(dir.path(), "alice", Some(&boot)).await;
    let bob = start(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await);
    assert!(bob.wait_published(WAIT).await);
    let old_bob = bob.amid();
    alice.set_name("bob", &old_bob).unwrap();
    alice
        .send(&old_bob, json!({ "text": "before" }))
        .await
        .unwrap();

    // Alice goes offline; bob stops, moves to a new key, and comes back.
    alice.shutdown().await;
    bob.shutdown().await;
    let rotation = Keystore::rotate_file(
        &dir.path().join("bob"),
        &Passphrase::new("bob"),
        KdfParams::throwaway(),
        agentmesh_dht::now_ms(),
    )
    .expect("bob's keystore rotates");
    let body = rotation.verify().expect("signed by both keys");
    assert_eq!(body.old, old_bob);
    let bob = start(dir.path(), "bob", Some(&boot)).await;
    let new_bob = bob.amid();
    assert_eq!(new_bob, body.new);
    assert_ne!(new_bob, old_bob);
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();

    // Alice is back. Her send to the old AMID finds bob's new key once
    // his rotation record is out.
    let alice = start(dir.path(), "alice", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await);
    let chain = tokio::time::timeout(WAIT, async {
        loop {
            if let Some((now, chain)) = alice.follow_rotation(&old_bob).await {
                assert_eq!(now, new_bob);
                return chain;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("bob's rotation record is found");
    // The history checks by itself, by anyone.
    assert_eq!(follow(old_bob, &chain), Ok(new_bob));
    assert_eq!(chain, vec![rotation]);
    // Known from now on: sends to the old AMID and to the petname go to
    // the new key at once.
    assert_eq!(alice.current_amid(&old_bob), new_bob);
    assert_eq!(alice.resolve_name("bob").unwrap(), new_bob);
    let receipt = alice
        .send(&old_bob, json!({ "text": "after" }))
        .await
        .expect("sent to bob's new key");
    assert_eq!(receipt.to, new_bob);
    assert!(receipt.knocked);
    // (What the old bob's application never read is handed out first.)
    let got = tokio::time::timeout(WAIT, async {
        loop {
            let m = inbox.recv().await.unwrap();
            if m.payload != json!({ "text": "before" }) {
                return m;
            }
        }
    })
    .await
    .expect("bob gets it");
    assert_eq!(got.from, alice.amid());
    assert_eq!(got.payload, json!({ "text": "after" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_an_agent_that_moved_follows_it_when_the_old_key_does_not_answer() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = start_bootstrap(dir.path()).await;
    let alice = start(dir.path(), "alice", Some(&boot)).await;
    let carol = start(dir.path(), "carol", Some(&boot)).await;
    let bob = start(dir.path(), "bob", Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await);
    let old_bob = bob.amid();
    bob.shutdown().await;
    Keystore::rotate_file(
        &dir.path().join("bob"),
        &Passphrase::new("bob"),
        KdfParams::throwaway(),
        agentmesh_dht::now_ms(),
    )
    .unwrap();
    let bob = start(dir.path(), "bob", Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();
    assert!(alice.wait_published(WAIT).await);
    // Alice has not learned of the rotation. Bob's old card is replaced by
    // the tombstone his new node leaves under the old key.
    tokio::time::timeout(WAIT, async {
        while alice.lookup(&old_bob).await.map(|c| c.presence) != Some(Presence::Moved) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the old card says moved");
    // The send to the old key fails at once on it, and follows the record.
    let receipt = tokio::time::timeout(WAIT * 2, async {
        loop {
            match alice.send(&old_bob, json!({ "text": "found you" })).await {
                Ok(r) => return r,
                // The rotation record may not be out yet.
                Err(e) => {
                    eprintln!("not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    })
    .await
    .expect("the send follows bob");
    assert_eq!(receipt.to, bob.amid());
    let got = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("bob gets it")
        .unwrap();
    assert_eq!(got.payload, json!({ "text": "found you" }));

    // A request follows him the same way (carol has not learned of the
    // rotation; the record is out by now).
    let answering = bob.clone();
    tokio::spawn(async move {
        while let Some(m) = inbox.recv().await {
            if m.kind == MessageKind::Request {
                let _ = answering.reply(&m, json!({ "pong": m.payload })).await;
            }
        }
    });
    assert!(carol.wait_published(WAIT).await);
    let answer = carol
        .request(&old_bob, Intent::new("chat", "ping"), json!(1), WAIT)
        .await
        .expect("the request follows bob");
    assert_eq!(answer.from, bob.amid());
    assert_eq!(answer.payload, json!({ "pong": 1 }));
    assert_eq!(carol.current_amid(&old_bob), bob.amid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_block_lists_follow_an_agent_that_rotated() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = start_bootstrap(dir.path()).await;
    let carol = start(dir.path(), "carol", Some(&boot)).await;
    let old_carol = carol.amid();
    carol.shutdown().await;
    Keystore::rotate_file(
        &dir.path().join("carol"),
        &Passphrase::new("carol"),
        KdfParams::throwaway(),
        agentmesh_dht::now_ms(),
    )
    .unwrap();

    // Alice takes only the old carol; bob blocks her.
    let alice = start(dir.path(), "alice", Some(&boot)).await;
    let mut only_carol = alice.policy();
    only_carol.allow.insert(old_carol);
    alice.set_policy(only_carol);
    let bob = start(dir.path(), "bob", Some(&boot)).await;
    bob.block(old_carol);
    let carol = start(dir.path(), "carol", Some(&boot)).await;
    let new_carol = carol.amid();
    assert_ne!(new_carol, old_carol);
    let mut inbox = alice.messages().unwrap();
    for n in [&alice, &bob, &carol] {
        assert!(n.wait_published(WAIT).await);
    }

    // Her KNOCK shows her history: alice's allowlist lets the new key in,
    // and alice notes where carol went.
    let receipt = tokio::time::timeout(WAIT, carol.send(&alice.amid(), json!({ "text": "me" })))
        .await
        .expect("in time")
        .expect("alice takes the new key of an agent she allowed");
    assert!(receipt.knocked);
    let got = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("alice gets it")
        .unwrap();
    assert_eq!(
        (got.from, got.payload),
        (new_carol, json!({ "text": "me" }))
    );
    assert_eq!(alice.current_amid(&old_carol), new_carol);

    // Bob's blocklist holds the new key too.
    let refused = tokio::time::timeout(WAIT, carol.send(&bob.amid(), json!({ "text": "me" })))
        .await
        .expect("in time")
        .expect_err("bob refuses the new key of an agent he blocked");
    assert!(
        matches!(
            refused,
            agentmesh_node::SendError::Rejected(agentmesh_node::RejectReason::Blocked)
        ),
        "{refused:?}"
    );
}
