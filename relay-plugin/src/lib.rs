//! # agentmesh-relay
//!
//! The relay plugin: what a volunteer relay node adds to an AgentMesh node.
//!
//! - **Circuit relay v2** ([`RelayConfig::circuit`]): an agent behind a NAT
//!   reserves a slot on the relay and is reachable at
//!   `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<agent>`. Limits are sized for
//!   agent messaging (libp2p's defaults cut a circuit after 2 minutes or
//!   128 KiB).
//! - **Mailbox** ([`mailbox`]): store-and-forward of *sealed* envelopes for
//!   agents that are offline. A sender `deposit`s an envelope for a
//!   recipient; the recipient `fetch`es and `ack`s its own mail, authenticated
//!   by the PeerId of its connection (the same key as its AMID). Envelopes
//!   are opaque to the relay: it stores ciphertext, an id and an expiry.
//!   Storage is sled, every acknowledged change is on disk before the answer.
//!
//! A relay node is a node carrying the [`RelayPlugin`]: the node hosts the
//! plugin's circuit relay server, announces it in the DHT under
//! [`RELAY_PROVIDER_KEY`] and lets it serve
//! [`mailbox::MAILBOX_PROTOCOL`] on its streams. The node knows nothing of
//! this crate; this crate depends on the node.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use agentmesh_node::{Config, Node};
//! use agentmesh_relay::{RelayConfig, RelayPlugin};
//!
//! let node = Node::builder(Config::local())
//!     .data_dir("/var/lib/agentmesh-relay")
//!     .plugin(RelayPlugin::new(RelayConfig::default()))
//!     .spawn()
//!     .await?;
//! agentmesh_relay::daemon::serve(node, 2, false, std::time::Duration::from_secs(30)).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod config;
pub mod daemon;
pub mod dashboard;
pub mod mailbox;
pub mod metrics;

use std::sync::Arc;

use agentmesh_node::plugin::{Plugin, PluginContext, PluginError, Stored};
use tracing::Instrument;

pub use agentmesh_node::mailbox::RELAY_PROVIDER_KEY;
pub use config::{circuit_config, CircuitLimits, ConfigError, MailboxLimits, RelayConfig};

use mailbox::MailboxStore;
pub use metrics::{RelayMetrics, RelayMonitor, RelaySnapshot};

/// The capability a relay node advertises in its card.
pub const RELAY_CAPABILITY: &str = "relay";

/// The relay as a node plugin: circuit relay v2 and the mailbox, with the
/// limits of a [`RelayConfig`].
#[derive(Debug)]
pub struct RelayPlugin {
    config: RelayConfig,
    monitor: RelayMonitor,
}

impl RelayPlugin {
    /// A relay with these limits.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            monitor: RelayMonitor::new(),
        }
    }

    /// The mailbox store, once the node started the plugin.
    pub fn store(&self) -> Option<&Arc<MailboxStore>> {
        self.monitor.store()
    }

    /// A handle on this relay's counters and mailbox that outlives handing
    /// the plugin to the node: what its page and `/metrics` read.
    pub fn monitor(&self) -> RelayMonitor {
        self.monitor.clone()
    }
}

impl Plugin for RelayPlugin {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn circuit_relay(&self) -> Option<libp2p::relay::Config> {
        Some(circuit_config(&self.config.circuit))
    }

    fn provides(&self) -> Vec<Vec<u8>> {
        vec![RELAY_PROVIDER_KEY.to_vec()]
    }

    fn capabilities(&self) -> Vec<String> {
        vec![RELAY_CAPABILITY.into()]
    }

    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let store = Arc::new(
            MailboxStore::open(&ctx.db, self.config.mailbox.clone())
                .map_err(|e| PluginError::new(self.name(), e))?,
        );
        if !self.monitor.set_store(store.clone()) {
            return Err(PluginError::new(self.name(), "started twice"));
        }
        tokio::spawn(
            mailbox::serve(store, self.monitor.metrics(), ctx.control, ctx.cancel)
                .instrument(tracing::Span::current()),
        );
        Ok(())
    }

    fn stored(&self) -> Option<Stored> {
        let stats = self.monitor.store()?.stats();
        Some(Stored {
            items: stats.envelopes,
            bytes: stats.bytes,
        })
    }
}
