//! Records from many fresh identities at once, over loopback QUIC: mallory
//! pushes records signed by 200 identities of her own, ten namespaces each,
//! at a node whose store holds 500. The store never holds more than its
//! cap, no identity keeps more than a fair share of it once it is full, and
//! a legitimate subject's card record is still stored there and found by a
//! third node.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use agentmesh_dht::{Dht, DhtConfig, DhtEvent, RecordError, SignedRecord, StoreLimits};
use agentmesh_transports::{build_swarm, TransportConfig};
use futures::StreamExt;
use libp2p::{identity::Keypair, swarm::SwarmEvent, Multiaddr, PeerId, Swarm};

const WAIT: Duration = Duration::from_secs(120);
/// The target's store.
const MAX_RECORDS: usize = 500;
/// Mallory's identities, and the records each pushes.
const IDENTITIES: usize = 200;
const PER_IDENTITY: usize = 10;
/// Mallory's puts in flight at once.
const IN_FLIGHT: usize = 50;

struct Node {
    key: Keypair,
    swarm: Swarm<Dht>,
    _db: sled::Db,
}

fn node(store: StoreLimits) -> Node {
    let key = Keypair::generate_ed25519();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let mut config = DhtConfig::default();
    config.store = store;
    let dht = Dht::new(key.public().to_peer_id(), &db, config).unwrap();
    let mut transport = TransportConfig::default();
    transport.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let swarm = build_swarm(key.clone(), &transport, |_, _| dht).unwrap();
    Node {
        key,
        swarm,
        _db: db,
    }
}

impl Node {
    fn peer(&self) -> PeerId {
        self.key.public().to_peer_id()
    }
}

async fn listen_addr(n: &mut Node) -> Multiaddr {
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = n.swarm.select_next_some().await {
            n.swarm.add_external_address(address.clone());
            return address;
        }
    }
}

/// The next event of any of the three swarms, with the node's index.
async fn next(nodes: &mut [Node; 3]) -> (usize, SwarmEvent<DhtEvent>) {
    let [a, b, c] = nodes;
    tokio::select! {
        e = a.swarm.select_next_some() => (0, e),
        e = b.swarm.select_next_some() => (1, e),
        e = c.swarm.select_next_some() => (2, e),
    }
}

/// Records the target holds, per subject.
fn held(target: &mut Node, identities: &[Keypair]) -> BTreeMap<PeerId, usize> {
    let mut counts = BTreeMap::new();
    for id in identities {
        let subject = id.public().to_peer_id();
        let n = (0..PER_IDENTITY)
            .filter(|i| {
                target
                    .swarm
                    .behaviour_mut()
                    .get_local(&format!("ns{i}"), &subject)
                    .is_some()
            })
            .count();
        if n > 0 {
            counts.insert(subject, n);
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_many_identities_stay_within_the_caps() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let limits = StoreLimits {
        max_records: MAX_RECORDS,
        ..StoreLimits::default()
    };
    // 0: the target; 1: mallory; 2: a well-behaved agent.
    let mut nodes = [
        node(limits),
        node(StoreLimits::default()),
        node(StoreLimits::default()),
    ];
    let target_addr = listen_addr(&mut nodes[0]).await;
    let target = nodes[0].peer();
    for n in nodes.iter_mut().skip(1) {
        listen_addr(n).await;
        n.swarm
            .behaviour_mut()
            .add_address(&target, target_addr.clone());
        n.swarm.dial(target_addr.clone()).unwrap();
    }

    let identities: Vec<Keypair> = (0..IDENTITIES)
        .map(|_| Keypair::generate_ed25519())
        .collect();
    let expires = agentmesh_dht::now_ms() + 3_600_000;
    let mut queue: VecDeque<SignedRecord> = identities
        .iter()
        .flat_map(|id| {
            (0..PER_IDENTITY).map(move |i| {
                SignedRecord::sign(id, &format!("ns{i}"), b"junk".to_vec(), 1, expires).unwrap()
            })
        })
        .collect();
    let total = queue.len();

    let started = std::time::Instant::now();
    let (mut in_flight, mut done, mut refused, mut peak) = (0usize, 0usize, 0usize, 0usize);
    tokio::time::timeout(WAIT, async {
        while done < total {
            while in_flight < IN_FLIGHT {
                let Some(record) = queue.pop_front() else {
                    break;
                };
                nodes[1]
                    .swarm
                    .behaviour_mut()
                    .put_to(record, vec![target], 1)
                    .unwrap();
                in_flight += 1;
            }
            match next(&mut nodes).await {
                (1, SwarmEvent::Behaviour(DhtEvent::PutDone { .. })) => {
                    in_flight -= 1;
                    done += 1;
                }
                (
                    0,
                    SwarmEvent::Behaviour(DhtEvent::InboundRejected {
                        error: RecordError::StoreFull,
                        ..
                    }),
                ) => refused += 1,
                _ => {}
            }
            let stored = nodes[0].swarm.behaviour_mut().stored_records();
            assert!(stored <= MAX_RECORDS, "the store holds {stored}");
            peak = peak.max(stored);
        }
    })
    .await
    .expect("mallory's puts end");
    let flood = started.elapsed();

    let counts = held(&mut nodes[0], &identities);
    let holders = counts.len();
    let most = counts.values().copied().max().unwrap_or(0);
    let fair = MAX_RECORDS.div_ceil(holders.max(1));
    println!(
        "{total} records from {IDENTITIES} identities in {flood:?}: store peak {peak}, \
         {refused} refused full, {holders} identities hold records, at most {most} each \
         (fair share {fair})"
    );
    assert_eq!(peak, MAX_RECORDS, "the flood filled the store");
    assert!(refused > 0, "some records were refused");
    assert!(
        most <= fair + 1,
        "one identity holds {most} records, over the fair share {fair} + 1"
    );
    assert!(
        holders > MAX_RECORDS / PER_IDENTITY,
        "only {holders} hold records"
    );

    // A legitimate subject (the well-behaved agent) stores its card: the
    // target takes it in place of one of the biggest holder's records, and
    // another node finds it.
    let honest = nodes[2].key.clone();
    let card = SignedRecord::sign(&honest, "card", b"honest".to_vec(), 1, expires).unwrap();
    let q = nodes[2]
        .swarm
        .behaviour_mut()
        .put_to(card, vec![target], 1)
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let (2, SwarmEvent::Behaviour(DhtEvent::PutDone { query, .. })) =
                next(&mut nodes).await
            {
                if query == q {
                    break;
                }
            }
        }
    })
    .await
    .expect("the card's put ends");
    let subject = nodes[2].peer();
    assert!(
        nodes[0]
            .swarm
            .behaviour_mut()
            .get_local("card", &subject)
            .is_some(),
        "the target stored the card"
    );
    assert!(nodes[0].swarm.behaviour_mut().stored_records() <= MAX_RECORDS);
    let q = nodes[1].swarm.behaviour_mut().get("card", &subject);
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let (1, SwarmEvent::Behaviour(DhtEvent::RecordFound { query, record })) =
                next(&mut nodes).await
            {
                if query == q {
                    break record;
                }
            }
        }
    })
    .await
    .expect("the lookup ends")
    .expect("the card is found");
    assert_eq!(found.payload, b"honest");
}
