//! What a node reports to its application.

use serde::{Deserialize, Serialize};

use agentmesh_transports::PathKind;

use crate::{
    content::Kind,
    crypto::envelope::{MessageId, SessionId},
    crypto::session::Received,
    identity::Amid,
    knock::RejectReason,
};

/// An event of a running node. Also printed, one JSON object per line, by
/// `agentmesh run --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeEvent {
    /// A listener is up.
    Listening {
        /// The address, with `/p2p/<peer id>`.
        addr: String,
    },
    /// The agent card was published in the DHT.
    CardPublished {
        /// Record sequence number.
        seq: u64,
        /// Whether at least one other peer stored it.
        stored_remotely: bool,
    },
    /// A connection to a peer opened.
    Connected {
        /// The peer (its AMID when it is an agent key).
        peer: String,
        /// Over what.
        path: PathKind,
    },
    /// A direct connection replaced the relayed one to a peer (after a
    /// hole punch, or a direct dial): relayed connections to it are
    /// closed and messages go direct. When the peer closed the relayed
    /// connection first, this follows a `Disconnected` and the direct
    /// `Connected` (within ten seconds of the close).
    PathUpgraded {
        /// The peer.
        peer: String,
        /// The new path.
        path: PathKind,
        /// The direct connection's remote address.
        addr: String,
    },
    /// A hole punch (DCUtR) over a relayed connection ended.
    HolePunch {
        /// The peer.
        peer: String,
        /// Whether a direct connection came of it.
        ok: bool,
        /// Why not.
        error: Option<String>,
    },
    /// The network reported a change of our reachability (AutoNAT).
    Reachability {
        /// Public, behind a NAT, or unknown.
        status: crate::runtime::NatStatus,
        /// The address peers dialled us back on, when public.
        addr: Option<String>,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: String,
    },
    /// A message arrived and was stored (read it with `Node::messages`).
    MessageReceived {
        /// Message id.
        id: MessageId,
        /// Sender.
        from: Amid,
        /// Over what.
        path: PathKind,
    },
    /// A message we sent was acknowledged by its recipient.
    Delivered {
        /// Message id.
        id: MessageId,
        /// Recipient.
        to: Amid,
        /// Over what.
        path: PathKind,
        /// Whether this message opened the session (rode in the KNOCK).
        knocked: bool,
        /// Time from `send` to the recipient's receipt, in ms (absent for
        /// mail fetched from a mailbox, whose receipt comes later).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<u64>,
    },
    /// The recipient could not be reached: a message we sent is stored in
    /// its mailbox at `relays` relays. [`NodeEvent::Delivered`] with path
    /// `mailbox` follows when the recipient has fetched it.
    Deposited {
        /// Message id.
        id: MessageId,
        /// Recipient.
        to: Amid,
        /// How many relays hold it.
        relays: usize,
    },
    /// A message we sent was refused by its recipient.
    Rejected {
        /// Message id.
        id: MessageId,
        /// Recipient.
        to: Amid,
        /// Why.
        reason: RejectReason,
    },
    /// A message we sent could not be delivered.
    Failed {
        /// Message id.
        id: MessageId,
        /// Recipient.
        to: Amid,
        /// Why.
        error: String,
    },
    /// We decided on an incoming KNOCK.
    KnockDecided {
        /// Initiator.
        from: Amid,
        /// Accepted?
        accepted: bool,
        /// Why not.
        reason: Option<RejectReason>,
        /// The session, when accepted.
        session: Option<SessionId>,
        /// The initiator's tier, as its certificates showed it (absent
        /// when the KNOCK was refused before they were read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<crate::knock::policy::Tier>,
        /// The initiator's registry-attested reputation, if it showed one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reputation: Option<crate::trust::credentials::Reputation>,
        /// Hash (hex) of the policy that decided, as the signed decision
        /// names it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_hash: Option<String>,
    },
    /// A session ended (closed by us or by the peer).
    SessionClosed {
        /// The other agent.
        peer: Amid,
        /// The session.
        session: SessionId,
        /// Whether the peer closed it.
        by_peer: bool,
    },
    /// Both sides signed the receipt of a session that ended (see
    /// [`crate::trust::receipts`]).
    ReceiptSigned {
        /// The other agent.
        peer: Amid,
        /// The session.
        session: SessionId,
    },
    /// A session receipt was filed with the registry, or refused by it, or
    /// put off ([`Filing::Pending`](crate::trust::receipts::Filing::Pending): the
    /// registry does not know one of the agents yet; it is filed again
    /// later, for up to a week after the session ended).
    ReceiptFiled {
        /// The other agent.
        peer: Amid,
        /// The session.
        session: SessionId,
        /// Where it stands.
        filing: crate::trust::receipts::Filing,
    },
    /// New credentials are shown in our KNOCKs (renewed from the registry
    /// or reloaded from the data directory).
    CredentialsUpdated(crate::CredentialsState),
    /// The revocation set was synced with the registry.
    RevocationsSynced(crate::RevocationSync),
    /// The registry named a root key other than the pinned one: refused,
    /// nothing it serves is believed until it names the pinned one again.
    RegistryRootRefused {
        /// The pinned root key.
        pinned: Amid,
        /// The root key the registry named.
        offered: Amid,
    },
    /// An incoming message was over its sender's rate limit: answered
    /// with the wait, and sent again by its sender after it (not refused).
    Throttled {
        /// The sender.
        from: String,
        /// The wait the sender was given, ms.
        retry_after_ms: u64,
    },
    /// An incoming envelope or KNOCK was refused.
    Refused {
        /// The sender, when known.
        from: Option<String>,
        /// Why.
        reason: RejectReason,
        /// Details.
        detail: String,
    },
}

/// A received message, as handed to the application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// Message id.
    pub id: MessageId,
    /// Sender.
    pub from: Amid,
    /// Session.
    pub session: SessionId,
    /// Sender's sequence number in the session.
    pub seq: u64,
    /// Sending time, ms since the epoch.
    pub ts_ms: u64,
    /// Decrypted payload.
    pub payload: serde_json::Value,
    /// Over what it arrived.
    pub path: PathKind,
    /// A message, a request (answer it with `Node::reply`) or a reply.
    #[serde(default)]
    pub kind: MessageKind,
    /// The message this one answers, for a reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
}

/// How a received message is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MessageKind {
    /// A message (a conversation turn).
    #[default]
    Message,
    /// A request: its sender waits for one reply.
    Request,
    /// A reply to the message named by [`Message::reply_to`].
    Reply,
}

impl Message {
    pub(crate) fn new(r: Received, path: PathKind) -> Self {
        Self {
            id: r.id,
            from: r.from,
            session: r.session,
            seq: r.seq,
            ts_ms: r.ts_ms,
            payload: r.payload,
            path,
            kind: match r.kind {
                Kind::Request => MessageKind::Request,
                Kind::Reply { .. } => MessageKind::Reply,
                _ => MessageKind::Message,
            },
            reply_to: match r.kind {
                Kind::Reply { to } => Some(to),
                _ => None,
            },
        }
    }
}

/// Proof that a message reached its recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Receipt {
    /// Message id.
    pub id: MessageId,
    /// Recipient.
    pub to: Amid,
    /// Over what.
    pub path: PathKind,
    /// Whether the message rode in a KNOCK (opened the session).
    pub knocked: bool,
    /// The session it was sent in.
    pub session: SessionId,
}
