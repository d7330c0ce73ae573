//! Building a swarm on the AgentMesh transport stack.

use std::time::Duration;

use libp2p::{
    core::{muxing::StreamMuxerBox, transport::OptionalTransport, upgrade::Version},
    identity::Keypair,
    metrics::{BandwidthTransport, Registry},
    multiaddr::Protocol,
    noise, quic, relay,
    swarm::NetworkBehaviour,
    tcp, yamux, Multiaddr, Swarm, Transport,
};

use crate::webrtc::{WebRtcConfig, WebRtcTransport};

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
    /// WebRTC (private-to-private, over relayed connections). Used only by
    /// [`build_swarm_with_signalling`]; listen on `/webrtc` to answer.
    /// Defaults to the [`WebRtcConfig`] defaults.
    pub webrtc: WebRtcConfig,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            listen: default_listen_addrs(),
            idle_timeout: Duration::from_secs(60),
            dial_concurrency: std::num::NonZeroU8::MIN,
            webrtc: WebRtcConfig::default(),
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
    build_swarm_with_signalling(key, config, None, behaviour)
}

/// [`build_swarm`] plus WebRTC when `signalling` is given: a control of a
/// [`libp2p_stream::Behaviour`] that `behaviour` composes into the swarm.
/// WebRTC addresses (`<relayed address>/webrtc/p2p/<peer>`) can then be
/// dialled, and listening on `/webrtc` answers peers that dial us so.
pub fn build_swarm_with_signalling<B: NetworkBehaviour>(
    key: Keypair,
    config: &TransportConfig,
    signalling: Option<libp2p_stream::Control>,
    behaviour: impl FnOnce(&Keypair, relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, TransportError> {
    build(key, config, signalling, None, behaviour)
}

/// [`build_swarm_with_signalling`] whose transport also counts the bytes
/// every connection carries, in the counter family
/// `libp2p_bandwidth_bytes_total` it registers in `registry` (libp2p-metrics'
/// [`BandwidthTransport`](libp2p::metrics::BandwidthTransport)).
///
/// The counters are labelled by `direction` (`Inbound` for bytes read,
/// `Outbound` for bytes written) and by `protocols`, the remote address's
/// protocol stack (e.g. `/ip4/udp/quic-v1`, `/ip4/tcp`,
/// `/ip4/tcp/p2p/p2p-circuit`). They count what the connections' streams
/// carry: every protocol's payload (a relay's circuits, the DHT, identify,
/// ping, our own), but not the transports' framing, encryption and
/// acknowledgements underneath (TCP and QUIC headers, Noise, Yamux frame
/// heads). A relayed connection is counted twice on the node that holds
/// it: once under its `/p2p-circuit` stack, and again inside the relay
/// connection that carries it. The connections themselves behave exactly as
/// without the counters.
pub fn build_swarm_with_metrics<B: NetworkBehaviour>(
    key: Keypair,
    config: &TransportConfig,
    signalling: Option<libp2p_stream::Control>,
    registry: &mut Registry,
    behaviour: impl FnOnce(&Keypair, relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, TransportError> {
    build(key, config, signalling, Some(registry), behaviour)
}

/// Builds the swarm; with `registry`, counts the bytes of every connection
/// there.
fn build<B: NetworkBehaviour>(
    key: Keypair,
    config: &TransportConfig,
    signalling: Option<libp2p_stream::Control>,
    registry: Option<&mut Registry>,
    behaviour: impl FnOnce(&Keypair, relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, TransportError> {
    let idle = config.idle_timeout;
    let concurrency = config.dial_concurrency;
    let local = key.public().to_peer_id();
    let (relay_transport, relay_behaviour) = relay::client::new(local);
    let webrtc = match signalling {
        Some(control) => OptionalTransport::some(WebRtcTransport::new(
            key.clone(),
            config.webrtc.clone(),
            control,
        )),
        None => OptionalTransport::none(),
    };
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(&key)?)
        .multiplex(yamux::Config::default())
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(&key)?)
        .multiplex(yamux::Config::default())
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    let quic = quic::tokio::Transport::new(quic::Config::new(&key))
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    // WebRTC first: its addresses also contain `/p2p-circuit`, which the
    // relay transport would otherwise claim.
    let transport = webrtc
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
        .or_transport(relayed)
        .map(|e, _| e.into_inner())
        .or_transport(quic)
        .map(|e, _| e.into_inner())
        .or_transport(tcp)
        .map(|e, _| e.into_inner());
    // The counting wrapper sits outside every transport, so each
    // connection, relayed or direct, is counted once under its own stack.
    let transport = match registry {
        Some(registry) => BandwidthTransport::new(transport, registry)
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed(),
        None => transport.boxed(),
    };
    let mut relay_behaviour = Some(relay_behaviour);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| TransportError::Behaviour(e.to_string()))?
        .with_behaviour(|k| {
            let relay = relay_behaviour
                .take()
                .ok_or("relay behaviour already taken")?;
            Ok(behaviour(k, relay))
        })
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
    /// A direct WebRTC connection (ICE, DTLS, SCTP data channels), set up
    /// over a relayed connection.
    DirectWebRtc,
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
            PathKind::DirectWebRtc => "direct-webrtc",
            PathKind::Relayed => "relayed",
            PathKind::Other => "other",
            PathKind::Mailbox => "mailbox",
        })
    }
}

/// Orders addresses by transport preference: QUIC, then TCP, then relayed,
/// then WebRTC (set up over a relayed connection) and others; stable within
/// each kind.
pub fn sort_by_preference(addrs: &mut [Multiaddr]) {
    addrs.sort_by_key(|a| match path_of(a) {
        PathKind::DirectQuic => 0,
        PathKind::DirectTcp => 1,
        PathKind::Relayed => 2,
        PathKind::DirectWebRtc => 3,
        PathKind::Other | PathKind::Mailbox => 4,
    });
}

/// Classifies a connection's remote address. An address with `/webrtc` is
/// a WebRTC connection even when it names the relay its signalling went
/// through (`<relay>/p2p-circuit/webrtc/p2p/<peer>`).
pub fn path_of(addr: &Multiaddr) -> PathKind {
    if addr.iter().any(|p| matches!(p, Protocol::WebRTC)) {
        return PathKind::DirectWebRtc;
    }
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
        let w: Multiaddr = "/ip4/127.0.0.1/tcp/1/p2p-circuit/webrtc".parse().unwrap();
        let d: Multiaddr = "/ip4/127.0.0.1/udp/1/webrtc".parse().unwrap();
        assert_eq!(path_of(&w), PathKind::DirectWebRtc);
        assert_eq!(path_of(&d), PathKind::DirectWebRtc);
        let direct_webrtc: Multiaddr = "/ip4/127.0.0.1/udp/1/webrtc-direct".parse().unwrap();
        assert_eq!(path_of(&direct_webrtc), PathKind::Other);
    }
}
