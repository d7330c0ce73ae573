//! NAT traversal between real processes in network namespaces, behind NAT
//! routers made with nftables (see `agentmesh_sim::netns`). They need root
//! and `ip`/`nft`: without them each test says why and is skipped, unless
//! `AGENTMESH_REQUIRE_NETNS=1` (set by `.ci/run`, which runs as root) makes
//! that a failure.

use agentmesh_sim::netns::{Lab, NatKind};

#[test]
fn each_nat_kind_maps_and_filters_as_named() {
    if agentmesh_sim::netns::skip_test("each_nat_kind_maps_and_filters_as_named") {
        return;
    }
    let mut lab = Lab::new().expect("network namespaces");
    for kind in NatKind::ALL {
        let nat = lab.nat_host(&format!("h{}", kind as u8), kind).unwrap();
        let seen = lab.probe(&nat).unwrap();
        assert_eq!(seen, kind.expected(), "{kind}");
    }
}

use std::{path::Path, time::Duration};

use agentmesh_node::PathKind;
use agentmesh_sim::{
    natlab::{NatPair, WAIT},
    process::{control_status, start_agent},
};
use serde_json::json;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

/// Bob's connections to alice as alice's status lists them.
async fn addrs_to(pair: &NatPair, peer: &str) -> Vec<String> {
    let status = control_status(&pair.alice.dir).await.unwrap();
    status
        .net
        .connected
        .iter()
        .find(|p| p.peer == peer)
        .map(|p| p.addrs.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_tells_an_agent_behind_nat_from_a_public_one() {
    if agentmesh_sim::netns::skip_test("autonat_tells_an_agent_behind_nat_from_a_public_one") {
        return;
    }
    // Alice and bob wait to be told they are behind their NATs.
    let mut pair = NatPair::start(exe(), NatKind::PortRestricted, NatKind::Symmetric)
        .await
        .unwrap();
    let status = control_status(&pair.alice.dir).await.unwrap();
    assert_eq!(status.net.nat, agentmesh_node::NatStatus::BehindNat);
    assert!(status.net.external_addrs.is_empty(), "{status:?}");
    // Nobody could dial her to query the DHT: she only queries it.
    assert_eq!(status.net.dht_mode, agentmesh_dht::DhtMode::Client);

    // Carol on the public segment is told she is public, at her address.
    let carol_host = pair.lab.public_host("carol").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut carol, _) = start_agent(
        carol_host.launcher(exe()),
        "carol",
        dir.path(),
        &pair.boot_addr,
        &["--listen".into(), carol_host.quic_listen()],
    )
    .await
    .unwrap();
    let v = carol
        .wait_for(WAIT, |v| v["event"] == "reachability")
        .await
        .unwrap();
    assert_eq!(v["status"], "public", "{v}");
    let at = v["addr"].as_str().unwrap();
    assert!(
        at.starts_with(&format!("/ip4/{}/udp/", carol_host.ip)),
        "{at}"
    );
    let status = control_status(dir.path()).await.unwrap();
    assert_eq!(status.net.nat, agentmesh_node::NatStatus::Public);
    assert!(!status.net.external_addrs.is_empty());
    assert_eq!(status.net.dht_mode, agentmesh_dht::DhtMode::Server);
    // A public agent never listens through a relay.
    assert!(
        !status
            .net
            .listen_addrs
            .iter()
            .any(|a| a.contains("p2p-circuit")),
        "{status:?}"
    );
    drop(carol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_port_restricted_nats_the_relayed_path_goes_direct_and_survives_the_relay() {
    if agentmesh_sim::netns::skip_test(
        "behind_port_restricted_nats_the_relayed_path_goes_direct_and_survives_the_relay",
    ) {
        return;
    }
    let mut pair = NatPair::start(exe(), NatKind::PortRestricted, NatKind::PortRestricted)
        .await
        .unwrap();
    let outcome = pair.attempt(WAIT).await.unwrap();
    assert!(outcome.started_relayed, "{outcome:?}");
    assert!(
        outcome.direct,
        "{outcome:?}; bob said {:#?}",
        pair.bob.drain()
    );
    // Bob's direct connection comes from alice's NAT, not a circuit.
    let addr = outcome.direct_addr.unwrap();
    assert!(
        addr.starts_with(&format!("/ip4/{}/udp/", pair.alice_nat.public_ip))
            && !addr.contains("p2p-circuit"),
        "{addr}"
    );
    // Alice ends with only the direct connection, to bob's NAT.
    let bob = pair.bob_amid.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let addrs = addrs_to(&pair, &bob).await;
        if !addrs.is_empty() && addrs.iter().all(|a| !a.contains("p2p-circuit")) {
            assert!(
                addrs[0].starts_with(&format!("/ip4/{}/udp/", pair.bob_nat.public_ip)),
                "{addrs:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still relayed: {addrs:?}"
        );
        // Woken by alice's next event line, or after a second.
        let _ = pair.alice.wait_for(Duration::from_secs(1), |_| true).await;
    }
    // A round trip goes direct: alice's receipt and bob's message.
    let (receipt, received) = pair.send(json!({ "n": 1 })).await.unwrap();
    assert_eq!(
        (receipt, received),
        (PathKind::DirectQuic, PathKind::DirectQuic)
    );
    // So does a 1 MiB stream, whole and with the right digest.
    let (path, _) = pair.stream(1 << 20).await.unwrap();
    assert_eq!(path, PathKind::DirectQuic);

    // The relay dies: messages sent after it still arrive, all of them.
    pair.relay.take().unwrap().kill().await.unwrap();
    for n in 2..12 {
        let (receipt, received) = pair.send(json!({ "n": n })).await.unwrap();
        assert_eq!(receipt, PathKind::DirectQuic, "message {n}");
        assert_eq!(received, PathKind::DirectQuic, "message {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_symmetric_nats_the_path_stays_relayed_and_messages_arrive() {
    if agentmesh_sim::netns::skip_test(
        "behind_symmetric_nats_the_path_stays_relayed_and_messages_arrive",
    ) {
        return;
    }
    let mut pair = NatPair::start(exe(), NatKind::Symmetric, NatKind::Symmetric)
        .await
        .unwrap();
    let outcome = pair.attempt(WAIT).await.unwrap();
    assert!(outcome.started_relayed, "{outcome:?}");
    assert!(!outcome.direct, "{outcome:?}");
    assert_eq!(outcome.first_path, PathKind::Relayed);
    let (path, _) = pair.stream(1 << 20).await.unwrap();
    assert_eq!(path, PathKind::Relayed);
    for n in 1..4 {
        let (receipt, received) = pair.send(json!({ "n": n })).await.unwrap();
        assert_eq!((receipt, received), (PathKind::Relayed, PathKind::Relayed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_port_restricted_nats_the_relayed_path_goes_direct_over_webrtc() {
    if agentmesh_sim::netns::skip_test(
        "behind_port_restricted_nats_the_relayed_path_goes_direct_over_webrtc",
    ) {
        return;
    }
    let mut pair = NatPair::start_with(
        exe(),
        NatKind::PortRestricted,
        NatKind::PortRestricted,
        "webrtc",
    )
    .await
    .unwrap();
    let outcome = pair.attempt(WAIT).await.unwrap();
    assert!(outcome.started_relayed, "{outcome:?}");
    assert!(
        outcome.direct,
        "{outcome:?}; bob said {:#?}",
        pair.bob.drain()
    );
    // Bob's WebRTC connection comes from alice's NAT (the address ICE
    // selected), not through the circuit.
    let addr = outcome.direct_addr.unwrap();
    assert!(
        addr.starts_with(&format!("/ip4/{}/udp/", pair.alice_nat.public_ip))
            && addr.contains("/webrtc")
            && !addr.contains("p2p-circuit"),
        "{addr}"
    );
    // Messages go over it, also once the relay is gone.
    pair.relay.take().unwrap().kill().await.unwrap();
    for n in 1..4 {
        let (receipt, received) = pair.send(json!({ "n": n })).await.unwrap();
        assert_eq!(receipt, PathKind::DirectWebRtc, "message {n}");
        assert_eq!(received, PathKind::DirectWebRtc, "message {n}");
    }
}
