//! Scripted events: a relay or a bootstrap goes away, a region is cut off
//! and comes back, a flash crowd joins.

use super::{Ev, World, MINUTE, RELAY_LOSS_NOTICED_MS};
use crate::sim::model::{unit, REGIONS};
use crate::sim::report::Failure;
use crate::sim::scenario::ScriptedKind;

impl World<'_> {
    pub(super) fn script(&mut self, index: usize) {
        let event = self.scenario.events[index].clone();
        match event.kind {
            ScriptedKind::RelayDown => {
                let servers = self.scenario.bootstraps;
                let which: u32 = event.target.parse().unwrap_or(0);
                let node = servers + which;
                if let Some(relay) = self.relays.get_mut(&node) {
                    relay.alive = false;
                    let lost: Vec<usize> = relay
                        .mail
                        .values()
                        .flat_map(|m| m.iter().map(|(msg, _, _)| *msg))
                        .collect();
                    relay.mail.clear();
                    relay.reservations = 0;
                    for msg in lost {
                        let sent = self.messages[msg].sent;
                        self.rec.failed(sent, Failure::RelayLost);
                    }
                }
                if (node as usize) < self.nodes.len() {
                    self.go_offline(node);
                    self.nodes[node as usize].held = true;
                }
                let users: Vec<u32> = self
                    .agents
                    .iter()
                    .copied()
                    .filter(|a| {
                        self.nodes[*a as usize].online
                            && self.nodes[*a as usize].relay == Some(node)
                    })
                    .collect();
                for a in users {
                    let epoch = self.nodes[a as usize].epoch;
                    self.schedule(
                        self.now + RELAY_LOSS_NOTICED_MS,
                        Ev::RelayLost { node: a, epoch },
                    );
                }
            }
            ScriptedKind::RegionDown | ScriptedKind::RegionUp => {
                let Some(region) = REGIONS.iter().position(|r| *r == event.target) else {
                    return;
                };
                let down = event.kind == ScriptedKind::RegionDown;
                let members: Vec<u32> = self
                    .agents
                    .iter()
                    .copied()
                    .filter(|a| self.nodes[*a as usize].region == region)
                    .collect();
                for a in members {
                    self.nodes[a as usize].held = down;
                    if down && self.nodes[a as usize].online {
                        self.go_offline(a);
                    } else if !down
                        && self.nodes[a as usize].joined
                        && !self.nodes[a as usize].online
                    {
                        self.come_online(a);
                    }
                }
            }
            ScriptedKind::BootstrapDown => {
                let which: u32 = event.target.parse().unwrap_or(0);
                if which < self.scenario.bootstraps {
                    self.go_offline(which);
                    self.nodes[which as usize].held = true;
                }
            }
            ScriptedKind::FlashCrowd => {
                let count: u32 = event.target.parse().unwrap_or(0);
                let first =
                    self.scenario.bootstraps + self.scenario.relays.count + self.scenario.nodes;
                let already: u32 = self.scenario.events[..index]
                    .iter()
                    .filter(|e| e.kind == ScriptedKind::FlashCrowd)
                    .map(|e| e.target.parse::<u32>().unwrap_or(0))
                    .sum();
                for i in 0..count {
                    let node = first + already + i;
                    let at = self.now + (unit(&mut self.rng) * MINUTE as f64) as u64;
                    self.schedule(at, Ev::Join { node });
                }
            }
        }
    }
}
