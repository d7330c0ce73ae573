//! The owner's controls on a running node: the blocklist, the policy, the
//! kill switch, closing sessions, and the audit log.

use std::{collections::HashMap, path::Path, time::Duration};

use agentmesh_dht::now_ms;

use crate::{
    audit::{AuditEntry, AuditError, AuditEvent, AuditFilter},
    crypto::envelope::SessionId,
    crypto::session::SessionInfo,
    events::NodeEvent,
    identity::Amid,
    knock::policy::Policy,
};

use super::{exchange, rate_limits, registry, Command, Node, KILLED_ALL_KEY};

impl Node {
    /// Adds `amid` to the blocklist: its KNOCKs are refused from now on and
    /// its cached sessions are dropped.
    pub fn block(&self, amid: Amid) {
        if let Ok(mut p) = self.shared.policy.write() {
            p.block.insert(amid);
        }
        self.shared.store().forget_peer(&amid);
    }

    /// Replaces the policy. Sessions already accepted stay open; blocked
    /// agents lose theirs at once.
    pub fn set_policy(&self, policy: Policy) {
        self.shared.audit(AuditEvent::PolicyChanged {
            policy_hash: hex::encode(policy.hash()),
        });
        let blocked: Vec<Amid> = policy.block.iter().copied().collect();
        let (knock_rate, msg_rate) = rate_limits(&policy);
        let now = now_ms();
        if let Ok(mut l) = self.shared.knock_limiter.lock() {
            l.set_limit(knock_rate, now);
        }
        if let Ok(mut l) = self.shared.msg_limiter.lock() {
            l.set_limit(msg_rate, now);
        }
        if let Ok(mut p) = self.shared.policy.write() {
            *p = policy;
        }
        for amid in blocked {
            self.block(amid);
        }
    }

    /// The policy file the node was started with (see
    /// [`Config::policy_file`](super::Config::policy_file)), if any.
    pub fn policy_file(&self) -> Option<&Path> {
        self.shared.config.policy_file.as_deref()
    }

    /// Reads the policy file again (see
    /// [`Config::policy_file`](super::Config::policy_file)) and applies it.
    /// Returns the new policy's hash.
    pub fn reload_policy(&self) -> Result<[u8; 32], crate::knock::policy::PolicyError> {
        let Some(path) = &self.shared.config.policy_file else {
            return Ok(self.policy().hash());
        };
        let policy = Policy::from_file(path)?;
        let hash = policy.hash();
        self.set_policy(policy);
        tracing::info!(hash = %hex::encode(hash), "policy reloaded");
        Ok(hash)
    }

    /// The owner's kill switch. With `Some(amid)`: block the agent, close
    /// its sessions and connections at once, and fail what was queued for
    /// it. With `None`: do that for every peer, refuse every KNOCK and
    /// message, and send nothing, until [`Node::clear_kill`]; this switch
    /// survives restarts.
    pub async fn kill(&self, target: Option<Amid>) {
        self.shared.audit(AuditEvent::Kill { target });
        let peers: Vec<Amid> = match target {
            Some(a) => vec![a],
            None => {
                self.shared
                    .killed_all
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = self.shared.db.insert(KILLED_ALL_KEY, &[1u8]);
                let _ = self.shared.db.flush_async().await;
                let mut all: Vec<Amid> = self
                    .shared
                    .store()
                    .all_sessions()
                    .into_iter()
                    .map(|s| s.peer)
                    .collect();
                all.extend(
                    self.shared
                        .links
                        .lock()
                        .map(|l| l.keys().copied().collect::<Vec<_>>())
                        .unwrap_or_default(),
                );
                all.sort();
                all.dedup();
                all
            }
        };
        for amid in peers {
            if target.is_some() {
                self.block(amid);
            } else {
                self.shared.store().forget_peer(&amid);
            }
            let link = self
                .shared
                .links
                .lock()
                .ok()
                .and_then(|mut l| l.remove(&amid));
            if let Some((_, cancel)) = link {
                cancel.cancel();
            }
            if let Ok(peer) = amid.peer_id() {
                let _ = self
                    .shared
                    .commands
                    .send(Command::Disconnect { peer })
                    .await;
            }
        }
    }

    /// Ends every session with `peer`: both sides forget it (the peer is
    /// told over a message stream when it is reachable), and the next
    /// message to or from it needs a new KNOCK. Returns how many sessions
    /// were closed.
    pub async fn close_session(&self, peer: &Amid) -> usize {
        let mut infos: HashMap<SessionId, SessionInfo> = self
            .shared
            .store()
            .all_sessions()
            .into_iter()
            .filter(|s| s.peer == *peer)
            .map(|s| (s.id, s))
            .collect();
        let sessions = self.shared.store().forget_peer(peer);
        for session in &sessions {
            exchange::end_streams(&self.shared, peer, session);
            self.shared.audit(AuditEvent::SessionClosed {
                peer: *peer,
                session: *session,
                why: "closed by us".into(),
            });
            self.shared.emit(NodeEvent::SessionClosed {
                peer: *peer,
                session: *session,
                by_peer: false,
            });
        }
        // Tell the peer, best effort: an unreachable peer learns it from
        // `unknown_session` on its next message.
        if let (Ok(peer_id), false) = (peer.peer_id(), sessions.is_empty()) {
            let mut control = self.shared.control.clone();
            let opened = tokio::time::timeout(
                Duration::from_secs(10),
                control.open_stream(peer_id, crate::wire::MSG_PROTOCOL),
            )
            .await;
            if let Ok(Ok(stream)) = opened {
                let mut framed = agentmesh_transports::framing::FramedStream::new(
                    stream,
                    crate::wire::MAX_FRAME_SIZE,
                );
                for session in &sessions {
                    // Our half of a receipt recording the session as not
                    // completed.
                    let receipt = infos
                        .remove(session)
                        .and_then(|info| registry::propose(&self.shared, &info, false));
                    let frame = crate::wire::MsgFrame::Close {
                        session: *session,
                        receipt,
                    };
                    if framed.send(frame.to_bytes()).await.is_err() {
                        break;
                    }
                }
                let _ = framed.close().await;
            }
        }
        sessions.len()
    }

    /// Turns the kill switch for everyone off again.
    pub fn clear_kill(&self) {
        self.shared
            .killed_all
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.shared.db.remove(KILLED_ALL_KEY);
    }

    /// Whether the kill switch for everyone is on.
    pub fn is_killed(&self) -> bool {
        self.shared
            .killed_all
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Entries of the audit log that match `filter`, oldest first.
    pub fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, AuditError> {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list(filter)
    }

    /// Verifies the whole audit chain; returns the number of entries, or
    /// the position of the first tampered one.
    pub fn verify_audit_log(&self) -> Result<u64, AuditError> {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verify()
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        self.shared
            .policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}
