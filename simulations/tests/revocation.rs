//! Revocation reaches running nodes, against a real registry (the bootstrap
//! crate's, on a bootstrap node in this process: HTTP and
//! `/agentmesh/registry/1`) and real agent nodes on loopback sockets:
//!
//! - an agent with a tier 1 certificate is accepted, then revoked at the
//!   registry; the receiver's scheduled sync learns it, without a restart,
//!   and refuses its next KNOCK as revoked;
//! - an agent revoked before it ever knocked is refused at its first KNOCK:
//!   a chain not checked before is checked with the registry first;
//! - with the registry's protocol gone, a sync reads the revocation records
//!   the registry published in the DHT.

use std::{path::Path, time::Duration};

use serde_json::json;
use tokio::sync::broadcast::Receiver;

use agentmesh_bootstrap::{registry::RegistrySettings, start_registry, RunningRegistry};
use agentmesh_node::{
    crypto::keystore::KdfParams,
    registry::{protocol::Request, Operation, SignedRequest},
    Amid, Config, Multiaddr, Node, NodeEvent, Passphrase, Policy, RejectReason, RevocationSource,
    RevocationSync, SendError, Tier,
};

const WAIT: Duration = Duration::from_secs(90);

fn now() -> u64 {
    agentmesh_dht::now_ms()
}

async fn spawn(dir: &Path, name: &str, config: Config, boot: &[Multiaddr]) -> Node {
    Node::builder(config)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .bootstraps(boot.to_vec())
        .spawn()
        .await
        .expect("node starts")
}

/// A bootstrap node running the registry; its addresses.
async fn registry(dir: &Path) -> (Node, RunningRegistry, Vec<Multiaddr>) {
    let mut c = agentmesh_bootstrap::config();
    c.kdf = KdfParams::throwaway();
    let boot = spawn(dir, "boot", c, &[]).await;
    let mut settings = RegistrySettings::default();
    settings.kdf = KdfParams::throwaway();
    let running = start_registry(
        &boot,
        &dir.join("boot"),
        &Passphrase::new("boot"),
        settings,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("registry starts");
    let addrs = agentmesh_bootstrap::wait_listening(&boot, 1).await;
    assert!(!addrs.is_empty(), "the bootstrap node listens");
    (boot, running, addrs)
}

/// An agent's settings: `registry` is its registry; it syncs revocations
/// every `sync` (never on a schedule with `None`).
fn agent(registry: &Multiaddr, sync: Option<Duration>) -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c.registry = Some(registry.clone());
    c.revocation_sync = sync;
    c
}

/// A receiver that wants tier 1 or more.
fn strict(mut c: Config) -> Config {
    c.policy = Policy::from_toml("min_tier = \"verified\"").unwrap();
    c
}

/// Registers `node` and has the registry issue it a tier 1 certificate,
/// which its KNOCKs show from then on.
async fn verified(node: &Node, running: &RunningRegistry, name: &str) {
    let v = node.register(name, None).await.expect("registered");
    assert_eq!(v["created"], true, "{v}");
    running
        .registry
        .issue_verified(&node.amid(), &format!("github:{name}"), now())
        .await
        .expect("certificate issued");
    let state = node.renew_credentials().await.expect("credentials");
    assert_eq!(state.tier, Tier::Verified);
}

/// Revokes `node` at its registry (a request it signs itself); the signed
/// revocation.
async fn revoke(node: &Node) -> Vec<u8> {
    let op = Operation::Revoke {
        subject: node.amid(),
        reason: "key lost".into(),
    };
    let request = SignedRequest::sign(node.identity(), op, now()).unwrap();
    let v = node
        .registry_call(Request::Signed { request })
        .await
        .expect("revoked");
    assert_eq!(v["revoked"], true, "{v}");
    hex::decode(v["revocation"].as_str().expect("the revocation")).unwrap()
}

async fn send(from: &Node, to: &Node) -> Result<(), SendError> {
    tokio::time::timeout(WAIT, from.send(&to.amid(), json!({"text": "hello"})))
        .await
        .expect("send finishes")
        .map(|_| ())
}

/// Waits for the first event `pick` maps to something.
async fn next<T>(events: &mut Receiver<NodeEvent>, pick: impl Fn(NodeEvent) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}

/// The receiver's decision on the next KNOCK from `from`.
async fn decision(events: &mut Receiver<NodeEvent>, from: Amid) -> Option<RejectReason> {
    next(events, |e| match e {
        NodeEvent::KnockDecided {
            from: f, reason, ..
        } if f == from => Some(reason),
        _ => None,
    })
    .await
}

fn synced(e: NodeEvent) -> Option<RevocationSync> {
    match e {
        NodeEvent::RevocationsSynced(s) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_refuses_an_agent_once_the_registry_revoked_it() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_boot, running, addrs) = registry(dir.path()).await;
    let root = Amid::from_bytes(&running.registry.root_key().to_bytes()).unwrap();

    // Yara knows no root: she pins the one the registry names at her first
    // sync, and syncs every 2 s from then on.
    let yara = spawn(
        dir.path(),
        "yara",
        strict(agent(&addrs[0], Some(Duration::from_secs(2)))),
        &addrs,
    )
    .await;
    let mut yara_events = yara.events();
    let xavier = spawn(dir.path(), "xavier", agent(&addrs[0], None), &addrs).await;
    assert!(yara.wait_published(WAIT).await);
    assert!(xavier.wait_published(WAIT).await);
    if yara.registry_root().is_none() {
        next(&mut yara_events, synced).await;
    }
    assert_eq!(yara.registry_root(), Some(root), "pinned on first use");

    // Xavier shows his tier 1 certificate: accepted.
    verified(&xavier, &running, "xavier").await;
    send(&xavier, &yara).await.expect("xavier is accepted");
    assert_eq!(decision(&mut yara_events, xavier.amid()).await, None);

    // Revoked at the registry: yara's next sync learns it, with no restart,
    // and ends her session with him.
    let _ = revoke(&xavier).await;
    let sync = next(&mut yara_events, |e| synced(e).filter(|s| s.added > 0)).await;
    assert_eq!(sync.added, 1);
    assert_eq!(sync.refused, 0);
    assert!(
        matches!(
            sync.source,
            RevocationSource::Crl | RevocationSource::Registry
        ),
        "{sync:?}"
    );
    assert!(yara.is_revoked(&xavier.amid()));
    assert!(!yara
        .status()
        .await
        .sessions
        .iter()
        .any(|s| s.peer == xavier.amid()));

    // His next message needs a KNOCK (yara ended the session), which is
    // refused, as revoked.
    assert_eq!(
        send(&xavier, &yara).await,
        Err(SendError::Rejected(RejectReason::Revoked))
    );
    assert_eq!(
        decision(&mut yara_events, xavier.amid()).await,
        Some(RejectReason::Revoked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_not_checked_before_is_checked_with_the_registry_and_the_dht_stands_in() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (boot, mut running, addrs) = registry(dir.path()).await;
    let root = running.registry.root_key().to_bytes();

    // Uma takes the root from her settings and never syncs on a schedule.
    let mut c = strict(agent(&addrs[0], None));
    c.registry_root = Some(root);
    let uma = spawn(dir.path(), "uma", c, &addrs).await;
    let mut uma_events = uma.events();
    let zoe = spawn(dir.path(), "zoe", agent(&addrs[0], None), &addrs).await;
    let quinn = spawn(dir.path(), "quinn", agent(&addrs[0], None), &addrs).await;
    for n in [&uma, &zoe, &quinn] {
        assert!(n.wait_published(WAIT).await);
    }
    assert_eq!(uma.registry_root().map(|a| *a.as_bytes()), Some(root));

    // Zoe is revoked after her certificate was issued, before she ever
    // knocked: her first KNOCK shows a chain uma has not checked, so uma
    // asks the registry before deciding.
    verified(&zoe, &running, "zoe").await;
    let _ = revoke(&zoe).await;
    assert!(!uma.is_revoked(&zoe.amid()));
    assert_eq!(
        send(&zoe, &uma).await,
        Err(SendError::Rejected(RejectReason::Revoked))
    );
    assert_eq!(
        decision(&mut uma_events, zoe.amid()).await,
        Some(RejectReason::Revoked)
    );
    assert!(uma.is_revoked(&zoe.amid()));

    // Quinn is accepted, then revoked, and the registry's protocol is gone
    // (the bootstrap node still serves the DHT): a sync reads the record
    // the registry's node published there. The registry publishes it in the
    // background; publishing the same record here is what is awaited.
    verified(&quinn, &running, "quinn").await;
    send(&quinn, &uma).await.expect("quinn is accepted");
    assert_eq!(decision(&mut uma_events, quinn.amid()).await, None);
    let revocation = revoke(&quinn).await;
    let ns = agentmesh_node::registry::revocation_namespace(quinn.amid().as_bytes());
    assert!(
        boot.publish_record(&ns, revocation, Duration::from_secs(3600))
            .await
            .expect("published"),
        "a peer stores the record"
    );
    running.p2p = None;
    let sync = uma.sync_revocations().await.expect("synced");
    assert_eq!(sync.source, RevocationSource::Dht);
    assert_eq!(sync.refused, 0);
    assert_eq!(sync.added, 1, "the revocation record is found in the DHT");
    assert!(uma.is_revoked(&quinn.amid()));
    quinn.close_session(&uma.amid()).await;
    assert_eq!(
        send(&quinn, &uma).await,
        Err(SendError::Rejected(RejectReason::Revoked))
    );
}
