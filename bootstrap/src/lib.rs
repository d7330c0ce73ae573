//! # agentmesh-bootstrap
//!
//! A bootstrap node is where new agents join an AgentMesh network: a
//! well-known peer that serves the DHT, so an agent that dials it learns the
//! rest of the overlay. It is a full node (same identity, DHT membership and
//! API) with settings for that role; the registry (tier certificates,
//! reputation, revocation) builds on it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let node = agentmesh_node::Node::builder(agentmesh_bootstrap::config())
//!     .data_dir("/var/lib/agentmesh-bootstrap")
//!     .spawn()
//!     .await?;
//! for addr in agentmesh_bootstrap::wait_listening(&node, 2).await {
//!     println!("{addr}");
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod oauth;
pub mod translog;

use std::time::Duration;

use agentmesh_node::{Config, Multiaddr, Node};

/// Settings of a bootstrap node: a DHT server that advertises the
/// `bootstrap` capability.
pub fn config() -> Config {
    let mut c = Config::local();
    c.capabilities = vec!["bootstrap".into()];
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

/// Prints the node's addresses (a `ready` JSON line with `json`), then a
/// status line every 30 s, until Ctrl-C or SIGTERM; then shuts it down.
pub async fn serve(node: Node, expected_listeners: usize, json: bool) -> std::io::Result<()> {
    let addrs = wait_listening(&node, expected_listeners).await;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "ready",
                "amid": node.amid(),
                "addrs": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("bootstrap {}", node.amid());
        for a in &addrs {
            println!("{a}");
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
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
    node.shutdown().await;
    Ok(())
}
