//! Real processes on loopback: a bootstrap and agents, each its own process
//! with its own sled database on disk, talking over real QUIC sockets.

use std::{path::Path, time::Duration};

use agentmesh_node::control::{Client, Request, Response};
use agentmesh_sim::process::{control_send, start_agent, start_bootstrap};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);
/// Time for the processes of a devnet that ended to stop (a clean stop
/// takes a few seconds; its card push waits at most 5 s).
const STOP_WAIT: Duration = Duration::from_secs(20);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

async fn send(dir: &Path, to: &str, payload: Value) -> Response {
    control_send(dir, to, payload, WAIT).await.expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_finds_bob_by_amid_and_bob_survives_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (alice, _alice_amid) =
        start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
            .await
            .unwrap();
    let bob_dir = root.path().join("bob");
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &[])
        .await
        .unwrap();

    // alice knows only bob's AMID: the card comes from the DHT.
    let payload = json!({"text": "hello bob", "task": 42, "nested": {"ok": true}});
    let r = send(&alice.dir, &bob_amid, payload.clone()).await;
    assert!(r.ok, "{r:?}");
    let receipt = r.receipt.unwrap();
    assert!(receipt.knocked);
    let id = receipt.id.to_string();
    let got = bob
        .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(got["payload"], payload);

    // bob dies without a chance to flush, and comes back on new ports.
    bob.kill().await.unwrap();
    let (mut bob, again) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &[])
        .await
        .unwrap();
    assert_eq!(again, bob_amid, "same identity across restarts");

    // alice's next message continues the same Olm session and decrypts.
    let r = send(&alice.dir, &bob_amid, json!("after restart")).await;
    assert!(r.ok, "{r:?}");
    let receipt = r.receipt.unwrap();
    assert!(!receipt.knocked, "the cached session is reused");
    let id = receipt.id.to_string();
    let got = bob
        .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(got["payload"], json!("after restart"));
    // Nothing was delivered twice: a sentinel alice sends now reaches bob
    // after anything delivered before it (one stream from alice, one inbox,
    // in order), so every message bob printed since his restart is in:
    // the one checked above and the sentinel, nothing else.
    let r = send(&alice.dir, &bob_amid, json!("sentinel")).await;
    assert!(r.ok, "{r:?}");
    let sentinel = r.receipt.unwrap().id.to_string();
    bob.wait_for(WAIT, |v| {
        v["event"] == "message" && v["id"] == sentinel.as_str()
    })
    .await
    .unwrap();
    let dupes: Vec<Value> = bob
        .drain()
        .into_iter()
        .filter(|v| v["event"] == "message")
        .collect();
    assert!(dupes.is_empty(), "unexpected extra deliveries: {dupes:?}");

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_sender_gets_reject_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (mallory, mallory_amid) = start_agent(
        exe(),
        "mallory",
        &root.path().join("mallory"),
        &boot_addr,
        &[],
    )
    .await
    .unwrap();
    let (mut bob, bob_amid) = start_agent(
        exe(),
        "bob",
        &root.path().join("bob"),
        &boot_addr,
        &["--block".into(), mallory_amid.clone()],
    )
    .await
    .unwrap();
    let r = send(&mallory.dir, &bob_amid, json!("let me in")).await;
    assert!(!r.ok);
    assert_eq!(r.reason, Some(agentmesh_node::RejectReason::Blocked));
    let decided = bob.wait_event(WAIT, "knock_decided").await.unwrap();
    assert_eq!(decided["accepted"], false);
    assert_eq!(decided["reason"], "blocked");
    assert_eq!(decided["from"], mallory_amid.as_str());
    assert!(bob.drain().iter().all(|v| v["event"] != "message"));
    bob.terminate().await.unwrap();
    mallory.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_reads_the_audit_log_and_kills_a_contact() {
    let root = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (alice, alice_amid) =
        start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
            .await
            .unwrap();
    let (bob, bob_amid) = start_agent(exe(), "bob", &root.path().join("bob"), &boot_addr, &[])
        .await
        .unwrap();
    assert!(send(&alice.dir, &bob_amid, json!("one")).await.ok);
    assert!(send(&alice.dir, &bob_amid, json!("two")).await.ok);

    let mut owner = Client::connect(&bob.dir).await.unwrap();
    let audit = owner
        .request(&Request::Audit {
            peer: Some(alice_amid.clone()),
            kind: None,
            limit: None,
            verify: true,
        })
        .await
        .unwrap();
    assert!(audit.ok, "{audit:?}");
    assert!(audit.verified.unwrap() >= 4);
    let kinds: Vec<&str> = audit
        .audit
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "knock_decision",
            "session_opened",
            "message_in",
            "message_in"
        ]
    );
    // the log holds metadata, never the content
    let text = serde_json::to_string(&audit.audit).unwrap();
    assert!(!text.contains("\"one\"") && !text.contains("\"two\""));

    let killed = owner
        .request(&Request::Kill {
            amid: Some(alice_amid.clone()),
        })
        .await
        .unwrap();
    assert!(killed.ok);
    let r = send(&alice.dir, &bob_amid, json!("three")).await;
    assert!(!r.ok);
    assert_eq!(r.reason, Some(agentmesh_node::RejectReason::Blocked));

    bob.terminate().await.unwrap();
    alice.terminate().await.unwrap();
    boot.terminate().await.unwrap();
}

/// The processes whose parent is `pid` (from `/proc/<pid>/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
async fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devnet_stopped_with_sigterm_leaves_no_process_behind() {
    let root = tempfile::tempdir().unwrap();
    let mut devnet = tokio::process::Command::new(exe())
        .args(["devnet", "--dir"])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = devnet.id().unwrap();
    // The bootstrap and the relay at least.
    let mut kids = Vec::new();
    assert!(
        until(WAIT, || {
            kids = children_of(pid);
            kids.len() >= 2
        })
        .await,
        "the devnet started no processes"
    );
    // SAFETY: a signal to our own child's pid has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    devnet.wait().await.unwrap();
    // They are told at once and stop cleanly within seconds. Without that,
    // they would run on until their next write to the devnet's closed pipe
    // (the relay's status line every 30 s; never, for a quiet process).
    let gone = until(STOP_WAIT, || kids.iter().all(|k| !alive(*k))).await;
    let left: Vec<u32> = kids.iter().copied().filter(|k| alive(*k)).collect();
    for k in &left {
        // SAFETY: as above; do not leave them running past the test.
        unsafe {
            libc::kill(*k as libc::pid_t, libc::SIGKILL);
        }
    }
    assert!(gone, "still running after the devnet ended: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_and_searches_through_its_local_api() {
    use agentmesh_node::control::Method;
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr, _registry) = agentmesh_sim::process::start_bootstrap_with_registry(
        exe(),
        &root.path().join("boot"),
        &[],
    )
    .await
    .unwrap();
    let args = vec!["--registry".to_string(), boot_addr.clone()];
    let (alice, alice_amid) = start_agent(
        exe(),
        "alice",
        &root.path().join("alice"),
        &boot_addr,
        &args,
    )
    .await
    .unwrap();
    let mut api = Client::connect(&alice.dir).await.unwrap();
    let registered = tokio::time::timeout(
        WAIT,
        api.call(
            Method::POST,
            "/v1/registry/register",
            // Seed A's own capability names.
            Some(&json!({"name": "alice", "capabilities": ["chat", "code-review", "weather/forecast"]})),
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .expect("registered");
    assert!(registered["registration"].is_object(), "{registered}");
    for query in ["chat", "weather"] {
        let found = tokio::time::timeout(
            WAIT,
            api.call(
                Method::GET,
                &format!("/v1/registry/search?capability={query}"),
                None,
            ),
        )
        .await
        .unwrap()
        .unwrap()
        .expect("searched");
        assert!(
            found["results"].to_string().contains(&alice_amid),
            "alice is found by {query}: {found}"
        );
    }
    // What the KNOCK would refuse, the registry refuses too.
    let refused = tokio::time::timeout(
        WAIT,
        api.call(
            Method::POST,
            "/v1/registry/register",
            Some(&json!({"name": "alice", "capabilities": ["Chat Bot"]})),
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap_err();
    assert!(refused.message.contains("Chat Bot"), "{refused:?}");
    // Seed A's KNOCK: bob finds alice's card and asks with the intent
    // `weather/forecast`; alice's default policy judges it and accepts.
    let (bob, _) = start_agent(exe(), "bob", &root.path().join("bob"), &boot_addr, &args)
        .await
        .unwrap();
    let mut bob_api = Client::connect(&bob.dir).await.unwrap();
    let sent = tokio::time::timeout(
        WAIT,
        bob_api.call(
            Method::POST,
            "/v1/send",
            Some(&json!({"to": alice_amid, "payload": {"location": "New York"}, "capability": "weather/forecast"})),
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .expect("accepted and delivered");
    assert!(sent["receipt"]["knocked"] == json!(true), "{sent}");
    // A bad query is the API's error, not the registry's.
    let e = api
        .call(Method::GET, "/v1/registry/search", None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, agentmesh_node::api::ErrorCode::BadRequest);
}
