//! The local control socket: how the `agentmesh` CLI (and the devnet) talk to
//! a running node. A Unix socket in the data directory, readable only by its
//! owner, carrying one JSON request and one JSON response per line.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::{
    audit::{AuditEntry, AuditFilter},
    card::{AgentCard, Presence},
    envelope::{MessageId, SessionId},
    events::{Message, Receipt},
    identity::Amid,
    knock::{Intent, RejectReason},
    node::{CredentialsState, Node, NodeStatus, SendError},
    receipts::Held,
};

/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "agentmesh.sock";
/// Longest request line accepted.
const MAX_LINE: usize = 1024 * 1024;

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
        payload: serde_json::Value,
        /// Capability declared in the KNOCK.
        #[serde(default)]
        capability: Option<String>,
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
        payload: serde_json::Value,
        /// Capability declared in the KNOCK.
        #[serde(default)]
        capability: Option<String>,
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
        payload: serde_json::Value,
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

/// Default wait for a reply to a request sent through the control socket.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default chunk size of a stream sent through the control socket.
const DEFAULT_CHUNK_SIZE: usize = 16 * 1024;

/// The node's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Response {
    /// Whether the request succeeded.
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

impl Response {
    fn error(e: impl ToString) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            ..Self::default()
        }
    }

    fn send_error(e: SendError) -> Self {
        match e {
            SendError::Rejected(reason) => Self {
                ok: false,
                error: Some(format!("rejected: {reason}")),
                reason: Some(reason),
                ..Self::default()
            },
            e => Self::error(e),
        }
    }

    fn receipt(r: Result<Receipt, SendError>) -> Self {
        match r {
            Ok(r) => Self {
                ok: true,
                receipt: Some(r),
                ..Self::default()
            },
            Err(e) => Self::send_error(e),
        }
    }
}

/// A 16-byte id from its hex form.
fn id16(hex_text: &str) -> Option<[u8; 16]> {
    hex::decode(hex_text)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
}

fn intent(capability: Option<String>) -> Intent {
    let mut intent = Intent::default();
    if let Some(c) = capability {
        intent.capability = c;
    }
    intent
}

/// Sends the file at `path` to `to` as a stream.
async fn send_file(
    node: &Node,
    to: &Amid,
    path: &Path,
    chunk_size: usize,
    intent: Intent,
) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return Response::error(format!("{}: {e}", path.display())),
    };
    let mut tx = node.open_stream(to, intent);
    let mut bytes = 0u64;
    loop {
        let mut buf = vec![0u8; chunk_size];
        let mut filled = 0;
        while filled < chunk_size {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Response::error(format!("{}: {e}", path.display())),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        bytes += filled as u64;
        if let Err(e) = tx.send_chunk(buf).await {
            return Response::send_error(e);
        }
    }
    match tx.finish().await {
        Ok(chunks) => Response {
            ok: true,
            chunks: Some(chunks),
            bytes: Some(bytes),
            ..Response::default()
        },
        Err(e) => Response::send_error(e),
    }
}

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No node is listening on the socket.
    #[error("no running node at {path} (start one with `agentmesh run`): {source}")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The node answered something unreadable.
    #[error("bad response: {0}")]
    BadResponse(String),
}

/// Creates the control socket at `path`, readable by its owner only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Answers requests on the control socket (see [`bind`]) until the node
/// stops.
pub async fn serve(node: Node, listener: UnixListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(node, stream).await {
                debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn handle(node: Node, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_LINE as u64 * 64)).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_LINE {
            warn!("control request too long");
            break;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(&node, req).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt;

async fn answer(node: &Node, req: Request) -> Response {
    match req {
        Request::Send {
            to,
            payload,
            capability,
        } => {
            let to: Amid = match to.parse() {
                Ok(a) => a,
                Err(e) => return Response::error(format!("invalid AMID: {e}")),
            };
            Response::receipt(node.send_with(&to, payload, intent(capability)).await)
        }
        Request::SendRequest {
            to,
            payload,
            capability,
            timeout_ms,
        } => {
            let to: Amid = match to.parse() {
                Ok(a) => a,
                Err(e) => return Response::error(format!("invalid AMID: {e}")),
            };
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS));
            match node
                .request(&to, intent(capability), payload, timeout)
                .await
            {
                Ok(m) => Response {
                    ok: true,
                    reply: Some(m),
                    ..Response::default()
                },
                Err(e) => Response::send_error(e),
            }
        }
        Request::Reply {
            to,
            id,
            session,
            payload,
        } => {
            let to: Amid = match to.parse() {
                Ok(a) => a,
                Err(e) => return Response::error(format!("invalid AMID: {e}")),
            };
            let Some(id) = id16(&id) else {
                return Response::error("invalid message id: 32 hex digits expected");
            };
            let session = match session.map(|s| id16(&s)) {
                None => None,
                Some(Some(s)) => Some(SessionId(s)),
                Some(None) => return Response::error("invalid session: 32 hex digits expected"),
            };
            Response::receipt(node.reply_to(&to, MessageId(id), session, payload).await)
        }
        Request::End { amid } => match amid.parse::<Amid>() {
            Ok(a) => match node.end_conversation(&a).await {
                Ok(_) => Response {
                    ok: true,
                    ..Response::default()
                },
                Err(e) => Response::send_error(e),
            },
            Err(e) => Response::error(format!("invalid AMID: {e}")),
        },
        Request::Stream {
            to,
            path,
            chunk_size,
            capability,
        } => {
            let to: Amid = match to.parse() {
                Ok(a) => a,
                Err(e) => return Response::error(format!("invalid AMID: {e}")),
            };
            let size = chunk_size
                .unwrap_or(DEFAULT_CHUNK_SIZE)
                .clamp(1, crate::content::MAX_CHUNK_SIZE);
            send_file(node, &to, &path, size, intent(capability)).await
        }
        Request::Status => Response {
            ok: true,
            status: Some(node.status().await),
            ..Response::default()
        },
        Request::Audit {
            peer,
            kind,
            limit,
            verify,
        } => {
            let mut filter = AuditFilter::default();
            if let Some(p) = peer {
                match p.parse() {
                    Ok(a) => filter = filter.peer(a),
                    Err(e) => return Response::error(format!("invalid AMID: {e}")),
                }
            }
            if let Some(k) = kind {
                filter = filter.kind(k);
            }
            if let Some(l) = limit {
                filter = filter.limit(l);
            }
            let verified = if verify {
                match node.verify_audit_log() {
                    Ok(n) => Some(n),
                    Err(e) => return Response::error(format!("audit chain: {e}")),
                }
            } else {
                None
            };
            match node.audit_log(&filter) {
                Ok(entries) => Response {
                    ok: true,
                    audit: Some(entries),
                    verified,
                    ..Response::default()
                },
                Err(e) => Response::error(format!("audit log: {e}")),
            }
        }
        Request::Kill { amid } => {
            let target = match amid.map(|a| a.parse::<Amid>()).transpose() {
                Ok(t) => t,
                Err(e) => return Response::error(format!("invalid AMID: {e}")),
            };
            node.kill(target).await;
            Response {
                ok: true,
                ..Response::default()
            }
        }
        Request::Presence { state } => match state.parse::<Presence>() {
            Ok(p) => {
                node.set_presence(p).await;
                Response {
                    ok: true,
                    ..Response::default()
                }
            }
            Err(e) => Response::error(e),
        },
        Request::Lookup { amid } => match amid.parse::<Amid>() {
            Ok(a) => match node.lookup(&a).await {
                Some(card) => Response {
                    ok: true,
                    card: Some(card),
                    ..Response::default()
                },
                None => Response::error(format!("no card found for {a}")),
            },
            Err(e) => Response::error(format!("invalid AMID: {e}")),
        },
        Request::Close { amid } => match amid.parse::<Amid>() {
            Ok(a) => {
                let n = node.close_session(&a).await;
                Response {
                    ok: n > 0,
                    error: (n == 0).then(|| format!("no session with {a}")),
                    ..Response::default()
                }
            }
            Err(e) => Response::error(format!("invalid AMID: {e}")),
        },
        Request::Disconnect { amid } => match amid
            .parse::<Amid>()
            .map_err(|e| e.to_string())
            .and_then(|a| a.peer_id().map_err(|e| e.to_string()))
        {
            Ok(peer) => {
                node.disconnect(peer).await;
                Response {
                    ok: true,
                    ..Response::default()
                }
            }
            Err(e) => Response::error(format!("invalid AMID: {e}")),
        },
        Request::Receipts => Response {
            ok: true,
            receipts: Some(node.receipts()),
            ..Response::default()
        },
        Request::Credentials { renew } => {
            let state = if renew {
                node.renew_credentials().await.map(Some)
            } else {
                node.reload_credentials()
            };
            match state {
                Ok(Some(state)) => Response {
                    ok: true,
                    credentials: Some(state),
                    ..Response::default()
                },
                Ok(None) => Response::error("no credentials stored (run `agentmesh verify`)"),
                Err(e) => Response::error(e),
            }
        }
        Request::ClearKill => {
            node.clear_kill();
            Response {
                ok: true,
                ..Response::default()
            }
        }
        Request::ReloadPolicy => match node.reload_policy() {
            Ok(h) => Response {
                ok: true,
                policy_hash: Some(hex::encode(h)),
                ..Response::default()
            },
            Err(e) => Response::error(e),
        },
        Request::Block { amid } => match amid.parse() {
            Ok(a) => {
                node.block(a);
                Response {
                    ok: true,
                    ..Response::default()
                }
            }
            Err(e) => Response::error(format!("invalid AMID: {e}")),
        },
    }
}

/// A client of a node's control socket.
#[derive(Debug)]
pub struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the node whose data directory is `dir`.
    pub async fn connect(dir: &Path) -> Result<Self, ControlError> {
        let path = dir.join(SOCKET_FILE);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ControlError::NotRunning { path, source })?;
        let (r, w) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(r).lines(),
            w,
        })
    }

    /// Sends `req` and reads the response.
    pub async fn request(&mut self, req: &Request) -> Result<Response, ControlError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| ControlError::BadResponse(e.to_string()))?;
        line.push(b'\n');
        self.w.write_all(&line).await?;
        let resp = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| ControlError::BadResponse("connection closed".into()))?;
        serde_json::from_str(&resp).map_err(|e| ControlError::BadResponse(e.to_string()))
    }
}
