//! KNOCK tiers end to end: a receiver configured with the registry root key
//! checks initiators' certificate chains, log proofs and revocations on real
//! nodes (loopback sockets, sled on disk), with no registry running.

use std::time::Duration;

use agentmesh_node::{
    crypto::keystore::KdfParams,
    identity::Identity,
    knock::policy::Policy,
    registry::Revocation,
    trust::cert::{CertChain, CertKind, Certificate, SignedCertificate, CERT_VERSION},
    trust::credentials::{Credentials, LogInclusion},
    trust::transparency::{MemoryTree, SignedTreeHead},
    Amid, Config, Node, NodeEvent, Passphrase, RejectReason, SendError, Tier,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const HOUR: u64 = 3_600_000;

fn now() -> u64 {
    agentmesh_dht::now_ms()
}

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

async fn node(dir: &std::path::Path, name: &str, config: Config, boot: Option<&Node>) -> Node {
    let mut b = Node::builder(config)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name));
    if let Some(boot) = boot {
        b = b.bootstraps(boot.listen_addrs().await);
    }
    b.spawn().await.expect("node starts")
}

#[allow(clippy::too_many_arguments)]
fn cert(
    issuer: &Identity,
    subject: [u8; 32],
    kind: CertKind,
    serial: u8,
    not_before_ms: u64,
    not_after_ms: u64,
) -> SignedCertificate {
    Certificate {
        version: CERT_VERSION,
        kind,
        subject_key: subject,
        subject_name: "example.org".into(),
        tier: Tier::Organization,
        issuer_key: *issuer.amid().as_bytes(),
        serial: [serial; 16],
        not_before_ms,
        not_after_ms,
    }
    .sign_as(issuer)
    .unwrap()
}

/// root → org → agent, valid from an hour ago until `not_after_ms`.
fn chain(
    root: &Identity,
    org: &Identity,
    agent: &Amid,
    serial: u8,
    not_after_ms: u64,
) -> CertChain {
    let from = now() - HOUR;
    CertChain(vec![
        cert(
            org,
            *agent.as_bytes(),
            CertKind::Agent,
            serial,
            from,
            not_after_ms,
        ),
        cert(
            root,
            *org.amid().as_bytes(),
            CertKind::Organization,
            1,
            from,
            now() + HOUR,
        ),
    ])
}

async fn knock_result(from: &Node, to: &Node) -> Result<(), SendError> {
    tokio::time::timeout(WAIT, from.send(&to.amid(), json!({"text": "hello"})))
        .await
        .expect("send finishes")
        .map(|_| ())
}

/// Waits for the receiver's decision on a KNOCK from `from`.
async fn decided(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    from: Amid,
) -> Option<RejectReason> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(NodeEvent::KnockDecided {
                from: f, reason, ..
            }) = events.recv().await
            {
                if f == from {
                    return reason;
                }
            }
        }
    })
    .await
    .expect("decision event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_tier_is_checked_against_the_registry_root() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let org = Identity::generate();
    let fake_root = Identity::generate();

    let boot = node(dir.path(), "boot", config(), None).await;
    tokio::time::timeout(WAIT, async {
        while boot.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let mut bob_config = config();
    bob_config.registry_root = Some(*root.amid().as_bytes());
    bob_config.require_log_inclusion = true;
    bob_config.policy = Policy::from_toml(r#"min_tier = "organization""#).unwrap();
    let bob = node(dir.path(), "bob", bob_config, Some(&boot)).await;
    let alice = node(dir.path(), "alice", config(), Some(&boot)).await;
    let erin = node(dir.path(), "erin", config(), Some(&boot)).await;
    assert!(bob.wait_published(WAIT).await);
    let mut events = bob.events();

    // The registry's transparency log holds alice's and erin's agent
    // certificates.
    let alice_chain = chain(&root, &org, &alice.amid(), 2, now() + HOUR);
    let erin_chain = chain(&root, &org, &erin.amid(), 3, now() + HOUR);
    let mut log = MemoryTree::default();
    let ia = log.append(&Credentials::log_leaf(&alice_chain).unwrap());
    let ie = log.append(&Credentials::log_leaf(&erin_chain).unwrap());
    let head = SignedTreeHead::sign(&root, log.len(), log.root(), now());
    let logged = |chain: CertChain, index| Credentials {
        chain: Some(chain),
        inclusion: Some(LogInclusion {
            proof: log.inclusion_proof(index, log.len()).unwrap(),
            head: head.clone(),
        }),
        reputation: None,
    };

    // No certificate: below the tier minimum.
    let err = knock_result(&alice, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::TierTooLow));
    assert_eq!(
        decided(&mut events, alice.amid()).await,
        Some(RejectReason::TierTooLow)
    );

    // A chain from another root (forged), with a log proof.
    let mut forged_log = MemoryTree::default();
    let forged = chain(&fake_root, &org, &alice.amid(), 2, now() + HOUR);
    forged_log.append(&Credentials::log_leaf(&forged).unwrap());
    alice.set_credentials(Credentials {
        chain: Some(forged),
        inclusion: Some(LogInclusion {
            proof: forged_log.inclusion_proof(0, 1).unwrap(),
            head: SignedTreeHead::sign(&fake_root, 1, forged_log.root(), now()),
        }),
        reputation: None,
    });
    let err = knock_result(&alice, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::InvalidCredentials));
    assert_eq!(
        decided(&mut events, alice.amid()).await,
        Some(RejectReason::InvalidCredentials)
    );

    // An expired chain (logged, signed by the right root).
    let expired = chain(&root, &org, &alice.amid(), 4, now() - 1000);
    let mut log2 = log.clone();
    let ix = log2.append(&Credentials::log_leaf(&expired).unwrap());
    alice.set_credentials(Credentials {
        chain: Some(expired),
        inclusion: Some(LogInclusion {
            proof: log2.inclusion_proof(ix, log2.len()).unwrap(),
            head: SignedTreeHead::sign(&root, log2.len(), log2.root(), now()),
        }),
        reputation: None,
    });
    let err = knock_result(&alice, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::InvalidCredentials));

    // A valid chain whose certificate is not in the log: refused.
    alice.set_credentials(Credentials {
        chain: Some(alice_chain.clone()),
        inclusion: None,
        reputation: None,
    });
    let err = knock_result(&alice, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::InvalidCredentials));

    // The valid, logged tier-1.5 chain: accepted.
    alice.set_credentials(logged(alice_chain, ia));
    knock_result(&alice, &bob).await.expect("tier 1.5 accepted");

    // A valid, logged tier-1 chain (root → agent) is below the minimum.
    let tier1 = CertChain(vec![{
        let mut c = cert(
            &root,
            *erin.amid().as_bytes(),
            CertKind::Agent,
            5,
            now() - HOUR,
            now() + HOUR,
        );
        let mut body: Certificate = c.certificate().unwrap();
        body.tier = Tier::Verified;
        c = body.sign_as(&root).unwrap();
        c
    }]);
    let mut log3 = log.clone();
    let i1 = log3.append(&Credentials::log_leaf(&tier1).unwrap());
    erin.set_credentials(Credentials {
        chain: Some(tier1),
        inclusion: Some(LogInclusion {
            proof: log3.inclusion_proof(i1, log3.len()).unwrap(),
            head: SignedTreeHead::sign(&root, log3.len(), log3.root(), now()),
        }),
        reputation: None,
    });
    let err = knock_result(&erin, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::TierTooLow));
    assert_eq!(
        decided(&mut events, erin.amid()).await,
        Some(RejectReason::TierTooLow)
    );

    // Erin's chain is valid and logged, but the registry revoked her key;
    // bob learned it earlier and refuses her with no registry running.
    erin.set_credentials(logged(erin_chain, ie));
    let revocation = Revocation {
        subject_key: *erin.amid().as_bytes(),
        serial: None,
        reason: "key compromised".into(),
        revoked_ms: now(),
        issuer_key: *root.amid().as_bytes(),
    };
    // A revocation not signed by the root is refused and adds nothing.
    let bad = Revocation {
        issuer_key: *fake_root.amid().as_bytes(),
        ..revocation.clone()
    }
    .sign(&fake_root)
    .unwrap();
    assert!(bob.add_revocations(&[bad]).is_err());
    assert!(!bob.is_revoked(&erin.amid()));
    assert_eq!(
        bob.add_revocations(&[revocation.sign(&root).unwrap()])
            .unwrap(),
        1
    );
    assert!(bob.is_revoked(&erin.amid()));
    let err = knock_result(&erin, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::Revoked));
    assert_eq!(
        decided(&mut events, erin.amid()).await,
        Some(RejectReason::Revoked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_published_in_the_dht_is_fetched_and_enforced() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();

    // The registry's node publishes the revocation record, then stops.
    let registry = node(dir.path(), "registry", config(), None).await;
    tokio::time::timeout(WAIT, async {
        while registry.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let mut bob_config = config();
    bob_config.registry_root = Some(*root.amid().as_bytes());
    let bob = node(dir.path(), "bob", bob_config, Some(&registry)).await;
    let mallory = node(dir.path(), "mallory", config(), Some(&registry)).await;
    assert!(bob.wait_published(WAIT).await);
    assert!(mallory.wait_published(WAIT).await);

    let revocation = Revocation {
        subject_key: *mallory.amid().as_bytes(),
        serial: None,
        reason: "abuse".into(),
        revoked_ms: now(),
        issuer_key: *root.amid().as_bytes(),
    }
    .sign(&root)
    .unwrap();
    let ns = agentmesh_node::registry::revocation_namespace(mallory.amid().as_bytes());
    let registry_peer = registry.amid().peer_id().unwrap();
    assert!(registry
        .publish_record(
            &ns,
            revocation.to_bytes().unwrap(),
            Duration::from_secs(3600)
        )
        .await
        .unwrap());

    // Before bob knows: mallory is anonymous and accepted.
    knock_result(&mallory, &bob)
        .await
        .expect("accepted before the revocation is known");
    assert!(bob
        .status()
        .await
        .sessions
        .iter()
        .any(|s| s.peer == mallory.amid()));

    // Bob fetches the record from the DHT, which ends his session with
    // mallory; her next KNOCK is refused while the registry is gone.
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if bob
                .fetch_revocation(&registry_peer, &mallory.amid())
                .await
                .unwrap()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "revocation found in the DHT");
    assert!(bob.is_revoked(&mallory.amid()));
    // Fetching it again adds nothing new.
    assert!(!bob
        .fetch_revocation(&registry_peer, &mallory.amid())
        .await
        .unwrap());
    registry.shutdown().await;

    // Mallory closes the session and knocks again: refused, with no
    // registry running.
    assert!(bob
        .status()
        .await
        .sessions
        .iter()
        .all(|s| s.peer != mallory.amid()));
    let mut events = bob.events();
    mallory.close_session(&bob.amid()).await;
    let err = knock_result(&mallory, &bob).await.unwrap_err();
    assert_eq!(err, SendError::Rejected(RejectReason::Revoked));
    assert_eq!(
        decided(&mut events, mallory.amid()).await,
        Some(RejectReason::Revoked)
    );
}
