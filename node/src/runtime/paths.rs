//! Path memory: which kind of path last reached a peer, so that it is tried
//! first next time, and which kinds failed lately, so that they are tried
//! last. Each attempt is counted per kind of path.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use agentmesh_transports::{path_of, PathKind};

/// How long a failed kind of path is tried after the others.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Peers remembered at most; the least recently seen is forgotten first.
const MAX_PEERS: usize = 4096;

/// Attempts on one kind of path, and how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PathCounters {
    /// Connection attempts.
    pub attempts: u64,
    /// Attempts that ended in a connection.
    pub successes: u64,
    /// Attempts that failed.
    pub failures: u64,
}

/// What is remembered about reaching one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LearnedPath {
    /// The peer (AMID when it is an agent key).
    pub peer: String,
    /// The kind of path that last reached it.
    pub last_ok: Option<PathKind>,
    /// Kinds of path that failed lately and are tried last.
    pub failing: Vec<PathKind>,
}

#[derive(Default)]
struct Learned {
    last_ok: Option<PathKind>,
    failed: HashMap<PathKind, Instant>,
    seen: Option<Instant>,
}

/// The memory of paths, per peer, with counters per kind of path.
#[derive(Default)]
pub(super) struct PathMemory {
    peers: HashMap<PeerId, Learned>,
    counters: BTreeMap<String, PathCounters>,
}

impl PathMemory {
    /// Orders `addrs` for a dial to `peer`: the kind that last worked first,
    /// kinds that failed lately last, and otherwise QUIC, TCP, relayed.
    pub(super) fn order(&self, peer: &PeerId, addrs: &mut [Multiaddr], now: Instant) {
        let learned = self.peers.get(peer);
        addrs.sort_by_key(|a| {
            let kind = path_of(a);
            let base = preference(kind);
            match learned {
                Some(l) if l.recently_failed(kind, now) => 20 + base,
                Some(l) if l.last_ok == Some(kind) => base.saturating_sub(10),
                _ => 10 + base,
            }
        });
    }

    /// Records the outcome of one attempt to reach `peer` over `addr`.
    pub(super) fn record(&mut self, peer: PeerId, addr: &Multiaddr, ok: bool, now: Instant) {
        let kind = path_of(addr);
        let c = self.counters.entry(kind.to_string()).or_default();
        c.attempts += 1;
        if ok {
            c.successes += 1;
        } else {
            c.failures += 1;
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, l)| l.seen)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.peers.remove(&p);
            }
        }
        let l = self.peers.entry(peer).or_default();
        l.seen = Some(now);
        if ok {
            l.last_ok = Some(kind);
            l.failed.remove(&kind);
        } else {
            l.failed.insert(kind, now);
        }
    }

    /// The counters per kind of path, keyed by its name (`direct-quic`, …).
    pub(super) fn counters(&self) -> BTreeMap<String, PathCounters> {
        self.counters.clone()
    }

    /// What is remembered about each peer, with `label` naming peers.
    pub(super) fn learned(
        &self,
        now: Instant,
        label: impl Fn(&PeerId) -> String,
    ) -> Vec<LearnedPath> {
        let mut out: Vec<LearnedPath> = self
            .peers
            .iter()
            .map(|(p, l)| {
                let mut failing: Vec<PathKind> = l
                    .failed
                    .keys()
                    .copied()
                    .filter(|k| l.recently_failed(*k, now))
                    .collect();
                failing.sort_by_key(|k| preference(*k));
                LearnedPath {
                    peer: label(p),
                    last_ok: l.last_ok,
                    failing,
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }
}

impl Learned {
    fn recently_failed(&self, kind: PathKind, now: Instant) -> bool {
        self.failed
            .get(&kind)
            .is_some_and(|at| now.saturating_duration_since(*at) < FAILURE_MEMORY)
    }
}

/// The default order of kinds: QUIC, TCP, relayed, others.
fn preference(kind: PathKind) -> u8 {
    match kind {
        PathKind::DirectQuic => 0,
        PathKind::DirectTcp => 1,
        PathKind::Relayed => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<Multiaddr> {
        [
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
            "/ip4/127.0.0.1/tcp/2",
            "/ip4/127.0.0.1/udp/3/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
    }

    fn kinds(a: &[Multiaddr]) -> Vec<PathKind> {
        a.iter().map(path_of).collect()
    }

    #[test]
    fn unknown_peers_get_the_default_order() {
        let m = PathMemory::default();
        let mut a = addrs();
        m.order(&PeerId::random(), &mut a, Instant::now());
        assert_eq!(
            kinds(&a),
            [PathKind::DirectQuic, PathKind::DirectTcp, PathKind::Relayed]
        );
    }

    #[test]
    fn a_failed_kind_goes_last_and_the_working_one_first() {
        let mut m = PathMemory::default();
        let peer = PeerId::random();
        let now = Instant::now();
        let a = addrs();
        m.record(peer, &a[2], false, now);
        m.record(peer, &a[1], false, now);
        m.record(peer, &a[0], true, now);
        let mut ordered = addrs();
        m.order(&peer, &mut ordered, now);
        assert_eq!(
            kinds(&ordered),
            [PathKind::Relayed, PathKind::DirectQuic, PathKind::DirectTcp]
        );
        // Other peers are not affected.
        let mut other = addrs();
        m.order(&PeerId::random(), &mut other, now);
        assert_eq!(other[0], a[2]);
        let c = m.counters();
        assert_eq!(c["relayed"].successes, 1);
        assert_eq!(c["direct-quic"].failures, 1);
        assert_eq!(c["direct-tcp"].attempts, 1);
        let learned = m.learned(now, |p| p.to_string());
        assert_eq!(learned[0].last_ok, Some(PathKind::Relayed));
        assert_eq!(
            learned[0].failing,
            [PathKind::DirectQuic, PathKind::DirectTcp]
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_while_and_by_a_success() {
        let mut m = PathMemory::default();
        let peer = PeerId::random();
        let then = Instant::now();
        let a = addrs();
        m.record(peer, &a[2], false, then);
        let mut ordered = addrs();
        m.order(&peer, &mut ordered, then + FAILURE_MEMORY);
        assert_eq!(path_of(&ordered[0]), PathKind::DirectQuic);
        m.record(peer, &a[2], true, then);
        let mut ordered = addrs();
        m.order(&peer, &mut ordered, then);
        assert_eq!(path_of(&ordered[0]), PathKind::DirectQuic);
        assert!(m.learned(then, |p| p.to_string())[0].failing.is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let mut m = PathMemory::default();
        let a = addrs();
        let now = Instant::now();
        for _ in 0..MAX_PEERS + 10 {
            m.record(PeerId::random(), &a[0], true, now);
        }
        assert_eq!(m.peers.len(), MAX_PEERS);
    }
}
