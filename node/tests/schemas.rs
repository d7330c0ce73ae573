//! Message schemas end to end, nodes in one process on real loopback
//! sockets and sled databases: the receiver's card lists the schemas it
//! takes per capability, a KNOCK naming none (or another) is refused, and
//! in a session opened with a schema every message of the initiator is
//! checked before it is accepted.

use std::{collections::BTreeMap, time::Duration};

use agentmesh_node::{
    crypto::keystore::KdfParams, schema::SchemaError, Config, Intent, Node, NodeEvent, Passphrase,
    RejectReason, SendError, SpawnError,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);
const FORECAST: &str = "weather/forecast";
const CUSTOM: &str = "x-weather/forecast@1";

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c
}

/// Bob's configuration: `weather/forecast` takes the standard request
/// schema or a custom one that needs a city.
fn bob_config() -> Config {
    let mut c = config();
    c.capabilities = vec![FORECAST.into(), "communication/messaging".into()];
    c.custom_schemas = vec![(
        CUSTOM.into(),
        json!({
            "allOf": [{ "$ref": "agentmesh/request@1" }],
            "required": ["params"],
            "properties": { "params": {
                "type": "object",
                "required": ["city"],
                "properties": { "city": { "type": "string", "minLength": 1 } }
            } }
        }),
    )];
    c.accept_schemas = BTreeMap::from([(
        FORECAST.to_string(),
        vec!["agentmesh/request@1".to_string(), CUSTOM.to_string()],
    )]);
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

fn forecast(city: &str) -> Value {
    json!({ "type": "request", "action": "forecast", "params": { "city": city } })
}

/// The next message in bob's inbox, within `WAIT`.
async fn next_payload(inbox: &mut agentmesh_node::Messages) -> Value {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a message in time")
        .expect("inbox open")
        .payload
}

/// The next refusal bob reports, within `WAIT`.
async fn next_refusal(events: &mut broadcast::Receiver<NodeEvent>) -> (RejectReason, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Refused { reason, detail, .. }) => return (reason, detail),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
            }
        }
    })
    .await
    .expect("a refusal in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_with_schemas_takes_only_messages_that_conform() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let boot = node(dir.path(), "bootstrap", config(), None).await;
    tokio::time::timeout(WAIT, async {
        while boot.listen_addrs().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bootstrap listens");
    let alice = node(dir.path(), "alice", config(), Some(&boot)).await;
    let bob = node(dir.path(), "bob", bob_config(), Some(&boot)).await;
    assert!(alice.wait_published(WAIT).await);
    assert!(bob.wait_published(WAIT).await);
    let bob_id = bob.amid();
    let mut inbox = bob.messages().unwrap();
    let mut events = bob.events();

    // Negotiation: bob's card says what the capability takes.
    let taken = alice.schemas_of(&bob_id).await.expect("bob's card");
    assert_eq!(taken, bob_config().accept_schemas);

    // Naming no schema, or one not listed, is refused at the KNOCK.
    let plain = Intent::new(FORECAST, "query");
    assert_eq!(
        alice
            .send_with(&bob_id, forecast("Oslo"), plain.clone())
            .await,
        Err(SendError::Rejected(RejectReason::UnsupportedSchema))
    );
    let text = plain.clone().with_schema("agentmesh/text@1");
    assert_eq!(
        alice
            .send_with(&bob_id, json!({ "text": "Oslo?" }), text)
            .await,
        Err(SendError::Rejected(RejectReason::UnsupportedSchema))
    );
    // A schema alice knows is checked before anything is sent.
    let request = plain.clone().with_schema("agentmesh/request@1");
    match alice
        .send_with(&bob_id, json!({ "text": "hi" }), request.clone())
        .await
    {
        Err(SendError::InvalidPayload(detail)) => {
            assert!(detail.contains("agentmesh/request@1"), "{detail}")
        }
        other => panic!("sent a payload its schema refuses: {other:?}"),
    }

    // Bob's custom schema is unknown to alice: bob checks the first
    // message, which rides in the KNOCK, and refuses the KNOCK.
    let custom = plain.clone().with_schema(CUSTOM);
    assert_eq!(
        alice.send_with(&bob_id, forecast(""), custom.clone()).await,
        Err(SendError::Rejected(RejectReason::SchemaInvalid))
    );
    let (reason, detail) = next_refusal(&mut events).await;
    assert_eq!(reason, RejectReason::SchemaInvalid);
    assert!(detail.contains(CUSTOM), "{detail}");

    // A conforming message opens the session; in it, a message that does
    // not conform is refused alone and the session goes on.
    let receipt = alice
        .send_with(&bob_id, forecast("Oslo"), custom.clone())
        .await
        .expect("a conforming first message is taken");
    assert!(receipt.knocked);
    assert_eq!(next_payload(&mut inbox).await, forecast("Oslo"));
    assert_eq!(
        alice
            .send_with(
                &bob_id,
                json!({ "type": "request", "action": "forecast" }),
                custom.clone()
            )
            .await,
        Err(SendError::Rejected(RejectReason::SchemaInvalid))
    );
    let (reason, _) = next_refusal(&mut events).await;
    assert_eq!(reason, RejectReason::SchemaInvalid);
    let next = alice
        .send_with(&bob_id, forecast("Bergen"), custom.clone())
        .await
        .expect("the session goes on");
    assert!(!next.knocked);
    assert_eq!(next.session, receipt.session);

    // The standard request schema opens a session of its own.
    let req = alice
        .send_with(&bob_id, forecast("Tromsø"), request)
        .await
        .expect("a conforming request");
    assert!(req.knocked);
    assert_ne!(req.session, receipt.session);

    // A message naming no schema does not go in a checked session.
    let free = alice
        .send(&bob_id, json!({ "note": "no schema" }))
        .await
        .expect("a free-form message for another capability");
    assert!(free.knocked);

    // Bob's application saw exactly the messages that conform, in order.
    assert_eq!(next_payload(&mut inbox).await, forecast("Bergen"));
    assert_eq!(next_payload(&mut inbox).await, forecast("Tromsø"));
    assert_eq!(
        next_payload(&mut inbox).await,
        json!({ "note": "no schema" })
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.recv())
            .await
            .is_err(),
        "a refused message reached the application"
    );
}

#[tokio::test]
async fn a_node_whose_schemas_do_not_hold_together_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &'static str, config: Config| {
        let dir = dir.path().join(name);
        async move {
            Node::builder(config)
                .data_dir(dir)
                .passphrase(Passphrase::new(name))
                .spawn()
                .await
        }
    };
    let mut unknown = bob_config();
    unknown.custom_schemas.clear();
    assert!(matches!(
        start("unknown", unknown).await,
        Err(SpawnError::Schema(SchemaError::Unknown(id))) if id == CUSTOM
    ));
    let mut not_advertised = bob_config();
    not_advertised.capabilities = vec!["communication/messaging".into()];
    assert!(matches!(
        start("not-advertised", not_advertised).await,
        Err(SpawnError::AcceptSchemas(_))
    ));
    let mut reserved = bob_config();
    reserved.custom_schemas[0].0 = "agentmesh/forecast@1".into();
    assert!(matches!(
        start("reserved", reserved).await,
        Err(SpawnError::Schema(SchemaError::Reserved(_)))
    ));
    let mut broken = bob_config();
    broken.custom_schemas[0].1 = json!({ "$ref": "https://example.com/forecast.json" });
    assert!(matches!(
        start("broken", broken).await,
        Err(SpawnError::Schema(SchemaError::Compile { .. }))
    ));
}
