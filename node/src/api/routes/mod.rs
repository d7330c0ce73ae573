//! The local API's routes.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Query, Request},
    http::{request::Parts, Method, StatusCode},
    middleware,
    routing::{delete, get, post, put, MethodRouter},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};

use super::{openapi, ApiError, Ctx, ErrorCode, MAX_BODY};
use crate::{contacts::NameError, identity::Amid, knock::Intent};

mod directory;
mod mailbox;
mod messaging;
mod owner;
mod registry;

use directory::{
    export_card, import_card, imported_cards, lookup, names, peers, remove_name, schemas, sessions,
    set_name, status,
};
use messaging::{ack, end, events, events_stream, messages, release, reply, request, send, stream};
use owner::{
    audit, block, check_policy, clear_kill, close, disconnect, kill, metrics, policy, presence,
    reload_policy, set_policy, timeseries,
};
use registry::{credentials, receipts, registry_register, registry_search};

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

/// The intent of a message or request: its capability and schema.
fn intent_with(capability: Option<String>, schema: Option<String>) -> Intent {
    let mut intent = intent(capability);
    intent.schema = schema;
    intent
}

fn ok() -> Answer {
    Ok(Json(json!({})))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// A body naming one agent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmidBody {
    amid: String,
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
        (Method::GET, "/v1/schemas", get(schemas)),
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
        (Method::GET, "/v1/mailbox", get(mailbox::mailbox)),
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
        .layer(middleware::from_fn(super::read_body))
        .with_state(ctx)
}

async fn openapi_doc() -> Json<Value> {
    Json(openapi::document())
}
