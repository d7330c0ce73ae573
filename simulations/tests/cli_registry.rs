//! `agentmesh register` and `agentmesh search`: through the local API of the
//! node running for the data directory, and straight to the registry when
//! none runs (or with `--direct`).

use std::{path::Path, time::Duration};

use agentmesh_sim::process::{start_agent, start_bootstrap_with_registry};
use serde_json::Value;

mod support;

const WAIT: Duration = Duration::from_secs(90);
/// A registry URL nothing listens on: a command that reaches a registry
/// while given it went through the running node.
const NOWHERE: &str = "http://127.0.0.1:9";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

/// `agentmesh --json --data-dir <dir> <args>`: whether it succeeded, its
/// stdout and stderr.
async fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(support::agentmesh_cli())
            .env("AGENTMESH_PASSPHRASE", "test passphrase")
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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON a command printed, once it succeeded.
async fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let (ok, out, err) = cli(dir, args).await;
    assert!(ok, "agentmesh {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn amids(found: &Value) -> Vec<&str> {
    found["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {found}"))
        .iter()
        .filter_map(|r| r["amid"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_search_go_through_the_running_node_else_to_the_registry() {
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr, registry) =
        start_bootstrap_with_registry(exe(), &root.path().join("boot"), &[])
            .await
            .unwrap();
    // alice's node runs, with the bootstrap node's registry.
    let args = vec!["--registry".to_string(), boot_addr.clone()];
    let alice_dir = root.path().join("alice");
    let (_alice, alice_amid) = start_agent(exe(), "alice", &alice_dir, &boot_addr, &args)
        .await
        .unwrap();

    // Through alice's node: the --registry given is not used (nothing
    // listens there); the node's registry is.
    let registered = cli_json(
        &alice_dir,
        &[
            "register",
            "--name",
            "alice",
            "--capability",
            "weather/forecast",
            "--registry",
            NOWHERE,
        ],
    )
    .await;
    assert_eq!(registered["amid"], alice_amid.as_str(), "{registered}");
    assert!(registered["tier"].is_string(), "{registered}");
    let found = cli_json(&alice_dir, &["search", "weather", "--registry", NOWHERE]).await;
    assert_eq!(amids(&found), vec![alice_amid.as_str()], "{found}");
    // Relays of the command line are not the node's: refused, with the way
    // around.
    let (ok, _, err) = cli(
        &alice_dir,
        &["register", "--relay", "/ip4/127.0.0.1/udp/9/quic-v1"],
    )
    .await;
    assert!(!ok && err.contains("--direct"), "{err}");
    // --direct goes to --registry even with the node running.
    let (ok, _, err) = cli(
        &alice_dir,
        &["search", "weather", "--direct", "--registry", NOWHERE],
    )
    .await;
    assert!(!ok && err.contains("127.0.0.1:9"), "{err}");

    // bob has no node running: straight to the registry, signed with his
    // key from the keystore.
    let bob_dir = root.path().join("bob");
    let bob = cli_json(&bob_dir, &["init"]).await;
    let bob_amid = bob["amid"].as_str().unwrap().to_owned();
    let registered = cli_json(
        &bob_dir,
        &[
            "register",
            "--name",
            "bob",
            "--capability",
            "weather/alerts",
            "--registry",
            &registry,
        ],
    )
    .await;
    assert_eq!(registered["amid"], bob_amid.as_str(), "{registered}");
    assert_eq!(registered["created"], true, "{registered}");
    let found = cli_json(&bob_dir, &["search", "weather", "--registry", &registry]).await;
    let mut both = amids(&found);
    both.sort_unstable();
    let mut expected = vec![alice_amid.as_str(), bob_amid.as_str()];
    expected.sort_unstable();
    assert_eq!(both, expected, "{found}");
    // Without a node, the registry's absence is the command's error.
    let (ok, _, err) = cli(&bob_dir, &["search", "weather", "--registry", NOWHERE]).await;
    assert!(!ok && err.contains("127.0.0.1:9"), "{err}");
    // And alice's node now finds bob too.
    let found = cli_json(&alice_dir, &["search", "weather"]).await;
    let mut both = amids(&found);
    both.sort_unstable();
    assert_eq!(both, expected, "{found}");
}
