//! `agentmesh-relay`: a volunteer relay node. Prints its addresses, then a
//! status line (reservations, circuits, stored envelopes, bytes) until
//! interrupted.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;

use agentmesh_node::Multiaddr;
use agentmesh_relay::{daemon, RelayConfig};

#[derive(Parser)]
#[command(name = "agentmesh-relay", version, about = "AgentMesh relay node")]
struct Cli {
    /// Data directory (keystore, mailbox, DHT records).
    #[arg(long, env = "AGENTMESH_HOME")]
    data_dir: PathBuf,
    /// Listen address(es). Defaults to QUIC and TCP on 127.0.0.1.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Bootstrap peer(s) to join, ending in `/p2p/<peer id>`.
    #[arg(long, env = "AGENTMESH_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Limits (TOML: `[circuit]` and `[mailbox]` tables). Defaults apply to
    /// what the file leaves out.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 30)]
    status_every: u64,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    agentmesh_node::daemon::init_process(false);
    let limits = match &cli.config {
        Some(path) => RelayConfig::from_file(path)?,
        None => RelayConfig::default(),
    };
    let mut config = daemon::config();
    if !cli.listen.is_empty() {
        config.transport.listen = cli.listen.clone();
    }
    let expected = config.transport.listen.len();
    let node = daemon::builder(config, limits)
        .data_dir(&cli.data_dir)
        .bootstraps(cli.bootstrap.iter().cloned())
        .spawn()
        .await
        .context("starting relay node")?;
    daemon::serve(
        node,
        expected,
        cli.json,
        Duration::from_secs(cli.status_every),
    )
    .await?;
    Ok(())
}
