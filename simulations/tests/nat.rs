//! NAT traversal between real processes in network namespaces, behind NAT
//! routers made with nftables (see `agentmesh_sim::netns`). They need root
//! and `ip`/`nft`: without them each test says why and is skipped, unless
//! `AGENTMESH_REQUIRE_NETNS=1` (set by `.ci/run`, which runs as root) makes
//! that a failure.

use agentmesh_sim::netns::{Filtering, Lab, NatKind};

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

/// The `agentmesh` binary of this build: in `$AGENTMESH_BIN_DIR`, else
/// next to `agentmesh-sim` (`cargo test --workspace` and `.ci/run` build
/// every binary of the workspace; alone, build it first with
/// `cargo build -p agentmesh-node --bin agentmesh`).
fn agentmesh_cli() -> std::path::PathBuf {
    let dir = std::env::var_os("AGENTMESH_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| exe().parent().unwrap().to_owned());
    let cli = dir.join("agentmesh");
    assert!(
        cli.exists(),
        "no agentmesh binary at {}: run `cargo build -p agentmesh-node --bin agentmesh` first",
        cli.display()
    );
    cli
}

/// `agentmesh doctor --json` for the agent in `dir`: one check per line.
async fn doctor(dir: &Path) -> Vec<serde_json::Value> {
    doctor_with(dir, &[]).await
}

/// `agentmesh doctor --json <args>` for the agent in `dir`.
async fn doctor_with(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(agentmesh_cli())
        .arg("--data-dir")
        .arg(dir)
        .args(["doctor", "--json"])
        .args(args)
        .output()
        .await
        .unwrap();
    let checks: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // It fails only when a check failed, and then says which.
    let failed = checks.iter().any(|c| c["result"] == "fail");
    assert_eq!(
        out.status.success(),
        !failed,
        "{checks:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    checks
}

/// Runs the doctor for `agent` until its NAT mapping check has a result
/// (both its bootstrap node and its relay reported the address they saw);
/// woken by the agent's next event line, or after a second.
async fn doctor_once_mapped(agent: &mut agentmesh_sim::process::Proc) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let checks = doctor(&agent.dir).await;
        let mapping = checks.iter().find(|c| c["check"] == "nat mapping").unwrap();
        let relays = checks.iter().find(|c| c["check"] == "relays").unwrap();
        if mapping["result"] != "skip" && relays["result"] == "ok" {
            return checks;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no NAT mapping yet: {checks:#?}",
            agent.name
        );
        let _ = agent.wait_for(Duration::from_secs(1), |_| true).await;
    }
}

fn check<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {checks:#?}"))
}

/// What the doctor must say of an agent behind `kind` whose NAT's public
/// address is `public_ip`.
fn assert_diagnosis(kind: NatKind, public_ip: std::net::Ipv4Addr, checks: &[serde_json::Value]) {
    let mapping = check(checks, "nat mapping");
    let detail = mapping["detail"].as_str().unwrap();
    if kind.expected().independent_mapping {
        assert_eq!(mapping["result"], "ok", "{kind}: {mapping}");
        assert!(
            detail.starts_with(&format!(
                "endpoint-independent: peers on different hosts all see {public_ip}:"
            )),
            "{kind}: {detail}"
        );
        assert_eq!(mapping["fix"], serde_json::Value::Null);
    } else {
        // Two peers, two different ports on the NAT's one address.
        assert_eq!(mapping["result"], "warn", "{kind}: {mapping}");
        assert!(
            detail.starts_with("endpoint-dependent (symmetric NAT): ")
                && detail.contains("hole punching is unlikely, relays carry the traffic"),
            "{kind}: {detail}"
        );
        assert_eq!(
            detail.matches(&format!("saw {public_ip}:")).count(),
            2,
            "{detail}"
        );
        assert!(
            mapping["fix"].as_str().unwrap().contains("relay"),
            "{mapping}"
        );
    }
    // AutoNAT: behind a NAT. Behind a port-restricted or symmetric one,
    // the dial-backs are dropped: reachable through the relay. A full-cone
    // or address-restricted one lets the dial-backs of peers we sent to
    // in: AutoNAT says public, and the doctor adds that it is the NAT's
    // address.
    let reach = check(checks, "reachability");
    let detail = reach["detail"].as_str().unwrap();
    assert_eq!(reach["result"], "warn", "{kind}: {reach}");
    if kind.expected().filtering == Filtering::AddressAndPortDependent {
        assert!(detail.starts_with("behind a NAT"), "{kind}: {reach}");
    } else {
        assert!(
            detail.starts_with(&format!("public (AutoNAT) at /ip4/{public_ip}/udp/"))
                && detail.contains("but behind a NAT"),
            "{kind}: {reach}"
        );
    }
    // The bootstrap node and the relay both reached, with their round trips.
    for c in ["bootstrap", "relays"] {
        let c = check(checks, c);
        assert_eq!(c["result"], "ok", "{kind}: {c}");
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .starts_with("1 of 1 reached: ")
                && c["detail"].as_str().unwrap().ends_with(" ms"),
            "{kind}: {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_tells_a_symmetric_nat_from_an_endpoint_independent_one() {
    if agentmesh_sim::netns::skip_test(
        "the_doctor_tells_a_symmetric_nat_from_an_endpoint_independent_one",
    ) {
        return;
    }
    let mut pair = NatPair::start(exe(), NatKind::Symmetric, NatKind::PortRestricted)
        .await
        .unwrap();
    let alice = doctor_once_mapped(&mut pair.alice).await;
    assert_diagnosis(NatKind::Symmetric, pair.alice_nat.public_ip, &alice);
    let bob = doctor_once_mapped(&mut pair.bob).await;
    assert_diagnosis(NatKind::PortRestricted, pair.bob_nat.public_ip, &bob);
    assert_eq!(check(&bob, "hole punch")["result"], "skip", "{bob:#?}");

    // Alice messages bob through the relay; bob's hole punch to her fails,
    // and his doctor says why it may have.
    let outcome = pair.attempt(WAIT).await.unwrap();
    assert!(outcome.started_relayed && !outcome.direct, "{outcome:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let punch = loop {
        let checks = doctor(&pair.bob.dir).await;
        let punch = check(&checks, "hole punch").clone();
        if punch["result"] != "skip" {
            break punch;
        }
        assert!(tokio::time::Instant::now() < deadline, "{checks:#?}");
        let _ = pair.bob.wait_for(Duration::from_secs(1), |_| true).await;
    };
    assert_eq!(punch["result"], "warn", "{punch}");
    assert!(
        punch["detail"].as_str().unwrap().ends_with(
            "tried, none succeeded; the other side's NAT may be symmetric, or a firewall drops UDP"
        ),
        "{punch}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_finds_cone_nats_endpoint_independent_and_a_public_agent_without_nat() {
    if agentmesh_sim::netns::skip_test(
        "the_doctor_finds_cone_nats_endpoint_independent_and_a_public_agent_without_nat",
    ) {
        return;
    }
    let mut pair = NatPair::start(exe(), NatKind::FullCone, NatKind::AddressRestricted)
        .await
        .unwrap();
    let alice = doctor_once_mapped(&mut pair.alice).await;
    assert_diagnosis(NatKind::FullCone, pair.alice_nat.public_ip, &alice);
    let bob = doctor_once_mapped(&mut pair.bob).await;
    assert_diagnosis(NatKind::AddressRestricted, pair.bob_nat.public_ip, &bob);

    // Carol on the public segment: her bootstrap sees her own address.
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
    carol
        .wait_for(WAIT, |v| {
            v["event"] == "reachability" && v["status"] == "public"
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let checks = loop {
        let checks = doctor(dir.path()).await;
        if check(&checks, "nat mapping")["result"] != "skip" {
            break checks;
        }
        assert!(tokio::time::Instant::now() < deadline, "{checks:#?}");
        let _ = carol.wait_for(Duration::from_secs(1), |_| true).await;
    };
    let mapping = check(&checks, "nat mapping");
    assert_eq!(mapping["result"], "ok", "{mapping}");
    assert!(
        mapping["detail"].as_str().unwrap().starts_with(&format!(
            "no NAT: peers see our own address {}:",
            carol_host.ip
        )),
        "{mapping}"
    );
    let reach = check(&checks, "reachability");
    assert_eq!(reach["result"], "ok", "{reach}");
    drop(carol);
}

/// The doctor's punch probe from alice to bob, who have not been
/// connected before: the probe finding, right after the passive one.
async fn punch_probe(pair: &NatPair) -> serde_json::Value {
    let checks = doctor_with(&pair.alice.dir, &["--punch", &pair.bob_amid]).await;
    let at = checks
        .iter()
        .position(|c| c["check"] == "punch probe")
        .unwrap_or_else(|| panic!("no punch probe: {checks:#?}"));
    assert_eq!(checks[at - 1]["check"], "hole punch", "{checks:#?}");
    checks[at].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctors_punch_probe_goes_direct_between_port_restricted_nats() {
    if agentmesh_sim::netns::skip_test(
        "the_doctors_punch_probe_goes_direct_between_port_restricted_nats",
    ) {
        return;
    }
    let pair = NatPair::start(exe(), NatKind::PortRestricted, NatKind::PortRestricted)
        .await
        .unwrap();
    // Bob is reachable only through the relay; the hole punch makes it
    // direct within the probe's wait.
    let probe = punch_probe(&pair).await;
    assert_eq!(probe["result"], "ok", "{probe}");
    let detail = probe["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{}: direct (direct-quic) ", &pair.bob_amid[..12]))
            && detail.ends_with(" ms after the relayed connection"),
        "{detail}"
    );
    // Alice is now connected to bob's NAT, not through a circuit.
    let addrs = addrs_to(&pair, &pair.bob_amid).await;
    assert!(
        addrs
            .iter()
            .any(|a| a.starts_with(&format!("/ip4/{}/udp/", pair.bob_nat.public_ip))),
        "{addrs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctors_punch_probe_stays_relayed_through_a_symmetric_nat() {
    if agentmesh_sim::netns::skip_test(
        "the_doctors_punch_probe_stays_relayed_through_a_symmetric_nat",
    ) {
        return;
    }
    let pair = NatPair::start(exe(), NatKind::Symmetric, NatKind::PortRestricted)
        .await
        .unwrap();
    let probe = punch_probe(&pair).await;
    assert_eq!(probe["result"], "warn", "{probe}");
    let detail = probe["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "{}: relayed only, no direct connection within 1",
            &pair.bob_amid[..12]
        )),
        "{detail}"
    );
    assert!(
        probe["fix"]
            .as_str()
            .unwrap()
            .contains("endpoint-independent"),
        "{probe}"
    );
    // Still relayed: every connection to bob goes through the circuit.
    let addrs = addrs_to(&pair, &pair.bob_amid).await;
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.contains("p2p-circuit")),
        "{addrs:?}"
    );
}
