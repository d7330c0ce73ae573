//! Two agents behind NAT routers, a bootstrap and a relay on the public
//! segment, all real processes in network namespaces ([`crate::netns`]):
//! the setup of the NAT traversal tests and of `agentmesh-sim natlab`,
//! which runs every pair of NAT kinds and reports how often the relayed
//! connection became direct, and how fast.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use agentmesh_node::PathKind;
use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{
    netns::{Lab, NatHost, NatKind},
    process::{control_send, start_agent, start_bootstrap_with_registry, start_relay, Proc},
};

/// Generous bound on each wait (the machine may be loaded).
pub const WAIT: Duration = Duration::from_secs(90);

/// A running NAT pair. Fields drop in order: processes first, then the
/// namespaces.
#[derive(Debug)]
pub struct NatPair {
    /// The agent that sends first, behind `alice_nat`.
    pub alice: Proc,
    /// The agent that receives first, behind `bob_nat`.
    pub bob: Proc,
    /// The relay (take it to kill it).
    pub relay: Option<Proc>,
    /// The bootstrap.
    pub boot: Proc,
    /// Alice's AMID.
    pub alice_amid: String,
    /// Bob's AMID.
    pub bob_amid: String,
    /// Alice's NAT.
    pub alice_nat: NatHost,
    /// Bob's NAT.
    pub bob_nat: NatHost,
    /// The relay's address.
    pub relay_addr: String,
    /// The bootstrap's address.
    pub boot_addr: String,
    _dir: tempfile::TempDir,
    /// The namespaces.
    pub lab: Lab,
}

/// Arguments for an agent behind a NAT: QUIC on its LAN address, the
/// relay, and a DHT client (peers could not dial it to serve queries);
/// the hole punching mode, with the bootstrap's STUN server.
fn agent_args(host: &NatHost, relay: &str, hole_punch: &str, stun: &str) -> Vec<String> {
    vec![
        "--listen".into(),
        host.host.quic_listen(),
        "--relay".into(),
        relay.into(),
        "--dht-client".into(),
        "--hole-punch".into(),
        hole_punch.into(),
        "--stun".into(),
        stun.into(),
    ]
}

impl NatPair {
    /// Starts the public side and the two agents, and waits until both
    /// know they are behind a NAT and their cards list a relayed address.
    pub async fn start(exe: &Path, alice_kind: NatKind, bob_kind: NatKind) -> Result<Self> {
        Self::start_with(exe, alice_kind, bob_kind, "quic").await
    }

    /// [`NatPair::start`] with a hole punching mode (`quic`, `webrtc` or
    /// `both`); the bootstrap serves STUN on port 3478 of its address.
    pub async fn start_with(
        exe: &Path,
        alice_kind: NatKind,
        bob_kind: NatKind,
        hole_punch: &str,
    ) -> Result<Self> {
        let mut lab = Lab::new()?;
        let dir = tempfile::tempdir()?;
        let boot_host = lab.public_host("boot")?;
        let relay_host = lab.public_host("relay")?;
        let alice_nat = lab.nat_host("alice", alice_kind)?;
        let bob_nat = lab.nat_host("bob", bob_kind)?;
        let (boot, boot_addr, _) = start_bootstrap_with_registry(
            boot_host.launcher(exe),
            &dir.path().join("boot"),
            &[boot_host.quic_listen()],
        )
        .await
        .context("bootstrap")?;
        let (relay, relay_addrs) = start_relay(
            relay_host.launcher(exe),
            &dir.path().join("relay"),
            &boot_addr,
            &[relay_host.quic_listen()],
            &[],
        )
        .await
        .context("relay")?;
        let relay_addr = relay_addrs[0].clone();
        let stun = format!("{}:3478", boot_host.ip);
        let (mut alice, alice_amid) = start_agent(
            alice_nat.host.launcher(exe),
            "alice",
            &dir.path().join("alice"),
            &boot_addr,
            &agent_args(&alice_nat, &relay_addr, hole_punch, &stun),
        )
        .await
        .context("alice")?;
        let (mut bob, bob_amid) = start_agent(
            bob_nat.host.launcher(exe),
            "bob",
            &dir.path().join("bob"),
            &boot_addr,
            &agent_args(&bob_nat, &relay_addr, hole_punch, &stun),
        )
        .await
        .context("bob")?;
        wait_behind_nat(&mut alice).await?;
        wait_behind_nat(&mut bob).await?;
        Ok(Self {
            alice,
            bob,
            relay: Some(relay),
            boot,
            alice_amid,
            bob_amid,
            alice_nat,
            bob_nat,
            relay_addr,
            boot_addr,
            _dir: dir,
            lab,
        })
    }

    /// Sends `payload` from alice to bob and waits for bob to print it;
    /// returns the path of alice's receipt and of bob's message.
    pub async fn send(&mut self, payload: Value) -> Result<(PathKind, PathKind)> {
        let r = control_send(&self.alice.dir, &self.bob_amid, payload.clone(), WAIT).await?;
        let receipt = r
            .receipt
            .with_context(|| format!("no receipt: {:?}", r.error))?;
        let m = self
            .bob
            .wait_for(WAIT, |v| v["event"] == "message" && v["payload"] == payload)
            .await?;
        let received: PathKind =
            serde_json::from_value(m["path"].clone()).context("message without a path")?;
        Ok((receipt.path, received))
    }

    /// Sends a first message, which opens a relayed connection, and waits
    /// for bob to report the connection direct or the hole punch failed.
    pub async fn attempt(&mut self, timeout: Duration) -> Result<Outcome> {
        let (first, _) = self.send(json!({ "n": 0 })).await?;
        let relayed_at = self
            .bob
            .wait_for(WAIT, |v| {
                v["event"] == "connected" && v["peer"] == self.alice_amid.as_str()
            })
            .await
            .map(|v| (v["path"] == "relayed", Instant::now()))?;
        let alice = self.alice_amid.clone();
        let end = self
            .bob
            .wait_for(timeout, |v| {
                v["peer"] == alice.as_str()
                    && (v["event"] == "path_upgraded"
                        || (v["event"] == "hole_punch" && v["ok"] == false))
            })
            .await;
        let direct = match &end {
            Ok(v) => v["event"] == "path_upgraded",
            Err(_) => false,
        };
        Ok(Outcome {
            first_path: first,
            started_relayed: relayed_at.0,
            direct,
            time_to_direct: direct.then(|| relayed_at.1.elapsed()),
            direct_addr: end.ok().and_then(|v| v["addr"].as_str().map(str::to_owned)),
        })
    }
}

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The path of the first message's receipt.
    pub first_path: PathKind,
    /// Whether the first connection was relayed.
    pub started_relayed: bool,
    /// Whether it became direct.
    pub direct: bool,
    /// From the relayed connection (as bob saw it) to the direct one.
    pub time_to_direct: Option<Duration>,
    /// The direct connection's remote address, as bob saw it.
    pub direct_addr: Option<String>,
}

/// Waits until an agent reports itself behind a NAT and has published a
/// card listing its relayed address.
pub async fn wait_behind_nat(p: &mut Proc) -> Result<()> {
    p.wait_for(WAIT, |v| {
        v["event"] == "reachability" && v["status"] == "behind_nat"
    })
    .await?;
    p.wait_for(WAIT, |v| {
        v["event"] == "listening"
            && v["addr"]
                .as_str()
                .is_some_and(|a| a.contains("/p2p-circuit"))
    })
    .await?;
    // The card published after the relayed listener came up.
    p.clear_backlog();
    p.wait_for(WAIT, |v| {
        v["event"] == "card_published" && v["stored_remotely"] == true
    })
    .await?;
    Ok(())
}
