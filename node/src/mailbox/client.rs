//! Asking a relay's mailbox.

use std::time::Duration;

use libp2p::PeerId;
use serde_bytes::ByteBuf;

use agentmesh_transports::framing::FramedStream;

use super::{EnvelopeId, ErrorCode, MailItem, Request, Response, MAILBOX_PROTOCOL, MAX_FRAME_SIZE};

/// How long one mailbox request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a mailbox request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// No stream to the relay (not connected, or it is not a relay).
    #[error("cannot reach the relay's mailbox: {0}")]
    Unreachable(String),
    /// The stream failed mid-request.
    #[error("mailbox stream: {0}")]
    Io(String),
    /// The relay did not answer in time.
    #[error("mailbox request timed out")]
    Timeout,
    /// The relay refused.
    #[error("relay refused ({code}): {detail}")]
    Refused {
        /// Why.
        code: ErrorCode,
        /// When to try again, if rate limited.
        retry_after_ms: Option<u64>,
        /// Details.
        detail: String,
    },
    /// The relay broke the protocol (undecodable or unexpected answer).
    #[error("relay broke the mailbox protocol: {0}")]
    Protocol(String),
}

async fn request(
    control: &mut libp2p_stream::Control,
    relay: PeerId,
    req: &Request,
) -> Result<Response, MailboxError> {
    let bytes = req
        .to_bytes()
        .map_err(|e| MailboxError::Protocol(e.to_string()))?;
    let exchange = async {
        let stream = control
            .open_stream(relay, MAILBOX_PROTOCOL)
            .await
            .map_err(|e| MailboxError::Unreachable(e.to_string()))?;
        let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
        framed
            .send(bytes)
            .await
            .map_err(|e| MailboxError::Io(e.to_string()))?;
        let answer = framed
            .recv()
            .await
            .map_err(|e| MailboxError::Io(e.to_string()))?
            .ok_or_else(|| MailboxError::Io("relay closed the stream".into()))?;
        let _ = framed.close().await;
        Response::from_bytes(&answer).map_err(|e| MailboxError::Protocol(e.to_string()))
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(Response::Error {
            code,
            retry_after_ms,
            detail,
        })) => Err(MailboxError::Refused {
            code,
            retry_after_ms,
            detail,
        }),
        Ok(r) => r,
        Err(_) => Err(MailboxError::Timeout),
    }
}

fn unexpected(r: Response) -> MailboxError {
    MailboxError::Protocol(format!("unexpected answer {r:?}"))
}

/// Deposits `envelope` for `to` at `relay`. Returns whether the relay
/// already held it. When this returns `Ok`, the envelope is on the relay's
/// disk.
pub async fn deposit(
    control: &mut libp2p_stream::Control,
    relay: PeerId,
    to: &PeerId,
    id: EnvelopeId,
    expires_ms: u64,
    envelope: Vec<u8>,
) -> Result<bool, MailboxError> {
    let req = Request::Deposit {
        to: to.to_bytes(),
        id,
        expires_ms,
        envelope: ByteBuf::from(envelope),
    };
    match request(control, relay, &req).await? {
        Response::Deposited { duplicate } => Ok(duplicate),
        r => Err(unexpected(r)),
    }
}

/// Fetches up to `max` of `me`'s envelopes from `relay`, oldest first, and
/// whether more remain.
pub async fn fetch(
    control: &mut libp2p_stream::Control,
    relay: PeerId,
    me: &PeerId,
    max: u32,
) -> Result<(Vec<MailItem>, bool), MailboxError> {
    let req = Request::Fetch {
        recipient: me.to_bytes(),
        max,
    };
    match request(control, relay, &req).await? {
        Response::Mail { items, more } => Ok((items, more)),
        r => Err(unexpected(r)),
    }
}

/// Acknowledges (removes) `ids` from `me`'s mailbox at `relay`. Returns how
/// many were removed and the ids the relay did not hold.
pub async fn ack(
    control: &mut libp2p_stream::Control,
    relay: PeerId,
    me: &PeerId,
    ids: &[EnvelopeId],
) -> Result<(u32, Vec<EnvelopeId>), MailboxError> {
    let req = Request::Ack {
        recipient: me.to_bytes(),
        ids: ids
            .iter()
            .map(|i| serde_bytes::ByteArray::new(*i))
            .collect(),
    };
    match request(control, relay, &req).await? {
        Response::Acked { removed, unknown } => Ok((
            removed,
            unknown.into_iter().map(|i| i.into_array()).collect(),
        )),
        r => Err(unexpected(r)),
    }
}

/// Names the senders whose mail `me` wants most (the peers it has sessions
/// with) at `relay`, replacing the list named before. A named sender gets a
/// larger share of `me`'s mailbox than a stranger, and strangers together
/// cannot crowd it out. Returns how many the relay kept (it keeps at most
/// its own limit).
pub async fn name_senders(
    control: &mut libp2p_stream::Control,
    relay: PeerId,
    me: &PeerId,
    senders: &[PeerId],
) -> Result<u32, MailboxError> {
    let req = Request::Senders {
        recipient: me.to_bytes(),
        known: senders
            .iter()
            .map(|p| ByteBuf::from(p.to_bytes()))
            .collect(),
    };
    match request(control, relay, &req).await? {
        Response::Named { count } => Ok(count),
        r => Err(unexpected(r)),
    }
}

/// How much unexpired mail `relay` holds for `me`: envelopes and their
/// size in bytes. Nothing is fetched or removed.
pub async fn count(
    control: &mut libp2p_stream::Control,
    relay: PeerId,
    me: &PeerId,
) -> Result<(u64, u64), MailboxError> {
    let req = Request::Count {
        recipient: me.to_bytes(),
    };
    match request(control, relay, &req).await? {
        Response::Held { envelopes, bytes } => Ok((envelopes, bytes)),
        r => Err(unexpected(r)),
    }
}
