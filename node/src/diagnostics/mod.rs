//! The doctor's diagnosis: from what a node measured about itself and its
//! network to findings, each with a fix when it failed.
//!
//! The node measures ([`PeerProbe`]s in [`NetStatus::probes`]: the round
//! trip to each bootstrap node and relay, and the address each peer saw us
//! at, from identify) and the local API adds what it finds on disk
//! ([`LocalChecks`]); [`diagnose`] turns those inputs into [`Finding`]s. It
//! does no I/O and reads no clock, so every diagnosis can be tested from a
//! table of inputs.
//!
//! # NAT mapping
//!
//! Identify tells us the address each peer saw our connection come from.
//! Over UDP (QUIC) every connection leaves from the one socket we listen
//! on, so two peers on different hosts see:
//!
//! - our own listen address: no NAT between us and them;
//! - the same public address and port: the NAT maps **independently of the
//!   endpoint** (full cone, address- or port-restricted), so the address a
//!   relay or bootstrap saw is the one another peer can punch a hole to;
//! - different ports (or addresses): the NAT maps **per endpoint**
//!   (symmetric); the port another peer would need is not the one anyone
//!   saw, hole punching is unlikely to work and relays carry the traffic.
//!
//! TCP observations are not used: TCP dials leave from fresh ports, so they
//! would look symmetric behind any NAT.
//!
//! # Clock against the registry
//!
//! The node asks its registry for the time (`Request::Time` of
//! `/agentmesh/registry/1`) and notes our clock as the request left and the
//! round trip: a [`ClockReading`]. Taking the registry to have read its
//! clock halfway through the round trip, our clock minus the registry's is
//! [`ClockReading::offset_ms`], off by at most half the round trip. KNOCKs
//! and signed registry requests are refused when stamped more than
//! [`MAX_CLOCK_SKEW_MS`](crate::crypto::envelope::MAX_CLOCK_SKEW_MS) away from the
//! receiver's clock, so that is the window the check holds the offset to.
//!
//! # Hole-punch probe
//!
//! On request (`agentmesh doctor --punch <AMID>`) the node reaches one
//! peer (through a relay when that is the only way) and waits up to
//! [`PUNCH_WAIT`] for a direct connection. [`PunchWatch`] turns what it
//! sees (the paths of its connections to that peer, as time passes) into a
//! [`PunchOutcome`]: direct (and how long it took), relayed only, or
//! unreachable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NetStatus;

mod findings;
mod nat;
mod punch;

use findings::{
    bootstrap_finding, clock_finding, hole_punch_finding, mapping_finding, punch_probe_finding,
    reachability_finding, registry_clock_finding, relays_finding,
};
pub use nat::{nat_mapping, NatMapping};
pub use punch::{PunchOutcome, PunchProbe, PunchWatch};

/// Above this, writing and syncing a small file is reported as slow: every
/// message received is synced to disk before it is acknowledged.
pub const SLOW_FSYNC: Duration = Duration::from_millis(200);
/// A clock this far from the peers' (either way) is reported: KNOCKs are
/// refused outside a few minutes' window.
pub const CLOCK_SKEW_WARN: Duration = Duration::from_secs(30);
/// Above this round trip to a bootstrap node or relay, it is reported as
/// slow.
pub const SLOW_RTT: Duration = Duration::from_secs(1);
/// A backlog of unread messages above this is reported.
pub const INBOX_BACKLOG: u64 = 1000;
/// How long the hole-punch probe waits, once the peer is reached through a
/// relay, for a direct connection to replace the relayed one.
pub const PUNCH_WAIT: Duration = Duration::from_secs(10);

/// What a peer is to us, for the doctor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerRole {
    /// A bootstrap node we were configured with.
    Bootstrap,
    /// A relay keeping our mailbox (or configured with `--relay`).
    Relay,
    /// Any other connected peer.
    Peer,
}

/// What the node measured about one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerProbe {
    /// The peer (AMID when it is an agent key, else its peer id).
    pub peer: String,
    /// What it is to us.
    pub role: PeerRole,
    /// Its address as we know it (configured or chosen), if any.
    #[serde(default)]
    pub addr: Option<String>,
    /// Whether we have a connection to it now.
    pub connected: bool,
    /// The last round trip measured by ping on a connection to it.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
    /// Our address as it saw it (identify's observed address).
    #[serde(default)]
    pub observed_addr: Option<String>,
}

impl PeerProbe {
    /// A probe of `peer` in `role`, not connected, nothing measured.
    pub fn new(peer: impl Into<String>, role: PeerRole) -> Self {
        Self {
            peer: peer.into(),
            role,
            addr: None,
            connected: false,
            rtt_ms: None,
            observed_addr: None,
        }
    }
}

/// The outcome of the data directory probe: write and sync a small file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataDirCheck {
    /// Written and synced, in this long.
    Writable {
        /// How long the write and `fsync` took.
        fsync: Duration,
    },
    /// The write or the sync failed.
    Failed {
        /// The error.
        error: String,
    },
}

/// Whether the keystore is in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeystoreCheck {
    /// The file is there and is a keystore (the running node decrypted it
    /// at start with its passphrase).
    Present,
    /// No keystore file.
    Missing,
    /// The file is there but cannot be read or is not a keystore.
    Unreadable {
        /// Why.
        error: String,
    },
}

/// Whether the policy file the node was started with still parses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyCheck {
    /// No policy file: the built-in default policy.
    Default,
    /// The file parses (a reload would apply it).
    Valid {
        /// The file.
        path: String,
    },
    /// The file no longer parses or cannot be read.
    Invalid {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
}

/// What the local API finds on this machine for the doctor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalChecks {
    /// The data directory probe.
    pub data_dir: DataDirCheck,
    /// The keystore.
    pub keystore: KeystoreCheck,
    /// The policy file.
    pub policy: PolicyCheck,
    /// Our clock minus a peer's, in ms, where a peer's timestamp was
    /// available; `None`: none was.
    pub clock_skew_ms: Option<i64>,
}

/// Everything [`diagnose`] looks at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Inputs<'a> {
    /// Our AMID.
    pub amid: &'a str,
    /// The network status (with the probes).
    pub net: &'a NetStatus,
    /// Messages waiting in the inbox, to be read.
    pub inbox_ready: u64,
    /// Messages handed out and not acknowledged yet.
    pub inbox_leased: u64,
    /// What was found on disk.
    pub local: &'a LocalChecks,
    /// Hole punches (DCUtR) since start that succeeded.
    pub hole_punches_ok: u64,
    /// Hole punches since start that failed.
    pub hole_punches_failed: u64,
    /// The registry's clock against ours.
    pub registry_clock: &'a RegistryClockCheck,
    /// The hole-punch probe, when one was asked for.
    pub punch: Option<&'a PunchProbe>,
}

impl<'a> Inputs<'a> {
    /// The inputs of one diagnosis.
    pub fn new(amid: &'a str, net: &'a NetStatus, local: &'a LocalChecks) -> Self {
        Self {
            amid,
            net,
            inbox_ready: 0,
            inbox_leased: 0,
            local,
            hole_punches_ok: 0,
            hole_punches_failed: 0,
            registry_clock: &RegistryClockCheck::NotConfigured,
            punch: None,
        }
    }

    /// With what the registry's clock check found (without it: no
    /// registry configured).
    pub fn with_registry_clock(mut self, check: &'a RegistryClockCheck) -> Self {
        self.registry_clock = check;
        self
    }

    /// With the outcome of a hole-punch probe (its finding follows the
    /// passive hole punch one).
    pub fn with_punch(mut self, probe: &'a PunchProbe) -> Self {
        self.punch = Some(probe);
        self
    }

    /// With the hole punches since start: succeeded, failed.
    pub fn with_hole_punches(mut self, ok: u64, failed: u64) -> Self {
        self.hole_punches_ok = ok;
        self.hole_punches_failed = failed;
        self
    }

    /// With the inbox counts.
    pub fn with_inbox(mut self, ready: u64, leased: u64) -> Self {
        self.inbox_ready = ready;
        self.inbox_leased = leased;
        self
    }
}

/// One reading of a remote clock: our clock as the request left, the round
/// trip (on our monotonic clock), and the remote clock in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClockReading {
    /// Our clock as the request left, ms since the Unix epoch.
    pub sent_ms: u64,
    /// The round trip, in ms.
    pub rtt_ms: u64,
    /// The remote clock in its answer, ms since the Unix epoch.
    pub remote_ms: u64,
}

impl ClockReading {
    /// A reading: the request left at `sent_ms` (our clock), the answer
    /// came `rtt_ms` later and said `remote_ms`.
    pub fn new(sent_ms: u64, rtt_ms: u64, remote_ms: u64) -> Self {
        Self {
            sent_ms,
            rtt_ms,
            remote_ms,
        }
    }

    /// Our clock minus the remote's, in ms, taking the remote clock to have
    /// been read halfway through the round trip (off by at most
    /// [`Self::uncertainty_ms`]). Positive: we are ahead.
    pub fn offset_ms(&self) -> i64 {
        let midpoint = i128::from(self.sent_ms) + i128::from(self.rtt_ms / 2);
        let offset = midpoint - i128::from(self.remote_ms);
        offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// How far [`Self::offset_ms`] may be from the true offset: half the
    /// round trip.
    pub fn uncertainty_ms(&self) -> u64 {
        self.rtt_ms.div_ceil(2)
    }
}

/// What asking the registry for its clock gave.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryClockCheck {
    /// No registry is configured (`--registry`).
    NotConfigured,
    /// The registry was not reached or did not answer in time.
    Unreachable {
        /// Why.
        error: String,
    },
    /// The registry does not tell its time (an older version).
    NotServed,
    /// The registry answered.
    Read(ClockReading),
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Broken: the fix says what to do.
    Fail,
    /// Could not be checked (nothing to measure yet).
    Skip,
}

/// One finding of the doctor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Finding {
    /// What was checked (`bootstrap`, `nat mapping`, …).
    pub check: String,
    /// The result.
    pub result: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do about it; `None` when there is nothing to do.
    pub fix: Option<String>,
}

impl Finding {
    /// A finding of `check`.
    pub fn new(
        check: impl Into<String>,
        result: Outcome,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            check: check.into(),
            result,
            detail: detail.into(),
            fix,
        }
    }
}

fn ok(check: &str, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        result: Outcome::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(check: &str, result: Outcome, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        result,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// What the doctor concludes from the inputs, one finding per check, in a
/// fixed order.
pub fn diagnose(inputs: &Inputs<'_>) -> Vec<Finding> {
    let net = inputs.net;
    let mut out = vec![ok("node", format!("running as {}", inputs.amid))];
    out.push(if net.listen_addrs.is_empty() {
        bad(
            "listening",
            Outcome::Fail,
            "no listen address",
            "check --listen (the address must exist on this host) and that nothing else holds the port",
        )
    } else {
        ok(
            "listening",
            format!("{} address(es)", net.listen_addrs.len()),
        )
    });
    out.push(bootstrap_finding(&net.probes));
    out.push(if net.routing_table > 0 {
        ok(
            "DHT",
            format!(
                "{} peer(s) in the routing table ({})",
                net.routing_table,
                match net.dht_mode {
                    agentmesh_dht::DhtMode::Server => "server",
                    agentmesh_dht::DhtMode::Client => "client",
                    _ => "unknown mode",
                }
            ),
        )
    } else {
        bad(
            "DHT",
            Outcome::Fail,
            "no peer in the routing table: no bootstrap node reached",
            "check --bootstrap (a multiaddr ending in /p2p/<peer id>) and that the bootstrap node runs",
        )
    });
    out.push(if net.card_published {
        ok(
            "card",
            "published on other peers: others can find this agent by AMID",
        )
    } else {
        bad(
            "card",
            Outcome::Fail,
            "not published on any other peer yet: others cannot find this agent",
            "reach a bootstrap node first; the card is published within seconds of joining",
        )
    });
    let relays: Vec<&PeerProbe> = net
        .probes
        .iter()
        .filter(|p| p.role == PeerRole::Relay)
        .collect();
    let relays_up = relays.iter().filter(|p| p.connected).count();
    let mapping = nat_mapping(&net.listen_addrs, &net.probes);
    out.push(reachability_finding(net, relays_up, &mapping));
    out.push(hole_punch_finding(inputs, &mapping));
    if let Some(probe) = inputs.punch {
        out.push(punch_probe_finding(probe, &mapping));
    }
    out.push(mapping_finding(mapping));
    out.push(relays_finding(net, &relays));
    out.push(if net.mailbox_relays.is_empty() {
        bad(
            "mailbox",
            Outcome::Warn,
            "no relay keeps this agent's mailbox: messages sent while it is offline are not kept",
            "name a relay with --relay, or wait for one to be found in the DHT",
        )
    } else {
        ok(
            "mailbox",
            format!(
                "kept at {} relay(s): mail waits there while offline",
                net.mailbox_relays.len()
            ),
        )
    });
    out.push(clock_finding(inputs.local.clock_skew_ms));
    out.push(registry_clock_finding(inputs.registry_clock));
    out.push(match &inputs.local.data_dir {
        DataDirCheck::Writable { fsync } if *fsync > SLOW_FSYNC => bad(
            "data dir",
            Outcome::Warn,
            format!("writable, but write+fsync took {} ms", fsync.as_millis()),
            "move the data directory (--data-dir) to a faster, local disk: every message received is synced before it is acknowledged",
        ),
        DataDirCheck::Writable { fsync } => ok(
            "data dir",
            format!("writable, write+fsync {:.1} ms", fsync.as_secs_f64() * 1e3),
        ),
        DataDirCheck::Failed { error } => bad(
            "data dir",
            Outcome::Fail,
            format!("cannot write and sync a file: {error}"),
            "free disk space, or give the node's user write access to its data directory",
        ),
    });
    out.push(match &inputs.local.keystore {
        KeystoreCheck::Present => ok("keystore", "present and unlocked by the running node"),
        KeystoreCheck::Missing => bad(
            "keystore",
            Outcome::Fail,
            "no keystore in the data directory: the identity would be lost with this process",
            "restore identity.keystore from a backup, or check that --data-dir names this agent's directory",
        ),
        KeystoreCheck::Unreadable { error } => bad(
            "keystore",
            Outcome::Fail,
            format!("the keystore cannot be read: {error}"),
            "restore identity.keystore from a backup; the node will not start again with this one",
        ),
    });
    out.push(match &inputs.local.policy {
        PolicyCheck::Default => ok("policy", "the built-in default policy (no --policy file)"),
        PolicyCheck::Valid { path } => ok("policy", format!("{path} is valid")),
        PolicyCheck::Invalid { path, error } => bad(
            "policy",
            Outcome::Fail,
            format!("{path}: {error}"),
            "fix the file (try it with `agentmesh policy check <file>`); the node keeps the policy it loaded last, and will not start with this one",
        ),
    });
    out.push(if inputs.inbox_ready > INBOX_BACKLOG {
        bad(
            "inbox",
            Outcome::Warn,
            format!("{} messages wait to be read", inputs.inbox_ready),
            "the application is not reading: GET /v1/messages and acknowledge them",
        )
    } else {
        ok(
            "inbox",
            format!(
                "{} waiting, {} being handled",
                inputs.inbox_ready, inputs.inbox_leased
            ),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::MAX_CLOCK_SKEW_MS, NatStatus, PathKind};

    fn probe(peer: &str, role: PeerRole, addr: &str, rtt: Option<u64>, seen: &str) -> PeerProbe {
        PeerProbe {
            peer: peer.into(),
            role,
            addr: Some(addr.into()),
            connected: rtt.is_some(),
            rtt_ms: rtt,
            observed_addr: (!seen.is_empty()).then(|| seen.into()),
        }
    }

    fn local() -> LocalChecks {
        LocalChecks {
            data_dir: DataDirCheck::Writable {
                fsync: Duration::from_millis(2),
            },
            keystore: KeystoreCheck::Present,
            policy: PolicyCheck::Default,
            clock_skew_ms: Some(120),
        }
    }

    const BOOT: &str = "/ip4/198.51.100.1/udp/4001/quic-v1";
    const RELAY: &str = "/ip4/198.51.100.2/udp/4001/quic-v1";
    const LAN: &str = "/ip4/10.0.1.2/udp/5000/quic-v1";

    /// A node behind a NAT with a bootstrap node and a relay, where the two
    /// saw `at_boot` and `at_relay`.
    fn natted(at_boot: &str, at_relay: &str) -> NetStatus {
        NetStatus {
            listen_addrs: vec![LAN.into()],
            routing_table: 1,
            card_published: true,
            nat: NatStatus::BehindNat,
            mailbox_relays: vec![RELAY.into()],
            probes: vec![
                probe("boot", PeerRole::Bootstrap, BOOT, Some(12), at_boot),
                probe("relay", PeerRole::Relay, RELAY, Some(30), at_relay),
            ],
            ..NetStatus::default()
        }
    }

    fn find<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
        f.iter().find(|f| f.check == check).unwrap()
    }

    fn results(f: &[Finding], outcome: Outcome) -> Vec<&str> {
        f.iter()
            .filter(|f| f.result == outcome)
            .map(|f| f.check.as_str())
            .collect()
    }

    #[test]
    fn a_symmetric_nat_is_named_and_relays_are_the_fix() {
        let net = natted(
            "/ip4/203.0.113.7/udp/40001/quic-v1",
            "/ip4/203.0.113.7/udp/52999/quic-v1",
        );
        let l = local();
        let f = diagnose(&Inputs::new("am1", &net, &l).with_hole_punches(0, 3));
        let m = find(&f, "nat mapping");
        assert_eq!(m.result, Outcome::Warn);
        assert!(
            m.detail.starts_with("endpoint-dependent (symmetric NAT)"),
            "{}",
            m.detail
        );
        assert!(m.detail.contains("203.0.113.7:40001") && m.detail.contains("203.0.113.7:52999"));
        assert!(m.fix.as_deref().unwrap().contains("relay"));
        let h = find(&f, "hole punch");
        assert_eq!(
            h.detail,
            "3 tried, none succeeded; as expected behind a symmetric NAT: relays carry the traffic"
        );
        // Reachable through the relay: warned, not failed.
        assert_eq!(find(&f, "reachability").result, Outcome::Warn);
        assert_eq!(results(&f, Outcome::Fail), Vec::<&str>::new());
        assert_eq!(
            results(&f, Outcome::Warn),
            vec!["reachability", "hole punch", "nat mapping"]
        );
    }

    #[test]
    fn one_public_port_for_both_peers_is_endpoint_independent() {
        let at = "/ip4/203.0.113.7/udp/40001/quic-v1";
        let net = natted(at, at);
        let l = local();
        let f = diagnose(&Inputs::new("am1", &net, &l));
        let m = find(&f, "nat mapping");
        assert_eq!(m.result, Outcome::Ok);
        assert!(m.detail.starts_with("endpoint-independent"), "{}", m.detail);
        assert_eq!(m.fix, None);
        let b = find(&f, "bootstrap");
        assert_eq!(
            (b.result, b.detail.as_str()),
            (Outcome::Ok, "1 of 1 reached: boot 12 ms")
        );
        assert_eq!(find(&f, "relays").detail, "1 of 1 reached: relay 30 ms");

        // AutoNAT's dial-backs got through (a cone NAT), but peers see the
        // NAT's address: public while the mapping lasts, said so.
        let mut net = net;
        net.nat = NatStatus::Public;
        net.external_addrs = vec![at.into()];
        let f = diagnose(&Inputs::new("am1", &net, &l));
        let r = find(&f, "reachability");
        assert_eq!(r.result, Outcome::Warn);
        assert!(
            r.detail
                .starts_with(&format!("public (AutoNAT) at {at}, but behind a NAT")),
            "{}",
            r.detail
        );
        assert!(r.fix.as_deref().unwrap().contains("forward a UDP port"));
    }

    #[test]
    fn the_mapping_needs_two_hosts_and_direct_udp() {
        let lan = [LAN.to_string()];
        let at = "/ip4/203.0.113.7/udp/40001/quic-v1";
        // One observer: unknown.
        let one = [probe("boot", PeerRole::Bootstrap, BOOT, Some(1), at)];
        assert_eq!(
            nat_mapping(&lan, &one),
            NatMapping::Unknown { observers: 1 }
        );
        // Two peers on one host count once.
        let same_host = [
            one[0].clone(),
            probe(
                "b2",
                PeerRole::Peer,
                "/ip4/198.51.100.1/udp/4002/quic-v1",
                Some(1),
                "/ip4/203.0.113.7/udp/1/quic-v1",
            ),
        ];
        assert_eq!(
            nat_mapping(&lan, &same_host),
            NatMapping::Unknown { observers: 1 }
        );
        // TCP and relayed observations are ignored.
        let tcp = [
            one[0].clone(),
            probe(
                "relay",
                PeerRole::Relay,
                RELAY,
                Some(1),
                "/ip4/203.0.113.7/tcp/1",
            ),
            probe(
                "p",
                PeerRole::Peer,
                "/ip4/198.51.100.3/udp/1/quic-v1",
                Some(1),
                "/ip4/198.51.100.2/udp/4001/quic-v1/p2p/relay/p2p-circuit",
            ),
        ];
        assert_eq!(
            nat_mapping(&lan, &tcp),
            NatMapping::Unknown { observers: 1 }
        );
        // Our own address seen, even by one peer: no NAT.
        let open = [probe("boot", PeerRole::Bootstrap, BOOT, Some(1), LAN)];
        assert_eq!(
            nat_mapping(&lan, &open),
            NatMapping::NoNat {
                addr: "10.0.1.2:5000".into()
            }
        );
    }

    #[test]
    fn a_lonely_node_is_told_what_to_fix() {
        let net = NetStatus {
            listen_addrs: vec![LAN.into()],
            nat: NatStatus::BehindNat,
            probes: vec![probe("boot", PeerRole::Bootstrap, BOOT, None, "")],
            ..NetStatus::default()
        };
        let l = LocalChecks {
            data_dir: DataDirCheck::Failed {
                error: "Permission denied (os error 13)".into(),
            },
            keystore: KeystoreCheck::Missing,
            policy: PolicyCheck::Invalid {
                path: "p.toml".into(),
                error: "expected `=`".into(),
            },
            clock_skew_ms: None,
        };
        let f = diagnose(&Inputs::new("am1", &net, &l).with_inbox(5000, 0));
        assert_eq!(
            results(&f, Outcome::Fail),
            vec![
                "bootstrap",
                "DHT",
                "card",
                "reachability",
                "data dir",
                "keystore",
                "policy"
            ]
        );
        assert_eq!(
            results(&f, Outcome::Warn),
            vec!["relays", "mailbox", "inbox"]
        );
        assert_eq!(
            results(&f, Outcome::Skip),
            vec!["hole punch", "nat mapping", "clock", "clock vs registry"]
        );
        // Every failure and warning says what to do.
        for x in &f {
            assert_eq!(x.fix.is_some(), x.result != Outcome::Ok, "{x:?}");
        }
    }

    #[test]
    fn a_public_node_passes_and_slow_or_skewed_things_are_warned() {
        let mut net = natted(LAN, LAN);
        net.nat = NatStatus::Public;
        net.external_addrs = vec![LAN.into()];
        let l = local();
        let registry = RegistryClockCheck::Read(ClockReading::new(1_000_000, 40, 1_000_010));
        let f = diagnose(
            &Inputs::new("am1", &net, &l)
                .with_hole_punches(2, 1)
                .with_registry_clock(&registry),
        );
        assert!(f.iter().all(|f| f.result == Outcome::Ok), "{f:#?}");
        assert_eq!(
            find(&f, "clock vs registry").detail,
            "10 ms ahead of the registry's (±20 ms, round trip 40 ms)"
        );
        assert!(find(&f, "nat mapping").detail.starts_with("no NAT"));
        assert_eq!(
            find(&f, "hole punch").detail,
            "2 of 3 succeeded: relayed connections go direct"
        );

        net.probes[0].rtt_ms = Some(1500);
        let l = LocalChecks {
            data_dir: DataDirCheck::Writable {
                fsync: Duration::from_millis(900),
            },
            clock_skew_ms: Some(-95_000),
            ..local()
        };
        let f = diagnose(&Inputs::new("am1", &net, &l).with_hole_punches(2, 1));
        assert_eq!(
            results(&f, Outcome::Warn),
            vec!["bootstrap", "clock", "data dir"]
        );
        assert_eq!(find(&f, "clock").detail, "95.0 s behind a peer's");
    }

    #[test]
    fn the_registry_offset_is_taken_at_the_midpoint_of_the_round_trip() {
        // Asked at 1000 (ours), answered 200 ms later saying 1100: the
        // registry read its clock at about 1100 ours, so no offset.
        let r = ClockReading::new(1000, 200, 1100);
        assert_eq!((r.offset_ms(), r.uncertainty_ms()), (0, 100));
        // We are 5 s behind.
        assert_eq!(ClockReading::new(1000, 200, 6100).offset_ms(), -5000);
        // An odd round trip: the midpoint rounds down, the uncertainty up.
        let r = ClockReading::new(1000, 3, 900);
        assert_eq!((r.offset_ms(), r.uncertainty_ms()), (101, 2));
        // Extreme clocks neither overflow nor panic.
        assert_eq!(
            ClockReading::new(u64::MAX, u64::MAX, 0).offset_ms(),
            i64::MAX
        );
        assert_eq!(ClockReading::new(0, 0, u64::MAX).offset_ms(), i64::MIN);
    }

    #[test]
    fn the_clock_against_the_registry_is_held_to_the_knock_window() {
        let net = natted(LAN, LAN);
        let l = local();
        let finding = |check: RegistryClockCheck| {
            let f = diagnose(&Inputs::new("am1", &net, &l).with_registry_clock(&check));
            find(&f, "clock vs registry").clone()
        };
        let window = MAX_CLOCK_SKEW_MS;
        // Right at the edge of the window, either way: ok.
        let f = finding(RegistryClockCheck::Read(ClockReading::new(
            10_000_000 + window,
            0,
            10_000_000,
        )));
        assert_eq!(
            (f.result, f.detail.as_str(), f.fix),
            (
                Outcome::Ok,
                "300000 ms ahead of the registry's (±0 ms, round trip 0 ms)",
                None
            )
        );
        let f = finding(RegistryClockCheck::Read(ClockReading::new(
            10_000_000 - window,
            0,
            10_000_000,
        )));
        assert_eq!(f.result, Outcome::Ok, "{f:?}");
        // One ms beyond: warned, with the fix.
        let f = finding(RegistryClockCheck::Read(ClockReading::new(
            10_000_000,
            0,
            10_000_000 + window + 1,
        )));
        assert_eq!(f.result, Outcome::Warn);
        assert_eq!(
            f.detail,
            "300.0 s behind the registry's (±0 ms, round trip 0 ms): outside the ±300 s in which KNOCKs and registry requests are accepted"
        );
        assert!(f
            .fix
            .as_deref()
            .unwrap()
            .starts_with("synchronize the clock"));
        // Nothing to compare with: skipped, each saying why.
        for (check, detail) in [
            (RegistryClockCheck::NotConfigured, "no registry configured"),
            (
                RegistryClockCheck::Unreachable {
                    error: "timed out".into(),
                },
                "the registry was not reached: timed out",
            ),
            (
                RegistryClockCheck::NotServed,
                "the registry does not tell its time (an older version)",
            ),
        ] {
            let f = finding(check);
            assert_eq!((f.result, f.detail.as_str()), (Outcome::Skip, detail));
            assert!(f.fix.is_some());
        }
    }

    #[test]
    fn the_punch_probe_finding_says_what_the_probe_saw() {
        let peer = "am1peerpeerpeer";
        let finding = |net: &NetStatus, outcome: PunchOutcome| {
            let l = local();
            let probe = PunchProbe::new(peer, outcome);
            let f = diagnose(&Inputs::new("am1", net, &l).with_punch(&probe));
            // Right after the passive hole punch finding.
            let at = f.iter().position(|f| f.check == "punch probe").unwrap();
            assert_eq!(f[at - 1].check, "hole punch");
            f[at].clone()
        };
        let cone = natted(
            "/ip4/203.0.113.7/udp/40001/quic-v1",
            "/ip4/203.0.113.7/udp/40001/quic-v1",
        );
        let f = finding(
            &cone,
            PunchOutcome::Direct {
                path: PathKind::DirectQuic,
                upgraded: true,
                already: false,
                ms: 1234,
            },
        );
        assert_eq!(
            (f.result, f.detail.as_str()),
            (
                Outcome::Ok,
                "am1peerpeerp: direct (direct-quic) 1234 ms after the relayed connection"
            )
        );
        let f = finding(
            &cone,
            PunchOutcome::RelayedOnly {
                waited_ms: 10_000,
                already: false,
            },
        );
        assert_eq!(f.result, Outcome::Warn);
        assert_eq!(
            f.detail,
            "am1peerpeerp: relayed only, no direct connection within 10.0 s; the peer's NAT may be symmetric, or a firewall drops UDP"
        );
        let symmetric = natted(
            "/ip4/203.0.113.7/udp/40001/quic-v1",
            "/ip4/203.0.113.7/udp/52999/quic-v1",
        );
        let f = finding(
            &symmetric,
            PunchOutcome::RelayedOnly {
                waited_ms: 10_000,
                already: false,
            },
        );
        assert!(
            f.detail.ends_with("as expected behind this symmetric NAT"),
            "{f:?}"
        );
        // On a relayed connection older than the probe, nothing new was
        // tried: the fix says how to try again.
        let f = finding(
            &symmetric,
            PunchOutcome::RelayedOnly {
                waited_ms: 10_000,
                already: true,
            },
        );
        assert_eq!(f.result, Outcome::Warn);
        assert!(
            f.detail.starts_with(
                "am1peerpeerp: relayed only, on a relayed connection up before the probe"
            ),
            "{f:?}"
        );
        assert!(f
            .fix
            .as_deref()
            .unwrap()
            .starts_with("to try a fresh hole punch, disconnect the peer"));
        let f = finding(
            &cone,
            PunchOutcome::Unreachable {
                error: "no card found".into(),
            },
        );
        assert_eq!(
            (f.result, f.detail.as_str()),
            (Outcome::Fail, "am1peerpeerp: unreachable: no card found")
        );
        assert!(f.fix.is_some());
        // Without a probe asked for, no such finding.
        let l = local();
        let f = diagnose(&Inputs::new("am1", &cone, &l));
        assert!(f.iter().all(|f| f.check != "punch probe"));
        // As JSON: the peer and the outcome side by side.
        let probe = PunchProbe::new(
            peer,
            PunchOutcome::RelayedOnly {
                waited_ms: 10,
                already: false,
            },
        );
        let v = serde_json::to_value(&probe).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"peer": peer, "outcome": "relayed_only", "waited_ms": 10, "already": false})
        );
        assert_eq!(serde_json::from_value::<PunchProbe>(v).unwrap(), probe);
    }
}
