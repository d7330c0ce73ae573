//! Two agents behind NAT routers, a bootstrap and a relay on the public
//! segment, all real processes in network namespaces ([`crate::netns`]):
//! the setup of the NAT traversal tests and of `agentmesh-sim natlab`,
//! which runs every pair of NAT kinds and reports how often the relayed
//! connection became direct, and how fast.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use agentmesh_node::{
    control::{Client, Request},
    PathKind,
};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::Digest;

use crate::{
    delayline::DelayLine,
    netns::{Lab, NatHost, NatKind},
    process::{
        control_send, control_status, seen_at, start_agent, start_bootstrap_with_registry,
        start_relay, Proc,
    },
    progress::Progress,
};

/// Generous bound on each wait (the machine may be loaded).
pub const WAIT: Duration = Duration::from_secs(90);

/// A running NAT pair. Fields drop in order: processes first, then the
/// namespaces.
#[derive(Debug)]
pub struct NatPair {
    /// The agent that sends first, behind `alice_nat`.
    pub alice: Proc,
    /// The agent that receives first, behind `bob_nat`.
    pub bob: Proc,
    /// The relay (take it to kill it).
    pub relay: Option<Proc>,
    /// The bootstrap.
    pub boot: Proc,
    /// Alice's AMID.
    pub alice_amid: String,
    /// Bob's AMID.
    pub bob_amid: String,
    /// Alice's NAT.
    pub alice_nat: NatHost,
    /// Bob's NAT.
    pub bob_nat: NatHost,
    /// The relay's address.
    pub relay_addr: String,
    /// The bootstrap's address.
    pub boot_addr: String,
    /// Delay lines on the agents' hosts, when asked for.
    _delays: Vec<DelayLine>,
    _dir: tempfile::TempDir,
    /// The namespaces.
    pub lab: Lab,
}

/// Arguments for an agent behind a NAT: QUIC on its LAN address, the
/// relay, the hole punching mode, with the bootstrap's STUN server. Once
/// AutoNAT finds the agent behind its NAT, it only queries the DHT.
fn agent_args(host: &NatHost, relay: &str, hole_punch: &str, stun: &str) -> Vec<String> {
    vec![
        "--listen".into(),
        host.host.quic_listen(),
        "--relay".into(),
        relay.into(),
        "--hole-punch".into(),
        hole_punch.into(),
        "--stun".into(),
        stun.into(),
    ]
}

impl NatPair {
    /// Starts the public side and the two agents, and waits until both
    /// learned their reachability and their cards list a relayed address.
    pub async fn start(exe: &Path, alice_kind: NatKind, bob_kind: NatKind) -> Result<Self> {
        Self::start_opts(exe, alice_kind, bob_kind, "quic", None).await
    }

    /// [`NatPair::start`], with every packet the agents send held for
    /// `delay` (so a direct round trip between them takes twice that).
    pub async fn start_with_delay(
        exe: &Path,
        alice_kind: NatKind,
        bob_kind: NatKind,
        delay: Option<Duration>,
    ) -> Result<Self> {
        Self::start_opts(exe, alice_kind, bob_kind, "quic", delay).await
    }

    /// [`NatPair::start`] with a hole punching mode (`quic`, `webrtc` or
    /// `both`); the bootstrap serves STUN on port 3478 of its address.
    pub async fn start_with(
        exe: &Path,
        alice_kind: NatKind,
        bob_kind: NatKind,
        hole_punch: &str,
    ) -> Result<Self> {
        Self::start_opts(exe, alice_kind, bob_kind, hole_punch, None).await
    }

    /// [`NatPair::start_with`] and [`NatPair::start_with_delay`] in one.
    pub async fn start_opts(
        exe: &Path,
        alice_kind: NatKind,
        bob_kind: NatKind,
        hole_punch: &str,
        delay: Option<Duration>,
    ) -> Result<Self> {
        let mut lab = Lab::new()?;
        let dir = tempfile::tempdir()?;
        let boot_host = lab.public_host("boot")?;
        let relay_host = lab.public_host("relay")?;
        let alice_nat = lab.nat_host("alice", alice_kind)?;
        let bob_nat = lab.nat_host("bob", bob_kind)?;
        let mut delays = Vec::new();
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            delays.push(alice_nat.host.delay_egress(d)?);
            delays.push(bob_nat.host.delay_egress(d)?);
        }
        let (boot, boot_addr, _) = start_bootstrap_with_registry(
            boot_host.launcher(exe),
            &dir.path().join("boot"),
            &[boot_host.quic_listen()],
        )
        .await
        .context("bootstrap")?;
        let (relay, relay_addrs) = start_relay(
            relay_host.launcher(exe),
            &dir.path().join("relay"),
            &boot_addr,
            &[relay_host.quic_listen()],
            &[],
        )
        .await
        .context("relay")?;
        let relay_addr = relay_addrs[0].clone();
        let stun = format!("{}:3478", boot_host.ip);
        let (mut alice, alice_amid) = start_agent(
            alice_nat.host.launcher(exe),
            "alice",
            &dir.path().join("alice"),
            &boot_addr,
            &agent_args(&alice_nat, &relay_addr, hole_punch, &stun),
        )
        .await
        .context("alice")?;
        let (mut bob, bob_amid) = start_agent(
            bob_nat.host.launcher(exe),
            "bob",
            &dir.path().join("bob"),
            &boot_addr,
            &agent_args(&bob_nat, &relay_addr, hole_punch, &stun),
        )
        .await
        .context("bob")?;
        wait_reachable_through_relay(&mut alice)
            .await
            .context("alice")?;
        wait_reachable_through_relay(&mut bob)
            .await
            .context("bob")?;
        Ok(Self {
            alice,
            bob,
            relay: Some(relay),
            boot,
            alice_amid,
            bob_amid,
            alice_nat,
            bob_nat,
            relay_addr,
            boot_addr,
            _delays: delays,
            _dir: dir,
            lab,
        })
    }

    /// Sends `payload` from alice to bob and waits for bob to print it;
    /// returns the path of alice's receipt and of bob's message.
    pub async fn send(&mut self, payload: Value) -> Result<(PathKind, PathKind)> {
        let r = control_send(&self.alice.dir, &self.bob_amid, payload.clone(), WAIT).await?;
        let receipt = r
            .receipt
            .with_context(|| format!("no receipt: {:?}", r.error))?;
        let m = self
            .bob
            .wait_for(WAIT, |v| v["event"] == "message" && v["payload"] == payload)
            .await?;
        let received: PathKind =
            serde_json::from_value(m["path"].clone()).context("message without a path")?;
        Ok((receipt.path, received))
    }

    /// Streams `bytes` from alice to bob (`agentmesh stream`, 16 KiB
    /// chunks, each sealed and acknowledged) over their current connection
    /// and waits until bob has all of it with the right digest. Returns the
    /// path of the connection and the time from the request to bob's
    /// `stream_ended`.
    pub async fn stream(&mut self, bytes: usize) -> Result<(PathKind, Duration)> {
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let digest = hex::encode(sha2::Sha256::digest(&data));
        let file = self._dir.path().join("bulk.bin");
        std::fs::write(&file, &data)?;
        let path = self.path_to_bob().await?;
        let started = Instant::now();
        let mut client = Client::connect(&self.alice.dir).await?;
        let resp = tokio::time::timeout(
            10 * WAIT,
            client.request(&Request::Stream {
                to: self.bob_amid.clone(),
                path: file,
                chunk_size: None,
                capability: None,
            }),
        )
        .await
        .context("stream timed out")??;
        if !resp.ok {
            anyhow::bail!("stream failed: {}", resp.error.unwrap_or_default());
        }
        let alice = self.alice_amid.clone();
        let end = self
            .bob
            .wait_for(WAIT, |v| {
                v["from"] == alice.as_str()
                    && (v["event"] == "stream_ended" || v["event"] == "stream_failed")
            })
            .await?;
        let elapsed = started.elapsed();
        if end["event"] != "stream_ended"
            || end["bytes"] != bytes as u64
            || end["sha256"] != digest.as_str()
        {
            anyhow::bail!("bob received something else: {end}");
        }
        let after = self.path_to_bob().await?;
        if after != path {
            anyhow::bail!("the path changed during the stream: {path} then {after}");
        }
        Ok((path, elapsed))
    }

    /// The path of alice's connection to bob.
    async fn path_to_bob(&self) -> Result<PathKind> {
        let status = control_status(&self.alice.dir).await?;
        status
            .net
            .connected
            .iter()
            .find(|p| p.peer == self.bob_amid)
            .map(|p| p.path)
            .context("alice is not connected to bob")
    }

    /// Sends a first message, which opens a connection (relayed unless
    /// bob's NAT lets alice's direct dial in), and waits for bob to report
    /// the connection direct or the hole punch failed.
    pub async fn attempt(&mut self, timeout: Duration) -> Result<Outcome> {
        let (first, _) = self.send(json!({ "n": 0 })).await?;
        let relayed_at = self
            .bob
            .wait_for(WAIT, |v| {
                v["event"] == "connected" && v["peer"] == self.alice_amid.as_str()
            })
            .await
            .map(|v| (v["path"] == "relayed", seen_at(&v)))?;
        if !relayed_at.0 {
            return Ok(Outcome {
                first_path: first,
                started_relayed: false,
                direct: true,
                time_to_direct: None,
                direct_addr: None,
            });
        }
        let alice = self.alice_amid.clone();
        let end = self
            .bob
            .wait_for(timeout, |v| {
                v["peer"] == alice.as_str()
                    && (v["event"] == "path_upgraded"
                        || (v["event"] == "hole_punch" && v["ok"] == false))
            })
            .await;
        let direct = match &end {
            Ok(v) => v["event"] == "path_upgraded",
            Err(_) => false,
        };
        Ok(Outcome {
            first_path: first,
            started_relayed: relayed_at.0,
            direct,
            time_to_direct: match (&end, direct) {
                (Ok(v), true) => Some(seen_at(v).saturating_sub(relayed_at.1)),
                _ => None,
            },
            direct_addr: end.ok().and_then(|v| v["addr"].as_str().map(str::to_owned)),
        })
    }
}

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The path of the first message's receipt.
    pub first_path: PathKind,
    /// Whether the first connection was relayed.
    pub started_relayed: bool,
    /// Whether it became direct (or was direct from the start).
    pub direct: bool,
    /// From the relayed connection (as bob saw it) to the direct one.
    pub time_to_direct: Option<Duration>,
    /// The direct connection's remote address, as bob saw it.
    pub direct_addr: Option<String>,
}

/// Waits until an agent learned its reachability (behind a NAT, or public
/// through a NAT's translation) and has published a card listing its
/// relayed address.
pub async fn wait_reachable_through_relay(p: &mut Proc) -> Result<()> {
    match reachable_through_relay(p).await {
        Ok(()) => Ok(()),
        // What the agent printed tells why.
        Err(e) => {
            let printed = p.drain();
            Err(e.context(format!("{} printed {printed:?}", p.name)))
        }
    }
}

async fn reachable_through_relay(p: &mut Proc) -> Result<()> {
    p.wait_for(WAIT, |v| {
        v["event"] == "reachability" && v["status"] != "unknown"
    })
    .await
    .context("no reachability found")?;
    let listening = p
        .wait_for(WAIT, |v| {
            v["event"] == "listening"
                && v["addr"]
                    .as_str()
                    .is_some_and(|a| a.contains("/p2p-circuit"))
        })
        .await
        .context("not listening through the relay")?;
    // A card published after the relayed listener came up (an earlier wait
    // may have read it already).
    let since = seen_at(&listening);
    let published = |v: &Value| {
        v["event"] == "card_published" && v["stored_remotely"] == true && seen_at(v) > since
    };
    if p.last_event("card_published").is_some_and(published) {
        return Ok(());
    }
    p.wait_for(WAIT, published)
        .await
        .context("no card published")?;
    Ok(())
}

/// A transport the lab measures hole punching over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC hole punching coordinated by DCUtR over the relayed connection.
    Quic,
    /// WebRTC (ICE with the bootstrap's STUN server) signalled over the
    /// relayed connection.
    WebRtc,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "quic",
            Transport::WebRtc => "webrtc",
        })
    }
}

impl std::str::FromStr for Transport {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quic" => Ok(Transport::Quic),
            "webrtc" => Ok(Transport::WebRtc),
            _ => anyhow::bail!("unknown transport {s:?} (quic, webrtc)"),
        }
    }
}

/// What `natlab` runs.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Runs per NAT pair and transport.
    pub runs: usize,
    /// NAT kinds to pair (every ordered pair of them).
    pub kinds: Vec<NatKind>,
    /// Transports to measure.
    pub transports: Vec<Transport>,
    /// How long a run waits for the direct connection.
    pub timeout: Duration,
    /// One-way delay added to everything the agents send.
    pub delay: Option<Duration>,
    /// After each attempt, stream this many bytes from alice to bob over
    /// the path it ended on (0: no stream).
    pub stream_bytes: usize,
}

/// The results of one NAT pair over one transport.
#[derive(Debug, Clone)]
pub struct PairResult {
    /// Alice's (the sender's) NAT.
    pub alice: NatKind,
    /// Bob's (the receiver's) NAT.
    pub bob: NatKind,
    /// The transport.
    pub transport: Transport,
    /// Runs that completed (set up, first message delivered).
    pub runs: usize,
    /// Of those, runs that ended on a direct connection.
    pub direct: usize,
    /// Of those, runs whose first connection was already direct (no hole
    /// punch needed: the NAT let a direct dial in).
    pub direct_at_once: usize,
    /// Time to direct of each direct run, from the relayed connection.
    pub times: Vec<Duration>,
    /// Runs that could not be set up or lost the first message.
    pub errors: Vec<String>,
    /// Streams measured after the attempts: the path and the time.
    pub streams: Vec<(PathKind, Duration)>,
}

impl PairResult {
    /// Median time to direct.
    pub fn median(&self) -> Option<Duration> {
        let mut t = self.times.clone();
        t.sort();
        match t.len() {
            0 => None,
            n if n % 2 == 1 => Some(t[n / 2]),
            n => Some((t[n / 2 - 1] + t[n / 2]) / 2),
        }
    }
}

/// Runs every ordered pair of `opts.kinds`, `opts.runs` times per
/// transport, telling `progress` of each run as it starts and ends (a line
/// per run, and the runs done).
pub async fn run_lab(exe: &Path, opts: &LabOptions, progress: &Progress) -> Vec<PairResult> {
    let total = opts.kinds.len() * opts.kinds.len() * opts.transports.len() * opts.runs;
    let mut done = 0;
    let mut results = Vec::new();
    for &alice in &opts.kinds {
        for &bob in &opts.kinds {
            for &transport in &opts.transports {
                let mut r = PairResult {
                    alice,
                    bob,
                    transport,
                    runs: 0,
                    direct: 0,
                    direct_at_once: 0,
                    times: Vec::new(),
                    errors: Vec::new(),
                    streams: Vec::new(),
                };
                for run in 1..=opts.runs {
                    progress.set(
                        &format!("{alice} -> {bob} over {transport}, run {run}"),
                        done as u64,
                        total as u64,
                    );
                    done += 1;
                    let started = Instant::now();
                    let outcome = one_run(exe, alice, bob, transport, opts).await;
                    let line = match &outcome {
                        Ok((o, Some(Ok((path, t))))) => format!(
                            "{}; {} MiB streamed over {path} in {} ms",
                            attempt_line(o),
                            opts.stream_bytes >> 20,
                            t.as_millis()
                        ),
                        Ok((o, Some(Err(e)))) => {
                            format!("{}; stream failed: {e:#}", attempt_line(o))
                        }
                        Ok((o, None)) => attempt_line(o),
                        Err(e) => format!("error: {e:#}"),
                    };
                    progress.line(&format!(
                        "[{done}/{total}] {alice} -> {bob} over {transport}, run {run}: {line} ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    ));
                    progress.set("runs done", done as u64, total as u64);
                    match outcome {
                        Ok((o, stream)) => {
                            r.runs += 1;
                            if o.direct {
                                r.direct += 1;
                                r.times.extend(o.time_to_direct);
                            }
                            if !o.started_relayed {
                                r.direct_at_once += 1;
                            }
                            match stream {
                                Some(Ok(s)) => r.streams.push(s),
                                Some(Err(e)) => r.errors.push(format!("stream: {e:#}")),
                                None => {}
                            }
                        }
                        Err(e) => r.errors.push(format!("{e:#}")),
                    }
                }
                results.push(r);
            }
        }
    }
    results
}

/// How an attempt ended, for the progress line.
fn attempt_line(o: &Outcome) -> String {
    match o {
        o if o.direct && !o.started_relayed => "direct at once (no relay needed)".to_owned(),
        o if o.direct => format!(
            "direct after {} ms",
            o.time_to_direct.unwrap_or_default().as_millis()
        ),
        _ => "stayed relayed".to_owned(),
    }
}

async fn one_run(
    exe: &Path,
    alice: NatKind,
    bob: NatKind,
    transport: Transport,
    opts: &LabOptions,
) -> Result<(Outcome, Option<Result<(PathKind, Duration)>>)> {
    let mode = match transport {
        Transport::Quic => "quic",
        Transport::WebRtc => "webrtc",
    };
    let mut pair = NatPair::start_opts(exe, alice, bob, mode, opts.delay).await?;
    let outcome = pair.attempt(opts.timeout).await?;
    let stream = if opts.stream_bytes > 0 {
        Some(pair.stream(opts.stream_bytes).await)
    } else {
        None
    };
    Ok((outcome, stream))
}

/// The results as a Markdown table; with a `delay`, times are also given
/// in round trips between the agents (`2 × delay`).
pub fn table(results: &[PairResult], delay: Option<Duration>) -> String {
    let rtt = delay.filter(|d| !d.is_zero()).map(|d| 2 * d);
    let mut out = String::from(
        "| alice's NAT | bob's NAT | transport | direct | of which at once | success | median time to direct (hole punched) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let rate = if r.runs == 0 {
            "-".to_owned()
        } else {
            format!("{:.0} %", 100.0 * r.direct as f64 / r.runs as f64)
        };
        let median = r
            .median()
            .map(|d| match rtt {
                Some(rtt) => format!(
                    "{} ms ({:.1} RTT)",
                    d.as_millis(),
                    d.as_secs_f64() / rtt.as_secs_f64()
                ),
                None => format!("{} ms", d.as_millis()),
            })
            .unwrap_or_else(|| "-".into());
        let errors = if r.errors.is_empty() {
            String::new()
        } else {
            format!(" ({} failed to run)", r.errors.len())
        };
        out.push_str(&format!(
            "| {} | {} | {} | {}/{}{errors} | {} | {rate} | {median} |\n",
            r.alice, r.bob, r.transport, r.direct, r.runs, r.direct_at_once
        ));
    }
    out
}

/// The streams measured, as a Markdown table: per NAT pair, transport and
/// path, the median time for `bytes` and the throughput it makes. `None`
/// when nothing was streamed.
pub fn stream_table(results: &[PairResult], bytes: usize) -> Option<String> {
    if results.iter().all(|r| r.streams.is_empty()) {
        return None;
    }
    let mut out = String::from(
        "| alice's NAT | bob's NAT | transport | path | streams | median time | throughput |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let mut paths: Vec<PathKind> = r.streams.iter().map(|(p, _)| *p).collect();
        paths.sort_by_key(|p| p.to_string());
        paths.dedup();
        for path in paths {
            let mut times: Vec<Duration> = r
                .streams
                .iter()
                .filter(|(p, _)| *p == path)
                .map(|(_, t)| *t)
                .collect();
            times.sort();
            let n = times.len();
            let median = if n % 2 == 1 {
                times[n / 2]
            } else {
                (times[n / 2 - 1] + times[n / 2]) / 2
            };
            let mib = bytes as f64 / f64::from(1u32 << 20);
            out.push_str(&format!(
                "| {} | {} | {} | {path} | {n} | {} ms | {:.1} MiB/s |\n",
                r.alice,
                r.bob,
                r.transport,
                median.as_millis(),
                mib / median.as_secs_f64().max(1e-9)
            ));
        }
    }
    Some(out)
}
