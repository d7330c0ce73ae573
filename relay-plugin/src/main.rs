//! `agentmesh-relay`: a volunteer relay node. Prints its addresses and the
//! URL of its page and metrics, then a status line (reservations, circuits,
//! stored envelopes, bytes) until interrupted.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;

use agentmesh_node::{Multiaddr, Node};
use agentmesh_relay::{daemon, dashboard::DashboardServer, RelayConfig, RelayPlugin};

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
    /// Address of the volunteer's page (`/`) and Prometheus metrics
    /// (`/metrics`). Defaults to a free port on 127.0.0.1, printed at start.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    /// Allow `--metrics` on an address other than loopback.
    #[arg(long)]
    metrics_public: bool,
    /// Serve no page and no metrics.
    #[arg(long, conflicts_with_all = ["metrics", "metrics_public"])]
    no_metrics: bool,
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
    if !cli.no_metrics && !cli.metrics.ip().is_loopback() && !cli.metrics_public {
        bail!(
            "--metrics {} is not a loopback address; add --metrics-public to serve the page and metrics there",
            cli.metrics
        );
    }
    let expected = config.transport.listen.len();
    let plugin = RelayPlugin::new(limits);
    let monitor = plugin.monitor();
    let node = Node::builder(config)
        .plugin(plugin)
        .data_dir(&cli.data_dir)
        .bootstraps(cli.bootstrap.iter().cloned())
        .spawn()
        .await
        .context("starting relay node")?;
    let page = if cli.no_metrics {
        None
    } else {
        let server = DashboardServer::spawn(cli.metrics, node.clone(), monitor)
            .await
            .with_context(|| format!("serving the page and metrics on {}", cli.metrics))?;
        tracing::info!(url = %server.url(), "relay page and metrics");
        Some(server)
    };
    daemon::serve_with_page(
        node,
        expected,
        cli.json,
        Duration::from_secs(cli.status_every),
        page.as_ref().map(DashboardServer::url),
    )
    .await?;
    if let Some(server) = page {
        server.shutdown().await;
    }
    Ok(())
}
