//! Running a node as a volunteer relay: the settings of a relay node, and
//! the loop of the `agentmesh-relay` binary (addresses, then status lines).
//!
//! The relay is a full node (identity, DHT membership) that carries the
//! [`RelayPlugin`] and announces itself in the DHT, so agents find it
//! without configuration.

use std::time::Duration;

use agentmesh_node::{Config, Node, NodeBuilder};

use crate::{RelayConfig, RelayPlugin};

/// Settings of a relay node: a DHT server whose card advertises nothing
/// but the `relay` capability (which the plugin adds).
pub fn config() -> Config {
    let mut c = Config::local();
    c.capabilities = Vec::new();
    c.connections = agentmesh_node::ConnectionCaps::server();
    c
}

/// A builder of a relay node: [`config`] with `config`'s transport
/// settings left to the caller, carrying a [`RelayPlugin`] with `limits`.
pub fn builder(config: Config, limits: RelayConfig) -> NodeBuilder {
    Node::builder(config).plugin(RelayPlugin::new(limits))
}

/// Prints the relay's addresses (a `ready` JSON line with `json`), then a
/// status line every `every` (reservations, circuits, stored envelopes and
/// bytes), until Ctrl-C or SIGTERM; then shuts the node down.
pub async fn serve(
    node: Node,
    expected_listeners: usize,
    json: bool,
    every: Duration,
) -> std::io::Result<()> {
    serve_with_page(node, expected_listeners, json, every, None).await
}

/// [`serve`], naming in the `ready` line (field `page`, or a `page` line)
/// the URL of the relay's page and metrics
/// ([`DashboardServer::url`](crate::dashboard::DashboardServer::url)).
pub async fn serve_with_page(
    node: Node,
    expected_listeners: usize,
    json: bool,
    every: Duration,
    page: Option<String>,
) -> std::io::Result<()> {
    let addrs = node
        .wait_listening(expected_listeners, Duration::from_secs(10))
        .await;
    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "ready",
                "role": "relay",
                "amid": node.amid(),
                "addrs": addrs,
                "page": page,
                "metrics": page.as_ref().map(|p| format!("{p}metrics")),
            })
        );
    } else {
        println!("relay {}", node.amid());
        for a in &addrs {
            println!("{a}");
        }
        if let Some(p) = &page {
            println!("page {p} (metrics at {p}metrics)");
        }
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let s = node.status().await;
                let r = s.net.relay.unwrap_or_default();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event": "relay_status",
                            "connected": s.net.connected.len(),
                            "reservations": r.reservations,
                            "circuits": r.circuits,
                            "envelopes": r.envelopes,
                            "bytes": r.bytes,
                        })
                    );
                } else {
                    println!(
                        "status: {} connected, {} reservations, {} circuits, {} envelopes stored ({} bytes)",
                        s.net.connected.len(),
                        r.reservations,
                        r.circuits,
                        r.envelopes,
                        r.bytes
                    );
                }
            }
        }
    }
    node.shutdown().await;
    Ok(())
}
