//! The mailbox fallback: what is in flight goes to the peer's mailbox
//! relays when the peer cannot be reached or stops acknowledging.

use tracing::{debug, warn};

use agentmesh_transports::PathKind;

use super::Link;
use crate::{
    audit::AuditEvent,
    events::{NodeEvent, Receipt},
    runtime::{Command, SendError},
    wire::MsgFrame,
};

impl Link {
    /// A stream on which the oldest message waited too long for its
    /// acknowledgement is taken to be dead (a peer that hangs, a connection
    /// that broke without a word): its connection is closed and what is in
    /// flight goes to the peer's mailbox. Should the peer have stored a
    /// message after all, it drops the mailbox copy by envelope id.
    pub(super) async fn deposit_unacknowledged(&mut self) {
        if self.writer.is_none() || self.peer_relays.is_empty() {
            return;
        }
        warn!(
            peer = %self.peer.short(),
            in_flight = self.delivery.in_flight(),
            "no acknowledgement in time; closing the connection and using the mailbox"
        );
        self.writer = None;
        self.reader = None;
        self.delivery.handle_stream_abandoned();
        if let Some(peer) = self.peer_id {
            let _ = self
                .shared
                .commands
                .send(Command::Disconnect { peer })
                .await;
        }
        self.deposit_inflight().await;
        if self.delivery.in_flight() > 0 {
            self.close_stream();
        }
    }

    /// The peer cannot be reached: hands everything in flight, in order, to
    /// its mailbox relays. A message is done once a relay holds it on disk;
    /// its receipt says `mailbox`, and [`NodeEvent::Delivered`] follows when
    /// the peer has fetched it.
    pub(super) async fn deposit_inflight(&mut self) {
        if self.delivery.in_flight() == 0 || self.peer_relays.is_empty() {
            return;
        }
        if self.moved_since_resolved().await {
            // The peer moved to a new key: its old mailbox is read by
            // nobody. The sends fail as not found and follow it.
            while let Some(m) = self.delivery.pop_front() {
                self.fail(m.out, SendError::NotFound(self.peer));
            }
            return;
        }
        if !self.make_durable().await {
            // Nothing leaves before it is durable: try again later.
            if self.delivery.reconnect_at().is_none() {
                self.close_stream();
            }
            return;
        }
        while let Some(m) = self.delivery.pop_front() {
            let Ok(MsgFrame::Envelope(envelope)) = MsgFrame::from_bytes(&m.bytes) else {
                self.fail(m.out, SendError::InvalidPayload("not an envelope".into()));
                continue;
            };
            let relays = self.peer_relays.clone();
            match crate::runtime::mailbox::deposit(&self.shared, &self.peer, &relays, &envelope)
                .await
            {
                Ok(n) => {
                    self.delivery.handle_deposited(std::time::Instant::now());
                    self.shared.audit(AuditEvent::MessageOut {
                        to: self.peer,
                        id: m.out.id,
                        session: m.session,
                        size: envelope.len() as u32,
                        path: PathKind::Mailbox.to_string(),
                    });
                    self.shared.emit(NodeEvent::Deposited {
                        id: m.out.id,
                        to: self.peer,
                        relays: n,
                    });
                    if let Some(r) = m.out.reply {
                        let _ = r.send(Ok(Receipt {
                            id: m.out.id,
                            to: self.peer,
                            path: PathKind::Mailbox,
                            knocked: false,
                            session: m.session,
                        }));
                    }
                }
                Err(e @ crate::mailbox::MailboxError::Refused { .. }) => {
                    self.fail(m.out, SendError::Mailbox(e));
                }
                Err(e) => {
                    // No relay reachable either: keep it for the next try.
                    debug!(peer = %self.peer.short(), error = %e, "mailbox unreachable");
                    self.delivery.push_front(m, std::time::Instant::now());
                    return;
                }
            }
        }
        // Nothing left to resend: no reason to keep dialling.
        self.delivery.handle_all_deposited();
    }
}
