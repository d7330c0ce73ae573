//! # agentmesh-relay-daemon
//!
//! Runs an AgentMesh node as a volunteer relay: circuit relay v2 for agents
//! behind NATs and a mailbox for agents that are offline. The relay is a
//! full node (identity, DHT membership) that announces itself in the DHT,
//! so agents find it without configuration.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = agentmesh_relay_daemon::config(agentmesh_relay::RelayConfig::default());
//! let node = agentmesh_node::Node::builder(config)
//!     .data_dir("/var/lib/agentmesh-relay")
//!     .spawn()
//!     .await?;
//! agentmesh_relay_daemon::serve(node, 2, false, std::time::Duration::from_secs(30)).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::time::Duration;

use agentmesh_node::{Config, Node};
use agentmesh_relay::RelayConfig;

/// Settings of a relay node: a DHT server that serves circuit relay and the
/// mailbox with `relay`'s limits and advertises the `relay` capability.
pub fn config(relay: RelayConfig) -> Config {
    let mut c = Config::local();
    c.capabilities = vec!["relay".into()];
    c.relay = Some(relay);
    c
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
    let addrs = node
        .wait_listening(expected_listeners, Duration::from_secs(10))
        .await;
    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "event": "ready", "role": "relay", "amid": node.amid(), "addrs": addrs })
        );
    } else {
        println!("relay {}", node.amid());
        for a in &addrs {
            println!("{a}");
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
