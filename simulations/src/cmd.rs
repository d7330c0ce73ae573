//! The subcommands: their arguments and what each runs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use agentmesh_bootstrap::registry::RegistrySettings;
use agentmesh_node::{Amid, Config, Multiaddr, Node, Passphrase};
use agentmesh_relay::RelayConfig;
use agentmesh_sim::{
    devnet::{self, DevnetOptions},
    progress::Progress,
    scale::Step,
};

/// The arguments of `devnet`.
#[derive(Args)]
pub(crate) struct DevnetArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Exit after the exchange instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Keep the network's data here instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DevnetArgs {
    /// Runs `devnet`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self { agents, once, dir } = self;
        devnet::run(DevnetOptions { agents, once, dir }).await?;
        Ok(())
    }
}

/// The arguments of `natlab`.
#[derive(Args)]
pub(crate) struct NatlabArgs {
    /// Runs per NAT pair and transport.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// NAT kinds to pair, comma-separated (full-cone,
    /// address-restricted, port-restricted, symmetric).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full-cone,address-restricted,port-restricted,symmetric"
    )]
    kinds: Vec<agentmesh_sim::netns::NatKind>,
    /// Transports to measure (`quic`, `webrtc`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "quic")]
    transports: Vec<agentmesh_sim::natlab::Transport>,
    /// One-way delay (ms) added to everything the agents send; times
    /// are then also reported in round trips.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Seconds a run waits for the direct connection.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// After each attempt, stream this many MiB from alice to bob over
    /// the path it ended on and report the throughput (0: none).
    #[arg(long, default_value_t = 0)]
    stream_mib: usize,
}

impl NatlabArgs {
    /// Runs `natlab`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            runs,
            kinds,
            transports,
            delay_ms,
            timeout,
            stream_mib,
        } = self;
        // Fails at once, with the reason, without root or the tools.
        drop(agentmesh_sim::netns::Lab::new()?);
        let exe = std::env::current_exe().context("locating this binary")?;
        let delay = (delay_ms > 0).then(|| std::time::Duration::from_millis(delay_ms));
        let opts = agentmesh_sim::natlab::LabOptions {
            runs,
            kinds,
            transports,
            timeout: std::time::Duration::from_secs(timeout),
            delay,
            stream_bytes: stream_mib << 20,
        };
        // Interrupted: the lab is dropped, which stops its processes
        // and deletes its namespaces.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let progress = Progress::stderr(true);
        let results = tokio::select! {
            r = agentmesh_sim::natlab::run_lab(&exe, &opts, &progress) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        };
        progress.finish();
        println!("{}", agentmesh_sim::natlab::table(&results, delay));
        if let Some(t) = agentmesh_sim::natlab::stream_table(&results, stream_mib << 20) {
            println!("{t}");
        }
        Ok(())
    }
}

/// The arguments of `scale`.
#[derive(Args)]
pub(crate) struct ScaleArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Messages in the first-contact phase and again in the session
    /// phase (one per sender/recipient pair).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Recipients that go offline in the last phase.
    #[arg(long, default_value_t = 5)]
    offline: usize,
    /// Messages in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rounds of churn at the end (each stops `--offline` agents while
    /// the others write to them); 0 for none.
    #[arg(long, default_value_t = 3)]
    churn: usize,
}

impl ScaleArgs {
    /// Runs `scale`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            agents,
            messages,
            offline,
            concurrency,
            churn,
        } = self;
        let opts = agentmesh_sim::scale::ScaleOptions {
            agents,
            messages,
            offline,
            concurrency,
            churn,
        };
        // A bar on a terminal (agents started, then each phase's
        // messages), the milestones as lines in a log.
        let progress = Progress::stderr(true);
        let report = tokio::select! {
            r = agentmesh_sim::scale::run(&opts, |step| match step {
                Step::Started { started, total } => {
                    progress.set("agents started", *started as u64, *total as u64);
                    if step.is_milestone() {
                        progress.log_line(&step.to_string());
                    }
                }
                Step::Sending { phase, delivered, total, .. } => progress.set(
                    &format!("{phase}: messages delivered"),
                    *delivered as u64,
                    *total as u64,
                ),
                _ => progress.line(&step.to_string()),
            }) => r?,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        };
        progress.finish();
        print!("{}", report.table());
        let lost: usize = report
            .phases
            .iter()
            .map(|p| p.sent - p.delivered.min(p.sent) + p.errors.len())
            .sum();
        if lost > 0 {
            anyhow::bail!("{lost} messages not delivered");
        }
        Ok(())
    }
}

/// The arguments of `sim`.
#[derive(Args)]
pub(crate) struct SimArgs {
    /// A ready-made scenario (steady, churn, nat-heavy, relay-failure,
    /// flash-crowd) or a scenario file (TOML).
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Number of agents (overrides the scenario's).
    #[arg(long)]
    nodes: Option<u32>,
    /// Virtual minutes to run (overrides the scenario's).
    #[arg(long)]
    minutes: Option<u64>,
    /// Seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write report.txt, CSV files and plots.
    #[arg(long, default_value = "target/sim")]
    out: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

impl SimArgs {
    /// Runs `sim`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            scenario,
            nodes,
            minutes,
            seed,
            out,
            quiet,
        } = self;
        let mut s = agentmesh_sim::sim::Scenario::load(&scenario)?;
        if let Some(n) = nodes {
            s.nodes = n;
        }
        if let Some(m) = minutes {
            s.duration_min = m;
            s.warmup_min = s.warmup_min.min(m / 4);
        }
        if let Some(seed) = seed {
            s.seed = seed;
        }
        s.check()?;
        let started = std::time::Instant::now();
        let report =
            tokio::task::spawn_blocking(move || agentmesh_sim::sim::run(&s, !quiet)).await?;
        let wall = started.elapsed();
        print!("{}", report.text());
        let files = report.write(&out)?;
        println!(
            "\nwall time {:.1} s, peak memory {} MiB; wrote {} to {}",
            wall.as_secs_f64(),
            agentmesh_sim::sim::peak_rss_mib().map_or("?".into(), |m| m.to_string()),
            files.join(", "),
            out.display()
        );
        Ok(())
    }
}

/// The arguments of `agent`.
#[derive(Args)]
pub(crate) struct AgentArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    #[arg(long)]
    block: Vec<Amid>,
    /// Mailbox relay(s).
    #[arg(long = "relay")]
    relays: Vec<Multiaddr>,
    /// Reachable only through relays.
    #[arg(long)]
    private: bool,
    /// Query the DHT without serving it.
    #[arg(long)]
    dht_client: bool,
    /// Addresses to listen on (defaults when none).
    #[arg(long)]
    listen: Vec<Multiaddr>,
    #[arg(long)]
    policy: Option<PathBuf>,
    /// `quic`, `webrtc` or `both`.
    #[arg(long, default_value = "quic")]
    hole_punch: agentmesh_node::HolePunch,
    /// STUN server(s), `host:port`.
    #[arg(long)]
    stun: Vec<String>,
    /// The registry's node: session receipts are filed with it.
    #[arg(long)]
    registry: Option<Multiaddr>,
    /// Serve the A2A gateway on this loopback address.
    #[arg(long)]
    a2a: Option<std::net::SocketAddr>,
    /// Hand A2A requests arriving over the mesh to this A2A server
    /// (its JSON-RPC URL).
    #[arg(long)]
    a2a_upstream: Option<String>,
}

impl AgentArgs {
    /// Runs `agent`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            data_dir,
            bootstrap,
            block,
            relays,
            private,
            dht_client,
            listen,
            policy,
            hole_punch,
            stun,
            registry,
            a2a,
            a2a_upstream,
        } = self;
        let mut config = Config::local();
        config.registry = registry;
        if let Some(file) = policy {
            config.policy = agentmesh_node::Policy::from_file(&file)?;
        }
        config.policy.block.extend(block);
        config.relays = relays;
        if dht_client {
            config.dht.mode = agentmesh_dht::DhtMode::Client;
        }
        if private {
            config.reachability = agentmesh_node::Reachability::Private;
        }
        if !listen.is_empty() {
            config.transport.listen = listen;
        }
        config.hole_punch = hole_punch;
        config.stun_servers = stun;
        let node = Node::builder(config)
            .data_dir(&data_dir)
            .bootstraps(bootstrap)
            .spawn()
            .await
            .context("starting agent")?;
        let mut api =
            agentmesh_node::api::ApiOptions::new(Some(agentmesh_node::daemon::DEFAULT_API_ADDR));
        api.a2a_listen = a2a;
        api.a2a_upstream = a2a_upstream
            .map(|u| u.parse())
            .transpose()
            .context("--a2a-upstream")?;
        agentmesh_node::daemon::serve_with_api(node, &data_dir, true, api).await?;
        Ok(())
    }
}

/// The arguments of `relay`.
#[derive(Args)]
pub(crate) struct RelayArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 30)]
    status_every: u64,
}

impl RelayArgs {
    /// Runs `relay`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            data_dir,
            bootstrap,
            listen,
            status_every,
        } = self;
        let mut config = agentmesh_relay::daemon::config();
        if !listen.is_empty() {
            config.transport.listen = listen;
        }
        let expected = config.transport.listen.len();
        let node = agentmesh_relay::daemon::builder(config, RelayConfig::default())
            .data_dir(&data_dir)
            .bootstraps(bootstrap)
            .spawn()
            .await
            .context("starting relay")?;
        agentmesh_relay::daemon::serve(
            node,
            expected,
            true,
            std::time::Duration::from_secs(status_every),
        )
        .await?;
        Ok(())
    }
}

/// The arguments of `bootstrap`.
#[derive(Args)]
pub(crate) struct BootstrapArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Addresses to listen on (defaults when none).
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// UDP address of the STUN server. Defaults to port 3478 of the
    /// first listen address when that is not loopback (a lab host).
    #[arg(long)]
    stun_listen: Option<std::net::SocketAddr>,
}

impl BootstrapArgs {
    /// Runs `bootstrap`.
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            data_dir,
            listen,
            stun_listen,
        } = self;
        let stun_listen = stun_listen.or_else(|| lab_stun_addr(&listen));
        if let Some(addr) = stun_listen {
            let stun = agentmesh_transports::stun::StunServer::bind(addr)
                .await
                .with_context(|| format!("STUN server on {addr}"))?;
            tracing::info!(%addr, "STUN server listening");
            tokio::spawn(stun.run());
        }
        let mut config = agentmesh_bootstrap::config();
        if !listen.is_empty() {
            config.transport.listen = listen;
        }
        let expected = config.transport.listen.len();
        let pass = Passphrase::from_env().context("keystore passphrase")?;
        let node = Node::builder(config)
            .data_dir(&data_dir)
            .passphrase(pass.clone())
            .spawn()
            .await
            .context("starting bootstrap")?;
        // Embedded defaults: the registry on an ephemeral loopback port.
        let registry = agentmesh_bootstrap::start_registry(
            &node,
            &data_dir,
            &pass,
            RegistrySettings::default(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .context("starting the registry")?;
        agentmesh_bootstrap::serve(node, expected, true, Some(registry)).await?;
        Ok(())
    }
}

/// Port 3478 of the first listen address, unless it is loopback.
fn lab_stun_addr(listen: &[Multiaddr]) -> Option<std::net::SocketAddr> {
    let ip = listen.first()?.iter().find_map(|p| match p {
        agentmesh_transports::libp2p::multiaddr::Protocol::Ip4(ip) => {
            Some(std::net::IpAddr::V4(ip))
        }
        agentmesh_transports::libp2p::multiaddr::Protocol::Ip6(ip) => {
            Some(std::net::IpAddr::V6(ip))
        }
        _ => None,
    })?;
    (!ip.is_loopback()).then(|| std::net::SocketAddr::new(ip, 3478))
}
