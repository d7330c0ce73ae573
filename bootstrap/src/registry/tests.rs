//! Registry operations on a real sled database in a temporary directory.

use std::{collections::HashMap, sync::Mutex};

use serde_json::{json, Value};

use super::*;
use agentmesh_node::{
    card::Presence,
    crypto::keystore::KdfParams,
    registry::{Feedback, ReceiptBody, Registration, SessionReceipt},
    trust::cert::{CertChain, CertKind, Certificate, CERT_VERSION},
    trust::credentials::Credentials,
    trust::reputation::Score,
    trust::transparency::{leaf_hash, LeafKind},
    Tier,
};

const NOW: u64 = 1_800_000_000_000;

fn fast_settings() -> RegistrySettings {
    RegistrySettings {
        kdf: KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        },
        ..RegistrySettings::default()
    }
}

fn open(dir: &Path) -> Registry {
    Registry::open(dir, &Passphrase::new("test"), fast_settings()).unwrap()
}

fn id(b: u8) -> Identity {
    Identity::from_seed(&[b; 32])
}

/// Applies `op` signed by `who`; the answer as the API's JSON document.
async fn apply(r: &Registry, who: &Identity, op: Operation) -> Result<Value, RegistryError> {
    let req = SignedRequest::sign(who, op, NOW).unwrap();
    let applied = r.apply(&req, None, None, NOW).await?;
    Ok(crate::http::to_json(&applied).unwrap())
}

async fn register(r: &Registry, who: &Identity, caps: &[&str]) {
    let reg = Registration::new("agent", caps.iter().map(|c| c.to_string()).collect());
    apply(r, who, Operation::Register(reg)).await.unwrap();
}

#[derive(Debug, Default)]
struct FakeDns(Mutex<HashMap<String, String>>);

impl DomainVerifier for FakeDns {
    fn verify<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, crate::dns::DnsChallengeError>> + Send + 'a>>
    {
        let found = self.0.lock().unwrap().get(name) == Some(&value.to_owned());
        Box::pin(async move { Ok(found) })
    }
}

#[tokio::test]
async fn tier1_issuance_gives_a_chain_nodes_accept() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let alice = id(1);
    register(&r, &alice, &["chat"]).await;
    let chain = r
        .issue_verified(&alice.amid(), "github:12345", NOW)
        .await
        .unwrap();
    assert_eq!(
        chain.verify(&alice.amid(), &r.root_key(), NOW, |_| false),
        Ok(Tier::Verified)
    );
    let view = r.lookup(&alice.amid(), NOW).unwrap();
    assert_eq!(view.tier, Tier::Verified);
    let stored = CertChain::from_bytes(&hex::decode(view.certificate.unwrap()).unwrap()).unwrap();
    assert_eq!(stored, chain);
    // Unknown agents get nothing.
    assert!(matches!(
        r.issue_verified(&id(9).amid(), "github:1", NOW).await,
        Err(RegistryError::UnknownAgent(_))
    ));
}

#[tokio::test]
async fn organization_flow_gives_tier_one_and_a_half() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let org_key = id(7);
    let bot = id(2);
    register(&r, &bot, &["travel/booking"]).await;

    let op = Operation::OrgRegister {
        domain: "acme.example".into(),
        name: "Acme".into(),
    };
    let challenge = apply(&r, &org_key, op).await.unwrap();
    assert_eq!(challenge["txt_name"], "_agentmesh.acme.example");
    let value = challenge["txt_value"].as_str().unwrap().to_owned();

    // Without a verifier: typed refusal, nothing changes.
    let verify = || Operation::OrgVerify {
        domain: "acme.example".into(),
    };
    assert!(matches!(
        apply(&r, &org_key, verify()).await,
        Err(RegistryError::NotConfigured(_))
    ));
    let dns = Arc::new(FakeDns::default());
    r.set_domain_verifier(dns.clone());
    // The TXT record is not there yet.
    assert!(matches!(
        apply(&r, &org_key, verify()).await,
        Err(RegistryError::VerificationFailed(_))
    ));
    dns.0
        .lock()
        .unwrap()
        .insert("_agentmesh.acme.example".into(), value);
    // Someone else cannot verify it.
    assert!(matches!(
        apply(&r, &id(8), verify()).await,
        Err(RegistryError::Forbidden(_))
    ));
    let out = apply(&r, &org_key, verify()).await.unwrap();
    assert_eq!(out["verified"], true);

    // The organization signs its agent's certificate and files it.
    let cert = Certificate {
        version: CERT_VERSION,
        kind: CertKind::Agent,
        subject_key: *bot.amid().as_bytes(),
        subject_name: "Acme booking bot".into(),
        tier: Tier::Organization,
        issuer_key: *org_key.amid().as_bytes(),
        serial: [1; 16],
        not_before_ms: NOW - 1000,
        not_after_ms: NOW + 86_400_000,
    }
    .sign_as(&org_key)
    .unwrap();
    let file = Operation::OrgAgent {
        agent: bot.amid(),
        certificate: hex::encode(cert.to_bytes().unwrap()),
    };
    let out = apply(&r, &org_key, file).await.unwrap();
    assert_eq!(out["tier"], "organization");
    let view = r.lookup(&bot.amid(), NOW).unwrap();
    assert_eq!(view.tier, Tier::Organization);
    let chain = CertChain::from_bytes(&hex::decode(view.certificate.unwrap()).unwrap()).unwrap();
    assert_eq!(
        chain.verify(&bot.amid(), &r.root_key(), NOW, |_| false),
        Ok(Tier::Organization)
    );

    // A certificate the organization did not sign is refused.
    let forged = Certificate {
        version: CERT_VERSION,
        kind: CertKind::Agent,
        subject_key: *bot.amid().as_bytes(),
        subject_name: "x".into(),
        tier: Tier::Organization,
        issuer_key: *id(8).amid().as_bytes(),
        serial: [2; 16],
        not_before_ms: NOW - 1000,
        not_after_ms: NOW + 1000,
    }
    .sign_as(&id(8))
    .unwrap();
    let file = Operation::OrgAgent {
        agent: bot.amid(),
        certificate: hex::encode(forged.to_bytes().unwrap()),
    };
    assert!(matches!(
        apply(&r, &org_key, file).await,
        Err(RegistryError::Certificate(_))
    ));

    // The organization may revoke its agent.
    let revoke = Operation::Revoke {
        subject: bot.amid(),
        reason: "decommissioned".into(),
    };
    apply(&r, &org_key, revoke).await.unwrap();
    assert!(r.lookup(&bot.amid(), NOW).unwrap().revoked);
    let info = r.org_info("acme.example").unwrap();
    assert!(info.agents[0].revoked);
}

#[tokio::test]
async fn feedback_needs_a_receipt_and_the_score_follows_the_formula() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b, c) = (id(1), id(2), id(3));
    for who in [&a, &b, &c] {
        register(&r, who, &["chat"]).await;
    }
    let sid = [5u8; 16];
    let fb = |target: &Identity, score| {
        Operation::Feedback(Feedback::new(hex::encode(sid), target.amid(), score))
    };
    // No receipt yet.
    assert!(matches!(
        apply(&r, &a, fb(&b, 1.0)).await,
        Err(RegistryError::Forbidden(_))
    ));
    let body = ReceiptBody::new(sid, a.amid(), b.amid(), true, NOW - 1000);
    let receipt = SessionReceipt::sign(&body, &a, &b).unwrap();
    // A third party cannot file it.
    assert!(matches!(
        apply(
            &r,
            &c,
            Operation::Session {
                receipt: receipt.clone()
            }
        )
        .await,
        Err(RegistryError::Forbidden(_))
    ));
    apply(
        &r,
        &a,
        Operation::Session {
            receipt: receipt.clone(),
        },
    )
    .await
    .unwrap();
    // The other party filing the same receipt is answered alike and counts
    // once; a different receipt for the same session is a conflict.
    let again = apply(&r, &b, Operation::Session { receipt }).await.unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    let ev = r.evidence(&a.amid(), NOW).unwrap();
    assert_eq!(ev.receipts.len(), 1, "{ev:?}");
    let other = ReceiptBody::new(sid, a.amid(), b.amid(), false, NOW - 500);
    let other = SessionReceipt::sign(&other, &a, &b).unwrap();
    assert!(matches!(
        apply(&r, &b, Operation::Session { receipt: other }).await,
        Err(RegistryError::Conflict(_))
    ));
    // c was not in the session.
    assert!(matches!(
        apply(&r, &c, fb(&b, 1.0)).await,
        Err(RegistryError::Forbidden(_))
    ));
    apply(&r, &a, fb(&b, 1.0)).await.unwrap();
    assert!(matches!(
        apply(&r, &a, fb(&b, 0.0)).await,
        Err(RegistryError::Conflict(_))
    ));
    // b: one completed session; one rating of 1.0 by a tier-2 account that
    // is new (registered at NOW): weight 0.5 * 0.25 = 0.125.
    let s = r.score(&b.amid(), NOW).unwrap();
    assert_eq!(s.weights, vec![0.125]);
    let feedback = (0.125 + 0.5) / 1.125;
    assert!((s.feedback - feedback).abs() < 1e-9);
    assert!((s.score - (0.3 + 0.4 * feedback)).abs() < 1e-9);
}

#[tokio::test]
async fn refused_requests_store_nothing_and_replays_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let a = id(1);
    let req = SignedRequest::sign(
        &a,
        Operation::Register(Registration::new("a", vec!["chat".into()])),
        NOW,
    )
    .unwrap();
    // Wrong endpoint for the operation.
    assert!(matches!(
        r.apply(&req, Some("status"), None, NOW).await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(r.store().agent(&a.amid()).unwrap().is_none());
    r.apply(&req, Some("register"), None, NOW).await.unwrap();
    assert!(matches!(
        r.apply(&req, Some("register"), None, NOW).await,
        Err(RegistryError::Replayed)
    ));
    // The same signature in upper-case hex verifies too: it is the same
    // request, and refused as a replay.
    let mut recased = req.clone();
    recased.signature = req.signature.to_ascii_uppercase();
    assert_ne!(recased.signature, req.signature);
    assert!(matches!(
        r.apply(&recased, Some("register"), None, NOW).await,
        Err(RegistryError::Replayed)
    ));
    // Status of an unknown agent.
    let st = Operation::Status {
        presence: Presence::Away,
    };
    assert!(matches!(
        apply(&r, &id(2), st).await,
        Err(RegistryError::UnknownAgent(_))
    ));
}

#[tokio::test]
async fn search_filters_by_capability_tier_and_reputation() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b, c) = (id(1), id(2), id(3));
    register(&r, &a, &["weather/forecast"]).await;
    register(&r, &b, &["weather/alerts", "chat"]).await;
    register(&r, &c, &["chat"]).await;
    r.issue_verified(&b.amid(), "github:2", NOW).await.unwrap();
    let found = |cap: &str, tier, rep| {
        let q = SearchQuery {
            capability: cap.into(),
            tier_min: tier,
            reputation_min: rep,
            limit: 50,
        };
        r.search(&q, NOW)
            .unwrap()
            .into_iter()
            .map(|v| v.amid)
            .collect::<Vec<_>>()
    };
    // Tier 1 starts at 0.6, tier 2 at 0.5: b ranks first.
    assert_eq!(
        found("weather", Tier::Anonymous, 0.0),
        vec![b.amid(), a.amid()]
    );
    assert_eq!(
        found("weather/forecast", Tier::Anonymous, 0.0),
        vec![a.amid()]
    );
    assert_eq!(found("weather", Tier::Verified, 0.0), vec![b.amid()]);
    assert_eq!(found("weather", Tier::Anonymous, 0.55), vec![b.amid()]);
    assert!(found("weath", Tier::Anonymous, 0.0).is_empty());
    // Capabilities replaced: the index follows.
    let caps = Operation::Capabilities {
        capabilities: vec!["chat".into()],
    };
    apply(&r, &a, caps).await.unwrap();
    assert_eq!(found("weather", Tier::Anonymous, 0.0), vec![b.amid()]);
    // Ranked before the limit applies; a revocation drops the agent even
    // though its score inputs were cached by the searches above.
    assert_eq!(found("chat", Tier::Anonymous, 0.0).len(), 3);
    let q = SearchQuery {
        limit: 1,
        ..SearchQuery::new("chat")
    };
    let best: Vec<_> = r
        .search(&q, NOW)
        .unwrap()
        .into_iter()
        .map(|v| v.amid)
        .collect();
    assert_eq!(best, vec![b.amid()]);
    let revoke = Operation::Revoke {
        subject: b.amid(),
        reason: "key lost".into(),
    };
    apply(&r, &b, revoke).await.unwrap();
    let left = found("chat", Tier::Anonymous, 0.0);
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&b.amid()));
}

#[tokio::test]
async fn oauth_callback_issues_a_tier_one_certificate() {
    use axum::{
        http::HeaderMap,
        routing::{get, post},
        Json, Router,
    };
    // An OpenID-like provider on loopback: a token for any code, and the
    // user behind the token.
    async fn token() -> Json<Value> {
        Json(json!({"access_token": "tok-1", "token_type": "bearer"}))
    }
    async fn userinfo(headers: HeaderMap) -> Result<Json<Value>, axum::http::StatusCode> {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer tok-1") => Ok(Json(json!({"sub": "user-42", "email": "a@example.org"}))),
            _ => Err(axum::http::StatusCode::UNAUTHORIZED),
        }
    }
    let app = Router::new()
        .route("/token", post(token))
        .route("/userinfo", get(userinfo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let alice = id(1);
    let op = || Operation::OauthAuthorize {};
    assert!(matches!(
        apply(&r, &alice, op()).await,
        Err(RegistryError::NotConfigured(_))
    ));
    let base = format!("http://{addr}");
    r.set_oauth(
        crate::oauth::OAuth::new(crate::oauth::ProviderConfig::oidc(
            "idp",
            format!("{base}/authorize"),
            format!("{base}/token"),
            format!("{base}/userinfo"),
            "client",
            "secret",
            "http://127.0.0.1:1/v1/auth/oauth/callback",
        ))
        .unwrap(),
    );
    // Only registered agents may start.
    assert!(matches!(
        apply(&r, &alice, op()).await,
        Err(RegistryError::UnknownAgent(_))
    ));
    register(&r, &alice, &["chat"]).await;
    let out = apply(&r, &alice, op()).await.unwrap();
    let url = url::Url::parse(out["authorize_url"].as_str().unwrap()).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    // A forged state is refused before anything is issued.
    let forged = crate::oauth::CallbackParams {
        code: Some("c".into()),
        state: Some("forged".into()),
        error: None,
    };
    let e = r.oauth_callback(&forged, NOW).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "oauth_state_mismatch"));
    assert_eq!(r.lookup(&alice.amid(), NOW).unwrap().tier, Tier::Anonymous);

    let cb = crate::oauth::CallbackParams {
        code: Some("c".into()),
        state,
        error: None,
    };
    let out = r.oauth_callback(&cb, NOW).await.unwrap();
    assert_eq!(out.subject, "idp:user-42");
    let view = r.lookup(&alice.amid(), NOW).unwrap();
    assert_eq!(view.tier, Tier::Verified);
    let chain = CertChain::from_bytes(&hex::decode(view.certificate.unwrap()).unwrap()).unwrap();
    assert_eq!(
        chain.verify(&alice.amid(), &r.root_key(), NOW, |_| false),
        Ok(Tier::Verified)
    );
    // The state is single-use.
    assert!(r.oauth_callback(&cb, NOW).await.is_err());
}

#[tokio::test]
async fn agents_whose_key_holds_zero_bytes_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    // Keys with a zero byte somewhere, as random keys often have.
    let mut found = 0;
    for seed in 0u8..=255 {
        let who = id(seed);
        if !who.amid().as_bytes().contains(&0) {
            continue;
        }
        register(&r, &who, &["weather/forecast"]).await;
        found += 1;
        if found == 3 {
            break;
        }
    }
    assert_eq!(found, 3);
    assert_eq!(
        r.search(&SearchQuery::new("weather"), NOW).unwrap().len(),
        3
    );
    assert_eq!(
        r.search(&SearchQuery::new("weather/forecast"), NOW)
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn bindings_certificates_and_revocations_are_logged_and_proven() {
    use agentmesh_node::trust::credentials::{check, CredentialError};
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let root = r.root_key();
    let (alice, bob) = (id(1), id(2));
    register(&r, &alice, &["chat"]).await;
    register(&r, &bob, &["chat"]).await;
    // Two key bindings.
    assert_eq!(r.log().size().unwrap(), 2);
    // Registering again with the same key binds nothing new.
    register(&r, &alice, &["chat", "weather"]).await;
    assert_eq!(r.log().size().unwrap(), 2);
    let leaf = r.log().leaf(0).unwrap().unwrap();
    assert_eq!(leaf[0], LeafKind::KeyBinding as u8);

    // The certificate goes into the log, and the credentials prove it.
    let chain = r
        .issue_verified(&alice.amid(), "github:1", NOW)
        .await
        .unwrap();
    assert_eq!(r.log().size().unwrap(), 3);
    let creds = r.credentials_for(&alice.amid(), None, NOW).unwrap();
    assert_eq!(creds.chain.as_ref(), Some(&chain));
    let inc = creds.inclusion.clone().expect("logged");
    assert_eq!(inc.proof.leaf_index, 2);
    assert_eq!(inc.head.size, 3);
    let checked = check(&creds, &alice.amid(), &root, true, NOW, |_| false).unwrap();
    assert_eq!(checked.tier, Tier::Verified);
    assert_eq!(
        checked.reputation.map(|r| r.as_f64()),
        Some((r.score(&alice.amid(), NOW).unwrap().score * 1000.0).round() / 1000.0)
    );
    // The attestation expires.
    let late = NOW + r.settings().attestation_validity.as_millis() as u64;
    assert_eq!(
        check(&creds, &alice.amid(), &root, true, late, |_| false),
        Err(CredentialError::AttestationExpired)
    );
    // Round trip through the bytes a node stores.
    let bytes = creds.to_bytes().unwrap();
    assert_eq!(Credentials::from_bytes(&bytes).unwrap(), creds);
    // Bob has no certificate: credentials carry only the attestation.
    let b = r.credentials_for(&bob.amid(), None, NOW).unwrap();
    assert!(b.chain.is_none() && b.inclusion.is_none() && b.reputation.is_some());

    // A revocation is logged too; the JSON proof endpoint finds it by hash.
    apply(
        &r,
        &bob,
        Operation::Revoke {
            subject: bob.amid(),
            reason: "retired".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.log().size().unwrap(), 4);
    let rev = r.log().leaf(3).unwrap().unwrap();
    assert_eq!(rev[0], LeafKind::Revocation as u8);
    let v = r
        .log_proof(None, Some(&leaf_hash(&rev)), None, NOW)
        .unwrap();
    let (proof, head) = (v.proof, v.head);
    head.verify(&root).unwrap();
    proof.verify(&leaf_hash(&rev), &head).unwrap();
    assert_eq!(proof.leaf_index, 3);

    // The old head is consistent with the new one.
    let v = r.log_consistency(3, None, NOW).unwrap();
    let (c, old) = (v.proof, v.first);
    assert_eq!(old, inc.head.clone());
    c.verify(&inc.head, &head).unwrap();

    // Out of range requests are typed, and keep their API codes.
    let api = RegistryError::from;
    assert!(matches!(
        r.log_proof(Some(4), None, None, NOW).map_err(api),
        Err(RegistryError::OutOfRange(_))
    ));
    assert!(matches!(
        r.log_consistency(5, None, NOW),
        Err(LogQueryError::FirstBeyond { first: 5, size: 4 })
    ));
    assert!(matches!(
        r.log_consistency(5, None, NOW).map_err(api),
        Err(RegistryError::OutOfRange(_))
    ));
    assert!(matches!(
        r.log_proof(None, Some(&[7; 32]), None, NOW),
        Err(LogQueryError::UnknownLeaf)
    ));
    assert!(matches!(
        r.log_proof(None, Some(&[7; 32]), None, NOW).map_err(api),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        r.log_proof(Some(0), Some(&[7; 32]), None, NOW).map_err(api),
        Err(RegistryError::Invalid(_))
    ));

    // A restart keeps the log.
    drop(r);
    let r = open(dir.path());
    assert_eq!(r.log().size().unwrap(), 4);
    assert_eq!(r.log_head(None, NOW).unwrap().root, head.root);
}

/// Scores `amid` twice (the second from the cache) and checks both against
/// a computation from storage.
fn cached_equals_fresh(r: &Registry, amid: &Amid, now_ms: u64) -> Score {
    let first = r.score(amid, now_ms).unwrap();
    assert!(r.inner.scores.contains(amid));
    let cached = r.score(amid, now_ms).unwrap();
    let fresh = r.score_uncached(amid, now_ms).unwrap();
    assert_eq!(first, fresh);
    assert_eq!(cached, fresh);
    fresh
}

async fn file_receipt(r: &Registry, a: &Identity, b: &Identity, sid: [u8; 16], completed: bool) {
    let body = ReceiptBody::new(sid, a.amid(), b.amid(), completed, NOW - 1000);
    let receipt = SessionReceipt::sign(&body, a, b).unwrap();
    apply(r, a, Operation::Session { receipt }).await.unwrap();
}

async fn rate(r: &Registry, who: &Identity, target: &Identity, sid: [u8; 16], score: f64) {
    let fb = Feedback::new(hex::encode(sid), target.amid(), score);
    apply(r, who, Operation::Feedback(fb)).await.unwrap();
}

async fn two_agents(r: &Registry) -> (Identity, Identity) {
    let (a, b) = (id(1), id(2));
    register(r, &a, &["chat"]).await;
    register(r, &b, &["chat"]).await;
    (a, b)
}

#[tokio::test]
async fn cached_score_follows_a_new_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b) = two_agents(&r).await;
    let before = cached_equals_fresh(&r, &b.amid(), NOW);
    cached_equals_fresh(&r, &a.amid(), NOW);
    file_receipt(&r, &a, &b, [1; 16], false).await;
    // Both parties' entries were dropped.
    assert!(!r.inner.scores.contains(&a.amid()));
    assert!(!r.inner.scores.contains(&b.amid()));
    let after = cached_equals_fresh(&r, &b.amid(), NOW);
    assert_eq!(after.sessions, 1);
    assert_ne!(before.score, after.score);
    assert_eq!(cached_equals_fresh(&r, &a.amid(), NOW).sessions, 1);
}

#[tokio::test]
async fn cached_score_follows_new_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b) = two_agents(&r).await;
    file_receipt(&r, &a, &b, [1; 16], true).await;
    let before = cached_equals_fresh(&r, &b.amid(), NOW);
    rate(&r, &a, &b, [1; 16], 0.0).await;
    let after = cached_equals_fresh(&r, &b.amid(), NOW);
    assert_eq!(after.ratings, 1);
    assert!(after.score < before.score);
}

#[tokio::test]
async fn cached_score_follows_the_mutual_rule() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b) = two_agents(&r).await;
    file_receipt(&r, &a, &b, [1; 16], true).await;
    rate(&r, &a, &b, [1; 16], 1.0).await;
    let before = cached_equals_fresh(&r, &b.amid(), NOW);
    // b rating a makes a's rating of b mutual: b's own score changes.
    rate(&r, &b, &a, [1; 16], 1.0).await;
    assert!(!r.inner.scores.contains(&b.amid()));
    let after = cached_equals_fresh(&r, &b.amid(), NOW);
    assert!(after.weights[0] < before.weights[0]);
    assert!(after.score < before.score);
}

#[tokio::test]
async fn cached_score_follows_a_tier_change() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (_, b) = two_agents(&r).await;
    let before = cached_equals_fresh(&r, &b.amid(), NOW);
    r.issue_verified(&b.amid(), "github:777", NOW)
        .await
        .unwrap();
    let after = cached_equals_fresh(&r, &b.amid(), NOW);
    assert_eq!(
        after.tier_bonus,
        agentmesh_node::trust::reputation::tier_bonus(Tier::Verified)
    );
    assert!(after.score > before.score);
}

#[tokio::test]
async fn cached_score_follows_a_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b) = two_agents(&r).await;
    file_receipt(&r, &a, &b, [1; 16], true).await;
    cached_equals_fresh(&r, &b.amid(), NOW);
    let revoke = Operation::Revoke {
        subject: b.amid(),
        reason: "retired".into(),
    };
    apply(&r, &b, revoke).await.unwrap();
    assert!(!r.inner.scores.contains(&b.amid()));
    cached_equals_fresh(&r, &b.amid(), NOW);
    assert!(r.store().agent(&b.amid()).unwrap().unwrap().revoked);
}

#[tokio::test]
async fn cached_score_follows_the_age_factor_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (a, b) = two_agents(&r).await;
    file_receipt(&r, &a, &b, [1; 16], true).await;
    let now = cached_equals_fresh(&r, &b.amid(), NOW);
    // Same cache entry, 30 days later: the age term moved.
    let later_ms = NOW + 30 * 86_400_000;
    let later = cached_equals_fresh(&r, &b.amid(), later_ms);
    assert!(later.age_factor > now.age_factor);
    assert!(later.score > now.score);
}

#[tokio::test]
async fn scores_are_the_same_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (id(1), id(2));
    let before = {
        let r = open(dir.path());
        two_agents(&r).await;
        file_receipt(&r, &a, &b, [1; 16], true).await;
        rate(&r, &a, &b, [1; 16], 0.9).await;
        let s = cached_equals_fresh(&r, &b.amid(), NOW);
        r.store().flush().await.unwrap();
        s
    };
    let r = open(dir.path());
    assert!(!r.inner.scores.contains(&b.amid()));
    assert_eq!(cached_equals_fresh(&r, &b.amid(), NOW), before);
}

/// The typed answers serialise as the JSON clients read: names, sorted
/// keys, `null` for what is missing.
#[tokio::test]
async fn answers_keep_their_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let a = id(1);
    let am = a.amid();
    let reg = Operation::Register(Registration::new("alice", vec!["chat".into()]));
    let out = apply(&r, &a, reg).await.unwrap();
    assert_eq!(
        out.to_string(),
        format!(r#"{{"amid":"{am}","created":true,"registered_ms":{NOW},"tier":"anonymous"}}"#)
    );
    let st = Operation::Status {
        presence: Presence::Away,
    };
    let out = apply(&r, &a, st).await.unwrap();
    assert_eq!(
        out.to_string(),
        format!(r#"{{"amid":"{am}","capabilities":["chat"],"presence":"away"}}"#)
    );
    let bundle = serde_json::from_value(json!({
        "identity_key": hex::encode([1u8; 32]),
        "fallback_key": hex::encode([2u8; 32]),
        "one_time_keys": [],
    }))
    .unwrap();
    let out = apply(&r, &a, Operation::Prekeys(bundle)).await.unwrap();
    assert_eq!(
        out.to_string(),
        format!(r#"{{"amid":"{am}","one_time_keys":0}}"#)
    );
    let (k1, k2) = (hex::encode([1u8; 32]), hex::encode([2u8; 32]));
    assert_eq!(
        json(&r.prekey_bundle(&am).unwrap()),
        format!(
            r#"{{"amid":"{am}","card":null,"fallback_key":"{k2}","identity_key":"{k1}","one_time_key":null,"remaining":0}}"#
        )
    );
    assert_eq!(
        json(&r.revocation(&am).unwrap()),
        format!(r#"{{"amid":"{am}","revoked":false}}"#)
    );
    assert_eq!(
        json(&r.stats().unwrap()),
        r#"{"agents":1,"by_tier":{"anonymous":1,"organization":0,"verified":0},"capabilities":1,"online":0,"organizations":0,"ratings":0,"receipts":0,"revocations":0,"revoked":0}"#
    );
    assert_eq!(
        json(&r.agent_score(&am, NOW).unwrap()),
        format!(
            r#"{{"age_factor":0.0,"amid":"{am}","completion_rate":0.5,"feedback":0.5,"flagged":false,"ratings":0,"score":0.5,"sessions":0,"tier_bonus":0.0,"weights":[]}}"#
        )
    );
    assert_eq!(
        json(&r.leaderboard(1, NOW).unwrap()),
        format!(
            r#"{{"leaderboard":[{{"amid":"{am}","display_name":"alice","flagged":false,"rank":1,"score":0.5,"tier":"anonymous"}}]}}"#
        )
    );
    assert_eq!(
        json(&r.search_results(&SearchQuery::new("none"), NOW).unwrap()),
        r#"{"count":0,"results":[]}"#
    );
}

/// An answer as the API serialises it.
fn json<T: Serialize>(answer: &T) -> String {
    crate::http::to_json(answer).unwrap().to_string()
}

/// A certificate whose log leaf is appended but not yet flushed (a
/// concurrent issuance between its append and its flush) is served
/// without an inclusion proof, not refused; the proof comes with the flush.
#[tokio::test]
async fn credentials_of_a_certificate_not_yet_durable_come_without_a_proof() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let alice = id(1);
    register(&r, &alice, &["chat"]).await;
    let chain = r
        .issue_verified(&alice.amid(), "github:1", NOW)
        .await
        .unwrap();
    let size = r.log().size().unwrap();
    // The state between the append and the flush of the issuance.
    r.inner
        .durable_leaves
        .store(size - 1, std::sync::atomic::Ordering::SeqCst);
    let creds = r.credentials_for(&alice.amid(), None, NOW).unwrap();
    assert_eq!(creds.chain.as_ref(), Some(&chain));
    assert!(creds.inclusion.is_none(), "no head covers the leaf yet");
    r.flush().await.unwrap();
    let creds = r.credentials_for(&alice.amid(), None, NOW).unwrap();
    let inc = creds.inclusion.expect("proven once durable");
    assert_eq!(inc.head.size, size);
}

#[tokio::test]
async fn one_signer_is_held_to_its_rate_whatever_its_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RegistrySettings {
        signer_rate: agentmesh_node::knock::ratelimit::RateLimit::new(60, 3),
        ..fast_settings()
    };
    let r = Registry::open(dir.path(), &Passphrase::new("test"), settings).unwrap();
    let (a, b) = (Identity::generate(), Identity::generate());
    register(&r, &a, &["chat"]).await;
    // Two more from a, each from another client address: the bucket is the
    // signer's, not the address's.
    for i in 0..2u8 {
        let req = SignedRequest::sign(
            &a,
            Operation::Status {
                presence: Presence::Away,
            },
            NOW + u64::from(i) + 1,
        )
        .unwrap();
        let client = Some(IpAddr::from([127, 0, 0, 10 + i]));
        r.apply(&req, None, client, NOW).await.unwrap();
    }
    let req = SignedRequest::sign(
        &a,
        Operation::Status {
            presence: Presence::Online,
        },
        NOW + 10,
    )
    .unwrap();
    let refused = r
        .apply(&req, None, Some(IpAddr::from([127, 0, 0, 99])), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RegistryError::RateLimited { retry_after_ms } if retry_after_ms > 0),
        "{refused:?}"
    );
    // Another signer is served meanwhile; a's next token comes a second on.
    register(&r, &b, &["chat"]).await;
    r.apply(&req, None, None, NOW + 1_000).await.unwrap();
}

#[tokio::test]
async fn a_presence_the_registry_does_not_know_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let a = Identity::generate();
    register(&r, &a, &["chat"]).await;
    let e = apply(
        &r,
        &a,
        Operation::Status {
            presence: Presence::Unknown,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RegistryError::Invalid(_)), "{e:?}");
}

#[tokio::test]
async fn a_rotation_moves_the_registration_tier_and_history_to_the_new_key() {
    use agentmesh_node::identity::rotation::SignedRotation;
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let (old, b) = two_agents(&r).await;
    r.issue_verified(&old.amid(), "github:12345", NOW)
        .await
        .unwrap();
    file_receipt(&r, &old, &b, [1; 16], true).await;
    let history = cached_equals_fresh(&r, &old.amid(), NOW);
    assert_eq!(history.sessions, 1);

    // The new key registers (a fresh, anonymous entry), then files its
    // history.
    let new = id(9);
    register(&r, &new, &["weather/forecast"]).await;
    let statement = SignedRotation::sign(&old, &new, NOW - 10).unwrap();
    let rotate = |chain: Vec<&SignedRotation>| Operation::Rotate {
        rotations: chain.iter().map(|s| hex::encode(s.to_bytes())).collect(),
    };
    // Someone else cannot file it.
    let carol = id(7);
    register(&r, &carol, &["chat"]).await;
    assert!(matches!(
        apply(&r, &carol, rotate(vec![&statement])).await,
        Err(RegistryError::Invalid(_))
    ));
    let log_before = r.log().size().unwrap();
    let moved = apply(&r, &new, rotate(vec![&statement])).await.unwrap();
    assert_eq!(moved["from"], json!(old.amid().to_string()));
    assert_eq!(moved["tier"], json!("verified"));
    assert_eq!(moved["moved"], json!(true));

    // The new key holds the tier (a certificate of its own), the age and
    // the reputation history; its own capabilities are kept.
    let view = r.lookup(&new.amid(), NOW).unwrap();
    assert_eq!(view.tier, Tier::Verified);
    assert_eq!(view.previous, vec![old.amid()]);
    assert_eq!(view.capabilities, vec!["weather/forecast".to_string()]);
    let chain = CertChain::from_bytes(&hex::decode(view.certificate.unwrap()).unwrap()).unwrap();
    assert_eq!(
        chain.verify(&new.amid(), &r.root_key(), NOW, |_| false),
        Ok(Tier::Verified)
    );
    let after = cached_equals_fresh(&r, &new.amid(), NOW);
    assert_eq!(after.sessions, history.sessions);
    // The old key is revoked and points to the new one.
    let left = r.lookup(&old.amid(), NOW).unwrap();
    assert!(left.revoked);
    assert_eq!(left.moved_to, Some(new.amid()));
    assert_eq!(left.presence, Presence::Moved);
    assert!(matches!(
        r.revocation(&old.amid()).unwrap(),
        RevocationStatus::Revoked(_)
    ));
    // Logged: the statement, the new certificate, the revocation.
    let leaves: Vec<Vec<u8>> = (log_before..r.log().size().unwrap())
        .map(|i| r.log().leaf(i).unwrap().unwrap())
        .collect();
    assert!(leaves.contains(&LeafKind::Rotation.leaf(&statement.to_bytes())));
    assert!(leaves.iter().any(|l| l[0] == LeafKind::Revocation as u8));
    assert_eq!(leaves.len(), 3, "{leaves:?}");

    // Filing it again changes nothing; a key that holds a registration of
    // its own cannot take another's.
    let again = apply(&r, &new, rotate(vec![&statement])).await.unwrap();
    assert_eq!(again["moved"], json!(false));
    let mid = id(8);
    let forked = SignedRotation::sign(&b, &carol, NOW).unwrap();
    r.issue_verified(&carol.amid(), "github:777", NOW)
        .await
        .unwrap();
    assert!(matches!(
        apply(&r, &carol, rotate(vec![&forked])).await,
        Err(RegistryError::Conflict(_))
    ));
    // An unknown history has nothing to move.
    let unknown = SignedRotation::sign(&id(20), &mid, NOW).unwrap();
    assert!(matches!(
        apply(&r, &mid, rotate(vec![&unknown])).await,
        Err(RegistryError::UnknownAgent(_))
    ));
}
