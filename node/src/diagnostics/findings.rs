//! One finding per check: what [`diagnose`](super::diagnose) reports of the
//! bootstrap nodes, reachability, hole punching, the NAT mapping, relays and
//! clocks.

use crate::{crypto::envelope::MAX_CLOCK_SKEW_MS, NatStatus, NetStatus, Reachability};

use super::{
    bad, ok, Finding, Inputs, NatMapping, Outcome, PeerProbe, PeerRole, PunchOutcome, PunchProbe,
    RegistryClockCheck, CLOCK_SKEW_WARN, SLOW_RTT,
};

fn short(peer: &str) -> &str {
    peer.get(..12).unwrap_or(peer)
}

/// One line for the probes of one role: who answered and in how long.
fn reached(probes: &[&PeerProbe]) -> String {
    probes
        .iter()
        .map(|p| match (p.connected, p.rtt_ms) {
            (true, Some(ms)) => format!("{} {ms} ms", short(&p.peer)),
            (true, None) => format!("{} connected, no RTT yet", short(&p.peer)),
            (false, _) => format!("{} not reached", short(&p.peer)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn slowest(probes: &[&PeerProbe]) -> Option<u64> {
    probes.iter().filter_map(|p| p.rtt_ms).max()
}

pub(super) fn bootstrap_finding(probes: &[PeerProbe]) -> Finding {
    let boots: Vec<&PeerProbe> = probes
        .iter()
        .filter(|p| p.role == PeerRole::Bootstrap)
        .collect();
    let up = boots.iter().filter(|p| p.connected).count();
    if boots.is_empty() {
        bad(
            "bootstrap",
            Outcome::Warn,
            "no bootstrap node configured",
            "start with --bootstrap <multiaddr>/p2p/<peer id> to join a network",
        )
    } else if up == 0 {
        bad(
            "bootstrap",
            Outcome::Fail,
            format!("none of {} reached: {}", boots.len(), reached(&boots)),
            "check the address and peer id, that the bootstrap node runs, and that UDP (QUIC) and TCP to it are not blocked",
        )
    } else if slowest(&boots).is_some_and(|ms| ms > SLOW_RTT.as_millis() as u64) {
        bad(
            "bootstrap",
            Outcome::Warn,
            format!(
                "{up} of {} reached, slowly: {}",
                boots.len(),
                reached(&boots)
            ),
            "a bootstrap node nearer this host would make joining and lookups faster",
        )
    } else {
        ok(
            "bootstrap",
            format!("{up} of {} reached: {}", boots.len(), reached(&boots)),
        )
    }
}

pub(super) fn reachability_finding(
    net: &NetStatus,
    relays_up: usize,
    mapping: &NatMapping,
) -> Finding {
    let relayed = relays_up > 0 || !net.mailbox_relays.is_empty();
    let at = net
        .external_addrs
        .first()
        .map(|a| format!(" at {a}"))
        .unwrap_or_default();
    let natted = matches!(
        mapping,
        NatMapping::EndpointIndependent { .. } | NatMapping::EndpointDependent { .. }
    );
    match (net.reachability, net.nat) {
        (Reachability::Private, _) if relayed => ok(
            "reachability",
            "declared private: reachable through its relays only",
        ),
        (Reachability::Private, _) => bad(
            "reachability",
            Outcome::Fail,
            "declared private and no relay: unreachable",
            "name a relay with --relay, or run one",
        ),
        // Dial-backs came through, but from peers we had sent to: a NAT
        // that filters by address (or not at all) lets those in, and drops
        // its mapping once traffic stops.
        (_, NatStatus::Public) if natted => bad(
            "reachability",
            Outcome::Warn,
            format!(
                "public (AutoNAT){at}, but behind a NAT (peers see another address than we listen on): peers we sent to can dial in while the NAT keeps the mapping; others may be filtered"
            ),
            "forward a UDP port to this host and --listen on it for a lasting public address; keep a relay meanwhile",
        ),
        (_, NatStatus::Public) => ok(
            "reachability",
            format!("public (AutoNAT){at}: peers dial it directly"),
        ),
        (_, NatStatus::BehindNat) if relayed => bad(
            "reachability",
            Outcome::Warn,
            "behind a NAT (AutoNAT: peers could not dial back); reachable through relays",
            "forward a UDP port to this host and --listen on it to be dialled directly",
        ),
        (_, NatStatus::BehindNat) => bad(
            "reachability",
            Outcome::Fail,
            "behind a NAT (AutoNAT: peers could not dial back) and no relay: unreachable",
            "name a relay with --relay (or run one), or forward a UDP port to this host",
        ),
        _ => bad(
            "reachability",
            Outcome::Skip,
            "not known yet: no peer has tried to dial back (AutoNAT)",
            "wait for a minute after joining; AutoNAT asks the bootstrap nodes and other peers",
        ),
    }
}

pub(super) fn hole_punch_finding(inputs: &Inputs<'_>, mapping: &NatMapping) -> Finding {
    let (good, failed) = (inputs.hole_punches_ok, inputs.hole_punches_failed);
    let tried = good + failed;
    if tried == 0 {
        return bad(
            "hole punch",
            Outcome::Skip,
            "none tried yet: one is tried when a peer reaches this agent through a relay",
            "nothing to do; message an agent behind another NAT to try one",
        );
    }
    if good > 0 {
        return ok(
            "hole punch",
            format!("{good} of {tried} succeeded: relayed connections go direct"),
        );
    }
    let why = match mapping {
        NatMapping::EndpointDependent { .. } => {
            "as expected behind a symmetric NAT: relays carry the traffic"
        }
        _ => "the other side's NAT may be symmetric, or a firewall drops UDP",
    };
    bad(
        "hole punch",
        Outcome::Warn,
        format!("{failed} tried, none succeeded; {why}"),
        "keep a relay; for direct connections use a NAT with endpoint-independent mapping, or forward a UDP port",
    )
}

pub(super) fn punch_probe_finding(probe: &PunchProbe, mapping: &NatMapping) -> Finding {
    const CHECK: &str = "punch probe";
    let who = short(&probe.peer);
    match &probe.outcome {
        PunchOutcome::Direct {
            path, already: true, ..
        } => ok(CHECK, format!("{who}: already connected directly ({path})")),
        PunchOutcome::Direct {
            path,
            upgraded: true,
            ms,
            ..
        } => ok(
            CHECK,
            format!("{who}: direct ({path}) {ms} ms after the relayed connection"),
        ),
        PunchOutcome::Direct { path, ms, .. } => ok(
            CHECK,
            format!("{who}: direct ({path}), dialled in {ms} ms, no relay needed"),
        ),
        PunchOutcome::RelayedOnly { waited_ms, already } => {
            let why = match mapping {
                NatMapping::EndpointDependent { .. } => {
                    "as expected behind this symmetric NAT"
                }
                _ => "the peer's NAT may be symmetric, or a firewall drops UDP",
            };
            let waited = *waited_ms as f64 / 1e3;
            if *already {
                bad(
                    CHECK,
                    Outcome::Warn,
                    format!(
                        "{who}: relayed only, on a relayed connection up before the probe (its hole punch was tried as it opened), no direct connection within {waited:.1} s; {why}"
                    ),
                    "to try a fresh hole punch, disconnect the peer (the dashboard's Peers tab, or POST /v1/disconnect) and probe again; messages still flow through the relay",
                )
            } else {
                bad(
                    CHECK,
                    Outcome::Warn,
                    format!(
                        "{who}: relayed only, no direct connection within {waited:.1} s; {why}"
                    ),
                    "messages still flow through the relay; for direct connections use NATs with endpoint-independent mapping on both sides, or forward a UDP port",
                )
            }
        }
        PunchOutcome::Unreachable { error } => bad(
            CHECK,
            Outcome::Fail,
            format!("{who}: unreachable: {error}"),
            "check that the peer runs and has published its card (with a relay when it is behind a NAT), and that this node reaches a bootstrap node",
        ),
    }
}

pub(super) fn mapping_finding(mapping: NatMapping) -> Finding {
    match mapping {
        NatMapping::NoNat { addr } => ok(
            "nat mapping",
            format!("no NAT: peers see our own address {addr}"),
        ),
        NatMapping::EndpointIndependent { addr } => ok(
            "nat mapping",
            format!(
                "endpoint-independent: peers on different hosts all see {addr}; hole punching can work"
            ),
        ),
        NatMapping::EndpointDependent { seen } => bad(
            "nat mapping",
            Outcome::Warn,
            format!(
                "endpoint-dependent (symmetric NAT): {}; hole punching is unlikely, relays carry the traffic",
                seen.iter()
                    .map(|(p, a)| format!("{} saw {a}", short(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "use a NAT with endpoint-independent mapping (most home routers; on Linux, masquerade without random ports), forward a UDP port, or keep a relay",
        ),
        NatMapping::Unknown { observers } => bad(
            "nat mapping",
            Outcome::Skip,
            format!("{observers} peer(s) on other hosts reported our QUIC address; two are needed"),
            "connect to a bootstrap node and a relay over QUIC (--bootstrap, --relay)",
        ),
    }
}

pub(super) fn relays_finding(net: &NetStatus, relays: &[&PeerProbe]) -> Finding {
    let up = relays.iter().filter(|p| p.connected).count();
    if relays.is_empty() {
        match net.nat {
            NatStatus::Public => ok("relays", "none in use (not needed: public)"),
            NatStatus::BehindNat => bad(
                "relays",
                Outcome::Warn,
                "none in use: behind a NAT this agent cannot be reached",
                "name a relay with --relay, or wait for one to be found in the DHT",
            ),
            _ => bad(
                "relays",
                Outcome::Warn,
                "none in use: should this agent be behind a NAT, it cannot be reached",
                "name a relay with --relay, or wait for one to be found in the DHT",
            ),
        }
    } else if up == 0 {
        bad(
            "relays",
            Outcome::Fail,
            format!("none of {} reached: {}", relays.len(), reached(relays)),
            "check the relay addresses, that the relays run, and that UDP (QUIC) to them is not blocked",
        )
    } else if up < relays.len() {
        bad(
            "relays",
            Outcome::Warn,
            format!("{up} of {} reached: {}", relays.len(), reached(relays)),
            "check that the unreached relays run; another is chosen from the DHT when one stays down",
        )
    } else if slowest(relays).is_some_and(|ms| ms > SLOW_RTT.as_millis() as u64) {
        bad(
            "relays",
            Outcome::Warn,
            format!("{up} reached, slowly: {}", reached(relays)),
            "a relay nearer this host and its peers would make relayed messages faster",
        )
    } else {
        ok(
            "relays",
            format!("{up} of {} reached: {}", relays.len(), reached(relays)),
        )
    }
}

pub(super) fn clock_finding(skew_ms: Option<i64>) -> Finding {
    let Some(ms) = skew_ms else {
        return bad(
            "clock",
            Outcome::Skip,
            "no peer timestamp seen yet",
            "nothing to do; checked once a message arrives straight from a peer",
        );
    };
    let dir = if ms >= 0 { "ahead of" } else { "behind" };
    let abs = ms.unsigned_abs();
    if u128::from(abs) > CLOCK_SKEW_WARN.as_millis() {
        bad(
            "clock",
            Outcome::Warn,
            format!("{:.1} s {dir} a peer's", abs as f64 / 1e3),
            "synchronize the clock (NTP: systemd-timesyncd, chrony); KNOCKs stamped out of the window are refused",
        )
    } else {
        ok("clock", format!("within {abs} ms of a peer's ({dir})"))
    }
}

pub(super) fn registry_clock_finding(check: &RegistryClockCheck) -> Finding {
    const CHECK: &str = "clock vs registry";
    let reading = match check {
        RegistryClockCheck::NotConfigured => {
            return bad(
                CHECK,
                Outcome::Skip,
                "no registry configured",
                "nothing to do; with --registry the clock is checked against the registry's",
            )
        }
        RegistryClockCheck::Unreachable { error } => return bad(
            CHECK,
            Outcome::Skip,
            format!("the registry was not reached: {error}"),
            "check --registry (a multiaddr ending in /p2p/<peer id>) and that the registry runs",
        ),
        RegistryClockCheck::NotServed => {
            return bad(
                CHECK,
                Outcome::Skip,
                "the registry does not tell its time (an older version)",
                "nothing to do here; the registry's operator can upgrade it",
            )
        }
        RegistryClockCheck::Read(r) => r,
    };
    let ms = reading.offset_ms();
    let dir = if ms >= 0 { "ahead of" } else { "behind" };
    let abs = ms.unsigned_abs();
    let how = format!(
        "±{} ms, round trip {} ms",
        reading.uncertainty_ms(),
        reading.rtt_ms
    );
    if abs > MAX_CLOCK_SKEW_MS {
        bad(
            CHECK,
            Outcome::Warn,
            format!(
                "{:.1} s {dir} the registry's ({how}): outside the ±{} s in which KNOCKs and registry requests are accepted",
                abs as f64 / 1e3,
                MAX_CLOCK_SKEW_MS / 1000
            ),
            "synchronize the clock (NTP: systemd-timesyncd, chrony); peers and the registry refuse what this node stamps",
        )
    } else {
        ok(CHECK, format!("{abs} ms {dir} the registry's ({how})"))
    }
}
