//! The node's settings: [`Config`] and the choices it holds (connection
//! caps, hole punching, reachability).

use std::{path::PathBuf, time::Duration};

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use agentmesh_dht::DhtConfig;
use agentmesh_transports::TransportConfig;

use crate::{
    crypto::keystore::KdfParams, knock::breaker::BreakerConfig, knock::policy::Policy,
    trust::credentials::Credentials,
};

/// Node settings. Build with a preset ([`Config::local`]) and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Transport settings. Defaults to QUIC + TCP on 127.0.0.1.
    pub transport: TransportConfig,
    /// DHT settings. Defaults to server mode.
    pub dht: DhtConfig,
    /// Capabilities advertised in the card. Defaults to
    /// `["communication/messaging"]`.
    pub capabilities: Vec<String>,
    /// Message schemas accepted per capability, listed in the card: a KNOCK
    /// for one of these capabilities must name one of its schemas, and the
    /// initiator's messages are checked against it ([`crate::schema`]).
    /// Defaults to none (payloads are free-form).
    pub accept_schemas: crate::schema::Accepted,
    /// Custom schemas (`x-<namespace>/<name>@<major>` and their JSON
    /// Schema), added in order after the standard ones. Defaults to none.
    pub custom_schemas: Vec<(String, serde_json::Value)>,
    /// Lifetime of a published card. Defaults to 1 h.
    pub card_ttl: Duration,
    /// Republish the card after this long. Defaults to 20 min.
    pub republish_every: Duration,
    /// How long a send keeps trying before it fails. Defaults to 60 s.
    pub delivery_timeout: Duration,
    /// Most unacknowledged messages in flight per peer. Defaults to 64.
    pub window: usize,
    /// A peer's outbound link (its task, queue and message stream) ends
    /// after this long with nothing to send or wait for; the next message
    /// to the peer starts a new one. Defaults to 5 min.
    pub link_idle: Duration,
    /// Keystore key derivation cost. Defaults to Argon2id 19 MiB, t=2.
    pub kdf: KdfParams,
    /// The receiver's policy. Defaults to the `default` preset.
    pub policy: Policy,
    /// A TOML policy file: read at start (replacing `policy`) and again by
    /// [`Node::reload_policy`](super::Node::reload_policy). Defaults to none.
    pub policy_file: Option<PathBuf>,
    /// Outbound circuit breakers: after this many consecutive failures or
    /// rejections by a peer, sends to it fail at once until a cool-down has
    /// passed. Defaults to 5 failures, 30 s.
    pub breaker: BreakerConfig,
    /// Relays to use, each ending in `/p2p/<relay id>`. When empty, relays
    /// are found in the DHT. Defaults to none.
    pub relays: Vec<Multiaddr>,
    /// How many relays keep our mailbox (listed in the card). Defaults to 2.
    pub mailbox_relays: usize,
    /// Whether peers can dial us directly: declared, or learned with
    /// AutoNAT. Defaults to [`Reachability::Auto`].
    pub reachability: Reachability,
    /// The registry root key: initiators' certificates, log proofs,
    /// reputation attestations and revocations are checked against it.
    /// Without it every initiator is [`Tier::Anonymous`](crate::Tier) and
    /// shows no reputation. Defaults to none.
    pub registry_root: Option<[u8; 32]>,
    /// Refuse certificate chains that come without a transparency-log
    /// inclusion proof. Defaults to false.
    pub require_log_inclusion: bool,
    /// What this node shows in its KNOCKs (certificates, log proof,
    /// reputation); see also
    /// [`Node::set_credentials`](super::Node::set_credentials). Defaults to
    /// none.
    pub credentials: Credentials,
    /// How a relayed connection is upgraded to a direct one. Defaults to
    /// [`HolePunch::Quic`].
    pub hole_punch: HolePunch,
    /// STUN servers (`host:port`) WebRTC learns its public address from.
    /// Defaults to none (host candidates only).
    pub stun_servers: Vec<String>,
    /// The registry's node (a multiaddr ending in `/p2p/<peer id>`,
    /// usually a bootstrap node): session receipts are filed with it over
    /// `/agentmesh/registry/1`, and the credentials KNOCKs show are fetched
    /// from it at start and every [`Config::credentials_refresh`]. Defaults
    /// to none.
    pub registry: Option<Multiaddr>,
    /// How often fresh credentials (and so a fresh 24 h reputation
    /// attestation) are fetched from [`Config::registry`]. Defaults to 6 h.
    pub credentials_refresh: Duration,
    /// How often the revocation set is synced with [`Config::registry`]
    /// (its revocation list, or else the status of the keys this node
    /// follows, or else the registry's records in the DHT; each checked
    /// against the pinned root), from start on. `None` or zero: never on a
    /// schedule (KNOCKs showing a certificate chain not checked before are
    /// still checked, and [`Node::sync_revocations`](super::Node::sync_revocations) syncs at once).
    /// Defaults to 5 min.
    pub revocation_sync: Option<Duration>,
    /// Caps on connections, enforced before any protocol runs on them.
    pub connections: ConnectionCaps,
}

/// Caps on connections (libp2p's `connection_limits`): a connection over a
/// cap is closed before any protocol runs on it, so many identities cannot
/// hold a node's sockets and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCaps {
    /// Established incoming connections, all peers together.
    pub max_incoming: u32,
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Established connections with one peer, both directions (a peer
    /// needs a few: QUIC, TCP, relayed, WebRTC).
    pub max_per_peer: u32,
    /// The process's resident memory above which new connections (both
    /// directions) are refused. Defaults to
    /// [`DEFAULT_MEMORY_CAP`](crate::memory_cap::DEFAULT_MEMORY_CAP), 90 %
    /// of the system's memory.
    pub max_memory: crate::memory_cap::MemoryCap,
}

impl Default for ConnectionCaps {
    /// An agent's: 1024 incoming, 128 in their handshake, 8 per peer; no
    /// new connection over 90 % of the system's memory.
    fn default() -> Self {
        Self {
            max_incoming: 1024,
            max_pending_incoming: 128,
            max_per_peer: 8,
            max_memory: crate::memory_cap::DEFAULT_MEMORY_CAP,
        }
    }
}

impl ConnectionCaps {
    /// A relay's or a bootstrap's, which every agent connects to: 16 384
    /// incoming, 1024 in their handshake, 8 per peer.
    pub fn server() -> Self {
        Self {
            max_incoming: 16_384,
            max_pending_incoming: 1024,
            max_per_peer: 8,
            max_memory: crate::memory_cap::DEFAULT_MEMORY_CAP,
        }
    }
}

/// How a node turns a relayed connection into a direct one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HolePunch {
    /// QUIC hole punching coordinated over the relay (DCUtR).
    #[default]
    Quic,
    /// WebRTC (ICE with STUN) signalled over the relayed connection; the
    /// node also answers WebRTC from peers.
    Webrtc,
    /// Both: the node answers WebRTC and, for relayed connections it
    /// dialled, tries WebRTC alongside QUIC hole punching.
    Both,
}

impl HolePunch {
    /// Whether WebRTC is tried and answered.
    pub fn webrtc(self) -> bool {
        matches!(self, HolePunch::Webrtc | HolePunch::Both)
    }

    /// Whether QUIC hole punching is used.
    pub fn quic(self) -> bool {
        matches!(self, HolePunch::Quic | HolePunch::Both)
    }
}

impl std::str::FromStr for HolePunch {
    type Err = UnknownHolePunch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(HolePunch::Quic),
            "webrtc" => Ok(HolePunch::Webrtc),
            "both" => Ok(HolePunch::Both),
            other => Err(UnknownHolePunch(other.to_owned())),
        }
    }
}

/// A hole-punching mode other than `quic`, `webrtc` or `both`.
#[derive(Debug, thiserror::Error)]
#[error("unknown hole punching mode {0:?} (quic, webrtc or both)")]
pub struct UnknownHolePunch(pub String);

/// Whether a node can be dialled directly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reachability {
    /// Declared reachable: listens on its own addresses and lists them in
    /// its card.
    Public,
    /// Declared behind a NAT or firewall: listens only through relay
    /// reservations and lists only relayed addresses.
    Private,
    /// Learned: listens on its own addresses, and asks peers (AutoNAT) to dial
    /// it back. Once they report it
    /// [`NatStatus::BehindNat`](super::NatStatus::BehindNat), it also listens
    /// through its relays' reservations and its card lists only relayed
    /// addresses; hole punching (DCUtR) then upgrades relayed connections to
    /// direct ones where the NATs allow it.
    #[default]
    Auto,
}

/// The DHT namespaces a node stores records of by default: cards,
/// revocations (`rv-…`), and those of services built on nodes, which
/// publish under `x-<name>` ([`Node::publish_record`](super::Node::publish_record)).
/// A record in any other namespace is refused with a typed error, so
/// nobody can fill a node's store with records nothing reads. Set
/// `dht.store.namespaces` to change it (empty takes every namespace).
pub const KNOWN_NAMESPACES: &[&str] = &["card", "rot", "rv-*", "x-*"];

impl Config {
    /// Everything on loopback: the preset for a local network and tests.
    pub fn local() -> Self {
        let mut dht = DhtConfig::default();
        dht.store.namespaces = KNOWN_NAMESPACES.iter().map(|n| n.to_string()).collect();
        Self {
            transport: TransportConfig::default(),
            dht,
            capabilities: vec!["communication/messaging".into()],
            accept_schemas: Default::default(),
            custom_schemas: Vec::new(),
            card_ttl: Duration::from_secs(3600),
            republish_every: Duration::from_secs(20 * 60),
            delivery_timeout: Duration::from_secs(60),
            window: 64,
            link_idle: Duration::from_secs(300),
            kdf: KdfParams::default(),
            policy: Policy::default(),
            policy_file: None,
            breaker: BreakerConfig::default(),
            relays: Vec::new(),
            mailbox_relays: 2,
            reachability: Reachability::Auto,
            registry_root: None,
            require_log_inclusion: false,
            credentials: Credentials::default(),
            hole_punch: HolePunch::default(),
            stun_servers: Vec::new(),
            registry: None,
            credentials_refresh: Duration::from_secs(6 * 3600),
            revocation_sync: Some(Duration::from_secs(5 * 60)),
            connections: ConnectionCaps::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::local()
    }
}
