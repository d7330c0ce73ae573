//! Seed B's everyday calls from the `agentmesh` CLI, against two
//! `agentmesh run` processes that share no bootstrap and no DHT: bob
//! exports his signed card, alice imports it (a forged or expired card is
//! refused), names bob, sends to the name, and bob receives; `agentmesh
//! peers` and `names` list what alice knows.

mod support;

use base64::Engine as _;
use serde_json::Value;
use support::cli::{cli, run, Agent};

/// A card string with one byte of its signed record changed.
fn tampered(card: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = b64.decode(&card[1..]).unwrap();
    // Inside the signed body (the signature is at the end).
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    format!("u{}", b64.encode(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_imported_out_of_band_reaches_its_agent_with_no_dht() {
    let root = tempfile::tempdir().unwrap();
    let mut bob = Agent::start(root.path().join("bob"), None).await;
    let alice = Agent::start(root.path().join("alice"), None).await;

    // Bob exports his card to a file; the string is the same card.
    let file = root.path().join("bob.card");
    cli(
        &bob.dir,
        &["card", "export", "--out", file.to_str().unwrap()],
    )
    .await;
    let card = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(card.starts_with('u'), "{card}");
    let exported: Value =
        serde_json::from_str(&cli(&bob.dir, &["--json", "card", "export"]).await).unwrap();
    assert_eq!(exported["amid"], bob.amid.as_str());

    // Before the import alice cannot reach bob: there is no DHT to ask.
    let (ok, _, _) = run(&alice.dir, &["name", "Bob", &bob.amid]).await;
    assert!(!ok, "an upper-case name is refused");
    let (ok, _, err) = run(&alice.dir, &["name", &bob.amid, &bob.amid]).await;
    assert!(!ok && err.contains("invalid_name"), "{err}");

    // A forged (altered) card is refused, and so is garbage.
    let (ok, _, err) = run(&alice.dir, &["card", "import", &tampered(&card)]).await;
    assert!(!ok && err.contains("invalid_card"), "{err}");
    let (ok, _, err) = run(&alice.dir, &["card", "import", "unot-a-card"]).await;
    assert!(!ok && err.contains("invalid_card"), "{err}");

    // The real one, from the file, named on the way in.
    let imported: Value = serde_json::from_str(
        &cli(
            &alice.dir,
            &[
                "--json",
                "card",
                "import",
                file.to_str().unwrap(),
                "--name",
                "bob",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(imported["amid"], bob.amid.as_str());

    // Alice writes to the name; bob receives it.
    let sent = cli(
        &alice.dir,
        &["--json", "send", "bob", r#"{"text":"hi bob"}"#],
    )
    .await;
    let receipt: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(receipt["receipt"]["to"], bob.amid.as_str(), "{sent}");
    let got = bob
        .wait(|v| v["event"] == "message" && v["payload"]["text"] == "hi bob")
        .await;
    assert_eq!(got["from"], alice.amid.as_str());

    // `lookup` finds the imported card with no DHT to ask.
    let card: Value =
        serde_json::from_str(&cli(&alice.dir, &["--json", "lookup", "bob"]).await).unwrap();
    assert_eq!(card["amid"], bob.amid.as_str());

    // Names: listed, used by `peers`, forgotten.
    cli(&alice.dir, &["name", "robert", &bob.amid]).await;
    let names: Value = serde_json::from_str(&cli(&alice.dir, &["--json", "names"]).await).unwrap();
    let listed: Vec<&str> = names["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["bob", "robert"]);

    let peers: Value = serde_json::from_str(&cli(&alice.dir, &["--json", "peers"]).await).unwrap();
    let entry = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["amid"] == bob.amid.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("bob in {peers}"));
    assert_eq!(entry["name"], "bob");
    assert_eq!(entry["presence"], "online");
    assert_eq!(entry["card_imported"], true);
    assert!(entry["sessions"].as_u64().unwrap() >= 1, "{entry}");
    assert!(entry["last_seen_ms"].as_u64().is_some(), "{entry}");
    assert!(
        entry["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("direct")),
        "{entry}"
    );
    let table = cli(&alice.dir, &["peers"]).await;
    assert!(
        table.contains("bob") && table.contains(&bob.amid),
        "{table}"
    );

    cli(&alice.dir, &["name", "--rm", "robert"]).await;
    let (ok, _, err) = run(&alice.dir, &["send", "robert", "hello"]).await;
    assert!(!ok && err.contains("robert"), "{err}");
    // The AMID itself still works, and the name bob.
    cli(&alice.dir, &["send", &bob.amid, "by amid"]).await;
    bob.wait(|v| v["event"] == "message" && v["payload"]["text"] == "by amid")
        .await;
}
