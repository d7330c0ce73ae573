//! What the process tests' kill loops share: the seeded schedule of the
//! kills, and an application that reads and acknowledges an agent's inbox
//! through the local API across the agent's restarts.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use agentmesh_node::control::{Client, Method};
use rand::SeedableRng;
use serde_json::json;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The rounds of a kill loop and the generator of their moments:
/// `AGENTMESH_KILL_ROUNDS` (else `default_rounds`) and
/// `AGENTMESH_KILL_SEED` (else from the clock). Prints both, so that a
/// failing run can be repeated.
pub fn schedule(what: &str, default_rounds: u64) -> (u64, u64, rand_chacha::ChaCha8Rng) {
    let rounds = env_u64("AGENTMESH_KILL_ROUNDS").unwrap_or(default_rounds);
    let seed = env_u64("AGENTMESH_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("{what}: {rounds} rounds, seed {seed} (AGENTMESH_KILL_SEED)");
    (rounds, seed, rand_chacha::ChaCha8Rng::seed_from_u64(seed))
}

/// What an agent's application saw over a whole run.
#[derive(Debug, Default)]
pub struct AppLog {
    /// Ids handed to the application, on any connection.
    pub handed: HashSet<String>,
    /// Ids whose acknowledgement the node confirmed.
    pub confirmed: HashSet<String>,
    /// Broken promises, as they were seen.
    pub violations: Vec<String>,
    /// Connections made to the local API (one per run of the agent, or
    /// more).
    pub connections: u32,
}

impl AppLog {
    /// Of `ids`, those never handed to the application. (One handed out
    /// whose acknowledgement went unanswered, the agent killed between
    /// writing the removal and answering, is not handed out again: the
    /// application has it, so it is not missing.)
    pub fn missing<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        ids.into_iter()
            .filter(|id| !self.handed.contains(*id))
            .cloned()
            .collect()
    }
}

/// An agent's application: reads the inbox of the agent whose data
/// directory is `dir` and acknowledges each message, connecting again
/// whenever the agent was restarted, until `stop`. A message handed out
/// again after its acknowledgement was confirmed, or twice on one
/// connection, is a violation.
pub async fn application(dir: PathBuf, log: Arc<Mutex<AppLog>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut api) = Client::connect(&dir).await else {
            // The agent is down, or not yet up: its api.json names a dead
            // socket.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        log.lock().unwrap().connections += 1;
        // Handed out on this connection: never twice within it.
        let mut handed = HashSet::new();
        while !stop.load(Ordering::SeqCst) {
            let Ok(Ok(page)) = api
                .call(
                    Method::GET,
                    "/v1/messages?wait_ms=500&max=64&lease_ms=600000",
                    None,
                )
                .await
            else {
                break;
            };
            let ids: Vec<String> = page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect();
            if ids.is_empty() {
                continue;
            }
            {
                let mut l = log.lock().unwrap();
                for id in &ids {
                    if l.confirmed.contains(id) {
                        l.violations.push(format!(
                            "{id} handed out again after its acknowledgement was confirmed"
                        ));
                    }
                    l.handed.insert(id.clone());
                    if !handed.insert(id.clone()) {
                        l.violations
                            .push(format!("{id} handed out twice to one reader"));
                    }
                }
            }
            let acked = api
                .call(
                    Method::POST,
                    "/v1/messages/ack",
                    Some(&json!({ "ids": ids })),
                )
                .await;
            match acked {
                Ok(Ok(_)) => log.lock().unwrap().confirmed.extend(ids),
                // The agent died before answering: these come again.
                _ => break,
            }
        }
    }
}

/// The `agentmesh` binary of this build: in `$AGENTMESH_BIN_DIR`, else
/// next to `agentmesh-sim` (`cargo test --workspace` and `.ci/run` build
/// every binary of the workspace; alone, build it first with
/// `cargo build -p agentmesh-node --bin agentmesh`).
pub fn agentmesh_cli() -> PathBuf {
    let dir = std::env::var_os("AGENTMESH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
                .parent()
                .expect("a directory")
                .to_owned()
        });
    let cli = dir.join("agentmesh");
    assert!(
        cli.exists(),
        "no agentmesh binary at {}: run `cargo build -p agentmesh-node --bin agentmesh` first",
        cli.display()
    );
    cli
}
