//! Many agents in one process (`agentmesh-sim scale`): a bootstrap, a
//! mailbox relay and N agents, all real nodes on loopback sockets with
//! their own sled databases. They join through the bootstrap, publish
//! their cards in the DHT, and then exchange messages in three phases:
//!
//! 1. **first contact**: M pairs, each a DHT lookup of the recipient, a
//!    KNOCK that carries the first message, and its delivery receipt;
//! 2. **again**: the same pairs once more, over the sessions opened;
//! 3. **offline**: some recipients stop, messages to them go to their
//!    mailbox relay, and they get them when they start again;
//! 4. **churn**: rounds in which some agents stop while the others write
//!    to everyone they have a session with (online or not), and start
//!    again (on new ports) before the next round.
//!
//! Every message is checked at its recipient: delivered once, to the right
//! agent. A copy that turns up late, while a later phase runs, counts for
//! the phase that sent it; at the end the run settles (the relay holds no
//! mail, and one more message per pair has come through behind everything
//! sent before it) before the duplicates are counted. The report gives, per
//! phase, how many arrived, over which paths, and the time from `send` to
//! its receipt.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use agentmesh_node::{
    crypto::keystore::KdfParams, Amid, Config, Multiaddr, Node, NodeBuilder, Passphrase,
};
use agentmesh_relay::{RelayConfig, RelayPlugin};

/// Generous bound on each wait (the machine may be loaded).
const WAIT: Duration = Duration::from_secs(120);
/// Least depth of the channel that gathers what the agents received.
const COLLECT_DEPTH: usize = 1024;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Number of agents.
    pub agents: usize,
    /// Messages in each of the first two phases (one per pair).
    pub messages: usize,
    /// Recipients that go offline in the third phase.
    pub offline: usize,
    /// Messages in flight at once.
    pub concurrency: usize,
    /// Rounds of the churn phase (0: none); each stops `offline` agents.
    pub churn: usize,
}

/// One phase's outcome.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Its name.
    pub name: &'static str,
    /// Messages sent (receipts received).
    pub sent: usize,
    /// Messages the recipients got, each counted once.
    pub delivered: usize,
    /// Messages a recipient got more than once.
    pub duplicates: usize,
    /// Sends that opened a session with a KNOCK.
    pub knocked: usize,
    /// Receipts per path.
    pub paths: BTreeMap<String, usize>,
    /// From `send` to its receipt, sorted.
    pub latencies: Vec<Duration>,
    /// Sends that failed, with the reason.
    pub errors: Vec<String>,
}

impl Phase {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            sent: 0,
            delivered: 0,
            duplicates: 0,
            knocked: 0,
            paths: BTreeMap::new(),
            latencies: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The `q` quantile (0–1) of the latencies.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let i = ((n as f64 - 1.0) * q).round() as usize;
        self.latencies.get(i.min(n - 1)).copied()
    }
}

/// What a run gave.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// Number of agents.
    pub agents: usize,
    /// From the first agent's start to the last one's card in the DHT.
    pub joined_in: Duration,
    /// The phases, in order.
    pub phases: Vec<Phase>,
}

impl ScaleReport {
    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{} ms", d.as_millis()))
                .unwrap_or_else(|| "-".into())
        };
        let mut out = format!(
            "{} agents joined and published their cards in {:.1} s\n\n\
             | phase | sent | delivered | duplicates | KNOCKs | paths | send → receipt p50 | p90 | max | errors |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            self.agents,
            self.joined_in.as_secs_f64()
        );
        for p in &self.phases {
            let paths: Vec<String> = p.paths.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.name,
                p.sent,
                p.delivered,
                p.duplicates,
                p.knocked,
                paths.join(", "),
                ms(p.quantile(0.5)),
                ms(p.quantile(0.9)),
                ms(p.latencies.last().copied()),
                p.errors.len()
            ));
        }
        out
    }
}

fn config() -> Config {
    let mut c = Config::local();
    // Throwaway identities: a light key derivation keeps N starts quick.
    c.kdf = KdfParams::throwaway();
    c
}

async fn start(
    dir: &Path,
    name: &str,
    mut config: Config,
    bootstrap: &[Multiaddr],
) -> Result<Node> {
    config.relays.dedup();
    start_with(dir, name, Node::builder(config), bootstrap).await
}

async fn start_with(
    dir: &Path,
    name: &str,
    builder: NodeBuilder,
    bootstrap: &[Multiaddr],
) -> Result<Node> {
    builder
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .bootstraps(bootstrap.iter().cloned())
        .spawn()
        .await
        .with_context(|| format!("starting {name}"))
}

/// A message the recipient got: `(recipient index, phase, k)`.
type Got = (usize, String, u64);

/// Every message of the run, whatever its phase: whom it is for and how
/// many copies arrived.
#[derive(Debug, Default)]
struct Ledger {
    /// `(phase, k)` → (recipient, copies received).
    messages: HashMap<(String, u64), (usize, usize)>,
}

impl Ledger {
    /// Message `k` of `phase` is on its way to agent `to`.
    fn expect(&mut self, phase: &str, k: u64, to: usize) {
        self.messages.insert((phase.to_owned(), k), (to, 0));
    }

    /// A copy arrived at agent `at`: an error when no such message was
    /// sent, or it reached another agent than its recipient.
    fn record(&mut self, (at, phase, k): Got) -> Result<()> {
        let Some((to, copies)) = self.messages.get_mut(&(phase.clone(), k)) else {
            bail!("agent {at} got message {phase}/{k}, which was never sent");
        };
        if *to != at {
            bail!("message {phase}/{k} reached agent {at}, not its recipient");
        }
        *copies += 1;
        Ok(())
    }

    /// Messages of `phase` that arrived at least once.
    fn delivered(&self, phase: &str) -> usize {
        self.of(phase).filter(|&c| c > 0).count()
    }

    /// Messages of `phase` sent and not arrived yet.
    fn missing(&self, phase: &str) -> usize {
        self.of(phase).filter(|&c| c == 0).count()
    }

    /// Copies of `phase`'s messages beyond the first.
    fn duplicates(&self, phase: &str) -> usize {
        self.of(phase).map(|c| c.saturating_sub(1)).sum()
    }

    fn of<'a>(&'a self, phase: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.messages
            .iter()
            .filter(move |((p, _), _)| p == phase)
            .map(|(_, &(_, copies))| copies)
    }
}

/// The task forwarding an agent's messages, and how to stop it.
struct Collector {
    task: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

/// Forwards every message agent `i` receives to `tx`, until stopped.
fn collect(i: usize, node: &Node, tx: mpsc::Sender<Got>) -> Result<Collector> {
    let mut inbox = node.messages().context("inbox taken")?;
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            // `recv` is cancel-safe: nothing is lost when stopped.
            let m = tokio::select! {
                m = inbox.recv() => m,
                _ = &mut stopped => None,
            };
            let Some(m) = m else { break };
            let phase = m.payload["phase"].as_str().unwrap_or_default().to_owned();
            let k = m.payload["k"].as_u64().unwrap_or(u64::MAX);
            if tx.send((i, phase, k)).await.is_err() {
                break;
            }
        }
    });
    Ok(Collector { task, stop })
}

/// `count` (sender, recipient) pairs spread over `n` agents, never an agent
/// to itself, and no pair twice until all `n × (n − 1)` are used; the same
/// for the same arguments.
pub fn pairs(n: usize, count: usize) -> Vec<(usize, usize)> {
    if n < 2 {
        return Vec::new();
    }
    (0..count)
        .map(|k| {
            // Round r sends from every agent once, each time to another
            // distance: within n − 1 rounds no distance repeats per sender.
            let (from, round) = (k % n, k / n);
            let step = 1 + (round + from) % (n - 1);
            (from, (from + step) % n)
        })
        .collect()
}

struct Net {
    dir: tempfile::TempDir,
    boot_addrs: Vec<Multiaddr>,
    agent_config: Config,
    agents: Vec<Option<Node>>,
    amids: Vec<Amid>,
    collectors: Vec<Option<Collector>>,
    tx: mpsc::Sender<Got>,
    rx: mpsc::Receiver<Got>,
    ledger: Ledger,
    _boot: Node,
    relay: Node,
}

impl Net {
    fn node(&self, i: usize) -> Result<Node> {
        self.agents[i]
            .clone()
            .with_context(|| format!("agent {i} is offline"))
    }

    /// Sends one message per pair, `concurrency` at a time; with
    /// `wait_delivery`, waits until each recipient got its message.
    async fn phase(
        &mut self,
        name: &'static str,
        pairs: &[(usize, usize)],
        concurrency: usize,
        wait_delivery: bool,
        progress: &impl Fn(&Step),
    ) -> Result<Phase> {
        let mut phase = Phase::new(name);
        self.send_all(&mut phase, pairs, concurrency, 0, progress)
            .await?;
        phase.latencies.sort();
        if wait_delivery {
            self.await_delivery(&mut phase).await?;
        }
        Ok(phase)
    }

    /// Sends one message per pair for `phase`, numbered from `k0`,
    /// `concurrency` at a time, and records the receipts; the ledger learns
    /// which recipient each number is for. `progress` hears of each send
    /// that ends.
    async fn send_all(
        &mut self,
        phase: &mut Phase,
        pairs: &[(usize, usize)],
        concurrency: usize,
        k0: u64,
        progress: &impl Fn(&Step),
    ) -> Result<()> {
        let name = phase.name;
        let mut jobs = JoinSet::new();
        let (mut next, mut done) = (0, 0);
        while next < pairs.len() || !jobs.is_empty() {
            while next < pairs.len() && jobs.len() < concurrency.max(1) {
                let (from, to) = pairs[next];
                let k = k0 + next as u64;
                self.ledger.expect(name, k, to);
                let (node, amid) = (self.node(from)?, self.amids[to]);
                jobs.spawn(async move {
                    let started = Instant::now();
                    let payload = json!({ "phase": name, "k": k });
                    let r = tokio::time::timeout(WAIT, node.send(&amid, payload)).await;
                    (started.elapsed(), r)
                });
                next += 1;
            }
            match jobs.join_next().await {
                Some(Ok((took, Ok(Ok(receipt))))) => {
                    phase.sent += 1;
                    phase.knocked += usize::from(receipt.knocked);
                    *phase.paths.entry(receipt.path.to_string()).or_default() += 1;
                    phase.latencies.push(took);
                }
                Some(Ok((_, Ok(Err(e))))) => phase.errors.push(e.to_string()),
                Some(Ok((_, Err(_)))) => phase.errors.push("send timed out".into()),
                Some(Err(e)) => phase.errors.push(e.to_string()),
                None => continue,
            }
            done += 1;
            progress(&Step::Sending {
                phase: name,
                done,
                delivered: phase.sent,
                total: pairs.len(),
            });
        }
        Ok(())
    }

    /// `rounds` rounds: `per_round` agents stop, every online agent writes
    /// to the recipients of its `pairs` (stopped or not), and the stopped
    /// ones start again; then every message must arrive once.
    async fn churn(
        &mut self,
        pairs: &[(usize, usize)],
        rounds: usize,
        per_round: usize,
        concurrency: usize,
        progress: &impl Fn(&Step),
    ) -> Result<Phase> {
        let n = self.agents.len();
        let per_round = per_round.min(n - 1);
        let mut phase = Phase::new("churn");
        let mut k0 = 0;
        for round in 0..rounds {
            let stopped: Vec<usize> = (0..per_round)
                .map(|j| (round * per_round + j) % n)
                .collect();
            for &i in &stopped {
                self.stop(i).await?;
            }
            let online: Vec<(usize, usize)> = pairs
                .iter()
                .copied()
                .filter(|(from, _)| !stopped.contains(from))
                .collect();
            self.send_all(&mut phase, &online, concurrency, k0, progress)
                .await?;
            k0 += online.len() as u64;
            for &i in &stopped {
                self.restart(i).await?;
            }
            progress(&Step::Note(format!(
                "churn round {}/{rounds}: {} stopped and started again, {} sent",
                round + 1,
                stopped.len(),
                online.len()
            )));
        }
        phase.latencies.sort();
        self.await_delivery(&mut phase).await?;
        Ok(phase)
    }

    /// Reads what the recipients got, of any phase, until every message
    /// of `phase` arrived, or the wait is over. Copies of other phases'
    /// messages count for those phases.
    async fn await_delivery(&mut self, phase: &mut Phase) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.ledger.missing(phase.name) > 0 {
            let Ok(Some(got)) = tokio::time::timeout_at(deadline, self.rx.recv()).await else {
                break;
            };
            self.ledger.record(got)?;
        }
        phase.delivered = self.ledger.delivered(phase.name);
        Ok(())
    }

    /// Waits until no copy of any message can still arrive, so that the
    /// duplicates can be counted: the relay holds no mail (no later drain
    /// has anything to deliver), then one more message per pair goes over
    /// the sessions used, and arrives behind whatever its sender sent
    /// before (one stream per pair, one inbox per agent, in order).
    async fn settle(&mut self, pairs: &[(usize, usize)], concurrency: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let held = self.relay.status().await.net.relay.unwrap_or_default();
            if held.envelopes == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the relay still holds {} envelopes", held.envelopes);
            }
            // Meanwhile, collect what the drains deliver.
            if let Ok(Some(got)) =
                tokio::time::timeout(Duration::from_millis(200), self.rx.recv()).await
            {
                self.ledger.record(got)?;
            }
        }
        let mut settle = Phase::new("settle");
        self.send_all(&mut settle, pairs, concurrency, 0, &|_: &Step| {})
            .await?;
        if let Some(e) = settle.errors.first() {
            bail!("settling: {e}");
        }
        self.await_delivery(&mut settle).await?;
        if settle.delivered < pairs.len() {
            bail!(
                "settling: {} of {} messages arrived",
                settle.delivered,
                pairs.len()
            );
        }
        Ok(())
    }

    async fn stop(&mut self, i: usize) -> Result<()> {
        let node = self.agents[i].take().context("already offline")?;
        node.shutdown().await;
        // The inbox holds the node's database open: let it go.
        if let Some(c) = self.collectors[i].take() {
            let _ = c.stop.send(());
            tokio::time::timeout(WAIT, c.task)
                .await
                .context("the inbox did not close")??;
        }
        Ok(())
    }

    /// Starts agent `i` again on its data directory; its database is free
    /// once the stopped node's tasks have ended.
    async fn restart(&mut self, i: usize) -> Result<()> {
        let name = format!("agent-{i}");
        let deadline = tokio::time::Instant::now() + WAIT;
        let node = loop {
            match start(
                self.dir.path(),
                &name,
                self.agent_config.clone(),
                &self.boot_addrs,
            )
            .await
            {
                Ok(node) => break node,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "{name} not started yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.collectors[i] = Some(collect(i, &node, self.tx.clone())?);
        self.agents[i] = Some(node);
        Ok(())
    }
}

/// What [`run`] tells its `progress` callback as it goes. Its `Display`
/// is the line a log shows; [`Step::is_milestone`] says which steps a log
/// that shows one line per step prints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// `started` of `total` agents are up.
    Started {
        /// Agents up.
        started: usize,
        /// Agents to start.
        total: usize,
    },
    /// In phase `phase`, `done` of `total` sends have ended, `delivered`
    /// of them with the recipient's receipt.
    Sending {
        /// The phase.
        phase: &'static str,
        /// Sends ended (delivered or failed).
        done: usize,
        /// Sends delivered.
        delivered: usize,
        /// Sends in the phase (or churn round).
        total: usize,
    },
    /// Anything else worth a line: a phase's result, recipients stopped.
    Note(String),
}

impl Step {
    /// Whether a log of one line per step shows this one: every tenth
    /// agent started and the last, and every note; not each message.
    pub fn is_milestone(&self) -> bool {
        match self {
            Step::Started { started, total } => started % 10 == 0 || started == total,
            Step::Sending { .. } => false,
            Step::Note(_) => true,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Started { started, total } => write!(f, "started {started}/{total} agents"),
            Step::Sending {
                phase,
                done,
                delivered,
                total,
            } => write!(f, "{phase}: {delivered}/{total} delivered, {done} ended"),
            Step::Note(line) => f.write_str(line),
        }
    }
}

/// Runs the simulation; `progress` is told what happens as it happens.
pub async fn run(opts: &ScaleOptions, progress: impl Fn(&Step)) -> Result<ScaleReport> {
    let note = |line: String| progress(&Step::Note(line));
    if opts.agents < 2 {
        bail!("at least two agents");
    }
    let dir = tempfile::tempdir()?;
    let boot = start(dir.path(), "boot", config(), &[]).await?;
    let boot_addrs = boot.wait_listening(1, WAIT).await;
    if boot_addrs.is_empty() {
        bail!("the bootstrap does not listen");
    }
    let relay_node = Node::builder(config()).plugin(RelayPlugin::new(RelayConfig::default()));
    let relay = start_with(dir.path(), "relay", relay_node, &boot_addrs).await?;
    let relay_addr = relay
        .wait_listening(1, WAIT)
        .await
        .into_iter()
        .next()
        .context("the relay does not listen")?;
    let mut agent_config = config();
    agent_config.relays = vec![relay_addr];

    // Room for every message of the run (the settling round too): a
    // collector never waits.
    let (tx, rx) =
        mpsc::channel(COLLECT_DEPTH.max((3 + opts.churn) * opts.messages + opts.offline));
    let started = Instant::now();
    let mut agents = Vec::new();
    let mut collectors = Vec::new();
    for i in 0..opts.agents {
        let node = start(
            dir.path(),
            &format!("agent-{i}"),
            agent_config.clone(),
            &boot_addrs,
        )
        .await?;
        collectors.push(Some(collect(i, &node, tx.clone())?));
        agents.push(Some(node));
        progress(&Step::Started {
            started: i + 1,
            total: opts.agents,
        });
    }
    for (i, a) in agents.iter().enumerate() {
        let a = a.as_ref().context("agent missing")?;
        if !a.wait_published(WAIT).await {
            bail!("agent {i} did not publish its card");
        }
    }
    let joined_in = started.elapsed();
    note(format!(
        "all {} cards published in {:.1} s",
        opts.agents,
        joined_in.as_secs_f64()
    ));
    let amids = agents
        .iter()
        .map(|a| a.as_ref().map(Node::amid).context("agent missing"))
        .collect::<Result<Vec<_>>>()?;
    let mut net = Net {
        dir,
        boot_addrs,
        agent_config,
        agents,
        amids,
        collectors,
        tx,
        rx,
        ledger: Ledger::default(),
        _boot: boot,
        relay,
    };

    let first = pairs(opts.agents, opts.messages);
    let mut phases = Vec::new();
    let p = net
        .phase("first contact", &first, opts.concurrency, true, &progress)
        .await?;
    note(format!(
        "first contact: {}/{} delivered",
        p.delivered,
        first.len()
    ));
    phases.push(p);
    let p = net
        .phase("again", &first, opts.concurrency, true, &progress)
        .await?;
    note(format!("again: {}/{} delivered", p.delivered, first.len()));
    phases.push(p);

    // Recipients that go offline, each with a sender it has a session with.
    let mut offline: Vec<(usize, usize)> = Vec::new();
    for &(from, to) in &first {
        if offline.len() == opts.offline {
            break;
        }
        let taken = |i: usize| offline.iter().any(|&(f, t)| f == i || t == i);
        if !taken(from) && !taken(to) {
            offline.push((from, to));
        }
    }
    for &(_, to) in &offline {
        net.stop(to).await?;
    }
    note(format!("{} recipients stopped", offline.len()));
    let mut p = net
        .phase("offline", &offline, opts.concurrency, false, &progress)
        .await?;
    for &(_, to) in &offline {
        net.restart(to).await?;
    }
    note(format!("{} recipients started again", offline.len()));
    net.await_delivery(&mut p).await?;
    note(format!(
        "offline: {}/{} delivered",
        p.delivered,
        offline.len()
    ));
    phases.push(p);

    if opts.churn > 0 {
        let p = net
            .churn(
                &first,
                opts.churn,
                opts.offline,
                opts.concurrency,
                &progress,
            )
            .await?;
        note(format!("churn: {}/{} delivered", p.delivered, p.sent));
        phases.push(p);
    }
    net.settle(&first, opts.concurrency).await?;
    for p in &mut phases {
        p.duplicates = net.ledger.duplicates(p.name);
    }

    for i in 0..net.agents.len() {
        if net.agents[i].is_some() {
            net.stop(i).await?;
        }
    }
    Ok(ScaleReport {
        agents: opts.agents,
        joined_in,
        phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_shows_every_tenth_agent_and_the_notes_not_each_message() {
        let started = |started| Step::Started { started, total: 25 };
        let shown: Vec<String> = (1..=25)
            .map(started)
            .chain([
                Step::Sending {
                    phase: "again",
                    done: 3,
                    delivered: 2,
                    total: 9,
                },
                Step::Note("again: 9/9 delivered".into()),
            ])
            .filter(Step::is_milestone)
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "started 10/25 agents",
                "started 20/25 agents",
                "started 25/25 agents",
                "again: 9/9 delivered"
            ]
        );
    }

    #[test]
    fn pairs_spread_and_never_self() {
        let p = pairs(8, 40);
        assert_eq!(p.len(), 40);
        assert!(p.iter().all(|(a, b)| a != b && *a < 8 && *b < 8));
        // Every agent sends and receives.
        for i in 0..8 {
            assert!(p.iter().any(|(a, _)| *a == i));
            assert!(p.iter().any(|(_, b)| *b == i));
        }
        assert_eq!(p, pairs(8, 40));
        assert!(pairs(1, 5).is_empty());
        // All 56 ordered pairs before any repeats.
        let mut all = pairs(8, 56);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 56);
    }

    #[test]
    fn late_copies_count_for_the_phase_that_sent_them() {
        let mut l = Ledger::default();
        l.expect("first contact", 0, 1);
        l.record((1, "first contact".into(), 0)).unwrap();
        l.expect("again", 0, 1);
        assert_eq!((l.delivered("again"), l.missing("again")), (0, 1));
        // While "again" is awaited, a second copy of the first phase's
        // message turns up: it is a duplicate of that phase.
        l.record((1, "first contact".into(), 0)).unwrap();
        l.record((1, "again".into(), 0)).unwrap();
        assert_eq!(l.duplicates("first contact"), 1);
        assert_eq!(l.duplicates("again"), 0);
        assert_eq!((l.delivered("again"), l.missing("again")), (1, 0));
        // Wrong recipient, or never sent: errors.
        assert!(l.record((2, "again".into(), 0)).is_err());
        assert!(l.record((1, "again".into(), 7)).is_err());
    }

    #[test]
    fn quantiles() {
        let mut p = Phase::new("x");
        assert_eq!(p.quantile(0.5), None);
        p.latencies = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(p.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(p.quantile(1.0), Some(Duration::from_millis(10)));
        assert_eq!(p.quantile(0.5), Some(Duration::from_millis(6)));
    }
}
