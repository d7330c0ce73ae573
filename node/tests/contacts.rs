//! Cards handed out of band, in one process on real loopback sockets and
//! sled databases: two nodes with no bootstrap and no DHT in common reach
//! each other through an imported card; forged and expired cards are
//! refused; imported cards and petnames survive a restart; several message
//! handlers each get what their filter takes.

use std::time::Duration;

use agentmesh_dht::SignedRecord;
use agentmesh_node::{
    card::CardError, contacts::CardImportError, contacts::NameError, crypto::keystore::KdfParams,
    Config, Identity, MessageFilter, MessageKind, Node, Passphrase, PathKind, Presence,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

/// A node alone: no bootstrap, so no DHT to find anyone in. Started again
/// once a stopped node of the same name has let go of its database (its
/// lock is the event waited on).
async fn lone(dir: &std::path::Path, name: &str) -> Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    let n = loop {
        let b = Node::builder(config())
            .data_dir(dir.join(name))
            .passphrase(Passphrase::new(name));
        match b.spawn().await {
            Ok(n) => break n,
            Err(e) if e.to_string().contains("lock") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{name} starts: {e}"),
        }
    };
    assert!(
        !n.wait_listening(1, WAIT).await.is_empty(),
        "{name} listens"
    );
    n
}

/// `record`'s card payload signed again by `key`, expiring at `expires_ms`.
fn resigned(record: &SignedRecord, key: &Identity, expires_ms: u64) -> Vec<u8> {
    let v = record.clone().verify(0).unwrap();
    let kp = key.libp2p_keypair().unwrap();
    SignedRecord::sign(&kp, &v.namespace, v.payload, v.seq + 1, expires_ms)
        .unwrap()
        .to_bytes()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_card_reaches_its_agent_with_no_dht() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let alice = lone(dir.path(), "alice").await;
    let bob = lone(dir.path(), "bob").await;
    let mut inbox = bob.messages().unwrap();

    let card = bob.export_card().await.expect("bob has a card");
    let record = bob.card_record().await.unwrap();

    // Expired: bob's own card, signed by bob, but its expiry passed.
    let expired = resigned(&record, bob.identity(), 1);
    assert!(matches!(
        alice.import_card(&expired),
        Err(CardImportError::Expired { expires_ms: 1 })
    ));
    // Forged: bob's card signed by someone else's key.
    let mallory = Identity::from_seed(&[7; 32]);
    let forged = resigned(&record, &mallory, u64::MAX / 2);
    assert_eq!(
        alice.import_card(&forged).unwrap_err(),
        CardImportError::Card(CardError::SubjectMismatch)
    );
    // Altered: one bit of the string flipped.
    let mut altered = card.clone().into_bytes();
    let at = altered.len() / 2;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    assert!(alice.import_card(&altered).is_err());
    // Our own card is not a contact.
    assert_eq!(
        alice
            .import_card(alice.export_card().await.unwrap().as_bytes())
            .unwrap_err(),
        CardImportError::Own
    );
    assert!(alice.imported_cards().is_empty());

    let imported = alice.import_card(card.as_bytes()).unwrap();
    assert_eq!(imported.amid, bob.amid());
    assert_eq!(imported.presence, Presence::Online);
    alice.set_name("bob", &bob.amid()).unwrap();
    assert!(matches!(
        alice.set_name(&bob.amid().to_string(), &bob.amid()),
        Err(NameError::Invalid(_))
    ));

    let to = alice.resolve_name("bob").unwrap();
    let r = tokio::time::timeout(WAIT, alice.send(&to, json!({"text": "hi bob"})))
        .await
        .expect("sent in time")
        .expect("delivered");
    assert!(r.knocked);
    assert_eq!(r.path, PathKind::DirectQuic);
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!({"text": "hi bob"}));
    assert_eq!(m.from, alice.amid());

    let peers = alice.peers().await;
    let p = peers
        .iter()
        .find(|p| p.amid == bob.amid())
        .expect("bob is known");
    assert_eq!(p.name.as_deref(), Some("bob"));
    assert!(p.card_imported);
    assert_eq!(p.presence, Some(Presence::Online));
    assert!(p.sessions >= 1 && p.last_seen_ms.is_some());
    assert_eq!(p.path, Some(PathKind::DirectQuic));

    // The card and the name are on disk: a restarted alice still has them.
    alice.shutdown().await;
    let alice = lone(dir.path(), "alice").await;
    assert_eq!(alice.imported_cards().len(), 1);
    assert_eq!(alice.resolve_name("bob"), Ok(bob.amid()));
    assert_eq!(alice.name_of(&bob.amid()).as_deref(), Some("bob"));
    assert_eq!(alice.remove_name("bob"), Ok(bob.amid()));
    assert!(matches!(
        alice.resolve_name("bob"),
        Err(NameError::Unknown(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_handlers_each_get_the_messages_their_filter_takes() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let alice = lone(dir.path(), "alice").await;
    let bob = lone(dir.path(), "bob").await;
    alice
        .import_card(bob.export_card().await.unwrap().as_bytes())
        .unwrap();

    let (all_tx, mut all) = tokio::sync::mpsc::channel(16);
    let (alice_tx, mut from_alice) = tokio::sync::mpsc::channel(16);
    let (other_tx, mut from_other) = tokio::sync::mpsc::channel(16);
    assert!(bob.on_message(move |m| {
        let _ = all_tx.try_send(m);
    }));
    let stranger = Identity::from_seed(&[8; 32]).amid();
    // Registered before the filter on alice: it has judged each message
    // by the time that one sees it.
    assert!(
        bob.on_message_filtered(MessageFilter::default().from(stranger), move |m| {
            let _ = other_tx.try_send(m);
        })
    );
    assert!(bob.on_message_filtered(
        MessageFilter::default()
            .from(alice.amid())
            .kind(MessageKind::Message),
        move |m| {
            let _ = alice_tx.try_send(m);
        }
    ));
    // The inbox belongs to the handlers now.
    assert!(bob.messages().is_none());

    for n in 0..2 {
        tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!({ "n": n })))
            .await
            .expect("sent in time")
            .expect("delivered");
    }
    for n in 0..2 {
        let a = tokio::time::timeout(WAIT, all.recv())
            .await
            .unwrap()
            .unwrap();
        let b = tokio::time::timeout(WAIT, from_alice.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.payload, json!({ "n": n }));
        assert_eq!(a, b);
    }
    assert!(from_other.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_refuses_bad_cards_and_names_with_typed_errors() {
    use agentmesh_node::{
        api::{ApiOptions, ErrorCode, LocalApi},
        control::{Client, Method},
    };
    use base64::Engine as _;

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let alice = lone(dir.path(), "alice").await;
    let bob = lone(dir.path(), "bob").await;
    let api = LocalApi::start(
        alice.clone(),
        &dir.path().join("alice"),
        ApiOptions::new(None),
    )
    .await
    .unwrap();
    let mut c = Client::connect(&dir.path().join("alice")).await.unwrap();
    let code =
        |r: Result<serde_json::Value, agentmesh_node::api::ApiError>| r.expect_err("refused").code;

    let record = bob.card_record().await.unwrap();
    let b64 = |bytes: Vec<u8>| {
        format!(
            "u{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    };
    let expired = b64(resigned(&record, bob.identity(), 1));
    let forged = b64(resigned(
        &record,
        &Identity::from_seed(&[7; 32]),
        u64::MAX / 2,
    ));
    for (card, want) in [
        (expired, ErrorCode::CardExpired),
        (forged, ErrorCode::InvalidCard),
        ("unot-a-card".to_owned(), ErrorCode::InvalidCard),
    ] {
        let body = json!({ "card": card });
        let r = c
            .call(Method::POST, "/v1/cards", Some(&body))
            .await
            .unwrap();
        assert_eq!(code(r), want);
    }
    let body = json!({ "name": "Bob", "amid": bob.amid() });
    let r = c
        .call(Method::POST, "/v1/names", Some(&body))
        .await
        .unwrap();
    assert_eq!(code(r), ErrorCode::InvalidName);
    let r = c.call(Method::DELETE, "/v1/names/bob", None).await.unwrap();
    assert_eq!(code(r), ErrorCode::NotFound);
    let body = json!({ "to": "nobody", "payload": {} });
    let r = c.call(Method::POST, "/v1/send", Some(&body)).await.unwrap();
    assert_eq!(code(r), ErrorCode::InvalidAmid);

    // The exported card imports, with its name.
    let exported = c
        .call(Method::GET, "/v1/card", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exported["amid"], json!(alice.amid()));
    let card = bob.export_card().await.unwrap();
    let body = json!({ "card": card, "name": "bob" });
    let ok = c
        .call(Method::POST, "/v1/cards", Some(&body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok["amid"], json!(bob.amid()));
    let names = c
        .call(Method::GET, "/v1/names", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        names["names"],
        json!([{ "name": "bob", "amid": bob.amid() }])
    );
    api.stop().await;
}

/// A node joined through `boot`, started again once a stopped node of the
/// same name let go of its database.
async fn joined(dir: &std::path::Path, name: &str, boot: &Node) -> Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    let addrs = boot.wait_listening(1, WAIT).await;
    loop {
        let b = Node::builder(config())
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

/// Bob hands out his card, then moves (restarts on new ports) and
/// publishes a newer card in the DHT: alice, holding the old imported
/// card, still reaches bob where he is now (her link asks the DHT once
/// dialling the imported card failed, and the swarm also dials the
/// addresses the DHT taught it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_imported_card_gives_way_to_the_dht() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = lone(dir.path(), "boot").await;
    let bob = joined(dir.path(), "bob", &boot).await;
    assert!(bob.wait_published(WAIT).await);
    let old_card = bob.export_card().await.expect("bob has a card");
    let old_addrs = bob.listen_addrs().await;
    bob.shutdown().await;

    let bob = joined(dir.path(), "bob", &boot).await;
    assert!(bob.wait_published(WAIT).await);
    assert_ne!(bob.listen_addrs().await, old_addrs, "bob moved");
    let mut inbox = bob.messages().unwrap();
    let alice = joined(dir.path(), "alice", &boot).await;
    assert!(alice.wait_published(WAIT).await);
    alice.import_card(old_card.as_bytes()).unwrap();

    tokio::time::timeout(WAIT, alice.send(&bob.amid(), json!("where are you")))
        .await
        .expect("alice's send finished")
        .expect("delivered");
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, json!("where are you"));
}
