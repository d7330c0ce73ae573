//! What an envelope carries inside its end-to-end encryption: the payload
//! and the metadata of the session types.
//!
//! The Olm plaintext of every envelope is the CBOR of [`Content`]: a
//! [`Kind`] and a body. The kind says how the message is used —
//! a conversation turn, a request, the reply to a request (naming it), the
//! end of a conversation, a stream chunk (with its stream id and index) or
//! the end of a stream (with its chunk count). Correlation and ordering
//! metadata therefore travel encrypted and signed with the payload: a relay
//! or mailbox holding the envelope sees only its outer fields.
//!
//! JSON kinds ([`Kind::carries_json`]) have a JSON body; stream chunks have
//! raw bytes; ends have an empty body.

use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::crypto::envelope::{MessageId, StreamId, MAX_PAYLOAD_SIZE};

/// Largest encoded [`Content`]: a payload of [`MAX_PAYLOAD_SIZE`] plus room
/// for the kind.
pub const MAX_CONTENT_SIZE: usize = MAX_PAYLOAD_SIZE + 256;
/// Largest stream chunk.
pub const MAX_CHUNK_SIZE: usize = MAX_PAYLOAD_SIZE;

/// How a message is used. Unknown kinds from newer peers do not decode:
/// the envelope is refused as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// A message: a turn of a conversation.
    #[default]
    Message,
    /// A request that expects one reply.
    Request,
    /// A reply to the message `to` (a request or a conversation turn).
    Reply {
        /// The message answered.
        to: MessageId,
    },
    /// The sender ends the conversation: the session is over on both sides.
    End,
    /// Chunk `index` (from 0) of stream `stream`.
    Chunk {
        /// The stream.
        stream: StreamId,
        /// Position in the stream.
        index: u64,
    },
    /// Stream `stream` ended cleanly after `chunks` chunks.
    Finish {
        /// The stream.
        stream: StreamId,
        /// Number of chunks sent.
        chunks: u64,
    },
}

impl Kind {
    /// Whether the body is JSON handed to the application as a message.
    pub fn carries_json(&self) -> bool {
        matches!(self, Kind::Message | Kind::Request | Kind::Reply { .. })
    }
}

/// The plaintext of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct Content {
    /// How the message is used.
    pub kind: Kind,
    /// JSON bytes, stream bytes, or empty.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Errors making or reading a [`Content`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Not a valid encoding, or an unknown kind.
    #[error("malformed content: {0}")]
    Malformed(String),
    /// Over [`MAX_CONTENT_SIZE`].
    #[error("content of {0} bytes is too large")]
    TooLarge(usize),
    /// A JSON kind whose body is not JSON.
    #[error("payload is not valid JSON")]
    BadJson,
}

impl Content {
    /// A JSON message of `kind`.
    pub fn json(kind: Kind, payload: &serde_json::Value) -> Result<Self, ContentError> {
        let body = serde_json::to_vec(payload).map_err(|_| ContentError::BadJson)?;
        Ok(Self { kind, body })
    }

    /// Bytes of `kind` (a chunk, or an empty end).
    pub fn bytes(kind: Kind, body: Vec<u8>) -> Self {
        Self { kind, body }
    }

    /// Encodes for encryption.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ContentError> {
        let bytes = codec::encode(self).map_err(|e| ContentError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_CONTENT_SIZE {
            return Err(ContentError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes a decrypted plaintext.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ContentError> {
        codec::decode(bytes, MAX_CONTENT_SIZE).map_err(|e| match e {
            codec::CodecError::TooLarge { .. } => ContentError::TooLarge(bytes.len()),
            e => ContentError::Malformed(e.to_string()),
        })
    }

    /// The JSON payload of a JSON kind; `Null` for the others.
    pub fn payload(&self) -> Result<serde_json::Value, ContentError> {
        if !self.kind.carries_json() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|_| ContentError::BadJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use sha2::Digest;

    fn kinds() -> Vec<Kind> {
        vec![
            Kind::Message,
            Kind::Request,
            Kind::Reply {
                to: MessageId([1; 16]),
            },
            Kind::End,
            Kind::Chunk {
                stream: StreamId([2; 16]),
                index: 7,
            },
            Kind::Finish {
                stream: StreamId([2; 16]),
                chunks: 8,
            },
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        for kind in kinds() {
            let c = Content::json(kind, &json!({"a": 1})).unwrap();
            assert_eq!(Content::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);
        }
        let c = Content::json(Kind::Request, &json!([1, 2])).unwrap();
        assert_eq!(c.payload().unwrap(), json!([1, 2]));
        let chunk = Content::bytes(kinds()[4], vec![0xff; 3]);
        assert_eq!(chunk.payload().unwrap(), serde_json::Value::Null);
        let bad = Content::bytes(Kind::Message, vec![0xff]);
        assert_eq!(bad.payload().unwrap_err(), ContentError::BadJson);
    }

    #[test]
    fn unknown_kind_is_malformed() {
        #[derive(Serialize)]
        struct Other {
            kind: &'static str,
            #[serde(with = "serde_bytes")]
            body: Vec<u8>,
        }
        let bytes = codec::encode(&Other {
            kind: "telepathy",
            body: vec![],
        })
        .unwrap();
        assert!(matches!(
            Content::from_bytes(&bytes),
            Err(ContentError::Malformed(_))
        ));
    }

    #[test]
    fn limits() {
        let big = Content::bytes(Kind::Message, vec![b'1'; MAX_CONTENT_SIZE]);
        assert!(matches!(big.to_bytes(), Err(ContentError::TooLarge(_))));
        let max = Content::bytes(kinds()[4], vec![9; MAX_CHUNK_SIZE]);
        assert!(max.to_bytes().is_ok());
    }

    #[test]
    fn snapshot() {
        let c = Content::json(
            Kind::Reply {
                to: MessageId([1; 16]),
            },
            &json!({"ok": true}),
        )
        .unwrap();
        let bytes = c.to_bytes().unwrap();
        assert_eq!(bytes.len(), 51);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            "f98b1835173355087cc7a5bcd1bc75d562adfd0eb2467c53e54e7368f1396b97"
        );
    }

    #[test]
    fn fuzz_seeds_decode() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/content");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let c = Content::from_bytes(&bytes).unwrap();
            assert!(c.payload().is_ok());
            n += 1;
        }
        assert_eq!(n, 3);
    }

    proptest! {
        #[test]
        fn encode_decode(body: Vec<u8>, index: u64) {
            let c = Content::bytes(Kind::Chunk { stream: StreamId([3; 16]), index }, body);
            let bytes = c.to_bytes().unwrap();
            prop_assert_eq!(Content::from_bytes(&bytes).unwrap(), c);
        }

        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            if let Ok(c) = Content::from_bytes(&bytes) {
                let _ = c.payload();
            }
        }
    }
}
