//! `agentmesh-sim`: local networks and simulations.
//!
//! ```text
//! agentmesh-sim devnet [--agents N] [--once]   a whole local network
//! agentmesh-sim natlab [--runs N]               hole punching behind NATs (root)
//! agentmesh-sim scale [--agents N]              many agents in one process
//! ```

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Devnet(cmd::DevnetArgs),
    /// Run two agents behind every pair of NAT kinds (network namespaces,
    /// nftables; needs root) and report how often their relayed connection
    /// became direct, and how fast.
    Natlab(cmd::NatlabArgs),
    /// Start a bootstrap, a mailbox relay and N agents in this process (on
    /// loopback), then measure first contacts (DHT lookup, KNOCK,
    /// delivery), messages over the sessions opened, and delivery to
    /// agents that were offline.
    Scale(cmd::ScaleArgs),
    /// Simulate a whole agent network in virtual time (10 000 agents and
    /// more): every node runs the DHT's own engine; latency, NATs, relays,
    /// churn and workload come from a scenario. Prints a report and writes
    /// it, CSV files and SVG plots to `--out`.
    Sim(cmd::SimArgs),
    /// (process role) Run one agent; prints JSON event lines.
    #[command(hide = true)]
    Agent(cmd::AgentArgs),
    /// (process role) Run a relay node; prints JSON event lines.
    #[command(hide = true)]
    Relay(cmd::RelayArgs),
    /// (process role) Run a bootstrap node; prints JSON event lines.
    #[command(hide = true)]
    Bootstrap(cmd::BootstrapArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    agentmesh_node::daemon::init_process(false);
    match Cli::parse().command {
        Cmd::Devnet(args) => args.run().await,
        Cmd::Natlab(args) => args.run().await,
        Cmd::Scale(args) => args.run().await,
        Cmd::Sim(args) => args.run().await,
        Cmd::Agent(args) => args.run().await,
        Cmd::Relay(args) => args.run().await,
        Cmd::Bootstrap(args) => args.run().await,
    }
}
