//! The local API's routes.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request, State},
    http::{request::Parts, HeaderMap, Method, StatusCode},
    middleware,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{delete, get, post, put, MethodRouter},
    Json, Router,
};
use base64::Engine as _;
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};

use super::{openapi, ApiError, Ctx, ErrorCode, MAX_BODY, MAX_WAIT};
use crate::{
    audit::AuditFilter,
    card::Presence,
    contacts::{CardImportError, NameError},
    envelope::{MessageId, SessionId},
    identity::Amid,
    knock::Intent,
};

type Answer = Result<Json<Value>, ApiError>;

/// A JSON body, with the API's errors for bad or oversized ones.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("body over {MAX_BODY} bytes"),
                )
            } else {
                ApiError::new(ErrorCode::BadRequest, e.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad JSON body: {e}")))
    }
}

/// A query string, with the API's error for a bad one.
pub(super) struct Q<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Q(q))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
    }
}

pub(super) fn amid(text: &str) -> Result<Amid, ApiError> {
    text.parse().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidAmid,
            format!("invalid AMID {text:?}: {e}"),
        )
    })
}

/// An AMID or a petname, read in one place for every route that names an
/// agent.
fn recipient(ctx: &Ctx, text: &str) -> Result<Amid, ApiError> {
    ctx.node.resolve_name(text).map_err(|e| match e {
        NameError::Storage(m) => ApiError::new(ErrorCode::Storage, m),
        e => ApiError::new(
            ErrorCode::InvalidAmid,
            format!("invalid AMID {text:?}: {e}"),
        ),
    })
}

fn name_error(e: NameError) -> ApiError {
    match e {
        NameError::Unknown(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        NameError::Storage(m) => ApiError::new(ErrorCode::Storage, m),
        e => ApiError::new(ErrorCode::InvalidName, e.to_string()),
    }
}

fn id16(text: &str) -> Result<[u8; 16], ApiError> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidId,
                format!("invalid id {text:?}: 32 hex digits expected"),
            )
        })
}

fn intent(capability: Option<String>) -> Intent {
    let mut intent = Intent::default();
    if let Some(c) = capability {
        intent.capability = c;
    }
    intent
}

fn ok() -> Answer {
    Ok(Json(json!({})))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// Every route: method, path (as in the OpenAPI document) and handler. The
/// router and the OpenAPI document are both made from this list.
pub(super) fn routes() -> Vec<(Method, &'static str, MethodRouter<Arc<Ctx>>)> {
    vec![
        (Method::POST, "/v1/send", post(send)),
        (Method::POST, "/v1/request", post(request)),
        (Method::POST, "/v1/reply", post(reply)),
        (Method::POST, "/v1/end", post(end)),
        (Method::POST, "/v1/stream", post(stream)),
        (Method::GET, "/v1/messages", get(messages)),
        (Method::POST, "/v1/messages/ack", post(ack)),
        (Method::POST, "/v1/messages/release", post(release)),
        (Method::GET, "/v1/events", get(events)),
        (Method::GET, "/v1/events/stream", get(events_stream)),
        (Method::GET, "/v1/status", get(status)),
        (Method::GET, "/v1/peers", get(peers)),
        (Method::GET, "/v1/sessions", get(sessions)),
        (Method::GET, "/v1/card", get(export_card)),
        (Method::POST, "/v1/cards", post(import_card)),
        (Method::GET, "/v1/cards", get(imported_cards)),
        (Method::GET, "/v1/names", get(names)),
        (Method::POST, "/v1/names", post(set_name)),
        (Method::DELETE, "/v1/names/{name}", delete(remove_name)),
        (Method::GET, "/v1/lookup/{amid}", get(lookup)),
        (Method::POST, "/v1/close", post(close)),
        (Method::POST, "/v1/disconnect", post(disconnect)),
        (Method::POST, "/v1/block", post(block)),
        (Method::POST, "/v1/kill", post(kill)),
        (Method::POST, "/v1/kill/clear", post(clear_kill)),
        (Method::PUT, "/v1/presence", put(presence)),
        (Method::GET, "/v1/policy", get(policy)),
        (Method::POST, "/v1/policy/reload", post(reload_policy)),
        (Method::POST, "/v1/policy/check", post(check_policy)),
        (Method::GET, "/v1/audit", get(audit)),
        (Method::GET, "/v1/receipts", get(receipts)),
        (Method::POST, "/v1/credentials", post(credentials)),
        (
            Method::POST,
            "/v1/registry/register",
            post(registry_register),
        ),
        (Method::GET, "/v1/registry/search", get(registry_search)),
        (Method::GET, "/v1/openapi.json", get(openapi_doc)),
        (Method::PUT, "/v1/policy", put(set_policy)),
        (
            Method::POST,
            "/v1/dashboard/link",
            post(super::dashboard::link),
        ),
        (Method::GET, "/v1/stats/timeseries", get(timeseries)),
        (
            Method::GET,
            "/v1/registry/standing",
            get(super::standing::route),
        ),
        (
            Method::GET,
            "/v1/diagnostics",
            get(super::diagnostics::route),
        ),
        (Method::GET, "/metrics", get(metrics)),
        (Method::GET, "/", get(super::dashboard::page)),
        (
            Method::GET,
            super::dashboard::LOGIN_PATH,
            get(super::dashboard::login),
        ),
    ]
}

pub(super) fn router(ctx: Arc<Ctx>) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async {
            ApiError::new(ErrorCode::NotFound, "no such route (see /v1/openapi.json)")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "the route does not take this method",
            )
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), super::guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

async fn openapi_doc() -> Json<Value> {
    Json(openapi::document())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    to: String,
    payload: Value,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

async fn send(State(ctx): State<Arc<Ctx>>, Body(b): Body<SendBody>) -> Answer {
    let to = recipient(&ctx, &b.to)?;
    if b.wait {
        let receipt = ctx
            .node
            .send_with(&to, b.payload, intent(b.capability))
            .await?;
        Ok(Json(json!({ "receipt": receipt })))
    } else {
        let id = ctx
            .node
            .send_nowait_with(&to, b.payload, intent(b.capability))
            .await?;
        Ok(Json(json!({ "id": id })))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    to: String,
    payload: Value,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Default wait for a reply.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a reply.
const MAX_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

async fn request(State(ctx): State<Arc<Ctx>>, Body(b): Body<RequestBody>) -> Answer {
    let to = recipient(&ctx, &b.to)?;
    let timeout = b
        .timeout_ms
        .map_or(DEFAULT_REPLY_TIMEOUT, Duration::from_millis)
        .min(MAX_REPLY_TIMEOUT);
    let reply = ctx
        .node
        .request(&to, intent(b.capability), b.payload, timeout)
        .await?;
    Ok(Json(json!({ "reply": reply })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    to: String,
    id: String,
    #[serde(default)]
    session: Option<String>,
    payload: Value,
}

async fn reply(State(ctx): State<Arc<Ctx>>, Body(b): Body<ReplyBody>) -> Answer {
    let to = recipient(&ctx, &b.to)?;
    let id = MessageId(id16(&b.id)?);
    let session = b.session.as_deref().map(id16).transpose()?.map(SessionId);
    let receipt = ctx.node.reply_to(&to, id, session, b.payload).await?;
    Ok(Json(json!({ "receipt": receipt })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmidBody {
    amid: String,
}

async fn end(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    let peer = recipient(&ctx, &b.amid)?;
    let session = ctx.node.end_conversation(&peer).await?;
    Ok(Json(json!({ "session": session })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamBody {
    to: String,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    path: Option<std::path::PathBuf>,
    #[serde(default)]
    chunk_size: Option<usize>,
    #[serde(default)]
    capability: Option<String>,
}

/// Default chunk size of a stream.
const DEFAULT_CHUNK: usize = 16 * 1024;

async fn stream(State(ctx): State<Arc<Ctx>>, Body(b): Body<StreamBody>) -> Answer {
    use tokio::io::AsyncReadExt;
    let to = recipient(&ctx, &b.to)?;
    let size = b
        .chunk_size
        .unwrap_or(DEFAULT_CHUNK)
        .clamp(1, crate::content::MAX_CHUNK_SIZE);
    let mut source: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match (b.data_base64, b.path) {
        (Some(data), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.as_bytes())
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("data_base64: {e}")))?;
            Box::new(std::io::Cursor::new(bytes))
        }
        (None, Some(path)) => Box::new(tokio::fs::File::open(&path).await.map_err(|e| {
            ApiError::new(ErrorCode::BadRequest, format!("{}: {e}", path.display()))
        })?),
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give exactly one of data_base64 and path",
            ))
        }
    };
    let mut tx = ctx.node.open_stream(&to, intent(b.capability));
    let mut bytes = 0u64;
    loop {
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            match source.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Err(ApiError::new(ErrorCode::BadRequest, e.to_string())),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        bytes += filled as u64;
        tx.send_chunk(buf).await?;
    }
    let chunks = tx.finish().await?;
    Ok(Json(json!({ "chunks": chunks, "bytes": bytes })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// Default lease of a handed-out message.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

async fn messages(State(ctx): State<Arc<Ctx>>, Q(q): Q<MessagesQuery>) -> Answer {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let max = q.max.unwrap_or(32).clamp(1, 256);
    let lease = q.lease_ms.map_or(DEFAULT_LEASE, |ms| {
        Duration::from_millis(ms.clamp(1_000, 600_000))
    });
    let handed = tokio::select! {
        h = ctx.inbox.take_wait(max, lease, wait) => h,
        _ = ctx.cancel.cancelled() => Vec::new(),
    };
    let messages: Vec<Value> = handed
        .into_iter()
        .map(|h| {
            let mut v = serde_json::to_value(&h.message).unwrap_or_default();
            if let Value::Object(o) = &mut v {
                o.insert("deliveries".into(), h.deliveries.into());
            }
            v
        })
        .collect();
    Ok(Json(json!({ "messages": messages })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<String>,
}

fn message_ids(ids: &[String]) -> Result<Vec<MessageId>, ApiError> {
    ids.iter().map(|s| id16(s).map(MessageId)).collect()
}

async fn ack(State(ctx): State<Arc<Ctx>>, Body(b): Body<IdsBody>) -> Answer {
    let ids = message_ids(&b.ids)?;
    let keys = ctx.inbox.ack(&ids);
    let acked = keys.len();
    ctx.node.ack(keys).await?;
    Ok(Json(json!({ "acked": acked })))
}

async fn release(State(ctx): State<Arc<Ctx>>, Body(b): Body<IdsBody>) -> Answer {
    let ids = message_ids(&b.ids)?;
    Ok(Json(json!({ "released": ctx.inbox.release(&ids) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn events(State(ctx): State<Arc<Ctx>>, Q(q): Q<EventsQuery>) -> Answer {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let since = q.since.unwrap_or(0);
    let page = tokio::select! {
        p = ctx.events.since_wait(since, limit, wait) => p,
        _ = ctx.cancel.cancelled() => ctx.events.since(since, limit),
    };
    Ok(Json(serde_json::to_value(page).map_err(internal)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    #[serde(default)]
    since: Option<u64>,
}

async fn events_stream(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> Response {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().parse::<u64>().ok());
    let since = last_event_id.or(q.since).unwrap_or(0);
    let first = ctx.events.since(since, 0);
    let mut pending: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    if first.dropped > 0 {
        pending.push_back(
            Event::default()
                .event("dropped")
                .data(json!({ "event": "dropped", "count": first.dropped }).to_string()),
        );
    }
    let state = (ctx, since, pending);
    let stream = futures::stream::unfold(state, |(ctx, mut cursor, mut pending)| async move {
        loop {
            if let Some(e) = pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), (ctx, cursor, pending)));
            }
            let page = tokio::select! {
                p = ctx.events.since_wait(cursor, 100, MAX_WAIT) => p,
                _ = ctx.cancel.cancelled() => return None,
            };
            for entry in page.events {
                cursor = entry.id;
                let data = serde_json::to_string(&entry).unwrap_or_default();
                pending.push_back(Event::default().id(entry.id.to_string()).data(data));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Answer {
    let status = ctx.node.status().await;
    let (ready, leased) = ctx.inbox.counts();
    Ok(Json(json!({
        "status": status,
        "inbox": { "ready": ready, "leased": leased },
    })))
}

async fn peers(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(json!({ "peers": ctx.node.peers().await })))
}

async fn export_card(State(ctx): State<Arc<Ctx>>) -> Answer {
    let record = ctx.node.card_record().await.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "no card yet: the node listens on no address",
        )
    })?;
    let card = crate::contacts::decode_card(&record.to_bytes().map_err(internal)?, 0)
        .map(|(c, _)| c)
        .map_err(internal)?;
    Ok(Json(json!({
        "card": crate::contacts::encode_card(&record),
        "amid": card.amid,
        "seq": card.seq,
        "expires_ms": card.expires_ms,
        "details": card,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    card: String,
    #[serde(default)]
    name: Option<String>,
}

async fn import_card(State(ctx): State<Arc<Ctx>>, Body(b): Body<ImportBody>) -> Answer {
    if let Some(name) = &b.name {
        crate::contacts::validate_name(name).map_err(name_error)?;
    }
    let card = ctx.node.import_card(b.card.as_bytes()).map_err(|e| {
        let code = match &e {
            CardImportError::Expired { .. } => ErrorCode::CardExpired,
            CardImportError::Storage(_) => ErrorCode::Storage,
            _ => ErrorCode::InvalidCard,
        };
        ApiError::new(code, e.to_string())
    })?;
    if let Some(name) = &b.name {
        ctx.node.set_name(name, &card.amid).map_err(name_error)?;
    }
    Ok(Json(json!({
        "amid": card.amid,
        "seq": card.seq,
        "expires_ms": card.expires_ms,
        "name": b.name,
        "details": card,
    })))
}

async fn imported_cards(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(json!({ "cards": ctx.node.imported_cards() })))
}

async fn names(State(ctx): State<Arc<Ctx>>) -> Answer {
    let names: Vec<Value> = ctx
        .node
        .names()
        .into_iter()
        .map(|(name, amid)| json!({ "name": name, "amid": amid }))
        .collect();
    Ok(Json(json!({ "names": names })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
    amid: String,
}

async fn set_name(State(ctx): State<Arc<Ctx>>, Body(b): Body<NameBody>) -> Answer {
    let a = amid(&b.amid)?;
    ctx.node.set_name(&b.name, &a).map_err(name_error)?;
    Ok(Json(json!({ "name": b.name, "amid": a })))
}

async fn remove_name(State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> Answer {
    let a = ctx.node.remove_name(&name).map_err(name_error)?;
    Ok(Json(json!({ "name": name, "amid": a })))
}

async fn sessions(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(
        json!({ "sessions": ctx.node.status().await.sessions }),
    ))
}

async fn lookup(State(ctx): State<Arc<Ctx>>, Path(text): Path<String>) -> Answer {
    let a = recipient(&ctx, &text)?;
    // The DHT's card, else one imported out of band.
    let found = match ctx.node.lookup(&a).await {
        Some(card) => Some(card),
        None => ctx.node.imported_cards().into_iter().find(|c| c.amid == a),
    };
    match found {
        Some(card) => Ok(Json(json!({ "card": card }))),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no card found for {a}"),
        )),
    }
}

async fn close(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    let a = recipient(&ctx, &b.amid)?;
    let closed = ctx.node.close_session(&a).await;
    if closed == 0 {
        return Err(ApiError::new(
            ErrorCode::NoSession,
            format!("no session with {a}"),
        ));
    }
    Ok(Json(json!({ "closed": closed })))
}

async fn disconnect(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    let a = recipient(&ctx, &b.amid)?;
    let peer = a
        .peer_id()
        .map_err(|e| ApiError::new(ErrorCode::InvalidAmid, e.to_string()))?;
    ctx.node.disconnect(peer).await;
    ok()
}

async fn block(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    ctx.node.block(recipient(&ctx, &b.amid)?);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    amid: Option<String>,
}

async fn kill(State(ctx): State<Arc<Ctx>>, Body(b): Body<KillBody>) -> Answer {
    let target = b.amid.as_deref().map(|t| recipient(&ctx, t)).transpose()?;
    ctx.node.kill(target).await;
    ok()
}

async fn clear_kill(State(ctx): State<Arc<Ctx>>) -> Answer {
    ctx.node.clear_kill();
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    state: String,
}

async fn presence(State(ctx): State<Arc<Ctx>>, Body(b): Body<PresenceBody>) -> Answer {
    let p: Presence = b
        .state
        .parse()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("{e}")))?;
    ctx.node.set_presence(p).await;
    ok()
}

async fn policy(State(ctx): State<Arc<Ctx>>) -> Answer {
    let policy = ctx.node.policy();
    Ok(Json(json!({
        "policy": policy,
        "toml": toml::to_string(&policy).map_err(internal)?,
        "policy_hash": hex::encode(policy.hash()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: String,
}

/// Puts a policy (TOML) in force at once. The policy file, if any, is not
/// changed: a reload or a restart reads it again.
async fn set_policy(State(ctx): State<Arc<Ctx>>, Body(b): Body<PolicyBody>) -> Answer {
    let policy = crate::policy::Policy::from_toml(&b.policy)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("policy: {e}")))?;
    let hash = hex::encode(policy.hash());
    ctx.node.set_policy(policy);
    Ok(Json(json!({ "policy_hash": hash })))
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let status = ctx.node.status().await;
    let mut text = ctx.metrics.render(&status, ctx.inbox.counts());
    text.push_str(&ctx.node.libp2p_metrics());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn timeseries(State(ctx): State<Arc<Ctx>>) -> Answer {
    let now = agentmesh_dht::now_ms();
    let minutes = ctx
        .timeseries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .snapshot(now);
    Ok(Json(json!({
        "now_ms": now,
        "minute_ms": super::timeseries::MINUTE_MS,
        "minutes": minutes,
        "latency": ctx.metrics.latency_json(),
    })))
}

async fn reload_policy(State(ctx): State<Arc<Ctx>>) -> Answer {
    let hash = ctx
        .node
        .reload_policy()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Json(json!({ "policy_hash": hex::encode(hash) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    from: Option<String>,
    capability: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    tier: Option<crate::policy::Tier>,
    #[serde(default)]
    reputation: Option<f64>,
    /// A policy (TOML) to judge with instead of the one in force.
    #[serde(default)]
    policy: Option<String>,
}

/// Judges a KNOCK that was never sent: the decision the policy in force
/// (or the one given) would take. Pure: nothing is recorded.
async fn check_policy(State(ctx): State<Arc<Ctx>>, Body(b): Body<CheckBody>) -> Answer {
    use crate::{
        knock::KnockBody,
        policy::{KnockContext, Policy},
    };
    let policy = match &b.policy {
        Some(text) => Policy::from_toml(text)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("policy: {e}")))?,
        None => ctx.node.policy(),
    };
    let from = match &b.from {
        Some(a) => amid(a)?,
        None => crate::identity::Identity::generate().amid(),
    };
    let me = ctx.node.amid();
    let now = agentmesh_dht::now_ms();
    let default = Intent::default();
    let intent = Intent {
        capability: b.capability,
        action: b.action.unwrap_or(default.action.clone()),
        ..default
    };
    let knock = KnockBody {
        from,
        to: me,
        intent,
        session: SessionId([0; 16]),
        ts_ms: now,
        nonce: [0; 16],
        first: Vec::new(),
        credentials: Default::default(),
    };
    let kctx = KnockContext {
        tier: b.tier.unwrap_or_default(),
        reputation: b.reputation.map(crate::credentials::Reputation::from_f64),
        ..KnockContext::default()
    };
    let decision = policy.evaluate(&me, &knock, kctx, now);
    Ok(Json(json!({
        "decision": decision,
        "policy_hash": hex::encode(policy.hash()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    verify: bool,
}

async fn audit(State(ctx): State<Arc<Ctx>>, Q(q): Q<AuditQuery>) -> Answer {
    let mut filter = AuditFilter::default();
    if let Some(p) = &q.peer {
        filter = filter.peer(amid(p)?);
    }
    if let Some(k) = q.kind {
        filter = filter.kind(k);
    }
    if let Some(l) = q.limit {
        filter = filter.limit(l);
    }
    let verified = if q.verify {
        Some(
            ctx.node
                .verify_audit_log()
                .map_err(|e| ApiError::new(ErrorCode::Storage, format!("audit chain: {e}")))?,
        )
    } else {
        None
    };
    let entries = ctx
        .node
        .audit_log(&filter)
        .map_err(|e| ApiError::new(ErrorCode::Storage, format!("audit log: {e}")))?;
    let mut answer = json!({ "audit": entries });
    if let Some(n) = verified {
        answer["verified"] = json!(n);
    }
    Ok(Json(answer))
}

async fn receipts(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(json!({ "receipts": ctx.node.receipts() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsBody {
    #[serde(default)]
    renew: bool,
}

async fn credentials(State(ctx): State<Arc<Ctx>>, Body(b): Body<CredentialsBody>) -> Answer {
    let state = if b.renew {
        ctx.node.renew_credentials().await.map(Some)
    } else {
        ctx.node.reload_credentials()
    }
    .map_err(|e| ApiError::new(ErrorCode::Unreachable, e.to_string()))?;
    match state {
        Some(state) => Ok(Json(json!({ "credentials": state }))),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "no credentials stored (run `agentmesh verify`)",
        )),
    }
}

fn registry_error(e: crate::node::RegistryClientError) -> ApiError {
    use crate::node::RegistryClientError as E;
    match e {
        E::NotConfigured => ApiError::new(
            ErrorCode::NotFound,
            "no registry configured (start the node with --registry)",
        ),
        E::Refused { code, message } => ApiError::new(
            ErrorCode::BadRequest,
            format!("the registry refused: {code}: {message}"),
        ),
        e => ApiError::new(ErrorCode::Unreachable, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    name: String,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

async fn registry_register(State(ctx): State<Arc<Ctx>>, Body(b): Body<RegisterBody>) -> Answer {
    let answer = ctx
        .node
        .register(&b.name, b.capabilities)
        .await
        .map_err(registry_error)?;
    Ok(Json(json!({ "registration": answer })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    capability: String,
    #[serde(default)]
    tier_min: Option<crate::policy::Tier>,
    #[serde(default)]
    reputation_min: Option<f64>,
    #[serde(default)]
    limit: Option<u32>,
}

async fn registry_search(State(ctx): State<Arc<Ctx>>, Q(q): Q<SearchQuery>) -> Answer {
    let answer = ctx
        .node
        .registry_call(crate::registry::protocol::Request::Search {
            capability: q.capability,
            tier_min: q.tier_min,
            reputation_min: q.reputation_min,
            limit: q.limit,
        })
        .await
        .map_err(registry_error)?;
    Ok(Json(json!({ "results": answer })))
}
