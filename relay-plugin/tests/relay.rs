//! Relays in one process, on real loopback sockets and sled databases: an
//! agent with no direct address reached through a circuit, and an offline
//! agent's mail deposited, kept across its restart, fetched once and
//! reported delivered.

use std::{collections::HashSet, path::Path, time::Duration};

use agentmesh_node::{
    audit::{AuditEvent, AuditFilter},
    crypto::envelope::MessageId,
    crypto::keystore::KdfParams,
    Config, HolePunch, Node, NodeEvent, Passphrase, PathKind, Presence, Reachability,
};
use agentmesh_relay::{RelayConfig, RelayPlugin};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Logs with RUST_LOG=…
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct Spec {
    relay: bool,
    private: bool,
    relays: Vec<agentmesh_node::Multiaddr>,
    /// WebRTC hole punching on loopback.
    webrtc: bool,
}

async fn start(dir: &Path, name: &str, spec: Spec, bootstrap: Option<&Node>) -> Node {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    if spec.private {
        c.reachability = Reachability::Private;
    }
    c.relays = spec.relays;
    if spec.webrtc {
        c.hole_punch = HolePunch::Webrtc;
        c.transport.webrtc.local_ips = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    }
    let mut b = Node::builder(c)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if spec.relay {
        b = b.plugin(RelayPlugin::new(RelayConfig::default()));
    }
    if let Some(boot) = bootstrap {
        b = b.bootstraps(boot.wait_listening(2, WAIT).await);
    }
    let node = b.spawn().await.expect("node starts");
    if !spec.private {
        assert_eq!(node.wait_listening(2, WAIT).await.len(), 2);
    }
    node
}

fn plain() -> Spec {
    Spec {
        relay: false,
        private: false,
        relays: Vec::new(),
        webrtc: false,
    }
}

/// A bootstrap node and a relay joined to it.
async fn boot_and_relay(dir: &Path) -> (Node, Node) {
    let boot = start(dir, "boot", plain(), None).await;
    let spec = Spec {
        relay: true,
        ..plain()
    };
    let relay = start(dir, "relay", spec, Some(&boot)).await;
    (boot, relay)
}

/// Starts an agent with no direct listener and waits until it listens
/// through `relay` and its published card lists only relayed addresses.
async fn start_private(dir: &Path, name: &str, spec: Spec, boot: &Node, relay: &Node) -> Node {
    let node = start(
        dir,
        name,
        Spec {
            private: true,
            ..spec
        },
        Some(boot),
    )
    .await;
    let relay_peer = relay.amid().peer_id().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listening = node.status().await.net.listen_addrs;
        if listening
            .iter()
            .any(|a| a.contains("p2p-circuit") && a.contains(&relay_peer))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never listened through the relay: {listening:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.wait_published(WAIT).await);
    loop {
        let card = node.lookup(&node.amid()).await;
        let addrs = card.map(|c| c.addrs).unwrap_or_default();
        if !addrs.is_empty() && addrs.iter().all(|a| a.contains("p2p-circuit")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}'s card never listed only relayed addresses: {addrs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

/// Waits for the first event that `f` maps to `Some`.
async fn wait_for<T>(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    mut f: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = f(&e) {
                        return t;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_connection_becomes_direct_webrtc() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (boot, relay) = boot_and_relay(dir.path()).await;
    let relay_addr = relay.wait_listening(2, WAIT).await[0].clone();
    let bob = start_private(
        dir.path(),
        "bob",
        Spec {
            webrtc: true,
            relays: vec![relay_addr],
            ..plain()
        },
        &boot,
        &relay,
    )
    .await;
    let alice = start(
        dir.path(),
        "alice",
        Spec {
            webrtc: true,
            ..plain()
        },
        Some(&boot),
    )
    .await;
    let mut inbox = bob.messages().unwrap();
    // The first message may go through the relay; the node then sets up
    // WebRTC over it and drops the circuit, so later receipts say so.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        let r = tokio::time::timeout_at(deadline, alice.send(&bob.amid(), json!({ "n": n })))
            .await
            .expect("send in time")
            .expect("sent");
        let m = tokio::time::timeout_at(deadline, inbox.recv())
            .await
            .expect("delivery in time")
            .expect("a message");
        assert_eq!(m.payload, json!({ "n": n }));
        n += 1;
        if r.path == PathKind::DirectWebRtc && m.path == PathKind::DirectWebRtc {
            break;
        }
        for p in [r.path, m.path] {
            assert!(
                matches!(p, PathKind::Relayed | PathKind::DirectWebRtc),
                "unexpected path {p:?}"
            );
        }
    }
    // With the relay gone, only the WebRTC connection can carry messages,
    // also ones far larger than a data channel frame (16 KiB).
    relay.shutdown().await;
    let big = json!({ "after": "relay", "blob": "x".repeat(48 * 1024) });
    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), big.clone()))
        .await
        .expect("send in time")
        .expect("sent without the relay");
    assert_eq!(r.path, PathKind::DirectWebRtc);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("delivery in time")
        .expect("a message");
    assert_eq!(m.payload, big);
    assert_eq!(m.path, PathKind::DirectWebRtc);
    let status = alice.status().await;
    let bob_label = bob.amid().to_string();
    assert!(
        status
            .net
            .connected
            .iter()
            .any(|p| p.path == PathKind::DirectWebRtc && p.peer == bob_label),
        "{:?}",
        status.net.connected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_is_reached_through_a_relay_found_in_the_dht() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (boot, relay) = boot_and_relay(dir.path()).await;
    // Bob has no direct listener; he finds the relay in the DHT and
    // listens through it.
    let bob = start_private(dir.path(), "bob", plain(), &boot, &relay).await;
    let card = bob.lookup(&bob.amid()).await.expect("own card");
    assert_eq!(card.relays.len(), 1);

    let alice = start(dir.path(), "alice", plain(), Some(&boot)).await;
    let mut inbox = bob.messages().unwrap();
    let r = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!({"via": "circuit"})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.path, PathKind::Relayed);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!({"via": "circuit"}));
    assert_eq!(m.path, PathKind::Relayed);
    let s = relay.status().await;
    let r = s.net.relay.expect("relay status");
    assert!(r.reservations >= 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agent_gets_its_mail_once_in_order_and_the_sender_sees_it_delivered() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (boot, relay) = boot_and_relay(dir.path()).await;
    let relay_addr = relay.wait_listening(2, WAIT).await[0].clone();
    let bob_spec = || Spec {
        relays: vec![relay_addr.clone()],
        ..plain()
    };
    let bob = start(dir.path(), "bob", bob_spec(), Some(&boot)).await;
    let alice = start(dir.path(), "alice", plain(), Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await);
    let card = alice.lookup(&bob.amid()).await.expect("bob's card");
    assert_eq!(card.relays.len(), 1, "bob lists his mailbox relay");

    // A session first, while bob is online.
    let mut inbox = bob.messages().unwrap();
    let r = alice.send(&bob.amid(), json!({"n": 0})).await.unwrap();
    assert!(r.knocked);
    assert_eq!(
        tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap()
            .payload,
        json!({"n": 0})
    );
    drop(inbox);
    let bob_amid = bob.amid();
    let dials_to_bob = |node: &Node| {
        let filter = AuditFilter::default().peer(bob_amid).kind("path_attempt");
        node.audit_log(&filter).unwrap().len()
    };
    let dialled = dials_to_bob(&alice);
    bob.shutdown().await;
    // His last card says offline; once alice has it she does not dial him.
    let offline = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(card) = alice.lookup(&bob_amid).await {
                if card.presence == Presence::Offline {
                    break card;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("bob's offline card");
    // It lives as long as his mailbox keeps mail (72 h), not an hour.
    let left = offline.expires_ms.saturating_sub(agentmesh_dht::now_ms());
    assert!(left > 71 * 3600 * 1000, "offline card expires in {left} ms");

    // Bob is offline: the messages go to his mailbox, with no dial first.
    let mut alice_events = alice.events();
    let mut sent: Vec<MessageId> = Vec::new();
    for n in 1..=5 {
        let r = tokio::time::timeout(WAIT, alice.send(&bob_amid, json!({ "n": n })))
            .await
            .expect("send finishes")
            .expect("deposited");
        assert_eq!(r.path, PathKind::Mailbox, "message {n}");
        sent.push(r.id);
    }
    let stored = relay.status().await.net.relay.unwrap();
    assert_eq!(stored.envelopes, 5);
    assert_eq!(
        dials_to_bob(&alice),
        dialled,
        "alice dialled an offline bob"
    );

    // Bob comes back: all five, in order, once; alice hears of each.
    let bob = start(dir.path(), "bob", bob_spec(), Some(&boot)).await;
    let mut inbox = bob.messages().unwrap();
    for n in 1..=5 {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, json!({ "n": n }));
        assert_eq!(m.path, PathKind::Mailbox);
    }
    let mut delivered = HashSet::new();
    while delivered.len() < sent.len() {
        let id = wait_for(&mut alice_events, |e| match e {
            NodeEvent::Delivered {
                id,
                path: PathKind::Mailbox,
                ..
            } => Some(*id),
            _ => None,
        })
        .await;
        delivered.insert(id);
    }
    assert_eq!(delivered, sent.iter().copied().collect::<HashSet<_>>());
    // The relay forgot them once acked; a later drain brings nothing new.
    tokio::time::timeout(WAIT, async {
        while relay.status().await.net.relay.unwrap().envelopes > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("relay emptied");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_that_worked_is_tried_first_and_each_attempt_is_audited() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (boot, relay) = boot_and_relay(dir.path()).await;
    let bob = start_private(dir.path(), "bob", plain(), &boot, &relay).await;
    let circuit = bob
        .status()
        .await
        .net
        .listen_addrs
        .into_iter()
        .find(|a| a.contains("p2p-circuit"))
        .expect("a relayed listen address");
    // Alice joins no DHT: nobody but her dials anyone in this test.
    let alice = start(dir.path(), "alice", plain(), None).await;
    let bob_id = bob.amid().peer_id().unwrap();
    // A direct address that refuses: a TCP port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("/ip4/127.0.0.1/tcp/{port}")
    };
    let addrs: Vec<agentmesh_node::Multiaddr> =
        vec![dead.parse().unwrap(), circuit.parse().unwrap()];
    let attempts = |node: &Node| -> Vec<(String, bool)> {
        let filter = AuditFilter::default().peer(bob.amid()).kind("path_attempt");
        node.audit_log(&filter)
            .unwrap()
            .into_iter()
            .map(|e| match e.event {
                AuditEvent::PathAttempt { path, ok, .. } => (path, ok),
                other => panic!("not a path attempt: {other:?}"),
            })
            .collect()
    };

    // First time: the direct address is tried first, fails, and the
    // circuit works.
    let path = tokio::time::timeout(WAIT, alice.connect(bob_id, addrs.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, PathKind::Relayed);
    assert_eq!(
        attempts(&alice),
        [
            ("direct-tcp".to_string(), false),
            ("relayed".to_string(), true)
        ]
    );
    let status = alice.status().await;
    let learned = status
        .net
        .learned_paths
        .iter()
        .find(|l| l.peer == bob.amid().to_string())
        .expect("bob's path is remembered");
    assert_eq!(learned.last_ok, Some(PathKind::Relayed));
    assert_eq!(learned.failing, [PathKind::DirectTcp]);
    assert_eq!(status.net.path_attempts["direct-tcp"].failures, 1);
    assert_eq!(status.net.path_attempts["relayed"].successes, 1);

    // Next time the circuit goes first and the dead address is not tried.
    let mut alice_events = alice.events();
    alice.disconnect(bob_id).await;
    wait_for(&mut alice_events, |e| match e {
        NodeEvent::Disconnected { peer } if *peer == bob.amid().to_string() => Some(()),
        _ => None,
    })
    .await;
    let path = tokio::time::timeout(WAIT, alice.connect(bob_id, addrs))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, PathKind::Relayed);
    assert_eq!(
        attempts(&alice),
        [
            ("direct-tcp".to_string(), false),
            ("relayed".to_string(), true),
            ("relayed".to_string(), true)
        ]
    );
}
