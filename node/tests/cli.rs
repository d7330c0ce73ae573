//! The `agentmesh` binary: identity commands and the policy dry run.

use std::process::Command;

fn agentmesh() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    c.env("AGENTMESH_PASSPHRASE", "test passphrase")
        .env_remove("AGENTMESH_PASSPHRASE_FILE")
        .env_remove("AGENTMESH_HOME");
    c
}

fn json_of(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn init_then_id_gives_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let init = json_of(
        agentmesh()
            .args(["--json", "--data-dir", d, "init"])
            .output()
            .unwrap(),
    );
    assert_eq!(init["created"], true);
    let again = json_of(
        agentmesh()
            .args(["--json", "--data-dir", d, "init"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["created"], false);
    let id = json_of(
        agentmesh()
            .args(["--json", "--data-dir", d, "id"])
            .output()
            .unwrap(),
    );
    assert_eq!(id["amid"], init["amid"]);
    assert_eq!(id["fingerprint"], init["fingerprint"]);
    // the wrong passphrase is refused
    let bad = agentmesh()
        .args(["--data-dir", d, "id"])
        .env("AGENTMESH_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong passphrase"));
}

#[test]
fn rotate_key_moves_to_a_new_amid_and_id_lists_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        json_of(
            agentmesh()
                .args(["--json", "--data-dir", d])
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let first = run(&["init"])["amid"].clone();
    assert_eq!(run(&["id"])["previous"], serde_json::json!([]));
    let moved = run(&["rotate-key"]);
    assert_eq!(moved["old"], first);
    assert_ne!(moved["new"], first);
    let second = run(&["rotate-key"]);
    assert_eq!(second["old"], moved["new"]);
    let id = run(&["id"]);
    assert_eq!(id["amid"], second["new"]);
    let previous: Vec<_> = id["previous"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["amid"].clone())
        .collect();
    assert_eq!(previous, vec![first, moved["new"].clone()]);
    // The keystore still opens only with its passphrase.
    let bad = agentmesh()
        .args(["--data-dir", d, "rotate-key"])
        .env("AGENTMESH_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(run(&["id"])["amid"], second["new"]);
}

#[test]
fn policy_check_is_a_dry_run_of_the_policy_file() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.toml");
    let check = |args: &[&str]| {
        let mut c = agentmesh();
        c.args(["--json", "policy", "check", file]).args(args);
        json_of(c.output().unwrap())
    };
    let anon = check(&["--capability", "travel/flights", "--action", "book"]);
    assert_eq!(anon["decision"]["reject"]["reason"], "intent_denied");
    let verified = check(&[
        "--capability",
        "travel/flights",
        "--action",
        "book",
        "--tier",
        "verified",
    ]);
    assert!(verified["decision"]["accept"].is_object());
    assert_eq!(anon["policy_hash"], verified["policy_hash"]);
    let invalid = check(&["--capability", "Chat Bot"]);
    assert_eq!(invalid["decision"]["reject"]["reason"], "invalid_intent");
}

#[test]
fn policy_check_with_a_reputation_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "min_tier = \"verified\"\nreputation_min = 0.6\n").unwrap();
    let check = |args: &[&str]| {
        let mut c = agentmesh();
        c.args(["--json", "policy", "check"])
            .arg(&file)
            .args(["--tier", "verified"])
            .args(args);
        json_of(c.output().unwrap())
    };
    assert_eq!(
        check(&[])["decision"]["reject"]["reason"],
        "reputation_too_low"
    );
    assert_eq!(
        check(&["--reputation", "0.5"])["decision"]["reject"]["reason"],
        "reputation_too_low"
    );
    assert!(check(&["--reputation", "0.6"])["decision"]["accept"].is_object());
}
