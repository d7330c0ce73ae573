//! The A2A gateway: Agent2Agent (v1.0, JSON-RPC binding) on loopback, over
//! the mesh.
//!
//! - **Outbound:** every agent is reachable at `/a2a/<AMID>` (its A2A card at
//!   `/a2a/<AMID>/.well-known/agent-card.json`). A JSON-RPC request posted
//!   there is carried as an AgentMesh request (KNOCK, Olm, direct or relayed
//!   path) to that agent, and its answer comes back as the HTTP answer (one
//!   JSON-RPC response, or Server-Sent Events for the streaming methods).
//! - **Inbound:** a node with an upstream A2A server hands each A2A request
//!   it accepted to that server and carries the answer back. Without one,
//!   A2A requests reach the application's inbox like any request.
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
        sse::{Event, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::{loopback_host, Ctx};
use crate::{
    card::AgentCard, events::Message, identity::Amid, knock::Intent, runtime::InboxKey,
    runtime::SendError,
};

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
    let payload = json!({ "a2a": rpc, "stream": streaming, "version": version });
    let answer = ctx
        .node
        .request(&to, Intent::default(), payload, ANSWER_TIMEOUT)
        .await;
    let reply = match answer {
        Ok(m) => m.payload,
        Err(e) => {
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
            let mut err = rpc_error(&id, code, message);
            if let SendError::Rejected(reason) = e {
                err["error"]["data"] = json!([{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "KNOCK_REJECTED",
                    "domain": "agentmesh.dev",
                    "metadata": { "reason": reason.to_string() }
                }]);
            }
            return Json(err).into_response();
        }
    };
    if streaming {
        let events: Vec<Value> = match reply.get("a2a_stream") {
            Some(Value::Array(events)) => events.clone(),
            _ => vec![reply
                .get("a2a")
                .cloned()
                .unwrap_or_else(|| rpc_error(&id, codes::INTERNAL, "bad answer from the agent"))],
        };
        let stream = futures::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, Infallible>(Event::default().data(e.to_string()))),
        );
        return Sse::new(stream).into_response();
    }
    match reply.get("a2a") {
        Some(answer) => Json(answer.clone()).into_response(),
        None => Json(rpc_error(
            &id,
            codes::INTERNAL,
            "the agent answered without an A2A response",
        ))
        .into_response(),
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
    let events = sse_events(&String::from_utf8_lossy(data)).map_or(0, |e| e.len());
    (rpc.is_ok(), events)
}

/// Whether `m` is an A2A request carried by a gateway.
pub(super) fn is_a2a_request(m: &Message) -> bool {
    m.kind == crate::events::MessageKind::Request && m.payload.get("a2a").is_some()
}

/// Hands an A2A request that arrived over the mesh to the upstream A2A
/// server, replies with its answer and acknowledges the request.
pub(super) async fn serve_upstream(ctx: Arc<Ctx>, upstream: url::Url, m: Message, key: InboxKey) {
    let rpc = m.payload.get("a2a").cloned().unwrap_or(Value::Null);
    let id = rpc.get("id").cloned().unwrap_or(Value::Null);
    let streaming = m
        .payload
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let version = m
        .payload
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or(PROTOCOL_VERSION)
        .to_owned();
    let answer = match post_upstream(&upstream, &rpc, streaming, &version).await {
        Ok(UpstreamAnswer::One(v)) => json!({ "a2a": v }),
        Ok(UpstreamAnswer::Stream(events)) => json!({ "a2a_stream": events }),
        Err(e) => {
            warn!(error = %e, "upstream A2A server failed");
            json!({ "a2a": rpc_error(&id, codes::INTERNAL, format!("upstream A2A server: {e}")) })
        }
    };
    match ctx
        .node
        .reply_to(&m.from, m.id, Some(m.session), answer)
        .await
    {
        Ok(_) => {
            if let Err(e) = ctx.node.ack([key]).await {
                warn!(error = %e, "could not acknowledge an A2A request");
            }
        }
        Err(e) => debug!(error = %e, "A2A answer not delivered"),
    }
}

/// The `data` of each event of an SSE body, as JSON.
fn sse_events(body: &str) -> Result<Vec<Value>, UpstreamError> {
    // Lines end in CRLF, CR or LF (the SSE grammar); events end at a blank
    // line.
    let text = body.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&data.join("\n"))
            .map_err(|e| UpstreamError::Bad(format!("bad SSE event: {e}")))?;
        events.push(v);
    }
    Ok(events)
}

enum UpstreamAnswer {
    One(Value),
    Stream(Vec<Value>),
}

/// Errors talking to the upstream A2A server.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Bad(String),
}

async fn post_upstream(
    url: &url::Url,
    rpc: &Value,
    streaming: bool,
    version: &str,
) -> Result<UpstreamAnswer, UpstreamError> {
    let host = url
        .host_str()
        .ok_or_else(|| UpstreamError::Bad("upstream URL has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let req = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::ACCEPT,
            if streaming {
                "text/event-stream"
            } else {
                "application/json"
            },
        )
        .header("A2A-Version", version)
        .body(Full::new(Bytes::from(rpc.to_string())))
        .map_err(|e| UpstreamError::Bad(e.to_string()))?;
    let resp = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| UpstreamError::Bad("no answer in time".into()))??;
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| t.contains("text/event-stream"));
    let body = tokio::time::timeout(ANSWER_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| UpstreamError::Bad("answer not finished in time".into()))??
        .to_bytes();
    if body.len() > crate::envelope::MAX_PAYLOAD_SIZE {
        return Err(UpstreamError::Bad(
            "answer too large for one message".into(),
        ));
    }
    if is_sse {
        let events = sse_events(&String::from_utf8_lossy(&body))?;
        return Ok(UpstreamAnswer::Stream(events));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::Bad(format!("bad JSON answer: {e}")))?;
    if streaming {
        Ok(UpstreamAnswer::Stream(vec![v]))
    } else {
        Ok(UpstreamAnswer::One(v))
    }
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
    fn upstream_sse_events_split_on_any_line_ending() {
        let body = "data: {\"a\":1}\r\n\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\n: comment\n\ndata: {\"c\":3}\n\n";
        assert_eq!(
            sse_events(body).unwrap(),
            vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]
        );
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
