//! # agentmesh-relay
//!
//! The relay plugin: a circuit relay for agents behind NATs and a
//! store-and-forward mailbox for agents that are offline. Relays never read
//! messages: they carry and store sealed envelopes only.
//!
//! This crate holds the plugin's skeleton; its protocol ids and limits are
//! fixed here so that nodes and relays agree on them.
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::time::Duration;

/// Protocol id of the mailbox (deposit, fetch, ack).
pub const MAILBOX_PROTOCOL: &str = "/agentmesh/mailbox/1";
/// How long a deposited envelope is kept.
pub const MAILBOX_TTL: Duration = Duration::from_secs(72 * 3600);
/// Most envelopes held for one recipient.
pub const MAX_ENVELOPES_PER_RECIPIENT: usize = 100;
/// Most deposits accepted from one sender per minute.
pub const MAX_DEPOSITS_PER_MINUTE: u32 = 100;
