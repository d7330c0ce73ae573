//! # agentmesh-dht
//!
//! Discovery for AgentMesh: a Kademlia overlay that stores **signed records**.
//! It knows nothing of agents. A record is an opaque payload in a namespace,
//! about a *subject* (a libp2p peer), signed by that subject, with a sequence
//! number and an expiry. Every record is validated before it is stored or
//! returned: signature by its subject, size limit, expiry, and a sequence
//! number that only grows.
//!
//! The public face is a small facade ([`Dht`]: put / get signed records,
//! closest peers, routing events) so that the engine behind it (libp2p-kad
//! today) can be swapped for a lighter one in large simulations.
//!
//! ```no_run
//! use agentmesh_dht::{Dht, DhtConfig, SignedRecord};
//! use libp2p::identity::Keypair;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Keypair::generate_ed25519();
//! let db = sled::Config::new().temporary(true).open()?;
//! let mut dht = Dht::new(key.public().to_peer_id(), &db, DhtConfig::default())?;
//! let expires = agentmesh_dht::now_ms() + 3_600_000; // an hour from now
//! let record = SignedRecord::sign(&key, "card", b"hello".to_vec(), 1, expires)?;
//! dht.put(record)?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod behaviour;
pub mod engine;
mod record;
mod store;

pub use behaviour::{Dht, DhtConfig, DhtError, DhtEvent, DhtMode, QueryId, PROTOCOL};
pub use record::{
    now_ms, record_key, RecordError, SignedRecord, VerifiedRecord, DOMAIN_SEP_RECORD,
    MAX_NAMESPACE_LEN, MAX_RECORD_SIZE,
};
pub use store::{SledStore, StoreLimits};
