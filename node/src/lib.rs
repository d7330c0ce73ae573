//! # agentmesh-node
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod identity;
pub mod keystore;
pub mod session;
pub mod storage;
pub mod card;
pub mod envelope;
pub mod knock;
pub mod wire;
