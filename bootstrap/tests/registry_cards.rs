//! The registry keeps each registered agent's signed card with its prekey
//! bundle: a sender whose DHT lookup finds no card still reaches the agent
//! through it, trusting the card's own signature. Against the real
//! `agentmesh-bootstrap` binary, whose DHT here stores no cards.

use agentmesh_dht::DhtMode;
use agentmesh_node::{
    registry::{Operation, PrekeyBundle},
    Node,
};
use serde_json::json;

mod support;

use support::{fast_config as config, node, start, Http, WAIT};

const PASS: &str = "registry-cards-test";

/// Polls the registry until it hands out a card for `who`; the card.
async fn registry_card(http: &Http, who: &Node) -> String {
    let path = format!("/v1/registry/prekeys/{}", who.amid());
    tokio::time::timeout(WAIT, async {
        loop {
            let (s, v) = http.get(&path).await;
            if s == 200 {
                if let Some(card) = v["card"].as_str() {
                    return card.to_owned();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the card reaches the registry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_dht_has_no_card_reaches_the_agent_through_the_registry() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    // The bootstrap node's DHT stores revocations only, never a card.
    let cfg = dir.path().join("bootstrap.toml");
    std::fs::write(&cfg, "dht_namespaces = [\"rv-*\"]\n").unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        PASS,
        &["--config", cfg.to_str().unwrap(), "--http", "127.0.0.1:0"],
    )
    .await;
    let http = Http::new(&server.url);

    // Bob serves no DHT himself, so his card is in no DHT store but his.
    let mut bob_config = config();
    bob_config.dht.mode = DhtMode::Client;
    bob_config.registry = Some(server.addr.parse().unwrap());
    let bob = node(dir.path(), "bob", bob_config, &server.addr).await;
    // Nor does alice: bob's card is put to no one but the bootstrap node.
    let mut alice_config = config();
    alice_config.dht.mode = DhtMode::Client;
    alice_config.registry = Some(server.addr.parse().unwrap());
    let alice = node(dir.path(), "alice", alice_config, &server.addr).await;

    // Bob registers; his card follows his prekey bundle to the registry.
    tokio::time::timeout(WAIT, bob.register("bob", Some(vec!["chat".into()])))
        .await
        .unwrap()
        .expect("registered");
    let card = registry_card(&http, &bob).await;
    let (checked, _) =
        agentmesh_node::contacts::decode_card(card.as_bytes(), support::now_ms()).unwrap();
    assert_eq!(checked.amid, bob.amid());

    // The DHT has no card of bob's; the send finds it through the registry.
    assert!(
        alice.lookup(&bob.amid()).await.is_none(),
        "the DHT holds bob's card"
    );
    let mut inbox = bob.messages().unwrap();
    let receipt = tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!("found you")))
        .await
        .expect("send finishes")
        .expect("delivered");
    assert!(receipt.knocked);
    let got = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, json!("found you"));
    assert_eq!(got.from, alice.amid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_refuses_a_card_that_is_not_the_uploaders_or_does_not_match_its_keys() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("bootstrap"),
        PASS,
        &["--http", "127.0.0.1:0"],
    )
    .await;
    let http = Http::new(&server.url);
    let alice = node(dir.path(), "alice", config(), &server.addr).await;
    let bob = node(dir.path(), "bob", config(), &server.addr).await;
    for who in [&alice, &bob] {
        let reg = Operation::Register(agentmesh_node::registry::Registration::new(
            "agent",
            vec!["chat".into()],
        ));
        let (s, v) = http
            .signed("/v1/registry/register", who.identity(), reg)
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let bobs_card = tokio::time::timeout(WAIT, bob.export_card())
        .await
        .unwrap()
        .expect("bob has a card");
    let alices_card = tokio::time::timeout(WAIT, alice.export_card())
        .await
        .unwrap()
        .expect("alice has a card");
    let keys = |c: &str| {
        let (card, _) =
            agentmesh_node::contacts::decode_card(c.as_bytes(), support::now_ms()).unwrap();
        (card.olm_identity_key, card.fallback_key)
    };

    // Bob's card uploaded by alice (with bob's keys, so only the signer
    // differs): refused.
    let (id, fb) = keys(&bobs_card);
    let forged = PrekeyBundle::new(id, fb, &[]).with_card(bobs_card.clone());
    let (s, v) = http
        .signed(
            "/v1/registry/prekeys",
            alice.identity(),
            Operation::Prekeys(forged),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    // Alice's own card with keys other than its own: refused.
    let mismatched = PrekeyBundle::new(id, fb, &[]).with_card(alices_card.clone());
    let (s, v) = http
        .signed(
            "/v1/registry/prekeys",
            alice.identity(),
            Operation::Prekeys(mismatched),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // Nothing was stored for alice.
    let (s, _) = http
        .get(&format!("/v1/registry/prekeys/{}", alice.amid()))
        .await;
    assert_eq!(s, 404);
    // Her own card with her own keys: stored and handed out as uploaded.
    let (id, fb) = keys(&alices_card);
    let own = PrekeyBundle::new(id, fb, &[]).with_card(alices_card.clone());
    let (s, v) = http
        .signed(
            "/v1/registry/prekeys",
            alice.identity(),
            Operation::Prekeys(own),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = http
        .get(&format!("/v1/registry/prekeys/{}", alice.amid()))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["card"], alices_card.as_str());
    assert_eq!(v["fallback_key"], hex::encode(fb));
}
