//! Serving the mailbox protocol on a node's streams.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use agentmesh_node::crypto::envelope::{EnvelopeError, SignedEnvelope};
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
        Request::Count { recipient } => {
            if let Err(r) = own(peer, &recipient) {
                return r;
            }
            match store.held(peer, now) {
                Ok((envelopes, bytes)) => Response::Held { envelopes, bytes },
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agentmesh_node::{
        api::{ApiInfo, ApiOptions, LocalApi},
        crypto::envelope::{EnvelopeBody, MessageId, SessionId, ENVELOPE_VERSION},
        crypto::keystore::KdfParams,
        Config, Node, Passphrase,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{MailboxLimits, RelayConfig, RelayPlugin};

    const WAIT: Duration = Duration::from_secs(90);

    fn store() -> (tempfile::TempDir, MailboxStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (
            dir,
            MailboxStore::open(&db, MailboxLimits::default()).unwrap(),
        )
    }

    #[tokio::test]
    async fn only_the_recipient_may_count_its_mail() {
        let (_d, s) = store();
        let (alice, bob) = (PeerId::random(), PeerId::random());
        let later = now_ms() + 60_000;
        for i in 0..3u8 {
            s.deposit(&alice, &bob.to_bytes(), [i; 16], later, &[i; 10], now_ms())
                .unwrap();
        }
        let count = |recipient: &PeerId| Request::Count {
            recipient: recipient.to_bytes(),
        };
        assert_eq!(
            answer(&s, &bob, count(&bob)).await,
            Response::Held {
                envelopes: 3,
                bytes: 30
            }
        );
        // Alice deposited them but may not ask about bob's mailbox.
        assert!(matches!(
            answer(&s, &alice, count(&bob)).await,
            Response::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ));
        assert_eq!(
            answer(&s, &alice, count(&alice)).await,
            Response::Held {
                envelopes: 0,
                bytes: 0
            }
        );
        // Counting takes nothing: the mail is still there to fetch.
        assert_eq!(s.fetch(&bob, 10, now_ms()).unwrap().0.len(), 3);
    }

    async fn node(dir: &Path, name: &str, relay: bool, relays: Vec<libp2p::Multiaddr>) -> Node {
        let mut c = Config::local();
        c.kdf = KdfParams::throwaway();
        c.relays = relays;
        let mut b = Node::builder(c)
            .data_dir(dir.join(name))
            .passphrase(Passphrase::new(name));
        if relay {
            b = b.plugin(RelayPlugin::new(RelayConfig::default()));
        }
        let node = b.spawn().await.expect("node starts");
        assert_eq!(node.wait_listening(2, WAIT).await.len(), 2);
        node
    }

    /// An envelope signed by `from` for `to`, as a deposit must be.
    fn envelope(from: &Node, to: &Node, id: u8) -> (MessageId, u64, Vec<u8>) {
        let expires_ms = now_ms() + 600_000;
        let body = EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: MessageId([id; 16]),
            from: from.amid(),
            to: to.amid(),
            session: SessionId([0; 16]),
            seq: 0,
            ts_ms: now_ms(),
            expires_ms,
            olm_type: 1,
            ciphertext: vec![id; 64],
        };
        let bytes = SignedEnvelope::seal(from.identity(), &body)
            .unwrap()
            .to_bytes();
        (body.id, expires_ms, bytes)
    }

    /// `GET path` on the local API of the node in `dir`: the JSON answer.
    async fn api_get(dir: &Path, path: &str) -> serde_json::Value {
        let info = ApiInfo::read(dir).unwrap();
        let url = info.url.unwrap();
        let host = url.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            info.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut resp = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut resp))
            .await
            .expect("an answer in time")
            .unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{resp}");
        serde_json::from_str(body).expect("JSON")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_counts_its_mail_at_a_relay_and_its_api_asks_its_relays() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let relay = node(dir.path(), "relay", true, Vec::new()).await;
        let relay_peer = relay.amid().peer_id().unwrap();
        let relay_addrs = relay.wait_listening(2, WAIT).await;
        // Neither keeps its mailbox here, so nothing drains it.
        let alice = node(dir.path(), "alice", false, Vec::new()).await;
        let bob = node(dir.path(), "bob", false, Vec::new()).await;
        let bob_peer = bob.amid().peer_id().unwrap();
        for n in [&alice, &bob] {
            tokio::time::timeout(WAIT, n.connect(relay_peer, relay_addrs.clone()))
                .await
                .expect("dialled in time")
                .expect("connected");
        }
        let mut sizes = 0;
        for id in 1..=2u8 {
            let (mid, expires_ms, bytes) = envelope(&alice, &bob, id);
            sizes += bytes.len() as u64;
            crate::mailbox::deposit(
                &mut alice.stream_control(),
                relay_peer,
                &bob_peer,
                mid.0,
                expires_ms,
                bytes,
            )
            .await
            .expect("deposited");
        }
        let held = crate::mailbox::count(&mut bob.stream_control(), relay_peer, &bob_peer)
            .await
            .expect("counted");
        assert_eq!(held, (2, sizes));
        // Nothing was taken: a fetch still gets both.
        let (items, _) =
            crate::mailbox::fetch(&mut bob.stream_control(), relay_peer, &bob_peer, 10)
                .await
                .unwrap();
        assert_eq!(items.len(), 2);

        // An agent that keeps its mailbox at the relay asks it through its
        // local API (dialling it if need be), and one relay that is not
        // there gets its error row.
        let relay_addr = relay_addrs[0].to_string();
        let gone =
            "/ip4/127.0.0.1/udp/9/quic-v1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let carol = node(
            dir.path(),
            "carol",
            false,
            vec![relay_addrs[0].clone(), gone.parse().unwrap()],
        )
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !carol
            .status()
            .await
            .net
            .mailbox_relays
            .contains(&relay_addr)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "carol never chose the relay"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let carol_dir = dir.path().join("carol");
        let api = LocalApi::start(
            carol,
            &carol_dir,
            ApiOptions::new(Some("127.0.0.1:0".parse().unwrap())),
        )
        .await
        .unwrap();
        let answer = api_get(&carol_dir, "/v1/mailbox").await;
        let relays = answer["relays"].as_array().expect("a list");
        let ours = relays
            .iter()
            .find(|r| r["relay"] == relay_addr.as_str())
            .unwrap_or_else(|| panic!("the relay in {answer}"));
        assert_eq!(ours["envelopes"], 0, "{answer}");
        assert_eq!(ours["bytes"], 0, "{answer}");
        assert!(ours.get("error").is_none(), "{answer}");
        if let Some(other) = relays.iter().find(|r| r["relay"] == gone) {
            assert!(other["error"].is_string(), "{answer}");
            assert!(other.get("envelopes").is_none(), "{answer}");
        }
        api.stop().await;
    }
}
