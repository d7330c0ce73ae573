//! Classifying the NAT's mapping from the addresses peers saw us at (see the
//! [module docs](super) for the method).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use libp2p::{multiaddr::Protocol, Multiaddr};
use serde::{Deserialize, Serialize};

use super::PeerProbe;

/// How our NAT maps our UDP socket to public addresses, as inferred from
/// the addresses peers saw (see the [module docs](super)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NatMapping {
    /// Peers saw our own listen address.
    NoNat {
        /// The address they saw.
        addr: String,
    },
    /// Peers on different hosts saw the same public address and port.
    EndpointIndependent {
        /// The address they saw.
        addr: String,
    },
    /// Peers on different hosts saw different public ports or addresses.
    EndpointDependent {
        /// Each peer and the address it saw.
        seen: Vec<(String, String)>,
    },
    /// Fewer than two peers on different hosts reported a UDP address.
    Unknown {
        /// How many did.
        observers: usize,
    },
}

/// The IP and UDP port of a direct QUIC address, or `None` for anything
/// else (TCP, relayed circuits, DNS names).
fn udp_socket(addr: &str) -> Option<SocketAddr> {
    let addr: Multiaddr = addr.parse().ok()?;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Udp(p) => port = Some(p),
            Protocol::P2pCircuit | Protocol::Tcp(_) => return None,
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// The peer's host, from the address we know it by (observations from two
/// peers on one host tell nothing about endpoint dependence).
fn host_of(probe: &PeerProbe) -> String {
    probe
        .addr
        .as_deref()
        .and_then(udp_socket)
        .map_or_else(|| probe.peer.clone(), |s| s.ip().to_string())
}

/// Infers the NAT's mapping behaviour from our listen addresses and the
/// addresses the probed peers saw us at (see the [module docs](super)).
pub fn nat_mapping(listen_addrs: &[String], probes: &[PeerProbe]) -> NatMapping {
    let listen: BTreeSet<SocketAddr> = listen_addrs.iter().filter_map(|a| udp_socket(a)).collect();
    // One observation per observing host, the first probe listed wins.
    let mut hosts = BTreeSet::new();
    let mut seen = Vec::new();
    for p in probes {
        let Some(at) = p.observed_addr.as_deref().and_then(udp_socket) else {
            continue;
        };
        if hosts.insert(host_of(p)) {
            seen.push((p.peer.clone(), at));
        }
    }
    if seen.len() < 2 {
        // A single peer seeing our own address is enough to say there is
        // no NAT in between.
        return match seen.first() {
            Some((_, at)) if listen.contains(at) => NatMapping::NoNat {
                addr: at.to_string(),
            },
            _ => NatMapping::Unknown {
                observers: seen.len(),
            },
        };
    }
    let distinct: BTreeSet<SocketAddr> = seen.iter().map(|(_, a)| *a).collect();
    if distinct.len() == 1 {
        let addr = seen[0].1;
        if listen.contains(&addr) {
            NatMapping::NoNat {
                addr: addr.to_string(),
            }
        } else {
            NatMapping::EndpointIndependent {
                addr: addr.to_string(),
            }
        }
    } else {
        NatMapping::EndpointDependent {
            seen: seen.into_iter().map(|(p, a)| (p, a.to_string())).collect(),
        }
    }
}
