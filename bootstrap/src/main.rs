//! `agentmesh-bootstrap`: a node that other agents dial to join the network,
//! and the registry's HTTP API. Prints its addresses and the registry URL
//! (or a JSON `ready` object with `--json`), then a status line every 30 s
//! until interrupted.
//!
//! Settings come from a TOML file (`--config`, see `config.dev.toml` and
//! `config.prod.toml`); command-line flags override it; without either,
//! embedded defaults serve on loopback.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;

use agentmesh_bootstrap::{
    dns::DnsVerifier,
    oauth::{OAuth, ProviderConfig},
    registry::{
        RegistrySettings, DEFAULT_HTTP_MAX_IN_FLIGHT, DEFAULT_HTTP_RATE, DEFAULT_PREKEY_RATE,
    },
};
use agentmesh_node::{knock::ratelimit::RateLimit, MemoryCap, Multiaddr, Node, Passphrase};

#[derive(Parser)]
#[command(
    name = "agentmesh-bootstrap",
    version,
    about = "AgentMesh bootstrap node and registry"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "AGENTMESH_BOOTSTRAP_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (keystores, DHT records, registry database).
    #[arg(long, env = "AGENTMESH_HOME")]
    data_dir: Option<PathBuf>,
    /// Listen address(es). Defaults to QUIC and TCP on 127.0.0.1.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Other bootstrap peers to join.
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// HTTP address of the registry API. Defaults to 127.0.0.1:8080.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Do not run the registry, only the bootstrap node.
    #[arg(long)]
    no_registry: bool,
    /// PostgreSQL URL of a registry database shared with other bootstrap
    /// nodes (`postgres://user:password@host/db`). Defaults to an embedded
    /// database in the data directory.
    #[arg(long, env = "AGENTMESH_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// UDP address of a STUN binding server to run (for WebRTC ICE), e.g.
    /// `0.0.0.0:3478`. Defaults to none.
    #[arg(long)]
    stun_listen: Option<SocketAddr>,
    /// Address of the operator's page (`/`) and Prometheus metrics
    /// (`/metrics`). Defaults to a free port on 127.0.0.1, printed at start.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Allow `--metrics` on an address other than loopback.
    #[arg(long)]
    metrics_public: bool,
    /// Serve no operator's page and no metrics.
    #[arg(long, conflicts_with_all = ["metrics", "metrics_public"])]
    no_metrics: bool,
    /// Refuse new connections while this process's resident memory is
    /// over this: a share of the system's memory (`90%`), a size
    /// (`2GiB`, bytes) or `off`. Defaults to `max_memory` in the config,
    /// else 90 %.
    #[arg(long, env = "AGENTMESH_MAX_MEMORY")]
    max_memory: Option<MemoryCap>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    /// Data directory.
    data_dir: Option<PathBuf>,
    /// libp2p listen addresses.
    listen: Vec<Multiaddr>,
    /// Other bootstrap peers.
    bootstrap: Vec<Multiaddr>,
    /// Registry settings.
    registry: RegistryFile,
    /// OAuth provider for tier 1.
    oauth: Option<OAuthFile>,
    /// DNS resolver for tier 1.5.
    dns: Option<DnsFile>,
    /// UDP address of a STUN binding server to run.
    stun_listen: Option<SocketAddr>,
    /// The operator's page and metrics.
    operator: OperatorFile,
    /// Resident memory over which new connections are refused (`90%`,
    /// `2GiB`, `off`).
    max_memory: Option<MemoryCap>,
    /// The DHT namespaces this node stores records of, exact (`card`) or
    /// by prefix (`rv-*`); every namespace when empty (the default).
    dht_namespaces: Vec<String>,
}

/// The operator's page and metrics.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OperatorFile {
    /// Serve them.
    enabled: bool,
    /// Listen address (a free loopback port by default).
    metrics: SocketAddr,
    /// Allow an address other than loopback.
    metrics_public: bool,
}

impl Default for OperatorFile {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_public: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RegistryFile {
    /// Serve the registry.
    enabled: bool,
    /// HTTP listen address.
    http: SocketAddr,
    /// Public URL of the API (without `/v1`).
    public_url: Option<String>,
    /// Relays named in DID documents.
    relays: Vec<String>,
    /// Tier 1 certificate validity, days.
    agent_cert_days: u64,
    /// Organization certificate validity, days.
    org_cert_days: u64,
    /// Take client addresses from X-Forwarded-For.
    trust_forwarded_for: bool,
    /// Requests per client address over HTTP, `{ per_minute, burst }`.
    http_rate: RateLimit,
    /// Prekey fetches per client address, `{ per_minute, burst }`.
    prekey_rate: RateLimit,
    /// Requests per peer over libp2p, `{ per_minute, burst }`.
    p2p_rate: RateLimit,
    /// Signed requests per signing agent, `{ per_minute, burst }`.
    signer_rate: RateLimit,
    /// HTTP requests served at once.
    http_max_in_flight: usize,
    /// PostgreSQL URL of a shared registry database (none: embedded).
    database: Option<String>,
}

impl Default for RegistryFile {
    fn default() -> Self {
        Self {
            enabled: true,
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            relays: Vec::new(),
            agent_cert_days: 365,
            org_cert_days: 365,
            trust_forwarded_for: false,
            http_rate: DEFAULT_HTTP_RATE,
            prekey_rate: DEFAULT_PREKEY_RATE,
            p2p_rate: DEFAULT_HTTP_RATE,
            signer_rate: agentmesh_bootstrap::registry::DEFAULT_SIGNER_RATE,
            http_max_in_flight: DEFAULT_HTTP_MAX_IN_FLIGHT,
            database: None,
        }
    }
}

/// OAuth/OIDC provider (tier 1 verification).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthFile {
    /// `github`, `google`, or any other name for a generic OpenID Connect
    /// provider (then the three URLs are required).
    provider: String,
    /// Client id.
    client_id: String,
    /// File holding the client secret.
    client_secret_file: PathBuf,
    /// Redirect URL registered with the provider: the registry's
    /// `/v1/auth/oauth/callback`. Defaults to that path under the
    /// registry's public URL.
    redirect_url: Option<String>,
    /// Authorization endpoint (generic OIDC).
    authorize_url: Option<String>,
    /// Token endpoint (generic OIDC).
    token_url: Option<String>,
    /// User-info endpoint (generic OIDC).
    userinfo_url: Option<String>,
}

impl OAuthFile {
    fn provider(&self, registry_url: &str) -> Result<ProviderConfig> {
        let redirect = self
            .redirect_url
            .clone()
            .unwrap_or_else(|| format!("{registry_url}/v1/auth/oauth/callback"));
        let secret = std::fs::read_to_string(&self.client_secret_file)
            .with_context(|| format!("reading {}", self.client_secret_file.display()))?
            .trim()
            .to_owned();
        Ok(match self.provider.as_str() {
            "github" => ProviderConfig::github(&self.client_id, secret, &redirect),
            "google" => ProviderConfig::google(&self.client_id, secret, &redirect),
            name => ProviderConfig::oidc(
                name,
                self.authorize_url.clone().context("oauth.authorize_url")?,
                self.token_url.clone().context("oauth.token_url")?,
                self.userinfo_url.clone().context("oauth.userinfo_url")?,
                &self.client_id,
                secret,
                &redirect,
            ),
        })
    }
}

/// DNS resolver (tier 1.5 verification).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsFile {
    /// Nameserver address, e.g. `1.1.1.1:53`.
    resolver: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    agentmesh_node::daemon::init_process(false);
    let file: FileConfig = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = cli
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .context("no data directory: --data-dir, AGENTMESH_HOME or data_dir in the config")?;
    let mut config = agentmesh_bootstrap::config();
    if !cli.listen.is_empty() {
        config.transport.listen = cli.listen.clone();
    } else if !file.listen.is_empty() {
        config.transport.listen = file.listen.clone();
    }
    if let Some(cap) = cli.max_memory.or(file.max_memory) {
        config.connections.max_memory = cap;
    }
    if !file.dht_namespaces.is_empty() {
        config.dht.store.namespaces = file.dht_namespaces.clone();
    }
    let expected = config.transport.listen.len();
    let operator = (!cli.no_metrics && file.operator.enabled)
        .then(|| cli.metrics.unwrap_or(file.operator.metrics));
    if let Some(addr) = operator {
        let public_ok = cli.metrics_public || file.operator.metrics_public;
        if !(addr.ip().is_loopback() || public_ok) {
            bail!(
                "the operator's page on {addr} is not on loopback; add --metrics-public (or metrics_public = true under [operator]) to serve it there"
            );
        }
    }
    if let Some(addr) = cli.stun_listen.or(file.stun_listen) {
        let stun = agentmesh_transports::stun::StunServer::bind(addr)
            .await
            .with_context(|| format!("STUN server on {addr}"))?;
        let bound = stun.local_addr()?;
        tracing::info!(addr = %bound, "STUN server listening");
        tokio::spawn(async move {
            if let Err(e) = stun.run().await {
                tracing::error!(error = %e, "STUN server stopped");
            }
        });
    }
    let pass = Passphrase::from_env().context("keystore passphrase")?;
    let node = Node::builder(config)
        .data_dir(&data_dir)
        .passphrase(pass.clone())
        .bootstraps(cli.bootstrap.iter().chain(&file.bootstrap).cloned())
        .spawn()
        .await
        .context("starting bootstrap node")?;
    let registry = if cli.no_registry || !file.registry.enabled {
        None
    } else {
        let r = &file.registry;
        let http = cli.http.unwrap_or(r.http);
        let mut settings = RegistrySettings::default();
        settings.public_url = r.public_url.clone().unwrap_or_default();
        settings.relays = r.relays.clone();
        settings.agent_cert_validity = Duration::from_secs(r.agent_cert_days * 86_400);
        settings.org_cert_validity = Duration::from_secs(r.org_cert_days * 86_400);
        settings.trust_forwarded_for = r.trust_forwarded_for;
        settings.http_rate = r.http_rate;
        settings.prekey_rate = r.prekey_rate;
        settings.p2p_rate = r.p2p_rate;
        settings.signer_rate = r.signer_rate;
        settings.http_max_in_flight = r.http_max_in_flight;
        settings.database = cli.database.clone().or_else(|| r.database.clone());
        let mut running =
            agentmesh_bootstrap::start_registry(&node, &data_dir, &pass, settings, http)
                .await
                .context("starting the registry")?;
        if let Some(addr) = operator {
            let url = running
                .serve_operator(addr)
                .await
                .with_context(|| format!("serving the operator's page on {addr}"))?;
            tracing::info!(%url, "operator page and metrics");
        }
        let public = running.registry.settings().public_url.clone();
        if let Some(o) = &file.oauth {
            running
                .registry
                .set_oauth(OAuth::new(o.provider(&public)?).context("OAuth provider")?);
        }
        if let Some(d) = &file.dns {
            let verifier = DnsVerifier::new(d.resolver).context("DNS resolver")?;
            running.registry.set_domain_verifier(Arc::new(verifier));
        }
        Some(running)
    };
    agentmesh_bootstrap::serve(node, expected, cli.json, registry).await?;
    Ok(())
}
