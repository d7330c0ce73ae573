//! `GET /v1/diagnostics`: the doctor's checks, run by the node itself. The
//! network part comes from the node's status (its probes); this module adds
//! what is on disk (the data directory probe, the keystore, the policy
//! file), the clock skew seen in received messages, the registry's clock
//! and, with `?punch=<AMID>`, a hole-punch probe of that peer, and hands it
//! all to [`crate::diagnostics::diagnose`].
//!
//! The probe looks the peer's card up and dials it (through a relay when
//! that is the only way), then follows the node's events and the path of
//! its connections to the peer until a direct one is up or
//! [`PUNCH_WAIT`] has passed since the relayed one ([`PunchWatch`] decides).

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{
    routes::{amid, Q},
    ApiError, Ctx, ErrorCode,
};
use crate::{
    crypto::keystore::{Keystore, KEYSTORE_FILE},
    diagnostics::{
        diagnose, nat_mapping, DataDirCheck, Inputs, KeystoreCheck, LocalChecks, PolicyCheck,
        PunchOutcome, PunchProbe, PunchWatch, RegistryClockCheck, PUNCH_WAIT,
    },
    events::Message,
    identity::Amid,
    knock::policy::Policy,
    Node, NodeEvent, PathKind, RegistryClientError,
};

/// The file the data directory probe writes, syncs and removes.
const PROBE_FILE: &str = "doctor.probe";
/// Bytes written by the probe.
const PROBE_SIZE: usize = 4096;
/// How many received messages the clock skew estimate looks at.
const SKEW_SAMPLES: usize = 32;
/// Time for the registry to tell its time, the connection included.
const REGISTRY_CLOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the probe to find the peer's card and reach it at all.
const PUNCH_REACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two attempts to reach the probed peer.
const PUNCH_REACH_RETRY: Duration = Duration::from_secs(1);

/// Where to reach the peer of `card`: the addresses it lists and, through
/// each relay it names, a circuit to it (it may hold a reservation there
/// that its card does not list yet).
fn reach_addrs(card: &crate::card::AgentCard, peer: crate::PeerId) -> Vec<libp2p::Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let mut addrs = card.multiaddrs();
    for (_, relay) in card.relay_addrs() {
        let circuit = relay.with(Protocol::P2pCircuit).with(Protocol::P2p(peer));
        if !addrs.contains(&circuit) {
            addrs.push(circuit);
        }
    }
    addrs
}

/// Our clock minus the senders', from the last messages that arrived
/// straight from their senders (not from a mailbox).
#[derive(Debug, Default)]
pub(super) struct ClockSkew {
    samples: Mutex<VecDeque<i64>>,
}

impl ClockSkew {
    /// Notes a message received at `now_ms` (our clock).
    pub(super) fn handle_message(&self, now_ms: u64, m: &Message) {
        if m.path == PathKind::Mailbox {
            return;
        }
        let diff = i128::from(now_ms) - i128::from(m.ts_ms);
        let diff = diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == SKEW_SAMPLES {
            s.pop_front();
        }
        s.push_back(diff);
    }

    /// The estimate: the smallest difference seen lately. Transit time and
    /// a message that waited (in a queue, across a restart) only make the
    /// difference larger, so the smallest is nearest the true skew.
    pub(super) fn estimate_ms(&self) -> Option<i64> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().copied().min()
    }
}

/// Writes, syncs and removes a small file in `dir`.
fn probe_dir(dir: &Path) -> DataDirCheck {
    use std::io::Write;
    let path = dir.join(PROBE_FILE);
    let started = Instant::now();
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_SIZE])?;
        f.sync_all()
    });
    let fsync = started.elapsed();
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(()) => DataDirCheck::Writable { fsync },
        Err(e) => DataDirCheck::Failed {
            error: e.to_string(),
        },
    }
}

fn check_keystore(dir: &Path) -> KeystoreCheck {
    match std::fs::read(dir.join(KEYSTORE_FILE)) {
        Ok(bytes) => match Keystore::check_file(&bytes) {
            Ok(()) => KeystoreCheck::Present,
            Err(e) => KeystoreCheck::Unreadable {
                error: e.to_string(),
            },
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeystoreCheck::Missing,
        Err(e) => KeystoreCheck::Unreadable {
            error: e.to_string(),
        },
    }
}

fn check_policy(file: Option<PathBuf>) -> PolicyCheck {
    let Some(path) = file else {
        return PolicyCheck::Default;
    };
    match Policy::from_file(&path) {
        Ok(_) => PolicyCheck::Valid {
            path: path.display().to_string(),
        },
        Err(e) => PolicyCheck::Invalid {
            path: path.display().to_string(),
            error: e.to_string(),
        },
    }
}

/// Asks the registry for its time, within [`REGISTRY_CLOCK_TIMEOUT`].
async fn registry_clock(node: &Node) -> RegistryClockCheck {
    match tokio::time::timeout(REGISTRY_CLOCK_TIMEOUT, node.registry_clock()).await {
        Ok(Ok(reading)) => RegistryClockCheck::Read(reading),
        Ok(Err(RegistryClientError::NotConfigured)) => RegistryClockCheck::NotConfigured,
        Ok(Err(RegistryClientError::Refused { code, .. })) if code == "invalid_request" => {
            RegistryClockCheck::NotServed
        }
        Ok(Err(e)) => RegistryClockCheck::Unreachable {
            error: e.to_string(),
        },
        Err(_) => RegistryClockCheck::Unreachable {
            error: format!("no answer within {} s", REGISTRY_CLOCK_TIMEOUT.as_secs()),
        },
    }
}

/// The path of our connection to `peer` now, if connected.
async fn path_now(node: &Node, peer: &str) -> Option<PathKind> {
    let status = node.status().await;
    status
        .net
        .connected
        .iter()
        .find(|p| p.peer == peer)
        .map(|p| p.path)
}

/// The hole-punch probe of `peer` (see the [module docs](self)).
async fn punch_probe(node: &Node, peer: Amid) -> PunchProbe {
    let label = peer.to_string();
    let outcome = match peer.peer_id() {
        Ok(peer_id) => punch(node, &label, peer, peer_id).await,
        Err(e) => PunchOutcome::Unreachable {
            error: e.to_string(),
        },
    };
    tracing::info!(peer = %peer.short(), ?outcome, "hole-punch probe");
    PunchProbe::new(label, outcome)
}

async fn punch(node: &Node, label: &str, peer: Amid, peer_id: crate::PeerId) -> PunchOutcome {
    // Subscribed first: nothing that happens from here on is missed.
    let mut events = node.events();
    let started = tokio::time::Instant::now();
    let mut watch = PunchWatch::new(PUNCH_WAIT);
    match path_now(node, label).await {
        Some(path) => watch.handle_path(path, started.elapsed(), true),
        None => {
            // Tried again (with the card looked up afresh) until the
            // timeout: a card published before the peer's relay
            // reservation lists only addresses behind its NAT.
            let mut last_error = None;
            let reach = async {
                loop {
                    let tried = match node.lookup(&peer).await {
                        None => Err("no card found in the DHT".to_owned()),
                        Some(card) => node
                            .connect(peer_id, reach_addrs(&card, peer_id))
                            .await
                            .map_err(|e| e.to_string()),
                    };
                    match tried {
                        Ok(path) => return path,
                        Err(e) => last_error = Some(e),
                    }
                    tokio::time::sleep(PUNCH_REACH_RETRY).await;
                }
            };
            match tokio::time::timeout(PUNCH_REACH_TIMEOUT, reach).await {
                Ok(path) => watch.handle_path(path, started.elapsed(), false),
                Err(_) => watch.handle_unreachable(last_error.unwrap_or_else(|| {
                    format!("not reached within {} s", PUNCH_REACH_TIMEOUT.as_secs())
                })),
            }
        }
    }
    loop {
        if let Some(outcome) = watch.poll_outcome(started.elapsed()) {
            return outcome;
        }
        let Some(deadline) = watch.deadline() else {
            // Neither an outcome nor a relayed connection: cannot happen
            // (reaching the peer gave a path or an error); said so.
            return PunchOutcome::Unreachable {
                error: "no connection".into(),
            };
        };
        // Woken by the next event about the peer, at the latest at the
        // deadline; the path is then read from the node's status, which
        // also covers events missed by a lagging receiver.
        let woken = tokio::time::timeout_at(started + deadline, events.recv()).await;
        match woken {
            Ok(Ok(
                NodeEvent::Connected { peer, .. }
                | NodeEvent::PathUpgraded { peer, .. }
                | NodeEvent::Disconnected { peer }
                | NodeEvent::HolePunch { peer, .. },
            )) if peer == label => {}
            Ok(Ok(_)) => continue,
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => {
                watch.handle_unreachable("the node stopped");
                continue;
            }
            Err(_) => continue,
        }
        if let Some(path) = path_now(node, label).await {
            watch.handle_path(path, started.elapsed(), false);
        }
    }
}

/// The query of `GET /v1/diagnostics`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct DiagnosticsQuery {
    /// Probe hole punching to this agent.
    #[serde(default)]
    punch: Option<String>,
}

/// `GET /v1/diagnostics`.
pub(super) async fn route(
    State(ctx): State<Arc<Ctx>>,
    Q(query): Q<DiagnosticsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let punch_peer = query.punch.as_deref().map(amid).transpose()?;
    let (ready, leased) = ctx.inbox.counts();
    let dir = ctx.dir.clone();
    let policy_file = ctx.node.policy_file().map(Path::to_path_buf);
    // One disk probe at a time.
    let disk = async {
        let _one = ctx.doctor.lock().await;
        tokio::task::spawn_blocking(move || {
            (
                probe_dir(&dir),
                check_keystore(&dir),
                check_policy(policy_file),
            )
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    };
    let probe = async {
        match punch_peer {
            Some(peer) => Some(punch_probe(&ctx.node, peer).await),
            None => None,
        }
    };
    // The checks that wait on the network run side by side; the status is
    // read after them, so it shows what the probe did (the relay it went
    // through, the address the peer saw).
    let (local, registry, punch) = tokio::join!(disk, registry_clock(&ctx.node), probe);
    let local = local?;
    let status = ctx.node.status().await;
    let local = LocalChecks {
        data_dir: local.0,
        keystore: local.1,
        policy: local.2,
        clock_skew_ms: ctx.clock_skew.estimate_ms(),
    };
    let amid = status.amid.to_string();
    let (punched, punch_failed) = ctx.metrics.hole_punches();
    let mut inputs = Inputs::new(&amid, &status.net, &local)
        .with_inbox(ready as u64, leased as u64)
        .with_hole_punches(punched, punch_failed)
        .with_registry_clock(&registry);
    if let Some(p) = &punch {
        inputs = inputs.with_punch(p);
    }
    let checks = diagnose(&inputs);
    let registry_clock = match &registry {
        RegistryClockCheck::Read(r) => json!({
            "offset_ms": r.offset_ms(),
            "uncertainty_ms": r.uncertainty_ms(),
            "rtt_ms": r.rtt_ms,
        }),
        _ => serde_json::Value::Null,
    };
    Ok(Json(json!({
        "checks": checks,
        "nat_mapping": nat_mapping(&status.net.listen_addrs, &status.net.probes),
        "probes": status.net.probes,
        "clock_skew_ms": local.clock_skew_ms,
        "registry_clock": registry_clock,
        "punch": punch,
    })))
}
