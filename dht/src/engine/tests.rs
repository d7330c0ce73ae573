use std::collections::{BTreeMap, BTreeSet};

use libp2p::identity::Keypair;

use super::*;
use crate::record::record_key;

fn key(n: u32) -> KadKey {
    KadKey::from_bytes(&n.to_be_bytes())
}

/// Engines wired together in virtual time: every request takes `latency`
/// ms each way; requests to nodes in `down` are never answered.
struct Net {
    nodes: Vec<Kademlia<u32>>,
    down: BTreeSet<u32>,
    now: u64,
    latency: u64,
    /// (deliver at, sequence, to, what)
    queue: BTreeMap<(u64, u64), (u32, Msg)>,
    seq: u64,
    events: Vec<(u32, Event<u32>)>,
}

enum Msg {
    Request {
        from: u32,
        id: RequestId,
        request: Request,
    },
    Response {
        id: RequestId,
        response: Response<u32>,
    },
}

impl Net {
    fn new(n: u32) -> Self {
        let config = EngineConfig {
            refresh_interval_ms: None,
            ..EngineConfig::default()
        };
        Self {
            nodes: (0..n)
                .map(|i| Kademlia::new(Contact::new(i, key(i)), config.clone()))
                .collect(),
            down: BTreeSet::new(),
            now: 0,
            latency: 20,
            queue: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
        }
    }

    fn push(&mut self, at: u64, to: u32, msg: Msg) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (to, msg));
    }

    fn flush(&mut self, i: u32) {
        while let Some(out) = self.nodes[i as usize].poll_transmit() {
            let at = self.now + self.latency;
            self.push(
                at,
                out.to.id,
                Msg::Request {
                    from: i,
                    id: out.id,
                    request: out.request,
                },
            );
        }
        while let Some(event) = self.nodes[i as usize].poll_event() {
            self.events.push((i, event));
        }
    }

    /// Runs until nothing is queued and no engine has a timer left before
    /// `until`.
    fn run(&mut self, until: u64) {
        loop {
            let next_msg = self.queue.keys().next().map(|(at, _)| *at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.down.contains(&(*i as u32)))
                .filter_map(|(i, n)| n.poll_timeout().map(|t| (t, i as u32)))
                .min();
            let msg_first = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            if msg_first {
                let (&(at, seq), _) = self.queue.iter().next().unwrap();
                if at > until {
                    return;
                }
                let (to, msg) = self.queue.remove(&(at, seq)).unwrap();
                self.now = at;
                if self.down.contains(&to) {
                    continue;
                }
                match msg {
                    Msg::Request { from, id, request } => {
                        let response = self.nodes[to as usize].handle_request(
                            &Contact::new(from, key(from)),
                            true,
                            request,
                            at,
                        );
                        self.flush(to);
                        self.push(at + self.latency, from, Msg::Response { id, response });
                    }
                    Msg::Response { id, response } => {
                        self.nodes[to as usize].handle_response(id, response, at);
                        self.flush(to);
                    }
                }
            } else {
                let (t, i) = next_timer.unwrap();
                if t > until {
                    return;
                }
                self.now = self.now.max(t);
                self.nodes[i as usize].handle_timeout(self.now);
                self.flush(i);
            }
        }
    }

    /// Node i joins through node 0.
    fn join_all(&mut self) {
        for i in 1..self.nodes.len() as u32 {
            self.nodes[i as usize].add_contact(Contact::new(0, key(0)), self.now);
            self.nodes[i as usize].bootstrap(self.now);
            self.flush(i);
            let until = self.now + 120_000;
            self.run(until);
        }
    }

    fn true_closest(&self, target: &KadKey, k: usize) -> Vec<u32> {
        let mut all: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|i| !self.down.contains(i))
            .collect();
        all.sort_by_key(|i| key(*i).distance(target));
        all.truncate(k);
        all
    }
}

#[test]
fn lookups_find_the_true_closest_peers_in_few_hops() {
    let mut net = Net::new(300);
    net.join_all();
    let mut hops = Vec::new();
    for t in 0..30u32 {
        let target = KadKey::from_bytes(format!("target {t}").as_bytes());
        let searcher = (t * 37) % 300;
        let q = net.nodes[searcher as usize].find_node(target, net.now);
        net.flush(searcher);
        let until = net.now + 120_000;
        net.run(until);
        let (_, event) = net
            .events
            .iter()
            .find(|(n, e)| {
                *n == searcher && matches!(e, Event::FindNodeDone { id, .. } if *id == q)
            })
            .expect("lookup ended");
        let Event::FindNodeDone { closest, stats, .. } = event else {
            unreachable!()
        };
        let mut expected = net.true_closest(&target, 21);
        expected.retain(|n| *n != searcher);
        expected.truncate(20);
        let found: Vec<u32> = closest.iter().map(|c| c.id).collect();
        assert_eq!(found, expected, "lookup {t} from {searcher}");
        assert!(!stats.timed_out);
        hops.push(stats.hops);
    }
    hops.sort_unstable();
    assert!(hops[hops.len() / 2] <= 4, "median hops {hops:?}");
}

fn signed(key: &Keypair, seq: u64, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let record = SignedRecord::sign(key, "card", payload.to_vec(), seq, u64::MAX).unwrap();
    (
        record_key("card", &key.public().to_peer_id()),
        record.to_bytes().unwrap(),
    )
}

#[test]
fn put_then_get_a_signed_record_and_refuse_forgeries_and_stale_ones() {
    let mut net = Net::new(120);
    net.join_all();
    let owner = Keypair::generate_ed25519();
    let (rkey, value) = signed(&owner, 2, b"card v2");
    let put = net.nodes[5]
        .put_record(rkey.clone(), value.clone(), net.now)
        .unwrap();
    net.flush(5);
    let until = net.now + 120_000;
    net.run(until);
    let stored_at = net
        .events
        .iter()
        .find_map(|(n, e)| match e {
            Event::PutRecordDone { id, stored_at, .. } if *n == 5 && *id == put => Some(*stored_at),
            _ => None,
        })
        .expect("put ended");
    assert_eq!(stored_at, 20);

    let get = net.nodes[77].get_record(rkey.clone(), net.now);
    net.flush(77);
    let until = net.now + 120_000;
    net.run(until);
    let record = net
        .events
        .iter()
        .find_map(|(n, e)| match e {
            Event::GetRecordDone { id, record, .. } if *n == 77 && *id == get => {
                Some(record.clone())
            }
            _ => None,
        })
        .expect("get ended");
    assert_eq!(record, Some(value.clone()));

    // A record signed by someone else under the owner's key is refused.
    let forger = Keypair::generate_ed25519();
    let (_, forged) = signed(&forger, 9, b"forged");
    let answer = net.nodes[10].handle_request(
        &Contact::new(11, key(11)),
        true,
        Request::PutRecord {
            key: rkey.clone(),
            value: forged,
        },
        net.now,
    );
    assert_eq!(answer, Response::Stored { ok: false });
    // An older sequence does not replace a newer one where it is held.
    let (_, old) = signed(&owner, 1, b"card v1");
    let holder = net
        .nodes
        .iter()
        .position(|n| n.records_len() > 0 && n.local().id != 5)
        .unwrap();
    let answer = net.nodes[holder].handle_request(
        &Contact::new(11, key(11)),
        true,
        Request::PutRecord {
            key: rkey,
            value: old,
        },
        net.now,
    );
    assert_eq!(answer, Response::Stored { ok: false });
}

#[test]
fn lookups_route_around_peers_that_went_away() {
    let mut net = Net::new(200);
    net.join_all();
    // A quarter of the network disappears without a word.
    for i in (1..200).step_by(4) {
        net.down.insert(i);
    }
    let mut timed_out = 0;
    for t in 0..10u32 {
        let target = KadKey::from_bytes(format!("after {t}").as_bytes());
        let searcher = 2 + t * 4;
        let q = net.nodes[searcher as usize].find_node(target, net.now);
        net.flush(searcher);
        let until = net.now + 200_000;
        net.run(until);
        let Some((_, Event::FindNodeDone { closest, stats, .. })) =
            net.events.iter().find(|(n, e)| {
                *n == searcher && matches!(e, Event::FindNodeDone { id, .. } if *id == q)
            })
        else {
            panic!("lookup {t} did not end");
        };
        if stats.timed_out {
            timed_out += 1;
            continue;
        }
        let mut expected = net.true_closest(&target, 21);
        expected.retain(|n| *n != searcher);
        expected.truncate(20);
        let found: Vec<u32> = closest.iter().map(|c| c.id).collect();
        assert_eq!(found, expected, "lookup {t}");
        assert!(closest.iter().all(|c| !net.down.contains(&c.id)));
    }
    assert_eq!(timed_out, 0);
}

#[test]
fn a_client_is_not_added_to_tables_but_is_answered() {
    let mut a = Kademlia::new(Contact::new(1u32, key(1)), EngineConfig::default());
    a.add_contact(Contact::new(2, key(2)), 0);
    let answer = a.handle_request(
        &Contact::new(3, key(3)),
        false,
        Request::FindNode { target: key(4) },
        0,
    );
    assert_eq!(a.table_len(), 1);
    let Response::Nodes { closer } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(closer, vec![Contact::new(2, key(2))]);
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let run = || {
        let mut net = Net::new(80);
        net.join_all();
        let q = net.nodes[9].find_node(key(1234), net.now);
        net.flush(9);
        let until = net.now + 120_000;
        net.run(until);
        let lens: Vec<usize> = net.nodes.iter().map(|n| n.table_len()).collect();
        (q, lens, net.now, net.events.len())
    };
    assert_eq!(run(), run());
}
