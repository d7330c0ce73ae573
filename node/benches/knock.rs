//! What a KNOCK costs.
//!
//! Run with `cargo bench -p agentmesh-node --bench knock` (criterion).
//! `AGENTMESH_BENCH_DIR` sets where the nodes' data go (default: the
//! system's temporary directory; `/dev/shm` leaves the disk out).
//!
//! 1. `policy_evaluate/*`: `Policy::evaluate` alone, a pure function, on a
//!    verified KNOCK: the `default` preset (no rules), and the `strict`
//!    preset with 1000 blocked AMIDs, 100 allowed ones and 8 intent rules
//!    where the KNOCK matches the last rule.
//! 2. `round_trip/*`: a bootstrap node, alice and bob in this process on
//!    loopback QUIC and sled databases (bob's rate limits raised out of the
//!    way). `knock_accept`: alice sends a message to bob with no session, so
//!    it rides in a KNOCK that bob verifies, judges, opens (Olm pre-key
//!    message), stores and accepts — a new session each iteration (alice
//!    closes the previous one outside the timed part). `message_ack`: the
//!    same message in an open session on the same connection, acknowledged
//!    by bob once stored.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use agentmesh_node::{
    crypto::envelope::SessionId,
    crypto::keystore::KdfParams,
    knock::policy::{IntentRule, KnockContext, Policy, Preset, Tier},
    knock::{Intent, KnockBody},
    Config, Identity, Node, Passphrase,
};
use serde_json::json;

const NOW: u64 = 1_700_000_000_000;

fn knock_body(from: &Identity, to: agentmesh_node::Amid) -> KnockBody {
    KnockBody {
        from: from.amid(),
        to,
        intent: Intent::new("travel/flights", "query"),
        session: SessionId([3; 16]),
        ts_ms: NOW,
        nonce: [4; 16],
        first: vec![0; 64],
        credentials: Default::default(),
        moved_from: Vec::new(),
    }
}

fn bench_policy(c: &mut Criterion) {
    let a = Identity::from_seed(&[1; 32]);
    let me = Identity::from_seed(&[2; 32]).amid();
    let knock = knock_body(&a, me);

    let default = Policy::default();
    let mut strict = Policy::preset(Preset::Strict);
    for i in 0..1000u32 {
        let mut seed = [9u8; 32];
        seed[..4].copy_from_slice(&i.to_be_bytes());
        strict.block.insert(Identity::from_seed(&seed).amid());
    }
    for i in 0..100u32 {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&i.to_be_bytes());
        strict.allow.insert(Identity::from_seed(&seed).amid());
    }
    strict.allow.insert(a.amid());
    let rules: Vec<IntentRule> = [
        ("finance/*", "*", false),
        ("commerce/*", "buy", false),
        ("research/*", "query", true),
        ("development/*", "*", true),
        ("creative/images", "generate", true),
        ("productivity/*", "*", true),
        ("travel/hotels", "book", true),
        ("travel/*", "query", true),
    ]
    .into_iter()
    .map(|(cap, action, allow)| IntentRule {
        capability: cap.into(),
        action: action.into(),
        allow,
        tiers: Vec::new(),
    })
    .collect();
    strict.intents = rules;
    let verified = KnockContext {
        tier: Tier::Verified,
        ..KnockContext::default()
    };
    assert!(matches!(
        strict.evaluate(&me, &knock, verified, NOW),
        agentmesh_node::knock::Decision::Accept { .. }
    ));

    let mut g = c.benchmark_group("policy_evaluate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("default", |b| {
        b.iter(|| {
            black_box(default.evaluate(
                black_box(&me),
                black_box(&knock),
                KnockContext::default(),
                NOW,
            ))
        })
    });
    g.bench_function("strict_1000_blocked_8_rules", |b| {
        b.iter(|| black_box(strict.evaluate(black_box(&me), black_box(&knock), verified, NOW)))
    });
    g.finish();
}

fn node_config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c.policy.rate.knocks_per_minute = 1_000_000;
    c.policy.rate.messages_per_minute = 1_000_000;
    c
}

async fn spawn(dir: &std::path::Path, name: &str, boot: Option<&Node>) -> Node {
    let mut b = Node::builder(node_config())
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = boot {
        b = b.bootstraps(boot.listen_addrs().await);
    }
    let n = b.spawn().await.expect("node starts");
    while n.listen_addrs().await.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n
}

fn bench_round_trip(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::var_os("AGENTMESH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let (_boot, alice, bob) = rt.block_on(async {
        let boot = spawn(dir.path(), "boot", None).await;
        let alice = spawn(dir.path(), "alice", Some(&boot)).await;
        let bob = spawn(dir.path(), "bob", Some(&boot)).await;
        assert!(bob.wait_published(Duration::from_secs(60)).await);
        assert!(alice.wait_published(Duration::from_secs(60)).await);
        // bob's application reads everything, so acks are never held back.
        let mut inbox = bob.messages().expect("inbox");
        tokio::spawn(async move { while inbox.recv().await.is_some() {} });
        // Warm up: resolve bob's card and connect.
        alice
            .send(&bob.amid(), json!("hello"))
            .await
            .expect("first");
        (boot, alice, bob)
    });
    let to = bob.amid();
    let payload = json!({"text": "a short message of the size agents send to ask for something"});

    let mut g = c.benchmark_group("round_trip");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("knock_accept", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    alice.close_session(&to).await;
                    let t0 = Instant::now();
                    let r = alice.send(&to, payload.clone()).await.expect("delivered");
                    total += t0.elapsed();
                    assert!(r.knocked, "a new session each time");
                }
                total
            })
        })
    });
    rt.block_on(async {
        alice.send(&to, json!("open")).await.expect("session");
    });
    g.bench_function("message_ack", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let r = alice.send(&to, payload.clone()).await.expect("delivered");
                    assert!(!r.knocked, "the open session");
                }
                t0.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_policy, bench_round_trip);
criterion_main!(benches);
