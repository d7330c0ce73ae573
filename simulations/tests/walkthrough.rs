//! The README's walkthrough, command for command, with real processes: a
//! bootstrap node with its registry and a relay; bob runs `agentmesh run`
//! as a weather agent and registers; alice finds him with `agentmesh
//! search weather`, KNOCKs with intent `weather/forecast` and the standard
//! request schema; bob goes offline and alice's next message waits in his
//! mailbox until he is back; bob rotates his key and alice's next send
//! follows him to his new AMID.

use std::{path::Path, time::Duration};

use agentmesh_sim::process::{start_bootstrap_with_registry, start_relay, Proc, DEVNET_PASSPHRASE};
use serde_json::{json, Value};

mod support;

const WAIT: Duration = Duration::from_secs(90);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

/// `agentmesh --json --data-dir <dir> <args>`, which must succeed: what it
/// printed, as JSON.
async fn cli(dir: &Path, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        WAIT * 2,
        tokio::process::Command::new(support::agentmesh_cli())
            .env("AGENTMESH_PASSPHRASE", DEVNET_PASSPHRASE)
            .env_remove("AGENTMESH_PASSPHRASE_FILE")
            .env_remove("AGENTMESH_REGISTRY")
            .arg("--json")
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .output(),
    )
    .await
    .expect("the command ends in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agentmesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

/// `agentmesh --json --data-dir <dir> run <args>`, once its card is out.
async fn run(name: &str, dir: &Path, args: &[String]) -> (Proc, String) {
    let mut all = vec![
        "--json".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "run".into(),
    ];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(name, &support::agentmesh_cli(), &all, dir).unwrap();
    let started = p.wait_event(WAIT, "started").await.unwrap();
    let amid = started["amid"].as_str().unwrap().to_owned();
    p.wait_for(WAIT, |v| {
        v["event"] == "card_published" && v["stored_remotely"] == true
    })
    .await
    .unwrap();
    (p, amid)
}

fn forecast(city: &str) -> String {
    json!({ "type": "request", "action": "forecast", "params": { "city": city } }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot, _registry) =
        start_bootstrap_with_registry(exe(), &root.path().join("boot"), &[])
            .await
            .unwrap();
    let (_relay, relays) = start_relay(exe(), &root.path().join("relay"), &boot, &[], &[])
        .await
        .unwrap();
    let relay = relays[0].clone();

    // bob: a weather agent that takes forecast requests in the standard
    // request schema, registered with the registry.
    let bob_dir = root.path().join("bob");
    let bob_args: Vec<String> = [
        "--bootstrap",
        &boot,
        "--registry",
        &boot,
        "--relay",
        &relay,
        "--capability",
        "weather/forecast",
        "--accept-schema",
        "weather/forecast=agentmesh/request@1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (bob, bob_amid) = run("bob", &bob_dir, &bob_args).await;
    let registered = cli(
        &bob_dir,
        &[
            "register",
            "--name",
            "Weather bot",
            "--capability",
            "weather/forecast",
        ],
    )
    .await;
    assert_eq!(registered["amid"], bob_amid.as_str(), "{registered}");

    // alice finds him by capability.
    let alice_dir = root.path().join("alice");
    let alice_args: Vec<String> = ["--bootstrap", &boot, "--registry", &boot, "--relay", &relay]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (_alice, _) = run("alice", &alice_dir, &alice_args).await;
    let found = cli(&alice_dir, &["search", "weather"]).await;
    let hits: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["amid"].as_str())
        .collect();
    assert_eq!(hits, vec![bob_amid.as_str()], "{found}");

    // The KNOCK with that intent and schema is accepted.
    let schema_args = [
        "--capability",
        "weather/forecast",
        "--schema",
        "agentmesh/request@1",
    ];
    let mut send = vec!["send", bob_amid.as_str()];
    let oslo = forecast("Oslo");
    send.push(&oslo);
    send.extend_from_slice(&schema_args);
    let sent = cli(&alice_dir, &send).await;
    assert_eq!(sent["receipt"]["knocked"], true, "{sent}");
    // A payload its schema refuses is not sent.
    let out = tokio::process::Command::new(support::agentmesh_cli())
        .env("AGENTMESH_PASSPHRASE", DEVNET_PASSPHRASE)
        .arg("--data-dir")
        .arg(&alice_dir)
        .args(["send", &bob_amid, r#"{"city":"Oslo"}"#])
        .args(schema_args)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not conform"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // bob goes offline: the next message waits in his mailbox, and reaches
    // him when he is back.
    bob.terminate().await.unwrap();
    let bergen = forecast("Bergen");
    let mut send = vec!["send", bob_amid.as_str(), &bergen];
    send.extend_from_slice(&schema_args);
    let sent = cli(&alice_dir, &send).await;
    assert_eq!(sent["receipt"]["path"], "mailbox", "{sent}");
    let (mut bob, again) = run("bob", &bob_dir, &bob_args).await;
    assert_eq!(again, bob_amid);
    let got = bob
        .wait_for(WAIT, |v| {
            v["event"] == "message" && v["payload"]["params"]["city"] == "Bergen"
        })
        .await
        .unwrap();
    assert_eq!(got["path"], "mailbox", "{got}");

    // bob rotates his key; alice's next send follows him.
    bob.terminate().await.unwrap();
    let moved = cli(&bob_dir, &["rotate-key"]).await;
    assert_eq!(moved["old"], bob_amid.as_str());
    let new_bob = moved["new"].as_str().unwrap().to_owned();
    let (mut bob, now) = run("bob", &bob_dir, &bob_args).await;
    assert_eq!(now, new_bob);
    // Registering again takes the old registration along; searches find
    // the new key only.
    let registered = cli(
        &bob_dir,
        &[
            "register",
            "--name",
            "Weather bot",
            "--capability",
            "weather/forecast",
        ],
    )
    .await;
    assert_eq!(registered["rotated"]["moved"], true, "{registered}");
    assert_eq!(
        registered["rotated"]["from"],
        bob_amid.as_str(),
        "{registered}"
    );
    let found = cli(&alice_dir, &["search", "weather"]).await;
    assert_eq!(found["results"][0]["amid"], new_bob.as_str(), "{found}");
    assert_eq!(
        found["results"].as_array().map(Vec::len),
        Some(1),
        "{found}"
    );
    // Once the tombstone bob's new node leaves under his old key is out,
    // the old AMID's card says he moved (mail sent before that would wait
    // at his old mailbox, read by nobody).
    tokio::time::timeout(WAIT, async {
        loop {
            let card = cli(&alice_dir, &["lookup", &bob_amid]).await;
            if card["presence"] == "moved" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("the old card says moved");
    let tromso = forecast("Tromsø");
    let mut send = vec!["send", bob_amid.as_str(), &tromso];
    send.extend_from_slice(&schema_args);
    // The rotation record goes out once bob's card is out; until a peer
    // holds it, alice's send finds no way to bob.
    let sent = tokio::time::timeout(WAIT * 2, async {
        loop {
            let out = tokio::process::Command::new(support::agentmesh_cli())
                .env("AGENTMESH_PASSPHRASE", DEVNET_PASSPHRASE)
                .arg("--json")
                .arg("--data-dir")
                .arg(&alice_dir)
                .args(&send)
                .output()
                .await
                .unwrap();
            if out.status.success() {
                return serde_json::from_slice::<Value>(&out.stdout).unwrap();
            }
            eprintln!("not yet: {}", String::from_utf8_lossy(&out.stderr));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .expect("alice's send follows bob");
    assert_eq!(sent["receipt"]["to"], new_bob.as_str(), "{sent}");
    let got = bob
        .wait_for(WAIT, |v| {
            v["event"] == "message" && v["payload"]["params"]["city"] == "Tromsø"
        })
        .await
        .unwrap();
    assert_ne!(got["from"], Value::Null);
    let id = cli(&bob_dir, &["id"]).await;
    assert_eq!(id["previous"][0]["amid"], bob_amid.as_str(), "{id}");
}
