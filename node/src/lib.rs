//! # agentmesh-node
//!
//! An AgentMesh agent: a cryptographic identity that finds other agents by
//! AMID through a Kademlia DHT, asks them for a session with a KNOCK that
//! their deterministic policy judges, and exchanges end-to-end encrypted
//! messages (Olm: 3DH + Double Ratchet) over direct QUIC or TCP connections.
//!
//! - **Identity**: one Ed25519 key is the agent's signing key and its libp2p
//!   key. Its text form, the [`Amid`], embeds the key with a checksum, so an
//!   AMID is enough to check signatures and to dial.
//! - **Discovery**: each agent publishes a signed [`AgentCard`]
//!   (keys, one-time prekeys, addresses, capabilities) in the DHT.
//! - **KNOCK**: the first message to a new peer rides in a signed KNOCK; the
//!   receiver's [`Policy`] accepts or rejects it with a typed reason.
//! - **Messages**: signed CBOR envelopes on one long-lived stream per peer,
//!   acknowledged once durably stored; duplicates and replays are dropped.
//! - **Session types**: [`Node::request`] waits for the reply correlated to
//!   its request; a conversation is ordered turns that either side ends with
//!   [`Node::end_conversation`]; [`Node::open_stream`] sends chunks with
//!   back-pressure from the receiver and a clean end. Their metadata travels
//!   inside the encryption ([`content`]).
//!
//! ```no_run
//! use agentmesh_node::{Config, Node, Passphrase};
//!
//! # async fn run(bob: agentmesh_node::Amid, bootstrap: libp2p::Multiaddr) -> Result<(), Box<dyn std::error::Error>> {
//! let alice = Node::builder(Config::local())
//!     .data_dir("/tmp/alice")
//!     .passphrase(Passphrase::new("correct horse battery staple"))
//!     .bootstrap(bootstrap)
//!     .spawn()
//!     .await?;
//! let receipt = alice.send(&bob, serde_json::json!({"text": "hello"})).await?;
//! println!("delivered over {}", receipt.path);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod audit;
pub mod card;
pub mod contacts;
pub mod content;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod diagnostics;
pub mod events;
pub mod identity;
pub mod knock;
pub mod lru;
pub mod mailbox;
pub mod memory_cap;
pub mod plugin;
pub mod registry;
mod runtime;
pub mod schema;
pub mod storage;
pub mod trust;
pub mod wire;

/// Decisions of the node without I/O that other crates drive too: the
/// simulator runs a link's [`delivery`](cores::delivery) machine for every
/// session it models.
pub mod cores {
    pub use crate::runtime::cores::delivery;
}

pub use card::{AgentCard, Presence};
pub use crypto::keystore::Passphrase;
pub use events::{Message, MessageKind, NodeEvent, Receipt};
pub use identity::{Amid, Identity};
pub use knock::policy::{Policy, Preset, Tier};
pub use knock::{Intent, RejectReason, SessionType};
pub use memory_cap::MemoryCap;
pub use runtime::{
    amid_of_peer, Config, ConnectionCaps, CredentialsState, DialError, HolePunch, InboxKey,
    KnownPeer, LearnedPath, LogCheck, MessageFilter, Messages, NatStatus, NetStatus, Node,
    NodeBuilder, NodeStatus, PathCounters, PeerStatus, PublishError, Reachability,
    RegistryClientError, RelayStatus, RelayTotals, RevocationSource, RevocationSync, RootPinError,
    SendError, SessionStatus, SpawnError, StreamError, StreamReceiver, StreamSender, Streams,
    TrustError, UnknownHolePunch, KNOWN_NAMESPACES, SHUTDOWN_PUBLISH_TIMEOUT, STREAM_BUFFER,
    STREAM_WINDOW,
};

pub use agentmesh_transports::PathKind;
pub use libp2p::{Multiaddr, PeerId};
