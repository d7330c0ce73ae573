//! The `agentmesh-relay` binary as a real process: its volunteer's page and
//! `/metrics` on loopback. An agent behind the relay reserves a slot,
//! another deposits mail (and one forged envelope), fetches and acks; a
//! third, with no direct address either, messages the first through a
//! circuit; the metrics, parsed by a
//! Prometheus text parser, and the page show it, the bytes the relay
//! carried among them.

use std::{path::Path, process::Stdio, time::Duration};

use agentmesh_node::{
    crypto::envelope::{EnvelopeBody, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION},
    crypto::keystore::KdfParams,
    Amid, Config, Identity, Multiaddr, Node, Passphrase, PathKind, PeerId, Reachability,
};
use agentmesh_relay::mailbox::{self, ErrorCode, MailboxError};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

/// Generous: the machine may be busy with builds.
const WAIT: Duration = Duration::from_secs(90);

fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn now_ms() -> u64 {
    agentmesh_dht::now_ms()
}

/// Starts the binary on `dir` with `--json`; returns it and its `ready`
/// line.
async fn start_relay(dir: &Path) -> (Child, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentmesh-relay"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .env("AGENTMESH_PASSPHRASE", "relay-page-test")
        .env_remove("AGENTMESH_PASSPHRASE_FILE")
        .env_remove("AGENTMESH_BOOTSTRAP")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("relay starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("ready line");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["event"] == "ready" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("ready in time");
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, ready)
}

/// An in-process node named `name` that joins through the relay.
async fn node(dir: &Path, name: &str, relay: &Multiaddr, private: bool) -> Node {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    if private {
        c.reachability = Reachability::Private;
        c.relays = vec![relay.clone()];
    } else {
        // Keeps no mailbox, so it never fetches on its own.
        c.mailbox_relays = 0;
    }
    Node::builder(c)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .bootstrap(relay.clone())
        .spawn()
        .await
        .expect("node starts")
}

/// An envelope `from` signs for `to`.
fn sealed(from: &Node, to: &Amid, id: [u8; 16], expires_ms: u64) -> Vec<u8> {
    SignedEnvelope::seal(
        from.identity(),
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: MessageId(id),
            from: from.amid(),
            to: *to,
            session: SessionId([0; 16]),
            seq: 0,
            ts_ms: now_ms(),
            expires_ms,
            olm_type: 1,
            ciphertext: vec![id[0]; 64],
        },
    )
    .unwrap()
    .to_bytes()
}

/// A GET of `path` on `addr` with `host` as the `Host` header: status and
/// body.
async fn get(addr: &str, host: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        String::from_utf8(resp).unwrap()
    };
    let resp = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answer in time");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, body.to_owned())
}

/// `/metrics`, parsed by a Prometheus text format parser.
async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "127.0.0.1", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = s.samples.iter().find(|x| {
        x.metric == name
            && labels
                .iter()
                .all(|(k, v)| x.labels.get(k).is_some_and(|l| l == *v))
    });
    match found.map(|x| &x.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

/// The sum of the samples `name` whose labels include `labels`, over all
/// their other labels.
fn total(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| {
            x.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(k).is_some_and(|l| l == *v))
        })
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} {labels:?}: {other:?}"),
        })
        .sum()
}

/// The bytes the relay received and sent, from its `/metrics`.
async fn relay_bytes(addr: &str) -> (f64, f64) {
    let s = scrape(addr).await;
    let name = "libp2p_bandwidth_bytes_total";
    (
        total(&s, name, &[("direction", "Inbound")]),
        total(&s, name, &[("direction", "Outbound")]),
    )
}

/// Waits until `node` is published with only addresses through the relay.
async fn wait_relayed_card(node: &Node) {
    assert!(node.wait_published(WAIT).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let card = node.lookup(&node.amid()).await;
        let addrs = card.map(|c| c.addrs).unwrap_or_default();
        if !addrs.is_empty() && addrs.iter().all(|a| a.contains("p2p-circuit")) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the card never listed only relayed addresses: {addrs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_page_and_metrics_show_reservations_and_mail() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (_relay, ready) = start_relay(&dir.path().join("relay")).await;
    let page = ready["page"].as_str().expect("a page URL").to_owned();
    let addr = page
        .strip_prefix("http://")
        .and_then(|p| p.strip_suffix('/'))
        .unwrap()
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(ready["metrics"], format!("{page}metrics"));
    let relay_addr: Multiaddr = ready["addrs"][0].as_str().unwrap().parse().unwrap();
    let relay_peer: PeerId = ready["amid"]
        .as_str()
        .unwrap()
        .parse::<Amid>()
        .unwrap()
        .peer_id()
        .unwrap();

    // Before any traffic: the counters are there, at zero.
    let before = scrape(&addr).await;
    assert_eq!(
        sample(&before, "agentmesh_relay_mailbox_deposits_total", &[]),
        0.0
    );
    assert_eq!(
        sample(&before, "agentmesh_relay_mailbox_envelopes", &[]),
        0.0
    );

    // Bob has no direct address: he reserves a slot on the relay.
    let bob = node(dir.path(), "bob", &relay_addr, true).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(&addr).await;
        if sample(&s, "agentmesh_relay_reservations_active", &[]) >= 1.0 {
            assert!(
                sample(
                    &s,
                    "agentmesh_relay_reservations_total",
                    &[("result", "accepted")]
                ) >= 1.0
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reservation in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Alice deposits two envelopes for carol (who is not online) and one
    // forged one, then reads and acks her own (empty) mailbox.
    let alice = node(dir.path(), "alice", &relay_addr, false).await;
    let carol = Identity::generate().amid();
    let carol_peer = carol.peer_id().unwrap();
    let mut control = alice.stream_control();
    let far = now_ms() + 3_600_000;
    for i in [1u8, 2] {
        let env = sealed(&alice, &carol, [i; 16], far);
        let stored = tokio::time::timeout(
            WAIT,
            mailbox::deposit(&mut control, relay_peer, &carol_peer, [i; 16], far, env),
        )
        .await
        .expect("deposit in time");
        assert!(!stored.unwrap(), "not a duplicate");
    }
    let forged = sealed(&alice, &bob.amid(), [3; 16], far);
    let r = mailbox::deposit(&mut control, relay_peer, &carol_peer, [3; 16], far, forged).await;
    assert!(
        matches!(
            r,
            Err(MailboxError::Refused {
                code: ErrorCode::Forged,
                ..
            })
        ),
        "{r:?}"
    );
    let alice_peer = alice.amid().peer_id().unwrap();
    let (items, _) = mailbox::fetch(&mut control, relay_peer, &alice_peer, 50)
        .await
        .unwrap();
    assert!(items.is_empty());
    let (removed, _) = mailbox::ack(&mut control, relay_peer, &alice_peer, &[[9; 16]])
        .await
        .unwrap();
    assert_eq!(removed, 0);

    let s = scrape(&addr).await;
    // libp2p's own families (the relay's circuits among them) follow.
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric.starts_with("libp2p_swarm_")),
        "libp2p's metrics in the scrape"
    );
    assert_eq!(
        sample(&s, "agentmesh_relay_mailbox_deposits_total", &[]),
        2.0
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_relay_mailbox_refusals_total",
            &[("reason", "forged")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_relay_mailbox_refusals_total",
            &[("reason", "mailbox_full")]
        ),
        0.0
    );
    // Bob drains his own mailbox too: at least alice's fetch and ack.
    assert!(sample(&s, "agentmesh_relay_mailbox_fetches_total", &[]) >= 1.0);
    assert!(sample(&s, "agentmesh_relay_mailbox_acks_total", &[]) >= 1.0);
    assert!(sample(&s, "agentmesh_relay_peers_connected", &[]) >= 2.0);
    assert!(sample(&s, "agentmesh_relay_uptime_seconds", &[]) >= 0.0);
    // The occupancy is counted at most every 5 s: wait for a fresh count.
    let deadline = tokio::time::Instant::now() + WAIT;
    let s = loop {
        let s = scrape(&addr).await;
        if sample(&s, "agentmesh_relay_mailbox_envelopes", &[]) == 2.0 {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "occupancy not updated"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(sample(&s, "agentmesh_relay_mailbox_recipients", &[]), 1.0);
    assert!(sample(&s, "agentmesh_relay_mailbox_bytes", &[]) > 0.0);
    assert_eq!(
        sample(
            &s,
            "agentmesh_relay_mailbox_recipients_by_occupancy",
            &[("max_envelopes", "5")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "agentmesh_relay_mailbox_recipients_by_occupancy",
            &[("max_envelopes", "+Inf")]
        ),
        0.0
    );

    // The page holds the same figures, and names no recipient.
    let (status, html) = get(&addr, &addr, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("AgentMesh relay"));
    assert!(html.contains(ready["amid"].as_str().unwrap()));
    assert!(
        html.contains(r#"<b data-k="mailbox.deposits">2</b>"#),
        "{html}"
    );
    assert!(html.contains(r#"<b data-k="occupancy.stats.envelopes">2</b>"#));
    assert!(html.contains("<tr><td>mailbox: forged</td><td>1</td></tr>"));
    assert!(html.contains("<tr><td>2–5</td><td>1</td></tr>"));
    assert!(!html.contains(&carol.to_string()));
    assert!(!html.contains("src=\"http"), "no external assets");
    let (status, json) = get(&addr, "localhost", "/status").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["mailbox"]["deposits"], 2);
    assert!(v["circuit"]["reservations"].as_u64().unwrap() >= 1);

    // Dora, with no direct address either, messages bob: only a circuit
    // joins them. The relay counts the bytes it carries, in from one end
    // and out to the other.
    let dora = node(dir.path(), "dora", &relay_addr, true).await;
    wait_relayed_card(&bob).await;
    let mut inbox = bob.messages().unwrap();
    let r = tokio::time::timeout(WAIT, dora.send(&bob.amid(), json!({"n": 1})))
        .await
        .expect("send in time")
        .expect("sent");
    assert_eq!(r.path, PathKind::Relayed);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("message in time")
        .expect("a message");
    assert_eq!(m.path, PathKind::Relayed);
    let (in1, out1) = relay_bytes(&addr).await;
    assert!(
        in1 > 0.0 && out1 > 0.0,
        "bytes counted: {in1} in, {out1} out"
    );
    // A 20 kB message more: at least that much more each way, since the
    // relay reads it from dora and writes it to bob.
    let big = "x".repeat(20_000);
    let r = tokio::time::timeout(WAIT, dora.send(&bob.amid(), json!({ "big": big })))
        .await
        .expect("send in time")
        .expect("sent");
    assert_eq!(r.path, PathKind::Relayed);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("message in time")
        .expect("a message");
    assert_eq!(m.payload["big"].as_str().map(str::len), Some(20_000));
    let (in2, out2) = relay_bytes(&addr).await;
    assert!(in2 >= in1 + 20_000.0, "bytes in grew: {in1} -> {in2}");
    assert!(out2 >= out1 + 20_000.0, "bytes out grew: {out1} -> {out2}");
    // The page's figures say the same, with rates.
    let (_, json) = get(&addr, "localhost", "/status").await;
    let v: Value = serde_json::from_str(&json).unwrap();
    let b = &v["bandwidth"];
    assert!(b["bytes_in"].as_f64().unwrap() >= in2, "{b}");
    assert!(b["bytes_out"].as_f64().unwrap() >= out2, "{b}");
    assert!(b["in_per_sec"].as_f64().unwrap() > 0.0, "{b}");
    assert!(b["out_per_sec"].as_f64().unwrap() > 0.0, "{b}");
    let (_, html) = get(&addr, &addr, "/").await;
    assert!(html.contains("Bytes carried"));
    assert!(
        html.contains(r#"<b data-bytes="bandwidth.bytes_in">"#) && html.contains(" kB</b>"),
        "{html}"
    );

    // A page on loopback does not answer a rebound domain name.
    let (status, _) = get(&addr, "attacker.example", "/metrics").await;
    assert_eq!(status, 403);

    bob.shutdown().await;
    alice.shutdown().await;
    dora.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_not_served_on_a_public_address_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_agentmesh-relay"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--metrics", "0.0.0.0:0"])
            .env("AGENTMESH_PASSPHRASE", "relay-page-test")
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-public"), "{err}");
}
