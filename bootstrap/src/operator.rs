//! The registry operator's page and Prometheus metrics, on an HTTP
//! listener of their own, apart from the public API: the API is meant to
//! be reachable from anywhere (in production behind a reverse proxy, whose
//! connections all come from loopback), so a route on it could not tell the
//! operator from the world. This listener is on loopback unless the
//! operator says otherwise.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the operator's page: one self-contained HTML file that reloads its figures from `/status` every 5 s |
//! | `GET /status` | agents by tier, the transparency log's head, the leaderboard and request counts, as JSON |
//! | `GET /metrics` | the Prometheus text format (`agentmesh_registry_*`, see [`crate::metrics`]) |
//!
//! On a loopback address, requests whose `Host` is a domain name other
//! than `localhost` are refused, so a web page cannot read the figures
//! through a rebound domain.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use agentmesh_dht::now_ms;

use crate::{
    metrics::{render as render_metrics, RegistryFigures, RegistryMetrics},
    registry::{Registry, RegistryError},
};

/// The page, with `{{path}}` placeholders for figures of the status JSON
/// and `{{rows:…}}` for its tables.
const PAGE: &str = include_str!("operator.html");

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the registry's figures are reused: reading them is a pass over
/// all agents, and a page and a scraper may ask every few seconds.
pub const FIGURES_CACHE: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct AppState {
    registry: Registry,
    metrics: Arc<RegistryMetrics>,
    cache: Arc<Mutex<Option<(Instant, RegistryFigures)>>>,
    loopback: bool,
}

/// The request counts on the operator's page.
#[derive(Debug, Clone, Serialize)]
struct Requests {
    /// All answered.
    total: u64,
    /// By route template, `[route, count]`.
    by_route: Vec<(String, u64)>,
    /// Refused by the per-client rate.
    rate_limited: u64,
    /// Refused by the prekey rate.
    prekey_rate_limited: u64,
    /// Refused because too many were in flight.
    busy: u64,
}

/// What `/status` answers.
#[derive(Debug, Clone, Serialize)]
struct OperatorStatus {
    uptime_secs: u64,
    figures: RegistryFigures,
    requests: Requests,
}

/// A running operator's page and metrics server. Dropping it does not stop
/// it; call [`OperatorServer::shutdown`].
#[derive(Debug)]
pub struct OperatorServer {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl OperatorServer {
    /// Binds `addr` and serves the page and metrics of `registry`, whose
    /// HTTP API counts in `metrics`.
    pub async fn spawn(
        addr: SocketAddr,
        registry: Registry,
        metrics: Arc<RegistryMetrics>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = AppState {
            registry,
            metrics,
            cache: Arc::default(),
            loopback: addr.ip().is_loopback(),
        };
        let app = Router::new()
            .route("/", get(page))
            .route("/status", get(status))
            .route("/metrics", get(metrics_route))
            .layer(middleware::from_fn_with_state(state.clone(), check_host))
            .with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The page's URL, e.g. `http://127.0.0.1:9465/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting and finishes requests in flight (at most 5 s).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

/// Whether a `Host` header may reach a loopback listener: an IP literal or
/// `localhost`, with or without a port.
fn loopback_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|h| h.parse::<IpAddr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        if !loopback_host(host) {
            return (StatusCode::FORBIDDEN, "foreign Host refused\n").into_response();
        }
    }
    next.run(req).await
}

/// The registry's figures, read at most every [`FIGURES_CACHE`].
async fn figures(state: &AppState) -> Result<RegistryFigures, RegistryError> {
    let now = Instant::now();
    let cached = state
        .cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some((at, f)) = cached {
        if now.duration_since(at) < FIGURES_CACHE {
            return Ok(f);
        }
    }
    let registry = state.registry.clone();
    let read = tokio::task::spawn_blocking(move || RegistryFigures::read(&registry, now_ms()))
        .await
        .map_err(|_| RegistryError::Busy)??;
    *state.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, read.clone()));
    Ok(read)
}

fn failed(e: &RegistryError) -> Response {
    tracing::warn!(target: "agentmesh::registry", error = %e, "operator figures unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("figures unavailable: {}\n", e.code()),
    )
        .into_response()
}

async fn operator_status(state: &AppState) -> Result<OperatorStatus, RegistryError> {
    let figures = figures(state).await?;
    let by_route: Vec<(String, u64)> = state.metrics.requests_by_route().into_iter().collect();
    let (rate_limited, prekey_rate_limited, busy) = state.metrics.refusals();
    Ok(OperatorStatus {
        uptime_secs: state.metrics.uptime().as_secs(),
        figures,
        requests: Requests {
            total: by_route.iter().map(|(_, n)| n).sum(),
            by_route,
            rate_limited,
            prekey_rate_limited,
            busy,
        },
    })
}

async fn status(State(state): State<AppState>) -> Response {
    match operator_status(&state).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => failed(&e),
    }
}

async fn metrics_route(State(state): State<AppState>) -> Response {
    match figures(&state).await {
        Ok(f) => {
            let mut text = render_metrics(&state.metrics, &f);
            // libp2p's own families, when the registry runs on a node.
            if let Some(node) = state.registry.node() {
                text.push_str(&node.libp2p_metrics());
            }
            ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
        }
        Err(e) => failed(&e),
    }
}

async fn page(State(state): State<AppState>) -> Response {
    let s = match operator_status(&state).await {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    match serde_json::to_value(&s) {
        Ok(v) => Html(render(&v)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// HTML-escapes `s`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The value at a dotted `path` of `v`, as text.
fn lookup(v: &Value, path: &str) -> String {
    text(path.split('.').try_fold(v, |v, k| v.get(k)))
}

fn cells(cells: &[String]) -> String {
    let mut out = String::from("<tr>");
    for c in cells {
        out.push_str("<td>");
        out.push_str(&escape(c));
        out.push_str("</td>");
    }
    out.push_str("</tr>");
    out
}

/// Table rows of the page: the leaderboard and requests by route.
fn rows(v: &Value, table: &str) -> String {
    let list = |path: &str| -> Vec<Value> {
        path.split('.')
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match table {
        "leaderboard" => list("figures.leaderboard.leaderboard")
            .iter()
            .map(|r| {
                let score = r["score"]
                    .as_f64()
                    .map_or(String::new(), |s| format!("{s:.3}"));
                cells(&[
                    text(r.get("rank")),
                    text(r.get("display_name")),
                    text(r.get("amid")),
                    text(r.get("tier")),
                    score,
                ])
            })
            .collect(),
        "routes" => list("requests.by_route")
            .iter()
            .map(|p| cells(&[text(p.get(0)), text(p.get(1))]))
            .collect(),
        _ => String::new(),
    }
}

/// The page with the status `v`'s figures filled in.
fn render(v: &Value) -> String {
    let mut out = String::with_capacity(PAGE.len() + 2048);
    let mut rest = PAGE;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let key = &after[..end];
        match key.strip_prefix("rows:") {
            Some(table) => out.push_str(&rows(v, table)),
            None => out.push_str(&escape(&lookup(v, key))),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_and_localhost_reach_a_loopback_listener() {
        for ok in ["127.0.0.1:9465", "localhost", "[::1]:80", "::1"] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example:9465", "evil.example", ""] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_page_holds_the_figures_escaped() {
        let v = serde_json::json!({
            "figures": {
                "stats": {"agents": 3},
                "log": {"size": 2, "root": "ab12"},
                "leaderboard": {"leaderboard": [
                    {"rank": 1, "display_name": "<i>x</i>", "amid": "A", "tier": "anonymous", "score": 0.5}
                ]},
            },
            "requests": {"by_route": [["/v1/health", 4]]},
        });
        let html = render(&v);
        assert!(html.contains("<td>&lt;i&gt;x&lt;/i&gt;</td>"));
        assert!(html.contains("<td>0.500</td>"));
        assert!(html.contains("<tr><td>/v1/health</td><td>4</td></tr>"));
        assert!(html.contains(r#"<b data-k="figures.log.size">2</b>"#));
        assert!(!html.contains("{{"));
    }
}
