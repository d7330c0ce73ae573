//! The owner's dashboard: one page served at `/` of the local API, logged
//! into with a one-time link (`agentmesh dashboard`) that sets a session
//! cookie. The page uses the same API, from the same origin.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{random_token, ApiError, Ctx, ErrorCode};

/// The page.
const PAGE: &str = include_str!("dashboard.html");
/// The path of the one-time login link.
pub(super) const LOGIN_PATH: &str = "/login";
/// Name of the session cookie.
const COOKIE: &str = "agentmesh_session";
/// How long a login link is valid.
const LINK_TTL: Duration = Duration::from_secs(120);
/// Most login links and sessions kept.
const MAX_KEPT: usize = 64;

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Login links not yet used, and open sessions (their hashes).
#[derive(Debug, Default)]
pub(super) struct Logins {
    links: Mutex<HashMap<[u8; 32], Instant>>,
    sessions: Mutex<HashSet<[u8; 32]>>,
}

impl Logins {
    fn new_link(&self) -> String {
        let code = random_token();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        links.retain(|_, until| *until > now);
        if links.len() >= MAX_KEPT {
            links.clear();
        }
        links.insert(hash(&code), now + LINK_TTL);
        code
    }

    /// Uses up a link's code; a new session's secret if it was valid.
    fn redeem(&self, code: &str) -> Option<String> {
        let until = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash(code))?;
        if until <= Instant::now() {
            return None;
        }
        let session = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_KEPT {
            sessions.clear();
        }
        sessions.insert(hash(&session));
        Some(session)
    }

    /// Whether the request carries an open session's cookie.
    pub(super) fn has_session(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.to_owned())
        else {
            return false;
        };
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&hash(&secret))
    }
}

/// `GET /`: the page.
pub(super) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// What `/` answers without a session.
pub(super) fn login_needed() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Html("<!doctype html><title>AgentMesh</title><p>Open the one-time link that <code>agentmesh dashboard</code> prints.</p>"),
    )
        .into_response()
}

/// `POST /v1/dashboard/link`: a one-time login link.
pub(super) async fn link(State(ctx): State<Arc<Ctx>>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(base) = ctx.url.get() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the API is not served on TCP, so a browser cannot reach it",
        ));
    };
    let code = ctx.dashboard.new_link();
    Ok(Json(json!({
        "url": format!("{base}{LOGIN_PATH}?code={code}"),
        "expires_in_s": LINK_TTL.as_secs(),
    })))
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    #[serde(default)]
    code: String,
}

/// `GET /login?code=`: sets the session cookie and goes to the page.
pub(super) async fn login(State(ctx): State<Arc<Ctx>>, Query(q): Query<LoginQuery>) -> Response {
    match ctx.dashboard.redeem(&q.code) {
        Some(session) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_owned()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"),
                ),
            ],
        )
            .into_response(),
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "this login link is used up or expired: run `agentmesh dashboard` again",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_logs_in_once_and_its_session_is_recognised() {
        let logins = Logins::default();
        let code = logins.new_link();
        let session = logins.redeem(&code).expect("valid once");
        assert!(logins.redeem(&code).is_none(), "used up");
        assert!(logins.redeem("made-up").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={session}").parse().unwrap(),
        );
        assert!(logins.has_session(&headers));
        headers.insert(header::COOKIE, format!("{COOKIE}=nope").parse().unwrap());
        assert!(!logins.has_session(&headers));
    }
}
