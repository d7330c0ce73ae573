//! KNOCK and the session types with every agent its own process, driven
//! through its control socket (what the `agentmesh` CLI speaks): rate limits
//! under a flood, cached contacts in the audit log, blocking, and requests,
//! conversations and streams end to end.

use std::{path::Path, time::Duration};

use agentmesh_node::{
    control::{Client, Request, Response},
    RejectReason,
};
use agentmesh_sim::process::{start_agent, start_bootstrap, Proc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(90);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

async fn ask(dir: &Path, req: Request) -> Response {
    let mut c = Client::connect(dir).await.expect("control socket");
    tokio::time::timeout(WAIT, c.request(&req))
        .await
        .expect("answer in time")
        .expect("control request")
}

fn send(to: &str, payload: Value) -> Request {
    Request::Send {
        to: to.into(),
        payload,
        capability: None,
        schema: None,
    }
}

/// A bootstrap and two agents; `bob_args` go to the second.
async fn network(root: &Path, bob_args: &[String]) -> (Proc, Proc, String, Proc, String) {
    let (boot, addr) = start_bootstrap(exe(), &root.join("boot")).await.unwrap();
    let (alice, alice_amid) = start_agent(exe(), "alice", &root.join("alice"), &addr, &[])
        .await
        .unwrap();
    let (bob, bob_amid) = start_agent(exe(), "bob", &root.join("bob"), &addr, bob_args)
        .await
        .unwrap();
    (boot, alice, alice_amid, bob, bob_amid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_flood_is_rate_limited_while_a_polite_sender_gets_through() {
    let root = tempfile::tempdir().unwrap();
    // bob takes 3 KNOCKs a minute from any one agent.
    let policy = root.path().join("policy.toml");
    std::fs::write(
        &policy,
        "preset = \"default\"\n[rate]\nknocks_per_minute = 3\nmessages_per_minute = 100\n",
    )
    .unwrap();
    let (boot, addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (mut bob, bob_amid) = start_agent(
        exe(),
        "bob",
        &root.path().join("bob"),
        &addr,
        &["--policy".into(), policy.display().to_string()],
    )
    .await
    .unwrap();
    let (mallory, mallory_amid) =
        start_agent(exe(), "mallory", &root.path().join("mallory"), &addr, &[])
            .await
            .unwrap();
    let (alice, alice_amid) = start_agent(exe(), "alice", &root.path().join("alice"), &addr, &[])
        .await
        .unwrap();

    // mallory KNOCKs 30 times (10x the limit): each message after closing
    // the session needs a new one. alice meanwhile sends 20 messages.
    let flood = async {
        let mut outcomes = Vec::new();
        for i in 0..30 {
            let _ = ask(
                &mallory.dir,
                Request::Close {
                    amid: bob_amid.clone(),
                },
            )
            .await;
            outcomes.push(ask(&mallory.dir, send(&bob_amid, json!({"flood": i}))).await);
        }
        outcomes
    };
    let polite = async {
        let mut ids = Vec::new();
        for i in 0..20 {
            let r = ask(&alice.dir, send(&bob_amid, json!({"polite": i}))).await;
            assert!(r.ok, "alice's message {i}: {r:?}");
            ids.push(r.receipt.unwrap().id.to_string());
        }
        ids
    };
    let (outcomes, alice_ids) = tokio::join!(flood, polite);

    let accepted = outcomes.iter().filter(|r| r.ok).count();
    let limited = outcomes
        .iter()
        .filter(|r| r.reason == Some(RejectReason::RateLimited))
        .count();
    assert!(accepted <= 4, "{accepted} of the flood got through");
    assert!(limited >= 1, "no rate-limit rejection: {outcomes:?}");
    for r in outcomes.iter().filter(|r| !r.ok) {
        // Refused by bob, or held back by mallory's own circuit breaker
        // after repeated refusals.
        let error = r.error.clone().unwrap_or_default();
        assert!(
            r.reason == Some(RejectReason::RateLimited) || error.contains("circuit open"),
            "{r:?}"
        );
    }

    // Every one of alice's messages arrived, once, in order; bob refused
    // mallory's KNOCKs with the reason.
    let mut got = Vec::new();
    while got.len() < alice_ids.len() {
        let m = bob
            .wait_for(WAIT, |v| {
                v["event"] == "message" && v["from"] == alice_amid.as_str()
            })
            .await
            .unwrap();
        got.push(m["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, alice_ids);
    let refused = bob
        .wait_for(WAIT, |v| {
            v["event"] == "knock_decided"
                && v["from"] == mallory_amid.as_str()
                && v["reason"] == "rate_limited"
        })
        .await
        .unwrap();
    assert_eq!(refused["accepted"], false);
    assert!(bob
        .drain()
        .iter()
        .all(|v| !(v["event"] == "message" && v["from"] == alice_amid.as_str())));

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    mallory.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_contact_skips_knock_until_it_is_blocked() {
    let root = tempfile::tempdir().unwrap();
    let (boot, alice, alice_amid, mut bob, bob_amid) = network(root.path(), &[]).await;

    let first = ask(&alice.dir, send(&bob_amid, json!("one"))).await;
    assert!(first.receipt.unwrap().knocked);
    let second = ask(&alice.dir, send(&bob_amid, json!("two"))).await;
    assert!(!second.receipt.unwrap().knocked);

    // alice's audit log shows the cached contact skipping the KNOCK.
    let audit = ask(
        &alice.dir,
        Request::Audit {
            peer: Some(bob_amid.clone()),
            kind: Some("knock_skipped".into()),
            limit: None,
            verify: true,
        },
    )
    .await;
    assert!(audit.ok, "{audit:?}");
    assert_eq!(audit.audit.unwrap().len(), 1);

    // Once bob blocks alice, the cached session is gone and a new KNOCK is
    // refused.
    assert!(
        ask(
            &bob.dir,
            Request::Block {
                amid: alice_amid.clone()
            }
        )
        .await
        .ok
    );
    let third = ask(&alice.dir, send(&bob_amid, json!("three"))).await;
    assert!(!third.ok);
    assert_eq!(third.reason, Some(RejectReason::Blocked));
    let decided = bob
        .wait_for(WAIT, |v| {
            v["event"] == "knock_decided" && v["accepted"] == false
        })
        .await
        .unwrap();
    assert_eq!(decided["reason"], "blocked");
    let bob_audit = ask(
        &bob.dir,
        Request::Audit {
            peer: Some(alice_amid.clone()),
            kind: Some("knock_decision".into()),
            limit: None,
            verify: true,
        },
    )
    .await;
    let decisions = bob_audit.audit.unwrap();
    assert_eq!(
        decisions.len(),
        2,
        "one accepted, one refused: {decisions:?}"
    );

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_conversations_and_streams_across_processes() {
    let root = tempfile::tempdir().unwrap();
    let (boot, mut alice, alice_amid, mut bob, bob_amid) = network(root.path(), &[]).await;

    // request_response: alice waits while bob's owner answers.
    let asking = {
        let (dir, to) = (alice.dir.clone(), bob_amid.clone());
        tokio::spawn(async move {
            ask(
                &dir,
                Request::SendRequest {
                    to,
                    payload: json!({"q": "weather?"}),
                    capability: Some("research/search".into()),
                    schema: None,
                    timeout_ms: Some(60_000),
                },
            )
            .await
        })
    };
    let req = bob
        .wait_for(WAIT, |v| v["event"] == "message" && v["kind"] == "request")
        .await
        .unwrap();
    assert_eq!(req["payload"], json!({"q": "weather?"}));
    let answered = ask(
        &bob.dir,
        Request::Reply {
            to: alice_amid.clone(),
            id: req["id"].as_str().unwrap().into(),
            session: None,
            payload: json!({"a": "sunny"}),
        },
    )
    .await;
    assert!(answered.ok, "{answered:?}");
    let asked = asking.await.unwrap();
    assert!(asked.ok, "{asked:?}");
    let reply = asked.reply.unwrap();
    assert_eq!(reply.payload, json!({"a": "sunny"}));
    assert_eq!(
        reply.reply_to.unwrap().to_string(),
        req["id"].as_str().unwrap()
    );

    // No answer: a typed timeout.
    let unanswered = ask(
        &alice.dir,
        Request::SendRequest {
            to: bob_amid.clone(),
            payload: json!({"q": "anyone?"}),
            capability: None,
            schema: None,
            timeout_ms: Some(1500),
        },
    )
    .await;
    assert!(!unanswered.ok);
    assert!(
        unanswered
            .error
            .unwrap()
            .contains("no reply within 1500 ms"),
        "typed timeout"
    );

    // conversation: bob answers a turn, then ends it; both sides see the
    // end, and alice's reply in that conversation fails.
    let turn = ask(&alice.dir, send(&bob_amid, json!("shall we?"))).await;
    let session = turn.receipt.unwrap().session.to_string();
    let m1 = bob
        .wait_for(WAIT, |v| {
            v["event"] == "message" && v["payload"] == "shall we?"
        })
        .await
        .unwrap();
    let r = ask(
        &bob.dir,
        Request::Reply {
            to: alice_amid.clone(),
            id: m1["id"].as_str().unwrap().into(),
            session: Some(session.clone()),
            payload: json!("yes, briefly"),
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    let m2 = alice
        .wait_for(WAIT, |v| {
            v["event"] == "message" && v["payload"] == "yes, briefly"
        })
        .await
        .unwrap();
    assert_eq!(m2["reply_to"], m1["id"]);
    assert!(
        ask(
            &bob.dir,
            Request::End {
                amid: alice_amid.clone()
            }
        )
        .await
        .ok
    );
    for (p, by_peer) in [(&mut bob, false), (&mut alice, true)] {
        let closed = p
            .wait_for(WAIT, |v| {
                v["event"] == "session_closed" && v["session"] == session.as_str()
            })
            .await
            .unwrap();
        assert_eq!(closed["by_peer"], by_peer);
    }
    let late = ask(
        &alice.dir,
        Request::Reply {
            to: bob_amid.clone(),
            id: m2["id"].as_str().unwrap().into(),
            session: Some(session.clone()),
            payload: json!("one more thing"),
        },
    )
    .await;
    assert!(!late.ok);
    assert!(late.error.unwrap().contains("session has ended"));

    // stream: a file of 1 MiB and a bit, in 16 KiB chunks.
    let file = root.path().join("data.bin");
    let data: Vec<u8> = (0..(1024 * 1024 + 123u32))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let sent = ask(
        &alice.dir,
        Request::Stream {
            to: bob_amid.clone(),
            path: file,
            chunk_size: Some(16 * 1024),
            capability: None,
        },
    )
    .await;
    assert!(sent.ok, "{sent:?}");
    assert_eq!(sent.chunks, Some(65));
    assert_eq!(sent.bytes, Some(data.len() as u64));
    let ended = bob
        .wait_for(WAIT, |v| {
            v["event"] == "stream_ended" || v["event"] == "stream_failed"
        })
        .await
        .unwrap();
    assert_eq!(ended["event"], "stream_ended", "{ended}");
    assert_eq!(ended["from"], alice_amid.as_str());
    assert_eq!(ended["chunks"], 65);
    assert_eq!(ended["bytes"], data.len() as u64);
    assert_eq!(ended["sha256"], hex::encode(Sha256::digest(&data)));

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}
