//! Scenario files: what network to build and what its agents do.
//!
//! A scenario is TOML; every field has a default, so a file names only what
//! it changes. The ready-made ones live in `simulations/scenarios/` and are
//! built into the binary.

use serde::Deserialize;

use super::model::{Nat, REGIONS};

/// Errors reading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML for a scenario.
    #[error("scenario: {0}")]
    Toml(#[from] toml::de::Error),
    /// Neither a ready-made name nor a readable file.
    #[error("no scenario named {0:?} (ready-made: {names}); nor a readable file", names = READY_MADE.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    /// Values that cannot be run.
    #[error("scenario: {0}")]
    Invalid(String),
}

/// The ready-made scenarios, by name.
pub const READY_MADE: &[(&str, &str)] = &[
    ("steady", include_str!("../../scenarios/steady.toml")),
    ("churn", include_str!("../../scenarios/churn.toml")),
    ("nat-heavy", include_str!("../../scenarios/nat-heavy.toml")),
    (
        "relay-failure",
        include_str!("../../scenarios/relay-failure.toml"),
    ),
    (
        "flash-crowd",
        include_str!("../../scenarios/flash-crowd.toml"),
    ),
];

/// A whole run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for the report.
    pub name: String,
    /// Agents (bootstrap and relay nodes come on top).
    pub nodes: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Virtual time simulated, in minutes.
    pub duration_min: u64,
    /// Agents join over this many minutes at the start.
    pub join_min: u64,
    /// Figures are taken from this minute on (the network settles first).
    pub warmup_min: u64,
    /// Bootstrap nodes.
    pub bootstraps: u32,
    /// Network model.
    pub network: NetworkModel,
    /// Share of agents behind each kind of NAT.
    pub nat: NatMix,
    /// Relay nodes.
    pub relays: RelayModel,
    /// Sessions and downtimes.
    pub churn: ChurnModel,
    /// What agents do.
    pub workload: Workload,
    /// Scripted events.
    #[serde(rename = "event")]
    pub events: Vec<ScriptedEvent>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "custom".into(),
            nodes: 1000,
            seed: 1,
            duration_min: 60,
            join_min: 10,
            warmup_min: 15,
            bootstraps: 2,
            network: NetworkModel::default(),
            nat: NatMix::default(),
            relays: RelayModel::default(),
            churn: ChurnModel::default(),
            workload: Workload::default(),
            events: Vec::new(),
        }
    }
}

/// Latency, jitter and loss.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkModel {
    /// Weight of each region (see [`REGIONS`]); agents are placed by
    /// weight. Missing regions weigh 0.
    pub regions: Vec<(String, f64)>,
    /// Each one-way delay is stretched by up to this fraction, at random.
    pub jitter: f64,
    /// Chance that a DHT message is lost.
    pub loss: f64,
}

impl Default for NetworkModel {
    fn default() -> Self {
        Self {
            regions: REGIONS.iter().map(|r| (r.to_string(), 1.0)).collect(),
            jitter: 0.1,
            loss: 0.001,
        }
    }
}

/// Shares of NAT kinds (the rest are public).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatMix {
    /// Full cone.
    pub full_cone: f64,
    /// Address-restricted cone.
    pub address_restricted: f64,
    /// Port-restricted cone.
    pub port_restricted: f64,
    /// Symmetric.
    pub symmetric: f64,
}

impl Default for NatMix {
    fn default() -> Self {
        Self {
            full_cone: 0.05,
            address_restricted: 0.1,
            port_restricted: 0.15,
            symmetric: 0.1,
        }
    }
}

impl NatMix {
    /// The kind for a uniform draw in [0, 1).
    pub(crate) fn pick(&self, u: f64) -> Nat {
        let mut edge = self.full_cone;
        if u < edge {
            return Nat::FullCone;
        }
        edge += self.address_restricted;
        if u < edge {
            return Nat::AddressRestricted;
        }
        edge += self.port_restricted;
        if u < edge {
            return Nat::PortRestricted;
        }
        edge += self.symmetric;
        if u < edge {
            return Nat::Symmetric;
        }
        Nat::Public
    }
}

/// Relay nodes: how many and what each holds (the relay's own defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayModel {
    /// How many.
    pub count: u32,
    /// Reservations each relay holds at once.
    pub max_reservations: usize,
    /// Mail kept for one recipient.
    pub max_per_recipient: usize,
    /// Mail one stranger may leave for one recipient.
    pub stranger_share: usize,
    /// Mail all strangers together may leave for one recipient.
    pub strangers_total: usize,
    /// Mail one known sender may leave for one recipient.
    pub known_share: usize,
    /// How long mail is kept, in minutes.
    pub ttl_min: u64,
}

impl Default for RelayModel {
    fn default() -> Self {
        let limits = agentmesh_relay::MailboxLimits::default();
        let circuit = agentmesh_relay::CircuitLimits::default();
        Self {
            count: 5,
            max_reservations: circuit.max_reservations,
            max_per_recipient: limits.max_per_recipient,
            stranger_share: limits.stranger_share,
            strangers_total: limits.strangers_total,
            known_share: limits.known_share,
            ttl_min: limits.ttl_secs / 60,
        }
    }
}

/// Churn: agents alternate sessions and downtimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChurnModel {
    /// Churn at all.
    pub enabled: bool,
    /// Weibull shape of session lengths (0.61 fits IPFS DHT servers).
    pub session_shape: f64,
    /// Weibull scale of session lengths, hours (3.66 fits IPFS).
    pub session_scale_h: f64,
    /// Mean downtime, hours (exponential).
    pub downtime_mean_h: f64,
    /// Share of departures that are crashes (0 to 1). An agent that stops
    /// cleanly tells the peers it has sessions with (its offline card) and
    /// closes its connections, so their mail goes to its mailbox at once;
    /// one that crashes tells nobody, and a sender finds out only when its
    /// messages go unacknowledged (the link's delivery machine, after
    /// `ACK_TIMEOUT`).
    pub crash_share: f64,
}

impl Default for ChurnModel {
    fn default() -> Self {
        Self {
            enabled: false,
            session_shape: 0.61,
            session_scale_h: 3.66,
            downtime_mean_h: 1.0,
            crash_share: 0.0,
        }
    }
}

/// What agents do, per agent and hour while online.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Card lookups of random agents.
    pub lookups_per_hour: f64,
    /// Messages to random agents (first contact looks the card up).
    pub messages_per_hour: f64,
    /// Chance that a message goes to an agent written to before.
    pub repeat_peer: f64,
    /// Card republish interval, minutes (the node's default, 20).
    pub republish_min: u64,
    /// Card lifetime, minutes (the node's default, 60): a card is signed
    /// afresh at every publish with this lifetime.
    pub card_ttl_min: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            lookups_per_hour: 4.0,
            messages_per_hour: 6.0,
            repeat_peer: 0.5,
            republish_min: agentmesh_node::Config::default().republish_every.as_secs() / 60,
            card_ttl_min: agentmesh_node::Config::default().card_ttl.as_secs() / 60,
        }
    }
}

/// A scripted event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedEvent {
    /// Minute of virtual time.
    pub at_min: u64,
    /// What happens.
    pub kind: ScriptedKind,
    /// Which relay (`relay-down`), region (`region-down`, `region-up`), or
    /// how many agents (`flash-crowd`).
    #[serde(default)]
    pub target: String,
}

/// Kinds of scripted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScriptedKind {
    /// A relay goes away for good (its mail with it).
    RelayDown,
    /// Every agent of a region goes offline.
    RegionDown,
    /// The agents of a region come back.
    RegionUp,
    /// A bootstrap node goes away.
    BootstrapDown,
    /// `target` more agents join within a minute.
    FlashCrowd,
}

impl Scenario {
    /// Parses a scenario from TOML.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.check()?;
        Ok(scenario)
    }

    /// A ready-made scenario by name, or a file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((_, text)) = READY_MADE.iter().find(|(n, _)| *n == name_or_path) {
            return Self::from_toml(text);
        }
        match std::fs::read_to_string(name_or_path) {
            Ok(text) => Self::from_toml(&text),
            Err(_) => Err(ScenarioError::Unknown(name_or_path.to_string())),
        }
    }

    /// Refuses values the simulator cannot run.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let invalid = |m: &str| Err(ScenarioError::Invalid(m.to_string()));
        if self.nodes < 2 {
            return invalid("nodes must be at least 2");
        }
        if self.bootstraps == 0 {
            return invalid("at least one bootstrap");
        }
        if self.duration_min == 0 || self.warmup_min >= self.duration_min {
            return invalid("duration_min must be over warmup_min");
        }
        let nat = &self.nat;
        let shares = [
            nat.full_cone,
            nat.address_restricted,
            nat.port_restricted,
            nat.symmetric,
        ];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 {
            return invalid("NAT shares must be in [0, 1] and sum to at most 1");
        }
        if !(0.0..1.0).contains(&self.network.loss) || self.network.jitter < 0.0 {
            return invalid("loss must be in [0, 1) and jitter not negative");
        }
        if self.network.regions.iter().all(|(_, w)| *w <= 0.0) {
            return invalid("some region must have a weight");
        }
        if let Some((name, _)) = self
            .network
            .regions
            .iter()
            .find(|(r, _)| !REGIONS.contains(&r.as_str()))
        {
            return Err(ScenarioError::Invalid(format!(
                "unknown region {name:?} (known: {})",
                REGIONS.join(", ")
            )));
        }
        if self.churn.enabled
            && (self.churn.session_shape <= 0.0
                || self.churn.session_scale_h <= 0.0
                || self.churn.downtime_mean_h <= 0.0)
        {
            return invalid("churn parameters must be positive");
        }
        if self.workload.republish_min == 0 || self.workload.card_ttl_min == 0 {
            return invalid("republish_min and card_ttl_min must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ready_made_scenario_parses() {
        for (name, _) in READY_MADE {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        assert!(Scenario::from_toml("nodes = 1").is_err());
        assert!(Scenario::from_toml("bogus = 1").is_err());
        let e = Scenario::from_toml("[network]\nregions = [[\"mars\", 1.0]]").unwrap_err();
        assert!(e.to_string().contains("mars"), "{e}");
        assert!(Scenario::from_toml("[nat]\nsymmetric = 0.9\nport_restricted = 0.9").is_err());
        assert!(matches!(
            Scenario::load("nope"),
            Err(ScenarioError::Unknown(_))
        ));
    }
}
