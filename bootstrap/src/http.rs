//! The registry's HTTP API (axum) under `/v1`. JSON in and out; every
//! error is `{"error": {"code": "...", "message": "..."}}` with a stable
//! code (see [`RegistryError::code`]). The OpenAPI document is served at
//! `/v1/openapi.json`.
//!
//! Every state change is a POST of a [`SignedRequest`] to the endpoint of
//! its operation; one extractor reads it (size limit, JSON, client
//! address) and [`Registry::apply`] checks signature, timestamp window,
//! operation and replay. Answers are the registry's typed answers,
//! serialised through [`serde_json::Value`]: its maps keep their keys
//! sorted, the order clients have always seen.
//!
//! Every request but `/v1/health` takes a token from its client address's
//! bucket ([`RegistrySettings::http_rate`]), and a prekey fetch (which
//! hands out no one-time key, see [`Registry::prekey_bundle`]) one more
//! from a tighter bucket ([`RegistrySettings::prekey_rate`]): an empty
//! bucket is answered `429 rate_limited` with `Retry-After` (seconds)
//! before the request does anything. At most
//! [`RegistrySettings::http_max_in_flight`] requests are served at once;
//! others are answered `503 busy` at once, not queued.
//!
//! Every answer, refusals included, is counted in a [`RegistryMetrics`]
//! (by route template and status, with its latency), which the operator's
//! page and `/metrics` read ([`crate::operator`]).
//!
//! [`RegistrySettings::http_rate`]: crate::registry::RegistrySettings::http_rate
//! [`RegistrySettings::prekey_rate`]: crate::registry::RegistrySettings::prekey_rate
//! [`RegistrySettings::http_max_in_flight`]: crate::registry::RegistrySettings::http_max_in_flight

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{
        rejection::QueryRejection, ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts,
        MatchedPath, Path, Query, Request, State,
    },
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{oneshot, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, warn};

use agentmesh_dht::now_ms;
use agentmesh_node::{
    knock::ratelimit::{RateLimiter, RetryAfter},
    registry::SignedRequest,
    Amid, Tier,
};

use crate::metrics::{Refusal, RegistryMetrics};
use crate::registry::{
    parse_leaf_hash, parse_tier, LogQueryError, Registry, RegistryError, SearchError, SearchQuery,
    StoreError, TakePrekeysError, DEFAULT_LEADERBOARD_LIMIT, DEFAULT_LIMIT,
};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Longest `Retry-After` sent, in seconds (a limit that never refills
/// says this).
pub const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError(pub RegistryError);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        Self(e)
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        Self(e.into())
    }
}

impl From<LogQueryError> for ApiError {
    fn from(e: LogQueryError) -> Self {
        Self(e.into())
    }
}

impl From<TakePrekeysError> for ApiError {
    fn from(e: TakePrekeysError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            warn!(target: "agentmesh::registry", error = %self.0, "request failed");
        } else {
            debug!(target: "agentmesh::registry", code = self.0.code(), error = %self.0, "request refused");
        }
        let message = match &self.0 {
            RegistryError::Store(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut response = error_response(status, self.0.code(), &message);
        if let RegistryError::RateLimited { retry_after_ms } = self.0 {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after_ms)),
            );
        }
        response
    }
}

/// `Retry-After` seconds for a wait of `ms`: rounded up, at least 1, at
/// most [`MAX_RETRY_AFTER_SECS`].
fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).clamp(1, MAX_RETRY_AFTER_SECS)
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

type ApiResult = Result<Json<Value>, ApiError>;

/// `answer` as the API's JSON document (keys sorted, see the module
/// documentation).
pub fn to_json<T: Serialize>(answer: &T) -> Result<Value, RegistryError> {
    serde_json::to_value(answer).map_err(|e| {
        RegistryError::Store(StoreError::Corrupt {
            tree: "encode",
            message: e.to_string(),
        })
    })
}

/// An answer, or the error it became.
fn reply<T: Serialize, E: Into<ApiError>>(answer: Result<T, E>) -> ApiResult {
    Ok(Json(to_json(&answer.map_err(Into::into)?)?))
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    limits: Limits,
    metrics: Arc<RegistryMetrics>,
}

/// The HTTP front end's limits: a token bucket per client address for
/// every request, one for prekey fetches, and a cap on requests in flight.
#[derive(Clone)]
struct Limits {
    requests: Arc<Mutex<RateLimiter<IpAddr>>>,
    prekeys: Arc<Mutex<RateLimiter<IpAddr>>>,
    in_flight: Arc<Semaphore>,
}

impl Limits {
    fn new(registry: &Registry) -> Self {
        let s = registry.settings();
        Self {
            requests: Arc::new(Mutex::new(RateLimiter::new(
                s.http_rate,
                s.rate_max_clients,
            ))),
            prekeys: Arc::new(Mutex::new(RateLimiter::new(
                s.prekey_rate,
                s.rate_max_clients,
            ))),
            in_flight: Arc::new(Semaphore::new(s.http_max_in_flight)),
        }
    }
}

/// Takes a token from `client`'s bucket in `limiter`. A poisoned limiter
/// (a thread panicked while holding it, so its buckets may be half
/// updated) lets nothing through: `503 busy`, not a guess.
fn acquire(limiter: &Mutex<RateLimiter<IpAddr>>, client: IpAddr) -> Result<(), ApiError> {
    let Ok(mut limiter) = limiter.lock() else {
        warn!(target: "agentmesh::registry", "a rate limiter's lock is poisoned; request refused");
        return Err(ApiError(RegistryError::Busy));
    };
    limiter
        .try_acquire(&client, now_ms())
        .map_err(|r: RetryAfter| {
            ApiError(RegistryError::RateLimited {
                retry_after_ms: r.ms,
            })
        })
}

/// The limits, before any route: in flight (else `503 busy`), then the
/// client's request bucket and, for a prekey fetch, its prekey bucket
/// (else `429 rate_limited`). `/v1/health` is not rate limited.
async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Ok(_permit) = state.limits.in_flight.clone().try_acquire_owned() else {
        state.metrics.refused(Refusal::Busy);
        warn!(target: "agentmesh::registry", "too many requests in flight; request refused");
        return ApiError(RegistryError::Busy).into_response();
    };
    let path = req.uri().path();
    if path != "/v1/health" {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |c| c.0);
        let client = client_ip(&state, peer, req.headers());
        let prekey_fetch = req.method() == Method::GET && path.starts_with("/v1/registry/prekeys/");
        let allowed = acquire(&state.limits.requests, client)
            .map_err(|e| (e, Refusal::RateLimited))
            .and_then(|()| {
                if prekey_fetch {
                    acquire(&state.limits.prekeys, client)
                        .map_err(|e| (e, Refusal::PrekeyRateLimited))
                } else {
                    Ok(())
                }
            });
        if let Err((e, why)) = allowed {
            state.metrics.refused(why);
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Counts every answer in the metrics: its route template (none when no
/// route matched), status and latency.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    state.metrics.observe(
        route.as_deref(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The API's routes over `registry`, with the limits of its settings.
pub fn router(registry: Registry) -> Router {
    router_with_metrics(registry, Arc::default())
}

/// [`router`], counting every answer in `metrics`.
pub fn router_with_metrics(registry: Registry, metrics: Arc<RegistryMetrics>) -> Router {
    let state = AppState {
        limits: Limits::new(&registry),
        registry,
        metrics,
    };
    let signed = |op: &'static str| post(move |s: State<AppState>, r: Signed| signed_op(op, s, r));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/registry/register", signed("register"))
        .route("/v1/registry/lookup", get(lookup))
        .route("/v1/registry/search", get(search))
        .route("/v1/registry/status", signed("status"))
        .route("/v1/registry/capabilities", signed("capabilities"))
        .route("/v1/registry/stats", get(stats))
        .route("/v1/registry/prekeys", signed("prekeys"))
        .route("/v1/registry/prekeys/{amid}", get(prekeys))
        .route("/v1/registry/reputation", signed("feedback"))
        .route("/v1/registry/reputation/score", get(score))
        .route("/v1/registry/reputation/leaderboard", get(leaderboard))
        .route("/v1/registry/reputation/session", signed("session"))
        .route("/v1/registry/reputation/evidence", get(evidence))
        .route("/v1/registry/revoke", signed("revoke"))
        .route("/v1/registry/rotate", signed("rotate"))
        .route("/v1/registry/revocation", get(revocation))
        .route("/v1/registry/crl", get(crl))
        .route("/v1/registry/root", get(root))
        .route("/v1/registry/did/{amid}", get(did_document))
        .route("/v1/registry/credentials", get(credentials))
        .route("/v1/log/head", get(log_head))
        .route("/v1/log/proof", get(log_proof))
        .route("/v1/log/consistency", get(log_consistency))
        .route("/v1/auth/oauth/authorize", signed("oauth_authorize"))
        .route("/v1/auth/oauth/callback", get(oauth_callback))
        .route("/v1/org/register", signed("org_register"))
        .route("/v1/org/verify", signed("org_verify"))
        .route("/v1/org/agents", signed("org_agent"))
        .route("/v1/org/{domain}", get(org_info))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), limit))
        // Outermost: refusals by the limits are counted too.
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A running HTTP server. Dropping it does not stop it; call
/// [`HttpServer::shutdown`].
#[derive(Debug)]
pub struct HttpServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// What it counts.
    pub metrics: Arc<RegistryMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Binds `addr` and serves the API of `registry`.
    pub async fn spawn(registry: Registry, addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(registry, TcpListener::bind(addr).await?)
    }

    /// Serves the API of `registry` on a bound listener.
    pub fn serve(registry: Registry, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Arc::new(RegistryMetrics::default());
        let app = router_with_metrics(registry, metrics.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            metrics,
            stop: Some(stop),
            task,
        })
    }

    /// Stops accepting, finishes requests in flight (at most 10 s).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if state.registry.settings().trust_forwarded_for {
        if let Some(ip) = forwarded_client(headers) {
            return ip;
        }
    }
    peer.ip()
}

/// The client address the reverse proxy in front of us saw: the last entry
/// of the last `X-Forwarded-For` header (the one the proxy appended).
/// Entries before it come from the client and can be anything, so keying
/// limits on them would let a client pick its own bucket.
fn forwarded_client(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
}

/// A signed request as posted, with the client's address: the body within
/// [`MAX_BODY`] (else `payload_too_large`), parsed as a [`SignedRequest`]
/// (else `malformed_json`). Its signature, timestamp and replay are checked
/// when the registry applies it.
struct Signed {
    request: SignedRequest,
    client: IpAddr,
}

impl FromRequest<AppState> for Signed {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let client = client_ip(state, peer, &parts.headers);
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    RegistryError::TooLarge
                } else {
                    RegistryError::MalformedJson(e.body_text())
                }
            })
            .map_err(|e| ApiError(e).into_response())?;
        let request = serde_json::from_slice(&body)
            .map_err(|e| ApiError(RegistryError::MalformedJson(e.to_string())).into_response())?;
        Ok(Self { request, client })
    }
}

async fn signed_op(op: &'static str, State(state): State<AppState>, signed: Signed) -> ApiResult {
    let applied = state
        .registry
        .apply(&signed.request, Some(op), Some(signed.client), now_ms())
        .await;
    reply(applied)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError(RegistryError::Invalid(e.body_text())))
}

fn parse_amid(s: &str) -> Result<Amid, ApiError> {
    s.parse()
        .map_err(|e| ApiError(RegistryError::Invalid(format!("amid: {e}"))))
}

/// The answer to `/v1/health`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    database: String,
    agents: usize,
    root: Amid,
    version: &'static str,
}

/// `GET /v1/health`: `200` with `"database": "ok"` when the database took a
/// write and flushed it just now; else `503` with what failed.
async fn health(State(state): State<AppState>) -> Response {
    let checked = state.registry.store().check().await;
    let health = Health {
        status: if checked.is_ok() { "ok" } else { "degraded" },
        database: match &checked {
            Ok(()) => "ok".into(),
            Err(e) => format!("error: {e}"),
        },
        agents: state.registry.store().agents.len().unwrap_or(0),
        root: state.registry.root_amid(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let status = if checked.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    match reply(Ok::<_, ApiError>(health)) {
        Ok(json) => (status, json).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
struct AmidQuery {
    amid: String,
}

async fn lookup(
    State(state): State<AppState>,
    q: Result<Query<AmidQuery>, QueryRejection>,
) -> ApiResult {
    let amid = parse_amid(&query(q)?.amid)?;
    reply(state.registry.lookup(&amid, now_ms()))
}

#[derive(Deserialize)]
struct SearchParams {
    capability: String,
    tier_min: Option<String>,
    reputation_min: Option<f64>,
    limit: Option<usize>,
}

async fn search(
    State(state): State<AppState>,
    q: Result<Query<SearchParams>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let tier_min = match q.tier_min.as_deref() {
        None | Some("") => Tier::Anonymous,
        Some(t) => parse_tier(t).ok_or_else(|| {
            RegistryError::Invalid("tier_min: anonymous, verified or organization".into())
        })?,
    };
    let search = SearchQuery {
        capability: q.capability,
        tier_min,
        reputation_min: q.reputation_min.unwrap_or(0.0),
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
    };
    reply(state.registry.search_results(&search, now_ms()))
}

async fn stats(State(state): State<AppState>) -> ApiResult {
    reply(state.registry.stats())
}

/// `GET /v1/registry/prekeys/{amid}`: the identity and fallback keys;
/// no one-time key is handed out or used up (see
/// [`Registry::prekey_bundle`]).
async fn prekeys(State(state): State<AppState>, Path(amid): Path<String>) -> ApiResult {
    let amid = parse_amid(&amid)?;
    reply(state.registry.prekey_bundle(&amid))
}

async fn score(
    State(state): State<AppState>,
    q: Result<Query<AmidQuery>, QueryRejection>,
) -> ApiResult {
    let amid = parse_amid(&query(q)?.amid)?;
    reply(state.registry.agent_score(&amid, now_ms()))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn leaderboard(
    State(state): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult {
    let limit = query(q)?.limit.unwrap_or(DEFAULT_LEADERBOARD_LIMIT);
    reply(state.registry.leaderboard(limit, now_ms()))
}

async fn evidence(
    State(state): State<AppState>,
    q: Result<Query<AmidQuery>, QueryRejection>,
) -> ApiResult {
    let amid = parse_amid(&query(q)?.amid)?;
    reply(state.registry.evidence(&amid, now_ms()))
}

async fn revocation(
    State(state): State<AppState>,
    q: Result<Query<AmidQuery>, QueryRejection>,
) -> ApiResult {
    let amid = parse_amid(&query(q)?.amid)?;
    reply(state.registry.revocation(&amid))
}

async fn crl(State(state): State<AppState>) -> ApiResult {
    reply(state.registry.crl(now_ms()))
}

async fn root(State(state): State<AppState>) -> ApiResult {
    reply(Ok::<_, ApiError>(state.registry.root_info()))
}

async fn did_document(State(state): State<AppState>, Path(amid): Path<String>) -> ApiResult {
    let amid = parse_amid(&amid)?;
    Ok(Json(state.registry.did_document(&amid)?))
}

async fn credentials(
    State(state): State<AppState>,
    q: Result<Query<AmidQuery>, QueryRejection>,
) -> ApiResult {
    let amid = parse_amid(&query(q)?.amid)?;
    reply(state.registry.credentials_view(&amid, now_ms()))
}

#[derive(Deserialize)]
struct HeadQuery {
    size: Option<u64>,
}

async fn log_head(
    State(state): State<AppState>,
    q: Result<Query<HeadQuery>, QueryRejection>,
) -> ApiResult {
    let size = query(q)?.size;
    reply(state.registry.log_head(size, now_ms()))
}

#[derive(Deserialize)]
struct ProofQuery {
    index: Option<u64>,
    hash: Option<String>,
    size: Option<u64>,
}

async fn log_proof(
    State(state): State<AppState>,
    q: Result<Query<ProofQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let hash = q.hash.as_deref().map(parse_leaf_hash).transpose()?;
    reply(
        state
            .registry
            .log_proof(q.index, hash.as_ref(), q.size, now_ms()),
    )
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    first: u64,
    second: Option<u64>,
}

async fn log_consistency(
    State(state): State<AppState>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    reply(state.registry.log_consistency(q.first, q.second, now_ms()))
}

async fn org_info(State(state): State<AppState>, Path(domain): Path<String>) -> ApiResult {
    reply(state.registry.org_info(&domain))
}

async fn oauth_callback(
    State(state): State<AppState>,
    q: Result<Query<crate::oauth::CallbackParams>, QueryRejection>,
) -> ApiResult {
    let params = query(q)?;
    reply(state.registry.oauth_callback(&params, now_ms()).await)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Every route as `(method, path)`, for checks against the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/registry/register"),
    ("get", "/v1/registry/lookup"),
    ("get", "/v1/registry/search"),
    ("post", "/v1/registry/status"),
    ("post", "/v1/registry/capabilities"),
    ("get", "/v1/registry/stats"),
    ("post", "/v1/registry/prekeys"),
    ("get", "/v1/registry/prekeys/{amid}"),
    ("post", "/v1/registry/reputation"),
    ("get", "/v1/registry/reputation/score"),
    ("get", "/v1/registry/reputation/leaderboard"),
    ("post", "/v1/registry/reputation/session"),
    ("get", "/v1/registry/reputation/evidence"),
    ("post", "/v1/registry/revoke"),
    ("post", "/v1/registry/rotate"),
    ("get", "/v1/registry/revocation"),
    ("get", "/v1/registry/crl"),
    ("get", "/v1/registry/root"),
    ("get", "/v1/registry/did/{amid}"),
    ("get", "/v1/registry/credentials"),
    ("get", "/v1/log/head"),
    ("get", "/v1/log/proof"),
    ("get", "/v1/log/consistency"),
    ("post", "/v1/auth/oauth/authorize"),
    ("get", "/v1/auth/oauth/callback"),
    ("post", "/v1/org/register"),
    ("post", "/v1/org/verify"),
    ("post", "/v1/org/agents"),
    ("get", "/v1/org/{domain}"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in ROUTES {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} missing from openapi.json"
            );
        }
        // And nothing documented that is not served.
        let served: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(served, ROUTES.len());
    }

    #[test]
    fn the_forwarded_client_is_the_entry_the_proxy_appended() {
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_client(&h), None);
        h.insert("x-forwarded-for", "6.6.6.6, 10.0.0.7".parse().unwrap());
        assert_eq!(forwarded_client(&h), Some("10.0.0.7".parse().unwrap()));
        h.append("x-forwarded-for", "198.51.100.4".parse().unwrap());
        assert_eq!(forwarded_client(&h), Some("198.51.100.4".parse().unwrap()));
        h.insert("x-forwarded-for", "1.2.3.4, not-an-ip".parse().unwrap());
        assert_eq!(forwarded_client(&h), None);
    }

    #[test]
    fn a_poisoned_limiter_refuses_with_503() {
        let limiter = Mutex::new(RateLimiter::new(crate::registry::DEFAULT_HTTP_RATE, 16));
        let client = IpAddr::from([192, 0, 2, 1]);
        assert!(acquire(&limiter, client).is_ok());
        std::thread::scope(|s| {
            let poisoned = s
                .spawn(|| {
                    let _held = limiter.lock().unwrap();
                    panic!("poisoning the limiter");
                })
                .join();
            assert!(poisoned.is_err());
        });
        // Every client is refused now, one with a full bucket too.
        for client in [client, IpAddr::from([192, 0, 2, 2])] {
            let refused = acquire(&limiter, client).unwrap_err();
            assert_eq!(refused.0.status(), 503);
            assert_eq!(refused.0.code(), "busy");
            assert_eq!(refused.into_response().status(), 503);
        }
    }

    #[test]
    fn every_limited_route_documents_its_429_and_503() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        for (method, path) in ROUTES {
            let responses = &doc["paths"][*path][*method]["responses"];
            assert!(responses.get("503").is_some(), "{method} {path}: no 503");
            // The health check is not rate limited.
            assert_eq!(
                responses.get("429").is_some(),
                !path.ends_with("/health"),
                "{method} {path}: 429"
            );
        }
        let limited = &doc["components"]["responses"]["RateLimited"];
        assert!(limited["headers"].get("Retry-After").is_some());
    }
}
