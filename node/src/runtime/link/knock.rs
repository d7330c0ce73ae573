//! Opening a session: a KNOCK that carries the first message, retried with
//! back-off until the peer answers or the message's deadline passes.

use libp2p::PeerId;
use tokio::time::Instant;
use tracing::{debug, warn};

use agentmesh_dht::now_ms;
use agentmesh_transports::{framing::FramedStream, PathKind};

use super::{Link, LinkError, KNOCK_TIMEOUT, MAX_BACKOFF, MIN_BACKOFF};
use crate::{
    audit::AuditEvent,
    crypto::envelope::MAX_ENVELOPE_SIZE,
    crypto::session::SessionStore,
    events::{NodeEvent, Receipt},
    knock::{Decision, KnockBody, RejectReason, SignedDecision, SignedKnock},
    runtime::{first_contact, Outgoing, SendError},
    wire::{KNOCK_PROTOCOL, MAX_FRAME_SIZE},
};

impl Link {
    /// Opens a session with a KNOCK that carries `out` as its first message.
    pub(super) async fn knock(&mut self, peer_id: PeerId, mut out: Outgoing) {
        let mut use_fallback = false;
        let mut backoff = MIN_BACKOFF;
        loop {
            if out.deadline <= Instant::now() {
                let err = if self.card.is_none() {
                    SendError::NotFound(self.peer)
                } else {
                    SendError::DeliveryTimeout
                };
                self.fail(out, err);
                return;
            }
            if let Err(open) = self.shared.breakers().allow(&self.peer, now_ms()) {
                self.fail(
                    out,
                    SendError::CircuitOpen {
                        retry_after_ms: open.retry_after_ms,
                    },
                );
                return;
            }
            let attempt = self.try_knock(peer_id, &out, use_fallback).await;
            match &attempt {
                Ok((Decision::Accept { .. }, _, _)) => {
                    self.shared.breakers().record_success(&self.peer, now_ms())
                }
                Ok((
                    Decision::Reject {
                        reason: RejectReason::PrekeyUnavailable,
                        ..
                    },
                    _,
                    _,
                )) => {}
                Ok(_) | Err(LinkError::Retry(_)) => {
                    self.shared.breakers().record_failure(&self.peer, now_ms())
                }
                Err(LinkError::Fatal(_)) => {}
            }
            match attempt {
                Ok((decision, pending, path)) => match decision {
                    Decision::Accept { expires_ms, .. } => {
                        // No flush needed: the first message was sealed in
                        // a session made for this KNOCK from a fresh
                        // ephemeral key, and the session is stored only
                        // here. Should we die before it reaches the disk,
                        // we come back without it and KNOCK again with a
                        // new session: no message key is used twice. The
                        // next messages in it flush it with their burst
                        // (`make_durable`).
                        let committed = self.shared.store().commit_outbound(pending, expires_ms);
                        let info = match committed {
                            Ok(info) => info,
                            Err(e) => {
                                self.fail(out, SendError::Storage(e.to_string()));
                                return;
                            }
                        };
                        self.shared.audit(AuditEvent::SessionOpened {
                            peer: self.peer,
                            session: info.id,
                            role: "initiator".into(),
                        });
                        self.shared.audit(AuditEvent::MessageOut {
                            to: self.peer,
                            id: out.id,
                            session: info.id,
                            size: 0,
                            path: path.to_string(),
                        });
                        self.delivered(out, path, true, info.id);
                        return;
                    }
                    Decision::Reject {
                        reason: RejectReason::PrekeyUnavailable,
                        ..
                    } if !use_fallback => {
                        debug!(peer = %self.peer.short(), "prekey used up; retrying with the fallback key");
                        use_fallback = true;
                        self.card = None;
                    }
                    Decision::Reject { reason, .. } => {
                        self.fail(out, SendError::Rejected(reason));
                        return;
                    }
                },
                Err(LinkError::Fatal(e)) => {
                    self.fail(out, e);
                    return;
                }
                Err(LinkError::Retry(e)) => {
                    debug!(peer = %self.peer.short(), error = %e, "knock attempt failed");
                    if !self.peer_relays.is_empty() && !self.is_connected(peer_id) {
                        // Not reachable, and it keeps a mailbox: the KNOCK
                        // waits there for it.
                        match self.knock_by_mail(out).await {
                            None => return,
                            Some(back) => out = back,
                        }
                    }
                    let wait = backoff.min(out.deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Leaves a KNOCK carrying `out` at the peer's mailbox relays (see
    /// [`first_contact`](crate::runtime::first_contact)). From then on the
    /// session it proposes is ours, so later messages follow it into the
    /// mailbox. Gives `out` back when no relay took it, to be tried again.
    async fn knock_by_mail(&mut self, out: Outgoing) -> Option<Outgoing> {
        let card = match self.resolve().await {
            Ok(c) => c,
            Err(LinkError::Fatal(e)) => {
                self.fail(out, e);
                return None;
            }
            Err(LinkError::Retry(_)) => return Some(out),
        };
        let now = now_ms();
        // One-time keys may be used up by the time the peer reads it.
        let sealed =
            self.sealed_knock(&card, &out, true, now)
                .and_then(|(pending, first, knock)| {
                    let body = first
                        .peek()
                        .ok_or_else(|| "first message unreadable".to_string())?;
                    let env = first_contact::seal_knock(&self.shared.identity, &knock, &body)
                        .map_err(|e| e.to_string())?;
                    Ok((pending, knock, env.to_bytes()))
                });
        let (pending, knock, bytes) = match sealed {
            Ok(k) if k.2.len() <= MAX_ENVELOPE_SIZE => k,
            Ok(_) => {
                let e = "the first message is too large to leave in a mailbox with its KNOCK";
                self.fail(out, SendError::InvalidPayload(e.into()));
                return None;
            }
            Err(e) => {
                self.fail(out, SendError::InvalidPayload(e));
                return None;
            }
        };
        let relays = self.peer_relays.clone();
        let stored = match crate::runtime::mailbox::deposit(
            &self.shared,
            &self.peer,
            &relays,
            &bytes,
        )
        .await
        {
            Ok(n) => n,
            Err(e @ crate::mailbox::MailboxError::Refused { .. }) => {
                self.fail(out, SendError::Mailbox(e));
                return None;
            }
            Err(e) => {
                debug!(peer = %self.peer.short(), error = %e, "no mailbox relay took the knock");
                return Some(out);
            }
        };
        // The session we proposed is ours from now on; should we die before
        // it reaches the disk, the KNOCK is answered for a session we do
        // not have, and the next message KNOCKs again with a new one.
        let committed = self
            .shared
            .store()
            .commit_outbound(pending, u64::MAX)
            .map_err(|e| e.to_string())
            .and_then(|info| {
                first_contact::remember_sent(&self.shared, &knock, self.peer, out.id, info.id, now)
                    .map(|()| info)
            });
        let info = match committed {
            Ok(info) => info,
            Err(e) => {
                self.fail(out, SendError::Storage(e));
                return None;
            }
        };
        if let Err(e) = self.shared.db.flush_async().await {
            warn!(peer = %self.peer.short(), error = %e, "flush after a mailed knock failed");
        }
        debug!(peer = %self.peer.short(), relays = stored, "knock left in the mailbox");
        self.shared.audit(AuditEvent::MessageOut {
            to: self.peer,
            id: out.id,
            session: info.id,
            size: bytes.len() as u32,
            path: PathKind::Mailbox.to_string(),
        });
        self.shared.emit(NodeEvent::Deposited {
            id: out.id,
            to: self.peer,
            relays: stored,
        });
        if let Some(r) = out.reply {
            let _ = r.send(Ok(Receipt {
                id: out.id,
                to: self.peer,
                path: PathKind::Mailbox,
                knocked: true,
                session: info.id,
            }));
        }
        None
    }

    /// A new outbound session to `card`'s agent, `out` sealed in it as its
    /// first message, and the signed KNOCK that carries it.
    fn sealed_knock(
        &self,
        card: &crate::card::AgentCard,
        out: &Outgoing,
        use_fallback: bool,
        now: u64,
    ) -> Result<
        (
            crate::crypto::session::PendingOutbound,
            crate::crypto::envelope::SignedEnvelope,
            SignedKnock,
        ),
        String,
    > {
        let (pending, first) = self
            .shared
            .store()
            .seal_first(
                &self.shared.identity,
                card,
                use_fallback,
                out.intent.clone(),
                out.id,
                &out.content,
                now,
            )
            .map_err(|e| e.to_string())?;
        let body = KnockBody {
            from: self.shared.amid,
            to: self.peer,
            intent: out.intent.clone(),
            session: SessionStore::pending_session_id(&pending),
            ts_ms: now,
            nonce: crate::storage::random_array(),
            first: first.to_bytes(),
            credentials: self.shared.credentials(),
            moved_from: self.shared.rotations.clone(),
        };
        let knock = SignedKnock::sign(&self.shared.identity, &body).map_err(|e| e.to_string())?;
        Ok((pending, first, knock))
    }

    pub(super) async fn try_knock(
        &mut self,
        peer_id: PeerId,
        out: &Outgoing,
        use_fallback: bool,
    ) -> Result<(Decision, crate::crypto::session::PendingOutbound, PathKind), LinkError> {
        let path = self.connect(peer_id).await?;
        let card = self.resolve().await?;
        let now = now_ms();
        let (pending, _, knock) = self
            .sealed_knock(&card, out, use_fallback, now)
            .map_err(|e| LinkError::Fatal(SendError::InvalidPayload(e)))?;
        let mut control = self.shared.control.clone();
        let stream = control
            .open_stream(peer_id, KNOCK_PROTOCOL)
            .await
            .map_err(|e| LinkError::Retry(e.to_string()))?;
        let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
        framed
            .send(knock.to_bytes())
            .await
            .map_err(|e| LinkError::Retry(e.to_string()))?;
        let answer = tokio::time::timeout(KNOCK_TIMEOUT, framed.recv())
            .await
            .map_err(|_| LinkError::Retry("knock timed out".into()))?
            .map_err(|e| LinkError::Retry(e.to_string()))?
            .ok_or_else(|| LinkError::Retry("peer closed the knock stream".into()))?;
        let decision = SignedDecision::from_bytes(&answer)
            .and_then(|d| d.verify(&self.peer, &knock))
            .map(|(decision, _policy_hash)| decision)
            .map_err(|e| {
                warn!(peer = %self.peer.short(), error = %e, "invalid knock answer");
                LinkError::Retry(e.to_string())
            })?;
        Ok((decision, pending, path))
    }
}
