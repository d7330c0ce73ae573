//! Revocations that follow the registry, and the pinned registry root, on
//! real nodes (loopback sockets, sled on disk) against a registry node that
//! serves `/agentmesh/registry/1` with answers the test chooses: the
//! revocation list it serves holds a genuine revocation and a forged one,
//! and later it names another root key.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{AsyncWriteExt, StreamExt};
use serde_json::json;

use agentmesh_node::{
    crypto::keystore::KdfParams,
    identity::Identity,
    registry::{
        protocol::{read_frame, write_frame, Request, Response, MAX_REQUEST_SIZE, PROTOCOL},
        Revocation, SignedRevocation, DOMAIN_SEP_REVOCATION,
    },
    trust::transparency::{MemoryTree, SignedTreeHead},
    Amid, Config, LogCheck, Node, NodeEvent, Passphrase, RegistryClientError, RejectReason,
    RevocationSource, RootPinError, SendError,
};

const WAIT: Duration = Duration::from_secs(60);

fn now() -> u64 {
    agentmesh_dht::now_ms()
}

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

/// Starts `name`, also again once a stopped node of that name let go of
/// its database (its lock is the event waited on).
async fn node(dir: &std::path::Path, name: &str, config: Config, boot: &Node) -> Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    let addrs = boot.listen_addrs().await;
    loop {
        let b = Node::builder(config.clone())
            .data_dir(dir.join(name))
            .passphrase(Passphrase::new(name))
            .bootstraps(addrs.clone());
        match b.spawn().await {
            Ok(n) => return n,
            Err(e) if e.to_string().contains("lock") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{name} starts: {e}"),
        }
    }
}

/// What the registry node answers: the root key it names and the
/// revocations its list holds.
#[derive(Default)]
struct Answers {
    root: [u8; 32],
    revocations: Vec<SignedRevocation>,
    /// The transparency log it serves, and the key signing its heads.
    log: Option<(MemoryTree, Identity)>,
}

/// A registry node: a real node serving `/agentmesh/registry/1` with the
/// root and revocation list in `answers` (every other request is answered
/// `invalid_request`).
async fn registry_node(dir: &std::path::Path, answers: Arc<Mutex<Answers>>) -> Node {
    let node = Node::builder(config())
        .data_dir(dir.join("registry"))
        .passphrase(Passphrase::new("registry"))
        .spawn()
        .await
        .expect("registry node starts");
    let mut incoming = node.stream_control().accept(PROTOCOL).expect("serves");
    // Each stream served on its own task, as the registry does: the
    // transport drops incoming streams it has no room to queue, and the
    // node sends several requests at once as it starts.
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let Ok(bytes) = read_frame(&mut stream, MAX_REQUEST_SIZE).await else {
                    return;
                };
                let response = {
                    let a = answers.lock().unwrap();
                    let root = Amid::from_bytes(&a.root).unwrap();
                    match Request::from_bytes(&bytes) {
                        Ok(Request::Root) => Response::Ok {
                            body: json!({"root": root, "root_key": hex::encode(a.root)}),
                        },
                        Ok(Request::Crl) => Response::Ok {
                            body: json!({
                                "issuer": root,
                                "issuer_key": hex::encode(a.root),
                                "generated_ms": now(),
                                "count": a.revocations.len(),
                                "revocations": a.revocations.iter().map(|r| json!({
                                    "revoked": true,
                                    "signed": hex::encode(r.to_bytes().unwrap()),
                                })).collect::<Vec<_>>(),
                            }),
                        },
                        Ok(Request::LogHead { size }) if a.log.is_some() => {
                            let (tree, key) = a.log.as_ref().unwrap();
                            let size = size.unwrap_or(tree.len());
                            let head =
                                SignedTreeHead::sign(key, size, tree.root_at(size).unwrap(), now());
                            Response::Ok {
                                body: serde_json::to_value(head).unwrap(),
                            }
                        }
                        Ok(Request::LogConsistency { first, second }) if a.log.is_some() => {
                            let (tree, _) = a.log.as_ref().unwrap();
                            let second = second.unwrap_or(tree.len());
                            match tree.consistency_proof(first, second) {
                                Ok(proof) => Response::Ok {
                                    body: json!({ "proof": proof }),
                                },
                                Err(e) => Response::Error {
                                    code: "invalid_request".into(),
                                    message: e.to_string(),
                                },
                            }
                        }
                        _ => Response::Error {
                            code: "invalid_request".into(),
                            message: "unsupported request".into(),
                        },
                    }
                };
                let _ = write_frame(&mut stream, &response.to_bytes().unwrap()).await;
                let _ = stream.close().await;
            });
        }
    });
    tokio::time::timeout(WAIT, async {
        while node.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("registry node listens");
    node
}

fn revocation(subject: &Amid, issuer: &Identity) -> Revocation {
    Revocation {
        subject_key: *subject.as_bytes(),
        serial: None,
        reason: "key lost".into(),
        revoked_ms: now(),
        issuer_key: *issuer.amid().as_bytes(),
    }
}

/// A revocation that names `root` as its issuer but is signed by `forger`.
fn forged(subject: &Amid, root: &Identity, forger: &Identity) -> SignedRevocation {
    let body = agentmesh_transports::codec::encode(&revocation(subject, root)).unwrap();
    let signature = forger.sign(DOMAIN_SEP_REVOCATION, &body);
    SignedRevocation { body, signature }
}

async fn knock_result(from: &Node, to: &Node) -> Result<(), SendError> {
    tokio::time::timeout(WAIT, from.send(&to.amid(), json!({"text": "hello"})))
        .await
        .expect("send finishes")
        .map(|_| ())
}

/// Waits for the first event `pick` maps to something.
async fn next<T>(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    pick: impl Fn(NodeEvent) -> Option<T>,
) -> T {
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

/// A node's settings with `addrs[0]` as its registry, syncing only when
/// asked.
fn config_with(addrs: &[agentmesh_node::Multiaddr]) -> Config {
    let mut c = config();
    c.registry = Some(addrs[0].clone());
    c.revocation_sync = None;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_believed_only_under_the_pinned_root_and_a_new_root_is_refused() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let other = Identity::generate();
    let answers = Arc::new(Mutex::new(Answers {
        root: *root.amid().as_bytes(),
        ..Answers::default()
    }));
    let registry = registry_node(dir.path(), answers.clone()).await;
    let addrs = registry.listen_addrs().await;

    // Bob knows no root: he pins the one the registry names first.
    let bob = node(dir.path(), "bob", config_with(&addrs), &registry).await;
    let victor = node(dir.path(), "victor", config(), &registry).await;
    let wendy = node(dir.path(), "wendy", config(), &registry).await;
    for n in [&bob, &victor, &wendy] {
        assert!(n.wait_published(WAIT).await);
    }
    assert_eq!(bob.registry_root(), None);

    // The list holds a genuine revocation of victor and one of wendy that
    // names the root but is signed by another key.
    answers.lock().unwrap().revocations = vec![
        revocation(&victor.amid(), &root).sign(&root).unwrap(),
        forged(&wendy.amid(), &root, &other),
    ];
    let mut events = bob.events();
    let synced = bob.sync_revocations().await.expect("synced");
    assert_eq!(
        bob.registry_root(),
        Some(root.amid()),
        "pinned on first use"
    );
    assert_eq!(synced.source, RevocationSource::Crl);
    assert_eq!((synced.checked, synced.added, synced.refused), (2, 1, 1));
    let reported = next(&mut events, |e| match e {
        NodeEvent::RevocationsSynced(s) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(reported, synced);
    assert!(bob.is_revoked(&victor.amid()));
    assert!(
        !bob.is_revoked(&wendy.amid()),
        "the forgery is not believed"
    );
    assert_eq!(
        knock_result(&victor, &bob).await,
        Err(SendError::Rejected(RejectReason::Revoked))
    );
    knock_result(&wendy, &bob)
        .await
        .expect("wendy is not revoked");

    // The registry now names another root, and lists a revocation of wendy
    // that this other key signed: refused, nothing believed.
    {
        let mut a = answers.lock().unwrap();
        a.root = *other.amid().as_bytes();
        a.revocations = vec![revocation(&wendy.amid(), &other).sign(&other).unwrap()];
    }
    let err = bob.sync_revocations().await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryClientError::Root(RootPinError::Changed { pinned, offered })
                if pinned == root.amid() && offered == other.amid()
        ),
        "{err}"
    );
    let (pinned, offered) = next(&mut events, |e| match e {
        NodeEvent::RegistryRootRefused { pinned, offered } => Some((pinned, offered)),
        _ => None,
    })
    .await;
    assert_eq!((pinned, offered), (root.amid(), other.amid()));
    assert_eq!(bob.registry_root(), Some(root.amid()), "the pin stays");
    assert!(!bob.is_revoked(&wendy.amid()));
    wendy.close_session(&bob.amid()).await;
    knock_result(&wendy, &bob)
        .await
        .expect("wendy is still accepted");

    // The pin is on disk: after a restart bob still refuses the new root.
    bob.shutdown().await;
    let bob = node(dir.path(), "bob", config_with(&addrs), &registry).await;
    assert_eq!(bob.registry_root(), Some(root.amid()));
    assert!(matches!(
        bob.sync_revocations().await,
        Err(RegistryClientError::Root(RootPinError::Changed { .. }))
    ));
    assert!(bob.is_revoked(&victor.amid()), "the set is on disk too");
    bob.shutdown().await;

    // The operator configures the new root: it replaces the pin, and what
    // it signs is believed.
    let mut configured = config_with(&addrs);
    configured.registry_root = Some(*other.amid().as_bytes());
    let bob = node(dir.path(), "bob", configured, &registry).await;
    assert_eq!(bob.registry_root(), Some(other.amid()));
    let synced = bob.sync_revocations().await.expect("synced");
    assert_eq!((synced.added, synced.refused), (1, 0));
    assert!(bob.is_revoked(&wendy.amid()));
}

/// A log of `n` leaves, each named after `tag`.
fn tree(tag: &str, n: u64) -> MemoryTree {
    let mut t = MemoryTree::default();
    for i in 0..n {
        t.append(format!("{tag} {i}").as_bytes());
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_log_that_forks_or_shrinks_is_caught_and_the_head_seen_is_kept() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    const ROOT_SEED: [u8; 32] = [7; 32];
    let root = Identity::from_seed(&ROOT_SEED);
    let answers = Arc::new(Mutex::new(Answers {
        root: *root.amid().as_bytes(),
        log: Some((tree("genuine", 3), Identity::from_seed(&ROOT_SEED))),
        ..Answers::default()
    }));
    let registry = registry_node(dir.path(), answers.clone()).await;
    let addrs = registry.listen_addrs().await;
    let bob = node(dir.path(), "bob", config_with(&addrs), &registry).await;
    let set_log =
        |t: MemoryTree| answers.lock().unwrap().log = Some((t, Identity::from_seed(&ROOT_SEED)));

    assert_eq!(
        bob.check_registry_log().await.unwrap(),
        LogCheck::First { size: 3 }
    );
    set_log(tree("genuine", 7));
    assert_eq!(
        bob.check_registry_log().await.unwrap(),
        LogCheck::Consistent { from: 3, to: 7 }
    );

    // Rewritten history, longer: no proof links it to the head seen.
    set_log(tree("rewritten", 9));
    let e = bob.check_registry_log().await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryClientError::LogForked {
                seen: 7,
                now: 9,
                ..
            }
        ),
        "{e}"
    );
    // Shrunk back to an older state.
    set_log(tree("genuine", 5));
    let e = bob.check_registry_log().await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryClientError::LogForked {
                seen: 7,
                now: 5,
                ..
            }
        ),
        "{e}"
    );
    // Same size, another root.
    set_log(tree("rewritten", 7));
    let e = bob.check_registry_log().await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryClientError::LogForked {
                seen: 7,
                now: 7,
                ..
            }
        ),
        "{e}"
    );
    // A head not signed by the pinned root is not even compared.
    answers.lock().unwrap().log = Some((tree("genuine", 8), Identity::generate()));
    let e = bob.check_registry_log().await.unwrap_err();
    assert!(matches!(e, RegistryClientError::Answer(_)), "{e}");

    // The head seen stays the one checked against: the genuine log, grown,
    // is consistent with it again.
    set_log(tree("genuine", 12));
    assert_eq!(
        bob.check_registry_log().await.unwrap(),
        LogCheck::Consistent { from: 7, to: 12 }
    );
}
