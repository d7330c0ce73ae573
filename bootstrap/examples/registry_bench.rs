//! Registry throughput over HTTP on loopback: register, lookup and search
//! requests per second against a registry on a sled database in a
//! temporary directory (every state change flushed to disk before the
//! answer).
//!
//! `cargo run --release -p agentmesh-bootstrap --example registry_bench -- [agents] [concurrency] [--hold]`
//!
//! With `--hold` the registry keeps serving, with its agents, after the
//! runs until Ctrl-C, and the bench prints a lookup and a search URL, so
//! that an outside load tool (`oha`) can measure the same server.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use agentmesh_bootstrap::{
    http::HttpServer,
    registry::{Registry, RegistrySettings},
};
use agentmesh_node::{
    ratelimit::RateLimit,
    registry::{Operation, Registration, SignedRequest},
    Identity, Passphrase,
};

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(client: &Http, method: &str, url: String, body: Vec<u8>) -> u16 {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = client.request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// Runs `jobs` (each an HTTP call) with `concurrency` workers; returns req/s.
async fn run(
    name: &str,
    client: &Http,
    jobs: Vec<(&'static str, String, Vec<u8>)>,
    concurrency: usize,
) -> f64 {
    let n = jobs.len();
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let jobs = jobs.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((m, url, body)) = jobs.lock().await.pop() else {
                    break;
                };
                let s = call(&client, m, url, body).await;
                assert_eq!(s, 200, "request failed");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!("{name:<8} {n:>6} requests in {secs:>6.2} s  {rate:>8.0} req/s");
    rate
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let agents = args.first().copied().unwrap_or(2000);
    let concurrency = args.get(1).copied().unwrap_or(16);
    let dir = tempfile::tempdir().expect("tempdir");
    // Every client here is 127.0.0.1: the per-client limits would measure
    // themselves, not the registry.
    let mut settings = RegistrySettings::default();
    settings.http_rate = RateLimit::new(u32::MAX, u32::MAX);
    settings.prekey_rate = RateLimit::new(u32::MAX, u32::MAX);
    settings.http_max_in_flight = 65_536;
    let registry =
        Registry::open(dir.path(), &Passphrase::new("bench"), settings).expect("registry");
    let server = HttpServer::spawn(registry, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server");
    let base = format!("http://{}", server.addr);
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    println!("registry bench: {agents} agents, {concurrency} concurrent clients, {base}");

    let ids: Vec<Identity> = (0..agents).map(|_| Identity::generate()).collect();
    let caps = [
        "weather/forecast",
        "travel/booking",
        "communication/chat",
        "code/review",
    ];
    let now = agentmesh_dht::now_ms();
    let register: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let op = Operation::Register(Registration::new(
                format!("agent-{i}"),
                vec![caps[i % caps.len()].to_owned()],
            ));
            let req = SignedRequest::sign(id, op, now).expect("sign");
            (
                "POST",
                format!("{base}/v1/registry/register"),
                serde_json::to_vec(&req).expect("json"),
            )
        })
        .collect();
    run("register", &client, register, concurrency).await;

    let lookup: Vec<_> = ids
        .iter()
        .map(|id| {
            (
                "GET",
                format!("{base}/v1/registry/lookup?amid={}", id.amid()),
                Vec::new(),
            )
        })
        .collect();
    run("lookup", &client, lookup, concurrency).await;

    let search: Vec<_> = (0..agents.min(2000))
        .map(|i| {
            (
                "GET",
                format!(
                    "{base}/v1/registry/search?capability={}&limit=20",
                    caps[i % caps.len()].split('/').next().unwrap_or("weather")
                ),
                Vec::new(),
            )
        })
        .collect();
    run("search", &client, search, concurrency).await;
    if std::env::args().any(|a| a == "--hold") {
        println!(
            "lookup URL: {base}/v1/registry/lookup?amid={}",
            ids[0].amid()
        );
        println!("search URL: {base}/v1/registry/search?capability=weather&limit=20");
        println!("serving until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
    server.shutdown().await;
}
