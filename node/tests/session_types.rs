//! The session types end to end, nodes in one process on real loopback
//! sockets and sled databases: requests with correlated replies and a
//! timeout, conversations ended by one side and seen by both, streams with
//! back-pressure from a slow receiver.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use agentmesh_node::{
    crypto::envelope::SessionId,
    crypto::keystore::KdfParams,
    knock::{Decision, KnockBody, SignedDecision, SignedKnock},
    wire::{KNOCK_PROTOCOL, MAX_FRAME_SIZE},
    Config, Intent, MessageKind, Node, NodeEvent, Passphrase, RejectReason, SendError, SessionType,
    StreamError, STREAM_BUFFER, STREAM_WINDOW,
};
use agentmesh_transports::framing::FramedStream;
use serde_json::json;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

async fn node(dir: &std::path::Path, name: &str, bootstrap: Option<&Node>) -> Node {
    node_with(dir, name, config(), bootstrap).await
}

async fn node_with(
    dir: &std::path::Path,
    name: &str,
    config: Config,
    bootstrap: Option<&Node>,
) -> Node {
    let mut b = Node::builder(config)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = bootstrap {
        b = b.bootstraps(boot.listen_addrs().await);
    }
    b.spawn().await.expect("node starts")
}

/// A bootstrap, alice and bob, joined and published.
async fn trio(dir: &std::path::Path) -> (Node, Node, Node) {
    trio_with(dir, config(), config()).await
}

/// [`trio`] with alice's and bob's configurations.
async fn trio_with(
    dir: &std::path::Path,
    alice_config: Config,
    bob_config: Config,
) -> (Node, Node, Node) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let boot = node(dir, "bootstrap", None).await;
    tokio::time::timeout(WAIT, async {
        while boot.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bootstrap listens");
    let alice = node_with(dir, "alice", alice_config, Some(&boot)).await;
    let bob = node_with(dir, "bob", bob_config, Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await);
    assert!(bob.wait_published(WAIT).await);
    (boot, alice, bob)
}

async fn next_closed(events: &mut broadcast::Receiver<NodeEvent>) -> (bool, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::SessionClosed {
                    by_peer, session, ..
                }) => return (by_peer, session.to_string()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
            }
        }
    })
    .await
    .expect("session closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_find_their_requests_and_an_unanswered_request_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    let mut alice_inbox = alice.messages().unwrap();

    // bob answers requests in batches of five, newest first, so that a
    // reply can only find its request by id; requests marked "ignore" are
    // kept aside unanswered.
    let (ignored_tx, mut ignored_rx) = tokio::sync::mpsc::channel(4);
    let mut bob_inbox = bob.messages().unwrap();
    let responder = bob.clone();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(m) = bob_inbox.recv().await {
            assert_eq!(m.kind, MessageKind::Request);
            if m.payload.get("ignore").is_some() {
                ignored_tx.send(m).await.unwrap();
                continue;
            }
            batch.push(m);
            if batch.len() == 5 {
                for m in batch.drain(..).rev() {
                    let answer = json!({"answer": m.payload["i"]});
                    responder.reply(&m, answer).await.unwrap();
                }
            }
        }
    });

    let intent = Intent::new("research/search", "query");
    let mut calls = Vec::new();
    for i in 0..5 {
        let (alice, to, intent) = (alice.clone(), bob.amid(), intent.clone());
        calls.push(tokio::spawn(async move {
            alice.request(&to, intent, json!({"i": i}), WAIT).await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply.payload, json!({"answer": i}));
        assert_eq!(reply.kind, MessageKind::Reply);
        assert_eq!(reply.from, bob.amid());
        assert!(reply.reply_to.is_some());
    }

    // Nobody answers: the request times out with a typed error.
    let err = alice
        .request(
            &bob.amid(),
            intent.clone(),
            json!({"ignore": true}),
            Duration::from_millis(1500),
        )
        .await
        .unwrap_err();
    assert_eq!(err, SendError::Timeout { timeout_ms: 1500 });

    // A reply that comes after the requester gave up is not lost: it goes
    // to the inbox, naming its request.
    let late = tokio::time::timeout(WAIT, ignored_rx.recv())
        .await
        .unwrap()
        .unwrap();
    bob.reply(&late, json!("sorry, late")).await.unwrap();
    let m = tokio::time::timeout(WAIT, alice_inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.kind, MessageKind::Reply);
    assert_eq!(m.reply_to, Some(late.id));
    assert_eq!(m.payload, json!("sorry, late"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ended_by_one_side_is_over_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    let mut alice_inbox = alice.messages().unwrap();
    let mut bob_inbox = bob.messages().unwrap();
    let mut alice_events = alice.events();
    let mut bob_events = bob.events();

    let opened = alice
        .send_with(&bob.amid(), json!({"turn": 0}), Intent::default())
        .await
        .unwrap();
    assert!(opened.knocked);
    let first = tokio::time::timeout(WAIT, bob_inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.session, opened.session);

    // Turns go back and forth in the session, each answering the last.
    let mut last = first;
    for turn in 1..=4 {
        let (speaker, inbox) = if turn % 2 == 1 {
            (&bob, &mut alice_inbox)
        } else {
            (&alice, &mut bob_inbox)
        };
        let r = speaker.reply(&last, json!({"turn": turn})).await.unwrap();
        assert_eq!(r.session, opened.session);
        assert!(!r.knocked);
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, json!({"turn": turn}));
        assert_eq!(m.reply_to, Some(last.id));
        last = m;
    }
    // `last` came from alice to bob. bob says three more things and ends
    // the conversation: the end comes after them.
    for n in 0..3 {
        bob.send_nowait(&alice.amid(), json!({"closing": n}))
            .await
            .unwrap();
    }
    let ended = bob.end_conversation(&alice.amid()).await.unwrap();
    assert_eq!(ended, opened.session);
    let mut from_bob = Vec::new();
    for n in 0..3 {
        let m = tokio::time::timeout(WAIT, alice_inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, json!({"closing": n}));
        from_bob.push(m);
    }
    // Both sides observe the end.
    assert_eq!(
        next_closed(&mut alice_events).await,
        (true, opened.session.to_string())
    );
    assert_eq!(
        next_closed(&mut bob_events).await,
        (false, opened.session.to_string())
    );
    assert!(alice.status().await.sessions.is_empty());
    assert!(bob.status().await.sessions.is_empty());

    // Messages of the ended conversation fail with a typed error, on both
    // sides.
    let err = alice.reply(&from_bob[2], json!("wait")).await.unwrap_err();
    assert_eq!(
        err,
        SendError::SessionEnded {
            session: Some(opened.session)
        }
    );
    let err = bob.reply(&last, json!("too late")).await.unwrap_err();
    assert!(matches!(err, SendError::SessionEnded { .. }), "{err:?}");
    let err = bob.end_conversation(&alice.amid()).await.unwrap_err();
    assert_eq!(err, SendError::SessionEnded { session: None });

    // A new message starts a new conversation with a KNOCK.
    let again = alice.send(&bob.amid(), json!("new topic")).await.unwrap();
    assert!(again.knocked);
    assert_ne!(again.session, opened.session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_receiver_holds_the_sender_back_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    const CHUNKS: u64 = 120;
    const SLOW_CHUNKS: u64 = 60;

    let mut streams = bob.streams().unwrap();
    let consumed = Arc::new(AtomicU64::new(0));
    let reader = {
        let consumed = consumed.clone();
        let alice_amid = alice.amid();
        tokio::spawn(async move {
            let mut s = tokio::time::timeout(WAIT, streams.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(s.from(), alice_amid);
            let mut got = Vec::new();
            while let Some(chunk) = tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap() {
                got.push(chunk);
                if (got.len() as u64) < SLOW_CHUNKS {
                    // A consumer doing slow work on each chunk.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                consumed.fetch_add(1, Ordering::SeqCst);
            }
            // After a clean end, the receiver keeps saying so.
            assert_eq!(s.recv().await, Ok(None));
            got
        })
    };

    let mut tx = alice.open_stream(&bob.amid(), Intent::new("research/data", "upload"));
    let mut most_ahead = 0;
    for i in 0..CHUNKS {
        let chunk: Vec<u8> = (0..1024u32)
            .map(|j| (i as u32).wrapping_mul(31).wrapping_add(j) as u8)
            .collect();
        tx.send_chunk(chunk).await.unwrap();
        assert!(tx.in_flight() <= STREAM_WINDOW);
        let ahead = (i + 1).saturating_sub(consumed.load(Ordering::SeqCst));
        most_ahead = most_ahead.max(ahead);
    }
    assert_eq!(tx.finish().await.unwrap(), CHUNKS);
    // The sender was never further ahead of the slow reader than the
    // receiver's buffer plus the sender's window (and the chunk being
    // handed over): it was held back.
    let bound = (STREAM_WINDOW + STREAM_BUFFER + 2) as u64;
    assert!(
        most_ahead <= bound,
        "sender ran {most_ahead} chunks ahead (bound {bound})"
    );
    assert!(
        most_ahead >= STREAM_WINDOW as u64,
        "the reader was slow, the sender should have used its window"
    );

    let got = reader.await.unwrap();
    assert_eq!(got.len() as u64, CHUNKS);
    for (i, chunk) in got.iter().enumerate() {
        assert_eq!(chunk.len(), 1024);
        assert_eq!(chunk[0], (i as u32).wrapping_mul(31) as u8, "chunk {i}");
        assert_eq!(
            chunk[1023],
            (i as u32).wrapping_mul(31).wrapping_add(1023) as u8
        );
    }

    // An empty stream ends cleanly too.
    let tx = alice.open_stream(&bob.amid(), Intent::new("research/data", "upload"));
    assert_eq!(tx.finish().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_refused_by_a_node_that_does_not_take_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    // A session exists, but bob's application never asked for streams.
    alice.send(&bob.amid(), json!("hello")).await.unwrap();
    let err = alice
        .open_stream(&bob.amid(), Intent::default())
        .send_chunk(vec![4])
        .await
        .unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::Unavailable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_for_an_unknown_session_type_is_refused_as_an_invalid_intent() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    // A connection to bob first.
    alice.send(&bob.amid(), json!("hello")).await.unwrap();
    let mut events = bob.events();

    // A session type this version does not know travels as "unknown".
    let mut intent = Intent::new("research/search", "query");
    intent.session_type = SessionType::Unknown;
    let body = KnockBody {
        from: alice.amid(),
        to: bob.amid(),
        intent,
        session: SessionId::random(),
        ts_ms: agentmesh_dht::now_ms(),
        nonce: [42; 16],
        first: Vec::new(),
        credentials: Default::default(),
        moved_from: Vec::new(),
    };
    let knock = SignedKnock::sign(alice.identity(), &body).unwrap();
    let mut control = alice.stream_control();
    let stream = control
        .open_stream(bob.amid().peer_id().unwrap(), KNOCK_PROTOCOL)
        .await
        .unwrap();
    let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
    framed.send(knock.to_bytes()).await.unwrap();
    let answer = tokio::time::timeout(WAIT, framed.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (decision, _) = SignedDecision::from_bytes(&answer)
        .unwrap()
        .verify(&bob.amid(), &knock)
        .unwrap();
    assert_eq!(
        decision,
        Decision::Reject {
            reason: RejectReason::InvalidIntent,
            retry_after_ms: None
        }
    );
    let decided = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(NodeEvent::KnockDecided {
                accepted, reason, ..
            }) = events.recv().await
            {
                return (accepted, reason);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(decided, (false, Some(RejectReason::InvalidIntent)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_session_is_closed_is_reported_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio(dir.path()).await;
    let mut streams = bob.streams().unwrap();
    let mut tx = alice.open_stream(&bob.amid(), Intent::default());
    tx.send_chunk(b"first".to_vec()).await.unwrap();
    let mut rx = tokio::time::timeout(WAIT, streams.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), Some(b"first".to_vec()));
    // The sender goes away without finishing: closing the session ends the
    // stream on bob's side, and bob is told it did not end cleanly.
    assert_eq!(alice.close_session(&bob.amid()).await, 1);
    let end = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
    assert_eq!(end, Err(StreamError::Interrupted));
    // The sender's next chunk belongs to the closed session.
    let err = tx.send_chunk(b"second".to_vec()).await;
    let err = match err {
        Ok(()) => tx.finish().await.map(|_| ()).unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(err, SendError::SessionEnded { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_counts_as_one_message_against_the_rate_limit() {
    // Bob takes two messages a minute from anyone; alice gives up on a
    // message after 5 s.
    let mut bob_config = config();
    bob_config.policy.rate.messages_per_minute = 2;
    let mut alice_config = config();
    alice_config.delivery_timeout = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let (_boot, alice, bob) = trio_with(dir.path(), alice_config, bob_config).await;

    // Forty chunks: at two messages a minute that would take twenty
    // minutes, and each chunk would fail after 5 s.
    const CHUNKS: u64 = 40;
    let mut streams = bob.streams().unwrap();
    let reader = tokio::spawn(async move {
        let mut s = tokio::time::timeout(WAIT, streams.next())
            .await
            .unwrap()
            .unwrap();
        let mut n = 0u64;
        while let Ok(Some(_)) = s.recv().await {
            n += 1;
        }
        n
    });
    let mut tx = alice.open_stream(&bob.amid(), Intent::default());
    for i in 0..CHUNKS {
        tx.send_chunk(vec![i as u8; 4096]).await.unwrap();
    }
    assert_eq!(tx.finish().await.unwrap(), CHUNKS);
    assert_eq!(reader.await.unwrap(), CHUNKS);

    // Messages still count: the stream's end took one of the two, the
    // next takes the other, and the one after is refused.
    alice.send(&bob.amid(), json!("one")).await.unwrap();
    let err = alice.send(&bob.amid(), json!("two")).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::RateLimited));
}
