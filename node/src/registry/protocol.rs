//! `/agentmesh/registry/1`: the registry over libp2p, for agents that reach
//! the bootstrap node but not its HTTP API.
//!
//! One request per stream: the client opens a stream with [`PROTOCOL`],
//! writes one frame (a 4-byte big-endian length, then the CBOR of a
//! [`Request`], at most [`MAX_REQUEST_SIZE`]), and reads one frame back (a
//! [`Response`], at most [`MAX_RESPONSE_SIZE`]); then both sides close the
//! stream. A response carries the same JSON document the HTTP API answers
//! for the same operation, or an error with the same stable code.
//!
//! ```text
//! client ── open /agentmesh/registry/1 ──▶ registry node
//!        ── [len][CBOR Request]        ──▶
//!        ◀── [len][CBOR Response]      ──
//! ```
//!
//! Messages are externally tagged enums (a map of one entry, the variant
//! name to its fields). A request that does not decode, such as an
//! operation this version does not know, is answered with the
//! `invalid_request` code.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::{identity::Amid, knock::policy::Tier, registry::SignedRequest};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/registry/1");
/// Largest encoded request: a signed request body and its envelope.
pub const MAX_REQUEST_SIZE: usize = 64 * 1024;
/// Largest encoded response (a search of 500 agents).
pub const MAX_RESPONSE_SIZE: usize = 4 * 1024 * 1024;

/// What an agent asks the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// An agent's public entry (`GET /v1/registry/lookup`).
    Lookup {
        /// The agent.
        amid: Amid,
    },
    /// An agent's prekey bundle with its signed card, when it uploaded
    /// one (`GET /v1/registry/prekeys/{amid}`).
    Prekeys {
        /// The agent.
        amid: Amid,
    },
    /// Agents by capability (`GET /v1/registry/search`).
    Search {
        /// Capability or category.
        capability: String,
        /// Lowest tier.
        #[serde(default)]
        tier_min: Option<Tier>,
        /// Lowest reputation, 0..1.
        #[serde(default)]
        reputation_min: Option<f64>,
        /// At most this many results.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// An agent's DID document (`GET /v1/registry/did/{amid}`).
    Did {
        /// The agent.
        amid: Amid,
    },
    /// A signed state change: register, status, capabilities, prekeys,
    /// session receipt, revoke, organization and OAuth operations (the
    /// operation is in the signed body). Ratings are filed over HTTP only,
    /// where the client address the anti-gaming rules need is known.
    Signed {
        /// The request.
        request: SignedRequest,
    },
    /// Revocation status of a key (`GET /v1/registry/revocation`).
    Revocation {
        /// The key's AMID.
        amid: Amid,
    },
    /// The certificate revocation list: every revocation, each signed by
    /// the root (`GET /v1/registry/crl`). A registry that does not serve it
    /// answers `invalid_request`; nodes then ask key by key
    /// ([`Request::Revocation`]).
    Crl,
    /// The credentials an agent's KNOCKs show (`GET /v1/registry/credentials`).
    Credentials {
        /// The agent.
        amid: Amid,
    },
    /// The root key (`GET /v1/registry/root`).
    Root,
    /// Signed tree head (`GET /v1/log/head`).
    LogHead {
        /// Tree size; the whole log when absent.
        #[serde(default)]
        size: Option<u64>,
    },
    /// Inclusion proof (`GET /v1/log/proof`): by leaf index or leaf hash.
    LogProof {
        /// Leaf index.
        #[serde(default)]
        index: Option<u64>,
        /// Leaf hash, hex.
        #[serde(default)]
        hash: Option<String>,
        /// Tree size; the whole log when absent.
        #[serde(default)]
        size: Option<u64>,
    },
    /// Consistency proof (`GET /v1/log/consistency`).
    LogConsistency {
        /// Older tree size.
        first: u64,
        /// Newer tree size; the whole log when absent.
        #[serde(default)]
        second: Option<u64>,
    },
    /// An organization and its agents (`GET /v1/org/{domain}`).
    Org {
        /// The organization's domain.
        domain: String,
    },
    /// The published evidence behind an agent's score
    /// (`GET /v1/registry/reputation/evidence`).
    Evidence {
        /// The agent.
        amid: Amid,
    },
    /// Agents by reputation (`GET /v1/registry/reputation/leaderboard`).
    Leaderboard {
        /// At most this many rows; the registry's default when absent.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// The registry's clock: `{"time_ms": <ms since the Unix epoch>}`,
    /// read as the request is answered (`agentmesh doctor` compares it with
    /// ours). A registry that does not serve it answers `invalid_request`.
    Time,
}

/// The registry's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// The JSON document the HTTP API answers.
    Ok {
        /// The document.
        body: serde_json::Value,
    },
    /// A refusal, with the HTTP API's stable code.
    Error {
        /// Stable code, e.g. `unknown_agent`.
        code: String,
        /// Human-readable message.
        message: String,
    },
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream failed or closed early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame is larger than the limit.
    #[error("frame of {len} bytes exceeds {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is not valid CBOR for the message.
    #[error("malformed: {0}")]
    Malformed(#[from] codec::CodecError),
    /// The stream could not be opened.
    #[error("opening a stream to {peer}: {reason}")]
    Open {
        /// The registry node.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

impl Request {
    /// CBOR encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(self)
    }

    /// Decodes a request (at most [`MAX_REQUEST_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_REQUEST_SIZE)
    }
}

impl Response {
    /// CBOR encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(self)
    }

    /// Decodes a response (at most [`MAX_RESPONSE_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_RESPONSE_SIZE)
    }
}

/// Writes one length-prefixed frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
) -> Result<(), ProtocolError> {
    let len = u32::try_from(bytes.len()).map_err(|_| ProtocolError::TooLarge {
        len: bytes.len(),
        max: u32::MAX as usize,
    })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one length-prefixed frame of at most `max` bytes; the length is
/// checked before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Client side: sends `request` to the registry node `peer` on a new stream
/// and reads the answer, within `timeout`.
pub async fn call(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &Request,
    timeout: std::time::Duration,
) -> Result<Response, ProtocolError> {
    let exchange = async {
        let mut stream =
            control
                .open_stream(peer, PROTOCOL)
                .await
                .map_err(|e| ProtocolError::Open {
                    peer,
                    reason: e.to_string(),
                })?;
        write_frame(&mut stream, &request.to_bytes()?).await?;
        let bytes = read_frame(&mut stream, MAX_RESPONSE_SIZE).await?;
        let _ = stream.close().await;
        Ok(Response::from_bytes(&bytes)?)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProtocolError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{identity::Identity, registry::Operation};
    use proptest::prelude::*;

    fn samples() -> Vec<Request> {
        let a = Identity::from_seed(&[1; 32]);
        vec![
            Request::Lookup { amid: a.amid() },
            Request::Search {
                capability: "weather".into(),
                tier_min: Some(Tier::Verified),
                reputation_min: Some(0.5),
                limit: Some(10),
            },
            Request::Signed {
                request: SignedRequest::sign(
                    &a,
                    Operation::Register(crate::registry::Registration::new("a", vec![])),
                    1,
                )
                .unwrap(),
            },
            Request::Root,
            Request::LogProof {
                index: Some(3),
                hash: None,
                size: None,
            },
            Request::Evidence { amid: a.amid() },
            Request::Org {
                domain: "example.com".into(),
            },
            Request::Leaderboard { limit: Some(5) },
            Request::Crl,
            Request::Time,
        ]
    }

    #[test]
    fn fuzz_seeds_decode_to_the_samples() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/seeds/registry_protocol"
        );
        for (i, r) in samples().into_iter().enumerate() {
            if matches!(r, Request::Signed { .. }) {
                continue;
            }
            let bytes = std::fs::read(format!("{dir}/request-{i}.cbor")).unwrap();
            assert_eq!(Request::from_bytes(&bytes).unwrap(), r, "request-{i}");
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for r in samples() {
            assert_eq!(Request::from_bytes(&r.to_bytes().unwrap()).unwrap(), r);
        }
        let ok = Response::Ok {
            body: serde_json::json!({"count": 1, "results": [{"amid": "x", "reputation": 0.5}]}),
        };
        assert_eq!(Response::from_bytes(&ok.to_bytes().unwrap()).unwrap(), ok);
        let err = Response::Error {
            code: "unknown_agent".into(),
            message: "unknown agent".into(),
        };
        assert_eq!(Response::from_bytes(&err.to_bytes().unwrap()).unwrap(), err);
    }

    #[test]
    fn an_unknown_operation_is_a_decode_error() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Future {
            Teleport { x: u32 },
        }
        let bytes = codec::encode(&Future::Teleport { x: 1 }).unwrap();
        assert!(Request::from_bytes(&bytes).is_err());
    }

    #[tokio::test]
    async fn frames_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        assert_eq!(&buf[..4], &5u32.to_be_bytes());
        let mut r = futures::io::Cursor::new(buf.clone());
        assert_eq!(read_frame(&mut r, 5).await.unwrap(), b"hello");
        let mut r = futures::io::Cursor::new(buf.clone());
        assert!(matches!(
            read_frame(&mut r, 4).await,
            Err(ProtocolError::TooLarge { len: 5, max: 4 })
        ));
        let mut r = futures::io::Cursor::new(buf[..6].to_vec());
        assert!(matches!(
            read_frame(&mut r, 5).await,
            Err(ProtocolError::Io(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_random_or_damaged_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<usize>(),
            cut in any::<usize>(),
        ) {
            let _ = Request::from_bytes(&bytes);
            let _ = Response::from_bytes(&bytes);
            for r in samples() {
                let mut enc = r.to_bytes().unwrap();
                let i = flip % enc.len();
                enc[i] ^= 0x5a;
                let _ = Request::from_bytes(&enc);
                let _ = Request::from_bytes(&enc[..cut % enc.len()]);
            }
        }
    }
}
