//! # agentmesh-bootstrap
//!
//! A bootstrap node is where new agents join an AgentMesh network: a
//! well-known peer that serves the DHT, so an agent that dials it learns the
//! rest of the overlay. It is a full node (same identity, DHT membership and
//! API) with settings for that role.
//!
//! It also runs the **registry** ([`registry::Registry`]) behind an HTTP API
//! ([`http`], under `/v1`): agent registration and lookup, search by
//! capability with tier and reputation filters, presence, prekey bundles,
//! tier certificates signed by the registry root key, reputation from
//! receipts both sides of a session signed, revocations (a list over HTTP
//! and records in the DHT) and DID documents.
//!
//! The operator watches it on a page of its own with Prometheus metrics
//! ([`operator`], [`metrics`]), on a loopback listener apart from the API.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use agentmesh_bootstrap::{registry::RegistrySettings, start_registry};
//! use agentmesh_node::Passphrase;
//!
//! let dir = std::path::Path::new("/var/lib/agentmesh-bootstrap");
//! let pass = Passphrase::new("correct horse battery staple");
//! let node = agentmesh_node::Node::builder(agentmesh_bootstrap::config())
//!     .data_dir(dir)
//!     .passphrase(pass.clone())
//!     .spawn()
//!     .await?;
//! let running = start_registry(&node, dir, &pass, RegistrySettings::default(),
//!     "127.0.0.1:8080".parse()?).await?;
//! println!("registry at {}", running.url);
//! agentmesh_bootstrap::serve(node, 2, false, Some(running)).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod dns;
pub mod http;
pub mod loopback;
pub mod metrics;
pub mod oauth;
pub mod operator;
pub mod p2p;
pub mod registry;
pub mod storage;
pub mod translog;

use std::{net::SocketAddr, path::Path, time::Duration};

use agentmesh_node::{Config, Multiaddr, Node, Passphrase};
use tracing::warn;

use crate::{
    http::HttpServer,
    operator::OperatorServer,
    registry::{OpenError, Registry, RegistrySettings},
};

/// How often revocations are published in the DHT again.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(12 * 3600);

/// A registry serving HTTP.
#[derive(Debug)]
pub struct RunningRegistry {
    /// The registry.
    pub registry: Registry,
    /// Its HTTP server.
    pub http: HttpServer,
    /// Its libp2p protocol server (`/agentmesh/registry/1`).
    pub p2p: Option<p2p::P2pServer>,
    /// Base URL of the API, e.g. `http://127.0.0.1:8080` (paths start with
    /// `/v1`).
    pub url: String,
    /// The operator's page and metrics, once
    /// [`serve_operator`](RunningRegistry::serve_operator) started them.
    pub operator: Option<OperatorServer>,
}

impl RunningRegistry {
    /// Serves the operator's page and `/metrics` on `addr` (see
    /// [`operator`]); returns its URL.
    pub async fn serve_operator(&mut self, addr: SocketAddr) -> std::io::Result<String> {
        let server =
            OperatorServer::spawn(addr, self.registry.clone(), self.http.metrics.clone()).await?;
        let url = server.url();
        self.operator = Some(server);
        Ok(url)
    }
}

/// Errors starting the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The registry could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The HTTP address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The opening task failed.
    #[error("registry opening task failed")]
    Join,
}

/// Opens the registry in `data_dir` (root keystore under `root/`, database
/// under `registry/`), publishes revocations through `node`, and serves the
/// HTTP API on `http` and the libp2p protocol `/agentmesh/registry/1` on
/// `node`.
pub async fn start_registry(
    node: &Node,
    data_dir: &Path,
    passphrase: &Passphrase,
    mut settings: RegistrySettings,
    http: SocketAddr,
) -> Result<RunningRegistry, StartError> {
    let bind = |source| StartError::Bind { addr: http, source };
    let listener = tokio::net::TcpListener::bind(http).await.map_err(bind)?;
    let url = format!("http://{}", listener.local_addr().map_err(bind)?);
    if settings.public_url.is_empty() {
        settings.public_url = url.clone();
    }
    let dir = data_dir.to_owned();
    let pass = passphrase.clone();
    let registry = tokio::task::spawn_blocking(move || Registry::open(&dir, &pass, settings))
        .await
        .map_err(|_| StartError::Join)??;
    registry.set_node(node.clone());
    let server = HttpServer::serve(registry.clone(), listener).map_err(bind)?;
    let p2p = match p2p::P2pServer::spawn_with_metrics(
        registry.clone(),
        node.stream_control(),
        server.metrics.clone(),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "registry protocol not served");
            None
        }
    };
    Ok(RunningRegistry {
        registry,
        http: server,
        p2p,
        url,
        operator: None,
    })
}

/// Settings of a bootstrap node: a DHT server that advertises the
/// `bootstrap` capability.
pub fn config() -> Config {
    let mut c = Config::local();
    c.capabilities = vec!["bootstrap".into()];
    c.connections = agentmesh_node::ConnectionCaps::server();
    c
}

/// Waits until the node listens on `count` addresses (or 10 s pass) and
/// returns them, QUIC first, each ending in `/p2p/<peer id>`.
pub async fn wait_listening(node: &Node, count: usize) -> Vec<Multiaddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let addrs = node.listen_addrs().await;
        if addrs.len() >= count || tokio::time::Instant::now() >= deadline {
            return addrs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints the node's addresses and the registry URL (a `ready` JSON line
/// with `json`), then a status line every 30 s, until Ctrl-C or SIGTERM;
/// then shuts the registry and the node down. While running, revocations
/// are republished in the DHT every [`REPUBLISH_EVERY`] and the replay
/// store is pruned.
pub async fn serve(
    node: Node,
    expected_listeners: usize,
    json: bool,
    registry: Option<RunningRegistry>,
) -> std::io::Result<()> {
    let addrs = wait_listening(&node, expected_listeners).await;
    let url = registry.as_ref().map(|r| r.url.clone());
    let page = registry
        .as_ref()
        .and_then(|r| r.operator.as_ref())
        .map(OperatorServer::url);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "ready",
                "amid": node.amid(),
                "addrs": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "registry": url,
                "registry_root": registry.as_ref().map(|r| r.registry.root_amid()),
                "page": page,
                "metrics": page.as_ref().map(|p| format!("{p}metrics")),
            })
        );
    } else {
        println!("bootstrap {}", node.amid());
        for a in &addrs {
            println!("{a}");
        }
        if let Some(r) = &registry {
            println!("registry {} (root {})", r.url, r.registry.root_amid());
        }
        if let Some(p) = &page {
            println!("operator page {p} (metrics at {p}metrics)");
        }
    }
    let mut republish = tokio::time::interval(REPUBLISH_EVERY);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = republish.tick() => {
                if let Some(r) = &registry {
                    if let Err(e) = r.registry.republish_revocations() {
                        warn!(error = %e, "republishing revocations failed");
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(r) = &registry {
                    if let Err(e) = r.registry.prune(agentmesh_dht::now_ms()) {
                        warn!(error = %e, "pruning the replay store failed");
                    }
                }
                let s = node.status().await;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event": "status",
                            "connected": s.net.connected.len(),
                            "routing_table": s.net.routing_table,
                            "dht_records": s.net.dht_records,
                        })
                    );
                } else {
                    println!(
                        "status: {} connected, {} in routing table, {} records",
                        s.net.connected.len(),
                        s.net.routing_table,
                        s.net.dht_records
                    );
                }
            }
        }
    }
    if let Some(r) = registry {
        if let Some(o) = r.operator {
            o.shutdown().await;
        }
        r.http.shutdown().await;
        if let Err(e) = r.registry.store().flush().await {
            warn!(error = %e, "flushing the registry failed");
        }
    }
    node.shutdown().await;
    Ok(())
}
