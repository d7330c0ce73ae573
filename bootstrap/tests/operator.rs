//! The `agentmesh-bootstrap` binary as a real process: its operator's page
//! and `/metrics` on a loopback listener apart from the API. Agents
//! register, a client runs over the prekey rate; the metrics, parsed by a
//! Prometheus text parser, and the page show it.

use std::time::Duration;

use agentmesh_node::{
    registry::{Operation, Registration},
    Identity,
};

mod support;

use support::{raw_get, start, Http, WAIT};

/// `/metrics`, parsed by a Prometheus text format parser.
async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = raw_get(addr, "127.0.0.1", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn find<'a>(
    s: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a prometheus_parse::Sample> {
    s.samples.iter().find(|x| {
        x.metric == name
            && labels
                .iter()
                .all(|(k, v)| x.labels.get(k).is_some_and(|l| l == *v))
    })
}

/// The value of the counter or gauge `name` whose labels include `labels`
/// (0 when absent: a route not asked yet has no series).
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels).map(|x| &x.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        None => 0.0,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_and_metrics_show_agents_log_and_requests() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        "operator-test",
        &["--http", "127.0.0.1:0"],
    )
    .await;
    let page = server.page.clone().expect("an operator page");
    let addr = page
        .strip_prefix("http://")
        .and_then(|p| p.strip_suffix('/'))
        .unwrap()
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_ne!(format!("{}/", server.url), page, "apart from the API");
    // The API does not serve the metrics.
    let http = Http::new(&server.url);
    assert_eq!(http.get("/metrics").await.0, 404);

    let before = scrape(&addr).await;
    assert_eq!(
        sample(
            &before,
            "agentmesh_registry_agents",
            &[("tier", "anonymous")]
        ),
        0.0
    );

    // Two agents register; a client fetches prekeys past its prekey rate.
    let (alice, bob) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
    for (who, name) in [(&alice, "Alice"), (&bob, "Bob")] {
        let op = Operation::Register(Registration::new(name, vec!["chat".into()]));
        let (s, v) = http.signed("/v1/registry/register", who, op).await;
        assert_eq!(s, 200, "{v}");
    }
    assert_eq!(http.get("/v1/health").await.0, 200);
    assert_eq!(http.get("/no/such/route").await.0, 404);
    let prekeys = format!("/v1/registry/prekeys/{}", alice.amid());
    let mut limited = false;
    for _ in 0..40 {
        if http.get(&prekeys).await.0 == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the prekey rate never refused");

    let s = scrape(&addr).await;
    // libp2p's own families follow the registry's, in the same scrape.
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric.starts_with("libp2p_swarm_")),
        "libp2p's metrics in the scrape"
    );
    // Among them the bytes its connections carry: a peer connects and
    // pings, and both directions are counted.
    let mut peer = agentmesh_transports::build_swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        &agentmesh_transports::TransportConfig::default(),
        |_, _| libp2p::ping::Behaviour::default(),
    )
    .unwrap();
    peer.dial(server.addr.parse::<libp2p::Multiaddr>().unwrap())
        .unwrap();
    let driving = tokio::spawn(async move {
        use futures::StreamExt as _;
        loop {
            peer.select_next_some().await;
        }
    });
    let bytes = |s: &prometheus_parse::Scrape, direction: &str| -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == "libp2p_bandwidth_bytes_total")
            .filter(|x| x.labels.get("direction") == Some(direction))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("bandwidth: {other:?}"),
            })
            .sum()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(&addr).await;
        if bytes(&s, "Inbound") > 0.0 && bytes(&s, "Outbound") > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no bytes counted for the peer's connection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driving.abort();
    let register = [("route", "/v1/registry/register"), ("status", "200")];
    assert_eq!(
        sample(&s, "agentmesh_registry_requests_total", &register),
        2.0
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_registry_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        2.0,
        "/metrics and /no/such/route on the API"
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_registry_requests_total",
            &[("route", "/v1/registry/prekeys/:amid"), ("status", "429")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_registry_refusals_total",
            &[("limit", "prekey_rate")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_registry_refusals_total",
            &[("limit", "rate")]
        ),
        0.0
    );
    // The latency histogram: cumulative buckets ending in +Inf at the count.
    let h = find(
        &s,
        "agentmesh_registry_request_duration_seconds",
        &[("route", "/v1/registry/register")],
    )
    .expect("a histogram of register");
    let prometheus_parse::Value::Histogram(buckets) = &h.value else {
        panic!("not a histogram: {h:?}");
    };
    assert!(buckets.len() > 5);
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, 2.0);
    assert_eq!(
        sample(
            &s,
            "agentmesh_registry_request_duration_seconds_count",
            &[("route", "/v1/registry/register")]
        ),
        2.0
    );
    assert!(
        sample(
            &s,
            "agentmesh_registry_request_duration_seconds_sum",
            &[("route", "/v1/registry/register")]
        ) > 0.0
    );
    // What the registry holds is read at most every 5 s: wait for a read
    // that saw both agents.
    let deadline = tokio::time::Instant::now() + WAIT;
    let s = loop {
        let s = scrape(&addr).await;
        if sample(&s, "agentmesh_registry_agents", &[("tier", "anonymous")]) == 2.0 {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents not counted in time"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        sample(&s, "agentmesh_registry_agents", &[("tier", "verified")]),
        0.0
    );
    // The log's size is the head's the API signs.
    let (_, head) = http.get("/v1/log/head").await;
    let size = head["size"].as_u64().expect("a log size");
    assert_eq!(
        sample(&s, "agentmesh_registry_transparency_log_size", &[]),
        size as f64
    );
    assert!(sample(&s, "agentmesh_registry_uptime_seconds", &[]) >= 0.0);

    // The page: agents, tiers, the leaderboard, the log head, requests.
    let (status, html) = raw_get(&addr, &addr, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("AgentMesh registry"));
    assert!(html.contains(&server.root));
    assert!(
        html.contains(r#"<b data-k="figures.stats.agents">2</b>"#),
        "{html}"
    );
    assert!(html.contains(r#"<b data-k="figures.stats.by_tier.anonymous">2</b>"#));
    assert!(html.contains(&format!(r#"<b data-k="figures.log.size">{size}</b>"#)));
    let root = head["root"].as_str().expect("a root hash");
    assert!(html.contains(root), "the log's root hash {root}");
    assert!(html.contains("<td>Alice</td>") && html.contains("<td>Bob</td>"));
    assert!(html.contains(&alice.amid().to_string()));
    assert!(html.contains("<tr><td>/v1/registry/register</td><td>2</td></tr>"));
    assert!(!html.contains("src=\"http"), "no external assets");
    let (status, json) = raw_get(&addr, "localhost", "/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["figures"]["stats"]["agents"], 2);
    assert_eq!(v["requests"]["prekey_rate_limited"], 1);

    // A page on loopback does not answer a rebound domain name.
    let (status, _) = raw_get(&addr, "attacker.example", "/metrics").await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_is_not_served_on_a_public_address_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_agentmesh-bootstrap"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--http", "127.0.0.1:0", "--metrics", "0.0.0.0:0"])
            .env("AGENTMESH_PASSPHRASE", "operator-test")
            .env_remove("AGENTMESH_BOOTSTRAP_CONFIG")
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-public"), "{err}");
}
