//! `agentmesh-bootstrap`: a node that other agents dial to join the network.
//! Prints its addresses (first line, or a JSON object with `--json`), then a
//! status line every 30 s until interrupted.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use agentmesh_node::{Multiaddr, Node};

#[derive(Parser)]
#[command(
    name = "agentmesh-bootstrap",
    version,
    about = "AgentMesh bootstrap node"
)]
struct Cli {
    /// Data directory (keystore, DHT records).
    #[arg(long, env = "AGENTMESH_HOME")]
    data_dir: PathBuf,
    /// Listen address(es). Defaults to QUIC and TCP on 127.0.0.1.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Other bootstrap peers to join.
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    agentmesh_node::daemon::init_process(false);
    let mut config = agentmesh_bootstrap::config();
    if !cli.listen.is_empty() {
        config.transport.listen = cli.listen.clone();
    }
    let expected = config.transport.listen.len();
    let node = Node::builder(config)
        .data_dir(&cli.data_dir)
        .bootstraps(cli.bootstrap.iter().cloned())
        .spawn()
        .await
        .context("starting bootstrap node")?;
    agentmesh_bootstrap::serve(node, expected, cli.json).await?;
    Ok(())
}
