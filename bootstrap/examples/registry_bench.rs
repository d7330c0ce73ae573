//! Registry throughput over HTTP on loopback: register, lookup and search
//! requests per second against a registry on a sled database in a
//! temporary directory (every state change flushed to disk before the
//! answer), or on PostgreSQL.
//!
//! `cargo run --release -p agentmesh-bootstrap --example registry_bench -- [agents] [concurrency] [--database postgres://…] [--nodes N] [--hold]`
//!
//! With `--database` the registry runs on that PostgreSQL database (its
//! registry tables must be empty: use a fresh database); with `--nodes N`
//! (needs `--database`) N registries in this process share it, each with
//! its own HTTP server, and the clients spread their requests over them
//! in turn.
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
    knock::ratelimit::RateLimit,
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
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let database = flag("--database");
    let nodes: usize = flag("--nodes").and_then(|n| n.parse().ok()).unwrap_or(1);
    assert!(
        nodes == 1 || database.is_some(),
        "--nodes above 1 needs a shared --database"
    );
    let args: Vec<usize> = argv
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !matches!(argv[i - 1].as_str(), "--database" | "--nodes"))
        .filter_map(|(_, a)| a.parse().ok())
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
    settings.database = database.clone();
    let mut servers = Vec::new();
    for i in 0..nodes {
        let registry = Registry::open(
            &dir.path().join(format!("node{i}")),
            &Passphrase::new("bench"),
            settings.clone(),
        )
        .expect("registry");
        let server = HttpServer::spawn(registry, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("server");
        servers.push(server);
    }
    let bases: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let base = |i: usize| bases[i % bases.len()].as_str();
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    println!(
        "registry bench: {agents} agents, {concurrency} concurrent clients, {} on {}",
        if nodes == 1 {
            "one registry".to_owned()
        } else {
            format!("{nodes} registries")
        },
        if database.is_some() {
            "PostgreSQL"
        } else {
            "sled"
        },
    );

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
                format!("{}/v1/registry/register", base(i)),
                serde_json::to_vec(&req).expect("json"),
            )
        })
        .collect();
    run("register", &client, register, concurrency).await;

    let lookup: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                "GET",
                format!("{}/v1/registry/lookup?amid={}", base(i + 1), id.amid()),
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
                    "{}/v1/registry/search?capability={}&limit=20",
                    base(i),
                    caps[i % caps.len()].split('/').next().unwrap_or("weather")
                ),
                Vec::new(),
            )
        })
        .collect();
    run("search", &client, search, concurrency).await;
    if std::env::args().any(|a| a == "--hold") {
        println!(
            "lookup URL: {}/v1/registry/lookup?amid={}",
            base(0),
            ids[0].amid()
        );
        println!(
            "search URL: {}/v1/registry/search?capability=weather&limit=20",
            base(0)
        );
        println!("serving until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
    for server in servers {
        server.shutdown().await;
    }
}
