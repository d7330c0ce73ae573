//! Tier 1 verification: the OAuth 2.0 authorization-code flow with PKCE
//! (RFC 7636, `S256`) against a configurable provider.
//!
//! ```text
//! agent ── POST /register/oauth {amid} ──▶ registry: OAuth::start(amid)
//!       ◀── 200 {authorize_url} ─────────  (state bound to the AMID, PKCE verifier kept)
//! user's browser ── authorize_url ──▶ provider ── 302 redirect_uri?code&state ──▶ registry
//! registry: OAuth::finish(callback) ── POST token_url (code + verifier) ──▶ provider
//!                                   ── GET userinfo_url (bearer token) ──▶ provider
//!           ◀── VerifiedSubject {amid, provider, subject} ── issue the tier-1 certificate
//! ```
//!
//! The `state` parameter is random, single-use, expires after
//! [`PENDING_TTL_MS`] and names the pending registration: a callback whose
//! state is unknown (forged, replayed, expired) fails with
//! [`OAuthError::StateMismatch`] before anything is sent to the provider.
//! Every error has a stable [`OAuthError::code`] for the registry's 4xx
//! answers.
//!
//! ```no_run
//! use agentmesh_bootstrap::oauth::{CallbackParams, OAuth, ProviderConfig};
//!
//! # async fn run(amid: agentmesh_node::Amid, now_ms: u64) -> Result<(), agentmesh_bootstrap::oauth::OAuthError> {
//! let provider = ProviderConfig::github(
//!     "client-id",
//!     "client-secret",
//!     "https://registry.example/oauth/callback",
//! );
//! let oauth = OAuth::new(provider)?;
//! // POST /register/oauth: send the user to this URL.
//! let url = oauth.start(amid, now_ms)?;
//! # let _ = url;
//! // GET /oauth/callback?code=..&state=..: the query parameters.
//! let callback = CallbackParams {
//!     code: Some("code".into()),
//!     state: Some("state".into()),
//!     error: None,
//! };
//! let subject = oauth.finish(&callback, now_ms).await?;
//! println!("{} is {}:{}", subject.amid, subject.provider, subject.subject);
//! # Ok(())
//! # }
//! ```

use std::{collections::HashMap, fmt, sync::Mutex, time::Duration};

use agentmesh_node::Amid;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Lifetime of a pending authorization (between `start` and the callback).
pub const PENDING_TTL_MS: u64 = 10 * 60 * 1000;
/// Most pending authorizations kept at once.
pub const MAX_PENDING: usize = 10_000;
/// Largest provider response read.
pub const MAX_RESPONSE_SIZE: usize = 64 * 1024;
/// Timeout of one request to the provider.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest subject accepted from a provider.
pub const MAX_SUBJECT_LEN: usize = 256;

/// An OAuth provider.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// Short name, recorded with the subject (`github`, `google`, ...).
    pub name: String,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// User-info endpoint.
    pub userinfo_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (sent to the token endpoint only).
    pub client_secret: Zeroizing<String>,
    /// Where the provider sends the user back (the registry's callback).
    pub redirect_uri: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// User-info field holding the stable subject id (`sub` for OIDC,
    /// `id` for GitHub).
    pub subject_field: String,
    /// User-info field holding a display name (`email`, `login`), if any.
    pub name_field: Option<String>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("authorize_url", &self.authorize_url)
            .field("token_url", &self.token_url)
            .field("userinfo_url", &self.userinfo_url)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    /// A generic OpenID Connect provider: subject in `sub`, name in `email`,
    /// scopes `openid email`.
    pub fn oidc(
        name: impl Into<String>,
        authorize_url: impl Into<String>,
        token_url: impl Into<String>,
        userinfo_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            authorize_url: authorize_url.into(),
            token_url: token_url.into(),
            userinfo_url: userinfo_url.into(),
            client_id: client_id.into(),
            client_secret: Zeroizing::new(client_secret.into()),
            redirect_uri: redirect_uri.into(),
            scopes: vec!["openid".into(), "email".into()],
            subject_field: "sub".into(),
            name_field: Some("email".into()),
        }
    }

    /// GitHub (OAuth app): subject is the numeric user id, name the login.
    pub fn github(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            scopes: vec!["read:user".into()],
            subject_field: "id".into(),
            name_field: Some("login".into()),
            ..Self::oidc(
                "github",
                "https://github.com/login/oauth/authorize",
                "https://github.com/login/oauth/access_token",
                "https://api.github.com/user",
                client_id,
                client_secret,
                redirect_uri,
            )
        }
    }

    /// Google (OpenID Connect).
    pub fn google(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self::oidc(
            "google",
            "https://accounts.google.com/o/oauth2/v2/auth",
            "https://oauth2.googleapis.com/token",
            "https://openidconnect.googleapis.com/v1/userinfo",
            client_id,
            client_secret,
            redirect_uri,
        )
    }
}

/// Why an OAuth registration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// A provider URL does not parse or is not http(s).
    #[error("invalid provider configuration: {0}")]
    InvalidConfig(String),
    /// The callback's state names no pending registration (forged,
    /// replayed or expired).
    #[error("state mismatch")]
    StateMismatch,
    /// The callback lacks `code` or `state`.
    #[error("callback without {0}")]
    MissingParameter(&'static str),
    /// The provider redirected back with an error (e.g. `access_denied`).
    #[error("provider refused the authorization: {error}")]
    Denied {
        /// The provider's error code.
        error: String,
    },
    /// The token endpoint refused the code (wrong code, wrong verifier,
    /// wrong client).
    #[error("token endpoint refused the code ({status}): {error}")]
    TokenRejected {
        /// HTTP status.
        status: u16,
        /// The provider's `error` field, or empty.
        error: String,
    },
    /// The user-info endpoint refused the token.
    #[error("user-info endpoint refused the token ({status})")]
    UserinfoRejected {
        /// HTTP status.
        status: u16,
    },
    /// A provider answer is not what the protocol says.
    #[error("bad provider response: {0}")]
    BadResponse(String),
    /// The provider could not be reached or timed out.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// Too many registrations are pending.
    #[error("too many pending authorizations")]
    TooManyPending,
    /// The system's random number generator failed.
    #[error("no randomness available")]
    NoRandomness,
}

impl OAuthError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidConfig(_) => "oauth_config",
            Self::StateMismatch => "oauth_state_mismatch",
            Self::MissingParameter(_) => "oauth_missing_parameter",
            Self::Denied { .. } => "oauth_denied",
            Self::TokenRejected { .. } => "oauth_token_rejected",
            Self::UserinfoRejected { .. } => "oauth_userinfo_rejected",
            Self::BadResponse(_) => "oauth_bad_response",
            Self::Unreachable(_) => "oauth_provider_unreachable",
            Self::TooManyPending => "oauth_busy",
            Self::NoRandomness => "internal",
        }
    }

    /// Whether the caller is at fault (a 4xx answer) rather than the
    /// provider or the registry (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::StateMismatch
                | Self::MissingParameter(_)
                | Self::Denied { .. }
                | Self::TokenRejected { .. }
                | Self::UserinfoRejected { .. }
        )
    }
}

/// The query of the provider's redirect to the callback.
#[derive(Debug, Clone, Default, Deserialize)]
// Fixed by RFC 6749 §4.1.2, hence not `non_exhaustive`.
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The state given to the provider.
    pub state: Option<String>,
    /// An error code instead of a code.
    pub error: Option<String>,
}

/// An identity the provider vouched for, bound to the AMID that started the
/// flow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedSubject {
    /// The agent that asked for the registration.
    pub amid: Amid,
    /// The provider's name.
    pub provider: String,
    /// The provider's stable id of the user.
    pub subject: String,
    /// Display name (login or e-mail), if the provider gave one.
    pub name: Option<String>,
}

struct Pending {
    amid: Amid,
    verifier: Zeroizing<String>,
    expires_ms: u64,
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The OAuth flow of one provider: pending authorizations and an HTTP
/// client.
pub struct OAuth {
    provider: ProviderConfig,
    authorize: url::Url,
    pending: Mutex<HashMap<String, Pending>>,
    client: Client<Https, Full<Bytes>>,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes, base64url: a state or a PKCE verifier (43 characters).
fn random_token() -> Result<String, OAuthError> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::fill(b.as_mut()).map_err(|_| OAuthError::NoRandomness)?;
    Ok(URL_SAFE_NO_PAD.encode(b.as_ref()))
}

/// The PKCE `S256` challenge of `verifier`: `BASE64URL(SHA-256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn check_url(u: &str) -> Result<url::Url, OAuthError> {
    let url = url::Url::parse(u).map_err(|e| OAuthError::InvalidConfig(format!("{u}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OAuthError::InvalidConfig(format!("{u}: not http(s)")));
    }
    Ok(url)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    error: Option<String>,
}

impl OAuth {
    /// A flow for `provider`. HTTPS uses the webpki root certificates.
    pub fn new(provider: ProviderConfig) -> Result<Self, OAuthError> {
        let authorize = check_url(&provider.authorize_url)?;
        check_url(&provider.token_url)?;
        check_url(&provider.userinfo_url)?;
        check_url(&provider.redirect_uri)?;
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OAuthError::InvalidConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            provider,
            authorize,
            pending: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The provider.
    pub fn provider(&self) -> &ProviderConfig {
        &self.provider
    }

    /// Starts a registration for `amid`: returns the URL to send the user
    /// to. Its state and PKCE verifier stay pending for
    /// [`PENDING_TTL_MS`].
    pub fn start(&self, amid: Amid, now_ms: u64) -> Result<url::Url, OAuthError> {
        let state = random_token()?;
        let verifier = Zeroizing::new(random_token()?);
        let mut url = self.authorize.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.provider.client_id)
            .append_pair("redirect_uri", &self.provider.redirect_uri)
            .append_pair("scope", &self.provider.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires_ms > now_ms);
        if pending.len() >= MAX_PENDING {
            tracing::warn!(target: "agentmesh::oauth", "pending authorizations at capacity");
            return Err(OAuthError::TooManyPending);
        }
        pending.insert(
            state,
            Pending {
                amid,
                verifier,
                expires_ms: now_ms.saturating_add(PENDING_TTL_MS),
            },
        );
        Ok(url)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles the provider's redirect: checks the state (single use),
    /// exchanges the code with the PKCE verifier and fetches the user's
    /// identity.
    pub async fn finish(
        &self,
        callback: &CallbackParams,
        now_ms: u64,
    ) -> Result<VerifiedSubject, OAuthError> {
        let state = callback
            .state
            .as_deref()
            .ok_or(OAuthError::MissingParameter("state"))?;
        let pending = self.lock().remove(state);
        let Some(pending) = pending.filter(|p| p.expires_ms > now_ms) else {
            return Err(OAuthError::StateMismatch);
        };
        if let Some(error) = &callback.error {
            return Err(OAuthError::Denied {
                error: error.chars().take(128).collect(),
            });
        }
        let code = callback
            .code
            .as_deref()
            .ok_or(OAuthError::MissingParameter("code"))?;
        let token = self.exchange_code(code, &pending.verifier).await?;
        let (subject, name) = self.userinfo(&token).await?;
        tracing::info!(
            target: "agentmesh::oauth",
            amid = %pending.amid.short(),
            provider = %self.provider.name,
            "subject verified"
        );
        Ok(VerifiedSubject {
            amid: pending.amid,
            provider: self.provider.name.clone(),
            subject,
            name,
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) for an
    /// access token at the token endpoint.
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
    ) -> Result<Zeroizing<String>, OAuthError> {
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.provider.redirect_uri)
                .append_pair("client_id", &self.provider.client_id)
                .append_pair("client_secret", &self.provider.client_secret)
                .append_pair("code_verifier", verifier)
                .finish(),
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.provider.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "agentmesh-registry")
            .body(Full::new(Bytes::from(form.as_bytes().to_vec())))
            .map_err(|e| OAuthError::InvalidConfig(e.to_string()))?;
        let (status, body) = self.send(req).await?;
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            return Err(OAuthError::TokenRejected {
                status: status.as_u16(),
                error: parsed
                    .and_then(|t| t.error)
                    .unwrap_or_default()
                    .chars()
                    .take(128)
                    .collect(),
            });
        }
        let parsed =
            parsed.ok_or_else(|| OAuthError::BadResponse("token response is not JSON".into()))?;
        if let Some(error) = parsed.error {
            // GitHub answers 200 with an `error` field.
            return Err(OAuthError::TokenRejected {
                status: status.as_u16(),
                error: error.chars().take(128).collect(),
            });
        }
        parsed
            .access_token
            .filter(|t| !t.is_empty())
            .map(Zeroizing::new)
            .ok_or_else(|| OAuthError::BadResponse("no access_token".into()))
    }

    /// Fetches the user's subject id and display name with an access token.
    pub async fn userinfo(&self, token: &str) -> Result<(String, Option<String>), OAuthError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(&self.provider.userinfo_url)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "agentmesh-registry")
            .body(Full::new(Bytes::new()))
            .map_err(|e| OAuthError::InvalidConfig(e.to_string()))?;
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(OAuthError::UserinfoRejected {
                status: status.as_u16(),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| OAuthError::BadResponse("user info is not JSON".into()))?;
        let field = |name: &str| match v.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let subject = field(&self.provider.subject_field)
            .filter(|s| s.len() <= MAX_SUBJECT_LEN)
            .ok_or_else(|| {
                OAuthError::BadResponse(format!(
                    "no `{}` in user info",
                    self.provider.subject_field
                ))
            })?;
        let name = self
            .provider
            .name_field
            .as_deref()
            .and_then(field)
            .filter(|s| s.len() <= MAX_SUBJECT_LEN);
        Ok((subject, name))
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), OAuthError> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| OAuthError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_SIZE)
                .collect()
                .await
                .map_err(|e| OAuthError::BadResponse(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| OAuthError::Unreachable("timed out".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::{OidcProvider, CLIENT_ID, CLIENT_SECRET};
    use agentmesh_node::identity::Identity;
    use axum::{extract::Query, routing::get, Json, Router};
    use std::sync::Arc;

    struct Fixture {
        _provider: OidcProvider,
        oauth: Arc<OAuth>,
        browser: Client<HttpConnector, Full<Bytes>>,
    }

    type Outcome = Result<VerifiedSubject, String>;

    async fn fixture() -> Fixture {
        let provider = OidcProvider::spawn("user-42").await.unwrap();
        // The registry's callback: reserve the port first so the redirect
        // URI is known before the flow exists.
        let cb_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cb = cb_listener.local_addr().unwrap();
        let oauth = Arc::new(
            OAuth::new(ProviderConfig::oidc(
                "test",
                provider.authorize_url(),
                provider.token_url(),
                provider.userinfo_url(),
                CLIENT_ID,
                CLIENT_SECRET,
                format!("http://{cb}/oauth/callback"),
            ))
            .unwrap(),
        );
        let o = oauth.clone();
        let app = Router::new().route(
            "/oauth/callback",
            get(move |Query(p): Query<CallbackParams>| async move {
                let r: Outcome = o.finish(&p, now()).await.map_err(|e| e.code().to_string());
                Json(match r {
                    Ok(s) => serde_json::json!({"ok": s.amid.to_string(), "sub": s.subject, "name": s.name}),
                    Err(e) => serde_json::json!({"err": e}),
                })
            }),
        );
        tokio::spawn(async move { axum::serve(cb_listener, app).await.unwrap() });
        Fixture {
            _provider: provider,
            oauth,
            browser: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// GET `url`; returns status, Location header and body.
    async fn get_url(f: &Fixture, url: &str) -> (StatusCode, Option<String>, Bytes) {
        let resp = f
            .browser
            .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        (
            status,
            loc,
            resp.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// Follows the authorize redirect; returns the callback URL.
    async fn authorize_redirect(f: &Fixture, url: &url::Url) -> url::Url {
        let (status, loc, _) = get_url(f, url.as_str()).await;
        assert!(status.is_redirection(), "{status}");
        url::Url::parse(&loc.unwrap()).unwrap()
    }

    fn query(u: &url::Url, k: &str) -> String {
        u.query_pairs()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .into_owned()
    }

    #[tokio::test]
    async fn authorization_code_flow_with_pkce_verifies_the_subject() {
        let f = fixture().await;
        let amid = Identity::from_seed(&[1; 32]).amid();
        let url = f.oauth.start(amid, now()).unwrap();
        assert_eq!(query(&url, "code_challenge_method"), "S256");
        let callback = authorize_redirect(&f, &url).await;
        assert_eq!(query(&callback, "state"), query(&url, "state"));
        let (status, _, body) = get_url(&f, callback.as_str()).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["ok"], amid.to_string(), "{v}");
        assert_eq!(v["sub"], "user-42");
        assert_eq!(v["name"], "alice@example.org");

        // The state is single use: replaying the callback fails.
        let (_, _, body) = get_url(&f, callback.as_str()).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["err"], "oauth_state_mismatch");
    }

    #[tokio::test]
    async fn wrong_state_wrong_code_and_wrong_verifier_are_typed_errors() {
        let f = fixture().await;
        let amid = Identity::from_seed(&[2; 32]).amid();

        // Wrong state: the callback carries a state nobody issued.
        let url = f.oauth.start(amid, now()).unwrap();
        let callback = authorize_redirect(&f, &url).await;
        let mut forged = callback.clone();
        forged
            .query_pairs_mut()
            .clear()
            .append_pair("code", &query(&callback, "code"))
            .append_pair("state", "forged-state");
        let (_, _, body) = get_url(&f, forged.as_str()).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["err"], "oauth_state_mismatch");
        let err = f
            .oauth
            .finish(
                &CallbackParams {
                    code: Some(query(&callback, "code")),
                    state: Some("forged-state".into()),
                    error: None,
                },
                now(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, OAuthError::StateMismatch));
        assert!(err.is_client_error());

        // Wrong code: a real state with a code the provider never issued.
        let mut wrong_code = callback.clone();
        wrong_code
            .query_pairs_mut()
            .clear()
            .append_pair("code", "code-999")
            .append_pair("state", &query(&callback, "state"));
        let (_, _, body) = get_url(&f, wrong_code.as_str()).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["err"], "oauth_token_rejected");

        // Wrong verifier: a real code exchanged with another verifier.
        let url = f.oauth.start(amid, now()).unwrap();
        let callback = authorize_redirect(&f, &url).await;
        let err = f
            .oauth
            .exchange_code(&query(&callback, "code"), &random_token().unwrap())
            .await
            .unwrap_err();
        match err {
            OAuthError::TokenRejected { status, error } => {
                assert_eq!(status, 400);
                assert_eq!(error, "invalid_grant");
            }
            e => panic!("{e:?}"),
        }

        // A denied authorization, and an expired one.
        let url = f.oauth.start(amid, now()).unwrap();
        let err = f
            .oauth
            .finish(
                &CallbackParams {
                    code: None,
                    state: Some(query(&url, "state")),
                    error: Some("access_denied".into()),
                },
                now(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "oauth_denied");
        let url = f.oauth.start(amid, now()).unwrap();
        let callback = authorize_redirect(&f, &url).await;
        let late = now() + PENDING_TTL_MS + 1;
        let err = f
            .oauth
            .finish(
                &CallbackParams {
                    code: Some(query(&callback, "code")),
                    state: Some(query(&callback, "state")),
                    error: None,
                },
                late,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, OAuthError::StateMismatch));

        // A bad token at the user-info endpoint.
        let err = f.oauth.userinfo("token-nope").await.unwrap_err();
        assert!(matches!(err, OAuthError::UserinfoRejected { status: 401 }));
    }

    #[test]
    fn pkce_challenge_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn presets_and_config_checks() {
        let g = ProviderConfig::github("id", "secret", "https://r.example/cb");
        assert_eq!(g.subject_field, "id");
        assert!(OAuth::new(g.clone()).is_ok());
        assert!(!format!("{g:?}").contains("secret"));
        let google = ProviderConfig::google("id", "secret", "https://r.example/cb");
        assert_eq!(google.subject_field, "sub");
        let bad = ProviderConfig {
            token_url: "ftp://x".into(),
            ..google
        };
        assert!(matches!(OAuth::new(bad), Err(OAuthError::InvalidConfig(_))));
    }
}
