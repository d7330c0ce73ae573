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
//! A relay node is a node: the node crate composes [`circuit_behaviour`] into
//! its swarm and serves [`mailbox::MAILBOX_PROTOCOL`] with
//! [`mailbox::serve`].
//!
//! ```no_run
//! # async fn run(control: libp2p_stream::Control) -> Result<(), Box<dyn std::error::Error>> {
//! use agentmesh_relay::{mailbox::{self, MailboxStore}, RelayConfig};
//! let config = RelayConfig::default();
//! let store = std::sync::Arc::new(MailboxStore::open(&sled::open("relay-db")?, config.mailbox.clone())?);
//! let cancel = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(mailbox::serve(store, control, cancel));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod config;
pub mod mailbox;

pub use config::{circuit_behaviour, CircuitLimits, ConfigError, MailboxLimits, RelayConfig};

/// The DHT provider key under which relays advertise themselves.
pub const RELAY_PROVIDER_KEY: &[u8] = b"/agentmesh/relay/1";
