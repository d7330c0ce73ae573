//! The `agentmesh` CLI's registry commands against the real
//! `agentmesh-bootstrap` binary.

use std::path::Path;

use agentmesh_node::{
    registry::{Feedback, Operation, ReceiptBody, Registration, SessionReceipt, SignedRequest},
    Identity,
};

mod support;

use agentmesh_bootstrap::loopback::{DnsServer, OidcProvider};
use agentmesh_node::{
    crypto::keystore::KdfParams, Amid, Config, Node, NodeEvent, Passphrase, Policy,
};
use serde_json::Value;
use support::{json_of, oauth_config, start, start_registry, Running};

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
    let server = start_registry(dir.path(), PASS).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_stores_credentials_that_run_shows_in_its_knocks() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let provider = OidcProvider::spawn("user-9").await.unwrap();
    let dns = DnsServer::spawn().await.unwrap();
    let cfg = oauth_config(
        dir.path(),
        &provider,
        &format!("[dns]\nresolver = \"{}\"\n", dns.addr),
    );
    let server = start(
        &dir.path().join("bootstrap"),
        PASS,
        &["--config", &cfg, "--http", "127.0.0.1:0"],
    )
    .await;
    let url = server.url.clone();
    let (alice, carol) = (dir.path().join("alice"), dir.path().join("carol"));
    for home in [&alice, &carol] {
        let (ok, out) = cli(home, &url, &["init"]).await;
        assert!(ok, "{out}");
        let (ok, out) = cli(home, &url, &["register", "--capability", "chat"]).await;
        assert!(ok, "{out}");
    }

    // Tier 1: the OAuth flow, its redirects followed by the CLI.
    let (ok, out) = cli(
        &alice,
        &url,
        &["verify", "--oauth", "google", "--follow", "--timeout", "60"],
    )
    .await;
    assert!(!ok && out.contains("loopback"), "wrong provider: {out}");
    let (ok, out) = cli(
        &alice,
        &url,
        &[
            "--json",
            "verify",
            "--oauth",
            "loopback",
            "--follow",
            "--timeout",
            "60",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let stored = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "stored")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(stored["tier"], "verified");
    assert!(stored["log_index"].is_u64(), "{stored}");
    let creds = agentmesh_node::trust::credentials::load(&alice)
        .unwrap()
        .unwrap();
    assert!(creds.chain.is_some() && creds.inclusion.is_some() && creds.reputation.is_some());

    // Tier 1.5: the CLI prints the TXT record and asks the registry to
    // check it until the nameserver has it.
    let mut verify = Running::spawn(
        &carol,
        PASS,
        &url,
        &["verify", "--org", "acme.example", "--timeout", "90"],
    );
    let publish = verify.wait(|v| v["event"] == "publish").await;
    assert_eq!(publish["txt_name"], "_agentmesh.acme.example");
    dns.publish(
        &format!("{}.", publish["txt_name"].as_str().unwrap()),
        &[publish["txt_value"].as_str().unwrap()],
    );
    let stored = verify.wait(|v| v["event"] == "stored").await;
    assert_eq!(stored["tier"], "organization");
    assert!(verify.exit().await);

    // `agentmesh run` loads them: a node that wants verified agents with
    // logged certificates accepts both.
    let root: Amid = server.root.parse().unwrap();
    let mut config = Config::local();
    config.kdf = KdfParams::throwaway();
    config.registry_root = Some(*root.as_bytes());
    config.require_log_inclusion = true;
    config.policy = Policy::from_toml(r#"min_tier = "verified""#).unwrap();
    let bob = Node::builder(config)
        .data_dir(dir.path().join("bob"))
        .passphrase(Passphrase::new("bob"))
        .bootstrap(server.addr.parse().unwrap())
        .spawn()
        .await
        .unwrap();
    assert!(bob.wait_published(support::WAIT).await);
    let mut events = bob.events();
    for home in [&alice, &carol] {
        let mut run = Running::spawn(home, PASS, &url, &["run", "--bootstrap", &server.addr]);
        let started = run.wait(|v| v["event"] == "started").await;
        let amid: Amid = started["amid"].as_str().unwrap().parse().unwrap();
        let (ok, out) = cli(home, &url, &["send", &bob.amid().to_string(), "hello"]).await;
        assert!(ok, "{out}");
        let reason = tokio::time::timeout(support::WAIT, async {
            loop {
                if let Ok(NodeEvent::KnockDecided { from, reason, .. }) = events.recv().await {
                    if from == amid {
                        return reason;
                    }
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(reason, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_agents_file_receipts_and_renew_credentials_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), PASS).await;
    let url = server.url.clone();
    let (alice, carol) = (dir.path().join("alice"), dir.path().join("carol"));
    let mut runs = Vec::new();
    let mut amids = Vec::new();
    for home in [&alice, &carol] {
        let (ok, out) = cli(home, &url, &["init"]).await;
        assert!(ok, "{out}");
        let (ok, out) = cli(home, &url, &["register", "--capability", "chat"]).await;
        assert!(ok, "{out}");
        let mut run = Running::spawn(
            home,
            PASS,
            &url,
            &[
                "run",
                "--bootstrap",
                &server.addr,
                "--registry",
                &server.addr,
                "--registry-root",
                &server.root,
            ],
        );
        let started = run.wait(|v| v["event"] == "started").await;
        amids.push(started["amid"].as_str().unwrap().to_owned());
        runs.push(run);
    }

    let (ok, out) = cli(&alice, &url, &["send", &amids[1], "hello"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&alice, &url, &["end", &amids[1]]).await;
    assert!(ok, "{out}");
    for run in &mut runs {
        let filed = run.wait(|v| v["event"] == "receipt_filed").await;
        assert_eq!(filed["filing"]["state"], "filed", "{filed}");
    }
    for (home, peer) in [(&alice, &amids[1]), (&carol, &amids[0])] {
        let (ok, out) = cli(home, &url, &["--json", "receipts"]).await;
        assert!(ok, "{out}");
        let list = json_of(&out);
        let list = list.as_array().expect("a list");
        assert_eq!(list.len(), 1, "{out}");
        assert_eq!(list[0]["peer"], peer.as_str(), "{out}");
        assert_eq!(list[0]["filing"]["state"], "filed", "{out}");
    }
    // The registry counts the session for both, and alice may now rate
    // carol for it.
    let (ok, out) = cli(&alice, &url, &["--json", "receipts"]).await;
    assert!(ok, "{out}");
    let body: Value =
        serde_json::from_str(json_of(&out)[0]["receipt"]["body"].as_str().unwrap()).unwrap();
    let session = body["session_id"].as_str().unwrap();
    let rate = |score: &'static str| {
        let args = [
            "reputation",
            "rate",
            &amids[1],
            "--session",
            session,
            "--score",
            score,
        ];
        let (alice, url) = (alice.clone(), url.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&alice, &url, &args).await
        }
    };
    let (ok, out) = rate("0.9").await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&alice, &url, &["--json", "reputation", "verify", &amids[1]]).await;
    assert!(ok, "{out}");
    let verified = json_of(&out);
    assert_eq!(verified["receipts"], 1, "{out}");
    assert_eq!(verified["ratings"], 1, "{out}");
    assert_eq!(verified["ok"], true, "{out}");
    // Once per rater and session.
    let (ok, out) = rate("0.1").await;
    assert!(!ok, "{out}");
    assert!(out.contains("conflict"), "{out}");

    // On demand: renewed from the registry, or reloaded after `verify`.
    let (ok, out) = cli(&alice, &url, &["--json", "credentials", "renew"]).await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["reputation"], 0.5, "{out}");
    let (ok, out) = cli(&alice, &url, &["--json", "verify"]).await;
    assert!(ok, "{out}");
    let stored = json_of(&out);
    assert_eq!(stored["event"], "stored", "{out}");
    assert_eq!(stored["reloaded"], true, "{out}");
    let (ok, out) = cli(&alice, &url, &["--json", "credentials", "reload"]).await;
    assert!(ok, "{out}");
    assert!(
        json_of(&out)["attestation_expires_ms"].as_u64().is_some(),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_capabilities_and_revoke_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path(), PASS).await;
    let url = server.url.clone();
    let home = dir.path().join("alice");
    let (ok, out) = cli(&home, &url, &["--json", "init"]).await;
    assert!(ok, "{out}");
    let amid = json_of(&out)["amid"].as_str().unwrap().to_owned();
    let (ok, out) = cli(&home, &url, &["register", "--capability", "chat"]).await;
    assert!(ok, "{out}");

    // Seed A's capability names replace the list; a bad one is refused.
    let (ok, out) = cli(
        &home,
        &url,
        &["--json", "capabilities", "code-review", "weather/forecast"],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&home, &url, &["capabilities", "Weather Forecast"]).await;
    assert!(!ok && out.contains("Weather Forecast"), "{out}");
    let (ok, out) = cli(&home, &url, &["--json", "search", "weather"]).await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["results"][0]["amid"], amid, "{out}");
    let (ok, out) = cli(&home, &url, &["--json", "search", "chat"]).await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["count"], 0, "chat was replaced: {out}");

    let (ok, out) = cli(&home, &url, &["--json", "registry-presence", "away"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&home, &url, &["registry-presence", "sleeping"]).await;
    assert!(
        !ok && out.contains("presence is online, away, dnd or offline"),
        "{out}"
    );

    // Revoked: gone from search, and its key can register no more.
    let (ok, out) = cli(
        &home,
        &url,
        &["--json", "revoke", "--reason", "key retired"],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&home, &url, &["--json", "search", "weather"]).await;
    assert!(ok, "{out}");
    assert_eq!(json_of(&out)["count"], 0, "revoked: {out}");
    let (ok, out) = cli(&home, &url, &["register", "--capability", "chat"]).await;
    assert!(!ok, "a revoked key registers no more: {out}");
}
