//! Hostile peers against real processes: a relay's mailbox cannot be
//! filled by one sender, nor by many fresh identities, so an offline
//! agent's mail from the peers it has sessions with still gets through.

use std::{path::Path, time::Duration};

use agentmesh_node::{
    crypto::envelope::{EnvelopeBody, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION},
    crypto::keystore::KdfParams,
    mailbox::{self, ErrorCode, MailboxError},
    Amid, Config, Multiaddr, Node, Passphrase, PathKind, PeerId,
};
use agentmesh_sim::process::{control_send, start_agent, start_bootstrap, start_relay};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
/// The relay's defaults (`MailboxLimits`): a stranger's share of one
/// recipient's mailbox, and all strangers' together.
const STRANGER_SHARE: usize = 5;
const STRANGERS_TOTAL: usize = 25;
/// Resident memory the relay stays under through the floods.
const RELAY_RSS_BOUND_KIB: u64 = 512 * 1024;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A node that talks to the relay only: no bootstrap, no mailbox of its
/// own, and a DHT client, so the relay's routing table does not fill with
/// peers that are gone once the flood is over.
async fn mallory(dir: &Path, name: &str, relay: PeerId, relay_addr: &Multiaddr) -> Node {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c.mailbox_relays = 0;
    c.dht.mode = agentmesh_dht::DhtMode::Client;
    let node = Node::builder(c)
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .spawn()
        .await
        .expect("node starts");
    node.connect(relay, vec![relay_addr.clone()])
        .await
        .expect("reaches the relay");
    node
}

/// A junk envelope from `from` to `to`, properly signed (the relay checks
/// the signature), that `to` cannot decrypt.
fn junk(from: &Node, to: &Amid, n: u64) -> (MessageId, u64, Vec<u8>) {
    let id = MessageId::random();
    let expires_ms = now_ms() + 3_600_000;
    let env = SignedEnvelope::seal(
        from.identity(),
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id,
            from: from.amid(),
            to: *to,
            session: SessionId([7; 16]),
            seq: n,
            ts_ms: now_ms(),
            expires_ms,
            olm_type: 1,
            ciphertext: vec![0x5a; 4096],
        },
    )
    .unwrap();
    (id, expires_ms, env.to_bytes())
}

/// Deposits junk for `to` until the relay refuses; returns how many it took
/// and the refusal.
async fn fill(node: &Node, relay: PeerId, to: &Amid, most: usize) -> (usize, Option<ErrorCode>) {
    let to_peer = to.peer_id().unwrap();
    let mut control = node.stream_control();
    for n in 0..most {
        let (id, expires_ms, env) = junk(node, to, n as u64);
        match mailbox::deposit(&mut control, relay, &to_peer, id.0, expires_ms, env).await {
            Ok(_) => {}
            Err(MailboxError::Refused { code, .. }) => return (n, Some(code)),
            Err(e) => panic!("deposit failed: {e}"),
        }
    }
    (most, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_deposits_from_one_or_fifty_identities_do_not_silence_an_offline_agent() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(exe(), &root.path().join("boot"))
        .await
        .unwrap();
    let (relay, relay_addrs) = start_relay(exe(), &root.path().join("relay"), &boot_addr, &[], &[])
        .await
        .unwrap();
    let relay_addr = relay_addrs[0].clone();
    let relay_ma: Multiaddr = relay_addr.parse().unwrap();
    let relay_peer: PeerId = relay_addr.rsplit("/p2p/").next().unwrap().parse().unwrap();

    let bob_args = vec!["--relay".to_string(), relay_addr.clone()];
    let bob_dir = root.path().join("bob");
    let (mut bob, bob_amid) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
        .await
        .unwrap();
    let (alice, _) = start_agent(exe(), "alice", &root.path().join("alice"), &boot_addr, &[])
        .await
        .unwrap();
    // A session while bob is online; then he stops, naming alice at his
    // relay as a sender he wants mail from.
    let r = control_send(&alice.dir, &bob_amid, json!("hello"), WAIT)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    bob.wait_for(WAIT, |v| v["event"] == "message")
        .await
        .unwrap();
    bob.terminate().await.unwrap();
    let bob_id: Amid = bob_amid.parse().unwrap();

    // One identity: its share, then a typed refusal.
    let m = mallory(root.path(), "mallory", relay_peer, &relay_ma).await;
    let (taken, refused) = fill(&m, relay_peer, &bob_id, 100).await;
    assert_eq!(taken, STRANGER_SHARE, "one stranger's share");
    assert_eq!(refused, Some(ErrorCode::SenderQuota));
    m.shutdown().await;

    // Fifty fresh identities: together no more than the strangers' part.
    let mut sybil_taken = 0;
    let mut full = 0;
    for i in 0..50 {
        let m = mallory(root.path(), &format!("sybil-{i}"), relay_peer, &relay_ma).await;
        let (taken, refused) = fill(&m, relay_peer, &bob_id, 10).await;
        sybil_taken += taken;
        if refused == Some(ErrorCode::MailboxFull) {
            full += 1;
        }
        m.shutdown().await;
    }
    assert_eq!(
        STRANGER_SHARE + sybil_taken,
        STRANGERS_TOTAL,
        "strangers together fill only their part"
    );
    assert!(full > 0, "later identities were refused as mailbox_full");
    let rss = relay.rss_kib().unwrap();
    assert!(rss < RELAY_RSS_BOUND_KIB, "relay RSS {rss} KiB");

    // Alice's message is still taken, and delivered when bob is back.
    let r = control_send(&alice.dir, &bob_amid, json!({ "after": "flood" }), WAIT)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let receipt = r.receipt.unwrap();
    assert_eq!(receipt.path, PathKind::Mailbox);
    let id = receipt.id.to_string();
    let (mut bob, _) = start_agent(exe(), "bob", &bob_dir, &boot_addr, &bob_args)
        .await
        .unwrap();
    let m = bob
        .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(m["payload"], json!({ "after": "flood" }));
    assert_eq!(m["path"], "mailbox");
}
