//! Transparency end to end: the `agentmesh-bootstrap` binary issues a tier 1
//! certificate after a real OAuth flow against a loopback OpenID Connect
//! provider and hands it out with its log inclusion proof; a node that
//! requires log inclusion accepts KNOCKs that show it and refuses a
//! root-signed certificate that is not in the log.

use agentmesh_bootstrap::loopback::OidcProvider;
use agentmesh_node::{
    crypto::keystore::{KdfParams, Keystore},
    knock::policy::Policy,
    registry::{Operation, Registration},
    trust::cert::{CertChain, CertKind, Certificate, CERT_VERSION},
    trust::credentials::{Credentials, LogInclusion},
    trust::transparency::{leaf_hash, ConsistencyProof, InclusionProof, SignedTreeHead},
    Amid, Node, NodeEvent, Passphrase, RejectReason, SendError, Tier,
};
use serde_json::{json, Value};

mod support;

use support::{fast_config as config, node, now_ms, oauth_config, start, Http, WAIT};

const PASS: &str = "transparency-test";

async fn knock(from: &Node, to: &Node) -> Result<(), SendError> {
    tokio::time::timeout(WAIT, from.send(&to.amid(), json!({"text": "hello"})))
        .await
        .expect("send finishes")
        .map(|_| ())
}

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

fn decode_credentials(v: &Value) -> Credentials {
    Credentials::from_bytes(&hex::decode(v["credentials"].as_str().unwrap()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_certificate_from_the_registry_is_accepted_and_an_unlogged_one_refused() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let provider = OidcProvider::spawn("user-7").await.unwrap();
    let cfg = oauth_config(dir.path(), &provider, "");
    let data = dir.path().join("bootstrap");
    let server = start(&data, PASS, &["--config", &cfg, "--http", "127.0.0.1:0"]).await;
    let http = Http::new(&server.url);
    let root: Amid = server.root.parse().unwrap();

    let mut bob_config = config();
    bob_config.registry_root = Some(*root.as_bytes());
    bob_config.require_log_inclusion = true;
    bob_config.policy = Policy::from_toml(r#"min_tier = "verified""#).unwrap();
    let bob = node(dir.path(), "bob", bob_config, &server.addr).await;
    let alice = node(dir.path(), "alice", config(), &server.addr).await;
    let mallory = node(dir.path(), "mallory", config(), &server.addr).await;
    assert!(bob.wait_published(WAIT).await);
    let mut events = bob.events();

    // Alice registers and proves an account: the browser follows the
    // authorize URL to the provider, which redirects to the registry.
    for who in [&alice, &mallory] {
        let reg = Operation::Register(Registration::new("agent", vec!["chat".into()]));
        let (s, v) = http
            .signed("/v1/registry/register", who.identity(), reg)
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = http
        .signed(
            "/v1/auth/oauth/authorize",
            alice.identity(),
            Operation::OauthAuthorize {},
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, location, _) = http.get_url(v["authorize_url"].as_str().unwrap()).await;
    assert!((300..400).contains(&s), "{s}");
    let (s, _, issued) = http.get_url(&location.expect("redirect")).await;
    assert_eq!(s, 200, "{issued}");
    assert_eq!(issued["tier"], "verified");
    let creds = decode_credentials(&issued);
    let inclusion = creds.inclusion.clone().expect("issued with its proof");
    assert_eq!(
        serde_json::from_value::<LogInclusion>(issued["inclusion"].clone()).unwrap(),
        inclusion
    );
    assert!(creds.reputation.is_some());

    // Without credentials alice is below bob's minimum.
    assert_eq!(
        knock(&alice, &bob).await.unwrap_err(),
        SendError::Rejected(RejectReason::TierTooLow)
    );
    assert_eq!(
        decided(&mut events, alice.amid()).await,
        Some(RejectReason::TierTooLow)
    );
    // With the registry's credentials: accepted.
    alice.set_credentials(creds.clone());
    knock(&alice, &bob).await.expect("logged tier 1 accepted");
    assert_eq!(decided(&mut events, alice.amid()).await, None);

    // The same credentials, fetched later, prove against a newer head that
    // is consistent with the one issued.
    let (s, v) = http
        .get(&format!("/v1/registry/credentials?amid={}", alice.amid()))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tier"], "verified");
    assert_eq!(decode_credentials(&v).chain, creds.chain);
    let (s, head) = http.get("/v1/log/head").await;
    assert_eq!(s, 200);
    let head: SignedTreeHead = serde_json::from_value(head).unwrap();
    head.verify(&root.verifying_key().unwrap()).unwrap();
    assert!(head.size >= inclusion.head.size);
    let (s, v) = http
        .get(&format!(
            "/v1/log/consistency?first={}&second={}",
            inclusion.head.size, head.size
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let proof: ConsistencyProof = serde_json::from_value(v["proof"].clone()).unwrap();
    proof.verify(&inclusion.head, &head).unwrap();
    let leaf = Credentials::log_leaf(creds.chain.as_ref().unwrap()).unwrap();
    let (s, v) = http
        .get(&format!(
            "/v1/log/proof?hash={}",
            hex::encode(leaf_hash(&leaf))
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["leaf"], hex::encode(&leaf));
    let p: InclusionProof = serde_json::from_value(v["proof"].clone()).unwrap();
    assert_eq!(p.leaf_index, inclusion.proof.leaf_index);
    let (s, v) = http.get("/v1/log/proof?index=100000").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("out_of_range"))
    );

    // Mallory holds a certificate signed with the registry's root key that
    // was never logged (a key swapped unseen). Shown with alice's proof,
    // or with none, bob refuses it.
    let (root_store, created) = Keystore::load_or_create(
        &data.join("root"),
        &Passphrase::new(PASS),
        KdfParams::default(),
    )
    .unwrap();
    assert!(!created);
    let now = now_ms();
    let unlogged = CertChain(vec![Certificate {
        version: CERT_VERSION,
        kind: CertKind::Agent,
        subject_key: *mallory.amid().as_bytes(),
        subject_name: "loopback:user-7".into(),
        tier: Tier::Verified,
        issuer_key: *root.as_bytes(),
        serial: [9; 16],
        not_before_ms: now - 60_000,
        not_after_ms: now + 3_600_000,
    }
    .sign_as(root_store.identity())
    .unwrap()]);
    for inclusion in [Some(inclusion.clone()), None] {
        mallory.set_credentials(Credentials {
            chain: Some(unlogged.clone()),
            inclusion,
            reputation: None,
        });
        assert_eq!(
            knock(&mallory, &bob).await.unwrap_err(),
            SendError::Rejected(RejectReason::InvalidCredentials)
        );
        assert_eq!(
            decided(&mut events, mallory.amid()).await,
            Some(RejectReason::InvalidCredentials)
        );
    }
}
