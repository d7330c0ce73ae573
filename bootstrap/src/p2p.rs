//! The registry over libp2p: serves
//! [`/agentmesh/registry/1`](agentmesh_node::registry::protocol) on the
//! bootstrap node, one request per stream, with the same answers and error
//! codes as the HTTP API (the same typed answers, serialised by
//! [`to_json`]).
//!
//! A request is read first, within [`REQUEST_READ_TIMEOUT`]: at most
//! [`MAX_STREAMS_PER_PEER`] streams of one peer and [`MAX_READING_STREAMS`]
//! in all are read at once (further streams are dropped with a warning,
//! never queued), so peers that open streams and send nothing hold no more
//! than their share, and never the serving slots. Then at most
//! [`MAX_CONCURRENT_STREAMS`] requests are served at once, each within
//! [`STREAM_TIMEOUT`]; a request read when all are taken is answered
//! `busy` at once. Each peer has a token bucket
//! ([`RegistrySettings::p2p_rate`]); a request over it is read and answered
//! with the error `rate_limited` without being served.
//!
//! [`RegistrySettings::p2p_rate`]: crate::registry::RegistrySettings::p2p_rate

use std::{sync::Arc, time::Duration};

use futures::{AsyncWriteExt, StreamExt};
use serde_json::Value;
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::{debug, warn};

use agentmesh_dht::now_ms;
use agentmesh_node::{
    knock::ratelimit::RateLimiter,
    registry::protocol::{read_frame, write_frame, Request, Response, MAX_REQUEST_SIZE, PROTOCOL},
};

use crate::{
    http::to_json,
    metrics::RegistryMetrics,
    registry::{
        parse_leaf_hash, Registry, RegistryError, SearchQuery, DEFAULT_LEADERBOARD_LIMIT,
        DEFAULT_LIMIT,
    },
};

/// Most requests served at once (once read).
pub const MAX_CONCURRENT_STREAMS: usize = 64;
/// Most streams of one peer being read at once.
pub const MAX_STREAMS_PER_PEER: usize = 4;
/// Most streams being read at once, all peers together.
pub const MAX_READING_STREAMS: usize = 1024;
/// Time for a request to arrive once its stream is open.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one request: reading it, answering, writing the answer.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams open per peer; an entry lives as long as the peer has one.
#[derive(Debug, Default)]
struct PerPeer(std::sync::Mutex<std::collections::HashMap<libp2p::PeerId, usize>>);

impl PerPeer {
    /// A slot for one more stream of `peer`, if it has fewer than
    /// [`MAX_STREAMS_PER_PEER`].
    fn try_acquire(self: &Arc<Self>, peer: libp2p::PeerId) -> Option<PeerSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(peer).or_default();
        if *n >= MAX_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            peer,
        })
    }
}

/// One stream's slot in [`PerPeer`], given back when dropped.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<PerPeer>,
    peer: libp2p::PeerId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// The protocol server. Dropping it stops accepting streams.
#[derive(Debug)]
pub struct P2pServer {
    task: JoinHandle<()>,
}

impl Drop for P2pServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// Something else already serves the protocol on this node.
    #[error("{PROTOCOL} is already served on this node")]
    AlreadyServed,
}

impl P2pServer {
    /// Serves `registry` on the streams `control` accepts.
    pub fn spawn(registry: Registry, control: libp2p_stream::Control) -> Result<Self, P2pError> {
        Self::spawn_with_metrics(registry, control, Arc::default())
    }

    /// [`P2pServer::spawn`], counting every request in `metrics`.
    pub fn spawn_with_metrics(
        registry: Registry,
        mut control: libp2p_stream::Control,
        metrics: Arc<RegistryMetrics>,
    ) -> Result<Self, P2pError> {
        let mut incoming = control
            .accept(PROTOCOL)
            .map_err(|_| P2pError::AlreadyServed)?;
        let serving = Arc::new(Semaphore::new(MAX_CONCURRENT_STREAMS));
        let reading = Arc::new(Semaphore::new(MAX_READING_STREAMS));
        let per_peer = Arc::new(PerPeer::default());
        let settings = registry.settings();
        let mut rate = RateLimiter::new(settings.p2p_rate, settings.rate_max_clients);
        let task = tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let Some(slot) = per_peer.try_acquire(peer) else {
                    debug!(%peer, "registry protocol: too many streams from one peer, stream dropped");
                    continue;
                };
                let Ok(read_permit) = reading.clone().try_acquire_owned() else {
                    warn!(%peer, "registry protocol: too many streams being read, stream dropped");
                    continue;
                };
                let refusal = rate.try_acquire(&peer, now_ms()).err().map(|r| {
                    debug!(%peer, retry_after_ms = r.ms, "registry protocol: peer rate limited");
                    RegistryError::RateLimited {
                        retry_after_ms: r.ms,
                    }
                });
                let registry = registry.clone();
                let metrics = metrics.clone();
                let serving = serving.clone();
                tokio::spawn(async move {
                    let reading = (slot, read_permit);
                    let served =
                        serve_stream(&registry, stream, refusal, reading, &serving, &metrics);
                    match tokio::time::timeout(STREAM_TIMEOUT, served).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, error = %e, "registry protocol stream failed"),
                        Err(_) => debug!(%peer, "registry protocol stream timed out"),
                    }
                });
            }
        });
        Ok(Self { task })
    }
}

/// Reads one request within [`REQUEST_READ_TIMEOUT`] (holding the peer's
/// and the global `reading` slots meanwhile) and answers it: with
/// `refusal` if there is one, `busy` if no serving slot is free, else as
/// the HTTP API would.
async fn serve_stream(
    registry: &Registry,
    mut stream: libp2p::Stream,
    refusal: Option<RegistryError>,
    reading: (PeerSlot, tokio::sync::OwnedSemaphorePermit),
    serving: &Arc<Semaphore>,
    metrics: &RegistryMetrics,
) -> Result<(), agentmesh_node::registry::protocol::ProtocolError> {
    let bytes = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_frame(&mut stream, MAX_REQUEST_SIZE),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    drop(reading);
    let request = Request::from_bytes(&bytes);
    let kind = request.as_ref().map_or("malformed", request_kind);
    let response = match (refusal, request) {
        (Some(refusal), _) => error(refusal),
        (None, Ok(request)) => match serving.clone().try_acquire_owned() {
            Ok(_permit) => answer(registry, request, now_ms()).await,
            Err(_) => {
                warn!(target: "agentmesh::registry", "registry protocol: too many requests at once; answered busy");
                error(RegistryError::Busy)
            }
        },
        (None, Err(e)) => error(RegistryError::Invalid(format!("request: {e}"))),
    };
    metrics.observe_p2p(
        kind,
        match &response {
            Response::Error { code, .. } => code,
            _ => "ok",
        },
    );
    write_frame(&mut stream, &response.to_bytes()?).await?;
    stream.close().await?;
    Ok(())
}

/// The metrics label of a request.
fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Lookup { .. } => "lookup",
        Request::Search { .. } => "search",
        Request::Did { .. } => "did",
        Request::Signed { .. } => "signed",
        Request::Revocation { .. } => "revocation",
        Request::Crl => "crl",
        Request::Credentials { .. } => "credentials",
        Request::Root => "root",
        Request::LogHead { .. } => "log_head",
        Request::LogProof { .. } => "log_proof",
        Request::LogConsistency { .. } => "log_consistency",
        Request::Org { .. } => "org",
        Request::Evidence { .. } => "evidence",
        Request::Leaderboard { .. } => "leaderboard",
        Request::Time => "time",
        Request::Prekeys { .. } => "prekeys",
        _ => "other",
    }
}

fn error(e: RegistryError) -> Response {
    let message = match &e {
        RegistryError::Store(_) => "internal error".to_owned(),
        other => other.to_string(),
    };
    Response::Error {
        code: e.code().to_owned(),
        message,
    }
}

/// Answers one request as the HTTP API would.
pub async fn answer(registry: &Registry, request: Request, now_ms: u64) -> Response {
    match dispatch(registry, request, now_ms).await {
        Ok(body) => Response::Ok { body },
        Err(e) => {
            if e.status() >= 500 {
                warn!(target: "agentmesh::registry", error = %e, "registry protocol request failed");
            }
            error(e)
        }
    }
}

async fn dispatch(
    registry: &Registry,
    request: Request,
    now_ms: u64,
) -> Result<Value, RegistryError> {
    match request {
        Request::Lookup { amid } => to_json(&registry.lookup(&amid, now_ms)?),
        Request::Search {
            capability,
            tier_min,
            reputation_min,
            limit,
        } => to_json(&registry.search_results(
            &SearchQuery {
                capability,
                tier_min: tier_min.unwrap_or_default(),
                reputation_min: reputation_min.unwrap_or(0.0),
                limit: limit.map_or(DEFAULT_LIMIT, |l| l as usize),
            },
            now_ms,
        )?),
        Request::Did { amid } => registry.did_document(&amid),
        Request::Signed { request } => {
            let verified = registry.verify_request(&request, None, now_ms)?;
            if verified.op_name() == "feedback" {
                return Err(RegistryError::Forbidden(
                    "ratings are filed over HTTP, where the client address is known".into(),
                ));
            }
            to_json(&registry.apply_verified(verified, None, now_ms).await?)
        }
        Request::Revocation { amid } => to_json(&registry.revocation(&amid)?),
        Request::Crl => to_json(&registry.crl(now_ms)?),
        Request::Credentials { amid } => to_json(&registry.credentials_view(&amid, now_ms)?),
        Request::Root => to_json(&registry.root_info()),
        Request::LogHead { size } => to_json(&registry.log_head(size, now_ms)?),
        Request::LogProof { index, hash, size } => {
            let hash = hash.as_deref().map(parse_leaf_hash).transpose()?;
            to_json(&registry.log_proof(index, hash.as_ref(), size, now_ms)?)
        }
        Request::LogConsistency { first, second } => {
            to_json(&registry.log_consistency(first, second, now_ms)?)
        }
        Request::Org { domain } => to_json(&registry.org_info(&domain)?),
        Request::Evidence { amid } => to_json(&registry.evidence(&amid, now_ms)?),
        Request::Leaderboard { limit } => to_json(&registry.leaderboard(
            limit.map_or(DEFAULT_LEADERBOARD_LIMIT, |l| l as usize),
            now_ms,
        )?),
        Request::Time => Ok(serde_json::json!({ "time_ms": now_ms })),
        Request::Prekeys { amid } => to_json(&registry.prekey_bundle(&amid)?),
        _ => Err(RegistryError::Invalid("unsupported request".into())),
    }
}
