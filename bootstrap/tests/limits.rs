//! The registry under load, against the real `agentmesh-bootstrap`
//! process with its default limits: a client over its request rate is
//! answered `429 rate_limited` with `Retry-After` and is served again after
//! that wait; prekey fetches have their own, tighter limit, and a refused
//! fetch uses up no one-time key. Most requests here come from 127.0.0.1,
//! so one client's limits are seen against other routes and limiter
//! classes; the flood from many addresses binds its sockets to 127.0.0.2
//! to 127.0.0.60 (all loopback on Linux), each address with buckets of its
//! own, while a polite client on 127.0.0.1 looks up.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

use agentmesh_bootstrap::{
    p2p::MAX_STREAMS_PER_PEER,
    registry::{DEFAULT_HTTP_RATE, DEFAULT_PREKEY_RATE},
};
use agentmesh_node::{
    crypto::keystore::KdfParams,
    registry::{
        protocol::{call, ProtocolError, Request, Response, PROTOCOL},
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
    // A fetch hands out the fallback key and uses up no one-time key.
    for i in 0..burst {
        let (s, _, v) = get(&server.url, &path).await;
        assert_eq!(s, 200, "fetch {i}: {v}");
        assert_eq!(v["one_time_key"], Value::Null);
        assert_eq!(v["fallback_key"], hex::encode([5; 32]));
        assert_eq!(v["remaining"], keys.len());
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

    // After the wait, the next fetch is served, and every one-time key is
    // still there.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (s, _, v) = get(&server.url, &path).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["one_time_key"], Value::Null);
    assert_eq!(v["remaining"], keys.len());
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

/// Peak resident memory (`VmHWM`, bytes) of process `pid`.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// An HTTP/1.1 connection to `server` from source address `from`.
async fn connect_from(
    from: std::net::Ipv4Addr,
    server: std::net::SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((from, 0).into()).ok()?;
    let stream = socket.connect(server).await.ok()?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// What the flooders got.
#[derive(Default)]
struct FloodCounts {
    served: std::sync::atomic::AtomicU64,
    rate_limited: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicU64,
    other: std::sync::atomic::AtomicU64,
}

impl FloodCounts {
    fn total(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.served.load(Relaxed)
            + self.rate_limited.load(Relaxed)
            + self.busy.load(Relaxed)
            + self.other.load(Relaxed)
    }
}

/// Flooding addresses: 127.0.0.2 to 127.0.0.60 (all loopback on Linux).
const FLOOD_ADDRS: std::ops::RangeInclusive<u8> = 2..=60;
/// Connections per flooding address, each sending lookups back to back.
const FLOOD_CONNECTIONS: usize = 6;
/// The well-behaved client's lookups (within its own burst).
const POLITE_LOOKUPS: usize = 100;
/// The share of those that may be refused `503 busy` under the flood.
const POLITE_REFUSED_AT_MOST: f64 = 0.10;
/// Bound on the server's peak resident memory.
const SERVER_RSS_BOUND: u64 = 512 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_leaves_a_polite_client_served() {
    use std::sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    };

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        "limits-test",
        &["--http", "127.0.0.1:0"],
    )
    .await;
    let pid = server.child.id().expect("the server runs");
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the registry URL is http://<ip>:<port>");
    let http = Http::new(&server.url);
    let alice = Identity::from_seed(&[1; 32]);
    registered(&http, &alice).await;
    let lookup = format!("/v1/registry/lookup?amid={}", alice.amid());
    let rss_before = peak_rss(pid);

    // The flood: 59 addresses, 6 connections each, lookups back to back
    // until told to stop.
    let counts = Arc::new(FloodCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = tokio::sync::Notify::new();
    let started = Arc::new(started);
    let mut flooders = Vec::new();
    let flood_t0 = std::time::Instant::now();
    for last in FLOOD_ADDRS {
        for _ in 0..FLOOD_CONNECTIONS {
            let (counts, stop, started) = (counts.clone(), stop.clone(), started.clone());
            let lookup = lookup.clone();
            flooders.push(tokio::spawn(async move {
                let from = std::net::Ipv4Addr::new(127, 0, 0, last);
                let mut conn = None;
                while !stop.load(Relaxed) {
                    if conn.is_none() {
                        conn = connect_from(from, addr).await;
                        if conn.is_none() {
                            counts.other.fetch_add(1, Relaxed);
                            tokio::task::yield_now().await;
                            continue;
                        }
                    }
                    let send = conn.as_mut().unwrap();
                    let req = hyper::Request::get(lookup.as_str())
                        .header("host", addr.to_string())
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let status = match send.send_request(req).await {
                        Ok(resp) => {
                            let s = resp.status().as_u16();
                            let _ = resp.into_body().collect().await;
                            s
                        }
                        Err(_) => {
                            conn = None;
                            0
                        }
                    };
                    match status {
                        200 => counts.served.fetch_add(1, Relaxed),
                        429 => counts.rate_limited.fetch_add(1, Relaxed),
                        503 => counts.busy.fetch_add(1, Relaxed),
                        _ => counts.other.fetch_add(1, Relaxed),
                    };
                    if counts.total() >= 2_000 {
                        started.notify_one();
                    }
                }
            }));
        }
    }
    // The polite client starts once the flood is well under way.
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the flood gets going");
    let flood_start = counts.total();
    let t0 = std::time::Instant::now();
    let (mut served, mut busy, mut slowest) = (0usize, 0usize, Duration::ZERO);
    for _ in 0..POLITE_LOOKUPS {
        let t = std::time::Instant::now();
        let (s, _, v) = get(&server.url, &lookup).await;
        slowest = slowest.max(t.elapsed());
        match s {
            200 => {
                assert_eq!(v["amid"], alice.amid().to_string());
                served += 1;
            }
            503 => busy += 1,
            other => panic!("a polite lookup answered {other}: {v}"),
        }
    }
    let polite_time = t0.elapsed();
    let during = counts.total() - flood_start;
    stop.store(true, Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    let flood_time = flood_t0.elapsed();
    let rss = peak_rss(pid);
    println!(
        "flood from {} addresses x {FLOOD_CONNECTIONS} connections: {} requests \
         ({} served, {} rate limited, {} busy, {} failed); {during} during the polite \
         client's {POLITE_LOOKUPS} lookups in {polite_time:?} ({:.0}/s); polite: {served} \
         served, {busy} busy, slowest {slowest:?}; server peak RSS {} MiB (before the \
         flood {} MiB)",
        FLOOD_ADDRS.count(),
        counts.total(),
        counts.served.load(Relaxed),
        counts.rate_limited.load(Relaxed),
        counts.busy.load(Relaxed),
        counts.other.load(Relaxed),
        during as f64 / polite_time.as_secs_f64(),
        rss >> 20,
        rss_before >> 20,
    );
    // The flood was one: far over one address's burst, and most of it
    // refused by the per-address limits.
    let burst = u64::from(DEFAULT_HTTP_RATE.burst);
    assert!(
        counts.total() >= 10 * burst,
        "only {} flood requests",
        counts.total()
    );
    assert!(
        counts.rate_limited.load(Relaxed) > 0,
        "no flooder was limited"
    );
    // Each address was served at most its burst and its refill over the
    // flood (a second's slack).
    let addresses = FLOOD_ADDRS.count() as u64;
    let refill = f64::from(DEFAULT_HTTP_RATE.per_minute) / 60.0;
    let allowed = addresses * (burst + (refill * (flood_time.as_secs_f64() + 1.0)) as u64);
    assert!(
        counts.served.load(Relaxed) <= allowed,
        "flooders served {} in {flood_time:?}, over their addresses' limits ({allowed})",
        counts.served.load(Relaxed)
    );
    // The polite client was served: at most a stated share refused busy.
    assert!(
        busy as f64 <= POLITE_REFUSED_AT_MOST * POLITE_LOOKUPS as f64,
        "{busy} of {POLITE_LOOKUPS} polite lookups refused busy"
    );
    assert_eq!(served + busy, POLITE_LOOKUPS);
    assert!(rss < SERVER_RSS_BOUND, "server peak RSS {} MiB", rss >> 20);
    // Still serving once the flood is over.
    let (s, _, v) = get(&server.url, "/v1/health").await;
    assert_eq!(s, 200, "{v}");
}

/// Peers that open registry protocol streams and send nothing.
const SILENT_PEERS: usize = 24;
/// Silent streams each opens (the server reads 4 per peer at once).
const SILENT_STREAMS: usize = 8;
/// Peers flooding real requests, and the requests each has in flight.
const FLOOD_PEERS: usize = 16;
const FLOOD_IN_FLIGHT: usize = 4;
/// The polite node's calls, and the tries each may take.
const POLITE_CALLS: usize = 20;
const POLITE_TRIES: usize = 5;

/// A bare libp2p peer (a fresh identity, QUIC and the stream protocol
/// only) connected to `addr`; its swarm runs in the background.
async fn bare_peer(addr: libp2p::Multiaddr) -> libp2p_stream::Control {
    use futures::StreamExt;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    swarm.dial(addr).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match swarm.select_next_some().await {
                libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } => break,
                libp2p::swarm::SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("dial: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    control
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_and_a_flood_from_many_peers_leave_the_registry_protocol_serving() {
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    };

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), "limits-test").await;
    let pid = server.child.id().expect("the server runs");
    let registry = server.peer_id();
    let addr: libp2p::Multiaddr = server.addr.parse().unwrap();

    // Silent peers: each opens its streams and sends nothing. Together
    // they open three times the serving slots.
    let mut silent = Vec::new();
    for _ in 0..SILENT_PEERS {
        let mut control = bare_peer(addr.clone()).await;
        for _ in 0..SILENT_STREAMS {
            if let Ok(s) = control.open_stream(registry, PROTOCOL).await {
                silent.push(s);
            }
        }
    }
    assert!(
        silent.len() >= SILENT_PEERS * MAX_STREAMS_PER_PEER,
        "only {} silent streams opened",
        silent.len()
    );

    // Flooding peers: real requests, back to back, several at once.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited, busy, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut flooders = Vec::new();
    for _ in 0..FLOOD_PEERS {
        let control = bare_peer(addr.clone()).await;
        for _ in 0..FLOOD_IN_FLIGHT {
            let mut control = control.clone();
            let (stop, ok, limited, busy, failed) = (
                stop.clone(),
                ok.clone(),
                limited.clone(),
                busy.clone(),
                failed.clone(),
            );
            flooders.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    match call(&mut control, registry, &Request::Root, WAIT).await {
                        Ok(Response::Ok { .. }) => ok.fetch_add(1, Relaxed),
                        Ok(Response::Error { code, .. }) if code == "rate_limited" => {
                            limited.fetch_add(1, Relaxed)
                        }
                        Ok(Response::Error { code, .. }) if code == "busy" => {
                            busy.fetch_add(1, Relaxed)
                        }
                        _ => failed.fetch_add(1, Relaxed),
                    };
                }
            }));
        }
    }

    // The polite node, while the silent streams are held and the flood
    // runs.
    let mut config = Config::local();
    config.kdf = KdfParams::throwaway();
    let node = Node::builder(config)
        .data_dir(dir.path().join("alice"))
        .passphrase(Passphrase::new("alice"))
        .bootstrap(addr.clone())
        .spawn()
        .await
        .unwrap();
    let mut control = node.stream_control();
    let t0 = std::time::Instant::now();
    let (mut served, mut polite_busy, mut shed, mut slowest) =
        (0usize, 0usize, 0usize, Duration::ZERO);
    for i in 0..POLITE_CALLS {
        let t = std::time::Instant::now();
        // A stream the transport shed (its accept queue full under the
        // flood) is reset at once; the polite node tries again.
        let mut tries = 0;
        let r = loop {
            tries += 1;
            match call(&mut control, registry, &Request::Root, WAIT).await {
                Err(ProtocolError::Io(e)) if tries < POLITE_TRIES => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                    shed += 1;
                }
                r => break r,
            }
        };
        slowest = slowest.max(t.elapsed());
        match r {
            Ok(Response::Ok { .. }) => served += 1,
            Ok(Response::Error { code, .. }) if code == "busy" => polite_busy += 1,
            other => panic!("polite call {i} after {tries} tries: {other:?}"),
        }
    }
    let polite_time = t0.elapsed();
    stop.store(true, Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    let held = silent.len();
    drop(silent);
    let rss = peak_rss(pid);
    println!(
        "registry protocol: {} silent streams opened by {SILENT_PEERS} peers; {FLOOD_PEERS} \
         peers x {FLOOD_IN_FLIGHT} requests in flight: {} served, {} rate limited, {} busy, \
         {} failed; polite: {served} of {POLITE_CALLS} served, {polite_busy} busy, {shed} \
         tries shed and made again, in {polite_time:?}, slowest {slowest:?}; server peak RSS {} MiB",
        held,
        ok.load(Relaxed),
        limited.load(Relaxed),
        busy.load(Relaxed),
        failed.load(Relaxed),
        rss >> 20,
    );
    assert!(ok.load(Relaxed) > 0, "the flood was served too");
    assert!(
        polite_busy as f64 <= POLITE_REFUSED_AT_MOST * POLITE_CALLS as f64,
        "{polite_busy} of {POLITE_CALLS} polite calls answered busy"
    );
    assert_eq!(served + polite_busy, POLITE_CALLS);
    assert!(rss < SERVER_RSS_BOUND, "server peak RSS {} MiB", rss >> 20);
}
