//! The simulated world: nodes, the event queue, and what each event does.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use agentmesh_dht::engine::{
    Contact, EngineConfig, Event, KadKey, Kademlia, QueryId, Request, RequestId, Response,
};
use agentmesh_dht::{record_key, SignedRecord};
use agentmesh_node::cores::delivery::Delivery;
use agentmesh_transports::libp2p::identity::Keypair;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{exponential, unit, weibull, Nat, REGIONS, RTT_MS};
mod script;
mod traffic;

use super::report::{Path, Recorder, RelayRow, Report};
use super::scenario::{Scenario, ScriptedKind};
use crate::progress::Progress;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
/// How long an agent takes to notice that its relay is gone.
const RELAY_LOSS_NOTICED_MS: u64 = 30_000;
/// How often a running agent collects its mail (the node's drain period).
const DRAIN_EVERY_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Bootstrap,
    Relay,
    Agent,
}

#[derive(Debug)]
struct Node {
    kad: Kademlia<u32>,
    role: Role,
    region: usize,
    nat: Nat,
    online: bool,
    joined: bool,
    /// Held offline by a scripted event.
    held: bool,
    /// Bumped at every departure: timers of an older session are stale.
    epoch: u32,
    /// The last epoch that ended in a clean stop (its peers were told);
    /// later ones ended in crashes.
    clean_stop: Option<u32>,
    wake_at: Option<u64>,
    keypair: Option<Keypair>,
    card_key: Vec<u8>,
    card_seq: u64,
    relay: Option<u32>,
    known: Vec<u32>,
    pending: BTreeMap<QueryId, Purpose>,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Lookup { started: u64 },
    Message { msg: usize, started: u64 },
    Publish,
}

#[derive(Debug, Clone, Copy)]
struct Message {
    from: u32,
    to: u32,
    sent: u64,
    /// Sent in a standing session (not a first contact).
    in_session: bool,
}

#[derive(Debug)]
struct Session {
    epochs: (u32, u32),
    path: Path,
    relay: Option<u32>,
    /// The sender's link: the node's own delivery machine (window,
    /// acknowledgements, the stream given up when they stop coming).
    link: Delivery<traffic::Out>,
    /// Whether a [`Ev::LinkTick`] is due for this link.
    tick_armed: bool,
}

#[derive(Debug, Default)]
struct Relay {
    alive: bool,
    reservations: usize,
    /// Mail waiting, by recipient: (message, sender, expires).
    mail: BTreeMap<u32, Vec<(usize, u32, u64)>>,
}

#[derive(Debug)]
enum Ev {
    KadRequest {
        from: u32,
        to: u32,
        id: RequestId,
        request: Request,
    },
    KadResponse {
        to: u32,
        id: RequestId,
        response: Response<u32>,
    },
    Wake {
        node: u32,
    },
    Join {
        node: u32,
    },
    Leave {
        node: u32,
        epoch: u32,
    },
    Return {
        node: u32,
    },
    Publish {
        node: u32,
        epoch: u32,
    },
    Act {
        node: u32,
        epoch: u32,
        message: bool,
    },
    RelayLost {
        node: u32,
        epoch: u32,
    },
    Deliver {
        msg: usize,
        path: Path,
        first: bool,
    },
    /// A message written to a session's stream reaches the recipient's
    /// side (delivered if the recipient is still the one that opened it).
    Arrive {
        msg: usize,
        path: Path,
        epochs: (u32, u32),
    },
    /// The recipient's acknowledgement reaches the sender.
    Ack {
        msg: usize,
        epochs: (u32, u32),
    },
    /// The sender's link checks on what it has in flight.
    LinkTick {
        from: u32,
        to: u32,
        epoch: u32,
    },
    /// A running agent collects its mail.
    Fetch {
        node: u32,
        epoch: u32,
    },
    Script {
        index: usize,
    },
    Sample,
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub(super) struct World<'s> {
    scenario: &'s Scenario,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    agents: Vec<u32>,
    relays: BTreeMap<u32, Relay>,
    messages: Vec<Message>,
    sessions: BTreeMap<(u32, u32), Session>,
    rec: Recorder,
    end: u64,
    /// Virtual time zero, for the node's cores (which count in `Instant`s).
    base: Instant,
}

fn card_payload(relay: Option<u32>) -> Vec<u8> {
    // A card of about the size a real one has (~300 bytes), naming the
    // relay its agent is reachable through.
    let mut payload = format!("relay={}", relay.map_or(-1, i64::from)).into_bytes();
    payload.resize(300, b' ');
    payload
}

impl<'s> World<'s> {
    pub(super) fn new(scenario: &'s Scenario) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
        let weights: Vec<f64> = REGIONS
            .iter()
            .map(|r| {
                scenario
                    .network
                    .regions
                    .iter()
                    .find(|(n, _)| n == r)
                    .map_or(0.0, |(_, w)| w.max(0.0))
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let extra: u32 = scenario
            .events
            .iter()
            .filter(|e| e.kind == ScriptedKind::FlashCrowd)
            .map(|e| e.target.parse::<u32>().unwrap_or(0))
            .sum();
        let servers = scenario.bootstraps + scenario.relays.count;
        let count = servers + scenario.nodes + extra;
        let config = EngineConfig::default();
        let mut nodes = Vec::with_capacity(count as usize);
        for i in 0..count {
            let role = if i < scenario.bootstraps {
                Role::Bootstrap
            } else if i < servers {
                Role::Relay
            } else {
                Role::Agent
            };
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let keypair = Keypair::ed25519_from_bytes(seed).expect("32 bytes make a key");
            let peer = keypair.public().to_peer_id();
            let key = KadKey::from_bytes(&peer.to_bytes());
            let mut u = unit(&mut rng) * total;
            let mut region = 0;
            for (r, w) in weights.iter().enumerate() {
                if u < *w {
                    region = r;
                    break;
                }
                u -= w;
            }
            let nat = if role == Role::Agent {
                scenario.nat.pick(unit(&mut rng))
            } else {
                Nat::Public
            };
            nodes.push(Node {
                kad: Kademlia::new(Contact::new(i, key), config.clone()),
                role,
                region,
                nat,
                online: false,
                joined: false,
                held: false,
                epoch: 0,
                clean_stop: None,
                wake_at: None,
                card_key: record_key("card", &peer),
                keypair: (role == Role::Agent).then_some(keypair),
                card_seq: 0,
                relay: None,
                known: Vec::new(),
                pending: BTreeMap::new(),
            });
        }
        let relays = (scenario.bootstraps..servers)
            .map(|i| {
                (
                    i,
                    Relay {
                        alive: true,
                        ..Relay::default()
                    },
                )
            })
            .collect();
        let end = scenario.duration_min * MINUTE;
        let mut world = Self {
            scenario,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            agents: (servers..servers + scenario.nodes).collect(),
            relays,
            messages: Vec::new(),
            sessions: BTreeMap::new(),
            rec: Recorder::new(scenario),
            end,
            base: Instant::now(),
        };
        // Servers are up from the start and know each other.
        for i in 0..servers {
            world.nodes[i as usize].online = true;
            world.nodes[i as usize].joined = true;
            for j in 0..servers {
                let contact = world.contact(j);
                world.nodes[i as usize].kad.add_contact(contact, 0);
            }
        }
        for i in 0..servers {
            world.nodes[i as usize].kad.bootstrap(0);
            world.sync(i);
        }
        let join_window = scenario.join_min.max(1) * MINUTE;
        for a in world.agents.clone() {
            let at = (unit(&mut world.rng) * join_window as f64) as u64;
            world.schedule(at, Ev::Join { node: a });
        }
        for (index, event) in scenario.events.iter().enumerate() {
            world.schedule(event.at_min * MINUTE, Ev::Script { index });
        }
        world.schedule(MINUTE, Ev::Sample);
        world
    }

    fn contact(&self, i: u32) -> Contact<u32> {
        self.nodes[i as usize].kad.local().clone()
    }

    /// Virtual time `t` (ms) as the node's cores count it.
    fn instant(&self, t: u64) -> Instant {
        self.base + Duration::from_millis(t)
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    /// One-way delay between two nodes, with jitter.
    fn one_way(&mut self, a: u32, b: u32) -> u64 {
        let rtt = self.rtt(a, b);
        let jitter = 1.0 + self.scenario.network.jitter * unit(&mut self.rng);
        ((rtt as f64 / 2.0) * jitter).round() as u64
    }

    fn rtt(&self, a: u32, b: u32) -> u64 {
        u64::from(RTT_MS[self.nodes[a as usize].region][self.nodes[b as usize].region])
    }

    fn lost(&mut self) -> bool {
        unit(&mut self.rng) < self.scenario.network.loss
    }

    /// Runs to the end; `progress` shows each hundredth of the virtual
    /// time on its bar and each tenth as a log line.
    pub(super) fn run(mut self, progress: &Progress) -> Report {
        let started = Instant::now();
        let mut next_hundredth = 1;
        while let Some(Reverse(item)) = self.queue.pop() {
            if item.at > self.end {
                break;
            }
            self.now = item.at;
            self.rec.events += 1;
            while next_hundredth <= 100 && self.now * 100 >= self.end * next_hundredth {
                progress.set(
                    &format!(
                        "sim: {} of {} min virtual, {} events",
                        self.now / MINUTE,
                        self.end / MINUTE,
                        self.rec.events
                    ),
                    next_hundredth,
                    100,
                );
                if next_hundredth % 10 == 0 {
                    progress.log_line(&format!(
                        "sim: {:>3} % ({} of {} min virtual), {:.1} s wall, {} events",
                        next_hundredth,
                        self.now / MINUTE,
                        self.end / MINUTE,
                        started.elapsed().as_secs_f64(),
                        self.rec.events
                    ));
                }
                next_hundredth += 1;
            }
            self.handle(item.ev);
        }
        progress.finish();
        self.now = self.end;
        let waiting: usize = self
            .relays
            .values()
            .flat_map(|r| r.mail.values())
            .map(Vec::len)
            .sum();
        let relays = self
            .relays
            .iter()
            .map(|(id, r)| RelayRow {
                id: *id - self.scenario.bootstraps,
                alive: r.alive,
                reservations: r.reservations,
                waiting: r.mail.values().map(Vec::len).sum(),
            })
            .collect();
        self.rec.finish(waiting, relays)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::KadRequest {
                from,
                to,
                id,
                request,
            } => self.on_request(from, to, id, request),
            Ev::KadResponse { to, id, response } => {
                if self.nodes[to as usize].online {
                    self.nodes[to as usize]
                        .kad
                        .handle_response(id, response, self.now);
                    self.sync(to);
                }
            }
            Ev::Wake { node } => {
                let n = &mut self.nodes[node as usize];
                if n.online && n.wake_at == Some(self.now) {
                    n.wake_at = None;
                    n.kad.handle_timeout(self.now);
                    self.sync(node);
                }
            }
            Ev::Join { node } => self.come_online(node),
            Ev::Return { node } => {
                if !self.nodes[node as usize].held && !self.nodes[node as usize].online {
                    self.come_online(node);
                }
            }
            Ev::Leave { node, epoch } => {
                if self.nodes[node as usize].epoch == epoch && self.nodes[node as usize].online {
                    self.go_offline(node);
                    if self.scenario.churn.enabled {
                        let mean = self.scenario.churn.downtime_mean_h * HOUR as f64;
                        let down = exponential(&mut self.rng, mean) as u64;
                        self.schedule(self.now + down.max(1000), Ev::Return { node });
                    }
                }
            }
            Ev::Publish { node, epoch } => {
                if self.current(node, epoch) {
                    self.publish(node);
                    let every = self.scenario.workload.republish_min * MINUTE;
                    self.schedule(self.now + every, Ev::Publish { node, epoch });
                }
            }
            Ev::Act {
                node,
                epoch,
                message,
            } => {
                if self.current(node, epoch) {
                    if message {
                        self.send_message(node);
                    } else {
                        self.lookup(node);
                    }
                    self.schedule_act(node, message);
                }
            }
            Ev::RelayLost { node, epoch } => {
                if self.current(node, epoch) {
                    self.choose_relay(node);
                    self.publish(node);
                }
            }
            Ev::Deliver { msg, path, first } => {
                let m = self.messages[msg];
                let latency = self.now - m.sent;
                self.rec.delivered(m.sent, path, latency, first);
            }
            Ev::Arrive { msg, path, epochs } => self.on_arrive(msg, path, epochs),
            Ev::Ack { msg, epochs } => self.on_ack(msg, epochs),
            Ev::LinkTick { from, to, epoch } => self.on_link_tick(from, to, epoch),
            Ev::Fetch { node, epoch } => {
                if self.current(node, epoch) {
                    self.fetch_mail(node);
                }
            }
            Ev::Script { index } => self.script(index),
            Ev::Sample => {
                let online = self
                    .agents
                    .iter()
                    .filter(|a| self.nodes[**a as usize].online)
                    .count();
                let waiting = self
                    .relays
                    .values()
                    .flat_map(|r| r.mail.values())
                    .map(Vec::len)
                    .sum();
                self.rec.sample(self.now, online, waiting);
                self.schedule(self.now + MINUTE, Ev::Sample);
            }
        }
    }

    fn current(&self, node: u32, epoch: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.online && n.epoch == epoch
    }

    /// Moves what the engine of `node` wants sent into the queue, handles
    /// its events, and arms its timer.
    fn sync(&mut self, node: u32) {
        while let Some(out) = self.nodes[node as usize].kad.poll_transmit() {
            self.rec.kad_messages += 1;
            if self.lost() {
                continue;
            }
            let delay = self.one_way(node, out.to.id);
            self.schedule(
                self.now + delay,
                Ev::KadRequest {
                    from: node,
                    to: out.to.id,
                    id: out.id,
                    request: out.request,
                },
            );
        }
        while let Some(event) = self.nodes[node as usize].kad.poll_event() {
            self.on_kad_event(node, event);
        }
        if let Some(at) = self.nodes[node as usize].kad.poll_timeout() {
            let at = at.max(self.now);
            let n = &mut self.nodes[node as usize];
            if n.wake_at.is_none_or(|w| at < w || w < self.now) {
                n.wake_at = Some(at);
                self.schedule(at, Ev::Wake { node });
            }
        }
    }

    fn on_request(&mut self, from: u32, to: u32, id: RequestId, request: Request) {
        let target = &self.nodes[to as usize];
        // An agent that is offline, or that is not reachable for the DHT
        // (a client), does not answer: the asker times out.
        if !target.online || !target.nat.dht_server() {
            return;
        }
        let sender = &self.nodes[from as usize];
        let server = sender.nat.dht_server();
        let contact = sender.kad.local().clone();
        let response = self.nodes[to as usize]
            .kad
            .handle_request(&contact, server, request, self.now);
        self.sync(to);
        self.rec.kad_messages += 1;
        if self.lost() {
            return;
        }
        let delay = self.one_way(to, from);
        self.schedule(
            self.now + delay,
            Ev::KadResponse {
                to: from,
                id,
                response,
            },
        );
    }

    fn on_kad_event(&mut self, node: u32, event: Event<u32>) {
        match event {
            Event::GetRecordDone { id, record, stats } => {
                let Some(purpose) = self.nodes[node as usize].pending.remove(&id) else {
                    return;
                };
                match purpose {
                    Purpose::Lookup { started } => {
                        self.rec
                            .lookup(started, stats.hops, self.now - started, record.is_some());
                    }
                    Purpose::Message { msg, started } => {
                        self.rec
                            .lookup(started, stats.hops, self.now - started, record.is_some());
                        self.route(msg, record.as_deref());
                    }
                    Purpose::Publish => {}
                }
            }
            Event::PutRecordDone { id, stored_at, .. } => {
                if self.nodes[node as usize].pending.remove(&id).is_some() {
                    self.rec.put(self.now, stored_at);
                }
            }
            Event::FindNodeDone { .. } | Event::RecordStored { .. } => {}
        }
    }

    fn come_online(&mut self, node: u32) {
        let now = self.now;
        let first = !self.nodes[node as usize].joined;
        {
            let n = &mut self.nodes[node as usize];
            n.online = true;
            n.joined = true;
            n.wake_at = None;
            n.kad.handle_timeout(now);
        }
        if first {
            let bootstraps: Vec<u32> = (0..self.scenario.bootstraps)
                .filter(|b| self.nodes[*b as usize].online)
                .collect();
            for b in bootstraps {
                let contact = self.contact(b);
                self.nodes[node as usize].kad.add_contact(contact, now);
            }
            if !self.agents.contains(&node) {
                self.agents.push(node);
            }
        }
        self.nodes[node as usize].kad.bootstrap(now);
        self.sync(node);
        self.choose_relay(node);
        self.publish(node);
        self.fetch_mail(node);
        let epoch = self.nodes[node as usize].epoch;
        let every = self.scenario.workload.republish_min * MINUTE;
        self.schedule(now + every, Ev::Publish { node, epoch });
        self.schedule_act(node, false);
        self.schedule_act(node, true);
        if self.scenario.churn.enabled {
            let c = &self.scenario.churn;
            let session = weibull(
                &mut self.rng,
                c.session_shape,
                c.session_scale_h * HOUR as f64,
            );
            self.schedule(now + (session as u64).max(1000), Ev::Leave { node, epoch });
        }
    }

    fn go_offline(&mut self, node: u32) {
        // Drawn only when crashes are modelled, so that other scenarios
        // keep their random sequence.
        let share = self.scenario.churn.crash_share;
        let crash = share > 0.0 && unit(&mut self.rng) < share;
        let n = &mut self.nodes[node as usize];
        if !crash {
            n.clean_stop = Some(n.epoch);
        }
        n.online = false;
        n.epoch += 1;
        n.wake_at = None;
        let relay = n.relay;
        let reserved = n.nat.needs_relay();
        if let (Some(r), true) = (relay, reserved) {
            if let Some(relay) = self.relays.get_mut(&r) {
                relay.reservations = relay.reservations.saturating_sub(1);
            }
        }
    }

    fn schedule_act(&mut self, node: u32, message: bool) {
        let w = &self.scenario.workload;
        let rate = if message {
            w.messages_per_hour
        } else {
            w.lookups_per_hour
        };
        if rate <= 0.0 {
            return;
        }
        let gap = exponential(&mut self.rng, HOUR as f64 / rate) as u64;
        let epoch = self.nodes[node as usize].epoch;
        self.schedule(
            self.now + gap.max(1),
            Ev::Act {
                node,
                epoch,
                message,
            },
        );
    }

    /// The nearest relay alive with room; an agent behind a NAT takes a
    /// reservation there. Every agent names it on its card for mail.
    fn choose_relay(&mut self, node: u32) {
        if self.nodes[node as usize].role != Role::Agent {
            return;
        }
        let needs = self.nodes[node as usize].nat.needs_relay();
        let current = self.nodes[node as usize].relay;
        if let Some(r) = current {
            if self.relays.get(&r).is_some_and(|relay| relay.alive) {
                if needs {
                    self.relays.entry(r).or_default().reservations += 1;
                }
                return;
            }
        }
        let max = self.scenario.relays.max_reservations;
        let mut best: Option<(u64, u32)> = None;
        for (id, relay) in &self.relays {
            if !relay.alive || (needs && relay.reservations >= max) {
                continue;
            }
            let rtt = self.rtt(node, *id);
            if best.is_none_or(|(b, _)| rtt < b) {
                best = Some((rtt, *id));
            }
        }
        let chosen = best.map(|(_, id)| id);
        if let (Some(r), true) = (chosen, needs) {
            self.relays.entry(r).or_default().reservations += 1;
        }
        if chosen.is_none() && needs {
            self.rec.no_relay += 1;
        }
        self.nodes[node as usize].relay = chosen;
    }

    /// Signs a fresh card (as the node does at every publish: a new
    /// sequence number and expiry, the relay in use) and puts it.
    fn publish(&mut self, node: u32) {
        let expires = self.now + self.scenario.workload.card_ttl_min * MINUTE;
        let n = &mut self.nodes[node as usize];
        let Some(key) = &n.keypair else {
            return;
        };
        n.card_seq += 1;
        let Ok(card) = SignedRecord::sign(key, "card", card_payload(n.relay), n.card_seq, expires)
            .and_then(|r| r.to_bytes())
        else {
            return;
        };
        if let Ok(id) = n.kad.put_record(n.card_key.clone(), card, self.now) {
            n.pending.insert(id, Purpose::Publish);
        }
        self.sync(node);
    }
}
