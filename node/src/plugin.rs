//! Plugins: what a node can carry beyond being an agent.
//!
//! The node knows no plugin by name. A plugin (the relay's circuit relay and
//! mailbox, for one) is handed to [`NodeBuilder::plugin`](crate::NodeBuilder::plugin)
//! and asks the node for what it needs:
//!
//! - a **circuit relay v2 server** hosted in the node's swarm
//!   ([`Plugin::circuit_relay`]), with the plugin's limits;
//! - **DHT provider keys** the node announces once it is connected
//!   ([`Plugin::provides`]), so agents find the service without
//!   configuration;
//! - **capabilities** added to the node's card ([`Plugin::capabilities`]);
//! - **its own protocols** on the node's streams: [`Plugin::start`] receives a
//!   [`PluginContext`] with the node's stream control (accept a
//!   [`StreamProtocol`](libp2p::StreamProtocol) there, in the manner of
//!   iroh's `Router::accept`), its database and its shutdown token;
//! - a line in the node's status ([`Plugin::stored`]).
//!
//! ```no_run
//! use agentmesh_node::plugin::{Plugin, PluginContext, PluginError};
//!
//! #[derive(Debug)]
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn name(&self) -> &'static str {
//!         "echo"
//!     }
//!     fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
//!         let mut control = ctx.control.clone();
//!         let _incoming = control
//!             .accept(libp2p::StreamProtocol::new("/example/echo/1"))
//!             .map_err(|e| PluginError::new(self.name(), e))?;
//!         // spawn a task that serves `_incoming` until `ctx.cancel`
//!         Ok(())
//!     }
//! }
//! ```

use std::{fmt, path::PathBuf};

use libp2p::relay;
use tokio_util::sync::CancellationToken;

/// What a running node lends a plugin as it starts.
#[derive(Clone)]
#[non_exhaustive]
pub struct PluginContext {
    /// The node's stream control: accept the plugin's protocols here, or
    /// open streams to peers.
    pub control: libp2p_stream::Control,
    /// The node's database; a plugin keeps its data in trees of its own.
    pub db: sled::Db,
    /// The node's data directory.
    pub dir: PathBuf,
    /// Cancelled when the node stops: the plugin's tasks end then.
    pub cancel: CancellationToken,
}

impl fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginContext")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What a plugin keeps on disk, for the node's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Items held (envelopes, records).
    pub items: u64,
    /// Their size in bytes.
    pub bytes: u64,
}

/// A plugin could not start.
#[derive(Debug, thiserror::Error)]
#[error("plugin {name}: {source}")]
pub struct PluginError {
    /// The plugin's name.
    pub name: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl PluginError {
    /// Wraps `source` as the failure of plugin `name`.
    pub fn new(
        name: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            name,
            source: source.into(),
        }
    }
}

/// A service a node carries for others. See the [module docs](self).
pub trait Plugin: Send + Sync + fmt::Debug + 'static {
    /// A short name, for logs and errors.
    fn name(&self) -> &'static str;

    /// The circuit relay v2 server to host in the node's swarm, if any.
    /// Called once, as the swarm is built. A node hosts at most one: the
    /// first plugin that asks.
    fn circuit_relay(&self) -> Option<relay::Config> {
        None
    }

    /// Keys under which the node announces itself as a provider in the DHT
    /// once it is connected.
    fn provides(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Capabilities added to the node's card.
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts the plugin's tasks on a running node. Called once, before the
    /// node's swarm runs, so protocols accepted here see the first streams.
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError>;

    /// What the plugin holds on disk, for the node's status.
    fn stored(&self) -> Option<Stored> {
        None
    }
}
