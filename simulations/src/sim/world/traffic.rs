//! An agent's traffic: card lookups, messages, and where each goes —
//! direct, relayed then hole punched, or into the recipient's mailbox.

use rand::Rng;

use super::{Ev, Message, Purpose, Session, World, MINUTE};
use crate::sim::model::{hole_punch_works, unit};
use crate::sim::report::{Failure, Path};

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
        });
        self.rec.sent(self.now);
        let epochs = (
            self.nodes[node as usize].epoch,
            self.nodes[to as usize].epoch,
        );
        if let Some(session) = self.sessions.get(&(node, to)).copied() {
            let relay_ok = session
                .relay
                .is_none_or(|r| self.relays.get(&r).is_some_and(|x| x.alive));
            if session.epochs == epochs && self.nodes[to as usize].online && relay_ok {
                let delay = match session.relay {
                    Some(r) => {
                        self.rec.relayed(r - self.scenario.bootstraps, self.now);
                        self.one_way(node, r) + self.one_way(r, to)
                    }
                    None => self.one_way(node, to),
                };
                self.schedule(
                    self.now + delay,
                    Ev::Deliver {
                        msg,
                        path: session.path,
                        first: false,
                    },
                );
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
        let Message { from, to, sent } = self.messages[msg];
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
            self.sessions.insert(
                (from, to),
                Session {
                    epochs,
                    path,
                    relay: via,
                },
            );
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
        self.sessions.insert(
            (from, to),
            Session {
                epochs,
                path,
                relay,
            },
        );
    }

    pub(super) fn deposit(&mut self, msg: usize, relay: u32) {
        let Message { from, to, sent } = self.messages[msg];
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
                            first: true,
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
