//! `agentmesh-sim`: local networks and simulations.
//!
//! ```text
//! agentmesh-sim devnet [--agents N] [--once]   a whole local network
//! agentmesh-sim natlab [--runs N]               hole punching behind NATs (root)
//! agentmesh-sim scale [--agents N]              many agents in one process
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use agentmesh_bootstrap::registry::RegistrySettings;
use agentmesh_node::{Amid, Config, Multiaddr, Node, Passphrase};
use agentmesh_relay::RelayConfig;
use agentmesh_sim::{
    devnet::{self, DevnetOptions},
    progress::Progress,
    scale::Step,
};

#[derive(Parser)]
#[command(
    name = "agentmesh-sim",
    version,
    about = "AgentMesh local networks and simulations"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a bootstrap and N agents on loopback; they find each other
    /// through the DHT, KNOCK and exchange encrypted messages.
    Devnet {
        /// Number of agents.
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Exit after the exchange instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Keep the network's data here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run two agents behind every pair of NAT kinds (network namespaces,
    /// nftables; needs root) and report how often their relayed connection
    /// became direct, and how fast.
    Natlab {
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
    },
    /// Start a bootstrap, a mailbox relay and N agents in this process (on
    /// loopback), then measure first contacts (DHT lookup, KNOCK,
    /// delivery), messages over the sessions opened, and delivery to
    /// agents that were offline.
    Scale {
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
    },
    /// Simulate a whole agent network in virtual time (10 000 agents and
    /// more): every node runs the DHT's own engine; latency, NATs, relays,
    /// churn and workload come from a scenario. Prints a report and writes
    /// it, CSV files and SVG plots to `--out`.
    Sim {
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
    },
    /// (process role) Run one agent; prints JSON event lines.
    #[command(hide = true)]
    Agent {
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
    },
    /// (process role) Run a relay node; prints JSON event lines.
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        bootstrap: Vec<Multiaddr>,
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// Seconds between status lines.
        #[arg(long, default_value_t = 30)]
        status_every: u64,
    },
    /// (process role) Run a bootstrap node; prints JSON event lines.
    #[command(hide = true)]
    Bootstrap {
        #[arg(long)]
        data_dir: PathBuf,
        /// Addresses to listen on (defaults when none).
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// UDP address of the STUN server. Defaults to port 3478 of the
        /// first listen address when that is not loopback (a lab host).
        #[arg(long)]
        stun_listen: Option<std::net::SocketAddr>,
    },
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

#[tokio::main]
async fn main() -> Result<()> {
    agentmesh_node::daemon::init_process(false);
    match Cli::parse().command {
        Cmd::Devnet { agents, once, dir } => {
            devnet::run(DevnetOptions { agents, once, dir }).await?;
        }
        Cmd::Sim {
            scenario,
            nodes,
            minutes,
            seed,
            out,
            quiet,
        } => {
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
        }
        Cmd::Scale {
            agents,
            messages,
            offline,
            concurrency,
            churn,
        } => {
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
        }
        Cmd::Natlab {
            runs,
            kinds,
            transports,
            delay_ms,
            timeout,
            stream_mib,
        } => {
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
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
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
        }
        Cmd::Agent {
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
        } => {
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
            let mut api = agentmesh_node::api::ApiOptions::new(Some(
                agentmesh_node::daemon::DEFAULT_API_ADDR,
            ));
            api.a2a_listen = a2a;
            api.a2a_upstream = a2a_upstream
                .map(|u| u.parse())
                .transpose()
                .context("--a2a-upstream")?;
            agentmesh_node::daemon::serve_with_api(node, &data_dir, true, api).await?;
        }
        Cmd::Relay {
            data_dir,
            bootstrap,
            listen,
            status_every,
        } => {
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
        }
        Cmd::Bootstrap {
            data_dir,
            listen,
            stun_listen,
        } => {
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
        }
    }
    Ok(())
}
