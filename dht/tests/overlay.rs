//! Three DHT nodes on loopback QUIC: records and providers travel between
//! them through the facade, and only valid records are accepted.

use std::time::Duration;

use agentmesh_dht::{Dht, DhtConfig, DhtEvent, SignedRecord};
use agentmesh_transports::{build_swarm, TransportConfig};
use futures::StreamExt;
use libp2p::{identity::Keypair, swarm::SwarmEvent, Multiaddr, Swarm};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    key: Keypair,
    swarm: Swarm<Dht>,
    _db: sled::Db,
}

fn node() -> Node {
    let key = Keypair::generate_ed25519();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let dht = Dht::new(key.public().to_peer_id(), &db, DhtConfig::default()).unwrap();
    let mut config = TransportConfig::default();
    config.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let swarm = build_swarm(key.clone(), &config, |_, _| dht).unwrap();
    Node {
        key,
        swarm,
        _db: db,
    }
}

/// Waits for the node's listen address and confirms it as external (on
/// loopback nothing else would), so its announcements carry an address.
async fn listen_addr(n: &mut Node) -> Multiaddr {
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = n.swarm.select_next_some().await {
            n.swarm.add_external_address(address.clone());
            return address;
        }
    }
}

/// Drives all three swarms until `pick` returns a value from an event of
/// node `which`.
async fn drive<T>(
    nodes: &mut [Node; 3],
    which: usize,
    mut pick: impl FnMut(DhtEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let [a, b, c] = nodes;
            let (i, ev) = tokio::select! {
                e = a.swarm.select_next_some() => (0, e),
                e = b.swarm.select_next_some() => (1, e),
                e = c.swarm.select_next_some() => (2, e),
            };
            if let (true, SwarmEvent::Behaviour(e)) = (i == which, ev) {
                if let Some(v) = pick(e) {
                    return v;
                }
            }
        }
    })
    .await
    .expect("dht event in time")
}

#[tokio::test]
async fn records_and_providers_travel() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut nodes = [node(), node(), node()];
    let hub = listen_addr(&mut nodes[0]).await;
    let hub_id = nodes[0].key.public().to_peer_id();
    for n in nodes.iter_mut().skip(1) {
        listen_addr(n).await;
        n.swarm.behaviour_mut().add_address(&hub_id, hub.clone());
        n.swarm.dial(hub.clone()).unwrap();
    }
    // let the routing tables fill
    for n in nodes.iter_mut().skip(1) {
        n.swarm.behaviour_mut().bootstrap().unwrap();
    }
    drive(&mut nodes, 2, |e| {
        matches!(e, DhtEvent::RoutingUpdated { .. }).then_some(())
    })
    .await;

    // node 1 publishes a record about itself; node 2 finds it.
    let k1 = nodes[1].key.clone();
    let p1 = k1.public().to_peer_id();
    let rec = SignedRecord::sign(
        &k1,
        "card",
        b"v1".to_vec(),
        1,
        agentmesh_dht::now_ms() + 3_600_000,
    )
    .unwrap();
    let q = nodes[1].swarm.behaviour_mut().put(rec).unwrap();
    let stored = drive(&mut nodes, 1, |e| match e {
        DhtEvent::PutDone {
            query,
            stored_remotely,
        } if query == q => Some(stored_remotely),
        _ => None,
    })
    .await;
    assert!(stored);
    let q = nodes[2].swarm.behaviour_mut().get("card", &p1);
    let found = drive(&mut nodes, 2, |e| match e {
        DhtEvent::RecordFound { query, record } if query == q => Some(record),
        _ => None,
    })
    .await
    .expect("record found");
    assert_eq!(found.payload, b"v1");
    assert_eq!(found.subject, p1);

    // a newer version replaces it everywhere it is asked for
    let rec2 = SignedRecord::sign(
        &k1,
        "card",
        b"v2".to_vec(),
        2,
        agentmesh_dht::now_ms() + 3_600_000,
    )
    .unwrap();
    let q = nodes[1].swarm.behaviour_mut().put(rec2).unwrap();
    drive(&mut nodes, 1, |e| {
        matches!(e, DhtEvent::PutDone { query, .. } if query == q).then_some(())
    })
    .await;
    let q = nodes[2].swarm.behaviour_mut().get("card", &p1);
    let found = drive(&mut nodes, 2, |e| match e {
        DhtEvent::RecordFound { query, record } if query == q => Some(record),
        _ => None,
    })
    .await
    .expect("record found");
    assert_eq!(found.seq, 2);

    // providers
    let q = nodes[2].swarm.behaviour_mut().provide(b"cap:chat").unwrap();
    drive(&mut nodes, 2, |e| {
        matches!(e, DhtEvent::Provided { query, .. } if query == q).then_some(())
    })
    .await;
    // The announcement is sent after `Provided` is reported: ask until it
    // has arrived.
    let want = vec![nodes[2].key.public().to_peer_id()];
    let mut providers = Vec::new();
    for _ in 0..50 {
        let q = nodes[1].swarm.behaviour_mut().providers(b"cap:chat");
        providers = drive(&mut nodes, 1, |e| match e {
            DhtEvent::ProvidersFound { query, providers } if query == q => Some(providers),
            _ => None,
        })
        .await;
        if !providers.is_empty() {
            break;
        }
    }
    assert_eq!(providers, want);

    // nobody has a record about node 0
    let q = nodes[2].swarm.behaviour_mut().get("card", &hub_id);
    let none = drive(&mut nodes, 2, |e| match e {
        DhtEvent::RecordFound { query, record } if query == q => Some(record),
        _ => None,
    })
    .await;
    assert!(none.is_none());
}
