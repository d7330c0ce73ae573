//! `/metrics` of the real `agentmesh` binary, scraped over HTTP and read by
//! a Prometheus text format parser.
//!
//! Two `agentmesh run` agents (and one they join through), one of them with
//! a KNOCK rate limit of one a minute: a KNOCK accepted and one refused over
//! the limit, messages each way. The node's own families count them by
//! decision and reason, by path and as rate-limit refusals, and libp2p's
//! swarm, kad, identify and ping families follow.
//!
//! Then an `agentmesh run --private` agent behind a circuit relay (a node of
//! this crate hosting libp2p's relay server, its API on loopback too),
//! reached by another agent through it: the agent's metrics show its
//! reservation and the hole punch (the `libp2p_dcutr_*` family), the
//! relay's the reservation and the circuit (`libp2p_relay_*`). A family
//! with nothing counted is not printed at all (prometheus-client skips
//! empty families), so each is driven to count something.

mod support;

use std::{path::Path, time::Duration};

use agentmesh_node::{
    api::{ApiInfo, ApiOptions, LocalApi},
    crypto::keystore::KdfParams,
    plugin::{Plugin, PluginContext, PluginError},
    Config, Node, Passphrase,
};
use prometheus_parse::{Sample, Scrape, Value as Prom};
use serde_json::{json, Value};
use support::cli::{cli, run, Agent, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request to the local API of the agent in `dir`, with its
/// token: status and body.
async fn http(dir: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let info = ApiInfo::read(dir).expect("api.json");
    let host = info
        .url
        .expect("the API on TCP")
        .trim_start_matches("http://")
        .to_owned();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        info.token,
        body.len()
    );
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an answer in time");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// `GET /metrics`, parsed.
async fn scrape(dir: &Path) -> Scrape {
    let (status, text) = http(dir, "GET", "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

fn samples<'a>(
    s: &'a Scrape,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> {
    s.samples.iter().filter(move |x| {
        x.metric == name
            && labels
                .iter()
                .all(|(k, v)| x.labels.get(k).is_some_and(|l| l == *v))
    })
}

/// The sum of the samples `name` whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples(s, name, labels)
        .map(|x| match &x.value {
            Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => *v,
            other => panic!("{name} {labels:?}: {other:?}"),
        })
        .collect();
    assert!(!found.is_empty(), "no sample {name} {labels:?}");
    found.iter().sum()
}

/// Waits until the agent in `dir` has counted what `done` looks for.
async fn scrape_until(dir: &Path, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(dir).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binarys_metrics_parse_and_count_knocks_paths_and_rate_limits() {
    let root = tempfile::tempdir().unwrap();
    let boot = Agent::start(root.path().join("boot"), None).await;
    let addr = support::cli::listen_addr(&boot.dir, |a| a.contains("/quic")).await;
    let mut alice = Agent::start(root.path().join("alice"), Some(&addr)).await;
    let mut bob = Agent::start(root.path().join("bob"), Some(&addr)).await;
    alice.published().await;
    bob.published().await;

    // Alice takes one KNOCK a minute from each initiator.
    let (status, body) = http(&alice.dir, "GET", "/v1/policy", None).await;
    assert_eq!(status, 200, "{body}");
    let toml = serde_json::from_str::<Value>(&body).unwrap()["toml"]
        .as_str()
        .unwrap()
        .replace("knocks_per_minute = 30", "knocks_per_minute = 1");
    assert!(toml.contains("knocks_per_minute = 1"), "{toml}");
    let (status, body) = http(
        &alice.dir,
        "PUT",
        "/v1/policy",
        Some(&json!({ "policy": toml })),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Bob's first KNOCK is accepted; after he closes the session, his next
    // one within the minute is refused over the limit.
    cli(&bob.dir, &["send", &alice.amid, "hello"]).await;
    cli(&bob.dir, &["close", &alice.amid]).await;
    let (sent, out, err) = run(&bob.dir, &["--json", "send", &alice.amid, "again"]).await;
    assert!(!sent, "refused: {out}");
    assert!(
        format!("{out}{err}").contains("rate_limited")
            || format!("{out}{err}").contains("rate limited"),
        "{out} {err}"
    );
    // Alice answers: her own KNOCK to bob, a delivery she times.
    cli(&alice.dir, &["send", &bob.amid, "hi bob"]).await;

    let s = scrape_until(&alice.dir, "alice's KNOCKs and messages", |s| {
        samples(
            s,
            "agentmesh_knocks_total",
            &[("decision", "rejected"), ("reason", "rate_limited")],
        )
        .next()
        .is_some()
            && value(s, "agentmesh_delivery_latency_seconds_count", &[]) >= 1.0
    })
    .await;
    // KNOCKs by decision and reason, and the refusal as a rate-limit one.
    assert_eq!(
        value(
            &s,
            "agentmesh_knocks_total",
            &[("decision", "accepted"), ("reason", "none")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "agentmesh_knocks_total",
            &[("decision", "rejected"), ("reason", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "agentmesh_rate_limited_total",
            &[("direction", "inbound"), ("kind", "knock")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "agentmesh_rate_limited_total",
            &[("direction", "outbound")]
        ),
        0.0
    );
    // Messages by path: bob's came over direct QUIC on loopback, and so
    // went alice's.
    assert_eq!(
        value(
            &s,
            "agentmesh_messages_received_total",
            &[("path", "direct-quic")]
        ),
        1.0
    );
    for path in ["relayed", "mailbox", "direct-webrtc"] {
        assert_eq!(
            value(&s, "agentmesh_messages_received_total", &[("path", path)]),
            0.0,
            "{path}"
        );
    }
    assert_eq!(
        value(
            &s,
            "agentmesh_messages_sent_total",
            &[("outcome", "delivered"), ("path", "direct-quic")]
        ),
        1.0
    );
    // The delivery latency histogram, as a histogram.
    let latency = samples(&s, "agentmesh_delivery_latency_seconds", &[])
        .find_map(|x| match &x.value {
            Prom::Histogram(h) => Some(h.clone()),
            _ => None,
        })
        .expect("the latency histogram");
    assert!(latency.iter().any(|b| b.count >= 1.0), "{latency:?}");
    // The rest of the node's own families.
    for (name, kind) in [
        ("agentmesh_sessions", "gauge"),
        ("agentmesh_peers_connected", "gauge"),
        ("agentmesh_hole_punches_total", "counter"),
        ("agentmesh_connections_opened_total", "counter"),
        ("agentmesh_refused_inputs_total", "counter"),
        ("agentmesh_inbox_messages", "gauge"),
        ("agentmesh_dht_routing_table_peers", "gauge"),
        ("agentmesh_relay_reservations", "gauge"),
        ("agentmesh_mailbox_relays", "gauge"),
        ("agentmesh_kill_switch", "gauge"),
    ] {
        assert!(s.docs.contains_key(name), "HELP of {name}");
        assert!(samples(&s, name, &[]).next().is_some(), "{name} ({kind})");
    }
    assert_eq!(value(&s, "agentmesh_kill_switch", &[]), 0.0);
    assert!(value(&s, "agentmesh_connections_opened_total", &[]) >= 1.0);
    // libp2p's families: swarm, kad, identify and ping count this run's
    // connections and queries.
    for prefix in [
        "libp2p_swarm_",
        "libp2p_kad_",
        "libp2p_identify_",
        "libp2p_ping_",
    ] {
        assert!(
            s.samples.iter().any(|x| x.metric.starts_with(prefix)),
            "samples of {prefix}*"
        );
    }
    assert!(value(&s, "libp2p_swarm_connections_established_total", &[]) >= 1.0);
    // Bob's side: his refused KNOCK is an outbound rate-limit refusal.
    let s = scrape_until(&bob.dir, "bob's refused KNOCK", |s| {
        value(
            s,
            "agentmesh_rate_limited_total",
            &[("direction", "outbound")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        value(
            &s,
            "agentmesh_messages_sent_total",
            &[("outcome", "rejected"), ("path", "none")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "agentmesh_knocks_total",
            &[("decision", "accepted"), ("reason", "none")]
        ),
        1.0,
        "alice's KNOCK"
    );
    for a in [alice, bob, boot] {
        a.stop().await;
    }
}

/// A plugin that only hosts libp2p's circuit relay server, with its default
/// limits.
#[derive(Debug)]
struct CircuitRelay;

impl Plugin for CircuitRelay {
    fn name(&self) -> &'static str {
        "circuit-relay"
    }

    fn circuit_relay(&self) -> Option<libp2p::relay::Config> {
        Some(libp2p::relay::Config::default())
    }

    fn start(&self, _ctx: PluginContext) -> Result<(), PluginError> {
        Ok(())
    }
}

/// An in-process node in `dir`, joined through `bootstrap`.
async fn in_process(dir: &Path, plugin: Option<CircuitRelay>, bootstrap: &[String]) -> Node {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    let mut b = Node::builder(c)
        .data_dir(dir)
        .passphrase(Passphrase::new("cli metrics"))
        .bootstraps(bootstrap.iter().map(|a| a.parse().unwrap()));
    if let Some(p) = plugin {
        b = b.plugin(p);
    }
    let node = b.spawn().await.expect("node starts");
    assert_eq!(node.wait_listening(2, WAIT).await.len(), 2);
    node
}

/// `GET /v1/status` of the agent in `dir` until `done` holds.
async fn status_until(dir: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = Value::Null;
    loop {
        if dir.join("api.json").exists() {
            let (status, body) = http(dir, "GET", "/v1/status", None).await;
            if status == 200 {
                last = serde_json::from_str(&body).unwrap();
                if done(&last) {
                    return last;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never; the last status: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bare libp2p peer behind the relay: relay client, DCUtR and identify.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Bare {
    relay: libp2p::relay::client::Behaviour,
    dcutr: libp2p::dcutr::Behaviour,
    identify: libp2p::identify::Behaviour,
}

/// Starts a bare peer that listens on loopback QUIC and through the relay
/// at `relay` (once its reservation is accepted, which this waits for), and
/// keeps running it. Its relayed address.
async fn bare_peer_behind(relay: &str) -> String {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .unwrap()
        .with_behaviour(|key, relay| Bare {
            relay,
            dcutr: libp2p::dcutr::Behaviour::new(key.public().to_peer_id()),
            identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                "/agentmesh/id/1".into(),
                key.public(),
            )),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    let relay: libp2p::Multiaddr = relay.parse().unwrap();
    swarm.dial(relay.clone()).unwrap();
    let me = *swarm.local_peer_id();
    let mut circuit_asked = false;
    let relayed = tokio::time::timeout(WAIT, async {
        loop {
            match swarm.select_next_some().await {
                // Once the relay told us how it sees us, reserve.
                SwarmEvent::Behaviour(BareEvent::Identify(libp2p::identify::Event::Received {
                    ..
                })) if !circuit_asked => {
                    circuit_asked = true;
                    swarm
                        .listen_on(relay.clone().with(libp2p::multiaddr::Protocol::P2pCircuit))
                        .unwrap();
                }
                SwarmEvent::NewListenAddr { address, .. }
                    if address.to_string().contains("p2p-circuit") =>
                {
                    return address.with_p2p(me).unwrap_or_else(|a| a).to_string();
                }
                _ => {}
            }
        }
    })
    .await
    .expect("a reservation in time");
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    relayed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_agents_metrics_show_reservations_circuits_and_hole_punches() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    // The relay, which is also the network's bootstrap node.
    let relay_dir = root.path().join("relay");
    let relay = in_process(&relay_dir, Some(CircuitRelay), &[]).await;
    let relay_addr = relay.wait_listening(2, WAIT).await[0].to_string();
    let relay_api = LocalApi::start(
        relay,
        &relay_dir,
        ApiOptions::new(Some("127.0.0.1:0".parse().unwrap())),
    )
    .await
    .unwrap();

    // Alice: the binary, reachable only through the relay. Her reservation
    // shows in her status and her metrics.
    let alice_dir = root.path().join("alice");
    let _alice = support::cli::agentmesh(&alice_dir)
        .args(["--json", "run", "--private", "--bootstrap", &relay_addr])
        .args(["--relay", &relay_addr])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("agentmesh run starts");
    let status = status_until(&alice_dir, "alice's reservation", |v| {
        v["relay_reservations"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    // Listening through the relay over QUIC and TCP: one reservation,
    // named by the preferred address.
    assert_eq!(
        status["relay_reservations"],
        json!([relay_addr]),
        "{status}"
    );
    let s = scrape(&alice_dir).await;
    assert_eq!(value(&s, "agentmesh_relay_reservations", &[]), 1.0);
    assert_eq!(value(&s, "agentmesh_mailbox_relays", &[]), 1.0);

    // Bob: the binary, directly reachable, joins through the relay and
    // through a circuit to a bare peer behind it. The bare peer's DCUtR
    // asks for a hole punch over the circuit; bob's DCUtR dials it.
    let bare = bare_peer_behind(&relay_addr).await;
    let bob_dir = root.path().join("bob");
    let _bob = support::cli::agentmesh(&bob_dir)
        .args([
            "--json",
            "run",
            "--bootstrap",
            &relay_addr,
            "--bootstrap",
            &bare,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("agentmesh run starts");
    status_until(&bob_dir, "bob's API", |_| true).await;
    let s = scrape_until(&bob_dir, "bob's hole punch", |s| {
        samples(s, "libp2p_dcutr_events_total", &[])
            .next()
            .is_some()
    })
    .await;
    assert!(
        s.docs.contains_key("libp2p_dcutr_events"),
        "HELP of the dcutr family"
    );
    let punched = value(
        &s,
        "libp2p_dcutr_events_total",
        &[("event", "DirectConnectionUpgradeSucceeded")],
    );
    assert!(punched >= 1.0, "a direct connection on loopback");
    // The node counts the hole punch too.
    let s = scrape_until(&bob_dir, "bob's own hole punch count", |s| {
        value(s, "agentmesh_hole_punches_total", &[("result", "ok")]) >= 1.0
    })
    .await;
    assert_eq!(value(&s, "agentmesh_relay_reservations", &[]), 0.0);

    // The relay's side, from the same /metrics route of its local API: the
    // reservations it granted and the circuit it carried.
    // (prometheus-client types the family, `libp2p_relay_events`, not its
    // `_total` samples: the parser reads those untyped.)
    let relay_events = |s: &Scrape, event: &str| {
        samples(s, "libp2p_relay_events_total", &[("event", event)])
            .map(|x| match x.value {
                Prom::Counter(v) | Prom::Untyped(v) => v,
                ref other => panic!("{other:?}"),
            })
            .sum::<f64>()
    };
    let s = scrape_until(&relay_dir, "the relay's reservations and circuit", |s| {
        relay_events(s, "ReservationReqAccepted") >= 2.0
            && relay_events(s, "CircuitReqAccepted") >= 1.0
    })
    .await;
    assert!(
        s.docs.contains_key("libp2p_relay_events"),
        "HELP of the relay family"
    );
    relay_api.stop().await;
}
