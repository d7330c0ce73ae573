//! `agentmesh-sim sim`: the whole agent network in virtual time.
//!
//! One thread, one seeded random source, one queue of timed events: time
//! jumps from one event to the next, so an hour of a 10 000-agent network
//! runs in minutes and the same scenario and seed give the same report,
//! byte for byte.
//!
//! Every node runs the DHT's own sans-IO Kademlia engine
//! ([`agentmesh_dht::engine`]) and publishes and looks up real signed
//! cards (Ed25519, the DHT's validation). The network (latency between
//! regions, jitter, loss), NATs (which pairs a hole punch connects, from
//! the NAT lab), relays (reservations, mailbox shares and TTL, with the
//! relay's own default limits), churn (Weibull sessions) and the workload
//! are models; they are described in `docs/simulations.md`.

mod model;
mod report;
mod scenario;
mod svg;
mod world;

pub use model::{hole_punch_works, Nat, REGIONS, RTT_MS};
pub use report::{Path, Report};
pub use scenario::{
    ChurnModel, NatMix, NetworkModel, RelayModel, Scenario, ScenarioError, ScriptedEvent,
    ScriptedKind, Workload, READY_MADE,
};

/// Runs `scenario` to the end. With `progress`, a bar on stderr follows
/// the virtual time when stderr is a terminal; otherwise a line goes to
/// stderr every tenth of it.
pub fn run(scenario: &Scenario, progress: bool) -> Report {
    world::World::new(scenario).run(&crate::progress::Progress::stderr(progress))
}

/// The process's peak resident memory, MiB (Linux), for the run's summary.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
