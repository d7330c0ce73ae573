//! Building a swarm on the AgentMesh transport stack.

use std::time::Duration;

use libp2p::{
    identity::Keypair, multiaddr::Protocol, noise, relay, swarm::NetworkBehaviour, tcp, yamux,
    Multiaddr, Swarm,
};

/// Transport settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Addresses to listen on. Defaults to QUIC and TCP on `127.0.0.1`, ports
    /// chosen by the OS.
    pub listen: Vec<Multiaddr>,
    /// How long a connection with no open stream stays up. Defaults to 60 s.
    pub idle_timeout: Duration,
    /// How many of a peer's addresses are dialled at once. Defaults to 1, so
    /// addresses are tried in the order given (QUIC first, see
    /// [`sort_by_preference`]) and the preferred transport wins.
    pub dial_concurrency: std::num::NonZeroU8,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            listen: default_listen_addrs(),
            idle_timeout: Duration::from_secs(60),
            dial_concurrency: std::num::NonZeroU8::MIN,
        }
    }
}

/// QUIC and TCP on 127.0.0.1 with OS-chosen ports.
pub(crate) fn default_listen_addrs() -> Vec<Multiaddr> {
    ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Errors while building a swarm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The Noise configuration could not be built from the key.
    #[error("noise setup: {0}")]
    Noise(#[from] noise::Error),
    /// The behaviour constructor failed.
    #[error("behaviour setup: {0}")]
    Behaviour(String),
    /// Listening on an address failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
}

/// Builds a swarm speaking QUIC, TCP + Noise + Yamux and circuit relay v2
/// (as a client: dialling and listening through relays), and starts
/// listening on the configured addresses.
///
/// `behaviour` receives the relay client behaviour that goes with the relay
/// transport; compose it into the swarm's behaviour, or circuit addresses
/// can be neither dialled nor listened on.
pub fn build_swarm<B: NetworkBehaviour>(
    key: Keypair,
    config: &TransportConfig,
    behaviour: impl FnOnce(&Keypair, relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, TransportError> {
    let idle = config.idle_timeout;
    let concurrency = config.dial_concurrency;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|k, relay| Ok(behaviour(k, relay)))
        .map_err(|e| TransportError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle)
                .with_dial_concurrency_factor(concurrency)
        })
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|source| TransportError::Listen {
                addr: addr.clone(),
                source,
            })?;
    }
    Ok(swarm)
}

/// The kind of path a connection address stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PathKind {
    /// A direct QUIC connection.
    DirectQuic,
    /// A direct TCP + Noise + Yamux connection.
    DirectTcp,
    /// A connection through a circuit relay.
    Relayed,
    /// Any other transport.
    Other,
    /// Not a connection: stored in a relay's mailbox for later delivery.
    Mailbox,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::DirectQuic => "direct-quic",
            PathKind::DirectTcp => "direct-tcp",
            PathKind::Relayed => "relayed",
            PathKind::Other => "other",
            PathKind::Mailbox => "mailbox",
        })
    }
}

/// Orders addresses by transport preference: QUIC, then TCP, then relayed
/// and others; stable within each kind.
pub fn sort_by_preference(addrs: &mut [Multiaddr]) {
    addrs.sort_by_key(|a| match path_of(a) {
        PathKind::DirectQuic => 0,
        PathKind::DirectTcp => 1,
        PathKind::Relayed => 2,
        PathKind::Other | PathKind::Mailbox => 3,
    });
}

/// Classifies a connection's remote address.
pub fn path_of(addr: &Multiaddr) -> PathKind {
    let mut kind = PathKind::Other;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return PathKind::Relayed,
            Protocol::QuicV1 | Protocol::Quic => kind = PathKind::DirectQuic,
            Protocol::Tcp(_) if kind == PathKind::Other => kind = PathKind::DirectTcp,
            _ => {}
        }
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        let q: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        let t: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let r: Multiaddr = "/ip4/127.0.0.1/tcp/1/p2p-circuit".parse().unwrap();
        assert_eq!(path_of(&q), PathKind::DirectQuic);
        assert_eq!(path_of(&t), PathKind::DirectTcp);
        assert_eq!(path_of(&r), PathKind::Relayed);
    }
}
