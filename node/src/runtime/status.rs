//! What a node reports of itself: [`NodeStatus`] and its parts (network,
//! relays, peers, sessions, NAT status, known peers).

use serde::{Deserialize, Serialize};

use agentmesh_transports::PathKind;

use crate::{
    card::Presence, crypto::envelope::SessionId, crypto::session::Role, identity::Amid,
    knock::SessionType,
};

use super::{LearnedPath, Node, PathCounters, Reachability};

/// What the network reports about our reachability (AutoNAT).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NatStatus {
    /// Peers dialled us back on an address of ours.
    Public,
    /// Peers could not dial us back: behind a NAT or firewall.
    BehindNat,
    /// Not known yet.
    #[default]
    Unknown,
}

impl std::fmt::Display for NatStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatStatus::Public => "public",
            NatStatus::BehindNat => "behind NAT",
            NatStatus::Unknown => "unknown",
        })
    }
}

/// Network part of [`NodeStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetStatus {
    /// Our listen addresses.
    pub listen_addrs: Vec<String>,
    /// Connected peers and the path of their connection.
    pub connected: Vec<PeerStatus>,
    /// Peers in the DHT routing table.
    pub routing_table: usize,
    /// Whether we serve the DHT (`server`) or only query it (`client`).
    /// With [`Reachability::Auto`], a node AutoNAT finds behind a NAT
    /// switches to `client`, and back to `server` when found public.
    #[serde(default)]
    pub dht_mode: agentmesh_dht::DhtMode,
    /// Records held in the local DHT store.
    pub dht_records: usize,
    /// Whether our card is published on at least one other peer.
    pub card_published: bool,
    /// Whether peers can dial us directly (the configured mode).
    pub reachability: Reachability,
    /// What the network reports about our reachability (AutoNAT).
    #[serde(default)]
    pub nat: NatStatus,
    /// Our own addresses that peers confirmed they can dial directly
    /// (relayed addresses are in `listen_addrs`).
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// The relays that keep our mailbox.
    pub mailbox_relays: Vec<String>,
    /// When we serve as a relay: what it carries and stores.
    pub relay: Option<RelayStatus>,
    /// Connection attempts per kind of path (`direct-quic`, `relayed`, …).
    #[serde(default)]
    pub path_attempts: std::collections::BTreeMap<String, PathCounters>,
    /// Per peer: the kind of path that last reached it (tried first next
    /// time) and the kinds that failed lately (tried last).
    #[serde(default)]
    pub learned_paths: Vec<LearnedPath>,
    /// What the node measured about its bootstrap nodes, relays and other
    /// connected peers (round trips, the address each saw us at), for
    /// [`crate::diagnostics`].
    #[serde(default)]
    pub probes: Vec<crate::diagnostics::PeerProbe>,
}

impl NetStatus {
    /// The relays this node holds a circuit relay reservation on: for each
    /// relay we listen through, once, the relay part (up to
    /// `/p2p-circuit`, ending in `/p2p/<relay id>`) of an address we listen
    /// on through it, the preferred transport's (QUIC, then TCP, …).
    pub fn relay_reservations(&self) -> Vec<String> {
        let mut relays: Vec<libp2p::Multiaddr> = self
            .listen_addrs
            .iter()
            .filter_map(|a| a.split_once("/p2p-circuit"))
            .filter_map(|(relay, _)| relay.parse().ok())
            .collect();
        agentmesh_transports::sort_by_preference(&mut relays);
        let mut seen = Vec::new();
        relays.retain(|a| match a.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(id)) if !seen.contains(&id) => {
                seen.push(id);
                true
            }
            _ => false,
        });
        relays.iter().map(|a| a.to_string()).collect()
    }
}

/// What a relay node carries and stores.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Reservations held by peers listening through us.
    pub reservations: usize,
    /// Circuits open through us.
    pub circuits: usize,
    /// Envelopes in the mailbox.
    pub envelopes: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Reservations and circuits accepted and denied since the node started.
    #[serde(default)]
    pub totals: RelayTotals,
}

/// Counts of a relay's circuit relay decisions since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RelayTotals {
    /// Reservations accepted (renewals included).
    pub reservations_accepted: u64,
    /// Reservations refused (over a limit, or not allowed).
    pub reservations_denied: u64,
    /// Circuits opened through us.
    pub circuits_accepted: u64,
    /// Circuits refused (over a limit, no reservation for the target, …).
    pub circuits_denied: u64,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer (AMID when it is an agent key).
    pub peer: String,
    /// Path of the connection.
    pub path: PathKind,
    /// The remote address of each open connection, preferred first.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// A cached session, as listed by [`Node::status`](super::Node::status).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The other agent.
    pub peer: Amid,
    /// Session id.
    pub session: SessionId,
    /// Our side.
    pub role: Role,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
}

/// What [`Node::status`](super::Node::status) reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Our AMID.
    pub amid: Amid,
    /// Our key fingerprint.
    pub fingerprint: String,
    /// Our key as a `did:key` DID ([`Amid::did_key`]).
    #[serde(default)]
    pub did: String,
    /// Network state.
    #[serde(flatten)]
    pub net: NetStatus,
    /// Cached sessions.
    pub sessions: Vec<SessionStatus>,
    /// Peers we have sessions with.
    pub known_peers: Vec<Amid>,
}

/// An agent this node knows, as listed by [`Node::peers`](super::Node::peers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KnownPeer {
    /// The agent.
    pub amid: Amid,
    /// Our petname for it.
    pub name: Option<String>,
    /// Its presence, from the freshest card we hold of it.
    pub presence: Option<Presence>,
    /// When that card expires, ms since the epoch.
    pub card_expires_ms: Option<u64>,
    /// Whether we hold a card of it imported out of band.
    pub card_imported: bool,
    /// When it was last seen (connected, wrote to us, acknowledged), ms
    /// since the epoch; `None` when not since this node started.
    pub last_seen_ms: Option<u64>,
    /// The path of the connection to it, when connected.
    pub path: Option<PathKind>,
    /// Sessions cached with it.
    pub sessions: usize,
    /// When the latest of those sessions expires, ms since the epoch.
    pub session_expires_ms: Option<u64>,
    /// The type of the newest of those sessions (`conversation`,
    /// `request_response`, `stream`).
    #[serde(default)]
    pub session_type: Option<SessionType>,
    /// When the newest of those sessions was opened, ms since the epoch.
    #[serde(default)]
    pub session_since_ms: Option<u64>,
    /// Messages sent to it since the node started: delivered over a
    /// connection, or deposited in its mailboxes (counted once).
    #[serde(default)]
    pub messages_sent: u64,
    /// Messages received from it since the node started.
    #[serde(default)]
    pub messages_received: u64,
    /// Whether it is on the blocklist (the owner's kill switch for it,
    /// `block`, or the policy): its KNOCKs are refused.
    #[serde(default)]
    pub blocked: bool,
}

impl KnownPeer {
    pub(crate) fn new(amid: Amid) -> Self {
        Self {
            amid,
            name: None,
            presence: None,
            card_expires_ms: None,
            card_imported: false,
            last_seen_ms: None,
            path: None,
            sessions: 0,
            session_expires_ms: None,
            session_type: None,
            session_since_ms: None,
            messages_sent: 0,
            messages_received: 0,
            blocked: false,
        }
    }
}

impl Node {
    /// Fills in what the node's own state says of each of `peers`: the
    /// type of the newest session live at `now_ms` with it and when that
    /// session was opened, and whether it is blocked. Blocked agents not
    /// listed yet (the kill switch for one agent ends its sessions and
    /// connections) are added, so the owner sees them; the list stays
    /// ordered by AMID.
    pub fn describe_peers(&self, peers: &mut Vec<KnownPeer>, now_ms: u64) {
        let mut newest: std::collections::HashMap<Amid, (u64, SessionType)> = Default::default();
        for s in self.shared.store().all_sessions() {
            if s.expires_ms <= now_ms {
                continue;
            }
            let e = newest
                .entry(s.peer)
                .or_insert((s.created_ms, s.intent.session_type));
            if s.created_ms > e.0 {
                *e = (s.created_ms, s.intent.session_type);
            }
        }
        let blocked = self.policy().block;
        for amid in &blocked {
            if !peers.iter().any(|p| p.amid == *amid) {
                peers.push(KnownPeer::new(*amid));
            }
        }
        peers.sort_by_key(|p| p.amid);
        for p in peers {
            if let Some((since, kind)) = newest.get(&p.amid) {
                p.session_since_ms = Some(*since);
                p.session_type = Some(*kind);
            }
            p.blocked = blocked.contains(&p.amid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_the_relays_listened_through_once_each() {
        let me = "12D3KooWEvTWQ3Ra5t34kDy5ABwxT7Qm6PZ5rc21sX8SrGBJpa5i";
        let a = "12D3KooWB644s7yVBhhQquFs8Nhr8ZTg3UACtzL55YAVA4fSDLB9";
        let b = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let net = NetStatus {
            listen_addrs: vec![
                format!("/ip4/127.0.0.1/udp/5/quic-v1/p2p/{me}"),
                format!("/ip4/10.0.0.1/tcp/2/p2p/{a}/p2p-circuit/p2p/{me}"),
                format!("/ip4/10.0.0.1/udp/1/quic-v1/p2p/{a}/p2p-circuit/p2p/{me}"),
                format!("/ip4/10.0.0.2/tcp/3/p2p/{b}/p2p-circuit/p2p/{me}"),
                // No relay named: not a reservation we can show.
                format!("/p2p-circuit/p2p/{me}"),
            ],
            ..NetStatus::default()
        };
        assert_eq!(
            net.relay_reservations(),
            [
                format!("/ip4/10.0.0.1/udp/1/quic-v1/p2p/{a}"),
                format!("/ip4/10.0.0.2/tcp/3/p2p/{b}"),
            ]
        );
        assert!(NetStatus::default().relay_reservations().is_empty());
    }
}
