//! A bootstrap node with its registry on sled (the default), killed with
//! SIGKILL while registrations flow and started again on the same data:
//! every registration it acknowledged is there, and every tree head it
//! signed before the crash is consistent with the log after it (no fork).

use futures::StreamExt;
use serde_json::Value;

use agentmesh_node::{
    registry::{Operation, Registration, SignedRequest},
    transparency::{ConsistencyProof, SignedTreeHead},
    Amid, Identity,
};

mod support;

use support::{now_ms, start, Http};

const PASS: &str = "registry crash test";

fn register(who: &Identity) -> Vec<u8> {
    let op = Operation::Register(Registration::new("Agent", vec!["chat".to_owned()]));
    serde_json::to_vec(&SignedRequest::sign(who, op, now_ms()).unwrap()).unwrap()
}

/// The signed head `v` (an answer to `/v1/log/head`), checked against the
/// registry's root.
fn head_of(v: Value, root: &Amid) -> SignedTreeHead {
    let head: SignedTreeHead = serde_json::from_value(v).unwrap();
    head.verify(&root.verifying_key().unwrap())
        .expect("a head signed by the registry root");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_mid_request_loses_nothing_acknowledged_and_its_log_does_not_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(dir.path(), PASS, &["--http", "127.0.0.1:0"]).await;
    let root: Amid = a.root.parse().unwrap();
    let http = Http::new(&a.url);

    // Registrations flow, 32 at once; each acknowledged one is followed by
    // a read of the signed head. The process is killed after the eighth.
    let flowing: Vec<Identity> = (0..32).map(|_| Identity::generate()).collect();
    let http_ref = &http;
    let mut sends = futures::stream::FuturesUnordered::new();
    for (i, who) in flowing.iter().enumerate() {
        let body = register(who);
        sends.push(async move {
            let r = http_ref
                .try_call("POST", "/v1/registry/register", Some(body))
                .await;
            let head = match r {
                Some((200, _)) => http_ref.try_call("GET", "/v1/log/head", None).await,
                _ => None,
            };
            (i, r.map(|(s, _)| s).unwrap_or(0), head)
        });
    }
    let mut acknowledged = Vec::new();
    let mut heads = Vec::new();
    let mut killed = false;
    while let Some((i, status, head)) = sends.next().await {
        assert!(
            matches!(status, 0 | 200) || status >= 500,
            "a clean answer or none: {status}"
        );
        if status == 200 {
            acknowledged.push(flowing[i].amid());
        }
        if let Some((200, v)) = head {
            heads.push(head_of(v, &root));
        }
        if !killed && acknowledged.len() >= 8 {
            a.child.start_kill().unwrap();
            killed = true;
        }
    }
    let _ = a.child.wait().await;
    assert!(killed, "killed while registrations flowed");
    assert!(!heads.is_empty(), "heads were read before the kill");

    // Started again on the same data.
    let b = start(dir.path(), PASS, &["--http", "127.0.0.1:0"]).await;
    assert_eq!(b.root, a.root, "same root key");
    let http = Http::new(&b.url);
    for amid in &acknowledged {
        let (s, v) = http.get(&format!("/v1/registry/lookup?amid={amid}")).await;
        assert_eq!(s, 200, "acknowledged, so stored: {v}");
    }
    // One more registration, then every head signed before the crash is a
    // head of the log as it is now.
    let (s, v) = http
        .call(
            "POST",
            "/v1/registry/register",
            Some(register(&Identity::generate())),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = http.get("/v1/log/head").await;
    assert_eq!(s, 200, "{v}");
    let now = head_of(v, &root);
    assert!(now.size > acknowledged.len() as u64);
    for old in &heads {
        assert!(
            old.size <= now.size,
            "a head from before is longer: {old:?}"
        );
        let (s, v) = http
            .get(&format!(
                "/v1/log/consistency?first={}&second={}",
                old.size, now.size
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        let proof: ConsistencyProof = serde_json::from_value(v["proof"].clone()).unwrap();
        proof
            .verify(old, &now)
            .unwrap_or_else(|e| panic!("head of size {} forked: {e:?}", old.size));
    }
}
