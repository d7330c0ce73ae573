//! A swarm built with [`build_swarm_with_metrics`] counts the bytes its
//! connections carry, per direction and protocol stack, in the registry it
//! was given; its connections work as without the counters.

use std::time::Duration;

use agentmesh_transports::{build_swarm, build_swarm_with_metrics, TransportConfig};
use futures::StreamExt;
use libp2p::{
    identity::Keypair, metrics::Registry, ping, swarm::SwarmEvent, Multiaddr, PeerId, Swarm,
};

/// Generous: the machine may be busy with builds.
const WAIT: Duration = Duration::from_secs(60);

fn pinging() -> ping::Behaviour {
    ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(100)))
}

/// The sum of `libp2p_bandwidth_bytes_total` samples whose `protocols`
/// label starts with `stack`, in `direction`.
fn bytes(registry: &Registry, stack: &str, direction: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{"))
        .filter(|l| l.contains(&format!("protocols=\"{stack}")))
        .filter(|l| l.contains(&format!("direction=\"{direction}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Polls `a` until it has seen a successful ping from each of `peers`.
async fn pings_from(a: &mut Swarm<ping::Behaviour>, peers: &[PeerId]) {
    let mut seen = std::collections::HashSet::new();
    tokio::time::timeout(WAIT, async {
        while !peers.iter().all(|p| seen.contains(p)) {
            if let SwarmEvent::Behaviour(ping::Event {
                peer,
                result: Ok(_),
                ..
            }) = a.select_next_some().await
            {
                seen.insert(peer);
            }
        }
    })
    .await
    .expect("pings in time");
}

/// The listener's addresses, once it has them all.
async fn listening(a: &mut Swarm<ping::Behaviour>, n: usize) -> Vec<Multiaddr> {
    let mut addrs = Vec::new();
    tokio::time::timeout(WAIT, async {
        while addrs.len() < n {
            if let SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
                addrs.push(address);
            }
        }
    })
    .await
    .expect("listening in time");
    addrs
}

#[tokio::test]
async fn bytes_are_counted_per_direction_and_stack() {
    let mut registry = Registry::default();
    let config = TransportConfig::default();
    let mut a = build_swarm_with_metrics(
        Keypair::generate_ed25519(),
        &config,
        None,
        &mut registry,
        |_, _| pinging(),
    )
    .unwrap();
    let addrs = listening(&mut a, config.listen.len()).await;
    let quic = addrs
        .iter()
        .find(|a| a.to_string().contains("quic-v1"))
        .unwrap();
    let tcp = addrs
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .unwrap();
    // Nothing counted before any connection.
    assert_eq!(bytes(&registry, "/", "Inbound"), 0);

    // Two peers dial it, one over each transport; each runs on its own.
    let mut peers = Vec::new();
    let mut dialers = Vec::new();
    for addr in [quic, tcp] {
        let mut config = TransportConfig::default();
        config.listen.clear();
        let mut s = build_swarm(Keypair::generate_ed25519(), &config, |_, _| pinging()).unwrap();
        s.dial(addr.clone()).unwrap();
        peers.push(*s.local_peer_id());
        dialers.push(tokio::spawn(async move {
            loop {
                s.select_next_some().await;
            }
        }));
    }
    pings_from(&mut a, &peers).await;

    let quic_in = bytes(&registry, "/ip4/udp/quic-v1", "Inbound");
    let tcp_in = bytes(&registry, "/ip4/tcp", "Inbound");
    assert!(quic_in > 0, "QUIC bytes in counted");
    assert!(tcp_in > 0, "TCP bytes in counted");
    assert!(bytes(&registry, "/ip4/udp/quic-v1", "Outbound") > 0);
    assert!(bytes(&registry, "/ip4/tcp", "Outbound") > 0);

    // More pings, more bytes: the counters follow the traffic.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bytes(&registry, "/ip4/", "Inbound") <= quic_in + tcp_in {
        assert!(tokio::time::Instant::now() < deadline, "bytes did not grow");
        pings_from(&mut a, &peers).await;
    }
    for d in dialers {
        d.abort();
    }
}
