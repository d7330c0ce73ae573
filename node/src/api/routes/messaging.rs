//! Messaging routes: sending, requests and replies, ending sessions,
//! streams, the inbox and the event feed.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{events, ApiError, Ctx, ErrorCode, MAX_WAIT},
    crypto::envelope::{MessageId, SessionId},
};

use super::{id16, intent, intent_with, internal, recipient, AmidBody, Answer, Body, Q};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendBody {
    to: String,
    payload: Value,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

pub(super) async fn send(State(ctx): State<Arc<Ctx>>, Body(b): Body<SendBody>) -> Answer {
    let to = recipient(&ctx, &b.to)?;
    if b.wait {
        let receipt = ctx
            .node
            .send_with(&to, b.payload, intent_with(b.capability, b.schema))
            .await?;
        Ok(Json(json!({ "receipt": receipt })))
    } else {
        let id = ctx
            .node
            .send_nowait_with(&to, b.payload, intent_with(b.capability, b.schema))
            .await?;
        Ok(Json(json!({ "id": id })))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestBody {
    to: String,
    payload: Value,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Default wait for a reply.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a reply.
const MAX_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn request(State(ctx): State<Arc<Ctx>>, Body(b): Body<RequestBody>) -> Answer {
    let to = recipient(&ctx, &b.to)?;
    let timeout = b
        .timeout_ms
        .map_or(DEFAULT_REPLY_TIMEOUT, Duration::from_millis)
        .min(MAX_REPLY_TIMEOUT);
    let reply = ctx
        .node
        .request(&to, intent_with(b.capability, b.schema), b.payload, timeout)
        .await?;
    Ok(Json(json!({ "reply": reply })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplyBody {
    to: String,
    id: String,
    #[serde(default)]
    session: Option<String>,
    payload: Value,
}

pub(super) async fn reply(State(ctx): State<Arc<Ctx>>, Body(b): Body<ReplyBody>) -> Answer {
    let to = recipient(&ctx, &b.to)?;
    let id = MessageId(id16(&b.id)?);
    let session = b.session.as_deref().map(id16).transpose()?.map(SessionId);
    let receipt = ctx.node.reply_to(&to, id, session, b.payload).await?;
    Ok(Json(json!({ "receipt": receipt })))
}

pub(super) async fn end(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    let peer = recipient(&ctx, &b.amid)?;
    let session = ctx.node.end_conversation(&peer).await?;
    Ok(Json(json!({ "session": session })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamBody {
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

pub(super) async fn stream(State(ctx): State<Arc<Ctx>>, Body(b): Body<StreamBody>) -> Answer {
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
pub(super) struct MessagesQuery {
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// Default lease of a handed-out message.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

pub(super) async fn messages(State(ctx): State<Arc<Ctx>>, Q(q): Q<MessagesQuery>) -> Answer {
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
pub(super) struct IdsBody {
    ids: Vec<String>,
}

fn message_ids(ids: &[String]) -> Result<Vec<MessageId>, ApiError> {
    ids.iter().map(|s| id16(s).map(MessageId)).collect()
}

pub(super) async fn ack(State(ctx): State<Arc<Ctx>>, Body(b): Body<IdsBody>) -> Answer {
    let ids = message_ids(&b.ids)?;
    let keys = ctx.inbox.ack(&ids);
    let acked = keys.len();
    ctx.node.ack(keys).await?;
    Ok(Json(json!({ "acked": acked })))
}

pub(super) async fn release(State(ctx): State<Arc<Ctx>>, Body(b): Body<IdsBody>) -> Answer {
    let ids = message_ids(&b.ids)?;
    Ok(Json(json!({ "released": ctx.inbox.release(&ids) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn events(State(ctx): State<Arc<Ctx>>, Q(q): Q<EventsQuery>) -> Answer {
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
pub(super) struct StreamQuery {
    #[serde(default)]
    since: Option<u64>,
}

pub(super) async fn events_stream(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> Response {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().parse::<u64>().ok());
    let since = last_event_id.or(q.since).unwrap_or(0);
    // A gap, at the start or midway, is an event `dropped` without an id.
    let stream = events::stream(ctx.events.clone(), since, ctx.cancel.clone()).map(|item| {
        Ok::<_, Infallible>(match item {
            events::Item::Gap(count) => Event::default()
                .event("dropped")
                .data(json!({ "event": "dropped", "count": count }).to_string()),
            events::Item::Event(entry) => Event::default()
                .id(entry.id.to_string())
                .data(serde_json::to_string(&entry).unwrap_or_default()),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
