//! The registry under load, against the real `agentmesh-bootstrap`
//! process with its default limits: a client over its request rate is
//! answered `429 rate_limited` with `Retry-After` and is served again after
//! that wait; prekey fetches have their own, tighter limit, and a refused
//! fetch uses up no one-time key. Every request here comes from 127.0.0.1,
//! so one client's limits are seen against other routes and limiter
//! classes rather than other addresses.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

use agentmesh_bootstrap::registry::{DEFAULT_HTTP_RATE, DEFAULT_PREKEY_RATE};
use agentmesh_node::{
    keystore::KdfParams,
    registry::{
        protocol::{call, Request, Response},
        Operation, PrekeyBundle, Registration,
    },
    Config, Identity, Node, Passphrase,
};

mod support;

use support::{start, start_registry, Http, WAIT};

/// Status, `Retry-After` (seconds) and JSON body of a GET of `base` + `path`.
async fn get(base: &str, path: &str) -> (u16, Option<u64>, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("{base}{path}").parse().unwrap();
    let resp = tokio::time::timeout(WAIT, client.get(uri))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn registered(http: &Http, who: &Identity) {
    let op = Operation::Register(Registration::new("Alice", vec!["chat".into()]));
    let (s, v) = http.signed("/v1/registry/register", who, op).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_gets_429_with_retry_after_then_is_served_again() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        "limits-test",
        &["--http", "127.0.0.1:0"],
    )
    .await;
    let http = Http::new(&server.url);
    let alice = Identity::from_seed(&[1; 32]);
    registered(&http, &alice).await;

    // Flood lookups far faster than 600 a minute until refused.
    let lookup = format!("/v1/registry/lookup?amid={}", alice.amid());
    let burst = u64::from(DEFAULT_HTTP_RATE.burst);
    let mut served = 0u64;
    let refusal = loop {
        let (s, retry_after, v) = get(&server.url, &lookup).await;
        match s {
            200 => served += 1,
            429 => break (retry_after, v),
            other => panic!("lookup answered {other}: {v}"),
        }
        assert!(served <= 50 * burst, "never rate limited");
    };
    // The burst, less the registration, and what refilled meanwhile.
    assert!(served >= burst - 1, "refused after only {served}");
    let (retry_after, v) = refusal;
    assert_eq!(code(&v), "rate_limited", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let wait = retry_after.expect("429 carries Retry-After");
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");

    // Health checks are not rate limited.
    let (s, _, v) = get(&server.url, "/v1/health").await;
    assert_eq!(s, 200, "{v}");

    // After the wait the client is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (s, _, v) = get(&server.url, &lookup).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["amid"], alice.amid().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prekey_fetches_over_their_limit_are_refused_and_use_up_no_key() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        "limits-test",
        &["--http", "127.0.0.1:0"],
    )
    .await;
    let http = Http::new(&server.url);
    let alice = Identity::from_seed(&[1; 32]);
    registered(&http, &alice).await;
    let keys: Vec<[u8; 32]> = (0..30u8).map(|i| [i + 10; 32]).collect();
    let bundle = PrekeyBundle::new([4; 32], [5; 32], &keys);
    let (s, v) = http
        .signed("/v1/registry/prekeys", &alice, Operation::Prekeys(bundle))
        .await;
    assert_eq!(s, 200, "{v}");

    let path = format!("/v1/registry/prekeys/{}", alice.amid());
    let burst = usize::try_from(DEFAULT_PREKEY_RATE.burst).unwrap();
    for (i, key) in keys.iter().enumerate().take(burst) {
        let (s, _, v) = get(&server.url, &path).await;
        assert_eq!(s, 200, "fetch {i}: {v}");
        assert_eq!(v["one_time_key"], hex::encode(key));
        assert_eq!(v["remaining"], keys.len() - i - 1);
    }

    // The flood goes on: refused, one token every 6 s.
    let mut wait = 0;
    for i in 0..burst {
        let (s, retry_after, v) = get(&server.url, &path).await;
        assert_eq!((s, code(&v)), (429, "rate_limited"), "fetch {i}: {v}");
        wait = retry_after.expect("429 carries Retry-After");
        assert!((1..=6).contains(&wait), "Retry-After: {wait}");
    }

    // Another limiter class is unaffected: the same client still looks up.
    let lookup = format!("/v1/registry/lookup?amid={}", alice.amid());
    let (s, _, v) = get(&server.url, &lookup).await;
    assert_eq!(s, 200, "{v}");

    // After the wait, the next fetch hands out the next key: the refused
    // fetches used up none.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (s, _, v) = get(&server.url, &path).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["one_time_key"], hex::encode(keys[burst]));
    assert_eq!(v["remaining"], keys.len() - burst - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_gets_rate_limited_over_libp2p() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), "limits-test").await;
    let registry = server.peer_id();
    let mut config = Config::local();
    config.kdf = KdfParams::throwaway();
    let node = Node::builder(config)
        .data_dir(dir.path().join("alice"))
        .passphrase(Passphrase::new("alice"))
        .bootstrap(server.addr.parse().unwrap())
        .spawn()
        .await
        .unwrap();
    let mut control = node.stream_control();

    let burst = u64::from(DEFAULT_HTTP_RATE.burst);
    let mut served = 0u64;
    let refusal = loop {
        match call(&mut control, registry, &Request::Root, WAIT)
            .await
            .expect("answer")
        {
            Response::Ok { .. } => served += 1,
            Response::Error { code, message } => break (code, message),
            other => panic!("{other:?}"),
        }
        assert!(served <= 50 * burst, "never rate limited");
    };
    // The node may have asked a few things of its own first.
    assert!(served >= burst / 2, "refused after only {served}");
    assert_eq!(refusal.0, "rate_limited", "{}", refusal.1);

    // The HTTP front end's limits are its own.
    let (s, _, v) = get(&server.url, "/v1/registry/root").await;
    assert_eq!(s, 200, "{v}");
}
