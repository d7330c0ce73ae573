//! The session types from the `agentmesh` CLI: three `agentmesh run`
//! processes (one the others join through), and `agentmesh request`,
//! `reply`, `end` and `stream` as separate processes talking to them; and
//! `agentmesh doctor` against them.

mod support;

use std::{path::Path, time::Duration};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::cli::{cli, cli_on_terminal, listen_addr, run, Agent, WAIT};

/// The QUIC address of the agent in `dir`.
async fn quic_addr(dir: &Path) -> String {
    listen_addr(dir, |a| a.contains("/quic")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_end_and_stream_from_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let boot = Agent::start(root.path().join("boot"), None).await;
    let addr = quic_addr(&boot.dir).await;
    let mut alice = Agent::start(root.path().join("alice"), Some(&addr)).await;
    let mut bob = Agent::start(root.path().join("bob"), Some(&addr)).await;
    alice.published().await;
    bob.published().await;

    // request: `agentmesh request` waits while bob's owner replies.
    let request = {
        let (dir, to) = (alice.dir.clone(), bob.amid.clone());
        tokio::spawn(async move {
            cli(
                &dir,
                &[
                    "--json",
                    "request",
                    &to,
                    r#"{"q":"weather?"}"#,
                    "--timeout",
                    "60",
                ],
            )
            .await
        })
    };
    let req = bob
        .wait(|v| v["event"] == "message" && v["kind"] == "request")
        .await;
    let id = req["id"].as_str().unwrap().to_owned();
    cli(&bob.dir, &["reply", &alice.amid, &id, r#"{"a":"sunny"}"#]).await;
    let reply: Value = serde_json::from_str(request.await.unwrap().trim()).unwrap();
    assert_eq!(reply["payload"]["a"], "sunny");
    assert_eq!(reply["reply_to"], id.as_str());
    assert_eq!(reply["kind"], "reply");

    // end: both sides see the session closed.
    cli(&bob.dir, &["end", &alice.amid]).await;
    let closed = alice.wait(|v| v["event"] == "session_closed").await;
    assert_eq!(closed["by_peer"], true);
    assert_eq!(closed["peer"], bob.amid.as_str());

    // stream: a file, chunk by chunk; bob prints its size and hash.
    let file = root.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = cli(
        &alice.dir,
        &[
            "--json",
            "stream",
            &bob.amid,
            file.to_str().unwrap(),
            "--chunk-size",
            "32768",
        ],
    )
    .await;
    let sent: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(sent["chunks"], 10);
    let ended = bob
        .wait(|v| v["event"] == "stream_ended" || v["event"] == "stream_failed")
        .await;
    assert_eq!(ended["event"], "stream_ended");
    assert_eq!(ended["bytes"], data.len() as u64);
    assert_eq!(ended["sha256"], hex::encode(Sha256::digest(&data)));

    // On a terminal, `--json` still prints JSON alone: no progress bar.
    let stream = [
        "stream",
        &bob.amid,
        file.to_str().unwrap(),
        "--chunk-size",
        "32768",
    ];
    let shown = cli_on_terminal(&alice.dir, &[&["--json"], &stream[..]].concat()).await;
    let sent: Value = serde_json::from_str(shown.trim()).expect("only JSON on the terminal");
    assert_eq!(sent["chunks"], 10);
    // Without it, the bar is drawn on stderr, then cleared for the result.
    let shown = cli_on_terminal(&alice.dir, &stream).await;
    assert!(shown.contains("sent ["), "a bar: {shown:?}");
    assert!(
        shown.contains(&format!("sent {} bytes in 10 chunks", data.len())),
        "{shown:?}"
    );

    // A clean stop publishes bob as offline.
    let bob_amid = bob.amid.clone();
    bob.stop().await;
    // bob is gone: only its shutdown can have published this.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let looked = cli(&alice.dir, &["--json", "lookup", &bob_amid]).await;
        let card: Value = serde_json::from_str(looked.trim()).unwrap();
        if card["presence"] == "offline" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob still looks {}",
            card["presence"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    alice.stop().await;
    boot.stop().await;
}

/// `agentmesh doctor` as the owner sees it: its table and exit status.
async fn doctor(dir: &Path) -> (bool, String) {
    let (ok, out, _) = run(dir, &["doctor"]).await;
    (ok, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_prints_a_fix_under_each_failure_and_passes_once_joined() {
    let root = tempfile::tempdir().unwrap();
    // No node running: said so, with what to do.
    let (passed, table) = doctor(&root.path().join("nobody")).await;
    assert!(!passed, "{table}");
    let mut rows = table.lines().skip(1);
    assert!(
        rows.next()
            .unwrap()
            .starts_with("FAIL   node              not reached"),
        "{table}"
    );
    assert!(
        rows.next()
            .unwrap()
            .trim_start()
            .starts_with("fix: start it"),
        "{table}"
    );

    // A bootstrap node alone: no peer in its routing table.
    let boot = Agent::start(root.path().join("boot"), None).await;
    let (passed, table) = doctor(&boot.dir).await;
    assert!(!passed, "{table}");
    assert!(
        table.starts_with("RESULT CHECK             DETAIL\n"),
        "{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
    let dht = lines
        .iter()
        .position(|l| l.starts_with("FAIL   DHT               no peer in the routing table"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        lines[dht + 1].starts_with(&format!("{:25}fix: check --bootstrap", "")),
        "{table}"
    );
    for ok in [
        "ok     data dir          writable",
        "ok     keystore",
        "ok     policy",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(ok)), "{ok}: {table}");
    }

    // Alice joins through it: nothing fails (no relay is a warning), and
    // the bootstrap node's round trip is shown.
    let addr = quic_addr(&boot.dir).await;
    let mut alice = Agent::start(root.path().join("alice"), Some(&addr)).await;
    alice.published().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let table = loop {
        let (passed, table) = doctor(&alice.dir).await;
        let rtt = table.lines().any(|l| {
            l.starts_with("ok     bootstrap         1 of 1 reached: ") && l.ends_with(" ms")
        });
        if passed && rtt {
            break table;
        }
        assert!(tokio::time::Instant::now() < deadline, "{table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!table.contains("FAIL"), "{table}");
    assert!(
        table.lines().any(|l| l
            .starts_with("ok     nat mapping       no NAT: peers see our own address 127.0.0.1:")),
        "{table}"
    );
    alice.stop().await;
    boot.stop().await;
}
