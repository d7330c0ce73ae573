//! Frames of the AgentMesh stream protocols.
//!
//! - `/agentmesh/knock/1`: one stream per KNOCK. The initiator writes one
//!   [`SignedKnock`](crate::knock::SignedKnock) frame, the receiver answers
//!   with one [`SignedDecision`](crate::knock::SignedDecision) frame.
//! - `/agentmesh/msg/1`: one long-lived stream per peer and direction. The
//!   sender writes [`MsgFrame::Envelope`]s; the receiver answers each with
//!   [`MsgFrame::Ack`] once the message is durably stored, or
//!   [`MsgFrame::Nack`] with a typed reason. Acks may be pipelined.
//!
//! Every frame is length-prefixed (see `agentmesh_transports::framing`) and
//! at most [`MAX_FRAME_SIZE`] bytes.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::{
    crypto::envelope::{MessageId, SessionId, MAX_ENVELOPE_SIZE},
    knock::{RejectReason, MAX_KNOCK_SIZE},
};

/// Protocol id of KNOCK.
pub const KNOCK_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/knock/1");
/// Protocol id of the message stream.
pub const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/msg/1");
/// Largest frame on any AgentMesh stream.
pub const MAX_FRAME_SIZE: usize = MAX_KNOCK_SIZE + 1024;

/// A frame on the message stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MsgFrame {
    /// An encoded [`SignedEnvelope`](crate::crypto::envelope::SignedEnvelope).
    Envelope(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The message was stored (or was a duplicate of a stored one).
    Ack {
        /// The message.
        id: MessageId,
    },
    /// The message was refused and will never be delivered.
    Nack {
        /// The message.
        id: MessageId,
        /// Why.
        reason: RejectReason,
        /// When rate limited: send it again after this many ms (it was not
        /// opened, so the same envelope stays valid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The sender ends a session: both sides forget it, and the next
    /// message needs a new KNOCK. Authenticated by the connection (the
    /// stream's peer is the session's other party).
    Close {
        /// The session.
        session: SessionId,
        /// Our half of the session's receipt, recording it as not
        /// completed (see [`crate::trust::receipts`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<crate::trust::receipts::Proposal>,
    },
    /// Delivery receipts: the sender of this frame fetched these messages
    /// from its mailbox and stored them. Authenticated by the connection;
    /// the receiver honours only ids it deposited for that peer.
    Delivered {
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// The sender's signature of the session receipt we proposed in our
    /// end message for `session` (see [`crate::trust::receipts`]). Checked
    /// against the proposal; the signature authenticates it.
    Countersigned {
        /// The session.
        session: SessionId,
        /// Signature over the receipt body.
        #[serde(with = "serde_bytes")]
        signature: [u8; 64],
    },
    /// The sender's signed decision on a KNOCK we left in its mailbox (a
    /// [`SignedDecision`](crate::knock::SignedDecision), encoded). Checked
    /// against the KNOCK we keep; its signature authenticates it.
    Decision(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Errors decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameDecodeError {
    /// Not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl MsgFrame {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FrameDecodeError> {
        codec::decode(bytes, MAX_ENVELOPE_SIZE + 64)
            .map_err(|e| FrameDecodeError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        for f in [
            MsgFrame::Envelope(vec![1, 2, 3]),
            MsgFrame::Ack {
                id: MessageId([1; 16]),
            },
            MsgFrame::Nack {
                id: MessageId([2; 16]),
                reason: RejectReason::UnknownSession,
                retry_after_ms: None,
            },
            MsgFrame::Nack {
                id: MessageId([3; 16]),
                reason: RejectReason::RateLimited,
                retry_after_ms: Some(600),
            },
            MsgFrame::Close {
                session: SessionId([4; 16]),
                receipt: None,
            },
            MsgFrame::Close {
                session: SessionId([4; 16]),
                receipt: Some(crate::trust::receipts::Proposal {
                    body: "{}".into(),
                    signature: [7; 64],
                }),
            },
            MsgFrame::Countersigned {
                session: SessionId([5; 16]),
                signature: [6; 64],
            },
            MsgFrame::Decision(vec![8; 40]),
        ] {
            assert_eq!(MsgFrame::from_bytes(&f.to_bytes()).unwrap(), f);
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            let _ = MsgFrame::from_bytes(&bytes);
        }
    }
}
