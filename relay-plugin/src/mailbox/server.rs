//! Serving the mailbox protocol on a node's streams.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use agentmesh_transports::framing::FramedStream;

use super::{store::MailboxStore, ErrorCode, Request, Response, MAILBOX_PROTOCOL, MAX_FRAME_SIZE};

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
/// purging expired envelopes every minute.
pub async fn serve(
    store: Arc<MailboxStore>,
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
                    warn!(%peer, "mailbox busy; request dropped");
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    handle(&store, peer, stream).await;
                    drop(permit);
                });
            }
        }
    }
    debug!("mailbox server stopped");
}

async fn handle(store: &MailboxStore, peer: PeerId, stream: Stream) {
    let mut framed = FramedStream::new(stream, MAX_FRAME_SIZE);
    let frame = match tokio::time::timeout(REQUEST_TIMEOUT, framed.recv()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "mailbox request unreadable");
            let _ = send(
                &mut framed,
                Response::error(ErrorCode::Malformed, e.to_string()),
            )
            .await;
            return;
        }
        Err(_) => {
            debug!(%peer, "mailbox request timed out");
            return;
        }
    };
    let response = match Request::from_bytes(&frame) {
        Ok(req) => answer(store, &peer, req).await,
        Err(e) => Response::error(ErrorCode::Malformed, e.to_string()),
    };
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
        } => match store.deposit(peer, &to, id, expires_ms, &envelope, now) {
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
        },
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
