//! A bootstrap node with its registry on sled (the default), killed with
//! SIGKILL at a random moment while registrations flow and started again
//! on the same data, round after round: every registration it
//! acknowledged is there, and every tree head it served, before or after
//! any of the crashes, is consistent with the log at the end (no fork).
//!
//! `AGENTMESH_KILL_ROUNDS` (default 8) and `AGENTMESH_KILL_SEED` (default:
//! from the clock, printed) choose the rounds and their moments; a failure
//! names its seed.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use serde_json::Value;

use agentmesh_node::{
    registry::{Operation, Registration, SignedRequest},
    trust::transparency::{ConsistencyProof, SignedTreeHead},
    Amid, Identity,
};

mod support;

use support::{now_ms, start, Http, Server};

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

/// Registrations in flight at once: a new one is sent as each ends, so
/// the kill always finds some under way. With the head read after each
/// acknowledged one, a round stays within the registry's rate limit for
/// one client (a burst of 120), which a restart resets.
const AT_ONCE: usize = 8;
/// A round's kill comes once 1 to this many registrations were
/// acknowledged...
const MOST_BEFORE_KILL: u64 = 12;
/// ... and then 0 to this many µs later (a moment within the requests
/// then in flight: one takes a few ms).
const MOST_DELAY_US: u64 = 10_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// SplitMix64: the moments of the kills, from the seed.
struct Moments(u64);

impl Moments {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Every head served, by size and root (the same head read twice counts
/// once; two roots for one size are both kept, and one of them fails).
type Heads = BTreeMap<(u64, [u8; 32]), SignedTreeHead>;

fn keep(heads: &mut Heads, head: SignedTreeHead) {
    heads.entry((head.size, head.root)).or_insert(head);
}

/// A request that waits out the registry's rate limit (`429`).
async fn patiently(http: &Http, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
    loop {
        let (s, v) = http.call(method, path, body.clone()).await;
        if s != 429 {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Kills `server` with SIGKILL (unless it was already) and starts it
/// again on the same data.
async fn kill_and_restart(mut server: Server, dir: &std::path::Path) -> Server {
    let _ = server.child.start_kill();
    let _ = server.child.wait().await;
    let again = start(dir, PASS, &["--http", "127.0.0.1:0"]).await;
    assert_eq!(again.root, server.root, "same root key");
    again
}

/// One registration, followed (when acknowledged) by a read of the head:
/// its status (0: no answer) and the head's answer.
async fn register_and_read(http: &Http, body: Vec<u8>) -> (u16, Option<(u16, Value)>) {
    let r = http
        .try_call("POST", "/v1/registry/register", Some(body))
        .await;
    let head = match r {
        Some((200, _)) => http.try_call("GET", "/v1/log/head", None).await,
        _ => None,
    };
    (r.map_or(0, |(s, _)| s), head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_at_random_moments_loses_nothing_acknowledged_and_its_log_does_not_fork()
{
    let rounds = env_u64("AGENTMESH_KILL_ROUNDS").unwrap_or(8);
    let seed = env_u64("AGENTMESH_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("registry kill loop: {rounds} rounds, seed {seed} (AGENTMESH_KILL_SEED)");
    let mut moments = Moments(seed);

    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), PASS, &["--http", "127.0.0.1:0"]).await;
    let root: Amid = server.root.parse().unwrap();
    let mut acknowledged: Vec<Amid> = Vec::new();
    let mut heads = Heads::new();
    let mut in_flight_at_kills = 0usize;

    for round in 0..rounds {
        let kill_after = moments.between(1, MOST_BEFORE_KILL) as usize;
        let delay = Duration::from_micros(moments.between(0, MOST_DELAY_US));
        // Registrations flow, `AT_ONCE` at a time; each acknowledged one
        // is followed by a read of the signed head. The process is killed
        // `delay` after the `kill_after`-th acknowledgement.
        let http = Http::new(&server.url);
        let http = &http;
        let mut flowing: Vec<Identity> = Vec::new();
        let mut sends = futures::stream::FuturesUnordered::new();
        let send_one = |flowing: &mut Vec<Identity>| {
            let who = Identity::generate();
            let body = register(&who);
            let i = flowing.len();
            flowing.push(who);
            async move { (i, register_and_read(http, body).await) }
        };
        for _ in 0..AT_ONCE {
            sends.push(send_one(&mut flowing));
        }
        let mut acked_now = Vec::new();
        let mut kill_at = None;
        let mut killed = false;
        loop {
            let next = match kill_at {
                Some(at) if !killed => tokio::select! {
                    r = sends.next() => Some(r),
                    () = tokio::time::sleep_until(at) => None,
                },
                _ => Some(sends.next().await),
            };
            let (i, (status, head)) = match next {
                Some(Some(r)) => r,
                Some(None) => break,
                None => {
                    in_flight_at_kills += sends.len();
                    server.child.start_kill().unwrap();
                    killed = true;
                    continue;
                }
            };
            assert!(
                // 429: the registry's own limits on one client's writes.
                matches!(status, 0 | 200 | 429) || status >= 500,
                "seed {seed}: a clean answer or none: {status}"
            );
            if status == 200 {
                // Answered 200, even as the process died: acknowledged.
                acked_now.push(flowing[i].amid());
            }
            if let Some((200, v)) = head {
                keep(&mut heads, head_of(v, &root));
            }
            if kill_at.is_none() && acked_now.len() >= kill_after {
                kill_at = Some(tokio::time::Instant::now() + delay);
            }
            if !killed {
                assert!(
                    flowing.len() < 100,
                    "seed {seed}: registrations go unacknowledged: {status}"
                );
                sends.push(send_one(&mut flowing));
            }
        }
        assert!(killed, "seed {seed}: killed while registrations flowed");
        eprintln!(
            "round {round}: killed {delay:?} after acknowledgement {kill_after}; {} acknowledged of {} sent",
            acked_now.len(),
            flowing.len()
        );

        // Started again on the same data: what this round acknowledged is
        // there.
        server = kill_and_restart(server, dir.path()).await;
        let http = Http::new(&server.url);
        for amid in &acked_now {
            let (s, v) = patiently(
                &http,
                "GET",
                &format!("/v1/registry/lookup?amid={amid}"),
                None,
            )
            .await;
            assert_eq!(
                s, 200,
                "seed {seed}, round {round}: acknowledged, so stored: {v}"
            );
        }
        let (s, v) = patiently(&http, "GET", "/v1/log/head", None).await;
        assert_eq!(s, 200, "{v}");
        keep(&mut heads, head_of(v, &root));
        acknowledged.extend(acked_now);
    }
    assert!(!heads.is_empty(), "heads were read before the kills");

    // Once more, killed idle and started again (a fresh rate limit):
    // everything acknowledged in any round is there, and every head served
    // before or after any of the crashes is a head of the log as it is now.
    let server = kill_and_restart(server, dir.path()).await;
    let http = Http::new(&server.url);
    for amid in &acknowledged {
        let (s, v) = patiently(
            &http,
            "GET",
            &format!("/v1/registry/lookup?amid={amid}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "seed {seed}: acknowledged, so stored: {v}");
    }
    let (s, v) = patiently(
        &http,
        "POST",
        "/v1/registry/register",
        Some(register(&Identity::generate())),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = patiently(&http, "GET", "/v1/log/head", None).await;
    assert_eq!(s, 200, "{v}");
    let now = head_of(v, &root);
    assert!(now.size > acknowledged.len() as u64);
    for old in heads.values() {
        assert!(
            old.size <= now.size,
            "seed {seed}: a head from before is longer: {old:?}"
        );
        let (s, v) = patiently(
            &http,
            "GET",
            &format!("/v1/log/consistency?first={}&second={}", old.size, now.size),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let proof: ConsistencyProof = serde_json::from_value(v["proof"].clone()).unwrap();
        proof
            .verify(old, &now)
            .unwrap_or_else(|e| panic!("seed {seed}: head of size {} forked: {e:?}", old.size));
    }
    eprintln!(
        "registry kill loop: {rounds} kills, {} registrations acknowledged, 0 lost; {} heads served, all consistent with the log of {}; {in_flight_at_kills} requests in flight at the kills",
        acknowledged.len(),
        heads.len(),
        now.size
    );
}
