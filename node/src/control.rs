//! How the `agentmesh` command line (and the devnet) drive a running node:
//! requests carried over the node's local API (see [`crate::api`]) on the
//! Unix socket in its data directory, with the token from its `api.json`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
/// HTTP methods, for [`Client::call`].
pub use hyper::Method;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::{
    api::{ApiError, ApiInfo, ErrorCode},
    audit::AuditEntry,
    card::AgentCard,
    events::{Message, Receipt},
    knock::RejectReason,
    runtime::{CredentialsState, NodeStatus},
    trust::receipts::Held,
};

/// File name of the node's Unix socket inside the data directory.
pub const SOCKET_FILE: &str = crate::api::SOCKET_FILE;

/// A request to the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Send a message and wait for its receipt.
    Send {
        /// Recipient AMID.
        to: String,
        /// JSON payload.
        payload: Value,
        /// Capability declared in the KNOCK.
        #[serde(default)]
        capability: Option<String>,
        /// Schema the payload follows ([`crate::schema`]).
        #[serde(default)]
        schema: Option<String>,
    },
    /// Report status.
    Status,
    /// Block an agent.
    Block {
        /// The AMID.
        amid: String,
    },
    /// Read the policy file again.
    ReloadPolicy,
    /// List (and optionally verify) the audit log.
    Audit {
        /// Only entries about this AMID.
        #[serde(default)]
        peer: Option<String>,
        /// Only entries of this kind (e.g. `knock_decision`).
        #[serde(default)]
        kind: Option<String>,
        /// Only the most recent N.
        #[serde(default)]
        limit: Option<usize>,
        /// Verify the whole chain.
        #[serde(default)]
        verify: bool,
    },
    /// Close sessions at once and block: one agent, or everyone.
    Kill {
        /// The agent; `None` for all.
        #[serde(default)]
        amid: Option<String>,
    },
    /// Turn the kill switch for everyone off.
    ClearKill,
    /// Set this agent's presence.
    Presence {
        /// online, away, dnd or offline.
        state: String,
    },
    /// Look an agent's card up in the DHT.
    Lookup {
        /// The agent.
        amid: String,
    },
    /// End every session with an agent.
    Close {
        /// The agent.
        amid: String,
    },
    /// Close every connection to an agent. Sessions stay: the next message
    /// finds a path again (direct, relayed or mailbox).
    Disconnect {
        /// The agent.
        amid: String,
    },
    /// List the session receipts held (both sides signed) and where each
    /// stands with the registry.
    Receipts,
    /// Show new credentials in KNOCKs: read them again from the data
    /// directory (after `agentmesh verify`), or, with `renew`, fetch fresh
    /// ones from the configured registry.
    Credentials {
        /// Fetch from the registry instead of reading the stored file.
        #[serde(default)]
        renew: bool,
    },
    /// Send a request and wait for its reply.
    SendRequest {
        /// Recipient AMID.
        to: String,
        /// JSON payload.
        payload: Value,
        /// Capability declared in the KNOCK.
        #[serde(default)]
        capability: Option<String>,
        /// Schema the payload follows ([`crate::schema`]).
        #[serde(default)]
        schema: Option<String>,
        /// How long to wait for the reply. Defaults to 30 s.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Reply to a received request or message.
    Reply {
        /// The agent that sent it.
        to: String,
        /// Its message id (hex).
        id: String,
        /// Its session (hex): the reply fails when that session has ended.
        /// Defaults to the current session with the agent.
        #[serde(default)]
        session: Option<String>,
        /// JSON payload.
        payload: Value,
    },
    /// End the conversation with an agent (an ordered end message).
    End {
        /// The agent.
        amid: String,
    },
    /// Send a file as a stream of chunks.
    Stream {
        /// Recipient AMID.
        to: String,
        /// The file to send (read by the node, which runs as the same user).
        path: PathBuf,
        /// Bytes per chunk. Defaults to 16 KiB.
        #[serde(default)]
        chunk_size: Option<usize>,
        /// Capability declared in the KNOCK.
        #[serde(default)]
        capability: Option<String>,
    },
}

/// The node's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Response {
    /// Whether the request succeeded.
    #[serde(default)]
    pub ok: bool,
    /// The receipt of a sent message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The API's code for what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Why the recipient refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// Hash of the policy in force (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Audit log entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Vec<AuditEntry>>,
    /// Number of audit entries whose chain verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<u64>,
    /// A looked-up card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<AgentCard>,
    /// The reply to a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Message>,
    /// Chunks of a sent stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Bytes of a sent stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Session receipts held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<Vec<Held>>,
    /// The credentials now shown in KNOCKs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsState>,
}

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No node is listening on the socket.
    #[error("no running node at {path} (start one with `agentmesh run`): {source}")]
    NotRunning {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed.
    #[error("local API: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange failed.
    #[error("local API: {0}")]
    Http(#[from] hyper::Error),
    /// The node answered something unreadable.
    #[error("bad response: {0}")]
    BadResponse(String),
}

/// A client of a node's local API over its Unix socket.
#[derive(Debug)]
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    token: String,
}

impl Client {
    /// Connects to the node whose data directory is `dir`.
    pub async fn connect(dir: &Path) -> Result<Self, ControlError> {
        let not_running = |source| ControlError::NotRunning {
            path: dir.to_owned(),
            source,
        };
        let info = ApiInfo::read(dir).map_err(not_running)?;
        let stream = UnixStream::connect(&info.socket)
            .await
            .map_err(not_running)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "local API connection ended");
            }
        });
        Ok(Self {
            sender,
            token: info.token,
        })
    }

    /// Calls `method path` with a JSON `body`; the answer's JSON (a
    /// successful answer that is not JSON, such as `/metrics`, as a JSON
    /// string), or the API's error.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<Value, ApiError>, ControlError> {
        let bytes = match body {
            Some(b) => {
                serde_json::to_vec(b).map_err(|e| ControlError::BadResponse(e.to_string()))?
            }
            None => Vec::new(),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ControlError::BadResponse(e.to_string()))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let ok = resp.status().is_success();
        let body = resp.into_body().collect().await?.to_bytes();
        let value: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            // A page or the metrics: the text itself.
            Err(_) if ok => Value::String(String::from_utf8_lossy(&body).into_owned()),
            Err(e) => return Err(ControlError::BadResponse(e.to_string())),
        };
        if ok {
            return Ok(Ok(value));
        }
        let err: ApiError = serde_json::from_value(value["error"].clone())
            .map_err(|e| ControlError::BadResponse(e.to_string()))?;
        Ok(Err(err))
    }

    /// Sends `req` and reads the response.
    pub async fn request(&mut self, req: &Request) -> Result<Response, ControlError> {
        let (method, path, body) = route(req);
        match self.call(method, &path, body.as_ref()).await? {
            Ok(value) => {
                let mut resp: Response = serde_json::from_value(value)
                    .map_err(|e| ControlError::BadResponse(e.to_string()))?;
                resp.ok = true;
                Ok(resp)
            }
            Err(e) => Ok(Response {
                ok: false,
                error: Some(e.message),
                code: Some(e.code),
                reason: e.reason,
                ..Response::default()
            }),
        }
    }
}

/// The API route of a request.
fn route(req: &Request) -> (Method, String, Option<Value>) {
    let post = |path: &str, body: Value| (Method::POST, path.to_owned(), Some(body));
    match req {
        Request::Send {
            to,
            payload,
            capability,
            schema,
        } => post(
            "/v1/send",
            json!({ "to": to, "payload": payload, "capability": capability, "schema": schema }),
        ),
        Request::SendRequest {
            to,
            payload,
            capability,
            schema,
            timeout_ms,
        } => post(
            "/v1/request",
            json!({
                "to": to, "payload": payload, "capability": capability, "schema": schema,
                "timeout_ms": timeout_ms
            }),
        ),
        Request::Reply {
            to,
            id,
            session,
            payload,
        } => post(
            "/v1/reply",
            json!({ "to": to, "id": id, "session": session, "payload": payload }),
        ),
        Request::End { amid } => post("/v1/end", json!({ "amid": amid })),
        Request::Stream {
            to,
            path,
            chunk_size,
            capability,
        } => post(
            "/v1/stream",
            json!({ "to": to, "path": path, "chunk_size": chunk_size, "capability": capability }),
        ),
        Request::Status => (Method::GET, "/v1/status".into(), None),
        Request::Block { amid } => post("/v1/block", json!({ "amid": amid })),
        Request::ReloadPolicy => post("/v1/policy/reload", json!({})),
        Request::Audit {
            peer,
            kind,
            limit,
            verify,
        } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(p) = peer {
                query.append_pair("peer", p);
            }
            if let Some(k) = kind {
                query.append_pair("kind", k);
            }
            if let Some(l) = limit {
                query.append_pair("limit", &l.to_string());
            }
            if *verify {
                query.append_pair("verify", "true");
            }
            (Method::GET, format!("/v1/audit?{}", query.finish()), None)
        }
        Request::Kill { amid } => post("/v1/kill", json!({ "amid": amid })),
        Request::ClearKill => post("/v1/kill/clear", json!({})),
        Request::Presence { state } => (
            Method::PUT,
            "/v1/presence".into(),
            Some(json!({ "state": state })),
        ),
        Request::Lookup { amid } => (
            Method::GET,
            format!(
                "/v1/lookup/{}",
                url::form_urlencoded::byte_serialize(amid.as_bytes()).collect::<String>()
            ),
            None,
        ),
        Request::Close { amid } => post("/v1/close", json!({ "amid": amid })),
        Request::Disconnect { amid } => post("/v1/disconnect", json!({ "amid": amid })),
        Request::Receipts => (Method::GET, "/v1/receipts".into(), None),
        Request::Credentials { renew } => post("/v1/credentials", json!({ "renew": renew })),
    }
}
