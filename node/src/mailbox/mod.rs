//! The mailbox protocol: store-and-forward of sealed envelopes.
//!
//! One request and one answer per stream on [`MAILBOX_PROTOCOL`], each a
//! length-prefixed CBOR frame of at most [`MAX_FRAME_SIZE`] bytes:
//!
//! - `Deposit { to, id, expires_ms, envelope }` from any sender →
//!   `Deposited { duplicate }` once the envelope is on disk. The relay keeps
//!   it until the recipient acknowledges it or it expires (the envelope's own
//!   expiry, capped by the relay's TTL). A second deposit of the same id for
//!   the same recipient is answered `Deposited { duplicate: true }` and not
//!   stored twice.
//! - `Fetch { recipient, max }` → `Mail { items }`, oldest first. Only the
//!   recipient itself may fetch: `recipient` must be the PeerId of the
//!   connection the request came on.
//! - `Ack { recipient, ids }` → `Acked { removed, unknown }` once the removal
//!   is on disk. The recipient acks only what it has durably stored.
//! - `Count { recipient }` → `Held { envelopes, bytes }`: how much unexpired
//!   mail the relay holds for the recipient, without fetching it. Only the
//!   recipient itself may ask, as for a fetch.
//! - `Senders { recipient, known }` → `Named { count }`: the recipient names
//!   the senders it has sessions with. Each sender has a bounded share of a
//!   recipient's mailbox: a named one a larger share, a stranger a few
//!   slots, and strangers together a bounded part, so no sender, nor many
//!   fresh identities, can fill it and lock the others out.
//!
//! A deposit's envelope must be a [`SignedEnvelope`](crate::crypto::envelope::SignedEnvelope)
//! signed by the depositing peer (the PeerId of the connection), addressed
//! to the recipient, with the deposit's id and expiry; anything else is
//! refused as [`ErrorCode::Forged`].
//!
//! Refusals are `Error { code, retry_after_ms, detail }` with a stable
//! [`ErrorCode`]. Envelopes are opaque: the relay sees ciphertext, an id,
//! an expiry, a sender and a recipient, nothing else.
//!
//! This module is the node's side: the wire types and the client that
//! deposits, fetches and acknowledges. The server and its store belong to
//! the relay plugin (`agentmesh-relay`), which depends on these types.

mod client;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

pub use client::{ack, count, deposit, fetch, name_senders, MailboxError};

/// Protocol id of the mailbox.
pub const MAILBOX_PROTOCOL: libp2p::StreamProtocol =
    libp2p::StreamProtocol::new("/agentmesh/mailbox/1");

/// Largest mailbox frame: a fetch answer of up to the configured number of
/// envelopes. Requests larger than the relay's envelope limit are refused.
pub const MAX_FRAME_SIZE: usize = 16 << 20;

/// The DHT provider key under which relays advertise themselves.
pub const RELAY_PROVIDER_KEY: &[u8] = b"/agentmesh/relay/1";

/// An envelope id (the sender's message id).
pub type EnvelopeId = [u8; 16];

/// A request to a relay's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Store `envelope` for `to`.
    Deposit {
        /// The recipient's PeerId, as bytes.
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        /// The envelope's id; the recipient drops duplicates by it.
        #[serde(with = "serde_bytes")]
        id: EnvelopeId,
        /// When the envelope stops being valid, ms since the epoch.
        expires_ms: u64,
        /// The sealed envelope.
        envelope: ByteBuf,
    },
    /// Return up to `max` envelopes held for `recipient`, oldest first.
    Fetch {
        /// The caller's own PeerId, as bytes.
        #[serde(with = "serde_bytes")]
        recipient: Vec<u8>,
        /// Most envelopes wanted.
        max: u32,
    },
    /// Remove envelopes the recipient has stored.
    Ack {
        /// The caller's own PeerId, as bytes.
        #[serde(with = "serde_bytes")]
        recipient: Vec<u8>,
        /// The envelopes to remove.
        ids: Vec<ByteArrayId>,
    },
    /// Name the senders whose mail the recipient wants most, replacing the
    /// list named before.
    Senders {
        /// The caller's own PeerId, as bytes.
        #[serde(with = "serde_bytes")]
        recipient: Vec<u8>,
        /// The senders' PeerIds, as bytes.
        known: Vec<ByteBuf>,
    },
    /// How much mail is held for `recipient` (answered with
    /// [`Response::Held`]); nothing is fetched or changed.
    Count {
        /// The caller's own PeerId, as bytes.
        #[serde(with = "serde_bytes")]
        recipient: Vec<u8>,
    },
}

/// An envelope id on the wire (a CBOR byte string).
pub type ByteArrayId = serde_bytes::ByteArray<16>;

/// An envelope held for a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailItem {
    /// The envelope's id.
    #[serde(with = "serde_bytes")]
    pub id: EnvelopeId,
    /// Who deposited it (PeerId bytes).
    #[serde(with = "serde_bytes")]
    pub from: Vec<u8>,
    /// When it was deposited, ms since the epoch.
    pub deposited_ms: u64,
    /// When it expires, ms since the epoch.
    pub expires_ms: u64,
    /// The sealed envelope.
    pub envelope: ByteBuf,
}

/// A relay's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The envelope is on disk.
    Deposited {
        /// It was already there (same recipient and id).
        duplicate: bool,
    },
    /// The caller's mail, oldest first.
    Mail {
        /// The envelopes.
        items: Vec<MailItem>,
        /// More remain after these.
        more: bool,
    },
    /// The named senders are on disk.
    Named {
        /// How many the relay kept.
        count: u32,
    },
    /// The removals are on disk.
    Acked {
        /// How many envelopes were removed.
        removed: u32,
        /// Ids that were not held (already acked, expired or never there).
        unknown: Vec<ByteArrayId>,
    },
    /// The unexpired mail held for the caller.
    Held {
        /// Envelopes.
        envelopes: u64,
        /// Their size in bytes (the sealed envelopes).
        bytes: u64,
    },
    /// Refused.
    Error {
        /// Why, as a stable code.
        code: ErrorCode,
        /// When to try again, for [`ErrorCode::RateLimited`].
        retry_after_ms: Option<u64>,
        /// Details for humans.
        detail: String,
    },
}

/// Why a relay refused a request. Unknown codes from newer relays decode as
/// [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The recipient already has the most envelopes allowed.
    MailboxFull,
    /// The sender already has its whole share of the recipient's mailbox
    /// waiting.
    SenderQuota,
    /// The relay holds all the bytes it will hold.
    RelayFull,
    /// The envelope is not signed by the depositing peer, or does not
    /// match the deposit (recipient, id, expiry).
    Forged,
    /// The sender deposited too much this minute.
    RateLimited,
    /// The envelope is larger than this relay accepts.
    TooLarge,
    /// The envelope has expired (or expires before it could be stored).
    Expired,
    /// The recipient is not a valid PeerId.
    InvalidRecipient,
    /// Fetch or ack for another peer's mailbox.
    Forbidden,
    /// The request could not be decoded.
    Malformed,
    /// The relay's storage failed; nothing was changed.
    Storage,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::MailboxFull => "mailbox_full",
            ErrorCode::SenderQuota => "sender_quota",
            ErrorCode::RelayFull => "relay_full",
            ErrorCode::Forged => "forged",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Expired => "expired",
            ErrorCode::InvalidRecipient => "invalid_recipient",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Malformed => "malformed",
            ErrorCode::Storage => "storage",
            ErrorCode::Other => "other",
        })
    }
}

impl Request {
    /// Encodes the request.
    pub fn to_bytes(&self) -> Result<Vec<u8>, agentmesh_transports::codec::CodecError> {
        agentmesh_transports::codec::encode(self)
    }

    /// Decodes a request read from the network.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, agentmesh_transports::codec::CodecError> {
        agentmesh_transports::codec::decode(bytes, MAX_FRAME_SIZE)
    }
}

impl Response {
    /// Encodes the answer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, agentmesh_transports::codec::CodecError> {
        agentmesh_transports::codec::encode(self)
    }

    /// Decodes an answer read from the network.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, agentmesh_transports::codec::CodecError> {
        agentmesh_transports::codec::decode(bytes, MAX_FRAME_SIZE)
    }

    /// A refusal with `code` and no retry hint.
    pub fn error(code: ErrorCode, detail: impl Into<String>) -> Self {
        Response::Error {
            code,
            retry_after_ms: None,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_unknown_codes() {
        let r = Request::Deposit {
            to: vec![1, 2, 3],
            id: [7; 16],
            expires_ms: 5,
            envelope: ByteBuf::from(vec![9; 10]),
        };
        assert_eq!(Request::from_bytes(&r.to_bytes().unwrap()).unwrap(), r);
        let a = Response::Acked {
            removed: 1,
            unknown: vec![serde_bytes::ByteArray::new([1; 16])],
        };
        assert_eq!(Response::from_bytes(&a.to_bytes().unwrap()).unwrap(), a);
        #[derive(Serialize)]
        struct Future {
            result: &'static str,
            code: &'static str,
            retry_after_ms: Option<u64>,
            detail: &'static str,
        }
        let bytes = agentmesh_transports::codec::encode(&Future {
            result: "error",
            code: "new_thing",
            retry_after_ms: None,
            detail: "",
        })
        .unwrap();
        assert!(matches!(
            Response::from_bytes(&bytes).unwrap(),
            Response::Error {
                code: ErrorCode::Other,
                ..
            }
        ));
        assert!(Request::from_bytes(&[0xff, 0x00]).is_err());
    }
}
