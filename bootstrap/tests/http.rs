//! The `agentmesh-bootstrap` binary as a real process, its HTTP API on
//! loopback, endpoint by endpoint; then killed and restarted on the same
//! data directory.

use std::time::Duration;

use serde_json::{json, Value};

use agentmesh_bootstrap::http::MAX_BODY;
use agentmesh_node::{
    card::Presence,
    crypto::keystore::KdfParams,
    registry::{
        revocation_namespace, Feedback, Operation, PrekeyBundle, ReceiptBody, Registration,
        SessionReceipt, SignedRequest, SignedRevocation,
    },
    Amid, Config, Identity, Node, Passphrase,
};

mod support;

use support::{now_ms, start, Http, WAIT};

/// POSTs to `path` a body announced as `declared` bytes, over a plain
/// connection that reads the answer itself, so that what the server does
/// is seen whatever it is. The request asks `Expect: 100-continue`: a
/// server that refuses on the length alone answers before any of the body
/// is sent; one that reads the body to find it too large is sent
/// `MAX_BODY + 1` bytes of it (enough to be over), which it reads in full
/// before it answers, so no unread data makes it reset the connection and
/// its answer is never lost. Returns the final status and JSON body;
/// panics, with what happened, on a reset, a hang or an answer that is not
/// HTTP.
async fn post_oversized(base: &str, path: &str, declared: usize) -> (u16, Value) {
    use tokio::io::AsyncWriteExt;
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {declared}\r\nExpect: 100-continue\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        let (mut status, mut body) = read_response(&mut conn, &mut buf).await?;
        if status == 100 {
            conn.write_all(&vec![b'x'; (MAX_BODY + 1).min(declared)])
                .await?;
            conn.flush().await?;
            (status, body) = read_response(&mut conn, &mut buf).await?;
        }
        Ok::<_, std::io::Error>((status, body))
    };
    match tokio::time::timeout(WAIT, exchange).await {
        Ok(Ok((status, body))) => (status, serde_json::from_slice(&body).unwrap_or(Value::Null)),
        Ok(Err(e)) => panic!("POST {path} of {declared} bytes: no answer: {e}"),
        Err(_) => panic!("POST {path} of {declared} bytes: no answer in {WAIT:?}"),
    }
}

/// Reads one HTTP/1.1 response (status line, headers, a body of its
/// `Content-Length`) from `conn`, `buf` holding what was read past the
/// previous one.
async fn read_response(
    conn: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if conn.read_buf(buf).await? == 0 {
            return Err(bad(format!(
                "closed before a full answer: {:?}",
                String::from_utf8_lossy(buf)
            )));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP/1.1 answer: {head:?}")))?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .map_err(|e| bad(format!("content-length: {e}")))?
        .unwrap_or(0);
    while buf.len() < end + length {
        if conn.read_buf(buf).await? == 0 {
            return Err(bad(format!("closed within the body of {head:?}")));
        }
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Ok((status, body))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn reg(name: &str, caps: &[&str]) -> Operation {
    Operation::Register(Registration::new(
        name,
        caps.iter().map(|c| c.to_string()).collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_endpoints_and_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bootstrap");
    let mut server = start(&data, "registry-test", &["--http", "127.0.0.1:0"]).await;
    let http = Http::new(&server.url);
    let (alice, bob, carol) = (
        Identity::from_seed(&[1; 32]),
        Identity::from_seed(&[2; 32]),
        Identity::from_seed(&[3; 32]),
    );

    // health
    let (s, v) = http.get("/v1/health").await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"], "ok");
    assert_eq!(v["root"], server.root);

    // register
    let (s, v) = http
        .signed(
            "/v1/registry/register",
            &alice,
            reg("Alice", &["weather/forecast", "chat"]),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["created"], true);
    for (who, name, caps) in [
        (&bob, "Bob", &["weather/alerts"][..]),
        (&carol, "Carol", &["chat"][..]),
    ] {
        let (s, v) = http
            .signed("/v1/registry/register", who, reg(name, caps))
            .await;
        assert_eq!(s, 200, "{v}");
    }

    // lookup
    let (s, v) = http
        .get(&format!("/v1/registry/lookup?amid={}", alice.amid()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["display_name"], "Alice");
    assert_eq!(v["tier"], "anonymous");
    assert_eq!(v["reputation"], 0.5);
    assert_eq!(v["presence"], "online");

    // bad input: forged signature, malformed JSON, oversized body, unknown
    // and invalid AMIDs, replay, stale timestamp, wrong operation.
    let mut forged = SignedRequest::sign(&bob, reg("Mallory", &["chat"]), now_ms()).unwrap();
    forged.signer = alice.amid();
    let (s, v) = http.post("/v1/registry/register", &forged).await;
    assert_eq!((s, code(&v)), (401, "bad_signature"));
    let (s, v) = http
        .call("POST", "/v1/registry/register", Some(b"{not json".to_vec()))
        .await;
    assert_eq!((s, code(&v)), (400, "malformed_json"));
    // Over the limit, well over or just: answered 413, never a reset.
    for declared in [200 * 1024, 65 * 1024, MAX_BODY + 1] {
        let (s, v) = post_oversized(&server.url, "/v1/registry/register", declared).await;
        assert_eq!(
            (s, code(&v)),
            (413, "payload_too_large"),
            "a body of {declared} bytes: {v}"
        );
    }
    let stranger = Identity::from_seed(&[9; 32]).amid();
    let (s, v) = http
        .get(&format!("/v1/registry/lookup?amid={stranger}"))
        .await;
    assert_eq!((s, code(&v)), (404, "unknown_agent"));
    let (s, v) = http.get("/v1/registry/lookup?amid=amNOPE").await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    let (s, v) = http.get("/v1/registry/lookup").await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    let once = SignedRequest::sign(
        &bob,
        Operation::Status {
            presence: Presence::Away,
        },
        now_ms(),
    )
    .unwrap();
    assert_eq!(http.post("/v1/registry/status", &once).await.0, 200);
    let (s, v) = http.post("/v1/registry/status", &once).await;
    assert_eq!((s, code(&v)), (409, "replayed"));
    let stale = SignedRequest::sign(&carol, reg("Old", &["chat"]), now_ms() - 3_600_000).unwrap();
    let (s, v) = http.post("/v1/registry/register", &stale).await;
    assert_eq!((s, code(&v)), (401, "stale_timestamp"));
    let (s, v) = http
        .signed("/v1/registry/status", &carol, reg("Carol", &["chat"]))
        .await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    let (s, v) = http
        .signed(
            "/v1/registry/status",
            &Identity::from_seed(&[9; 32]),
            Operation::Status {
                presence: Presence::Away,
            },
        )
        .await;
    assert_eq!((s, code(&v)), (404, "unknown_agent"));
    let (s, v) = http.get("/v1/nothing-here").await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = http.get("/v1/registry/register").await;
    assert_eq!((s, code(&v)), (405, "method_not_allowed"));
    // Nothing of the refused requests was stored.
    let (_, v) = http
        .get(&format!("/v1/registry/lookup?amid={}", alice.amid()))
        .await;
    assert_eq!(v["display_name"], "Alice");
    let (_, v) = http
        .get(&format!("/v1/registry/lookup?amid={}", carol.amid()))
        .await;
    assert_eq!(v["display_name"], "Carol");
    let (_, v) = http
        .get(&format!("/v1/registry/lookup?amid={}", bob.amid()))
        .await;
    assert_eq!(v["presence"], "away");

    // capabilities
    let (s, _) = http
        .signed(
            "/v1/registry/capabilities",
            &carol,
            Operation::Capabilities {
                capabilities: vec!["chat".into(), "weather/radar".into()],
            },
        )
        .await;
    assert_eq!(s, 200);

    // search
    let (s, v) = http.get("/v1/registry/search?capability=weather").await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 3);
    let (_, v) = http
        .get("/v1/registry/search?capability=weather/forecast")
        .await;
    assert_eq!(v["results"][0]["amid"], alice.amid().to_string());
    assert_eq!(v["count"], 1);
    let (_, v) = http
        .get("/v1/registry/search?capability=weather&tier_min=verified")
        .await;
    assert_eq!(v["count"], 0);
    let (_, v) = http
        .get("/v1/registry/search?capability=weather&reputation_min=0.9")
        .await;
    assert_eq!(v["count"], 0);
    let (s, v) = http
        .get("/v1/registry/search?capability=weather&tier_min=gold")
        .await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));

    // prekeys
    let bundle = PrekeyBundle::new([4; 32], [5; 32], &[[6; 32], [7; 32]]);
    let (s, v) = http
        .signed("/v1/registry/prekeys", &alice, Operation::Prekeys(bundle))
        .await;
    assert_eq!(s, 200, "{v}");
    // A fetch is unauthenticated: it hands out the identity and fallback
    // keys and uses up no one-time key, however often it is made.
    let path = format!("/v1/registry/prekeys/{}", alice.amid());
    for _ in 0..3 {
        let (s, v) = http.get(&path).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["identity_key"], hex::encode([4; 32]));
        assert_eq!(v["fallback_key"], hex::encode([5; 32]));
        assert_eq!(v["one_time_key"], Value::Null);
        assert_eq!(v["remaining"], 2);
    }
    let (s, v) = http
        .get(&format!("/v1/registry/prekeys/{}", bob.amid()))
        .await;
    assert_eq!((s, code(&v)), (404, "not_found"));

    // reputation: receipts signed by both sides, then ratings.
    let sid = [8u8; 16];
    let receipt = SessionReceipt::sign(
        &ReceiptBody::new(sid, alice.amid(), bob.amid(), true, now_ms()),
        &alice,
        &bob,
    )
    .unwrap();
    let rate = |target: &Identity, score| {
        Operation::Feedback(Feedback::new(hex::encode(sid), target.amid(), score))
    };
    let (s, v) = http
        .signed("/v1/registry/reputation", &alice, rate(&bob, 1.0))
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    let (s, v) = http
        .signed(
            "/v1/registry/reputation/session",
            &alice,
            Operation::Session {
                receipt: receipt.clone(),
            },
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = http
        .signed("/v1/registry/reputation", &alice, rate(&bob, 1.0))
        .await;
    assert_eq!(s, 200);
    let (s, _) = http
        .signed("/v1/registry/reputation", &bob, rate(&alice, 0.0))
        .await;
    assert_eq!(s, 200);
    let (s, v) = http
        .get(&format!(
            "/v1/registry/reputation/score?amid={}",
            bob.amid()
        ))
        .await;
    assert_eq!(s, 200);
    // Alice: tier 2 (×0.5), registered just now (×0.25), rated back by bob
    // (mutual, ×0.2): 0.025.
    assert!(
        (v["weights"][0].as_f64().unwrap() - 0.025).abs() < 1e-9,
        "{v}"
    );
    assert_eq!(v["sessions"], 1);
    // Bob's rating of Alice comes from the same address as Alice's of Bob,
    // but to another target: it counts (×0.025 too).
    let (_, v) = http
        .get(&format!(
            "/v1/registry/reputation/score?amid={}",
            alice.amid()
        ))
        .await;
    assert!(
        (v["weights"][0].as_f64().unwrap() - 0.025).abs() < 1e-9,
        "{v}"
    );
    // The evidence is public and checks out.
    let (s, v) = http
        .get(&format!(
            "/v1/registry/reputation/evidence?amid={}",
            bob.amid()
        ))
        .await;
    assert_eq!(s, 200);
    let r: SessionReceipt = serde_json::from_value(v["receipts"][0].clone()).unwrap();
    assert!(r.verify().is_ok());
    let req: SignedRequest = serde_json::from_value(v["ratings"][0]["request"].clone()).unwrap();
    assert_eq!(req.signer, alice.amid());
    let (s, v) = http
        .get("/v1/registry/reputation/leaderboard?limit=2")
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["leaderboard"].as_array().unwrap().len(), 2);

    // DID document
    let (s, v) = http
        .get(&format!("/v1/registry/did/{}", alice.amid()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], format!("did:agentmesh:{}", alice.amid()));
    assert_eq!(
        v["verificationMethod"][1]["type"],
        "X25519KeyAgreementKey2020"
    );
    assert_eq!(
        v["service"][0]["serviceEndpoint"],
        format!("{}/v1", server.url)
    );
    let (s, v) = http.get(&format!("/v1/registry/did/{stranger}")).await;
    assert_eq!((s, code(&v)), (404, "unknown_agent"));

    // revocation: only the agent itself (or its organization).
    let revoke = |subject: Amid| Operation::Revoke {
        subject,
        reason: "key compromised".into(),
    };
    let (s, v) = http
        .signed("/v1/registry/revoke", &alice, revoke(carol.amid()))
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    let (s, v) = http
        .signed("/v1/registry/revoke", &carol, revoke(carol.amid()))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = http
        .get(&format!("/v1/registry/revocation?amid={}", carol.amid()))
        .await;
    assert_eq!(v["revoked"], true);
    assert_eq!(v["reason"], "key compromised");
    let (_, v) = http
        .get(&format!("/v1/registry/revocation?amid={}", alice.amid()))
        .await;
    assert_eq!(v["revoked"], false);
    let (s, v) = http.get("/v1/registry/crl").await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 1);
    let root: Amid = server.root.parse().unwrap();
    let signed = SignedRevocation::from_bytes(
        &hex::decode(v["revocations"][0]["signed"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let rev = signed.verify(&root.verifying_key().unwrap()).unwrap();
    assert_eq!(&rev.subject_key, carol.amid().as_bytes());
    let (_, v) = http.get("/v1/registry/search?capability=chat").await;
    assert_eq!(v["count"], 1, "a revoked agent is not found: {v}");
    let (s, v) = http
        .signed(
            "/v1/registry/register",
            &carol,
            reg("Carol again", &["chat"]),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "revoked"));
    let (s, v) = http
        .get(&format!("/v1/registry/did/{}", carol.amid()))
        .await;
    assert_eq!((s, code(&v)), (403, "revoked"));

    // The revocation is in the DHT: another node finds it through the
    // bootstrap node, signed by the root.
    let (_, v) = http.get("/v1/registry/root").await;
    let registry_peer: libp2p::PeerId = v["node_peer_id"].as_str().unwrap().parse().unwrap();
    let mut config = Config::local();
    config.kdf = KdfParams::throwaway();
    let watcher = Node::builder(config)
        .data_dir(dir.path().join("watcher"))
        .passphrase(Passphrase::new("w"))
        .bootstrap(server.addr.parse().unwrap())
        .spawn()
        .await
        .unwrap();
    let ns = revocation_namespace(carol.amid().as_bytes());
    let record = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = watcher.get_record(&ns, &registry_peer).await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("revocation found in the DHT");
    let from_dht = SignedRevocation::from_bytes(&record.payload).unwrap();
    assert_eq!(
        from_dht.verify(&root.verifying_key().unwrap()).unwrap(),
        rev
    );
    watcher.shutdown().await;

    // stats
    let (s, v) = http.get("/v1/registry/stats").await;
    assert_eq!(s, 200);
    assert_eq!(v["agents"], 3);
    assert_eq!(v["revoked"], 1);
    assert_eq!(v["receipts"], 1);
    assert_eq!(v["ratings"], 2);

    // oauth is not configured here: typed refusal
    let (s, v) = http
        .signed(
            "/v1/auth/oauth/authorize",
            &alice,
            Operation::OauthAuthorize {},
        )
        .await;
    assert_eq!((s, code(&v)), (501, "not_configured"));

    // Every documented path is served (no endpoint-not-found, no 405).
    let (s, doc) = http.get("/v1/openapi.json").await;
    assert_eq!(s, 200);
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{amid}", &alice.amid().to_string())
                .replace("{domain}", "acme.example");
            let (s, v) = http
                .call(&method.to_uppercase(), &concrete, Some(b"{}".to_vec()))
                .await;
            assert_ne!(s, 405, "{method} {path}");
            assert!(
                !(s == 404 && v["error"]["message"] == "no such endpoint"),
                "{method} {path} is documented but not served"
            );
        }
    }

    // Kill the process (no clean shutdown), restart on the same data.
    server.child.kill().await.unwrap();
    let _ = server.child.wait().await;
    let server = start(&data, "registry-test", &["--http", "127.0.0.1:0"]).await;
    let http = Http::new(&server.url);
    assert_eq!(server.root, root.to_string(), "same root key");
    let (_, v) = http
        .get(&format!("/v1/registry/lookup?amid={}", alice.amid()))
        .await;
    assert_eq!(v["display_name"], "Alice");
    assert_eq!(v["capabilities"], json!(["weather/forecast", "chat"]));
    let (_, v) = http
        .get(&format!("/v1/registry/revocation?amid={}", carol.amid()))
        .await;
    assert_eq!(v["revoked"], true);
    let (_, v) = http.get("/v1/registry/stats").await;
    assert_eq!(v["receipts"], 1);
    assert_eq!(v["ratings"], 2);
    let (_, v) = http.get(&path).await;
    assert_eq!(
        v["one_time_key"],
        Value::Null,
        "consumed keys stay consumed"
    );
    let (s, v) = http.post("/v1/registry/status", &once).await;
    assert_eq!((s, code(&v)), (409, "replayed"), "replay store survives");
}
