//! An agent's traffic: card lookups, messages, and where each goes —
//! direct, relayed then hole punched, or into the recipient's mailbox.

use std::time::Instant;

use agentmesh_node::cores::delivery::{Delivery, Pending, ACK_TIMEOUT};
use agentmesh_node::crypto::envelope::MessageId;
use rand::Rng;

use super::{Ev, Message, Purpose, Session, World, DRAIN_EVERY_MS, MINUTE};
use crate::sim::model::{hole_punch_works, unit};
use crate::sim::report::{Failure, Path};

/// A message in a link's window.
#[derive(Debug)]
pub(super) struct Out {
    msg: usize,
    deadline: Instant,
}

impl Pending for Out {
    fn id(&self) -> MessageId {
        MessageId((self.msg as u128).to_be_bytes())
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn pinned(&self) -> bool {
        false
    }

    fn reopened(&self) -> u8 {
        0
    }
}

/// The node's defaults for a link: its window and delivery timeout.
fn new_link() -> Delivery<Out> {
    let c = agentmesh_node::Config::default();
    Delivery::new(c.window, c.delivery_timeout)
}

fn card_relay(card: &[u8]) -> Option<u32> {
    let record = agentmesh_dht::SignedRecord::from_bytes(card).ok()?;
    let verified = record.verify(0).ok()?;
    let text = std::str::from_utf8(&verified.payload).ok()?;
    text.trim().strip_prefix("relay=")?.parse().ok()
}

impl World<'_> {
    pub(super) fn random_agent(&mut self, not: u32) -> Option<u32> {
        let joined = self.agents.len();
        if joined < 2 {
            return None;
        }
        for _ in 0..8 {
            let pick = self.agents[self.rng.random_range(0..joined)];
            if pick != not && self.nodes[pick as usize].joined {
                return Some(pick);
            }
        }
        None
    }

    pub(super) fn lookup(&mut self, node: u32) {
        let Some(target) = self.random_agent(node) else {
            return;
        };
        let key = self.nodes[target as usize].card_key.clone();
        let id = self.nodes[node as usize].kad.get_record(key, self.now);
        self.nodes[node as usize]
            .pending
            .insert(id, Purpose::Lookup { started: self.now });
        self.sync(node);
    }

    pub(super) fn send_message(&mut self, node: u32) {
        let known = &self.nodes[node as usize].known;
        let target =
            if !known.is_empty() && unit(&mut self.rng) < self.scenario.workload.repeat_peer {
                let k = self.nodes[node as usize].known.len();
                Some(self.nodes[node as usize].known[self.rng.random_range(0..k)])
            } else {
                self.random_agent(node)
            };
        let Some(to) = target else {
            return;
        };
        let msg = self.messages.len();
        self.messages.push(Message {
            from: node,
            to,
            sent: self.now,
            in_session: false,
        });
        self.rec.sent(self.now);
        let epochs = (
            self.nodes[node as usize].epoch,
            self.nodes[to as usize].epoch,
        );
        if let Some(session) = self.sessions.get(&(node, to)) {
            let relay_ok = session
                .relay
                .is_none_or(|r| self.relays.get(&r).is_some_and(|x| x.alive));
            let recipient = &self.nodes[to as usize];
            let same = session.epochs == epochs && recipient.online;
            // A recipient that crashed since told nobody: the sender
            // writes on as if the stream stood, until the acknowledgements
            // stop coming. One that stopped cleanly told its peers.
            let unaware = session.epochs.0 == epochs.0
                && session.epochs.1 != epochs.1
                && recipient.clean_stop.is_none_or(|e| e < session.epochs.1);
            if relay_ok && (same || unaware) {
                self.send_on_link(node, to, msg);
                return;
            }
            self.sessions.remove(&(node, to));
        }
        let key = self.nodes[to as usize].card_key.clone();
        let id = self.nodes[node as usize].kad.get_record(key, self.now);
        self.nodes[node as usize].pending.insert(
            id,
            Purpose::Message {
                msg,
                started: self.now,
            },
        );
        self.sync(node);
    }

    /// First contact after the card lookup: direct, relayed (then hole
    /// punched if the NATs allow), or into the recipient's mailbox.
    pub(super) fn route(&mut self, msg: usize, card: Option<&[u8]>) {
        let Message { from, to, sent, .. } = self.messages[msg];
        let Some(card) = card else {
            self.rec.failed(sent, Failure::NoCard);
            return;
        };
        let relay = card_relay(card).filter(|r| self.relays.get(r).is_some_and(|x| x.alive));
        let (a, b) = (from as usize, to as usize);
        let target_online = self.nodes[b].online;
        if !self.nodes[a].known.contains(&to) {
            self.nodes[a].known.push(to);
        }
        let epochs = (self.nodes[a].epoch, self.nodes[b].epoch);
        if target_online && self.nodes[b].nat.dialable() {
            // QUIC handshake, the one-step KNOCK, then the message.
            let rtt = self.rtt(from, to);
            let delay = 2 * rtt + self.one_way(from, to);
            self.open_session(from, to, epochs, Path::Direct, None, msg, delay);
            return;
        }
        let Some(r) = relay else {
            self.rec.failed(sent, Failure::Unreachable);
            return;
        };
        if target_online && self.nodes[b].relay == Some(r) {
            // Relay connection, circuit and KNOCK through it, the message;
            // then DCUtR upgrades the session if the two NATs allow it.
            let leg = self.rtt(from, r) + self.rtt(r, to);
            let delay = self.rtt(from, r) + leg + leg / 2;
            self.rec.relayed(r - self.scenario.bootstraps, sent);
            let (path, via) = if hole_punch_works(self.nodes[a].nat, self.nodes[b].nat) {
                (Path::HolePunched, None)
            } else {
                (Path::Relayed, Some(r))
            };
            self.schedule(
                self.now + delay,
                Ev::Deliver {
                    msg,
                    path: Path::Relayed,
                    first: true,
                },
            );
            let session = self.new_session(epochs, path, via);
            self.sessions.insert((from, to), session);
            return;
        }
        // Offline (or no longer at that relay): leave it in the mailbox.
        self.deposit(msg, r);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_session(
        &mut self,
        from: u32,
        to: u32,
        epochs: (u32, u32),
        path: Path,
        relay: Option<u32>,
        msg: usize,
        delay: u64,
    ) {
        self.schedule(
            self.now + delay,
            Ev::Deliver {
                msg,
                path,
                first: true,
            },
        );
        let session = self.new_session(epochs, path, relay);
        self.sessions.insert((from, to), session);
    }

    /// A session just opened: its link has a stream open.
    fn new_session(&self, epochs: (u32, u32), path: Path, relay: Option<u32>) -> Session {
        let mut link = new_link();
        link.handle_stream_opened(self.instant(self.now));
        Session {
            epochs,
            path,
            relay,
            link,
            tick_armed: false,
        }
    }

    /// A message in a standing session goes through the sender's link: it
    /// joins the window and is written at once (one message per action
    /// ends its burst), and a check of the window is armed.
    fn send_on_link(&mut self, from: u32, to: u32, msg: usize) {
        let now = self.instant(self.now);
        let timeout = agentmesh_node::Config::default().delivery_timeout;
        self.messages[msg].in_session = true;
        let Some(s) = self.sessions.get_mut(&(from, to)) else {
            return;
        };
        let out = Out {
            msg,
            deadline: now + timeout,
        };
        s.link.handle_sealed(out, true, now);
        let written: Vec<usize> = if s.link.has_unwritten() && s.link.should_end_burst(true) {
            s.link.unwritten(now).map(|o| o.msg).collect()
        } else {
            Vec::new()
        };
        let (epochs, path, relay) = (s.epochs, s.path, s.relay);
        let arm = !std::mem::replace(&mut s.tick_armed, true);
        for m in written {
            let delay = match relay {
                Some(r) => {
                    self.rec.relayed(r - self.scenario.bootstraps, self.now);
                    self.one_way(from, r) + self.one_way(r, to)
                }
                None => self.one_way(from, to),
            };
            self.schedule(
                self.now + delay,
                Ev::Arrive {
                    msg: m,
                    path,
                    epochs,
                },
            );
        }
        if arm {
            let epoch = epochs.0;
            self.schedule(
                self.now + ACK_TIMEOUT.as_millis() as u64,
                Ev::LinkTick { from, to, epoch },
            );
        }
    }

    /// A message written to a stream reaches the recipient: delivered and
    /// acknowledged if the recipient is still the process that opened the
    /// session; lost with the stream otherwise.
    pub(super) fn on_arrive(&mut self, msg: usize, path: Path, epochs: (u32, u32)) {
        let Message { from, to, sent, .. } = self.messages[msg];
        let r = &self.nodes[to as usize];
        if !r.online || r.epoch != epochs.1 {
            return;
        }
        self.rec.delivered(sent, path, self.now - sent, false);
        let relay = self.sessions.get(&(from, to)).and_then(|s| s.relay);
        let back = match relay {
            Some(r) => self.one_way(to, r) + self.one_way(r, from),
            None => self.one_way(to, from),
        };
        self.schedule(self.now + back, Ev::Ack { msg, epochs });
    }

    /// The acknowledgement of `msg` reaches its sender's link.
    pub(super) fn on_ack(&mut self, msg: usize, epochs: (u32, u32)) {
        let Message { from, to, .. } = self.messages[msg];
        if let Some(s) = self.sessions.get_mut(&(from, to)) {
            if s.epochs == epochs {
                let id = MessageId((msg as u128).to_be_bytes());
                s.link.handle_ack(id);
            }
        }
    }

    /// The link checks its window: messages past their deadline fail, and
    /// a stream whose oldest message waited too long for its
    /// acknowledgement is given up: what is in flight goes to the
    /// recipient's mailbox, and the next message starts afresh.
    pub(super) fn on_link_tick(&mut self, from: u32, to: u32, epoch: u32) {
        if self.nodes[from as usize].epoch != epoch || !self.nodes[from as usize].online {
            return;
        }
        let now = self.instant(self.now);
        let Some(s) = self.sessions.get_mut(&(from, to)) else {
            return;
        };
        if s.epochs.0 != epoch {
            return;
        }
        s.tick_armed = false;
        let tick = s.link.handle_tick(now);
        let stale = tick.stale;
        let more = s.link.in_flight() > 0;
        for o in tick.expired {
            let sent = self.messages[o.msg].sent;
            self.rec.failed(sent, Failure::NotAcknowledged);
        }
        if stale {
            self.rec.stale_streams += 1;
            let Some(mut s) = self.sessions.remove(&(from, to)) else {
                return;
            };
            s.link.handle_stream_abandoned();
            let relay = self.nodes[to as usize]
                .relay
                .filter(|r| self.relays.get(r).is_some_and(|x| x.alive));
            while let Some(o) = s.link.pop_front() {
                match relay {
                    Some(r) => self.deposit(o.msg, r),
                    None => {
                        let sent = self.messages[o.msg].sent;
                        self.rec.failed(sent, Failure::Unreachable);
                    }
                }
            }
        } else if more {
            if let Some(s) = self.sessions.get_mut(&(from, to)) {
                s.tick_armed = true;
            }
            self.schedule(self.now + 1000, Ev::LinkTick { from, to, epoch });
        }
    }

    pub(super) fn deposit(&mut self, msg: usize, relay: u32) {
        let Message { from, to, sent, .. } = self.messages[msg];
        let limits = &self.scenario.relays;
        let known = self.nodes[to as usize].known.contains(&from);
        let now = self.now;
        let Some(r) = self.relays.get_mut(&relay) else {
            self.rec.failed(sent, Failure::Unreachable);
            return;
        };
        let mail = r.mail.entry(to).or_default();
        mail.retain(|(_, _, expires)| *expires > now);
        let from_sender = mail.iter().filter(|(_, s, _)| *s == from).count();
        let refusal = if mail.len() >= limits.max_per_recipient {
            Some(Failure::MailboxFull)
        } else if from_sender
            >= if known {
                limits.known_share
            } else {
                limits.stranger_share
            }
        {
            Some(Failure::SenderShare)
        } else if !known {
            let strangers = mail
                .iter()
                .filter(|(_, s, _)| !self.nodes[to as usize].known.contains(s))
                .count();
            (strangers >= limits.strangers_total).then_some(Failure::StrangersTotal)
        } else {
            None
        };
        if let Some(why) = refusal {
            self.rec.failed(sent, why);
            return;
        }
        let expires = now + limits.ttl_min * MINUTE;
        if let Some(r) = self.relays.get_mut(&relay) {
            r.mail.entry(to).or_default().push((msg, from, expires));
        }
        self.rec.deposited(relay - self.scenario.bootstraps, sent);
        let n = &self.nodes[to as usize];
        if n.online {
            // Running: it collects its mail at its next drain.
            let epoch = n.epoch;
            self.schedule(now + DRAIN_EVERY_MS, Ev::Fetch { node: to, epoch });
        }
    }

    pub(super) fn fetch_mail(&mut self, node: u32) {
        let relays: Vec<u32> = self.relays.keys().copied().collect();
        for r in relays {
            let Some(relay) = self.relays.get_mut(&r) else {
                continue;
            };
            if !relay.alive {
                continue;
            }
            let Some(mail) = relay.mail.remove(&node) else {
                continue;
            };
            let now = self.now;
            let rtt = self.rtt(node, r);
            for (msg, _, expires) in mail {
                if expires > now {
                    self.schedule(
                        now + rtt * 2,
                        Ev::Deliver {
                            msg,
                            path: Path::Mailbox,
                            first: !self.messages[msg].in_session,
                        },
                    );
                } else {
                    let sent = self.messages[msg].sent;
                    self.rec.failed(sent, Failure::Expired);
                }
            }
        }
    }
}
