//! Nodes in one process, on real loopback sockets and real sled databases.

use std::time::Duration;

use agentmesh_node::{
    audit::AuditFilter, crypto::keystore::KdfParams, Config, Node, NodeEvent, Passphrase, PathKind,
    Presence, RejectReason, SendError,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

async fn node(dir: &std::path::Path, name: &str, bootstrap: Option<&Node>) -> Node {
    let mut b = Node::builder(config())
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = bootstrap {
        let addrs = boot.listen_addrs().await;
        b = b.bootstraps(addrs);
    }
    b.spawn().await.expect("node starts")
}

async fn bootstrap(dir: &std::path::Path) -> Node {
    let n = node(dir, "bootstrap", None).await;
    // wait until it listens
    tokio::time::timeout(WAIT, async {
        while n.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bootstrap listens");
    n
}

/// A bootstrap, alice and bob, all joined.
async fn trio(dir: &std::path::Path) -> (Node, Node, Node) {
    let boot = bootstrap(dir).await;
    let alice = node(dir, "alice", Some(&boot)).await;
    let bob = node(dir, "bob", Some(&boot)).await;
    (boot, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_resolves_bob_knocks_and_sends() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    assert!(alice.wait_published(WAIT).await);
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();

    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!({"text": "hi bob"})))
        .await
        .unwrap()
        .unwrap();
    assert!(r.knocked);
    assert_eq!(r.path, PathKind::DirectQuic);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!({"text": "hi bob"}));
    assert_eq!(m.from, alice.amid());

    // second message rides the session stream, no KNOCK
    let r = alice.send(&bob.amid(), json!({"n": 2})).await.unwrap();
    assert!(!r.knocked);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!({"n": 2}));

    // bob answers in the same session
    let mut alice_inbox = alice.messages().unwrap();
    let r = bob.send(&alice.amid(), json!("hello alice")).await.unwrap();
    assert!(!r.knocked);
    let m = tokio::time::timeout(WAIT, alice_inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!("hello alice"));

    // a burst arrives complete and in order
    for i in 0..50 {
        alice
            .send_nowait(&bob.amid(), json!({"i": i}))
            .await
            .unwrap();
    }
    for i in 0..50 {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, json!({"i": i}));
    }
    let status = alice.status().await;
    assert_eq!(status.known_peers, vec![bob.amid()]);

    // libp2p's own metrics counted it: connections to the bootstrap node and
    // bob, identify exchanges, the DHT lookup of bob's card.
    let text = alice.libp2p_metrics();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        sum("libp2p_swarm_connections_established_total") >= 2.0,
        "{text}"
    );
    assert!(sum("libp2p_identify_received_total") >= 1.0, "{text}");
    assert!(
        sum("libp2p_kad_query_result_get_record_ok_total") >= 1.0,
        "{text}"
    );
    // The bytes of those 50 messages, each way (messages out, receipts in).
    let bytes = |direction: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{"))
            .filter(|l| l.contains(&format!("direction=\"{direction}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(bytes("Outbound") > 50.0 * 64.0, "{text}");
    assert!(bytes("Inbound") > 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_sender_gets_reject_with_reason() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    bob.block(alice.amid());
    assert!(bob.wait_published(WAIT).await);
    let mut events = bob.events();
    let err = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!("let me in")))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::Blocked));
    // bob logged the decision and delivered nothing
    let decided = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(NodeEvent::KnockDecided {
                accepted,
                reason,
                tier,
                policy_hash,
                ..
            }) = events.recv().await
            {
                return (accepted, reason, tier, policy_hash);
            }
        }
    })
    .await
    .unwrap();
    // The event names the sender's tier and the policy that decided.
    assert_eq!(
        decided,
        (
            false,
            Some(RejectReason::Blocked),
            Some(agentmesh_node::knock::policy::Tier::Anonymous),
            Some(hex::encode(bob.policy().hash())),
        )
    );
    let mut inbox = bob.messages().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_is_rate_limited_while_a_polite_one_is_not() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    // bob accepts 20 messages a minute per sender
    let mut c = config();
    c.policy.rate.messages_per_minute = 20;
    let bob = Node::builder(c)
        .data_dir(dir.path().join("bob"))
        .passphrase(Passphrase::new("bob"))
        .bootstraps(boot.listen_addrs().await)
        .spawn()
        .await
        .unwrap();
    let flood = node(dir.path(), "flood", Some(&boot)).await;
    let polite = node(dir.path(), "polite", Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();
    let mut events = bob.events();

    // 60 messages at once: 3x the limit.
    for i in 0..60 {
        flood
            .send_nowait(&bob.amid(), json!({"flood": i}))
            .await
            .unwrap();
    }
    // The polite sender's 5 messages all arrive despite the flood.
    for i in 0..5 {
        let r = tokio::time::timeout(WAIT, polite.send(&bob.amid(), json!({"polite": i})))
            .await
            .unwrap();
        assert!(r.is_ok(), "polite message {i}: {r:?}");
    }
    let mut polite_seen = 0;
    let mut flood_seen = 0;
    while polite_seen < 5 {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        if m.from == polite.amid() {
            assert_eq!(m.payload, json!({"polite": polite_seen}));
            polite_seen += 1;
        } else {
            flood_seen += 1;
        }
    }
    // Bob took the flood's burst, and no more, so far.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), inbox.recv()).await {
        assert_eq!(m.from, flood.amid());
        flood_seen += 1;
    }
    assert!(
        flood_seen <= 21,
        "the flood got {flood_seen} messages through"
    );
    assert!(
        flood_seen >= 19,
        "the flood's burst should pass: {flood_seen}"
    );
    // Every delivered message, and only those, is in bob's audit log.
    let logged = bob
        .audit_log(&AuditFilter::default().kind("message_in"))
        .unwrap();
    assert_eq!(logged.len(), flood_seen + 5);
    // The waits were reported (what the metrics count), never audited.
    let throttled = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(NodeEvent::Throttled { from, .. }) = events.recv().await {
                return from;
            }
        }
    })
    .await
    .expect("a throttled event");
    assert_eq!(throttled, flood.amid().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_contacts_skip_knock_until_killed_and_the_audit_chain_holds() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (boot, alice, bob) = trio(dir.path()).await;
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();

    assert!(alice.send(&bob.amid(), json!(1)).await.unwrap().knocked);
    assert!(!alice.send(&bob.amid(), json!(2)).await.unwrap().knocked);
    inbox.recv().await.unwrap();
    inbox.recv().await.unwrap();
    let skipped = alice
        .audit_log(&AuditFilter::default().kind("knock_skipped"))
        .unwrap();
    assert_eq!(skipped.len(), 1, "the cached session skipped the KNOCK");
    let decided = bob
        .audit_log(
            &AuditFilter::default()
                .kind("knock_decision")
                .peer(alice.amid()),
        )
        .unwrap();
    assert_eq!(decided.len(), 1);

    // The owner kills alice on bob's side: her session is gone, and her
    // next attempt is refused as blocked.
    bob.kill(Some(alice.amid())).await;
    let err = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!(3)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::Blocked));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.recv())
            .await
            .is_err()
    );
    let kills = bob.audit_log(&AuditFilter::default().kind("kill")).unwrap();
    assert_eq!(kills.len(), 1);
    assert!(bob.verify_audit_log().unwrap() >= 5);
    assert!(alice.verify_audit_log().unwrap() >= 3);

    // Kill everything: nothing goes out any more.
    alice.kill(None).await;
    assert_eq!(
        alice.send(&boot.amid(), json!("x")).await.unwrap_err(),
        SendError::Killed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_rejections_open_the_circuit_breaker() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    bob.block(alice.amid());
    assert!(bob.wait_published(WAIT).await);
    // The default breaker opens after 5 consecutive failures.
    for _ in 0..5 {
        let err = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!("hi")))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err, SendError::Rejected(RejectReason::Blocked));
    }
    let err = alice.send(&bob.amid(), json!("hi")).await.unwrap_err();
    assert!(
        matches!(err, SendError::CircuitOpen { retry_after_ms } if retry_after_ms > 0),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_is_forgotten_on_both_sides() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();
    let mut bob_events = bob.events();
    assert!(alice.send(&bob.amid(), json!(1)).await.unwrap().knocked);
    inbox.recv().await.unwrap();

    assert_eq!(alice.close_session(&bob.amid()).await, 1);
    assert!(alice.status().await.sessions.is_empty());
    // bob hears of it
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(NodeEvent::SessionClosed { by_peer: true, .. }) = bob_events.recv().await {
                return;
            }
        }
    })
    .await
    .unwrap();
    assert!(bob.status().await.sessions.is_empty());
    // the next message opens a new session
    assert!(alice.send(&bob.amid(), json!(2)).await.unwrap().knocked);
    assert_eq!(inbox.recv().await.unwrap().payload, json!(2));
    let closed = bob
        .audit_log(&AuditFilter::default().kind("session_closed"))
        .unwrap();
    assert_eq!(closed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_published_in_the_card() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    assert!(bob.wait_published(WAIT).await);
    let card = alice.lookup(&bob.amid()).await.expect("bob's card");
    assert_eq!(card.presence, Presence::Online);
    assert_eq!(card.amid, bob.amid());

    bob.set_presence(Presence::Dnd).await;
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(c) = alice.lookup(&bob.amid()).await {
                if c.presence == Presence::Dnd {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the new presence reaches the DHT");
    assert!(seen.seq > card.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_record_is_found_by_another_node() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    assert!(alice.wait_published(WAIT).await);
    assert!(bob.wait_published(WAIT).await);
    let stored = alice
        .publish_record("x-notes", b"hello".to_vec(), Duration::from_secs(600))
        .await
        .unwrap();
    assert!(stored);
    let peer = alice.amid().peer_id().unwrap();
    let found = bob
        .get_record("x-notes", &peer)
        .await
        .expect("record found");
    assert_eq!(found.payload, b"hello");
    assert_eq!(found.subject, peer);
    assert!(bob.get_record("x-other", &peer).await.is_none());
    // A namespace no node serves: refused, even by the publisher's store.
    let refused = alice
        .publish_record("notes", b"hello".to_vec(), Duration::from_secs(600))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(bob.get_record("notes", &peer).await.is_none());

    // Published again at once, within the same millisecond or not: each
    // new record takes a higher sequence, so none is refused as stale.
    let again = futures::future::join_all(
        (0..5u8).map(|i| alice.publish_record("x-notes", vec![b'a', i], Duration::from_secs(600))),
    )
    .await;
    for (i, r) in again.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
    let last = bob
        .get_record("x-notes", &peer)
        .await
        .expect("record found");
    assert!(last.seq > found.seq, "{} after {}", last.seq, found.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_publishes_presence_offline() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    assert!(bob.wait_published(WAIT).await);
    assert!(alice.wait_published(WAIT).await);
    let before = alice.lookup(&bob.amid()).await.expect("bob's card");
    assert_eq!(before.presence, Presence::Online);

    let bob_amid = bob.amid();
    tokio::time::timeout(WAIT, bob.shutdown())
        .await
        .expect("shutdown ends");
    // bob is stopped: a card saying offline can only have been published
    // by its shutdown.
    let after = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(c) = alice.lookup(&bob_amid).await {
                if c.presence == Presence::Offline {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("lookups see bob offline");
    assert!(after.seq > before.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_ends_and_the_next_message_starts_another() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let mut c = config();
    c.link_idle = Duration::from_secs(2);
    let alice = Node::builder(c)
        .data_dir(dir.path().join("alice"))
        .passphrase(Passphrase::new("alice"))
        .bootstraps(boot.listen_addrs().await)
        .spawn()
        .await
        .unwrap();
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await);
    assert!(bob.wait_published(WAIT).await);
    let mut inbox = bob.messages().unwrap();

    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!({"n": 0})))
        .await
        .unwrap()
        .unwrap();
    assert!(r.knocked);
    assert_eq!(alice.link_count(), 1);
    tokio::time::timeout(WAIT, async {
        while alice.link_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the idle link ends");

    // The session outlives the link: a burst goes out on a new link, in
    // order, with no KNOCK.
    for n in 1..=20 {
        alice
            .send_nowait(&bob.amid(), json!({"n": n}))
            .await
            .unwrap();
    }
    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!({"n": 21})))
        .await
        .unwrap()
        .unwrap();
    assert!(!r.knocked);
    for n in 0..=21 {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, json!({"n": n}));
    }
    assert!(alice.link_count() <= 1);
    assert!(alice.cached_session_peers() >= 1);
}
