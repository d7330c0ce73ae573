//! The `/webrtc-signaling/0.0.1` messages: a protobuf
//! `Message { optional Type type = 1; optional string data = 2; }`, each
//! prefixed with its length as an unsigned varint.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message as _;

/// Longest signalling message accepted (an SDP with many candidates fits
/// in a few KiB).
pub const MAX_SIGNAL_LEN: usize = 64 * 1024;

/// Longest varint length prefix read (enough for [`MAX_SIGNAL_LEN`]).
const MAX_VARINT_BYTES: usize = 3;

/// The wire form (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
struct Wire {
    #[prost(enumeration = "WireType", optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(string, optional, tag = "2")]
    data: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
enum WireType {
    SdpOffer = 0,
    SdpAnswer = 1,
    IceCandidate = 2,
}

/// One signalling message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An SDP offer (`RTCSessionDescription.sdp`).
    Offer(String),
    /// An SDP answer.
    Answer(String),
    /// A trickled ICE candidate (`RTCIceCandidate.toJSON()`); `None` marks
    /// the end of the sender's candidates (empty data or JSON `null`).
    Candidate(Option<String>),
}

/// Errors reading or writing signalling messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The stream failed or ended in the middle of a message.
    #[error("signalling stream: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is not a valid varint or exceeds the limit.
    #[error("signalling message length {0} over the limit or invalid")]
    Length(usize),
    /// The bytes are not a valid protobuf message.
    #[error("malformed signalling message: {0}")]
    Malformed(String),
    /// The message has no type or an unknown one.
    #[error("signalling message of unknown type {0:?}")]
    UnknownType(Option<i32>),
    /// An offer or answer without an SDP.
    #[error("signalling message without data")]
    MissingData,
    /// The stream ended before the message that was expected.
    #[error("signalling stream closed early")]
    Closed,
    /// A valid message at a point of the exchange where it makes no sense.
    #[error("unexpected signalling message: {0}")]
    Unexpected(&'static str),
}

impl Signal {
    /// Decodes one message body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, SignalError> {
        let wire = Wire::decode(body).map_err(|e| SignalError::Malformed(e.to_string()))?;
        let kind = wire
            .r#type
            .and_then(|t| WireType::try_from(t).ok())
            .ok_or(SignalError::UnknownType(wire.r#type))?;
        Ok(match kind {
            WireType::SdpOffer => Signal::Offer(wire.data.ok_or(SignalError::MissingData)?),
            WireType::SdpAnswer => Signal::Answer(wire.data.ok_or(SignalError::MissingData)?),
            WireType::IceCandidate => Signal::Candidate(
                wire.data
                    .filter(|d| !d.is_empty() && d.trim() != "null" && d.trim() != "{}"),
            ),
        })
    }

    /// Encodes the message with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, data) = match self {
            Signal::Offer(s) => (WireType::SdpOffer, Some(s.clone())),
            Signal::Answer(s) => (WireType::SdpAnswer, Some(s.clone())),
            Signal::Candidate(c) => (
                WireType::IceCandidate,
                Some(c.clone().unwrap_or_else(|| "null".into())),
            ),
        };
        Wire {
            r#type: Some(kind as i32),
            data,
        }
        .encode_length_delimited_to_vec()
    }
}

/// Decodes one length-prefixed message from the start of `buf`; returns it
/// and the number of bytes it took.
pub fn decode_frame(buf: &[u8]) -> Result<(Signal, usize), SignalError> {
    let mut len = 0usize;
    let mut i = 0;
    loop {
        let b = *buf.get(i).ok_or(SignalError::Closed)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i >= MAX_VARINT_BYTES {
            return Err(SignalError::Length(len));
        }
    }
    if len > MAX_SIGNAL_LEN {
        return Err(SignalError::Length(len));
    }
    let body = buf.get(i..i + len).ok_or(SignalError::Closed)?;
    Ok((Signal::decode(body)?, i + len))
}

/// Reads one message; `Ok(None)` when the stream ends cleanly before it.
pub async fn read_signal<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Signal>, SignalError> {
    let mut len = 0usize;
    for i in 0..MAX_VARINT_BYTES {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(SignalError::Closed)
            };
        }
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            if len > MAX_SIGNAL_LEN {
                return Err(SignalError::Length(len));
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    SignalError::Closed
                } else {
                    SignalError::Io(e)
                }
            })?;
            return Signal::decode(&body).map(Some);
        }
    }
    Err(SignalError::Length(len))
}

/// Writes one message and flushes.
pub async fn write_signal<W: AsyncWrite + Unpin>(w: &mut W, s: &Signal) -> Result<(), SignalError> {
    w.write_all(&s.encode()).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in [
            Signal::Offer("v=0\r\n".into()),
            Signal::Answer("v=0\r\n".into()),
            Signal::Candidate(Some("{\"candidate\":\"x\"}".into())),
            Signal::Candidate(None),
        ] {
            let bytes = s.encode();
            let (back, used) = decode_frame(&bytes).unwrap();
            assert_eq!(back, s);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn rejects_bad_frames() {
        // Length over the limit.
        assert!(matches!(
            decode_frame(&[0xff, 0xff, 0x7f]),
            Err(SignalError::Length(_))
        ));
        // Varint too long.
        assert!(matches!(
            decode_frame(&[0x80, 0x80, 0x80, 0x01]),
            Err(SignalError::Length(_))
        ));
        // Truncated body.
        assert!(matches!(decode_frame(&[5, 8]), Err(SignalError::Closed)));
        // Not protobuf.
        assert!(matches!(
            decode_frame(&[2, 0xff, 0xff]),
            Err(SignalError::Malformed(_))
        ));
        // Unknown type.
        assert!(matches!(
            decode_frame(&[2, 8, 9]),
            Err(SignalError::UnknownType(Some(9)))
        ));
        // Offer without SDP.
        assert!(matches!(
            decode_frame(&[2, 8, 0]),
            Err(SignalError::MissingData)
        ));
        // Invalid UTF-8 in the string field.
        assert!(matches!(
            decode_frame(&[6, 8, 0, 0x12, 2, 0xc3, 0x28]),
            Err(SignalError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reads_what_it_writes() {
        let mut buf = Vec::new();
        write_signal(&mut buf, &Signal::Offer("sdp".into()))
            .await
            .unwrap();
        let mut r = futures::io::Cursor::new(buf);
        assert_eq!(
            read_signal(&mut r).await.unwrap(),
            Some(Signal::Offer("sdp".into()))
        );
        assert_eq!(read_signal(&mut r).await.unwrap(), None);
    }
}
