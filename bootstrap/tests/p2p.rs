//! `/agentmesh/registry/1` against the `agentmesh-bootstrap` binary: an
//! in-process node registers, looks up, searches, checks revocations and
//! the transparency log over libp2p streams; bad frames are refused.

use std::time::Duration;

use agentmesh_node::{
    crypto::keystore::KdfParams,
    registry::{
        self,
        protocol::{call, read_frame, write_frame, Request, Response, MAX_RESPONSE_SIZE, PROTOCOL},
        Feedback, Operation, Registration, SignedRequest,
    },
    trust::transparency::{leaf_hash, InclusionProof, SignedTreeHead},
    Amid, Config, Identity, Node, Passphrase, PeerId, Tier,
};
use futures::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;

mod support;

use support::{cli, json_of, now_ms, start_registry, Http, WAIT};

const TIMEOUT: Duration = Duration::from_secs(60);

fn ok(r: Response) -> Value {
    match r {
        Response::Ok { body } => body,
        other => panic!("{other:?}"),
    }
}

fn code(r: Response) -> String {
    match r {
        Response::Error { code, .. } => code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_answers_over_libp2p() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), "p2p-test").await;
    let registry: PeerId = server.peer_id();
    let mut config = Config::local();
    config.kdf = KdfParams::throwaway();
    let node = Node::builder(config)
        .data_dir(dir.path().join("alice"))
        .passphrase(Passphrase::new("alice"))
        .bootstrap(server.addr.parse().unwrap())
        .spawn()
        .await
        .unwrap();
    let me = node.identity();
    let me_amid = me.amid();
    let control = node.stream_control();
    let ask = |r: Request| {
        let mut c = control.clone();
        async move { call(&mut c, registry, &r, TIMEOUT).await.expect("answer") }
    };

    // Register (a signed request), then find the agent.
    let reg = Registration::new("Alice", vec!["weather/forecast".into()]);
    let request = SignedRequest::sign(me, Operation::Register(reg), now_ms()).unwrap();
    let v = ok(ask(Request::Signed {
        request: request.clone(),
    })
    .await);
    assert_eq!(v["created"], true, "{v}");
    // The same signed request again is a replay.
    assert_eq!(code(ask(Request::Signed { request }).await), "replayed");
    let v = ok(ask(Request::Lookup { amid: me.amid() }).await);
    assert_eq!(v["display_name"], "Alice");
    let v = ok(ask(Request::Search {
        capability: "weather".into(),
        tier_min: None,
        reputation_min: None,
        limit: Some(5),
    })
    .await);
    assert_eq!(v["count"], 1);
    assert_eq!(v["results"][0]["amid"], me.amid().to_string());
    let v = ok(ask(Request::Search {
        capability: "weather".into(),
        tier_min: Some(Tier::Verified),
        reputation_min: None,
        limit: None,
    })
    .await);
    assert_eq!(v["count"], 0);
    let v = ok(ask(Request::Did { amid: me.amid() }).await);
    assert_eq!(v["id"], format!("did:agentmesh:{}", me.amid()));
    let stranger: Amid = Identity::from_seed(&[9; 32]).amid();
    assert_eq!(
        code(ask(Request::Lookup { amid: stranger }).await),
        "unknown_agent"
    );
    let v = ok(ask(Request::Revocation { amid: me.amid() }).await);
    assert_eq!(v["revoked"], false);
    let v = ok(ask(Request::Crl).await);
    assert_eq!(
        (v["issuer"].as_str(), v["count"].as_u64()),
        (Some(server.root.as_str()), Some(0))
    );
    let v = ok(ask(Request::Root).await);
    assert_eq!(v["root"], server.root);
    let v = ok(ask(Request::Credentials { amid: me.amid() }).await);
    assert_eq!(v["tier"], "anonymous");

    // Reputation evidence, the leaderboard and organizations.
    let v = ok(ask(Request::Evidence { amid: me.amid() }).await);
    assert_eq!(v["amid"], serde_json::json!(me.amid()));
    assert_eq!(v["score"]["score"], 0.5);
    assert_eq!(v["receipts"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        code(ask(Request::Evidence { amid: stranger }).await),
        "unknown_agent"
    );
    let v = ok(ask(Request::Leaderboard { limit: Some(5) }).await);
    assert_eq!(v["leaderboard"][0]["amid"], serde_json::json!(me.amid()));
    assert_eq!(v["leaderboard"][0]["rank"], 1);
    assert_eq!(
        code(
            ask(Request::Org {
                domain: "example.com".into()
            })
            .await
        ),
        "not_found"
    );

    // Ratings go over HTTP only.
    let fb = Operation::Feedback(Feedback::new(hex::encode([1u8; 16]), stranger, 0.9));
    let request = SignedRequest::sign(me, fb, now_ms()).unwrap();
    assert_eq!(code(ask(Request::Signed { request }).await), "forbidden");

    // The registration is a key binding in the transparency log.
    let root: Amid = server.root.parse().unwrap();
    let head: SignedTreeHead =
        serde_json::from_value(ok(ask(Request::LogHead { size: None }).await)).unwrap();
    head.verify(&root.verifying_key().unwrap()).unwrap();
    assert_eq!(head.size, 1);
    let v = ok(ask(Request::LogProof {
        index: Some(0),
        hash: None,
        size: None,
    })
    .await);
    let proof: InclusionProof = serde_json::from_value(v["proof"].clone()).unwrap();
    let leaf = hex::decode(v["leaf"].as_str().unwrap()).unwrap();
    proof.verify(&leaf_hash(&leaf), &head).unwrap();
    assert_eq!(
        code(
            ask(Request::LogConsistency {
                first: 2,
                second: None
            })
            .await
        ),
        "out_of_range"
    );

    // Garbage in a frame: a typed refusal, not a dropped connection.
    let mut stream = node
        .stream_control()
        .open_stream(registry, PROTOCOL)
        .await
        .unwrap();
    write_frame(&mut stream, b"\xa1\x64junk").await.unwrap();
    let answer = read_frame(&mut stream, MAX_RESPONSE_SIZE).await.unwrap();
    assert_eq!(
        code(Response::from_bytes(&answer).unwrap()),
        "invalid_request"
    );
    // An oversized frame: the registry closes the stream without reading it.
    let mut stream = node
        .stream_control()
        .open_stream(registry, PROTOCOL)
        .await
        .unwrap();
    stream
        .write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(read.is_err() || rest.is_empty());
    // The registry still answers.
    ok(ask(Request::Root).await);

    // A program that is not a node asks through a client of its own.
    let client = registry::Client::connect(&server.addr.parse().unwrap()).unwrap();
    assert_eq!(client.peer(), registry);
    let v = ok(client
        .call(&Request::Lookup { amid: me_amid }, TIMEOUT)
        .await
        .unwrap());
    assert_eq!(v["amid"], me_amid.to_string());
    let status = Operation::Status {
        presence: agentmesh_node::Presence::Away,
    };
    let v = ok(client
        .signed(SignedRequest::sign(me, status, now_ms()).unwrap(), TIMEOUT)
        .await
        .unwrap());
    assert_eq!(v["presence"], "away");
    assert!(matches!(
        registry::Client::connect(&"/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()),
        Err(registry::ClientError::Address(_))
    ));
    node.shutdown().await;

    // The operator's metrics counted the requests, by kind and result.
    let page = server.page.clone().expect("an operator page");
    let addr = page
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (status, metrics) = support::raw_get(&addr, "127.0.0.1", "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let count = |labels: &str| {
        let line = format!("agentmesh_registry_p2p_requests_total{{{labels}}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    assert!(count(r#"request="lookup",result="ok""#) >= 1, "{metrics}");
    assert!(
        count(r#"request="lookup",result="unknown_agent""#) >= 1,
        "{metrics}"
    );
    assert!(
        count(r#"request="signed",result="replayed""#) >= 1,
        "{metrics}"
    );
    assert!(count(r#"request="root",result="ok""#) >= 2, "{metrics}");
    assert_eq!(count(r#"request="crl",result="ok""#), 1, "{metrics}");

    // The CLI speaks the protocol when the registry is a multiaddr.
    let home = dir.path().join("bob");
    let (ok, out) = cli(&home, "p2p-test", &server.addr, &["init"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &home,
        "p2p-test",
        &server.addr,
        &[
            "--json",
            "register",
            "--name",
            "Bob",
            "--capability",
            "weather/alerts",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["created"], true, "{out}");
    let (ok, out) = cli(
        &home,
        "p2p-test",
        &server.addr,
        &["--json", "search", "weather"],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["count"], 2, "{out}");
    let (ok, out) = cli(
        &home,
        "p2p-test",
        &server.addr,
        &["--json", "reputation", "verify", &me_amid.to_string()],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["ok"], true, "{out}");
    let (ok, out) = cli(
        &home,
        "p2p-test",
        &server.addr,
        &["did", &stranger.to_string()],
    )
    .await;
    assert!(!ok && out.contains("unknown_agent"), "{out}");
}

/// The doctor's clock check against a real registry: the node asks it the
/// time over `/agentmesh/registry/1`, and both run on this machine's clock,
/// so the offset found is within half the round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_finds_the_clock_in_step_with_the_registry() {
    use agentmesh_node::{
        api::{ApiOptions, LocalApi},
        control::{Client, Method},
        daemon::DEFAULT_API_ADDR,
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), "clock-test").await;
    let mut config = support::fast_config();
    config.registry = Some(server.addr.parse().unwrap());
    let alice = support::node(dir.path(), "alice", config, &server.addr).await;

    // The request itself: the registry's clock as it answers.
    let mut control = alice.stream_control();
    let before = now_ms();
    let v = ok(
        call(&mut control, server.peer_id(), &Request::Time, TIMEOUT)
            .await
            .expect("answer"),
    );
    let after = now_ms();
    let t = v["time_ms"].as_u64().unwrap_or_else(|| panic!("{v}"));
    assert!(before <= t && t <= after, "{before} <= {t} <= {after}");

    // One reading: the offset is within half the round trip (plus the
    // milliseconds lost to rounding).
    let reading = alice.registry_clock().await.expect("a reading");
    assert!(
        reading.offset_ms().unsigned_abs() <= reading.uncertainty_ms() + 2,
        "{reading:?}: offset {}",
        reading.offset_ms()
    );

    // The doctor, through the local API.
    let alice_dir = dir.path().join("alice");
    let api = LocalApi::start(
        alice.clone(),
        &alice_dir,
        ApiOptions::new(Some(DEFAULT_API_ADDR)),
    )
    .await
    .expect("API starts");
    let mut c = Client::connect(&alice_dir).await.unwrap();
    let d = c
        .call(Method::GET, "/v1/diagnostics", None)
        .await
        .unwrap()
        .expect("diagnostics");
    let check = |d: &Value, name: &str| {
        d["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {d:#}"))
            .clone()
    };
    let f = check(&d, "clock vs registry");
    assert_eq!(f["result"], "ok", "{f}");
    assert_eq!(f["fix"], Value::Null, "{f}");
    let detail = f["detail"].as_str().unwrap();
    assert!(
        detail.contains(" ms ") && detail.contains("the registry's (±") && detail.ends_with(" ms)"),
        "{detail}"
    );
    let clock = &d["registry_clock"];
    let (offset, uncertainty) = (
        clock["offset_ms"].as_i64().unwrap(),
        clock["uncertainty_ms"].as_u64().unwrap(),
    );
    assert!(offset.unsigned_abs() <= uncertainty + 2, "{clock}");
    api.stop().await;

    // Bob has no registry: the check is skipped, and says why.
    let bob = support::node(dir.path(), "bob", support::fast_config(), &server.addr).await;
    let bob_dir = dir.path().join("bob");
    let api = LocalApi::start(
        bob.clone(),
        &bob_dir,
        ApiOptions::new(Some(DEFAULT_API_ADDR)),
    )
    .await
    .expect("API starts");
    let mut c = Client::connect(&bob_dir).await.unwrap();
    let d = c
        .call(Method::GET, "/v1/diagnostics", None)
        .await
        .unwrap()
        .expect("diagnostics");
    let f = check(&d, "clock vs registry");
    assert_eq!(
        (f["result"].as_str(), f["detail"].as_str()),
        (Some("skip"), Some("no registry configured")),
        "{f}"
    );
    assert_eq!(d["registry_clock"], Value::Null);
    api.stop().await;
    bob.shutdown().await;
    alice.shutdown().await;
}

/// A node checks a real registry's transparency log: the first head is
/// kept, and after more registrations the registry's consistency proof
/// links the new head to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_checks_that_the_registry_log_only_grows() {
    use agentmesh_node::LogCheck;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), "log-check-test").await;
    let http = Http::new(&server.url);
    let mut config = support::fast_config();
    config.registry = Some(server.addr.parse().unwrap());
    config.revocation_sync = None;
    let alice = support::node(dir.path(), "alice", config, &server.addr).await;
    let register = |who: &Identity| {
        SignedRequest::sign(
            who,
            Operation::Register(Registration::new("Agent", vec!["chat".into()])),
            now_ms(),
        )
        .unwrap()
    };
    let (s, v) = http
        .post("/v1/registry/register", &register(&Identity::generate()))
        .await;
    assert_eq!(s, 200, "{v}");

    let first = alice.check_registry_log().await.expect("a head");
    let LogCheck::First { size } = first else {
        panic!("{first:?}")
    };
    assert!(size >= 1);
    for _ in 0..3 {
        let (s, v) = http
            .post("/v1/registry/register", &register(&Identity::generate()))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    match alice.check_registry_log().await.expect("consistent") {
        LogCheck::Consistent { from, to } => assert!(from == size && to >= size + 3, "{from} {to}"),
        other => panic!("{other:?}"),
    }
}
