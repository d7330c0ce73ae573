//! Serving the mailbox protocol on a node's streams.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use agentmesh_node::envelope::{EnvelopeError, SignedEnvelope};
use agentmesh_transports::framing::FramedStream;

use super::{store::MailboxStore, ErrorCode, Request, Response, MAILBOX_PROTOCOL, MAX_FRAME_SIZE};
use crate::metrics::RelayMetrics;

/// Most mailbox requests handled at once; more are refused at the door.
const MAX_CONCURRENT_REQUESTS: usize = 256;
/// How long a peer has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired envelopes are purged.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serves [`MAILBOX_PROTOCOL`] on `control` from `store` until `cancel`,
/// purging expired envelopes every minute; counts every answer, refusal,
/// dropped request and purge in `metrics`.
pub async fn serve(
    store: Arc<MailboxStore>,
    metrics: Arc<RelayMetrics>,
    mut control: libp2p_stream::Control,
    cancel: CancellationToken,
) {
    let mut incoming = match control.accept(MAILBOX_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "mailbox protocol already served");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            biased;
            // Shutdown first.
            _ = cancel.cancelled() => break,
            // Housekeeping before new work.
            _ = sweep.tick() => {
                match store.sweep(now_ms()) {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics.count_expired(n);
                        info!(removed = n, "expired envelopes purged");
                        if let Err(e) = store.flush().await {
                            warn!(error = %e, "flush after sweep failed");
                        }
                    }
                    Err(e) => warn!(error = %e, "mailbox sweep failed"),
                }
            }
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    metrics.count_dropped();
                    warn!(%peer, "mailbox busy; request dropped");
                    continue;
                };
                let store = store.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    handle(&store, &metrics, peer, stream).await;
                    drop(permit);
                });
            }
        }
    }
    debug!("mailbox server stopped");
}

async fn handle(store: &MailboxStore, metrics: &RelayMetrics, peer: PeerId, stream: Stream) {
    // A request's length is checked against the largest request this relay
    // takes before any of it is read; answers may be larger.
    let mut framed = FramedStream::new(stream, store.limits().max_request_bytes());
    let frame = match tokio::time::timeout(REQUEST_TIMEOUT, framed.recv()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "mailbox request unreadable");
            let code = match e {
                agentmesh_transports::framing::FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::Malformed,
            };
            framed.set_max(MAX_FRAME_SIZE);
            metrics.count_refusal(code);
            let _ = send(&mut framed, Response::error(code, e.to_string())).await;
            return;
        }
        Err(_) => {
            debug!(%peer, "mailbox request timed out");
            return;
        }
    };
    framed.set_max(MAX_FRAME_SIZE);
    let response = match Request::from_bytes(&frame) {
        Ok(req) => answer(store, &peer, req).await,
        Err(e) => Response::error(ErrorCode::Malformed, e.to_string()),
    };
    metrics.count_response(&response);
    let _ = send(&mut framed, response).await;
    let _ = framed.close().await;
}

async fn send(framed: &mut FramedStream, response: Response) -> Result<(), String> {
    let bytes = response.to_bytes().map_err(|e| e.to_string())?;
    framed.send(bytes).await.map_err(|e| e.to_string())
}

fn own(peer: &PeerId, claimed: &[u8]) -> Result<(), Response> {
    if claimed == peer.to_bytes().as_slice() {
        Ok(())
    } else {
        Err(Response::error(
            ErrorCode::Forbidden,
            "a peer may only read its own mailbox",
        ))
    }
}

/// Answers one request; changes are on disk before the answer says so.
async fn answer(store: &MailboxStore, peer: &PeerId, req: Request) -> Response {
    let now = now_ms();
    match req {
        Request::Deposit {
            to,
            id,
            expires_ms,
            envelope,
        } => {
            if let Err(r) = signed_by(peer, &to, id, expires_ms, &envelope) {
                return r;
            }
            deposit(store, peer, &to, id, expires_ms, &envelope, now).await
        }
        Request::Senders { recipient, known } => {
            if let Err(r) = own(peer, &recipient) {
                return r;
            }
            let Ok(senders) = known
                .iter()
                .map(|k| PeerId::from_bytes(k))
                .collect::<Result<Vec<_>, _>>()
            else {
                return Response::error(ErrorCode::Malformed, "a named sender is not a PeerId");
            };
            match store.name_senders(peer, &senders) {
                Ok(n) => match store.flush().await {
                    Ok(()) => Response::Named { count: n as u32 },
                    Err(e) => Response::error(ErrorCode::Storage, e.to_string()),
                },
                Err(e) => Response::error(ErrorCode::Storage, e.to_string()),
            }
        }
        Request::Fetch { recipient, max } => {
            if let Err(r) = own(peer, &recipient) {
                return r;
            }
            match store.fetch(peer, max as usize, now) {
                Ok((items, more)) => Response::Mail { items, more },
                Err(e) => Response::error(ErrorCode::Storage, e.to_string()),
            }
        }
        Request::Ack { recipient, ids } => {
            if let Err(r) = own(peer, &recipient) {
                return r;
            }
            let ids: Vec<[u8; 16]> = ids.into_iter().map(|i| i.into_array()).collect();
            match store.ack(peer, &ids) {
                Ok((removed, unknown)) => match store.flush().await {
                    Ok(()) => Response::Acked {
                        removed,
                        unknown: unknown
                            .into_iter()
                            .map(serde_bytes::ByteArray::new)
                            .collect(),
                    },
                    Err(e) => Response::error(ErrorCode::Storage, e.to_string()),
                },
                Err(e) => Response::error(ErrorCode::Storage, e.to_string()),
            }
        }
    }
}

/// Stores a checked deposit; on disk before the answer says so.
async fn deposit(
    store: &MailboxStore,
    peer: &PeerId,
    to: &[u8],
    id: super::EnvelopeId,
    expires_ms: u64,
    envelope: &[u8],
    now: u64,
) -> Response {
    match store.deposit(peer, to, id, expires_ms, envelope, now) {
        Ok(duplicate) => match store.flush().await {
            Ok(()) => {
                debug!(from = %peer, duplicate, "envelope deposited");
                Response::Deposited { duplicate }
            }
            Err(e) => Response::error(ErrorCode::Storage, e.to_string()),
        },
        Err(e) => Response::Error {
            code: e.code(),
            retry_after_ms: match e {
                super::DepositError::RateLimited { retry_after_ms } => Some(retry_after_ms),
                _ => None,
            },
            detail: e.to_string(),
        },
    }
}

/// Whether `envelope` is a signed envelope from `peer` (the connection's
/// key) to `to`, with the deposit's id and expiry: a relay stores only what
/// its sender signed, so the per-sender shares count real senders.
#[allow(clippy::result_large_err)]
fn signed_by(
    peer: &PeerId,
    to: &[u8],
    id: super::EnvelopeId,
    expires_ms: u64,
    envelope: &[u8],
) -> Result<(), Response> {
    let forged = |why: &str| Response::error(ErrorCode::Forged, why.to_string());
    let body = SignedEnvelope::from_bytes(envelope)
        .and_then(|e| e.verify_signature())
        .map_err(|e| match e {
            EnvelopeError::TooLarge => Response::error(ErrorCode::TooLarge, e.to_string()),
            e => forged(&e.to_string()),
        })?;
    if body.from.peer_id().ok().as_ref() != Some(peer) {
        return Err(forged("not signed by the depositing peer"));
    }
    if body.to.peer_id().ok().map(|p| p.to_bytes()).as_deref() != Some(to) {
        return Err(forged("addressed to another recipient"));
    }
    if body.id.0 != id || body.expires_ms != expires_ms {
        return Err(forged("id or expiry differ from the envelope's"));
    }
    Ok(())
}
