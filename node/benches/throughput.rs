//! Sustained message rate of 1 KiB payloads between two AgentMesh nodes over
//! loopback QUIC, against raw quinn carrying the same payloads, and against
//! the bound the receiver's per-message primitives set.
//!
//! Run with `cargo bench -p agentmesh-node --bench throughput`. Prints plain
//! figures (no criterion). Environment:
//!
//! - `AGENTMESH_BENCH_MESSAGES`: messages per run (default 20000; e.g. 500
//!   for a CI smoke run).
//! - `AGENTMESH_BENCH_RUNS`: runs per measurement, the median is reported
//!   (default 3).
//! - `AGENTMESH_BENCH_WINDOW`: unacknowledged messages in flight, for the
//!   node (`Config::window`) and for raw quinn alike (default: the node's
//!   default, 64).
//! - `AGENTMESH_BENCH_DIR`: where the nodes' temporary data directories go
//!   (default: the system's temporary directory; e.g. `/dev/shm` to take the
//!   disk out of the measurement).
//! - `AGENTMESH_BENCH_ONLY`: `node` or `quinn` to run only that side (for
//!   profiling); the bound is always measured.
//!
//! What is measured:
//!
//! 1. **node**: a bootstrap node, alice and bob in this process, on
//!    loopback and on-disk sled databases in a temporary directory. After
//!    one warm-up message (the KNOCK), alice queues N messages with
//!    `send_nowait` and bob reads `messages()` until all N arrived; the time
//!    is from the first `send_nowait` to the N-th message read by bob.
//! 2. **raw quinn**: one quinn 0.11 connection (rustls with aws-lc-rs,
//!    self-signed rcgen certificate), one long-lived bidirectional stream per
//!    run, each message a 4-byte length prefix and the same 1 KiB JSON; the
//!    server answers each with a 12-byte ack frame (length + sequence
//!    number), flushing acks whenever its read buffer is empty; the client
//!    keeps at most the same window of messages unacknowledged. The time is
//!    from the first write to the server having read the N-th message.
//! 3. **bound**: `1 / (ed25519 verify + olm decrypt)` of one 1 KiB message
//!    on one core, measured here: the rate a receiver could reach if it did
//!    nothing but its two unavoidable primitives.

mod common;

use std::{
    hint::black_box,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use quinn::{Endpoint, RecvStream, SendStream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter},
    sync::{mpsc, Semaphore},
};
use vodozemac::olm::OlmMessage;

use agentmesh_node::{
    crypto::envelope::{EnvelopeBody, MessageId, DOMAIN_SEP_ENVELOPE},
    crypto::keystore::KdfParams,
    Config, Node, Passphrase,
};
use agentmesh_transports::codec;

use common::{content, olm_pair, pair, payload, NOW, PAYLOAD_BYTES};

/// Longest a single run may take before the bench gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// Depth of the channel of per-stream reports of the quinn server.
const REPORT_QUEUE: usize = 16;
/// How long the nodes get to join the DHT.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU time used by this process so far (user + system), from
/// `/proc/self/stat`; `None` where that is not available.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Bytes this process wrote so far: (`wchar`, `write_bytes`) of
/// `/proc/self/io`, i.e. through write calls and to the storage layer.
fn process_writes() -> Option<(u64, u64)> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("wchar:")?, field("write_bytes:")?))
}

/// Written KiB per message between two `process_writes` readings.
fn writes_per_msg(before: Option<(u64, u64)>, after: Option<(u64, u64)>, n: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.1} KiB/msg written ({:.1} KiB/msg reached the block layer)",
            (a.0 - b.0) as f64 / 1024.0 / n as f64,
            (a.1 - b.1) as f64 / 1024.0 / n as f64
        ),
        _ => "writes unknown".into(),
    }
}

/// Cores kept busy on average between two `process_cpu` readings.
fn cores_busy(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b).as_secs_f64() / wall.as_secs_f64()),
        _ => "?".into(),
    }
}

/// Messages per second and MiB/s of payload for `n` messages in `d`.
fn rates(n: usize, d: Duration) -> (f64, f64) {
    let s = d.as_secs_f64();
    let per_s = n as f64 / s;
    (per_s, per_s * PAYLOAD_BYTES as f64 / (1024.0 * 1024.0))
}

// --- the bound ---------------------------------------------------------------

struct Bound {
    verify: Duration,
    decrypt_prekey: Duration,
    decrypt_normal: Duration,
    signed_len: usize,
}

/// Median over `reps` repetitions of the mean time of one call, `k` calls
/// each.
fn time_each(reps: usize, k: usize, mut f: impl FnMut(usize)) -> Duration {
    f(0); // warm up
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        for i in 0..k {
            f(i);
        }
        samples.push(t0.elapsed().as_secs_f64() / k as f64);
    }
    Duration::from_secs_f64(median(samples))
}

fn decrypt_time(established: bool, k: usize, reps: usize) -> Duration {
    let plain = serde_json::to_vec(&payload(7)).expect("json");
    let mut samples = Vec::with_capacity(reps);
    let (mut a, mut b) = olm_pair(established);
    for _ in 0..reps {
        let msgs: Vec<OlmMessage> = (0..k)
            .map(|_| a.encrypt(&plain).expect("encrypts"))
            .collect();
        let t0 = Instant::now();
        for m in &msgs {
            black_box(b.decrypt(m).expect("decrypts"));
        }
        samples.push(t0.elapsed().as_secs_f64() / k as f64);
    }
    Duration::from_secs_f64(median(samples))
}

fn measure_bound() -> Bound {
    // A real envelope gives the exact length of what is signed.
    let (mut a, b) = pair(None, false);
    let env = a
        .store
        .seal(
            &a.id,
            &b.amid(),
            None,
            MessageId::random(),
            &content(2),
            NOW,
        )
        .expect("seals");
    let body: EnvelopeBody = env.open(&b.amid(), NOW).expect("opens");
    let body_cbor = codec::encode(&body).expect("encodes");
    let signed = [DOMAIN_SEP_ENVELOPE, &body_cbor[..]].concat();
    let sig = a.id.sign(DOMAIN_SEP_ENVELOPE, &body_cbor);
    let vk = VerifyingKey::from_bytes(a.amid().as_bytes()).expect("key");
    let sig = Signature::from_bytes(&sig);
    let verify = time_each(7, 2000, |_| {
        vk.verify(black_box(&signed), &sig).expect("verifies");
    });
    Bound {
        verify,
        decrypt_prekey: decrypt_time(false, 2000, 7),
        decrypt_normal: decrypt_time(true, 2000, 7),
        signed_len: signed.len(),
    }
}

// --- nodes -------------------------------------------------------------------

fn node_config(window: usize) -> Config {
    let mut c = Config::local();
    // The keystore KDF only runs at start; keep it cheap.
    c.kdf = KdfParams::throwaway();
    c.window = window;
    // Measure the data path, not the per-sender message limit.
    c.policy.rate.messages_per_minute = u32::MAX / 2;
    c
}

async fn spawn_node(
    dir: &std::path::Path,
    name: &str,
    window: usize,
    bootstrap: Option<&Node>,
) -> Result<Node, Error> {
    let mut b = Node::builder(node_config(window))
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = bootstrap {
        b = b.bootstraps(boot.listen_addrs().await);
    }
    Ok(b.spawn().await?)
}

async fn node_runs(n: usize, runs: usize, window: usize) -> Result<Vec<Duration>, Error> {
    let dir = match std::env::var_os("AGENTMESH_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let boot = spawn_node(dir.path(), "bootstrap", window, None).await?;
    tokio::time::timeout(JOIN_TIMEOUT, async {
        while boot.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let alice = spawn_node(dir.path(), "alice", window, Some(&boot)).await?;
    let bob = spawn_node(dir.path(), "bob", window, Some(&boot)).await?;
    if !alice.wait_published(JOIN_TIMEOUT).await || !bob.wait_published(JOIN_TIMEOUT).await {
        return Err("cards not published".into());
    }
    let mut inbox = bob.messages().ok_or("inbox already taken")?;
    let to = bob.amid();

    // Warm-up: the KNOCK opens the session; the message stream follows.
    let r = alice.send(&to, payload(u64::MAX)).await?;
    eprintln!(
        "  warm-up delivered over {} (knocked: {})",
        r.path, r.knocked
    );
    inbox.recv().await.ok_or("bob stopped")?;
    alice.send(&to, payload(u64::MAX - 1)).await?;
    inbox.recv().await.ok_or("bob stopped")?;

    let mut out = Vec::with_capacity(runs);
    for run in 0..runs {
        let base = (run as u64) << 32;
        let cpu0 = process_cpu();
        let io0 = process_writes();
        let t0 = Instant::now();
        let sender = {
            let alice = alice.clone();
            tokio::spawn(async move {
                for i in 0..n as u64 {
                    alice.send_nowait(&to, payload(base + i)).await?;
                }
                Ok::<(), agentmesh_node::SendError>(())
            })
        };
        let got = tokio::time::timeout(RUN_TIMEOUT, async {
            let mut got = 0usize;
            while got < n {
                let m = inbox.recv().await.ok_or("bob stopped")?;
                let len = m.payload.as_str().map_or(0, str::len);
                if len != PAYLOAD_BYTES - 2 {
                    return Err::<usize, Error>(format!("payload of {len} chars").into());
                }
                got += 1;
            }
            Ok(got)
        })
        .await??;
        let d = t0.elapsed();
        let busy = cores_busy(cpu0, process_cpu(), d);
        let written = writes_per_msg(io0, process_writes(), got);
        sender.await??;
        let (per_s, mib_s) = rates(got, d);
        eprintln!(
            "  node run {}: {got} msgs in {:.3} s = {per_s:.0} msgs/s, {mib_s:.2} MiB/s, {busy} cores busy, {written}",
            run + 1,
            d.as_secs_f64()
        );
        out.push(d);
    }
    alice.shutdown().await;
    bob.shutdown().await;
    boot.shutdown().await;
    Ok(out)
}

// --- raw quinn -----------------------------------------------------------------

/// The server side of one stream: reads length-prefixed messages, answers
/// each with an ack frame, and reports how many it read and when the last
/// one was complete.
async fn serve_stream(
    send: SendStream,
    recv: RecvStream,
    report: mpsc::Sender<(u64, Instant)>,
) -> Result<(), Error> {
    let mut r = BufReader::with_capacity(64 * 1024, recv);
    let mut w = BufWriter::with_capacity(16 * 1024, send);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    let mut last = Instant::now();
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > buf.len() {
            return Err("frame too large".into());
        }
        r.read_exact(&mut buf[..len]).await?;
        black_box(&buf[..len]);
        n += 1;
        last = Instant::now();
        let mut ack = [0u8; 12];
        ack[..4].copy_from_slice(&8u32.to_be_bytes());
        ack[4..].copy_from_slice(&n.to_be_bytes());
        w.write_all(&ack).await?;
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
    let _ = report.send((n, last)).await;
    w.flush().await?;
    w.get_mut().finish()?;
    Ok(())
}

async fn quinn_pair() -> Result<(Endpoint, quinn::Connection, mpsc::Receiver<(u64, Instant)>), Error>
{
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.key_pair.serialize_der(),
    ));
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key)?;
    let server = Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let server_addr = server.local_addr()?;
    let (report_tx, report_rx) = mpsc::channel(REPORT_QUEUE);
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let report = report_tx.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let report = report.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_stream(send, recv, report).await {
                            eprintln!("  quinn server stream: {e}");
                        }
                    });
                }
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    let mut client = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    client.set_default_client_config(client_config);
    let conn = client.connect(server_addr, "localhost")?.await?;
    Ok((client, conn, report_rx))
}

async fn quinn_runs(n: usize, runs: usize, window: usize) -> Result<Vec<Duration>, Error> {
    let (client, conn, mut reports) = quinn_pair().await?;
    let mut out = Vec::with_capacity(runs + 1);
    // The first run warms the connection up and is not reported.
    for run in 0..=runs {
        let (mut send, recv) = conn.open_bi().await?;
        let slots = Arc::new(Semaphore::new(window.max(1)));
        let acker = {
            let slots = slots.clone();
            tokio::spawn(async move {
                let mut r = BufReader::with_capacity(64 * 1024, recv);
                let mut acked = 0u64;
                let mut frame = [0u8; 12];
                while acked < n as u64 {
                    r.read_exact(&mut frame).await?;
                    acked += 1;
                    slots.add_permits(1);
                }
                Ok::<u64, std::io::Error>(acked)
            })
        };
        let cpu0 = process_cpu();
        let t0 = Instant::now();
        for i in 0..n as u64 {
            slots.acquire().await?.forget();
            let body = serde_json::to_vec(&payload(i))?;
            let mut frame = Vec::with_capacity(4 + body.len());
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(&body);
            send.write_all(&frame).await?;
        }
        send.finish()?;
        let (got, last) = tokio::time::timeout(RUN_TIMEOUT, reports.recv())
            .await?
            .ok_or("quinn server stopped")?;
        acker.await??;
        if got != n as u64 {
            return Err(format!("quinn server read {got} of {n} messages").into());
        }
        let d = last.duration_since(t0);
        let busy = cores_busy(cpu0, process_cpu(), t0.elapsed());
        if run == 0 {
            continue;
        }
        let (per_s, mib_s) = rates(n, d);
        eprintln!(
            "  quinn run {run}: {n} msgs in {:.3} s = {per_s:.0} msgs/s, {mib_s:.2} MiB/s, {busy} cores busy",
            d.as_secs_f64()
        );
        out.push(d);
    }
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(out)
}

// --- main ----------------------------------------------------------------------

fn summary(name: &str, n: usize, runs: &[Duration]) -> f64 {
    let per_s = median(runs.iter().map(|d| rates(n, *d).0).collect());
    let mib_s = per_s * PAYLOAD_BYTES as f64 / (1024.0 * 1024.0);
    let all: Vec<String> = runs
        .iter()
        .map(|d| format!("{:.0}", rates(n, *d).0))
        .collect();
    println!(
        "{name:<12} {per_s:>9.0} msgs/s  {mib_s:>7.2} MiB/s  (median of {}: {})",
        runs.len(),
        all.join(", ")
    );
    per_s
}

fn main() -> Result<(), Error> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // of the kind: then only check that the binary starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench -p agentmesh-node --bench throughput`");
        return Ok(());
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n = env_usize("AGENTMESH_BENCH_MESSAGES", 20_000).max(1);
    let runs = env_usize("AGENTMESH_BENCH_RUNS", 3).max(1);
    let window = env_usize("AGENTMESH_BENCH_WINDOW", Config::local().window).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "throughput: {n} messages of {PAYLOAD_BYTES} B JSON per run, {runs} runs, window {window}, {cores} cores"
    );

    eprintln!("measuring the primitives' bound ...");
    let bound = measure_bound();
    let per_msg = bound.verify + bound.decrypt_prekey;
    let bound_rate = 1.0 / per_msg.as_secs_f64();
    println!(
        "primitives   ed25519 verify ({} B) {:.1} µs, olm decrypt 1 KiB {:.1} µs (pre-key msg; normal msg {:.1} µs)",
        bound.signed_len,
        bound.verify.as_secs_f64() * 1e6,
        bound.decrypt_prekey.as_secs_f64() * 1e6,
        bound.decrypt_normal.as_secs_f64() * 1e6,
    );
    println!(
        "bound        {bound_rate:>9.0} msgs/s  = 1 / (verify + decrypt) = 1 / {:.1} µs, one core",
        per_msg.as_secs_f64() * 1e6
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;

    let only = std::env::var("AGENTMESH_BENCH_ONLY").unwrap_or_default();
    let quinn = if only.is_empty() || only == "quinn" {
        eprintln!("raw quinn ...");
        Some(rt.block_on(quinn_runs(n, runs, window))?)
    } else {
        None
    };
    let node = if only.is_empty() || only == "node" {
        eprintln!("agentmesh nodes ...");
        Some(rt.block_on(node_runs(n, runs, window))?)
    } else {
        None
    };

    let quinn_rate = quinn.map(|q| summary("raw quinn", n, &q));
    let node_rate = node.map(|d| summary("node", n, &d));
    if let Some(node_rate) = node_rate {
        println!(
            "node / bound {:>8.1} %   (target >= 60 %)",
            100.0 * node_rate / bound_rate
        );
        if let Some(quinn_rate) = quinn_rate {
            println!("node / quinn {:>8.1} %", 100.0 * node_rate / quinn_rate);
        }
    }
    Ok(())
}
