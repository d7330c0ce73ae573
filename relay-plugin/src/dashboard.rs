//! The relay's volunteer page and its Prometheus metrics, on an HTTP
//! listener of their own (loopback unless the operator says otherwise):
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the volunteer's page: one self-contained HTML file that reloads its figures from `/status` every 5 s |
//! | `GET /status` | the [`RelaySnapshot`] as JSON |
//! | `GET /metrics` | the same figures in the Prometheus text format (`agentmesh_relay_*`) |
//!
//! Nothing here names a recipient: the mailbox's occupancy is shown as
//! counts only. On a loopback address, requests whose `Host` is a domain
//! name other than `localhost` are refused, so a web page cannot read the
//! figures through a rebound domain.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use agentmesh_node::Node;
use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::metrics::{RelayMonitor, RelaySnapshot};

/// The page, with `{{path}}` placeholders for figures of the snapshot's
/// JSON, `{{bytes:path}}` for byte counts shown with a unit, and
/// `{{rows:…}}` for its tables.
const PAGE: &str = include_str!("dashboard.html");

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AppState {
    node: Node,
    monitor: RelayMonitor,
    loopback: bool,
}

/// A running page and metrics server. Dropping it does not stop it; call
/// [`DashboardServer::shutdown`].
#[derive(Debug)]
pub struct DashboardServer {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl DashboardServer {
    /// Binds `addr` and serves the page and metrics of the relay `node`,
    /// whose plugin `monitor` watches.
    pub async fn spawn(
        addr: SocketAddr,
        node: Node,
        monitor: RelayMonitor,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = AppState {
            node,
            monitor,
            loopback: addr.ip().is_loopback(),
        };
        let app = Router::new()
            .route("/", get(page))
            .route("/status", get(status))
            .route("/metrics", get(metrics))
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

    /// The page's URL, e.g. `http://127.0.0.1:9464/`.
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

async fn snapshot(state: &AppState) -> RelaySnapshot {
    state.monitor.snapshot(&state.node).await
}

async fn status(State(state): State<AppState>) -> Json<RelaySnapshot> {
    Json(snapshot(&state).await)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = snapshot(&state).await.to_prometheus();
    // libp2p's own families (swarm, kad, identify, ping, relay, dcutr).
    text.push_str(&state.node.libp2p_metrics());
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
}

async fn page(State(state): State<AppState>) -> Response {
    let snap = snapshot(&state).await;
    match serde_json::to_value(&snap) {
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

/// The value at a dotted `path` of `v`, as text.
fn lookup(v: &Value, path: &str) -> String {
    let found = path.split('.').try_fold(v, |v, k| v.get(k));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Table rows of the page: refusals by reason, recipients by occupancy,
/// the fullest recipients' counts.
fn rows(v: &Value, table: &str) -> String {
    let pairs = |arr: Option<&Value>| -> Vec<(String, String)> {
        arr.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let text = |x: Option<&Value>| match x {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Null) | None => String::new(),
                            Some(o) => o.to_string(),
                        };
                        (text(p.get(0)), text(p.get(1)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let row = |a: &str, b: &str| format!("<tr><td>{}</td><td>{}</td></tr>", escape(a), escape(b));
    match table {
        "refusals" => {
            let t = &v["circuit"]["totals"];
            let mut out = row("reservation denied", &lookup(t, "reservations_denied"));
            out += &row("circuit denied", &lookup(t, "circuits_denied"));
            for (reason, n) in pairs(v["mailbox"].get("refusals")) {
                out += &row(&format!("mailbox: {reason}"), &n);
            }
            out
        }
        "occupancy" => {
            let mut below = 0u64;
            let mut out = String::new();
            for (bound, n) in pairs(v["occupancy"].get("classes")) {
                let label = match bound.parse::<u64>() {
                    Ok(b) if b == below + 1 => b.to_string(),
                    Ok(b) => format!("{}–{b}", below + 1),
                    Err(_) => format!("more than {below}"),
                };
                below = bound.parse().unwrap_or(below);
                out += &row(&label, &n);
            }
            out
        }
        "largest" => v["occupancy"]["largest"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| format!("<li>{}</li>", escape(&n.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// A byte count with an SI unit: `532 B`, `1.2 kB`, `3.4 MB`. The page's
/// script shows refreshed figures the same way.
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut n = n.max(0.0);
    let mut i = 0;
    while n >= 1000.0 && i < UNITS.len() - 1 {
        n /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n:.0} B")
    } else {
        format!("{n:.1} {}", UNITS[i])
    }
}

/// The page with the snapshot `v`'s figures filled in.
fn render(v: &Value) -> String {
    let mut out = String::with_capacity(PAGE.len() + 1024);
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
        if let Some(table) = key.strip_prefix("rows:") {
            out.push_str(&rows(v, table));
        } else if let Some(path) = key.strip_prefix("bytes:") {
            let n = path
                .split('.')
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_f64);
            out.push_str(&n.map(human_bytes).unwrap_or_default());
        } else {
            out.push_str(&escape(&lookup(v, key)));
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
        for ok in [
            "127.0.0.1:9464",
            "localhost",
            "LOCALHOST:80",
            "[::1]:9464",
            "::1",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example:9464", "evil.example", "[evil]:1", ""] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_page_holds_the_figures_escaped() {
        let v = serde_json::json!({
            "amid": "<b>x</b>",
            "uptime_secs": 7,
            "circuit": {"reservations": 2, "totals": {"reservations_denied": 1, "circuits_denied": 0}},
            "mailbox": {"deposits": 3, "refusals": [["sender_quota", 4]]},
            "occupancy": {"classes": [[1, 5], [5, 0], [null, 1]], "largest": [9, 1]},
        });
        let html = render(&v);
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(!html.contains("<b>x</b>"));
        assert!(html.contains("<tr><td>mailbox: sender_quota</td><td>4</td></tr>"));
        assert!(html.contains("<tr><td>2–5</td><td>0</td></tr>"));
        assert!(html.contains("<tr><td>more than 5</td><td>1</td></tr>"));
        assert!(html.contains("<li>9</li>"));
        assert!(!html.contains("{{"));
    }

    #[test]
    fn byte_counts_are_shown_with_a_unit() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(999.4), "999 B");
        assert_eq!(human_bytes(1_234.0), "1.2 kB");
        assert_eq!(human_bytes(5_600_000.0), "5.6 MB");
        assert_eq!(human_bytes(7.0e18), "7000.0 PB");
        let v = serde_json::json!({"bandwidth": {"bytes_in": 2048, "in_per_sec": 12.7}});
        let html = render(&v);
        assert!(
            html.contains(r#"<b data-bytes="bandwidth.bytes_in">2.0 kB</b>"#),
            "{html}"
        );
        assert!(html.contains(r#"data-unit="/s">13 B/s</b>"#), "{html}");
    }
}
