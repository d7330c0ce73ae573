//! The local API: how applications in any language (and the `agentmesh`
//! command line) use a running node. HTTP/1.1 and JSON on loopback TCP and on
//! the Unix socket in the data directory; a bearer token from `api.json`;
//! requests from web pages or with a foreign `Host` refused. The routes are
//! described in `docs/local-api.md` and, from this code, at
//! `/v1/openapi.json`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    events::Message,
    knock::RejectReason,
    runtime::{Node, SendError},
};

pub mod a2a;
mod dashboard;
mod diagnostics;
mod events;
mod inbox;
mod metrics;
pub mod openapi;
mod routes;
mod standing;
mod timeseries;
mod traffic;

/// File in the data directory that tells clients where the API is.
pub const INFO_FILE: &str = "api.json";
/// File name of the API's Unix socket inside the data directory.
pub const SOCKET_FILE: &str = "agentmesh.sock";
/// Version of the API (the `/v1` routes).
pub const VERSION: u32 = 1;
/// Largest request body, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// Where a running node's API is, as written to `api.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApiInfo {
    /// Base URL on loopback TCP (`http://127.0.0.1:PORT`), when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Base URL of the A2A gateway, when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<String>,
    /// The bearer token every request carries.
    pub token: String,
    /// The Unix socket.
    pub socket: PathBuf,
    /// The node's AMID.
    pub amid: String,
    /// API version.
    pub version: u32,
}

impl ApiInfo {
    /// Reads `api.json` from the data directory `dir`.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let text = std::fs::read(dir.join(INFO_FILE))?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }
}

/// The stable error codes of the API. The JSON form is the snake-case name
/// (`invalid_amid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Missing or wrong token.
    Unauthorized,
    /// The request came from a web page (`Origin` or `Referer`).
    ForbiddenOrigin,
    /// `Host` is not a loopback name.
    BadHost,
    /// Malformed JSON, missing or wrong fields.
    BadRequest,
    /// An AMID that does not parse.
    InvalidAmid,
    /// A message or session id that is not 32 hex digits.
    InvalidId,
    /// The body is larger than [`MAX_BODY`].
    PayloadTooLarge,
    /// No such route, card or message.
    NotFound,
    /// The route does not take this method.
    MethodNotAllowed,
    /// The recipient refused.
    Rejected,
    /// The payload is too large for a message or not encodable.
    InvalidPayload,
    /// The AMID holds no usable key.
    InvalidRecipient,
    /// No session to reply in, end or close.
    NoSession,
    /// Not delivered (nor deposited) in time.
    DeliveryTimeout,
    /// Written, but not acknowledged in time.
    NotAcknowledged,
    /// A request's reply did not come in time.
    ReplyTimeout,
    /// No path, and no relay took the envelope.
    Unreachable,
    /// Too many recent failures with this peer.
    CircuitOpen,
    /// Too many requests waiting for replies.
    Busy,
    /// The owner's kill switch is on.
    Killed,
    /// The node is stopping.
    Stopped,
    /// The node's own storage failed.
    Storage,
    /// Anything else.
    Internal,
    /// A card that does not verify: malformed, forged, or not a card.
    InvalidCard,
    /// A card whose signed expiry has passed.
    CardExpired,
    /// A petname that is not valid (or could be read as an AMID).
    InvalidName,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 26] = [
        Self::Unauthorized,
        Self::ForbiddenOrigin,
        Self::BadHost,
        Self::BadRequest,
        Self::InvalidAmid,
        Self::InvalidId,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Rejected,
        Self::InvalidPayload,
        Self::InvalidRecipient,
        Self::NoSession,
        Self::DeliveryTimeout,
        Self::NotAcknowledged,
        Self::ReplyTimeout,
        Self::Unreachable,
        Self::CircuitOpen,
        Self::Busy,
        Self::Killed,
        Self::Stopped,
        Self::Storage,
        Self::Internal,
        Self::InvalidCard,
        Self::CardExpired,
        Self::InvalidName,
    ];

    /// The HTTP status the code is sent with.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest
            | Self::InvalidAmid
            | Self::InvalidId
            | Self::InvalidPayload
            | Self::InvalidRecipient
            | Self::InvalidCard
            | Self::CardExpired
            | Self::InvalidName => 400,
            Self::Unauthorized => 401,
            Self::ForbiddenOrigin | Self::BadHost | Self::Rejected => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::NoSession => 409,
            Self::PayloadTooLarge => 413,
            Self::Storage | Self::Internal => 500,
            Self::Unreachable => 502,
            Self::CircuitOpen | Self::Busy | Self::Killed | Self::Stopped => 503,
            Self::DeliveryTimeout | Self::NotAcknowledged | Self::ReplyTimeout => 504,
        }
    }

    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::BadHost => "bad_host",
            Self::BadRequest => "bad_request",
            Self::InvalidAmid => "invalid_amid",
            Self::InvalidId => "invalid_id",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Rejected => "rejected",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidRecipient => "invalid_recipient",
            Self::NoSession => "no_session",
            Self::DeliveryTimeout => "delivery_timeout",
            Self::NotAcknowledged => "not_acknowledged",
            Self::ReplyTimeout => "reply_timeout",
            Self::Unreachable => "unreachable",
            Self::CircuitOpen => "circuit_open",
            Self::Busy => "busy",
            Self::Killed => "killed",
            Self::Stopped => "stopped",
            Self::Storage => "storage",
            Self::Internal => "internal",
            Self::InvalidCard => "invalid_card",
            Self::CardExpired => "card_expired",
            Self::InvalidName => "invalid_name",
        }
    }
}

/// An error as the API sends it: `{"error": {code, message, reason?,
/// retry_after_ms?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// Why the recipient refused, for [`ErrorCode::Rejected`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// The wait before trying again, for [`ErrorCode::CircuitOpen`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
            retry_after_ms: None,
        }
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let code = match &e {
            SendError::Rejected(_) => ErrorCode::Rejected,
            SendError::NotFound(_) => ErrorCode::NotFound,
            SendError::DeliveryTimeout => ErrorCode::DeliveryTimeout,
            SendError::NotAcknowledged => ErrorCode::NotAcknowledged,
            SendError::InvalidRecipient => ErrorCode::InvalidRecipient,
            SendError::Busy => ErrorCode::Busy,
            SendError::Storage(_) => ErrorCode::Storage,
            SendError::InvalidPayload(_) => ErrorCode::InvalidPayload,
            SendError::Stopped => ErrorCode::Stopped,
            SendError::Killed => ErrorCode::Killed,
            SendError::CircuitOpen { .. } => ErrorCode::CircuitOpen,
            SendError::Mailbox(_) => ErrorCode::Unreachable,
            SendError::SessionEnded { .. } => ErrorCode::NoSession,
            SendError::Timeout { .. } => ErrorCode::ReplyTimeout,
        };
        let mut err = Self::new(code, e.to_string());
        match e {
            SendError::Rejected(reason) => err.reason = Some(reason),
            SendError::CircuitOpen { retry_after_ms } => err.retry_after_ms = Some(retry_after_ms),
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            warn!(code = self.code.as_str(), error = %self.message, "local API request failed");
        } else {
            debug!(code = self.code.as_str(), error = %self.message, "local API request refused");
        }
        (status, Json(json!({ "error": self }))).into_response()
    }
}

/// What the handlers share.
#[derive(Debug)]
struct Ctx {
    node: Node,
    inbox: inbox::LeasedInbox,
    events: Arc<events::EventLog>,
    token_hash: [u8; 32],
    /// Cancelled when the API stops: long polls and event streams end.
    cancel: CancellationToken,
    /// The A2A gateway's base URL, once it listens.
    a2a_url: std::sync::OnceLock<String>,
    /// The API's base URL on TCP, once it listens.
    url: std::sync::OnceLock<String>,
    /// Dashboard logins.
    dashboard: dashboard::Logins,
    /// Counters for `/metrics`.
    metrics: metrics::Counters,
    /// Messages each way per peer, for `/v1/peers`.
    traffic: traffic::Traffic,
    /// The last hour, minute by minute, for the dashboard's plots.
    timeseries: std::sync::Mutex<timeseries::Timeseries>,
    /// This agent's standing with its registry, as last looked up.
    standing: std::sync::Mutex<standing::StandingCache>,
    /// The node's data directory.
    dir: PathBuf,
    /// Held while the doctor probes the data directory.
    doctor: tokio::sync::Mutex<()>,
    /// Our clock against the senders' of received messages.
    clock_skew: diagnostics::ClockSkew,
}

/// What the local API serves, and where.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ApiOptions {
    /// Loopback TCP address of the API (port 0: any free port); `None`: on
    /// the Unix socket only.
    pub listen: Option<SocketAddr>,
    /// Loopback TCP address of the A2A gateway; `None`: no gateway.
    pub a2a_listen: Option<SocketAddr>,
    /// The A2A server that A2A requests arriving over the mesh are handed
    /// to; `None`: they go to the inbox like any request.
    pub a2a_upstream: Option<url::Url>,
}

impl ApiOptions {
    /// The API on `listen`, no gateway.
    pub fn new(listen: Option<SocketAddr>) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }
}

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiStartError {
    /// The node's inbox was already taken by someone else.
    #[error("the node's inbox is already taken")]
    InboxTaken,
    /// A listener or `api.json` could not be made.
    #[error("local API: {0}")]
    Io(#[from] std::io::Error),
    /// The API and the gateway listen on loopback only.
    #[error("the local API listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
}

/// A running local API. Dropping it does not stop it; call
/// [`LocalApi::stop`].
#[derive(Debug)]
pub struct LocalApi {
    info: ApiInfo,
    dir: PathBuf,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    hex::encode(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl LocalApi {
    /// Starts the API of `node` with data directory `dir`: on the Unix socket
    /// there, on loopback TCP and with the A2A gateway as `options` say.
    /// Takes the node's inbox; writes `api.json` last, so a client that sees
    /// it can connect.
    pub async fn start(node: Node, dir: &Path, options: ApiOptions) -> Result<Self, ApiStartError> {
        for addr in [options.listen, options.a2a_listen].into_iter().flatten() {
            if !addr.ip().is_loopback() {
                return Err(ApiStartError::NotLoopback(addr));
            }
        }
        let tcp = options.listen;
        // Subscribed before anything happens, so no event is missed.
        let mut node_events = node.events();
        let mut messages = node.messages().ok_or(ApiStartError::InboxTaken)?;
        let token = random_token();
        let cancel = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            node: node.clone(),
            inbox: inbox::LeasedInbox::new(inbox::MAX_HELD, inbox::MAX_HELD_BYTES),
            events: Arc::new(events::EventLog::open(events::KEPT, dir)),
            token_hash: Sha256::digest(token.as_bytes()).into(),
            cancel: cancel.clone(),
            a2a_url: std::sync::OnceLock::new(),
            url: std::sync::OnceLock::new(),
            dashboard: dashboard::Logins::default(),
            metrics: metrics::Counters::default(),
            traffic: traffic::Traffic::default(),
            timeseries: Default::default(),
            standing: Default::default(),
            dir: dir.to_path_buf(),
            doctor: tokio::sync::Mutex::new(()),
            clock_skew: Default::default(),
        });
        let mut tasks = Vec::new();

        // Node events into the log.
        {
            let ctx = ctx.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let e = tokio::select! {
                        _ = cancel.cancelled() => break,
                        e = node_events.recv() => e,
                    };
                    let now = agentmesh_dht::now_ms();
                    match e {
                        Ok(e) => {
                            ctx.metrics.count(&e);
                            ctx.traffic.count(&e);
                            ctx.timeseries
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .handle_event(now, &e);
                            let v = serde_json::to_value(&e).unwrap_or_else(
                                |err| json!({"event": "unencodable", "error": err.to_string()}),
                            );
                            ctx.events.push(now, v);
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            ctx.events
                                .push(now, json!({"event": "dropped", "count": n}));
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }));
        }
        // Messages from the node's durable inbox into the leased inbox (A2A
        // requests to the upstream A2A server, when there is one).
        {
            let ctx = ctx.clone();
            let upstream = options.a2a_upstream.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = ctx.inbox.wait_room() => {}
                    }
                    let next = tokio::select! {
                        _ = cancel.cancelled() => break,
                        m = messages.recv_unacked() => m,
                    };
                    let Some((message, key)) = next else { break };
                    ctx.clock_skew
                        .handle_message(agentmesh_dht::now_ms(), &message);
                    match &upstream {
                        Some(up) if a2a::is_a2a_request(&message) => {
                            tokio::spawn(a2a::serve_upstream(
                                ctx.clone(),
                                up.clone(),
                                message,
                                key,
                            ));
                        }
                        _ => ctx.inbox.push(message, key),
                    }
                }
            }));
        }

        let app = routes::router(ctx.clone());
        let socket = dir.join(SOCKET_FILE);
        let _ = std::fs::remove_file(&socket);
        let unix = tokio::net::UnixListener::bind(&socket)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        }
        {
            let app = app.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(unix, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
                {
                    warn!(error = %e, "local API on the Unix socket stopped");
                }
            }));
        }
        let url = match tcp {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                let cancel = cancel.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(cancel.cancelled_owned())
                        .await
                    {
                        warn!(error = %e, "local API on TCP stopped");
                    }
                }));
                let url = format!("http://{local}");
                let _ = ctx.url.set(url.clone());
                Some(url)
            }
            None => None,
        };
        let a2a_url = match options.a2a_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await?;
                let base = format!("http://{}", listener.local_addr()?);
                let _ = ctx.a2a_url.set(base.clone());
                let app = a2a::router(ctx.clone());
                let cancel = cancel.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(cancel.cancelled_owned())
                        .await
                    {
                        warn!(error = %e, "A2A gateway stopped");
                    }
                }));
                Some(base)
            }
            None => None,
        };
        let info = ApiInfo {
            url,
            a2a: a2a_url,
            token,
            socket,
            amid: node.amid().to_string(),
            version: VERSION,
        };
        write_private(
            &dir.join(INFO_FILE),
            &serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?,
        )?;
        Ok(Self {
            info,
            dir: dir.to_owned(),
            ctx,
            cancel,
            tasks,
        })
    }

    /// Where the API is.
    pub fn info(&self) -> &ApiInfo {
        &self.info
    }

    /// Every message received while the node runs, as it reaches the API's
    /// inbox (to print them; this is not a reader and acknowledges
    /// nothing). Messages kept from before a restart and handed to readers
    /// again are not announced twice.
    pub fn arrivals(&self) -> broadcast::Receiver<Message> {
        self.ctx.inbox.arrivals()
    }

    /// Stops serving and removes `api.json` and the socket: long polls and
    /// event streams end, open requests finish (for up to ten seconds),
    /// and every handle on the node the API held is dropped. Messages not
    /// acknowledged stay in the node's durable inbox.
    pub async fn stop(self) {
        let _ = std::fs::remove_file(self.dir.join(INFO_FILE));
        self.cancel.cancel();
        for mut task in self.tasks {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                warn!("local API task did not stop in time; aborted");
                task.abort();
            }
        }
        // The next run's event ids continue right after this run's.
        self.ctx.events.close();
        let _ = std::fs::remove_file(&self.info.socket);
    }
}

/// Whether `host` (a `Host` header) names loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((name, port)) if port.is_empty() || port.starts_with(':') => name,
            _ => return false,
        }
    } else {
        host.split(':').next().unwrap_or_default()
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    )
}

/// Refuses web pages, foreign `Host`s and wrong tokens, in that order.
async fn guard(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if !loopback_host(host) {
        return ApiError::new(ErrorCode::BadHost, format!("host {host:?} is not loopback"))
            .into_response();
    }
    // Web pages are refused, except the dashboard's own (same origin).
    let own = format!("http://{host}");
    let foreign_origin = headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.to_str().map_or(true, |o| o != own));
    let foreign_referer = headers.get(header::REFERER).is_some_and(|r| {
        r.to_str()
            .map_or(true, |r| !(r == own || r.starts_with(&format!("{own}/"))))
    });
    if foreign_origin || foreign_referer {
        return ApiError::new(
            ErrorCode::ForbiddenOrigin,
            "requests from other web pages are refused",
        )
        .into_response();
    }
    // The one-time dashboard link needs no token: its code is the secret.
    if req.uri().path() == dashboard::LOGIN_PATH {
        return next.run(req).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    if given != ctx.token_hash && !ctx.dashboard.has_session(&headers) {
        if req.uri().path() == "/" {
            return dashboard::login_needed();
        }
        return ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong token (see api.json in the data directory)",
        )
        .into_response();
    }
    next.run(req).await
}

/// How far past its limit a request body is still read (and discarded)
/// before the refusal, so the client reads the answer and the connection
/// stays usable; a larger one is refused at once and the connection closed.
const DRAIN_PAST_LIMIT: usize = 16 * 1024 * 1024;

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// Larger than the limit.
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// The client's body ended badly.
    #[error("reading the body: {0}")]
    Read(String),
}

/// Reads the whole body of `req` (at most `limit` bytes) and puts it back
/// as a buffered body. Every request is read to its end this way before
/// its route runs, also by routes that take no body: a body left unread
/// (a `{}` sent with `POST /v1/kill/clear`, say) would end the keep-alive
/// connection, and the client's next request on it would fail.
async fn buffer_body(req: Request, limit: usize) -> Result<Request, BodyError> {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_PAST_LIMIT)) {
        return Err(BodyError::TooLarge(limit));
    }
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > limit.saturating_add(DRAIN_PAST_LIMIT) {
            return Err(BodyError::TooLarge(limit));
        }
        if seen <= limit {
            kept.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(kept)))
}

/// The local API's [`buffer_body`], with its errors.
async fn read_body(req: Request, next: Next) -> Response {
    match buffer_body(req, MAX_BODY).await {
        Ok(req) => next.run(req).await,
        Err(e @ BodyError::TooLarge(_)) => {
            ApiError::new(ErrorCode::PayloadTooLarge, e.to_string()).into_response()
        }
        Err(e) => ApiError::new(ErrorCode::BadRequest, e.to_string()).into_response(),
    }
}

/// How long [`LocalApi::stop`] waits for open requests.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:4",
            "[::1]:9",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "127.0.0.1.evil.example:80",
            "[::1]x",
            "10.0.0.1",
            "localhost.evil",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn every_code_has_its_name_and_an_error_status() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            assert!(code.status() >= 400);
        }
    }

    #[test]
    fn send_errors_map_to_their_codes() {
        let e: ApiError = SendError::Rejected(RejectReason::Blocked).into();
        assert_eq!(e.code, ErrorCode::Rejected);
        assert_eq!(e.reason, Some(RejectReason::Blocked));
        let e: ApiError = SendError::CircuitOpen { retry_after_ms: 7 }.into();
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::CircuitOpen, Some(7))
        );
        let e: ApiError = SendError::Timeout { timeout_ms: 1 }.into();
        assert_eq!(e.code, ErrorCode::ReplyTimeout);
    }
}
