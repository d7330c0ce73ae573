//! Seed B's everyday calls from the `agentmesh` CLI, against two
//! `agentmesh run` processes that share no bootstrap and no DHT: bob
//! exports his signed card, alice imports it (a forged or expired card is
//! refused), names bob, sends to the name, and bob receives; `agentmesh
//! peers` and `names` list what alice knows.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use base64::Engine as _;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

const WAIT: Duration = Duration::from_secs(90);

fn agentmesh(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    c.env("AGENTMESH_PASSPHRASE", "cli contacts")
        .env_remove("AGENTMESH_PASSPHRASE_FILE")
        .env_remove("AGENTMESH_HOME")
        .env_remove("AGENTMESH_BOOTSTRAP")
        .arg("--data-dir")
        .arg(dir)
        .kill_on_drop(true);
    c
}

/// An `agentmesh run --json` process with no bootstrap, and its output.
struct Agent {
    dir: PathBuf,
    amid: String,
    _child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Agent {
    async fn start(dir: PathBuf) -> Agent {
        let mut child = agentmesh(&dir)
            .args(["--json", "run"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agentmesh run starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut a = Agent {
            dir,
            amid: String::new(),
            _child: child,
            lines,
            seen: Vec::new(),
        };
        let started = a.wait(|v| v["event"] == "started").await;
        a.amid = started["amid"].as_str().unwrap().to_owned();
        listening(&a.dir).await;
        a
    }

    async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("expected output in time; saw {:?}", self.seen))
                .expect("agent still running");
            if pred(&v) {
                return v;
            }
            self.seen.push(v);
        }
    }
}

/// Waits until the agent in `dir` listens, from `agentmesh status` (the
/// `listening` events may be out before `run` subscribes to events).
async fn listening(dir: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = agentmesh(dir)
            .args(["--json", "status"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if status["listen_addrs"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one CLI command; returns (success, stdout, stderr).
async fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        agentmesh(dir).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .expect("the command ends in time")
    .expect("cli runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

async fn cli(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run(dir, args).await;
    assert!(ok, "agentmesh {args:?}: {err}");
    out
}

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
    let mut bob = Agent::start(root.path().join("bob")).await;
    let alice = Agent::start(root.path().join("alice")).await;

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
