//! What the local API costs per message: one message at a time from alice
//! to bob, sent with the Rust API (`Node::send`) and through alice's local
//! API (`POST /v1/send` over her Unix socket), on the same pair of nodes in
//! one run. Each send waits for bob's node to acknowledge the message; bob's
//! application drains its inbox through its own local API meanwhile.
//!
//! Run with `cargo bench -p agentmesh-node --bench api`. Prints plain
//! figures. `AGENTMESH_BENCH_MESSAGES` sets the messages per side (default
//! 2000; e.g. 100 for a smoke run). With `AGENTMESH_BENCH_PYTHON` naming a
//! Python that has the SDK installed (`pip install ./sdk/python`), the
//! Python client is measured too, on the same pair of nodes, by
//! `sdk/python/bench/api_bench.py`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use agentmesh_node::{
    api::{ApiOptions, LocalApi},
    control::Client,
    crypto::keystore::KdfParams,
    Config, Node, Passphrase,
};
use hyper::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    // Measured: the path, not bob's per-sender limit (100 a minute).
    c.policy.rate.messages_per_minute = u32::MAX / 2;
    c
}

async fn node(dir: &Path, name: &str, bootstrap: Option<&Node>) -> Node {
    let mut b = Node::builder(config())
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = bootstrap {
        b = b.bootstraps(boot.listen_addrs().await);
    }
    b.spawn().await.expect("node starts")
}

/// A 1 KiB JSON payload.
fn payload(i: usize) -> Value {
    json!({ "i": i, "pad": "x".repeat(1000) })
}

struct Figures {
    per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(mut lat: Vec<Duration>, total: Duration) -> Figures {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Figures {
        per_s: lat.len() as f64 / total.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<34} {:>8.0} msgs/s   p50 {:>7.3} ms   p99 {:>7.3} ms",
        f.per_s,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n: usize = std::env::var("AGENTMESH_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let boot = node(dir.path(), "bootstrap", None).await;
    boot.wait_listening(1, WAIT).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await && bob.wait_published(WAIT).await);
    let alice_api = LocalApi::start(
        alice.clone(),
        &dir.path().join("alice"),
        ApiOptions::new(None),
    )
    .await
    .expect("alice's API");
    let bob_api = LocalApi::start(bob.clone(), &dir.path().join("bob"), ApiOptions::new(None))
        .await
        .expect("bob's API");

    // Bob's application: reads and acknowledges everything.
    let drain = {
        let d = dir.path().join("bob");
        tokio::spawn(async move {
            let mut c = Client::connect(&d).await.expect("bob's API");
            loop {
                let Ok(Ok(got)) = c
                    .call(Method::GET, "/v1/messages?wait_ms=1000&max=256", None)
                    .await
                else {
                    return;
                };
                let ids: Vec<Value> = got["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m["id"].clone())
                    .collect();
                if !ids.is_empty() {
                    let _ = c
                        .call(
                            Method::POST,
                            "/v1/messages/ack",
                            Some(&json!({ "ids": ids })),
                        )
                        .await;
                }
            }
        })
    };

    // Warm-up: the KNOCK.
    alice.send(&bob.amid(), payload(0)).await.expect("warm-up");
    println!("{n} messages of 1 KiB, one at a time, alice → bob (loopback QUIC)\n");

    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        alice.send(&bob.amid(), payload(i)).await.expect("sent");
        lat.push(t.elapsed());
    }
    let rust = figures(lat, t0.elapsed());
    print("Rust API (Node::send)", &rust);

    let mut c = Client::connect(&dir.path().join("alice"))
        .await
        .expect("alice's API");
    let to = bob.amid().to_string();
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let r = c
            .call(
                Method::POST,
                "/v1/send",
                Some(&json!({ "to": to, "payload": payload(i) })),
            )
            .await
            .expect("transport");
        r.expect("sent");
        lat.push(t.elapsed());
    }
    let api = figures(lat, t0.elapsed());
    print("local API (POST /v1/send, socket)", &api);
    println!(
        "the API layer: {:+.3} ms per message at p50 ({:.0} % of the Rust API's rate)",
        (api.p50.as_secs_f64() - rust.p50.as_secs_f64()) * 1e3,
        api.per_s / rust.per_s * 100.0
    );

    if let Ok(python) = std::env::var("AGENTMESH_BENCH_PYTHON") {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sdk/python/bench/api_bench.py"
        );
        let out = tokio::process::Command::new(python)
            .arg(script)
            .arg(dir.path().join("alice"))
            .arg(&to)
            .arg(n.to_string())
            .output()
            .await
            .expect("python runs");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    drain.abort();
    alice_api.stop().await;
    bob_api.stop().await;
}
