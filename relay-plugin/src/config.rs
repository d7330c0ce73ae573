//! Relay limits, from a TOML file or the defaults.

use std::{num::NonZeroU32, path::Path, time::Duration};

use libp2p::relay;
use serde::{Deserialize, Serialize};

/// Everything a relay volunteer can set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Circuit relay limits.
    pub circuit: CircuitLimits,
    /// Mailbox limits.
    pub mailbox: MailboxLimits,
}

/// Circuit relay v2 limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitLimits {
    /// Most reservations held at once. Defaults to 1024.
    pub max_reservations: usize,
    /// Most reservations per peer. Defaults to 4.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before it must be renewed, in seconds.
    /// Defaults to 3600.
    pub reservation_secs: u64,
    /// Most circuits open at once. Defaults to 1024.
    pub max_circuits: usize,
    /// Most circuits per peer. Defaults to 16.
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit, in seconds. Defaults to 3600.
    pub max_circuit_secs: u64,
    /// Most bytes one circuit carries (each way). Defaults to 64 MiB.
    pub max_circuit_bytes: u64,
    /// New circuits a source peer may open per minute. Defaults to 60.
    pub circuits_per_minute: u32,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_secs: 3600,
            max_circuits: 1024,
            max_circuits_per_peer: 16,
            max_circuit_secs: 3600,
            max_circuit_bytes: 64 << 20,
            circuits_per_minute: 60,
        }
    }
}

/// Mailbox limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxLimits {
    /// How long a deposited envelope is kept, in seconds. Defaults to 72 h.
    pub ttl_secs: u64,
    /// Most envelopes held for one recipient. Defaults to 100.
    pub max_per_recipient: usize,
    /// Most deposits accepted from one sender per minute. Defaults to 100.
    pub deposits_per_minute: u32,
    /// Largest envelope accepted, in bytes. Defaults to the largest
    /// envelope a node seals or opens (`MAX_ENVELOPE_SIZE`, 96 KiB); a
    /// larger value changes nothing, since a deposit's envelope is decoded
    /// with that limit.
    pub max_envelope_bytes: usize,
    /// Most envelopes returned by one fetch. Defaults to 50.
    pub max_fetch: usize,
    /// Most envelopes one sender the recipient has not named may have
    /// waiting for it (see [`Request::Senders`]). Defaults to 5.
    ///
    /// [`Request::Senders`]: agentmesh_node::mailbox::Request::Senders
    pub stranger_share: usize,
    /// Most envelopes all senders the recipient has not named may have
    /// waiting for it together, so fresh identities cannot fill a
    /// mailbox. Defaults to 25.
    pub strangers_total: usize,
    /// Most envelopes one sender the recipient named may have waiting for
    /// it. Defaults to 50.
    pub known_share: usize,
    /// Most senders a recipient may name. Defaults to 1024.
    pub max_known_senders: usize,
    /// Most bytes held for one recipient. Defaults to 8 MiB.
    pub max_bytes_per_recipient: u64,
    /// Most bytes the relay holds in all. Defaults to 1 GiB.
    pub max_total_bytes: u64,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            ttl_secs: 72 * 3600,
            max_per_recipient: 100,
            deposits_per_minute: 100,
            max_envelope_bytes: agentmesh_node::crypto::envelope::MAX_ENVELOPE_SIZE,
            max_fetch: 50,
            stranger_share: 5,
            strangers_total: 25,
            known_share: 50,
            max_known_senders: 1024,
            max_bytes_per_recipient: 8 << 20,
            max_total_bytes: 1 << 30,
        }
    }
}

impl MailboxLimits {
    /// The largest request frame the server reads: a deposit of the
    /// largest envelope, or a list of the most named senders, with room
    /// for the framing around them.
    pub fn max_request_bytes(&self) -> usize {
        let senders = self.max_known_senders.saturating_mul(48);
        self.max_envelope_bytes.max(senders).saturating_add(4096)
    }

    /// The time-to-live as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

/// Errors reading a relay configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid relay configuration.
    #[error("parse {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
}

impl RelayConfig {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The circuit relay v2 server's settings with these limits (the node
/// hosts the server and advertises it from the start).
pub fn circuit_config(limits: &CircuitLimits) -> relay::Config {
    let per_minute = NonZeroU32::new(limits.circuits_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer,
        reservation_duration: Duration::from_secs(limits.reservation_secs.max(1)),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(limits.max_circuit_secs.max(1)),
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    }
    .circuit_src_per_peer(per_minute, Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overlays_defaults() {
        let c: RelayConfig = toml::from_str("[mailbox]\nmax_per_recipient = 5\n").unwrap();
        assert_eq!(c.mailbox.max_per_recipient, 5);
        assert_eq!(c.mailbox.ttl_secs, 72 * 3600);
        assert_eq!(c.circuit, CircuitLimits::default());
        assert!(toml::from_str::<RelayConfig>("[mailbox]\nbogus = 1\n").is_err());
    }
}
