//! # agentmesh-transports
//!
//! The wire layer of AgentMesh. It knows nothing of agents: it takes a libp2p
//! keypair and gives back a swarm that speaks QUIC (quinn) and TCP + Noise
//! (snow) + Yamux, plus the two small pieces every AgentMesh protocol shares:
//!
//! - [`codec`]: the one place that turns values into CBOR bytes and back.
//!   Every other crate encodes through it, so the CBOR library can be swapped
//!   in one file.
//! - [`framing`]: length-prefixed frames on a long-lived libp2p stream, with
//!   a maximum frame size enforced before any allocation.
//!
//! ```no_run
//! use agentmesh_transports::{build_swarm, TransportConfig};
//! use libp2p::{identity::Keypair, ping};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Keypair::generate_ed25519();
//! let swarm = build_swarm(key, &TransportConfig::default(), |_, _relay| ping::Behaviour::default())?;
//! # let _ = swarm;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod framing;
pub mod stun;
mod swarm;
pub mod webrtc;

pub use swarm::{
    build_swarm, build_swarm_with_metrics, build_swarm_with_signalling, path_of,
    sort_by_preference, PathKind, TransportConfig, TransportError,
};

/// Re-export of the libp2p version this crate is built on.
pub use libp2p;
/// Re-export of the stream crate used for long-lived protocol streams.
pub use libp2p_stream;
