//! The `agentmesh` CLI's registry commands against the real
//! `agentmesh-bootstrap` binary.

use std::path::Path;

use agentmesh_node::{
    registry::{Feedback, Operation, ReceiptBody, Registration, SessionReceipt, SignedRequest},
    Identity,
};

mod support;

use support::{json_of, start};

const PASS: &str = "cli-test";

async fn cli(home: &Path, registry: &str, args: &[&str]) -> (bool, String) {
    support::cli(home, PASS, registry, args).await
}

async fn post(url: &str, req: &SignedRequest) -> u16 {
    // The CLI is under test; the other agents speak HTTP through a raw
    // request on a TCP socket.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_vec(req).unwrap();
    let (host, path) = url
        .strip_prefix("http://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_search_did_and_verify_reputation_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        PASS,
        &["--http", "127.0.0.1:0"],
    )
    .await;
    let url = server.url.clone();
    let home = dir.path().join("alice");

    let (ok, out) = cli(&home, &url, &["--json", "init"]).await;
    assert!(ok, "{out}");
    let amid = json_of(&out)["amid"].as_str().unwrap().to_owned();

    let (ok, out) = cli(
        &home,
        &url,
        &[
            "--json",
            "register",
            "--name",
            "Alice",
            "--capability",
            "weather/forecast",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["created"], true);

    let (ok, out) = cli(&home, &url, &["--json", "search", "weather"]).await;
    assert!(ok, "{out}");
    let v = json_of(&out);
    assert_eq!(v["count"], 1, "{out}");
    assert_eq!(v["results"][0]["amid"], amid);
    let (ok, out) = cli(
        &home,
        &url,
        &["search", "weather", "--tier-min", "verified"],
    )
    .await;
    assert!(ok && out.contains("no agent offers"), "{out}");

    let (ok, out) = cli(&home, &url, &["did", &amid]).await;
    assert!(ok, "{out}");
    assert_eq!(
        json_of(&out.replace('\n', " "))["id"],
        format!("did:agentmesh:{amid}")
    );

    // Two other agents have a session, file its receipt and rate each other.
    let (bob, carol) = (Identity::from_seed(&[2; 32]), Identity::from_seed(&[3; 32]));
    let now = agentmesh_dht::now_ms;
    for (who, name) in [(&bob, "Bob"), (&carol, "Carol")] {
        let reg = Operation::Register(Registration::new(name, vec!["chat".into()]));
        let req = SignedRequest::sign(who, reg, now()).unwrap();
        assert_eq!(
            post(&format!("{url}/v1/registry/register"), &req).await,
            200
        );
    }
    let sid = [4u8; 16];
    let receipt = SessionReceipt::sign(
        &ReceiptBody::new(sid, bob.amid(), carol.amid(), true, now()),
        &bob,
        &carol,
    )
    .unwrap();
    let req = SignedRequest::sign(&carol, Operation::Session { receipt }, now()).unwrap();
    assert_eq!(
        post(&format!("{url}/v1/registry/reputation/session"), &req).await,
        200
    );
    for (rater, target, score) in [(&bob, &carol, 0.9), (&carol, &bob, 0.4)] {
        let fb = Operation::Feedback(Feedback::new(hex::encode(sid), target.amid(), score));
        let req = SignedRequest::sign(rater, fb, now()).unwrap();
        assert_eq!(
            post(&format!("{url}/v1/registry/reputation"), &req).await,
            200
        );
    }

    for target in [bob.amid(), carol.amid()] {
        let (ok, out) = cli(
            &home,
            &url,
            &["--json", "reputation", "verify", &target.to_string()],
        )
        .await;
        assert!(ok, "{out}");
        let v = json_of(&out);
        assert_eq!(v["ok"], true);
        assert_eq!(v["receipts"], 1);
        assert_eq!(v["ratings"], 1);
    }

    // Unknown agents: a typed error, a failing exit status.
    let stranger = Identity::from_seed(&[9; 32]).amid().to_string();
    let (ok, out) = cli(&home, &url, &["did", &stranger]).await;
    assert!(!ok);
    assert!(out.contains("unknown_agent"), "{out}");
}
