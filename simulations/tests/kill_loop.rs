//! The kill -9 loop: while alice writes to bob without pause and bob's
//! application reads and acknowledges his inbox through the local API, one
//! of them is killed with SIGKILL at a random moment and restarted, round
//! after round. Afterwards nothing alice has a receipt for is missing from
//! bob's application, nothing bob's application acknowledged was handed
//! to it again, no envelope was refused (a reused message key shows as
//! one bob cannot decrypt), and no session needed a new KNOCK.
//!
//! `AGENTMESH_KILL_ROUNDS` (default 4) and `AGENTMESH_KILL_SEED` (default:
//! from the clock, printed) choose the rounds and their moments; a failure
//! names its seed.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use agentmesh_sim::process::{control_send, start_agent, start_bootstrap, Proc};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

mod support;

use support::{application, AppLog};

const WAIT: Duration = Duration::from_secs(90);
/// Sends in flight at once.
const AT_ONCE: usize = 8;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What alice's sends returned.
#[derive(Debug, Default)]
struct Sent {
    /// Ids with a receipt.
    receipted: Vec<String>,
    /// Receipts that needed a KNOCK.
    knocked: Vec<String>,
    /// Sends the node answered with an error.
    errors: Vec<String>,
}

/// Alice writes to `to`, `AT_ONCE` messages at a time, until `stop`. A
/// send whose control connection broke (alice was killed) has no receipt
/// and does not count.
async fn sender(dir: PathBuf, to: String, stop: Arc<AtomicBool>) -> Sent {
    let mut sent = Sent::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..AT_ONCE {
            n += 1;
            let (dir, to) = (dir.clone(), to.clone());
            sends.spawn(async move { control_send(&dir, &to, json!({ "n": n }), WAIT).await });
        }
        let mut answered = 0;
        while let Some(r) = sends.join_next().await {
            match r.expect("send task") {
                Ok(r) if r.ok => {
                    answered += 1;
                    let receipt = r.receipt.expect("receipt");
                    if receipt.knocked {
                        sent.knocked.push(receipt.id.to_string());
                    }
                    sent.receipted.push(receipt.id.to_string());
                }
                Ok(r) => {
                    answered += 1;
                    sent.errors.push(format!("{:?}", r.error));
                }
                Err(_) => {}
            }
        }
        if answered == 0 {
            // Alice is down: wait for her to come back.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    sent
}

/// Kills `p` with SIGKILL and returns what it printed until it died.
async fn kill(mut p: Proc) -> Vec<Value> {
    p.signal(libc::SIGKILL).unwrap();
    let _ = p.wait_for(WAIT, |_| false).await;
    p.drain()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_of_sender_and_receiver_lose_and_repeat_nothing() {
    let rounds = env_u64("AGENTMESH_KILL_ROUNDS").unwrap_or(4);
    let seed = env_u64("AGENTMESH_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("kill loop: {rounds} rounds, seed {seed} (AGENTMESH_KILL_SEED)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let alice_dir = root.path().join("alice");
    let bob_dir = root.path().join("bob");
    let (mut alice, _) = start_agent(exe(), "alice", &alice_dir, &boot_addr, &[])
        .await
        .unwrap();
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &[])
        .await
        .unwrap();
    // The session, opened with a KNOCK before the loop.
    let hello = control_send(&alice_dir, &bob_amid, json!("hello"), WAIT)
        .await
        .unwrap();
    assert!(hello.ok, "{hello:?}");
    let hello = hello.receipt.unwrap().id.to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(AppLog::default()));
    let app = tokio::spawn(application(bob_dir.clone(), log.clone(), stop.clone()));
    let writer = tokio::spawn(sender(alice_dir.clone(), bob_amid.clone(), stop.clone()));

    let mut printed: Vec<Value> = Vec::new();
    for round in 0..rounds {
        // The moment of the kill: somewhere in the traffic.
        let at = Duration::from_millis(rng.random_range(300..2_000));
        let bob_dies = rng.random_bool(0.5);
        tokio::time::sleep(at).await;
        let who = if bob_dies { "bob" } else { "alice" };
        eprintln!("round {round}: kill {who} after {at:?}");
        if bob_dies {
            printed.extend(kill(bob).await);
            bob = start_agent(exe(), "bob", &bob_dir, &boot_addr, &[])
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: bob restarts: {e}"))
                .0;
        } else {
            kill(alice).await;
            alice = start_agent(exe(), "alice", &alice_dir, &boot_addr, &[])
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: alice restarts: {e}"))
                .0;
        }
    }
    // Some traffic after the last restart, then the sends stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let sent = tokio::time::timeout(WAIT * 2, writer)
        .await
        .expect("alice's sends end")
        .unwrap();
    app.await.unwrap();
    assert!(
        sent.receipted.len() > rounds as usize,
        "seed {seed}: too little traffic to judge: {sent:?}"
    );

    // A reader that goes on until every receipted message is in.
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(application(
        bob_dir.clone(),
        log.clone(),
        stop_reader.clone(),
    ));
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut expected = sent.receipted.clone();
    expected.push(hello.clone());
    loop {
        // Handed to the application counts: one whose acknowledgement went
        // unanswered (bob killed between writing the removal and answering)
        // is not handed out again.
        let missing = log.lock().unwrap().missing(&expected);
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: messages alice has receipts for never reached bob's application: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_reader.store(true, Ordering::SeqCst);
    reader.await.unwrap();

    let (violations, confirmed, connections) = {
        let l = log.lock().unwrap();
        (l.violations.clone(), l.confirmed.len(), l.connections)
    };
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    assert!(
        sent.knocked.is_empty(),
        "seed {seed}: a session did not survive a kill: {:?}",
        sent.knocked
    );
    printed.extend(bob.drain());
    let refused: Vec<&Value> = printed.iter().filter(|v| v["event"] == "refused").collect();
    assert!(
        refused.is_empty(),
        "seed {seed}: bob refused envelopes: {refused:?}"
    );
    eprintln!(
        "kill loop: {} messages receipted, {} confirmed by bob's application over {} connections; {} sends answered with an error",
        sent.receipted.len(),
        confirmed,
        connections,
        sent.errors.len()
    );

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}
