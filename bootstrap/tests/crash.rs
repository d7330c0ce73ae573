//! A bootstrap node with its registry on sled (the default), killed with
//! SIGKILL while registrations flow (at several points, one per round) and
//! started again on the same data each time:
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

/// After how many acknowledged registrations each round kills the process.
const KILL_AFTER: [usize; 5] = [1, 2, 4, 6, 9];
/// Registrations sent at once in each round. With the reads that follow,
/// a round stays within the registry's rate limit for one client (a burst
/// of 120), which a restart resets.
const AT_ONCE: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_mid_request_loses_nothing_acknowledged_and_its_log_does_not_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), PASS, &["--http", "127.0.0.1:0"]).await;
    let root: Amid = server.root.parse().unwrap();
    let mut acknowledged: Vec<Amid> = Vec::new();
    let mut heads: Vec<SignedTreeHead> = Vec::new();

    for kill_after in KILL_AFTER {
        // Registrations flow, all at once; each acknowledged one is
        // followed by a read of the signed head. The process is killed
        // after the `kill_after`-th.
        let http = Http::new(&server.url);
        let flowing: Vec<Identity> = (0..AT_ONCE).map(|_| Identity::generate()).collect();
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
        let mut acked_now = Vec::new();
        let mut round_head: Option<SignedTreeHead> = None;
        let mut killed = false;
        while let Some((i, status, head)) = sends.next().await {
            assert!(
                // 429: the registry's own limits on one client's writes.
                matches!(status, 0 | 200 | 429) || status >= 500,
                "a clean answer or none: {status}"
            );
            if status == 200 {
                acked_now.push(flowing[i].amid());
            }
            if let Some((200, v)) = head {
                let head = head_of(v, &root);
                if round_head.as_ref().is_none_or(|h| h.size < head.size) {
                    round_head = Some(head);
                }
            }
            if !killed && acked_now.len() >= kill_after {
                server.child.start_kill().unwrap();
                killed = true;
            }
        }
        assert!(
            killed,
            "killed while registrations flowed (after {kill_after})"
        );
        let _ = server.child.wait().await;
        heads.extend(round_head);

        // Started again on the same data: what this round acknowledged is
        // there.
        let again = start(dir.path(), PASS, &["--http", "127.0.0.1:0"]).await;
        assert_eq!(again.root, server.root, "same root key");
        server = again;
        let http = Http::new(&server.url);
        for amid in &acked_now {
            let (s, v) = http.get(&format!("/v1/registry/lookup?amid={amid}")).await;
            assert_eq!(s, 200, "acknowledged, so stored: {v}");
        }
        acknowledged.extend(acked_now);
    }
    assert!(!heads.is_empty(), "heads were read before the kills");

    // Once more, killed idle and started again (a fresh rate limit):
    // everything acknowledged in any round is there, and every head signed
    // before any of the crashes is a head of the log as it is now.
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let server = start(dir.path(), PASS, &["--http", "127.0.0.1:0"]).await;
    let http = Http::new(&server.url);
    for amid in &acknowledged {
        let (s, v) = http.get(&format!("/v1/registry/lookup?amid={amid}")).await;
        assert_eq!(s, 200, "acknowledged, so stored: {v}");
    }
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
