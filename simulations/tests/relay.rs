//! Relays as real processes: an offline agent's mail survives a relay killed
//! with SIGKILL and arrives once, in order; an agent with no direct address
//! is reached through a circuit; the mailbox's limits and access rules hold
//! against a real relay; the relay's files hold no plaintext.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use agentmesh_node::{
    control::Response,
    crypto::envelope::{EnvelopeBody, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION},
    crypto::keystore::KdfParams,
    Amid, Config, Node, Passphrase, PathKind,
};
use agentmesh_relay::mailbox::{self, ErrorCode, MailboxError};
use agentmesh_sim::process::{control_send, start_agent, start_bootstrap, start_relay, Proc};
use rand::Rng;
use serde_json::{json, Value};

mod support;

use support::{application, AppLog};

const WAIT: Duration = Duration::from_secs(90);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

async fn send(dir: &Path, to: &str, payload: Value) -> Response {
    control_send(dir, to, payload, WAIT).await.expect("send")
}

/// An in-process node joined through `boot`, for driving the mailbox
/// protocol by hand: it keeps no mailbox itself, so it never drains one.
async fn local_node(dir: &Path, name: &str, boot: &str) -> Node {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c.mailbox_relays = 0;
    Node::builder(c)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .bootstrap(boot.parse().unwrap())
        .spawn()
        .await
        .expect("node starts")
}

fn peer_of(addr: &str) -> agentmesh_node::PeerId {
    addr.rsplit("/p2p/").next().unwrap().parse().unwrap()
}

/// Deposits at `relay`, from `from` for `to`, an envelope `from` signed.
async fn put(
    from: &Node,
    to: &Node,
    relay: agentmesh_node::PeerId,
    i: u8,
    expires_ms: u64,
) -> Result<bool, MailboxError> {
    let env = sealed(from, &to.amid(), [i; 16], expires_ms);
    let to = to.amid().peer_id().unwrap();
    mailbox::deposit(
        &mut from.stream_control(),
        relay,
        &to,
        [i; 16],
        expires_ms,
        env,
    )
    .await
}

/// An envelope `from` signs for `to` (the relay checks the signature, the
/// sender and the recipient; it cannot read the ciphertext).
fn sealed(from: &Node, to: &Amid, id: [u8; 16], expires_ms: u64) -> Vec<u8> {
    SignedEnvelope::seal(
        from.identity(),
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: MessageId(id),
            from: from.amid(),
            to: *to,
            session: SessionId([0; 16]),
            seq: 0,
            ts_ms: now_ms(),
            expires_ms,
            olm_type: 1,
            ciphertext: vec![id[0]; 64],
        },
    )
    .unwrap()
    .to_bytes()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mail_survives_a_killed_relay_and_arrives_once_in_order() {
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let relay_dir = root.path().join("relay");
    let (relay, relay_addrs) = start_relay(exe(), &relay_dir, &boot_addr, &[], &[])
        .await
        .unwrap();
    let relay_addr = relay_addrs[0].clone();
    let bob_args = vec!["--relay".to_string(), relay_addr.clone()];
    let bob_dir = root.path().join("bob");
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
        .await
        .unwrap();
    let (mut alice, _) = start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
        .await
        .unwrap();

    // A session while bob is online.
    let r = send(&alice.dir, &bob_amid, json!("hello")).await;
    assert!(r.ok, "{r:?}");
    let hello = bob
        .wait_for(WAIT, |v| v["event"] == "message")
        .await
        .unwrap();
    // Bob's application acknowledges it through the local API: it is not
    // handed out again after the restart.
    let mut api = agentmesh_node::control::Client::connect(&bob.dir)
        .await
        .unwrap();
    let acked = api
        .call(
            agentmesh_node::control::Method::POST,
            "/v1/messages/ack",
            Some(&json!({ "ids": [hello["id"]] })),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked["acked"], 1);
    bob.terminate().await.unwrap();

    // Bob is offline: ten messages go to his mailbox.
    let mut ids = Vec::new();
    for n in 0..10 {
        let r = send(&alice.dir, &bob_amid, json!({ "n": n })).await;
        assert!(r.ok, "{r:?}");
        let receipt = r.receipt.unwrap();
        assert_eq!(receipt.path, PathKind::Mailbox, "message {n}");
        ids.push(receipt.id.to_string());
    }

    // The relay dies without a chance to flush and comes back on the same
    // addresses.
    relay.kill().await.unwrap();
    let listen: Vec<String> = relay_addrs
        .iter()
        .map(|a| a.split("/p2p/").next().unwrap().to_string())
        .collect();
    let (mut relay, again) = start_relay(exe(), &relay_dir, &boot_addr, &listen, &status_often())
        .await
        .unwrap();
    assert_eq!(again[0], relay_addr, "same identity and address");
    let held = relay.wait_event(WAIT, "relay_status").await.unwrap();
    assert_eq!(held["envelopes"], 10, "the mail survived: {held}");

    // Bob comes back: all ten, in order, once.
    let (mut bob, _) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        let m = match bob.wait_for(WAIT, |v| v["event"] == "message").await {
            Ok(m) => m,
            Err(e) => panic!("{e}; got {got:?}; bob said {:#?}", bob.drain()),
        };
        assert_eq!(m["path"], "mailbox");
        got.push(m["payload"]["n"].as_i64().unwrap());
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());

    // Alice learns that each one was delivered.
    for id in &ids {
        alice
            .wait_for(WAIT, |v| {
                v["event"] == "delivered" && v["id"] == id.as_str() && v["path"] == "mailbox"
            })
            .await
            .unwrap();
    }
    assert_arrived_once(&mut relay, &alice, &mut bob, &bob_amid).await;
}

/// A hung agent: SIGSTOP freezes bob with his sockets open. Over TCP the
/// kernel keeps acknowledging segments, so alice's connection looks alive;
/// only the missing acknowledgements of the message tell. The message goes
/// to bob's mailbox, and when bob resumes it arrives once, whichever copy
/// he reads first, and alice gets the delivery receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agents_message_goes_to_the_mailbox_and_arrives_once() {
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (mut relay, relay_addrs) = start_relay(
        exe(),
        &root.path().join("relay"),
        &boot_addr,
        &[],
        &status_often(),
    )
    .await
    .unwrap();
    let tcp_only = |relay: Option<&str>| {
        let mut a = vec!["--listen".to_string(), "/ip4/127.0.0.1/tcp/0".to_string()];
        if let Some(r) = relay {
            a.extend(["--relay".to_string(), r.to_string()]);
        }
        a
    };
    let (mut bob, bob_amid) = start_agent(
        exe(),
        "bob",
        &root.path().join("bob"),
        &boot_addr,
        &tcp_only(Some(&relay_addrs[0])),
    )
    .await
    .unwrap();
    let (mut alice, _) = start_agent(
        exe(),
        "alice",
        &root.path().join("alice"),
        &boot_addr,
        &tcp_only(None),
    )
    .await
    .unwrap();
    // The KNOCK, then a message on the open message stream.
    for text in ["hello", "again"] {
        let r = send(&alice.dir, &bob_amid, json!(text)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.receipt.unwrap().path, PathKind::DirectTcp);
        bob.wait_for(WAIT, |v| v["event"] == "message" && v["payload"] == text)
            .await
            .unwrap();
    }

    bob.signal(libc::SIGSTOP).unwrap();
    let r = send(&alice.dir, &bob_amid, json!({ "while": "hung" })).await;
    assert!(r.ok, "{r:?}");
    let receipt = r.receipt.unwrap();
    assert_eq!(receipt.path, PathKind::Mailbox);
    let id = receipt.id.to_string();
    // The relay holds the copy (bob, stopped, cannot have taken it yet):
    // from this status line on, a count of 0 means it was acknowledged.
    let held = relay
        .wait_for(WAIT, |v| {
            v["event"] == "relay_status" && v["envelopes"].as_u64().is_some_and(|n| n > 0)
        })
        .await
        .unwrap();
    bob.signal(libc::SIGCONT).unwrap();
    assert_eq!(held["envelopes"], 1, "{held}");

    let m = bob
        .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(m["payload"], json!({ "while": "hung" }));
    alice
        .wait_for(WAIT, |v| {
            v["event"] == "delivered" && v["id"] == id.as_str()
        })
        .await
        .unwrap();
    assert_arrived_once(&mut relay, &alice, &mut bob, &bob_amid).await;
}

/// Relay arguments: a status line every second, for tests that wait on
/// what the relay holds.
fn status_often() -> Vec<String> {
    vec!["--status-every".into(), "1".into()]
}

/// No message reached bob twice, nor can one still: the relay holds no
/// copy any more (its status lines count 0 envelopes; bob's mailbox is the
/// only one in use), so no later drain has anything to deliver; and a
/// sentinel alice sends now reaches bob after every delivery made before
/// it (one inbox, in order), so anything printed before it was seen.
async fn assert_arrived_once(relay: &mut Proc, alice: &Proc, bob: &mut Proc, bob_amid: &str) {
    let extra: Vec<Value> = arrived(relay, alice, bob, bob_amid)
        .await
        .into_iter()
        .filter(|v| v["event"] == "message")
        .collect();
    assert!(extra.is_empty(), "delivered twice: {extra:?}");
}

/// Waits until the relay holds no copy any more and a sentinel from alice
/// reached bob (see [`assert_arrived_once`]); returns what bob printed
/// before the sentinel that no wait consumed.
async fn arrived(relay: &mut Proc, alice: &Proc, bob: &mut Proc, bob_amid: &str) -> Vec<Value> {
    let empty = relay
        .wait_for(WAIT, |v| {
            v["event"] == "relay_status" && v["envelopes"] == 0
        })
        .await;
    if let Err(e) = empty {
        panic!(
            "{e}: the relay still holds mail ({:?})",
            relay.last_event("relay_status")
        );
    }
    let r = send(&alice.dir, bob_amid, json!("sentinel")).await;
    assert!(r.ok, "{r:?}");
    let sentinel = r.receipt.unwrap().id.to_string();
    bob.wait_for(WAIT, |v| {
        v["event"] == "message" && v["id"] == sentinel.as_str()
    })
    .await
    .unwrap();
    bob.drain()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_direct_address_is_reached_through_the_circuit() {
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (_relay, _) = start_relay(exe(), &root.path().join("relay"), &boot_addr, &[], &[])
        .await
        .unwrap();
    // Bob finds the relay in the DHT and listens only through it.
    let (mut bob, bob_amid) = start_agent(
        exe(),
        "bob",
        &root.path().join("bob"),
        &boot_addr,
        &["--private".to_string()],
    )
    .await
    .unwrap();
    // Alice only queries the DHT, so bob's DHT traffic never opens a direct
    // connection to her: her message has to take the circuit.
    let (alice, _) = start_agent(
        exe(),
        "alice",
        &root.path().join("alice"),
        &boot_addr,
        &["--dht-client".to_string()],
    )
    .await
    .unwrap();
    let r = send(&alice.dir, &bob_amid, json!("through the relay")).await;
    assert!(r.ok, "{r:?}");

    assert_eq!(r.receipt.unwrap().path, PathKind::Relayed);
    let m = bob
        .wait_for(WAIT, |v| v["event"] == "message")
        .await
        .unwrap();
    assert_eq!(m["payload"], json!("through the relay"));
    assert_eq!(m["path"], "relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_limits_and_access_hold_and_the_relay_stores_no_plaintext() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let relay_dir = root.path().join("relay");
    let (relay, relay_addrs) = start_relay(exe(), &relay_dir, &boot_addr, &[], &[])
        .await
        .unwrap();
    let relay_peer = peer_of(&relay_addrs[0]);
    let relay_ma: agentmesh_node::Multiaddr = relay_addrs[0].parse().unwrap();

    let alice = local_node(root.path(), "alice", &boot_addr).await;
    let bob = local_node(root.path(), "bob", &boot_addr).await;
    let carol = local_node(root.path(), "carol", &boot_addr).await;
    for n in [&alice, &bob, &carol] {
        n.connect(relay_peer, vec![relay_ma.clone()])
            .await
            .expect("reaches the relay");
    }
    let (bob_peer, carol_peer) = (
        bob.amid().peer_id().unwrap(),
        carol.amid().peer_id().unwrap(),
    );
    let (mut b, mut c) = (bob.stream_control(), carol.stream_control());
    let far = now_ms() + 3_600_000;

    // Only what the depositing peer signed, to the named recipient, is
    // taken: junk, another's envelope, or a mismatched id are forged.
    let forged = [
        vec![0u8; 64],
        sealed(&alice, &carol.amid(), [1; 16], far),
        sealed(&bob, &alice.amid(), [1; 16], far),
    ];
    for env in forged {
        let r = mailbox::deposit(&mut b, relay_peer, &carol_peer, [1; 16], far, env).await;
        assert!(
            matches!(
                r,
                Err(MailboxError::Refused {
                    code: ErrorCode::Forged,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let env = sealed(&bob, &carol.amid(), [1; 16], far);
    let r = mailbox::deposit(&mut b, relay_peer, &carol_peer, [2; 16], far, env).await;
    assert!(
        matches!(
            r,
            Err(MailboxError::Refused {
                code: ErrorCode::Forged,
                ..
            })
        ),
        "{r:?}"
    );

    // Bob is a stranger to carol: his share is 5 envelopes.
    for i in 0..5u8 {
        put(&bob, &carol, relay_peer, i, far)
            .await
            .expect("deposit");
    }
    let quota = put(&bob, &carol, relay_peer, 5, far).await;
    assert!(
        matches!(
            quota,
            Err(MailboxError::Refused {
                code: ErrorCode::SenderQuota,
                ..
            })
        ),
        "{quota:?}"
    );
    // Carol names bob (only carol may): his share grows to 50.
    let mut a = alice.stream_control();
    let theft = mailbox::name_senders(&mut a, relay_peer, &carol_peer, &[bob_peer]).await;
    assert!(
        matches!(
            theft,
            Err(MailboxError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "{theft:?}"
    );
    let kept = mailbox::name_senders(&mut c, relay_peer, &carol_peer, &[bob_peer])
        .await
        .unwrap();
    assert_eq!(kept, 1);
    for i in 5..50u8 {
        put(&bob, &carol, relay_peer, i, far)
            .await
            .expect("deposit");
    }
    let quota = put(&bob, &carol, relay_peer, 50, far).await;
    assert!(
        matches!(
            quota,
            Err(MailboxError::Refused {
                code: ErrorCode::SenderQuota,
                ..
            })
        ),
        "{quota:?}"
    );
    // Bob has made 50 deposits this minute; 45 more to alice's mailbox
    // (alice names him too) and 5 to his own make 100, then a flood stops
    // here, although alice's mailbox has room for him.
    mailbox::name_senders(
        &mut a,
        relay_peer,
        &alice.amid().peer_id().unwrap(),
        &[bob_peer],
    )
    .await
    .unwrap();
    for i in 100..145u8 {
        put(&bob, &alice, relay_peer, i, far)
            .await
            .expect("deposit");
    }
    for i in 200..205u8 {
        put(&bob, &bob, relay_peer, i, far).await.expect("deposit");
    }
    let flood = put(&bob, &alice, relay_peer, 145, far).await;
    assert!(
        matches!(
            flood,
            Err(MailboxError::Refused {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(_),
                ..
            })
        ),
        "{flood:?}"
    );
    // Already expired: refused. Expiring soon: never delivered.
    let past = now_ms() - 1;
    let expired = mailbox::deposit(
        &mut c,
        relay_peer,
        &bob_peer,
        [1; 16],
        past,
        sealed(&carol, &bob.amid(), [1; 16], past),
    )
    .await;
    assert!(matches!(
        expired,
        Err(MailboxError::Refused {
            code: ErrorCode::Expired,
            ..
        })
    ));
    let soon = now_ms() + 1_500;
    mailbox::deposit(
        &mut c,
        relay_peer,
        &bob_peer,
        [2; 16],
        soon,
        sealed(&carol, &bob.amid(), [2; 16], soon),
    )
    .await
    .unwrap();
    mailbox::deposit(
        &mut c,
        relay_peer,
        &bob_peer,
        [3; 16],
        far,
        sealed(&carol, &bob.amid(), [3; 16], far),
    )
    .await
    .unwrap();
    // Wait until the short one has expired (a clock, not a race).
    while now_ms() <= soon {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (items, more) = mailbox::fetch(&mut b, relay_peer, &bob_peer, 50)
        .await
        .unwrap();
    assert!(!more);
    let mut want: Vec<[u8; 16]> = (200..205u8).map(|i| [i; 16]).collect();
    want.push([3; 16]);
    assert_eq!(items.iter().map(|i| i.id).collect::<Vec<_>>(), want);
    // Bob cannot read carol's mail, nor ack it away.
    let theft = mailbox::fetch(&mut b, relay_peer, &carol_peer, 50).await;
    assert!(
        matches!(
            theft,
            Err(MailboxError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "{theft:?}"
    );
    let wipe = mailbox::ack(&mut b, relay_peer, &carol_peer, &[[0; 16]]).await;
    assert!(matches!(
        wipe,
        Err(MailboxError::Refused {
            code: ErrorCode::Forbidden,
            ..
        })
    ));
    // Acking an unknown id says so.
    let (removed, unknown) = mailbox::ack(&mut b, relay_peer, &bob_peer, &[[3; 16], [9; 16]])
        .await
        .unwrap();
    assert_eq!((removed, unknown), (1, vec![[9; 16]]));

    // Real sealed messages for an offline agent: the relay keeps only
    // ciphertext. Dave has a session with alice, lists the relay, goes away.
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c.relays = vec![relay_ma.clone()];
    let dave = Node::builder(c)
        .data_dir(root.path().join("dave"))
        .passphrase(Passphrase::new("dave"))
        .bootstrap(boot_addr.parse().unwrap())
        .spawn()
        .await
        .unwrap();
    assert!(dave.wait_published(WAIT).await);
    let dave_amid = dave.amid();
    alice.send(&dave_amid, json!("first")).await.unwrap();
    dave.shutdown().await;
    const CANARY: &str = "plaintext-canary-5d1f0c";
    let mut deposited = Vec::new();
    for _ in 0..3 {
        let r = alice
            .send(&dave_amid, json!({ "secret": CANARY }))
            .await
            .unwrap();
        assert_eq!(r.path, PathKind::Mailbox);
        deposited.push(r.id.0);
    }
    // The positive control: the relay holds the three sealed messages, and
    // the search below finds their bytes in its files. Dave's identity,
    // started again with no mailbox of its own (so nothing drains or acks
    // them), reads them back.
    let dave = reopen(root.path(), "dave", &boot_addr).await;
    dave.connect(relay_peer, vec![relay_ma.clone()])
        .await
        .expect("reaches the relay");
    let dave_peer = dave_amid.peer_id().unwrap();
    let (held, more) = mailbox::fetch(&mut dave.stream_control(), relay_peer, &dave_peer, 50)
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(
        held.iter().map(|i| i.id).collect::<Vec<_>>(),
        deposited,
        "the relay holds the three deposits"
    );
    dave.shutdown().await;
    relay.terminate().await.unwrap();

    let files: Vec<(PathBuf, Vec<u8>)> = walk(&relay_dir)
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    let found = |needle: &[u8]| {
        files
            .iter()
            .find(|(_, data)| holds(data, needle))
            .map(|(p, _)| p.display().to_string())
    };
    for item in &held {
        assert!(
            found(&item.envelope).is_some(),
            "the relay's files do not hold the sealed envelope {:?} as stored",
            item.id
        );
    }
    for (form, needle) in canary_forms(CANARY) {
        if let Some(file) = found(&needle) {
            panic!("plaintext ({form}) in {file}");
        }
    }
}

/// Starts `name`'s node again on its data directory, with no mailbox of its
/// own: the database is free once the stopped node's tasks have ended.
async fn reopen(dir: &Path, name: &str, boot: &str) -> Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = Config::local();
        c.kdf = KdfParams::throwaway();
        c.mailbox_relays = 0;
        let started = Node::builder(c)
            .data_dir(dir.join(name))
            .passphrase(Passphrase::new(name))
            .bootstrap(boot.parse().unwrap())
            .spawn()
            .await;
        match started {
            Ok(node) => return node,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("{name} not started again yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{name} does not start again: {e}"),
        }
    }
}

fn holds(data: &[u8], needle: &[u8]) -> bool {
    data.windows(needle.len()).any(|w| w == needle)
}

/// The ways `canary` could sit in a file if something stored it in the
/// clear: raw, as a JSON string and object member, as a CBOR text string,
/// in hex, and in base64 (standard and URL-safe, at each of the three
/// alignments, the characters that depend on the canary alone).
fn canary_forms(canary: &str) -> Vec<(String, Vec<u8>)> {
    let raw = canary.as_bytes();
    let mut cbor = match raw.len() {
        n @ 0..=23 => vec![0x60 | n as u8],
        n @ 24..=255 => vec![0x78, n as u8],
        n => panic!("canary of {n} bytes"),
    };
    cbor.extend_from_slice(raw);
    let mut forms = vec![
        ("raw".to_string(), raw.to_vec()),
        (
            "JSON string".into(),
            serde_json::to_vec(&json!(canary)).unwrap(),
        ),
        (
            "JSON member".into(),
            serde_json::to_vec(&json!({ "secret": canary })).unwrap(),
        ),
        ("CBOR text".into(), cbor),
        ("hex".into(), hex::encode(raw).into_bytes()),
        ("HEX".into(), hex::encode_upper(raw).into_bytes()),
    ];
    for (name, alphabet) in [("base64", B64), ("base64url", B64_URL)] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(raw);
            let encoded = base64(&shifted, alphabet);
            // Characters whose 6 bits all come from the canary.
            let from = (offset * 8).div_ceil(6);
            let to = (offset + raw.len()) * 8 / 6;
            forms.push((
                format!("{name} at offset {offset}"),
                encoded[from..to].to_vec(),
            ));
        }
    }
    forms
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `data` without padding.
fn base64(data: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    out
}

/// The search finds the canary in each form it is looked for, wherever it
/// sits in a larger blob: the check above can fail.
#[test]
fn canary_forms_are_found_where_the_canary_is_stored_in_the_clear() {
    const CANARY: &str = "plaintext-canary-5d1f0c";
    let forms = canary_forms(CANARY);
    let found = |blob: &[u8]| forms.iter().any(|(_, f)| holds(blob, f));
    for pad in 0..6usize {
        let mut blob = vec![b'x'; pad];
        blob.extend_from_slice(CANARY.as_bytes());
        blob.extend_from_slice(b"!?");
        for (alphabet, what) in [(B64, "base64"), (B64_URL, "base64url")] {
            assert!(found(&base64(&blob, alphabet)), "{what}, pad {pad}");
        }
        assert!(found(hex::encode(&blob).as_bytes()), "hex, pad {pad}");
        assert!(found(hex::encode_upper(&blob).as_bytes()), "HEX, pad {pad}");
    }
    let json = serde_json::to_vec(&json!({ "payload": { "secret": CANARY } })).unwrap();
    assert!(found(&json));
    assert!(!found(b"plaintext-canary-5d1f0d and more"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Bob, with a session with alice and his mailbox at a relay, gone offline
/// (alice's hello to him handled and acknowledged first).
struct OfflineBob {
    _boot: Proc,
    boot_addr: String,
    relay: Proc,
    relay_addrs: Vec<String>,
    relay_dir: PathBuf,
    bob_args: Vec<String>,
    bob_dir: PathBuf,
    bob_amid: String,
    alice: Proc,
}

async fn offline_bob(root: &Path) -> OfflineBob {
    let (boot, boot_addr) = start_bootstrap(exe(), &root.join("boot")).await.unwrap();
    let relay_dir = root.join("relay");
    let (relay, relay_addrs) = start_relay(exe(), &relay_dir, &boot_addr, &[], &status_often())
        .await
        .unwrap();
    let bob_args = vec!["--relay".to_string(), relay_addrs[0].clone()];
    let bob_dir = root.join("bob");
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
        .await
        .unwrap();
    let (mut alice, _) = start_agent(exe(), "alice", &root.join("alice"), &boot_addr, &[])
        .await
        .unwrap();
    let r = send(&alice.dir, &bob_amid, json!("hello")).await;
    assert!(r.ok, "{r:?}");
    let hello = bob.wait_event(WAIT, "message").await.unwrap();
    // What alice printed of the KNOCK is behind us.
    alice
        .wait_for(WAIT, |v| {
            v["event"] == "delivered" && v["id"] == hello["id"]
        })
        .await
        .unwrap();
    alice.drain();
    let mut api = agentmesh_node::control::Client::connect(&bob.dir)
        .await
        .unwrap();
    api.call(
        agentmesh_node::control::Method::POST,
        "/v1/messages/ack",
        Some(&json!({ "ids": [hello["id"]] })),
    )
    .await
    .unwrap()
    .unwrap();
    bob.terminate().await.unwrap();
    OfflineBob {
        _boot: boot,
        boot_addr,
        relay,
        relay_addrs,
        relay_dir,
        bob_args,
        bob_dir,
        bob_amid,
        alice,
    }
}

/// Alice's sends to `to`, `at_once` in flight at a time (a new one as each
/// ends) until `count` were sent; payloads `{ "n": first.. }`. Each
/// finished send is signalled on `done` (whether it was deposited). Alice
/// is never killed: every send gets an answer.
async fn flow(
    alice: PathBuf,
    to: String,
    first: usize,
    count: usize,
    at_once: usize,
    done: Option<tokio::sync::mpsc::Sender<bool>>,
) -> Vec<Response> {
    let mut sends = tokio::task::JoinSet::new();
    let mut next = first;
    let mut results = Vec::new();
    loop {
        while sends.len() < at_once && next < first + count {
            let (dir, to) = (alice.clone(), to.clone());
            let n = next;
            sends.spawn(async move { control_send(&dir, &to, json!({ "n": n }), WAIT).await });
            next += 1;
        }
        let Some(r) = sends.join_next().await else {
            return results;
        };
        let r = r.expect("send task").expect("control request");
        if let Some(done) = &done {
            // One message per send, as deep as there are sends.
            let _ = done.send(r.ok).await;
        }
        results.push(r);
    }
}

/// The ids of the sends of `results` that were deposited (each to bob's
/// mailbox, on the session opened before: no KNOCK); every other one
/// failed visibly, with its reason.
fn deposited_of(results: &[Response], seed: u64) -> Vec<String> {
    let mut deposited = Vec::new();
    for r in results {
        if r.ok {
            let receipt = r.receipt.as_ref().expect("receipt");
            assert_eq!(receipt.path, PathKind::Mailbox, "seed {seed}: {r:?}");
            assert!(!receipt.knocked, "seed {seed}: a new KNOCK: {r:?}");
            deposited.push(receipt.id.to_string());
        } else {
            assert!(r.error.is_some(), "seed {seed}: {r:?}");
        }
    }
    deposited
}

/// Waits until the relay's status counts envelopes that satisfy `held`,
/// then forgets its earlier lines: a later count of 0 is news.
async fn wait_held(relay: &mut Proc, held: impl Fn(u64) -> bool) {
    relay
        .wait_for(WAIT, |v| {
            v["event"] == "relay_status" && v["envelopes"].as_u64().is_some_and(&held)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: the relay holds {:?}",
                relay.last_event("relay_status")
            )
        });
    relay.clear_backlog();
}

/// Nothing in `lines` (what bob or alice printed) shows an envelope
/// refused (a reused message key shows as one bob cannot decrypt:
/// `decrypt_failed`), a message rejected by its recipient, or a session
/// that needed a new KNOCK.
fn assert_clean(lines: &[Value], seed: u64) {
    let bad: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            matches!(
                v["event"].as_str(),
                Some("refused" | "rejected" | "knock_decided")
            ) || (v["event"] == "delivered" && v["knocked"] == true)
        })
        .collect();
    assert!(bad.is_empty(), "seed {seed}: {bad:?}");
}

/// Alice learns that each of `ids` was delivered from the mailbox (bob's
/// receipt, sent once the mail is on his disk), without a KNOCK.
async fn wait_delivered(alice: &mut Proc, ids: &[String], seed: u64) {
    for id in ids {
        let d = alice
            .wait_for(WAIT, |v| {
                v["event"] == "delivered" && v["id"] == id.as_str() && v["path"] == "mailbox"
            })
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: no receipt for {id}: {e}"));
        assert_eq!(d["knocked"], false, "seed {seed}: {d}");
    }
}

/// Bob's process, started on his data directory and not waited for (the
/// drain of his mailbox may begin before his card is published).
fn spawn_bob(dir: &Path, boot_addr: &str, extra: &[String]) -> Proc {
    let mut args = vec![
        "agent".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--bootstrap".into(),
        boot_addr.to_owned(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn("bob", exe(), &args, dir).expect("bob starts")
}

/// What the relay holds and what bob's inbox hands out, for a failure.
async fn diagnosis(relay: &mut Proc, bob_dir: &Path) -> String {
    let relay_lines = relay.drain();
    let status = relay_lines
        .iter()
        .rev()
        .find(|v| v["event"] == "relay_status");
    let inbox = match agentmesh_node::control::Client::connect(bob_dir).await {
        Ok(mut api) => format!(
            "{:?}",
            api.call(
                agentmesh_node::control::Method::GET,
                "/v1/messages?max=64",
                None
            )
            .await
        ),
        Err(e) => format!("no API: {e}"),
    };
    format!("relay status {status:?}; bob's inbox: {inbox}")
}

/// The addresses to start a relay on again: `addrs` without the peer id.
fn listen_of(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .map(|a| a.split("/p2p/").next().unwrap().to_string())
        .collect()
}

/// Messages per round in the loops below: within alice's share of bob's
/// mailbox (50 envelopes for a peer with a session), which he empties
/// each round.
const MAIL: usize = 40;
/// Sends in flight at once.
const AT_ONCE: usize = 8;

/// Bob is killed with SIGKILL at a random moment after he starts on a
/// mailbox of 40 messages (the drain before, under way or done), and
/// started again, round after round, while his application reads and
/// acknowledges his inbox through the local API: every message alice
/// deposited reaches the application, nothing it acknowledged is handed to
/// it again, no message is printed twice by the two runs of bob, nothing is
/// refused, no session needs a new KNOCK, and the relay is left holding
/// none. (Alice's receipts are best effort: one bob was killed before
/// sending is not sent again, so they are not counted here.)
///
/// `AGENTMESH_KILL_ROUNDS` (default 3) and `AGENTMESH_KILL_SEED` choose the
/// rounds and their moments (see [`support::schedule`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_at_random_moments_mid_drain_gets_all_its_mail_once() {
    /// The kill comes 0 to this many µs after bob printed `started`: on a
    /// 2-core machine he is connected to the relay 65-110 ms after it, and
    /// has the 40 messages on disk and printed 100-150 ms after it.
    const MOST_DELAY_US: u64 = 300_000;
    let (rounds, seed, mut rng) = support::schedule("agent kill loop (mid-drain)", 3);
    let root = tempfile::tempdir().unwrap();
    let OfflineBob {
        _boot,
        boot_addr,
        mut relay,
        relay_addrs,
        relay_dir,
        bob_args,
        bob_dir,
        bob_amid,
        mut alice,
    } = offline_bob(root.path()).await;
    let listen = listen_of(&relay_addrs);

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(AppLog::default()));
    let app = tokio::spawn(application(bob_dir.clone(), log.clone(), stop.clone()));
    let mut printed: HashMap<String, usize> = HashMap::new();
    let mut expected = Vec::new();
    let mut printed_before_kill = Vec::new();
    for round in 0..rounds as usize {
        // Bob is offline: alice's mail goes to his mailbox.
        let results = flow(
            alice.dir.clone(),
            bob_amid.clone(),
            round * MAIL,
            MAIL,
            AT_ONCE,
            None,
        )
        .await;
        let ids = deposited_of(&results, seed);
        assert_eq!(ids.len(), MAIL, "seed {seed}: all deposited");
        wait_held(&mut relay, |n| n == MAIL as u64).await;

        // Bob comes back and is killed at a moment drawn from the seed.
        let at = Duration::from_micros(rng.random_range(0..=MOST_DELAY_US));
        let mut bob = spawn_bob(&bob_dir, &boot_addr, &bob_args);
        bob.wait_event(WAIT, "started")
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: bob starts: {e}"));
        tokio::time::sleep(at).await;
        bob.signal(libc::SIGKILL).unwrap();
        let _ = bob.wait_for(WAIT, |_| false).await;
        let mut lines = bob.drain();
        drop(bob);
        let before = lines.iter().filter(|v| v["event"] == "message").count();
        eprintln!("round {round}: bob killed {at:?} after starting, {before} of {MAIL} printed");

        // Started again: whatever the relay still held is fetched again,
        // and what bob had already stored is not handed out twice.
        let (mut bob, _) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: bob restarts: {e}"));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let missing = log.lock().unwrap().missing(&ids);
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let first: Vec<&Value> = lines.iter().filter(|v| v["event"] != "message").collect();
                panic!(
                    "seed {seed}, round {round}: {} deposited messages never reached bob's application: {missing:?}\n\
                     the first run printed {first:?}\nthe second {:?}\n{}",
                    missing.len(),
                    bob.drain(),
                    diagnosis(&mut relay, &bob_dir).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lines.extend(arrived(&mut relay, &alice, &mut bob, &bob_amid).await);
        bob.terminate().await.unwrap();
        assert_clean(&lines, seed);
        assert_clean(&alice.drain(), seed);
        for v in lines.iter().filter(|v| v["event"] == "message") {
            *printed
                .entry(v["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        // Printed by the second run: fetched again from the relay, as the
        // first had not stored them.
        let after = lines.iter().filter(|v| v["event"] == "message").count() - before;
        eprintln!("round {round}: {after} printed by the next run");
        printed_before_kill.push(before);
        expected.extend(ids);
        // A new relay process for the next round: its limit on deposits
        // from one sender (100 a minute) starts again.
        relay.terminate().await.unwrap();
        let again;
        (relay, again) = start_relay(exe(), &relay_dir, &boot_addr, &listen, &status_often())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the relay restarts: {e}"));
        assert_eq!(again[0], relay_addrs[0], "same identity and address");
    }
    stop.store(true, Ordering::SeqCst);
    app.await.unwrap();

    let twice: Vec<_> = printed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seed {seed}: printed twice: {twice:?}");
    let l = log.lock().unwrap();
    assert!(l.violations.is_empty(), "seed {seed}: {:?}", l.violations);
    assert!(l.missing(&expected).is_empty());
    eprintln!(
        "agent kill loop (mid-drain): {} messages deposited, all handed to bob's application ({} acknowledged with the node's confirmation) over {} connections, 0 handed out again after a confirmed acknowledgement; printed before each kill: {printed_before_kill:?}",
        expected.len(),
        l.confirmed.len(),
        l.connections
    );
}

/// The relay is killed with SIGKILL at a random moment while alice's
/// deposits for offline bob flow (8 in flight; after 1 to 32 were
/// acknowledged, then 0 to 50 ms later) and started again on the same
/// addresses; bob then comes online and drains his mailbox, and goes
/// offline again for the next round. Every message alice was told is
/// deposited reaches bob once, every other send fails visibly (no message
/// is lost without a word, none arrives twice), alice gets a receipt for
/// each deposited one, nothing is refused and no session needs a new
/// KNOCK.
///
/// `AGENTMESH_KILL_ROUNDS` (default 3) and `AGENTMESH_KILL_SEED` choose the
/// rounds and their moments (see [`support::schedule`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_at_random_moments_mid_deposit_loses_no_deposited_message() {
    const MOST_DELAY_MS: u64 = 50;
    let (rounds, seed, mut rng) = support::schedule("relay kill loop (mid-deposit)", 3);
    let root = tempfile::tempdir().unwrap();
    let OfflineBob {
        _boot,
        boot_addr,
        mut relay,
        relay_addrs,
        relay_dir,
        bob_args,
        bob_dir,
        bob_amid,
        mut alice,
    } = offline_bob(root.path()).await;
    let listen = listen_of(&relay_addrs);

    let mut printed: HashMap<String, usize> = HashMap::new();
    let (mut deposited_total, mut failed_total) = (0, 0);
    for round in 0..rounds as usize {
        let kill_after = rng.random_range(1..=MAIL - AT_ONCE);
        let delay = Duration::from_millis(rng.random_range(0..=MOST_DELAY_MS));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(MAIL);
        let sender = tokio::spawn(flow(
            alice.dir.clone(),
            bob_amid.clone(),
            round * MAIL,
            MAIL,
            AT_ONCE,
            Some(done_tx),
        ));
        let mut acked = 0;
        while acked < kill_after {
            if done_rx.recv().await.expect("a deposit finished") {
                acked += 1;
            }
        }
        tokio::time::sleep(delay).await;
        relay.kill().await.unwrap();
        let again;
        (relay, again) = start_relay(exe(), &relay_dir, &boot_addr, &listen, &status_often())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the relay restarts: {e}"));
        assert_eq!(again[0], relay_addrs[0], "same identity and address");

        let results = tokio::time::timeout(WAIT * 3, sender)
            .await
            .expect("alice's sends finished")
            .unwrap();
        assert_eq!(results.len(), MAIL);
        let deposited = deposited_of(&results, seed);
        eprintln!(
            "round {round}: relay killed {delay:?} after deposit {kill_after}; {} of {MAIL} deposited, the others failed visibly",
            deposited.len()
        );
        assert!(deposited.len() >= kill_after, "seed {seed}");

        let (mut bob, _) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: bob starts: {e}"));
        let mut lines = Vec::new();
        for id in &deposited {
            let m = bob
                .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: deposited message {id} lost: {e}"));
            lines.push(m);
        }
        wait_delivered(&mut alice, &deposited, seed).await;
        lines.extend(arrived(&mut relay, &alice, &mut bob, &bob_amid).await);
        bob.terminate().await.unwrap();
        assert_clean(&lines, seed);
        assert_clean(&alice.drain(), seed);
        for v in lines.iter().filter(|v| v["event"] == "message") {
            *printed
                .entry(v["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        deposited_total += deposited.len();
        failed_total += MAIL - deposited.len();
    }
    let twice: Vec<_> = printed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seed {seed}: delivered twice: {twice:?}");
    eprintln!(
        "relay kill loop (mid-deposit): {deposited_total} deposited, all delivered once; {failed_total} failed visibly"
    );
}
