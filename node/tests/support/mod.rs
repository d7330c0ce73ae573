//! What the node's integration tests share: one fresh identity's KNOCK
//! (the Sybil floods), and `agentmesh` processes ([`cli`]).
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cli;

use std::time::Duration;

use futures::StreamExt;
use libp2p::{swarm::SwarmEvent, Multiaddr, PeerId};

use agentmesh_node::{
    crypto::envelope::SessionId,
    knock::{Decision, KnockBody, SignedDecision, SignedKnock},
    wire::{KNOCK_PROTOCOL, MAX_FRAME_SIZE},
    Amid, Config, Identity, Intent, Node, Passphrase,
};
use agentmesh_transports::framing::FramedStream;

/// One fresh identity (number `i` of the flood tagged `tag`): its own libp2p swarm (QUIC and the stream protocol
/// only), one connection to bob, one KNOCK, then gone. Returns bob's
/// decision, or `None` when the stream was shed unanswered (under a flood
/// the transport drops inbound streams its queue has no room for).
pub async fn sybil_knock(
    tag: u8,
    i: usize,
    bob: Amid,
    bob_peer: PeerId,
    bob_addr: Multiaddr,
) -> Option<Decision> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    seed[8] = tag;
    let id = Identity::from_seed(&seed);
    let keypair = id.libp2p_keypair().unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(bob_addr).unwrap();
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == bob_peer => break,
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("sybil {i}: {error}"),
            _ => {}
        }
    }
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let knock = SignedKnock::sign(
        &id,
        &KnockBody {
            from: id.amid(),
            to: bob,
            intent: Intent::default(),
            session: SessionId::random(),
            ts_ms: agentmesh_dht::now_ms(),
            nonce: seed[..16].try_into().unwrap(),
            first: Vec::new(),
            credentials: Default::default(),
            moved_from: Vec::new(),
        },
    )
    .unwrap();
    let answer = async {
        let s = control.open_stream(bob_peer, KNOCK_PROTOCOL).await.ok()?;
        let mut s = FramedStream::new(s, MAX_FRAME_SIZE);
        s.send(knock.to_bytes()).await.ok()?;
        s.recv().await.ok()?
    }
    .await;
    driver.abort();
    let answer = answer?;
    let decision = SignedDecision::from_bytes(&answer).unwrap();
    let (decision, _) = decision
        .verify(&bob, &knock)
        .expect("bob signs every answer, refusals included");
    Some(decision)
}

/// Starts the node `name` in `dir` with `config`, joined through `boot`:
/// again too, once a stopped node let go of its database (its lock is the
/// event waited on, for up to `wait`).
pub async fn start_node(
    dir: &std::path::Path,
    name: &str,
    config: Config,
    boot: Option<&Node>,
    wait: Duration,
) -> Node {
    let deadline = tokio::time::Instant::now() + wait;
    let addrs = match boot {
        Some(b) => b.listen_addrs().await,
        None => Vec::new(),
    };
    loop {
        let b = Node::builder(config.clone())
            .data_dir(dir.join(name))
            .passphrase(Passphrase::new(name))
            .bootstraps(addrs.clone());
        match b.spawn().await {
            Ok(n) => return n,
            Err(e) if e.to_string().contains("lock") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{name} starts: {e}"),
        }
    }
}
