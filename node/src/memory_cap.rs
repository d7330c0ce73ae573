//! A cap on the node process's memory above which new connections are
//! refused (libp2p's `memory_connection_limits`): however many identities
//! dial, a node near its memory budget takes no more connections, incoming
//! or outgoing, until its resident memory falls again. Connections it
//! already has are kept.
//!
//! Written `90%` (of the system's physical memory), `512MiB` (also `KiB`,
//! `GiB`, `MB`, `GB`, or plain bytes) or `off`.

use std::{fmt, str::FromStr};

/// Default [`MemoryCap`]: 90 % of the system's physical memory.
pub const DEFAULT_MEMORY_CAP: MemoryCap = MemoryCap::Percent(90);

/// How much resident memory the node process may use before new
/// connections are refused. Defaults to [`DEFAULT_MEMORY_CAP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum MemoryCap {
    /// No cap.
    Off,
    /// A share of the system's physical memory, in percent (1 to 100).
    Percent(u8),
    /// A number of bytes of the process's resident memory.
    Bytes(u64),
}

impl Default for MemoryCap {
    fn default() -> Self {
        DEFAULT_MEMORY_CAP
    }
}

impl MemoryCap {
    /// The libp2p behaviour enforcing the cap; `None` when [`MemoryCap::Off`].
    pub(crate) fn behaviour(self) -> Option<libp2p::memory_connection_limits::Behaviour> {
        use libp2p::memory_connection_limits::Behaviour;
        match self {
            MemoryCap::Off => None,
            MemoryCap::Percent(p) => Some(Behaviour::with_max_percentage(f64::from(p) / 100.0)),
            MemoryCap::Bytes(b) => Some(Behaviour::with_max_bytes(
                usize::try_from(b).unwrap_or(usize::MAX),
            )),
        }
    }
}

impl fmt::Display for MemoryCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryCap::Off => f.write_str("off"),
            MemoryCap::Percent(p) => write!(f, "{p}%"),
            MemoryCap::Bytes(b) => write!(f, "{b}"),
        }
    }
}

/// A memory cap that is none of `N%` (1 to 100), a byte size or `off`.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad memory cap {0:?}: expected a percentage (`90%`), a size (`512MiB`, `2GB`, bytes) or `off`"
)]
pub struct BadMemoryCap(pub String);

impl FromStr for MemoryCap {
    type Err = BadMemoryCap;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMemoryCap(s.to_owned());
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
            return Ok(MemoryCap::Off);
        }
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            return if (1..=100).contains(&p) {
                Ok(MemoryCap::Percent(p))
            } else {
                Err(bad())
            };
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            _ => return Err(bad()),
        };
        match n.checked_mul(scale) {
            Some(b) if b > 0 => Ok(MemoryCap::Bytes(b)),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for MemoryCap {
    type Error = BadMemoryCap;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MemoryCap> for String {
    fn from(c: MemoryCap) -> Self {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_print() {
        for (text, cap) in [
            ("90%", MemoryCap::Percent(90)),
            ("off", MemoryCap::Off),
            ("1048576", MemoryCap::Bytes(1 << 20)),
            ("512MiB", MemoryCap::Bytes(512 << 20)),
            ("2 GB", MemoryCap::Bytes(2_000_000_000)),
        ] {
            assert_eq!(text.parse::<MemoryCap>().unwrap(), cap, "{text}");
            assert_eq!(cap.to_string().parse::<MemoryCap>().unwrap(), cap);
        }
        for bad in ["0%", "101%", "0", "12XB", "", "-5", "%"] {
            assert!(bad.parse::<MemoryCap>().is_err(), "{bad}");
        }
    }
}
