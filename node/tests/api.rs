//! The local API of real nodes (real sockets, real sled databases), called
//! over its Unix socket and over loopback TCP as any client would.

mod support;

use std::{path::Path, time::Duration};

use agentmesh_node::{
    api::{ApiInfo, ApiOptions, ErrorCode, LocalApi, INFO_FILE},
    control::Client,
    crypto::keystore::KdfParams,
    Config, Node, Passphrase,
};
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

async fn node(dir: &Path, name: &str, bootstrap: Option<&Node>) -> Node {
    let mut b = Node::builder(config())
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = bootstrap {
        b = b.bootstraps(boot.listen_addrs().await);
    }
    b.spawn().await.expect("node starts")
}

/// Starts `name` again once the stopped node's tasks have let go of its
/// database (its lock is the event waited on).
async fn restart(dir: &Path, name: &str) -> Node {
    restart_with(dir, name, None).await
}

/// [`restart`], joining the network through `bootstrap`.
async fn restart_with(dir: &Path, name: &str, bootstrap: Option<&Node>) -> Node {
    support::start_node(dir, name, config(), bootstrap, WAIT).await
}

async fn bootstrap(dir: &Path) -> Node {
    let n = node(dir, "bootstrap", None).await;
    assert!(
        !n.wait_listening(1, WAIT).await.is_empty(),
        "bootstrap listens"
    );
    n
}

async fn api(node: &Node, dir: &Path) -> LocalApi {
    LocalApi::start(
        node.clone(),
        dir,
        ApiOptions::new(Some(agentmesh_node::daemon::DEFAULT_API_ADDR)),
    )
    .await
    .expect("API starts")
}

/// Calls the API and expects success.
async fn ok(c: &mut Client, method: Method, path: &str, body: Option<Value>) -> Value {
    match tokio::time::timeout(WAIT, c.call(method.clone(), path, body.as_ref()))
        .await
        .expect("answered in time")
        .expect("transport")
    {
        Ok(v) => v,
        Err(e) => panic!("{method} {path}: {e:?}"),
    }
}

/// Calls the API and expects an error.
async fn err(c: &mut Client, method: Method, path: &str, body: Option<Value>) -> ErrorCode {
    match tokio::time::timeout(WAIT, c.call(method.clone(), path, body.as_ref()))
        .await
        .expect("answered in time")
        .expect("transport")
    {
        Ok(v) => panic!("{method} {path} succeeded: {v}"),
        Err(e) => e.code,
    }
}

/// One raw HTTP/1.1 exchange on TCP, with exactly the headers given.
async fn raw(url: &str, head: &str, body: &[u8]) -> (u16, Value) {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading an oversized body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_acknowledge_request_reply_and_events() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await && bob.wait_published(WAIT).await);
    let alice_api = api(&alice, &dir.path().join("alice")).await;
    let bob_api = api(&bob, &dir.path().join("bob")).await;

    // api.json is there, private, and names the node.
    let info = ApiInfo::read(&dir.path().join("bob")).unwrap();
    assert_eq!(info.amid, bob.amid().to_string());
    assert!(info
        .url
        .as_deref()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("bob").join(INFO_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let mut a = Client::connect(&dir.path().join("alice")).await.unwrap();
    let mut b = Client::connect(&dir.path().join("bob")).await.unwrap();
    let bob_amid = bob.amid().to_string();
    let alice_amid = alice.amid().to_string();

    let sent = ok(
        &mut a,
        Method::POST,
        "/v1/send",
        Some(json!({"to": bob_amid, "payload": {"text": "hello"}})),
    )
    .await;
    assert_eq!(sent["receipt"]["knocked"], true);
    assert_eq!(sent["receipt"]["path"], "direct_quic");
    let id = sent["receipt"]["id"].as_str().unwrap().to_owned();

    // Bob reads it under a short lease and does not acknowledge it.
    let got = ok(
        &mut b,
        Method::GET,
        "/v1/messages?wait_ms=30000&lease_ms=1000",
        None,
    )
    .await;
    let m = &got["messages"][0];
    assert_eq!(m["id"], id);
    assert_eq!(m["from"], alice_amid);
    assert_eq!(m["payload"], json!({"text": "hello"}));
    assert_eq!(m["deliveries"], 1);
    // Leased: no other reader gets it meanwhile.
    let none = ok(&mut b, Method::GET, "/v1/messages", None).await;
    assert_eq!(none["messages"], json!([]));
    // The lease ends: handed out again.
    let again = ok(&mut b, Method::GET, "/v1/messages?wait_ms=30000", None).await;
    assert_eq!(again["messages"][0]["id"], id);
    assert_eq!(again["messages"][0]["deliveries"], 2);
    let acked = ok(
        &mut b,
        Method::POST,
        "/v1/messages/ack",
        Some(json!({"ids": [id]})),
    )
    .await;
    assert_eq!(acked["acked"], 1);
    let status = ok(&mut b, Method::GET, "/v1/status", None).await;
    assert_eq!(status["inbox"], json!({"ready": 0, "leased": 0}));
    assert_eq!(status["status"]["amid"], bob_amid);

    // Request and reply, each side through its own API.
    let requester = {
        let dir = dir.path().join("alice");
        let to = bob_amid.clone();
        tokio::spawn(async move {
            let mut a = Client::connect(&dir).await.unwrap();
            ok(
                &mut a,
                Method::POST,
                "/v1/request",
                Some(json!({"to": to, "payload": {"q": "2+2"}, "timeout_ms": 50000})),
            )
            .await
        })
    };
    let got = ok(&mut b, Method::GET, "/v1/messages?wait_ms=30000", None).await;
    let req = &got["messages"][0];
    assert_eq!(req["kind"], "request");
    let req_id = req["id"].as_str().unwrap().to_owned();
    ok(
        &mut b,
        Method::POST,
        "/v1/reply",
        Some(json!({"to": alice_amid, "id": req_id, "payload": {"a": 4}})),
    )
    .await;
    ok(
        &mut b,
        Method::POST,
        "/v1/messages/ack",
        Some(json!({"ids": [req_id]})),
    )
    .await;
    let reply = tokio::time::timeout(WAIT, requester)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["reply"]["payload"], json!({"a": 4}));
    assert_eq!(reply["reply"]["kind"], "reply");

    // Events: ids from 1, contiguous; resuming after the last id gives
    // only what came later.
    let page = ok(&mut a, Method::GET, "/v1/events?since=0&limit=1000", None).await;
    let ids: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.is_empty());
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(page["dropped"], 0);
    assert!(page["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"]["event"] == "delivered" && e["event"]["id"] == id));
    let last = page["last_id"].as_u64().unwrap();
    let later = ok(
        &mut a,
        Method::GET,
        &format!("/v1/events?since={last}"),
        None,
    )
    .await;
    assert_eq!(later["events"], json!([]));
    ok(
        &mut a,
        Method::POST,
        "/v1/send",
        Some(json!({"to": bob_amid, "payload": {"n": 2}, "wait": false})),
    )
    .await;
    let later = ok(
        &mut a,
        Method::GET,
        &format!("/v1/events?since={last}&wait_ms=30000"),
        None,
    )
    .await;
    assert_eq!(later["events"][0]["id"].as_u64().unwrap(), last + 1);

    // Peers and sessions show the other side.
    let peers = ok(&mut a, Method::GET, "/v1/peers", None).await;
    assert!(peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["amid"] == bob_amid && p["sessions"].as_u64().unwrap() >= 1));
    // Each with its newest session's type and age, the messages each way
    // (hello, the request and {n: 2} out; the reply in), and whether it
    // is blocked.
    let of_bob = |peers: &Value| {
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["amid"] == bob_amid)
            .cloned()
            .expect("bob among alice's peers")
    };
    let bob_peer = of_bob(&peers);
    assert!(
        ["conversation", "request_response"].contains(&bob_peer["session_type"].as_str().unwrap()),
        "{bob_peer}"
    );
    let since = bob_peer["session_since_ms"].as_u64().unwrap();
    assert!(since <= agentmesh_dht::now_ms() && since > agentmesh_dht::now_ms() - 600_000);
    assert!(
        bob_peer["messages_sent"].as_u64().unwrap() >= 2,
        "{bob_peer}"
    );
    assert_eq!(bob_peer["messages_received"], 1, "{bob_peer}");
    assert_eq!(bob_peer["blocked"], false);
    assert_eq!(peers["killed"], false);
    // The status says whether the kill switch is on, and which relays hold
    // a reservation for us (none: we listen directly); with no mailbox
    // relay, no mail to ask about.
    let status = ok(&mut a, Method::GET, "/v1/status", None).await;
    assert_eq!(status["killed"], false);
    assert_eq!(status["relay_reservations"], json!([]));
    let mailbox = ok(&mut a, Method::GET, "/v1/mailbox", None).await;
    assert_eq!(mailbox, json!({ "relays": [] }));
    // The schemas alice knows: the standard ones, with their JSON Schema;
    // she takes none in particular.
    let schemas = ok(&mut a, Method::GET, "/v1/schemas", None).await;
    let ids: Vec<&str> = schemas["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        agentmesh_node::schema::STANDARD.len(),
        "{schemas}"
    );
    assert!(ids.contains(&"agentmesh/request@1"), "{schemas}");
    let request = schemas["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "agentmesh/request@1")
        .unwrap();
    assert_eq!(request["schema"]["required"], json!(["type", "action"]));
    assert_eq!(schemas["accepted"], json!({}));
    // A payload that fails a schema alice knows is refused before sending.
    let refused = err(
        &mut a,
        Method::POST,
        "/v1/send",
        Some(json!({"to": bob_amid, "payload": {"note": 1}, "schema": "agentmesh/text@1"})),
    )
    .await;
    assert_eq!(refused, ErrorCode::InvalidPayload);
    // The kill switch for everyone shows, and clears; the one for bob
    // blocks him: with no session nor connection left, he is still listed,
    // blocked.
    ok(&mut a, Method::POST, "/v1/kill", Some(json!({}))).await;
    let status = ok(&mut a, Method::GET, "/v1/status", None).await;
    assert_eq!(status["killed"], true);
    assert_eq!(
        ok(&mut a, Method::GET, "/v1/peers", None).await["killed"],
        true
    );
    ok(&mut a, Method::POST, "/v1/kill/clear", None).await;
    assert_eq!(
        ok(&mut a, Method::GET, "/v1/status", None).await["killed"],
        false
    );
    ok(
        &mut a,
        Method::POST,
        "/v1/kill",
        Some(json!({ "amid": bob_amid })),
    )
    .await;
    let peers = ok(&mut a, Method::GET, "/v1/peers", None).await;
    assert_eq!(of_bob(&peers)["blocked"], true);
    assert_eq!(peers["killed"], false);

    alice_api.stop().await;
    bob_api.stop().await;
    assert!(!dir.path().join("bob").join(INFO_FILE).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_acknowledged_is_handed_out_again_after_a_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await && bob.wait_published(WAIT).await);
    let bob_dir = dir.path().join("bob");
    let bob_api = api(&bob, &bob_dir).await;
    let receipt = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!({"keep": true})))
        .await
        .unwrap()
        .unwrap();
    let mut b = Client::connect(&bob_dir).await.unwrap();
    let got = ok(&mut b, Method::GET, "/v1/messages?wait_ms=30000", None).await;
    assert_eq!(got["messages"][0]["id"], receipt.id.to_string());
    // Bob's app (and then bob) stop before acknowledging it.
    drop(b);
    bob_api.stop().await;
    bob.shutdown().await;

    let bob = restart_with(dir.path(), "bob", Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await);
    let bob_api = api(&bob, &bob_dir).await;
    let mut printed = bob_api.arrivals();
    let mut b = Client::connect(&bob_dir).await.unwrap();
    let got = ok(&mut b, Method::GET, "/v1/messages?wait_ms=30000", None).await;
    assert_eq!(got["messages"][0]["id"], receipt.id.to_string());
    assert_eq!(got["messages"][0]["payload"], json!({"keep": true}));
    // Handed out again, but not announced again: the next message printed
    // is the next one to arrive.
    let fresh = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!("fresh")))
        .await
        .unwrap()
        .unwrap();
    let announced = tokio::time::timeout(WAIT, printed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(announced.id, fresh.id, "{announced:?}");
    ok(
        &mut b,
        Method::POST,
        "/v1/messages/ack",
        Some(json!({"ids": [receipt.id.to_string(), fresh.id.to_string()]})),
    )
    .await;
    bob_api.stop().await;
    bob.shutdown().await;

    // Acknowledged: gone for good.
    let bob = restart(dir.path(), "bob").await;
    let bob_api = api(&bob, &bob_dir).await;
    let mut b = Client::connect(&bob_dir).await.unwrap();
    let got = ok(&mut b, Method::GET, "/v1/messages?wait_ms=1000", None).await;
    assert_eq!(got["messages"], json!([]));
    bob_api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_typed_errors() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice", None).await;
    let alice_dir = dir.path().join("alice");
    let alice_api = api(&alice, &alice_dir).await;
    let info = ApiInfo::read(&alice_dir).unwrap();
    let url = info.url.clone().unwrap();
    let auth = format!("Authorization: Bearer {}", info.token);
    let port = url.rsplit(':').next().unwrap().to_owned();
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_owned();

    // No token, a wrong one, a web page, DNS rebinding.
    let (s, v) = raw(&url, "GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1", b"").await;
    assert_eq!((s, code(&v)), (401, "unauthorized".into()));
    let (s, v) = raw(
        &url,
        "GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer 00",
        b"",
    )
    .await;
    assert_eq!((s, code(&v)), (401, "unauthorized".into()));
    let (s, v) = raw(
        &url,
        &format!("GET /v1/status HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}\r\nOrigin: http://evil.example"),
        b"",
    )
    .await;
    assert_eq!((s, code(&v)), (403, "forbidden_origin".into()));
    let (s, v) = raw(
        &url,
        &format!(
            "GET /v1/status HTTP/1.1\r\nHost: localhost\r\n{auth}\r\nReferer: http://evil.example/"
        ),
        b"",
    )
    .await;
    assert_eq!((s, code(&v)), (403, "forbidden_origin".into()));
    let (s, v) = raw(
        &url,
        &format!("GET /v1/status HTTP/1.1\r\nHost: evil.example:{port}\r\n{auth}"),
        b"",
    )
    .await;
    assert_eq!((s, code(&v)), (403, "bad_host".into()));
    // The right token on TCP works.
    let (s, v) = raw(
        &url,
        &format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"),
        b"",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"]["amid"], alice.amid().to_string());
    // Malformed JSON, an oversized body.
    let (s, v) = raw(
        &url,
        &format!(
            "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\nContent-Type: application/json"
        ),
        b"{\"to\": ",
    )
    .await;
    assert_eq!((s, code(&v)), (400, "bad_request".into()));
    let big = vec![b'x'; 2 * 1024 * 1024];
    let (s, v) = raw(
        &url,
        &format!(
            "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\nContent-Type: application/json"
        ),
        &big,
    )
    .await;
    assert_eq!((s, code(&v)), (413, "payload_too_large".into()));

    let mut c = Client::connect(&alice_dir).await.unwrap();
    let me = alice.amid().to_string();
    assert_eq!(
        err(
            &mut c,
            Method::POST,
            "/v1/send",
            Some(json!({"to": "nope", "payload": 1}))
        )
        .await,
        ErrorCode::InvalidAmid
    );
    assert_eq!(
        err(
            &mut c,
            Method::POST,
            "/v1/send",
            Some(json!({"payload": 1}))
        )
        .await,
        ErrorCode::BadRequest
    );
    assert_eq!(
        err(
            &mut c,
            Method::POST,
            "/v1/send",
            Some(json!({"to": me, "payload": 1, "extra": 2}))
        )
        .await,
        ErrorCode::BadRequest
    );
    assert_eq!(
        err(
            &mut c,
            Method::POST,
            "/v1/messages/ack",
            Some(json!({"ids": ["xyz"]}))
        )
        .await,
        ErrorCode::InvalidId
    );
    assert_eq!(
        err(&mut c, Method::GET, "/v1/messages?max=many", None).await,
        ErrorCode::BadRequest
    );
    assert_eq!(
        err(&mut c, Method::GET, "/v1/nothing", None).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        err(&mut c, Method::DELETE, "/v1/send", None).await,
        ErrorCode::MethodNotAllowed
    );
    assert_eq!(
        err(&mut c, Method::POST, "/v1/close", Some(json!({"amid": me}))).await,
        ErrorCode::NoSession
    );
    assert_eq!(
        err(
            &mut c,
            Method::PUT,
            "/v1/presence",
            Some(json!({"state": "asleep"}))
        )
        .await,
        ErrorCode::BadRequest
    );
    // A payload over the message limit.
    let huge = "x".repeat(900 * 1024);
    assert_eq!(
        err(
            &mut c,
            Method::POST,
            "/v1/send",
            Some(json!({"to": me, "payload": huge}))
        )
        .await,
        ErrorCode::InvalidPayload
    );

    // Every route of the OpenAPI document is served (no route-level 404 or
    // 405), and the document is the one the code makes.
    let doc = ok(&mut c, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(doc, agentmesh_node::api::openapi::document());
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if path.ends_with("/stream") || path == "/v1/request" || path == "/v1/send" {
                continue; // long-running; covered above
            }
            let m: Method = method.to_uppercase().parse().unwrap();
            let p = path.replace("{amid}", "nope");
            if let Err(e) = c.call(m.clone(), &p, Some(&json!({}))).await.unwrap() {
                assert!(
                    e.code != ErrorCode::MethodNotAllowed
                        && !e.message.starts_with("no such route"),
                    "{m} {p}: {e:?}"
                );
            }
        }
    }
    alice_api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_knock_is_a_rejected_error_with_its_reason() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await && bob.wait_published(WAIT).await);
    let bob_api = api(&bob, &dir.path().join("bob")).await;
    let alice_api = api(&alice, &dir.path().join("alice")).await;
    let mut b = Client::connect(&dir.path().join("bob")).await.unwrap();
    ok(
        &mut b,
        Method::POST,
        "/v1/block",
        Some(json!({"amid": alice.amid().to_string()})),
    )
    .await;
    // A dry run says what the policy would do, by the policy in force or
    // by one given.
    let check = ok(
        &mut b,
        Method::POST,
        "/v1/policy/check",
        Some(json!({"from": alice.amid().to_string(), "capability": "communication/messaging"})),
    )
    .await;
    assert!(check["decision"].to_string().contains("blocked"), "{check}");
    let check = ok(
        &mut b,
        Method::POST,
        "/v1/policy/check",
        Some(json!({"from": alice.amid().to_string(), "capability": "communication/messaging", "policy": ""})),
    )
    .await;
    assert!(
        !check["decision"].to_string().contains("blocked"),
        "{check}"
    );
    assert!(check["decision"].to_string().contains("accept"), "{check}");
    let mut a = Client::connect(&dir.path().join("alice")).await.unwrap();
    let e = tokio::time::timeout(
        WAIT,
        a.call(
            Method::POST,
            "/v1/send",
            Some(&json!({"to": bob.amid().to_string(), "payload": "hi"})),
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Rejected);
    assert_eq!(e.reason, Some(agentmesh_node::RejectReason::Blocked));
    alice_api.stop().await;
    bob_api.stop().await;
}

/// A stand-in A2A server (JSON-RPC): `SendMessage` answers with an agent
/// message echoing the text; `SendStreamingMessage` with two SSE events.
async fn upstream_a2a() -> String {
    use axum::{routing::post, Json, Router};
    let app = Router::new().route(
        "/rpc",
        post(
            |headers: axum::http::HeaderMap, Json(req): Json<Value>| async move {
                let id = req["id"].clone();
                let text = req["params"]["message"]["parts"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let version = headers
                    .get("a2a-version")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let message = |t: String| {
                    json!({"jsonrpc": "2.0", "id": id, "result": {"message": {
                        "messageId": "m1", "role": "ROLE_AGENT", "parts": [{"text": t}],
                        "metadata": {"version": version}
                    }}})
                };
                match req["method"].as_str() {
                    Some("SendMessage") => axum::response::IntoResponse::into_response(Json(
                        message(format!("echo: {text}")),
                    )),
                    _ => {
                        let body = format!(
                            "data: {}\n\ndata: {}\n\n",
                            message("one".into()),
                            message("two".into())
                        );
                        axum::response::IntoResponse::into_response((
                            [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                            body,
                        ))
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/rpc")
}

async fn rpc(base: &str, path: &str, body: &Value) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nA2A-Version: 1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(150), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// RFC 8785 form of JSON without numbers other than integers: keys sorted.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let sorted: std::collections::BTreeMap<String, Value> =
                    o.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2a_requests_cross_the_mesh_to_the_upstream_server_and_back() {
    use base64::Engine as _;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    let carol = node(dir.path(), "carol", Some(&boot)).await;
    assert!(
        alice.wait_published(WAIT).await
            && bob.wait_published(WAIT).await
            && carol.wait_published(WAIT).await
    );
    let mut bob_options = ApiOptions::new(None);
    bob_options.a2a_upstream = Some(upstream_a2a().await.parse().unwrap());
    let bob_api = LocalApi::start(bob.clone(), &dir.path().join("bob"), bob_options)
        .await
        .unwrap();
    bob.block(carol.amid());
    let gateway = |n: &Node, name: &str| {
        let n = n.clone();
        let d = dir.path().join(name);
        async move {
            let mut o = ApiOptions::new(None);
            o.a2a_listen = Some("127.0.0.1:0".parse().unwrap());
            LocalApi::start(n, &d, o).await.unwrap()
        }
    };
    let alice_api = gateway(&alice, "alice").await;
    let carol_api = gateway(&carol, "carol").await;
    let base = alice_api.info().a2a.clone().expect("gateway listens");
    let bob_path = format!("/a2a/{}", bob.amid());

    // SendMessage: over the mesh to bob's upstream and back; the A2A
    // version header travels with it.
    let send = json!({"jsonrpc": "2.0", "id": "r1", "method": "SendMessage", "params": {
        "message": {"messageId": "q1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}});
    let (code, body) = rpc(&base, &bob_path, &send).await;
    assert_eq!(code, 200);
    let answer = json_body(&body);
    assert_eq!(answer["id"], "r1");
    assert_eq!(
        answer["result"]["message"]["parts"][0]["text"],
        "echo: hello"
    );
    assert_eq!(answer["result"]["message"]["metadata"]["version"], "1.0");

    // SendStreamingMessage: the upstream's events, as SSE.
    let mut stream = send.clone();
    stream["method"] = json!("SendStreamingMessage");
    let (code, body) = rpc(&base, &bob_path, &stream).await;
    assert_eq!(code, 200);
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| json_body(d.trim()))
        .collect();
    let texts: Vec<&str> = events
        .iter()
        .map(|e| e["result"]["message"]["parts"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["one", "two"]);

    // Bad envelopes and methods get JSON-RPC errors without touching the mesh.
    let (_, body) = rpc(&base, &bob_path, &json!({"id": 1, "method": "SendMessage"})).await;
    assert_eq!(json_body(&body)["error"]["code"], -32600);
    let (_, body) = rpc(
        &base,
        &bob_path,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "Nope"}),
    )
    .await;
    assert_eq!(json_body(&body)["error"]["code"], -32601);
    let (_, body) = rpc(
        &base,
        &bob_path,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "CreateTaskPushNotificationConfig"}),
    )
    .await;
    assert_eq!(json_body(&body)["error"]["code"], -32003);
    let (_, body) = rpc(&base, "/a2a/not-an-amid", &send).await;
    assert_eq!(json_body(&body)["error"]["code"], -32602);

    // Carol is refused by bob's KNOCK policy: an A2A error, not a hang.
    let carol_base = carol_api.info().a2a.clone().unwrap();
    let (_, body) = rpc(&carol_base, &bob_path, &send).await;
    let e = json_body(&body);
    assert_eq!(e["error"]["code"], -32050, "{e}");
    assert_eq!(e["error"]["data"][0]["metadata"]["reason"], "blocked");

    // Bob's card through alice's gateway, and alice's own card, signed
    // with her key over the canonical JSON.
    let addr = base.trim_start_matches("http://").to_owned();
    let (code, card) = raw(
        &base,
        &format!("GET {bob_path}/.well-known/agent-card.json HTTP/1.1\r\nHost: {addr}"),
        b"",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        card["supportedInterfaces"][0]["url"],
        format!("{base}{bob_path}")
    );
    assert_eq!(card["supportedInterfaces"][0]["protocolBinding"], "JSONRPC");
    let (code, own) = raw(
        &base,
        &format!("GET /.well-known/agent-card.json HTTP/1.1\r\nHost: {addr}"),
        b"",
    )
    .await;
    assert_eq!(code, 200);
    let sig = &own["signatures"][0];
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut unsigned = own.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    let payload = b64.encode(canonical(&unsigned));
    let input = format!("{}.{payload}", sig["protected"].as_str().unwrap());
    let signature = ed25519_dalek::Signature::from_slice(
        &b64.decode(sig["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    alice
        .amid()
        .verifying_key()
        .unwrap()
        .verify_strict(input.as_bytes(), &signature)
        .expect("the card's JWS verifies under alice's key");
    // A web page is refused.
    let (code, _) = raw(
        &base,
        &format!("GET /.well-known/agent-card.json HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example"),
        b"",
    )
    .await;
    assert_eq!(code, 403);

    alice_api.stop().await;
    bob_api.stop().await;
    carol_api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_logs_in_once_and_metrics_and_policy_are_served() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice", None).await;
    let alice_dir = dir.path().join("alice");
    let alice_api = api(&alice, &alice_dir).await;
    let url = alice_api.info().url.clone().unwrap();
    let host = url.trim_start_matches("http://").to_owned();
    let mut c = Client::connect(&alice_dir).await.unwrap();

    // The page needs a session; a one-time link gives one.
    let (s, _) = raw(&url, &format!("GET / HTTP/1.1\r\nHost: {host}"), b"").await;
    assert_eq!(s, 401);
    let link = ok(&mut c, Method::POST, "/v1/dashboard/link", None).await;
    let link = link["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("{url}/login?code=")), "{link}");
    let path = link.trim_start_matches(&url).to_owned();
    let head = |p: &str, extra: &str| format!("GET {p} HTTP/1.1\r\nHost: {host}{extra}");
    // The redirect and its cookie (read raw: the helper parses JSON bodies).
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    s.write_all(format!("{}\r\nConnection: close\r\n\r\n", head(&path, "")).as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 303"), "{out}");
    let cookie = out
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    assert!(out.to_lowercase().contains("httponly") && out.contains("SameSite=Strict"));
    // Used up.
    let (s, v) = raw(&url, &head(&path, ""), b"").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // The cookie opens the page and the API, from the page's own origin
    // only.
    let with_cookie = format!("\r\nCookie: {cookie}");
    let (s, _) = raw(&url, &head("/", &with_cookie), b"").await;
    assert_eq!(s, 200);
    let (s, v) = raw(
        &url,
        &head(
            "/v1/status",
            &format!("{with_cookie}\r\nOrigin: {url}\r\nReferer: {url}/"),
        ),
        b"",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = raw(
        &url,
        &head(
            "/v1/status",
            &format!("{with_cookie}\r\nOrigin: http://evil.example"),
        ),
        b"",
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = raw(
        &url,
        &head("/v1/status", "\r\nCookie: agentmesh_session=forged"),
        b"",
    )
    .await;
    assert_eq!(s, 401);

    // Prometheus metrics.
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    let token = ApiInfo::read(&alice_dir).unwrap().token;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).await.unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "# TYPE agentmesh_messages_received_total counter",
        "agentmesh_knocks_total{decision=\"accepted\",reason=\"none\"} 0",
        "agentmesh_rate_limited_total{direction=\"inbound\",kind=\"knock\"} 0",
        "agentmesh_messages_received_total{path=\"direct-quic\"} 0",
        "agentmesh_kill_switch 0",
        "agentmesh_inbox_messages{state=\"ready\"} 0",
        "# TYPE agentmesh_dht_routing_table_peers gauge",
        "# TYPE agentmesh_delivery_latency_seconds histogram",
        "agentmesh_delivery_latency_seconds_count 0",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    // libp2p's own families follow (what they count once the node has
    // peers: `in_process.rs`).
    for family in [
        "libp2p_swarm_",
        "libp2p_kad_",
        "libp2p_identify_",
        "libp2p_ping_",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family}")),
            "{family} in {metrics}"
        );
    }
    assert!(
        !metrics.contains("# EOF"),
        "one exposition, no end marker inside"
    );

    // The policy as TOML, changed through the API.
    let before = ok(&mut c, Method::GET, "/v1/policy", None).await;
    let toml = before["toml"].as_str().unwrap().to_owned();
    // Top-level keys come first in TOML: the new one goes in front.
    let edited = format!(
        "min_tier = \"verified\"\n{}",
        toml.replace("min_tier = \"anonymous\"\n", "")
    );
    let applied = ok(
        &mut c,
        Method::PUT,
        "/v1/policy",
        Some(json!({ "policy": edited })),
    )
    .await;
    let after = ok(&mut c, Method::GET, "/v1/policy", None).await;
    assert_eq!(applied["policy_hash"], after["policy_hash"]);
    assert_ne!(before["policy_hash"], after["policy_hash"]);
    assert_eq!(after["policy"]["min_tier"], "verified");
    assert_eq!(
        err(
            &mut c,
            Method::PUT,
            "/v1/policy",
            Some(json!({ "policy": "min_tier = 7" }))
        )
        .await,
        ErrorCode::BadRequest
    );
    alice_api.stop().await;
}

/// Waits until the API's event log holds an event for which `matches` is
/// true: the API has then counted it (its counters and plots are fed before
/// its log).
async fn wait_event(c: &mut Client, what: &str, matches: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut since = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} event within {WAIT:?}"
        );
        let page = ok(
            c,
            Method::GET,
            &format!("/v1/events?since={since}&wait_ms=5000&limit=1000"),
            None,
        )
        .await;
        if page["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| matches(&e["event"]))
        {
            return;
        }
        since = page["last_id"].as_u64().unwrap_or(since);
    }
}

/// Sums `f` over the minutes of a timeseries answer.
fn over_minutes(t: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    t["minutes"].as_array().unwrap().iter().map(f).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeseries_counts_messages_by_path_knocks_and_latency() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await && bob.wait_published(WAIT).await);
    let alice_api = api(&alice, &dir.path().join("alice")).await;
    let bob_api = api(&bob, &dir.path().join("bob")).await;
    let mut a = Client::connect(&dir.path().join("alice")).await.unwrap();
    let mut b = Client::connect(&dir.path().join("bob")).await.unwrap();
    let bob_amid = bob.amid().to_string();

    // Nothing yet: sixty empty minutes, one after the other, up to now.
    let t = ok(&mut a, Method::GET, "/v1/stats/timeseries", None).await;
    let minutes = t["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let starts: Vec<u64> = minutes
        .iter()
        .map(|m| m["start_ms"].as_u64().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[1] == w[0] + 60_000),
        "{starts:?}"
    );
    let now = t["now_ms"].as_u64().unwrap();
    assert!(starts[59] <= now && now < starts[59] + 60_000);
    assert_eq!(t["latency"]["count"], 0);
    assert_eq!(
        over_minutes(&t, |m| m["sent"]["direct-quic"].as_u64().unwrap()),
        0
    );

    // Three messages from alice to bob, the first in the KNOCK.
    let mut ids = Vec::new();
    for n in 0..3 {
        let sent = ok(
            &mut a,
            Method::POST,
            "/v1/send",
            Some(json!({"to": bob_amid, "payload": {"n": n}})),
        )
        .await;
        assert_eq!(sent["receipt"]["path"], "direct_quic");
        ids.push(sent["receipt"]["id"].as_str().unwrap().to_owned());
    }
    // A KNOCK bob refuses: the bootstrap node is blocked.
    ok(
        &mut b,
        Method::POST,
        "/v1/block",
        Some(json!({"amid": boot.amid().to_string()})),
    )
    .await;
    let refused = tokio::time::timeout(WAIT, boot.send(&bob.amid(), json!("hi")))
        .await
        .expect("answered in time");
    assert!(refused.is_err(), "{refused:?}");

    for id in &ids {
        wait_event(&mut a, "delivered", |e| {
            e["event"] == "delivered" && e["id"] == id.as_str()
        })
        .await;
        wait_event(&mut b, "message_received", |e| {
            e["event"] == "message_received" && e["id"] == id.as_str()
        })
        .await;
    }
    wait_event(&mut b, "refused KNOCK", |e| {
        e["event"] == "knock_decided" && e["accepted"] == false
    })
    .await;

    let sum =
        |t: &Value, side: &str, path: &str| over_minutes(t, |m| m[side][path].as_u64().unwrap());
    let knocks = |t: &Value, d: &str| over_minutes(t, |m| m["knocks"][d].as_u64().unwrap());
    // Alice: three sent direct over QUIC, each with its latency.
    let t = ok(&mut a, Method::GET, "/v1/stats/timeseries", None).await;
    assert_eq!(sum(&t, "sent", "direct-quic"), 3, "{t}");
    for path in ["relayed", "mailbox", "direct-webrtc"] {
        assert_eq!(sum(&t, "sent", path), 0, "{path}");
    }
    assert_eq!(sum(&t, "received", "direct-quic"), 0);
    assert_eq!((knocks(&t, "accepted"), knocks(&t, "rejected")), (0, 0));
    let latency = &t["latency"];
    assert_eq!(latency["count"], 3, "{latency}");
    let buckets = latency["buckets"].as_array().unwrap();
    assert_eq!(
        buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    // Loopback: every delivery well under the last bound.
    assert!(buckets.last().unwrap()["le_ms"].is_null());
    assert_eq!(buckets.last().unwrap()["count"], 0);
    let bounds: Vec<u64> = buckets[..buckets.len() - 1]
        .iter()
        .map(|b| b["le_ms"].as_u64().unwrap())
        .collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");

    // Bob: three received, one KNOCK accepted and one refused, no latency
    // (he sent nothing).
    let t = ok(&mut b, Method::GET, "/v1/stats/timeseries", None).await;
    assert_eq!(sum(&t, "received", "direct-quic"), 3, "{t}");
    assert_eq!(sum(&t, "sent", "direct-quic"), 0);
    assert_eq!((knocks(&t, "accepted"), knocks(&t, "rejected")), (1, 1));
    assert_eq!(t["latency"]["count"], 0);

    alice_api.stop().await;
    bob_api.stop().await;
}

/// Asks `/v1/registry/standing` until it is no longer `checking`; every
/// answer must come at once, whatever the registry does.
async fn standing(c: &mut Client) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let asked = std::time::Instant::now();
        let s = ok(c, Method::GET, "/v1/registry/standing", None).await;
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the standing is answered from the cache, at once"
        );
        if s["state"] != "checking" {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "still checking");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_names_the_did_and_the_registry_standing_never_blocks() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    // No registry.
    let alice = node(dir.path(), "alice", None).await;
    let alice_api = api(&alice, &dir.path().join("alice")).await;
    let mut a = Client::connect(&dir.path().join("alice")).await.unwrap();
    let status = ok(&mut a, Method::GET, "/v1/status", None).await;
    let did = status["status"]["did"].as_str().unwrap();
    assert_eq!(did, alice.amid().did_key());
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    let s = standing(&mut a).await;
    assert_eq!(s["state"], "not_configured", "{s}");
    assert!(s["checked_ms"].as_u64().is_some());

    // A registry nobody answers at (a closed port): "unknown", with why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nobody = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let mut config = config();
    config.registry = Some(
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{nobody}")
            .parse()
            .unwrap(),
    );
    let bob = Node::builder(config)
        .data_dir(dir.path().join("bob"))
        .passphrase(Passphrase::new("bob"))
        .spawn()
        .await
        .expect("node starts");
    let bob_api = api(&bob, &dir.path().join("bob")).await;
    let mut b = Client::connect(&dir.path().join("bob")).await.unwrap();
    let s = standing(&mut b).await;
    assert_eq!(s["state"], "unknown", "{s}");
    assert!(s["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    assert!(s.get("tier").is_none());

    alice_api.stop().await;
    bob_api.stop().await;
}

/// The doctor's checks (`GET /v1/diagnostics`) until `done` holds for them.
async fn diagnostics_until(c: &mut Client, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = ok(c, Method::GET, "/v1/diagnostics", None).await;
        if done(&d) {
            return d;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {d:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {d:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_measures_the_bootstrap_the_disk_and_the_clock_and_names_what_to_fix() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    let alice_dir = dir.path().join("alice");
    // Carol starts with a policy file, which then breaks.
    let policy = dir.path().join("policy.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.toml"),
        &policy,
    )
    .unwrap();
    let mut c = config();
    c.policy_file = Some(policy.clone());
    let carol = Node::builder(c)
        .data_dir(dir.path().join("carol"))
        .passphrase(Passphrase::new("carol"))
        .spawn()
        .await
        .expect("carol starts");
    let carol_api = api(&carol, &dir.path().join("carol")).await;
    let mut cc = Client::connect(&dir.path().join("carol")).await.unwrap();
    let d = ok(&mut cc, Method::GET, "/v1/diagnostics", None).await;
    let p = check(&d, "policy");
    assert_eq!(p["result"], "ok", "{p}");
    assert_eq!(p["detail"], format!("{} is valid", policy.display()));
    std::fs::write(&policy, "[[rules]\nbroken").unwrap();
    let d = ok(&mut cc, Method::GET, "/v1/diagnostics", None).await;
    let p = check(&d, "policy");
    assert_eq!(p["result"], "fail", "{p}");
    assert!(
        p["fix"]
            .as_str()
            .unwrap()
            .contains("agentmesh policy check"),
        "{p}"
    );
    carol_api.stop().await;

    let alice_api = api(&alice, &alice_dir).await;
    let mut a = Client::connect(&alice_dir).await.unwrap();
    // A message from bob: its timestamp gives alice a clock to compare.
    bob.send(&alice.amid(), json!({"hi": 1}))
        .await
        .expect("delivered");

    let d = diagnostics_until(&mut a, |d| {
        ["bootstrap", "nat mapping", "clock"]
            .iter()
            .all(|c| check(d, c)["result"] == "ok")
            && check(d, "bootstrap")["detail"]
                .as_str()
                .is_some_and(|s| s.ends_with(" ms"))
    })
    .await;
    // One bootstrap, reached, with its round trip.
    let b = check(&d, "bootstrap");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 of 1 reached: "),
        "{b}"
    );
    assert_eq!(b["fix"], Value::Null);
    let probe = d["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "bootstrap")
        .unwrap();
    assert_eq!(probe["connected"], true);
    assert!(
        probe["rtt_ms"].as_u64().is_some_and(|ms| ms < 10_000),
        "{probe}"
    );
    // On loopback, peers see alice's own QUIC address: no NAT.
    assert_eq!(d["nat_mapping"]["kind"], "no_nat", "{d:#}");
    let seen = d["nat_mapping"]["addr"].as_str().unwrap();
    assert!(seen.starts_with("127.0.0.1:"), "{seen}");
    let listening = alice.listen_addrs().await;
    let port = seen.rsplit(':').next().unwrap();
    assert!(
        listening
            .iter()
            .any(|a| a.to_string().contains(&format!("/udp/{port}/quic-v1"))),
        "{seen} not in {listening:?}"
    );
    // Same machine, same clock: well within the window.
    let skew = d["clock_skew_ms"].as_i64().unwrap();
    assert!(skew.abs() < 10_000, "{skew}");
    // The disk, the keystore and the default policy.
    let disk = check(&d, "data dir");
    assert_eq!(disk["result"], "ok", "{disk}");
    assert!(disk["detail"]
        .as_str()
        .unwrap()
        .starts_with("writable, write+fsync "));
    assert!(!alice_dir.join("doctor.probe").exists());
    assert_eq!(check(&d, "keystore")["result"], "ok");
    assert_eq!(check(&d, "policy")["result"], "ok");
    // The JSON shape of every check.
    for c in d["checks"].as_array().unwrap() {
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "detail", "fix", "result"], "{c}");
        assert_eq!(c["fix"].is_null(), c["result"] == "ok", "{c}");
    }

    // A keystore that is no longer one fails, and says what to do.
    std::fs::write(
        alice_dir.join(agentmesh_node::crypto::keystore::KEYSTORE_FILE),
        b"junk",
    )
    .unwrap();
    let d = ok(&mut a, Method::GET, "/v1/diagnostics", None).await;
    let k = check(&d, "keystore");
    assert_eq!(k["result"], "fail", "{k}");
    assert!(k["fix"].as_str().unwrap().contains("backup"), "{k}");
    alice_api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctors_punch_probe_reaches_a_peer_and_tells_how() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await, "bob's card published");
    let alice_dir = dir.path().join("alice");
    let alice_api = api(&alice, &alice_dir).await;
    let mut a = Client::connect(&alice_dir).await.unwrap();
    let bob_amid = bob.amid().to_string();
    let probe = |d: &Value| {
        let f = check(d, "punch probe").clone();
        // Right after the passive hole punch finding.
        let checks = d["checks"].as_array().unwrap();
        let at = checks
            .iter()
            .position(|c| c["check"] == "punch probe")
            .unwrap();
        assert_eq!(checks[at - 1]["check"], "hole punch", "{d:#}");
        f
    };

    // Not connected (publishing his card may have connected them: cut):
    // on loopback, bob's card gives a direct address.
    let mut events = alice.events();
    alice.disconnect(bob.amid().peer_id().unwrap()).await;
    let connected = alice
        .status()
        .await
        .net
        .connected
        .iter()
        .any(|p| p.peer == bob_amid);
    if connected {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(agentmesh_node::NodeEvent::Disconnected { peer }) = events.recv().await {
                    if peer == bob_amid {
                        return;
                    }
                }
            }
        })
        .await
        .expect("disconnected");
    }
    let path = format!("/v1/diagnostics?punch={bob_amid}");
    let d = ok(&mut a, Method::GET, &path, None).await;
    let f = probe(&d);
    assert_eq!(f["result"], "ok", "{f}");
    let short = &bob_amid[..12];
    let detail = f["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{short}: direct (direct-quic), dialled in "))
            && detail.ends_with(" ms, no relay needed"),
        "{detail}"
    );
    assert_eq!(d["punch"]["peer"], bob_amid.as_str());
    assert_eq!(d["punch"]["outcome"], "direct", "{}", d["punch"]);
    assert_eq!(d["punch"]["path"], "direct_quic");
    assert_eq!(d["punch"]["upgraded"], false);
    assert_eq!(d["punch"]["already"], false);

    // Again: the connection is up already.
    let d = ok(&mut a, Method::GET, &path, None).await;
    assert_eq!(
        probe(&d)["detail"],
        format!("{short}: already connected directly (direct-quic)")
    );

    // An agent nobody knows: unreachable, a failure with its fix.
    let nobody = agentmesh_node::Identity::from_seed(&[42; 32]).amid();
    let d = ok(
        &mut a,
        Method::GET,
        &format!("/v1/diagnostics?punch={nobody}"),
        None,
    )
    .await;
    let f = probe(&d);
    assert_eq!(f["result"], "fail", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .ends_with(": unreachable: no card found in the DHT"),
        "{f}"
    );
    assert!(f["fix"].is_string());
    assert_eq!(d["punch"]["outcome"], "unreachable");

    // Without the query, no probe; with a bad AMID, a clear refusal.
    let d = ok(&mut a, Method::GET, "/v1/diagnostics", None).await;
    assert!(d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["check"] != "punch probe"));
    assert_eq!(d["punch"], Value::Null);
    assert_eq!(
        err(&mut a, Method::GET, "/v1/diagnostics?punch=nope", None).await,
        ErrorCode::InvalidAmid
    );
    alice_api.stop().await;
}

/// One keep-alive HTTP/1.1 connection on TCP, written and read raw: each
/// request's head and body are written apart, as many clients do.
struct KeepAlive {
    s: tokio::net::TcpStream,
    host: String,
    extra: String,
    read: Vec<u8>,
}

impl KeepAlive {
    async fn open(url: &str, extra: &str) -> Self {
        let host = url.trim_start_matches("http://").to_owned();
        let s = tokio::net::TcpStream::connect(&host).await.unwrap();
        Self {
            s,
            host,
            extra: extra.to_owned(),
            read: Vec::new(),
        }
    }

    /// Sends one request and reads its answer: `None` when the node closed
    /// the connection instead.
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.extra,
            body.len()
        );
        self.s.write_all(head.as_bytes()).await.ok()?;
        self.s.write_all(body).await.ok()?;
        tokio::time::timeout(WAIT, self.answer())
            .await
            .expect("an answer or the end of the connection in time")
    }

    async fn answer(&mut self) -> Option<(u16, Vec<u8>)> {
        let end = loop {
            if let Some(at) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.read[..end]).into_owned();
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a Content-Length");
        while self.read.len() < end + len {
            self.fill().await?;
        }
        let body = self.read[end..end + len].to_vec();
        self.read.drain(..end + len);
        Some((status, body))
    }

    async fn fill(&mut self) -> Option<()> {
        let mut buf = [0u8; 8192];
        match self.s.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.read.extend_from_slice(&buf[..n]);
                Some(())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_to_a_route_that_reads_none_keeps_the_connection_alive() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice", None).await;
    let alice_dir = dir.path().join("alice");
    let alice_api = api(&alice, &alice_dir).await;
    let info = ApiInfo::read(&alice_dir).unwrap();
    let auth = format!("\r\nAuthorization: Bearer {}", info.token);
    let mut conn = KeepAlive::open(info.url.as_deref().unwrap(), &auth).await;

    // `{}` to routes whose handlers read no body, each answered on the one
    // connection.
    let routes = [
        ("POST", "/v1/policy/reload"),
        ("POST", "/v1/kill/clear"),
        ("GET", "/v1/status"),
        ("GET", "/v1/peers"),
        ("GET", "/v1/policy"),
        ("GET", "/v1/nothing"),
        ("DELETE", "/v1/status"),
    ];
    for (method, path) in routes {
        let answer = conn.call(method, path, b"{}").await;
        let (status, _) = answer.unwrap_or_else(|| panic!("{method} {path}: connection closed"));
        assert!(status < 500, "{method} {path}: {status}");
    }
    // A body larger than one read of the socket: read to its end before
    // the answer, so the connection still serves.
    let mut big = b"{}".to_vec();
    big.resize(agentmesh_node::api::MAX_BODY - 1, b' ');
    for (method, path) in [("POST", "/v1/kill/clear"), ("GET", "/v1/status")] {
        let (status, _) = conn
            .call(method, path, &big)
            .await
            .unwrap_or_else(|| panic!("{method} {path} with a large body: connection closed"));
        assert_eq!(status, 200, "{method} {path}");
    }
    // A route that reads its body still does.
    let (status, body) = conn
        .call(
            "POST",
            "/v1/policy/check",
            br#"{"capability": "communication/messaging"}"#,
        )
        .await
        .expect("answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // An oversized body: refused with its code, after which the connection
    // still serves.
    let over = vec![b' '; agentmesh_node::api::MAX_BODY + 1];
    let (status, body) = conn
        .call("POST", "/v1/kill/clear", &over)
        .await
        .expect("oversized answered");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (413, &json!("payload_too_large"))
    );
    let (status, _) = conn
        .call("GET", "/v1/status", b"")
        .await
        .expect("the connection serves after an oversized body");
    assert_eq!(status, 200);
    alice_api.stop().await;
}

/// Longest a send to an agent nobody can find may take: the delivery
/// deadline of `Config::local` (60 s), and a margin for loaded machines.
const GIVE_UP: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_amid_gets_its_typed_error_in_time() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await);
    let alice_dir = dir.path().join("alice");
    let mut options = ApiOptions::new(None);
    options.a2a_listen = Some("127.0.0.1:0".parse().unwrap());
    let alice_api = LocalApi::start(alice.clone(), &alice_dir, options)
        .await
        .unwrap();
    let mut a = Client::connect(&alice_dir).await.unwrap();
    // Well-formed AMIDs of agents that never published a card.
    let nobody = |seed: u8| {
        agentmesh_node::Identity::from_seed(&[seed; 32])
            .amid()
            .to_string()
    };

    // The local API: the code of an agent that cannot be found (lookups
    // failing in a row open its circuit; or no card by the deadline).
    let send = |to: String| json!({"to": to, "payload": "anyone there?"});
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        GIVE_UP,
        a.call(Method::POST, "/v1/send", Some(&send(nobody(43)))),
    )
    .await
    .expect("answered, not hung")
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::CircuitOpen | ErrorCode::NotFound),
        "{e:?} after {:?}",
        started.elapsed()
    );
    if e.code == ErrorCode::CircuitOpen {
        // Asked again while the circuit is open: at once, with the wait.
        let started = std::time::Instant::now();
        let again = tokio::time::timeout(
            WAIT,
            a.call(Method::POST, "/v1/send", Some(&send(nobody(43)))),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
        assert_eq!(again.code, ErrorCode::CircuitOpen);
        assert!(again.retry_after_ms.is_some_and(|ms| ms > 0), "{again:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    // A request the same way.
    let e = tokio::time::timeout(
        GIVE_UP,
        a.call(
            Method::POST,
            "/v1/request",
            Some(&json!({"to": nobody(44), "payload": "anyone?", "timeout_ms": 120000})),
        ),
    )
    .await
    .expect("answered, not hung")
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::CircuitOpen | ErrorCode::NotFound),
        "{e:?}"
    );

    // The A2A gateway: a JSON-RPC error (could not be reached) with its id,
    // long before the gateway's own 120 s.
    let base = alice_api.info().a2a.clone().unwrap();
    let rpc_send = json!({"jsonrpc": "2.0", "id": "u1", "method": "SendMessage", "params": {
        "message": {"messageId": "q1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}});
    let started = std::time::Instant::now();
    let (code, body) = rpc(&base, &format!("/a2a/{}", nobody(45)), &rpc_send).await;
    assert!(started.elapsed() < GIVE_UP, "{:?}", started.elapsed());
    let answer = json_body(&body);
    assert_eq!(code, 200);
    assert_eq!(answer["id"], "u1");
    assert_eq!(answer["error"]["code"], -32051, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("circuit open") || message.contains("no card found"),
        "{message}"
    );
    alice_api.stop().await;
}

/// The first SSE event of `GET /v1/events/stream` with `query`, raw.
async fn first_sse_event(url: &str, token: &str, query: &str) -> String {
    let host = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!(
            "GET /v1/events/stream?{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                // The event's field lines, up to the blank line that ends
                // it (chunk sizes in between are not fields).
                let mut event: Vec<&str> = Vec::new();
                for l in body.lines() {
                    if ["event:", "data:", "id:"].iter().any(|f| l.starts_with(f)) {
                        event.push(l);
                    } else if l.is_empty() && event.iter().any(|l| l.starts_with("data:")) {
                        return event.join("\n");
                    }
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended: {text}");
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_go_on_across_a_restart_and_an_old_since_sees_the_gap() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path()).await;
    let alice = node(dir.path(), "alice", Some(&boot)).await;
    let bob = node(dir.path(), "bob", Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await && bob.wait_published(WAIT).await);
    let alice_dir = dir.path().join("alice");
    let alice_api = api(&alice, &alice_dir).await;
    let mut a = Client::connect(&alice_dir).await.unwrap();
    let bob_amid = bob.amid().to_string();

    // A few events in the first run.
    for n in 0..3 {
        let sent = ok(
            &mut a,
            Method::POST,
            "/v1/send",
            Some(json!({"to": bob_amid, "payload": {"n": n}})),
        )
        .await;
        let id = sent["receipt"]["id"].as_str().unwrap().to_owned();
        wait_event(&mut a, "delivered", |e| {
            e["event"] == "delivered" && e["id"] == id.as_str()
        })
        .await;
    }
    let page = ok(&mut a, Method::GET, "/v1/events?limit=1000", None).await;
    let last = page["last_id"].as_u64().unwrap();
    assert!(last >= 3, "{page}");
    // A client that read up to two events before the end of the run.
    let behind = last - 2;

    drop(a);
    alice_api.stop().await;
    alice.shutdown().await;
    let alice = restart_with(dir.path(), "alice", Some(&boot)).await;
    let alice_api = api(&alice, &alice_dir).await;
    let mut a = Client::connect(&alice_dir).await.unwrap();

    // Before any event of the new run: the gap is there already, and the
    // newest id is the last of the earlier run.
    let page = ok(
        &mut a,
        Method::GET,
        &format!("/v1/events?since={behind}"),
        None,
    )
    .await;
    assert!(page["last_id"].as_u64().unwrap() >= last, "{page}");
    let info = ApiInfo::read(&alice_dir).unwrap();
    let url = info.url.clone().unwrap();
    // The stream shows it first, as an event without an id.
    let first = first_sse_event(&url, &info.token, &format!("since={behind}")).await;
    assert!(first.starts_with("event: dropped\n"), "{first}");
    assert!(!first.contains("id:"), "{first}");
    assert!(first.contains(r#""count":2"#), "{first}");

    // Ids go on past the earlier run's.
    let sent = ok(
        &mut a,
        Method::POST,
        "/v1/send",
        Some(json!({"to": bob_amid, "payload": "again"})),
    )
    .await;
    let id = sent["receipt"]["id"].as_str().unwrap().to_owned();
    wait_event(&mut a, "delivered", |e| {
        e["event"] == "delivered" && e["id"] == id.as_str()
    })
    .await;
    let page = ok(
        &mut a,
        Method::GET,
        &format!("/v1/events?since={behind}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(page["dropped"], 2, "{page}");
    let ids: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(ids.first().is_some_and(|&id| id == last + 1), "{ids:?}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    // A client that had read everything of the earlier run missed nothing.
    let page = ok(
        &mut a,
        Method::GET,
        &format!("/v1/events?since={last}"),
        None,
    )
    .await;
    assert_eq!(page["dropped"], 0, "{page}");
    alice_api.stop().await;
}
