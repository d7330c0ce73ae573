//! The A2A gateway: Agent2Agent (v1.0, JSON-RPC binding) on loopback, over
//! the mesh.
//!
//! - **Outbound:** every agent is reachable at `/a2a/<AMID>` (its A2A card at
//!   `/a2a/<AMID>/.well-known/agent-card.json`). A JSON-RPC request posted
//!   there is carried as an AgentMesh request (KNOCK, Olm, direct or relayed
//!   path) to that agent, and its answer comes back as the HTTP answer (one
//!   JSON-RPC response, or Server-Sent Events for the streaming methods:
//!   each event is passed on as soon as it crossed the mesh).
//! - **Inbound:** a node with an upstream A2A server hands each A2A request
//!   it accepted to that server and carries the answer back, a streaming
//!   one event by event (the `serve` submodule). Without one, A2A requests reach the
//!   application's inbox like any request.
//!
//! The gateway's own card (`/.well-known/agent-card.json`) is made from this
//! agent's signed card and signed with its Ed25519 key (JWS, EdDSA, over the
//! RFC 8785 canonical JSON of the card).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::debug;

use super::{loopback_host, Ctx};
use crate::{card::AgentCard, identity::Amid, knock::Intent, runtime::SendError};

mod serve;
mod sse;

pub(super) use serve::{is_a2a_request, serve_upstream};

/// The A2A protocol version spoken.
pub const PROTOCOL_VERSION: &str = "1.0";
/// URI of the AgentMesh protocol binding and KNOCK extension in cards.
pub const BINDING_URI: &str = "https://agentmesh.dev/a2a/binding/v1";
/// URI of the KNOCK extension declared in cards.
pub const KNOCK_EXTENSION_URI: &str = "https://agentmesh.dev/a2a/knock/v1";
/// Largest JSON-RPC request accepted, in bytes.
pub const MAX_A2A_BODY: usize = 512 * 1024;
/// How long a request waits for the remote agent's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the gateway waits for a closed stream's acknowledgement.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Events received and not yet written to the A2A client.
const FORWARD_QUEUE: usize = 64;

/// The keys of the payloads carried between a gateway and the serving node.
///
/// A request: `{"a2a": <JSON-RPC request>, "stream": bool, "version": "1.0",
/// "incremental": true}`. Its reply: `{"a2a": <JSON-RPC response>}`, or,
/// streaming, `{"a2a_stream": [<responses>]}` with `"a2a_more": "<id>"` while
/// the stream goes on. The next events of stream `<id>`: a request
/// `{"a2a": {"jsonrpc": "2.0", "id": <id>, "method": <method>}, "a2a_next":
/// {"stream": "<id>", "batch": n}}` (the call's id and method; n counting
/// from 1), answered the same way; `{"stream": "<id>", "close": true}`
/// ends the stream early.
mod keys {
    pub(super) const RPC: &str = "a2a";
    pub(super) const STREAM: &str = "stream";
    pub(super) const VERSION: &str = "version";
    pub(super) const INCREMENTAL: &str = "incremental";
    pub(super) const STREAM_EVENTS: &str = "a2a_stream";
    pub(super) const MORE: &str = "a2a_more";
    pub(super) const NEXT: &str = "a2a_next";
}

/// JSON-RPC error codes (JSON-RPC 2.0 and A2A).
mod codes {
    pub(super) const PARSE_ERROR: i64 = -32700;
    pub(super) const INVALID_REQUEST: i64 = -32600;
    pub(super) const METHOD_NOT_FOUND: i64 = -32601;
    pub(super) const INVALID_PARAMS: i64 = -32602;
    pub(super) const INTERNAL: i64 = -32603;
    pub(super) const PUSH_NOT_SUPPORTED: i64 = -32003;
    pub(super) const EXTENDED_CARD_NOT_CONFIGURED: i64 = -32007;
    /// Server-defined: the agent's KNOCK policy refused the sender.
    pub(super) const KNOCK_REJECTED: i64 = -32050;
    /// Server-defined: the agent could not be reached, or did not answer.
    pub(super) const UNREACHABLE: i64 = -32051;
}

/// Methods carried to the remote agent, and whether each streams.
fn carried(method: &str) -> Option<bool> {
    match method {
        "SendMessage" | "GetTask" | "ListTasks" | "CancelTask" | "message/send" | "tasks/get"
        | "tasks/cancel" => Some(false),
        "SendStreamingMessage" | "SubscribeToTask" | "message/stream" | "tasks/resubscribe" => {
            Some(true)
        }
        _ => None,
    }
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message.into() } })
}

/// Router of the gateway's listener.
pub(super) fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/.well-known/agent-card.json", get(own_card))
        .route("/a2a/{amid}/.well-known/agent-card.json", get(remote_card))
        .route("/a2a/{amid}", post(call))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such route: POST /a2a/<AMID>, GET /.well-known/agent-card.json" })),
            )
        })
        .layer(middleware::from_fn(guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_A2A_BODY))
        .layer(middleware::from_fn(read_body))
        .with_state(ctx)
}

/// Reads each request's body to its end first (see
/// [`buffer_body`](super::buffer_body)). A body over [`MAX_A2A_BODY`] is
/// refused as A2A clients read refusals: a JSON-RPC error (invalid request;
/// its id unknown, as the body was not parsed), for the JSON-RPC route.
async fn read_body(req: Request, next: Next) -> Response {
    let rpc = req.method() == axum::http::Method::POST;
    match super::buffer_body(req, MAX_A2A_BODY).await {
        Ok(req) => next.run(req).await,
        Err(e) if rpc => {
            let (code, what) = match e {
                super::BodyError::TooLarge(_) => (codes::INVALID_REQUEST, "invalid request"),
                super::BodyError::Read(_) => (codes::PARSE_ERROR, "parse error"),
            };
            Json(rpc_error(&Value::Null, code, format!("{what}: {e}"))).into_response()
        }
        Err(e) => {
            let status = match e {
                super::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                super::BodyError::Read(_) => StatusCode::BAD_REQUEST,
            };
            (status, Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

/// Refuses web pages and foreign `Host`s (no token: A2A clients are
/// processes on this machine; the listener is loopback only).
async fn guard(headers: HeaderMap, req: Request, next: Next) -> Response {
    if headers.contains_key(header::ORIGIN) || headers.contains_key(header::REFERER) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "requests from web pages are refused" })),
        )
            .into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if !loopback_host(host) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "host is not loopback" })),
        )
            .into_response();
    }
    next.run(req).await
}

fn base_url(ctx: &Ctx) -> String {
    ctx.a2a_url
        .get()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1".into())
}

/// An A2A AgentCard for `card`, served at `url`.
fn agent_card(card: &AgentCard, url: &str) -> Value {
    let amid = card.amid.to_string();
    let skills: Vec<Value> = card
        .capabilities
        .iter()
        .map(|c| {
            json!({
                "id": c, "name": c, "description": format!("{c}, as advertised in the agent's signed card"),
                "tags": [c], "inputModes": ["application/json", "text/plain"],
                "outputModes": ["application/json", "text/plain"]
            })
        })
        .collect();
    json!({
        "name": format!("agentmesh:{amid}"),
        "description": format!("AgentMesh agent {amid}, reached end-to-end encrypted over the mesh"),
        "version": env!("CARGO_PKG_VERSION"),
        "provider": { "organization": "AgentMesh", "url": "https://agentmesh.dev" },
        "supportedInterfaces": [
            { "url": url, "protocolBinding": "JSONRPC", "protocolVersion": PROTOCOL_VERSION },
            { "url": format!("agentmesh:{amid}"), "protocolBinding": BINDING_URI, "protocolVersion": PROTOCOL_VERSION }
        ],
        "capabilities": {
            "streaming": true,
            "pushNotifications": false,
            "extensions": [{
                "uri": KNOCK_EXTENSION_URI,
                "description": "First contact is a KNOCK judged by the receiver's deterministic policy; a refused KNOCK is JSON-RPC error -32050"
            }]
        },
        "defaultInputModes": ["application/json", "text/plain"],
        "defaultOutputModes": ["application/json", "text/plain"],
        "skills": skills,
    })
}

/// The RFC 8785 (JCS) form of `value`: keys sorted, no white space. Our
/// cards hold strings, integers, booleans, arrays and objects, for which
/// serde_json's compact output with sorted maps is the JCS form.
fn canonical(value: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let sorted: std::collections::BTreeMap<&String, Value> =
                    o.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

/// Signs `card` (without `signatures`): a JWS with a detached payload.
fn sign_card(ctx: &Ctx, card: &mut Value) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({ "alg": "EdDSA", "typ": "JOSE", "kid": ctx.node.amid().to_string() });
    let protected = b64.encode(canonical(&header));
    let payload = b64.encode(canonical(card));
    let signing_input = format!("{protected}.{payload}");
    let signature = ctx.node.identity().sign_jws(&signing_input);
    card["signatures"] = json!([{ "protected": protected, "signature": b64.encode(signature) }]);
}

async fn own_card(State(ctx): State<Arc<Ctx>>) -> Response {
    let amid = ctx.node.amid();
    let Some(card) = ctx.node.lookup(&amid).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "this agent's card is not published yet" })),
        )
            .into_response();
    };
    let mut a2a = agent_card(&card, &format!("{}/a2a/{amid}", base_url(&ctx)));
    sign_card(&ctx, &mut a2a);
    Json(a2a).into_response()
}

async fn remote_card(State(ctx): State<Arc<Ctx>>, Path(text): Path<String>) -> Response {
    let Ok(amid) = text.parse::<Amid>() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("invalid AMID {text:?}") })),
        )
            .into_response();
    };
    match ctx.node.lookup(&amid).await {
        Some(card) => {
            Json(agent_card(&card, &format!("{}/a2a/{amid}", base_url(&ctx)))).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no card found for {amid}") })),
        )
            .into_response(),
    }
}

/// A JSON-RPC request, checked.
fn parse_rpc(body: &[u8]) -> Result<(Value, Value, String), Value> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        rpc_error(
            &Value::Null,
            codes::PARSE_ERROR,
            format!("parse error: {e}"),
        )
    })?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let valid_id = matches!(id, Value::String(_) | Value::Number(_) | Value::Null);
    let method = v.get("method").and_then(Value::as_str).map(str::to_owned);
    match (v.get("jsonrpc").and_then(Value::as_str), method, valid_id) {
        (Some("2.0"), Some(method), true) if v.is_object() => Ok((v, id, method)),
        _ => Err(rpc_error(
            &id,
            codes::INVALID_REQUEST,
            "invalid request: a JSON-RPC 2.0 object with a method is expected",
        )),
    }
}

async fn call(
    State(ctx): State<Arc<Ctx>>,
    Path(text): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (rpc, id, method) = match parse_rpc(&body) {
        Ok(r) => r,
        Err(e) => return Json(e).into_response(),
    };
    let Some(streaming) = carried(&method) else {
        let (code, what) = if method.contains("PushNotification")
            || method.contains("pushNotification")
        {
            (
                codes::PUSH_NOT_SUPPORTED,
                "push notifications are not supported",
            )
        } else if method == "GetExtendedAgentCard" || method == "agent/getAuthenticatedExtendedCard"
        {
            (
                codes::EXTENDED_CARD_NOT_CONFIGURED,
                "no extended agent card",
            )
        } else {
            (codes::METHOD_NOT_FOUND, "method not found")
        };
        return Json(rpc_error(&id, code, format!("{what}: {method}"))).into_response();
    };
    let Ok(to) = text.parse::<Amid>() else {
        return Json(rpc_error(
            &id,
            codes::INVALID_PARAMS,
            format!("invalid AMID in the URL: {text:?}"),
        ))
        .into_response();
    };
    let version = headers
        .get("a2a-version")
        .and_then(|h| h.to_str().ok())
        .unwrap_or(PROTOCOL_VERSION)
        .to_owned();
    let payload = json!({
        keys::RPC: rpc,
        keys::STREAM: streaming,
        keys::VERSION: version,
        keys::INCREMENTAL: true,
    });
    let answer = ctx
        .node
        .request(&to, Intent::default(), payload, ANSWER_TIMEOUT)
        .await;
    let reply = match answer {
        Ok(m) => m.payload,
        Err(e) => return Json(send_error(&id, e)).into_response(),
    };
    if streaming {
        let (events, more) = stream_batch(&reply, &id);
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        // The requests for the next events name the call, without its
        // parameters.
        let call = json!({ "jsonrpc": "2.0", "id": id, "method": method });
        tokio::spawn(forward(ctx, to, call, id, events, more, tx));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let e = rx.recv().await?;
            Some((
                Ok::<_, Infallible>(Event::default().data(e.to_string())),
                rx,
            ))
        });
        return Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    match reply.get(keys::RPC) {
        Some(answer) => Json(answer.clone()).into_response(),
        None => Json(rpc_error(
            &id,
            codes::INTERNAL,
            "the agent answered without an A2A response",
        ))
        .into_response(),
    }
}

/// The JSON-RPC error for a request the mesh did not carry.
fn send_error(id: &Value, e: SendError) -> Value {
    let (code, message) = match &e {
        SendError::Rejected(reason) => (
            codes::KNOCK_REJECTED,
            format!("refused by the agent's KNOCK policy: {reason}"),
        ),
        SendError::Timeout { .. } => (
            codes::UNREACHABLE,
            "the agent did not answer in time".to_owned(),
        ),
        other => (codes::UNREACHABLE, other.to_string()),
    };
    let mut err = rpc_error(id, code, message);
    if let SendError::Rejected(reason) = e {
        err["error"]["data"] = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "KNOCK_REJECTED",
            "domain": "agentmesh.dev",
            "metadata": { "reason": reason.to_string() }
        }]);
    }
    err
}

/// The events of a streaming reply, and the id of the stream when more are
/// to come.
fn stream_batch(reply: &Value, id: &Value) -> (Vec<Value>, Option<String>) {
    let events = match reply.get(keys::STREAM_EVENTS) {
        Some(Value::Array(events)) => events.clone(),
        _ => vec![reply
            .get(keys::RPC)
            .cloned()
            .unwrap_or_else(|| rpc_error(id, codes::INTERNAL, "bad answer from the agent"))],
    };
    let more = reply
        .get(keys::MORE)
        .and_then(Value::as_str)
        .map(str::to_owned);
    (events, more)
}

/// Passes a streaming answer's events to the A2A client (`tx`) as they
/// come: the first batch, then each next one asked of the serving node
/// while it says more are to come (`call`: the call's id and method, as
/// those requests name it). Stops when the client goes away (and
/// tells the serving node), when the API stops, or on an error (the
/// client's last event then is a JSON-RPC error).
async fn forward(
    ctx: Arc<Ctx>,
    to: Amid,
    call: Value,
    id: Value,
    mut events: Vec<Value>,
    mut more: Option<String>,
    tx: mpsc::Sender<Value>,
) {
    let mut batch = 1u64;
    loop {
        for e in events.drain(..) {
            if tx.send(e).await.is_err() {
                if let Some(stream) = more {
                    close_stream(&ctx, &to, &call, &stream).await;
                }
                return;
            }
        }
        let Some(stream) = more.take() else { return };
        let next = json!({
            keys::RPC: call,
            keys::NEXT: { "stream": stream, "batch": batch },
        });
        let pull = ctx
            .node
            .request(&to, Intent::default(), next, ANSWER_TIMEOUT);
        tokio::pin!(pull);
        let answer = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tx.closed() => {
                // Closing the stream answers the pending request at once;
                // it is waited for, so its answer does not end up in the
                // inbox as a reply nobody waits for.
                let _ = tokio::join!(close_stream(&ctx, &to, &call, &stream), &mut pull);
                return;
            }
            a = &mut pull => a,
        };
        match answer {
            Ok(m) => (events, more) = stream_batch(&m.payload, &id),
            Err(e) => {
                debug!(error = %e, "the next events of an A2A stream did not come");
                let _ = tx.send(send_error(&id, e)).await;
                return;
            }
        }
        batch += 1;
    }
}

/// Tells the serving node that nobody reads stream `stream` any more.
async fn close_stream(ctx: &Ctx, to: &Amid, rpc: &Value, stream: &str) {
    let close = json!({ keys::RPC: rpc, keys::NEXT: { "stream": stream, "close": true } });
    let closed = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        r = ctx.node.request(to, Intent::default(), close, CLOSE_TIMEOUT) => r,
    };
    if let Err(e) = closed {
        debug!(error = %e, "an A2A stream's end not delivered");
    }
}

/// Reads `data` as the gateway reads bytes from others: a JSON-RPC request
/// from an A2A client, and an SSE body from an upstream A2A server. For the
/// fuzz target; never panics.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) -> (bool, usize) {
    let rpc = parse_rpc(data);
    if let Ok((v, _, method)) = &rpc {
        assert!(v.is_object());
        let _ = carried(method);
    }
    let events = sse::events(data, MAX_A2A_BODY).map_or(0, |e| e.len());
    (rpc.is_ok(), events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({ "b": 1, "a": { "d": [ { "z": true, "y": "é" } ], "c": "x" } });
        assert_eq!(
            canonical(&v),
            r#"{"a":{"c":"x","d":[{"y":"é","z":true}]},"b":1}"#
        );
    }

    #[test]
    fn json_rpc_envelopes_are_checked() {
        assert_eq!(
            parse_rpc(b"{nope").unwrap_err()["error"]["code"],
            codes::PARSE_ERROR
        );
        for bad in [
            r#"[]"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"SendMessage"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"SendMessage"}"#,
        ] {
            let e = parse_rpc(bad.as_bytes()).unwrap_err();
            assert_eq!(e["error"]["code"], codes::INVALID_REQUEST, "{bad}");
        }
        let (_, id, method) =
            parse_rpc(br#"{"jsonrpc":"2.0","id":"7","method":"SendMessage","params":{}}"#).unwrap();
        assert_eq!((id, method.as_str()), (json!("7"), "SendMessage"));
    }

    #[test]
    fn methods_carried_and_their_streaming() {
        assert_eq!(carried("SendMessage"), Some(false));
        assert_eq!(carried("message/send"), Some(false));
        assert_eq!(carried("SendStreamingMessage"), Some(true));
        assert_eq!(carried("CreateTaskPushNotificationConfig"), None);
        assert_eq!(carried("Nope"), None);
    }
}
