//! Loopback stand-ins for the outside services a registry verifies against,
//! for tests and local development networks: a small OpenID Connect provider
//! ([`OidcProvider`]) and an authoritative DNS nameserver ([`DnsServer`]).
//! Both speak the real protocols (HTTP redirects and forms; DNS over UDP) on
//! `127.0.0.1` and stop when dropped.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use agentmesh_bootstrap::loopback::{DnsServer, OidcProvider};
//!
//! let oidc = OidcProvider::spawn("user-42").await?;
//! println!("authorize at {}", oidc.authorize_url());
//! let dns = DnsServer::spawn().await?;
//! dns.publish("_agentmesh.example.org.", &["agentmesh-verify=..."]);
//! # Ok(())
//! # }
//! ```

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Json, Router,
};
use hickory_resolver::proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::TXT, RData, Record, RecordType},
};
use tokio::task::JoinHandle;

use crate::oauth::pkce_challenge;

/// Client id the provider accepts.
pub const CLIENT_ID: &str = "test-client";
/// Client secret the provider accepts.
pub const CLIENT_SECRET: &str = "test-secret";

#[derive(Default)]
struct ProviderState {
    subject: String,
    /// code -> (PKCE challenge, redirect URI)
    codes: Mutex<HashMap<String, (String, String)>>,
    /// access token -> subject
    tokens: Mutex<HashMap<String, String>>,
    counter: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An OpenID-Connect-like provider: `/authorize` consents at once and
/// redirects with a one-time code bound to the PKCE challenge; `/token`
/// checks client, redirect URI, code and verifier; `/userinfo` checks the
/// bearer token and names the configured subject (email
/// `alice@example.org`).
#[derive(Debug)]
pub struct OidcProvider {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OidcProvider {
    /// Serves on a free loopback port; every login is `subject`.
    pub async fn spawn(subject: &str) -> std::io::Result<Self> {
        let state = Arc::new(ProviderState {
            subject: subject.to_owned(),
            ..ProviderState::default()
        });
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "loopback OIDC provider stopped");
            }
        });
        Ok(Self { addr, task })
    }

    /// The authorization endpoint.
    pub fn authorize_url(&self) -> String {
        format!("http://{}/authorize", self.addr)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The user-info endpoint.
    pub fn userinfo_url(&self) -> String {
        format!("http://{}/userinfo", self.addr)
    }
}

async fn authorize(
    State(s): State<Arc<ProviderState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("response_type").map(String::as_str) != Some("code")
        || q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad authorize request").into_response();
    }
    let (Some(redirect), Some(state), Some(challenge)) = (
        q.get("redirect_uri"),
        q.get("state"),
        q.get("code_challenge"),
    ) else {
        return (StatusCode::BAD_REQUEST, "missing parameter").into_response();
    };
    let Ok(mut to) = url::Url::parse(redirect) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    let code = {
        let mut c = lock(&s.counter);
        *c += 1;
        format!("code-{c}")
    };
    lock(&s.codes).insert(code.clone(), (challenge.clone(), redirect.clone()));
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    Redirect::to(to.as_str()).into_response()
}

async fn token(State(s): State<Arc<ProviderState>>, body: Bytes) -> Response {
    let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let err = |e: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": e})),
        )
    };
    if f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return err("invalid_client").into_response();
    }
    let Some((challenge, redirect)) = f.get("code").and_then(|c| lock(&s.codes).remove(c)) else {
        return err("invalid_grant").into_response();
    };
    if f.get("redirect_uri") != Some(&redirect)
        || f.get("code_verifier").map(|v| pkce_challenge(v)) != Some(challenge)
    {
        return err("invalid_grant").into_response();
    }
    let mut raw = [0u8; 16];
    if getrandom::fill(&mut raw).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let token = format!("token-{}", hex::encode(raw));
    lock(&s.tokens).insert(token.clone(), s.subject.clone());
    Json(serde_json::json!({"access_token": token, "token_type": "Bearer"})).into_response()
}

async fn userinfo(State(s): State<Arc<ProviderState>>, headers: HeaderMap) -> Response {
    let sub = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| lock(&s.tokens).get(t).cloned());
    match sub {
        Some(sub) => {
            Json(serde_json::json!({"sub": sub, "email": "alice@example.org"})).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

type Zone = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// An authoritative DNS server on loopback UDP: answers TXT queries from an
/// in-memory zone, NXDOMAIN for names it does not hold.
#[derive(Debug)]
pub struct DnsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    zone: Zone,
    queries: Arc<Mutex<u32>>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Serves on a free loopback port with an empty zone.
    pub async fn spawn() -> std::io::Result<Self> {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let zone: Zone = Arc::default();
        let queries: Arc<Mutex<u32>> = Arc::default();
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                *lock(&q) += 1;
                if let Some(resp) = answer(&req, &z) {
                    let _ = sock.send_to(&resp, from).await;
                }
            }
        });
        Ok(Self {
            addr,
            zone,
            queries,
            task,
        })
    }

    /// Sets the TXT strings at `name` (a fully qualified name, lowercase,
    /// ending in `.`).
    pub fn publish(&self, name: &str, values: &[&str]) {
        lock(&self.zone).insert(
            name.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        );
    }

    /// How many queries it has answered.
    pub fn queries(&self) -> u32 {
        *lock(&self.queries)
    }
}

fn answer(req: &Message, zone: &Zone) -> Option<Vec<u8>> {
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.message_type = MessageType::Response;
    let query = req.queries.first().cloned()?;
    resp.add_query(query.clone());
    let name = query.name().to_lowercase().to_ascii();
    let records = lock(zone).get(&name).cloned();
    match records {
        None => resp.metadata.response_code = ResponseCode::NXDomain,
        Some(values) if query.query_type() == RecordType::TXT => {
            for v in values {
                resp.add_answer(Record::from_rdata(
                    query.name().clone(),
                    0,
                    RData::TXT(TXT::new(vec![v])),
                ));
            }
        }
        Some(_) => {}
    }
    resp.to_vec().ok()
}
