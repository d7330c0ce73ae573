//! Relay figures, side by side with their baselines. Prints plain figures.
//!
//! Run with `cargo bench -p agentmesh-node --bench relay`. Environment:
//! `AGENTMESH_BENCH_ENVELOPES` (default 2000) and `AGENTMESH_BENCH_MESSAGES`
//! (default 5000).
//!
//! 1. **mailbox**: a relay node and a depositor node in this process, on
//!    loopback QUIC and on-disk sled. The depositor deposits N sealed-size
//!    (1 KiB) envelopes one request at a time (each on the relay's disk
//!    before it answers), then the recipient fetches them 50 at a time and
//!    acks each batch (each ack on disk before it answers). Baseline: the
//!    same deposits, fetches and acks on the bare `MailboxStore`, flushed the
//!    same way, without the network.
//! 2. **circuit vs direct**: alice sends N 1 KiB messages (`send_nowait`) to
//!    bob once when bob is public (direct QUIC) and once when bob is private
//!    (listening only through the relay: a relayed circuit); the time is
//!    from the first send to bob having read the N-th message.

use std::time::{Duration, Instant};

use agentmesh_node::crypto::envelope::{
    EnvelopeBody, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION,
};
use agentmesh_node::{
    crypto::keystore::KdfParams, Config, Node, NodeEvent, Passphrase, PathKind, Reachability,
};
use agentmesh_relay::{
    mailbox::{self, MailboxStore},
    MailboxLimits, RelayConfig, RelayPlugin,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(120);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> Config {
    let mut c = Config::local();
    c.kdf = KdfParams::throwaway();
    c.delivery_timeout = Duration::from_secs(600);
    c.policy.rate.messages_per_minute = u32::MAX / 2;
    c
}

async fn start(
    dir: &std::path::Path,
    name: &str,
    c: Config,
    boot: &[agentmesh_node::Multiaddr],
) -> Result<Node, Error> {
    start_with(dir, name, Node::builder(c), boot).await
}

async fn start_with(
    dir: &std::path::Path,
    name: &str,
    builder: agentmesh_node::NodeBuilder,
    boot: &[agentmesh_node::Multiaddr],
) -> Result<Node, Error> {
    let node = builder
        .data_dir(dir.join(name))
        .passphrase(Passphrase::new(name))
        .bootstraps(boot.iter().cloned())
        .spawn()
        .await?;
    Ok(node)
}

fn far() -> u64 {
    agentmesh_dht::now_ms() + 3_600_000
}

fn limits() -> MailboxLimits {
    MailboxLimits {
        max_per_recipient: usize::MAX,
        deposits_per_minute: u32::MAX,
        stranger_share: usize::MAX,
        strangers_total: usize::MAX,
        max_bytes_per_recipient: u64::MAX,
        max_total_bytes: u64::MAX,
        ..MailboxLimits::default()
    }
}

async fn bare_store(n: usize, dir: &std::path::Path) -> Result<(f64, f64), Error> {
    let db = sled::open(dir.join("bare"))?;
    let store = MailboxStore::open(&db, limits())?;
    let (from, to) = (
        agentmesh_node::PeerId::random(),
        agentmesh_node::PeerId::random(),
    );
    let envelope = vec![7u8; 1024];
    let t = Instant::now();
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        store.deposit(
            &from,
            &to.to_bytes(),
            id,
            far(),
            &envelope,
            agentmesh_dht::now_ms(),
        )?;
        store.flush().await?;
    }
    let deposit = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    loop {
        let (items, _) = store.fetch(&to, 50, agentmesh_dht::now_ms())?;
        if items.is_empty() {
            break;
        }
        let ids: Vec<[u8; 16]> = items.iter().map(|i| i.id).collect();
        store.ack(&to, &ids)?;
        store.flush().await?;
    }
    Ok((deposit, n as f64 / t.elapsed().as_secs_f64()))
}

async fn over_network(n: usize, dir: &std::path::Path) -> Result<(f64, f64), Error> {
    let rc = Node::builder(config()).plugin(RelayPlugin::new(RelayConfig {
        mailbox: limits(),
        ..RelayConfig::default()
    }));
    let relay = start_with(dir, "relay", rc, &[]).await?;
    let relay_addrs = relay.wait_listening(2, WAIT).await;
    let mut c = config();
    c.mailbox_relays = 0;
    let sender = start(dir, "sender", c.clone(), &[]).await?;
    let recipient = start(dir, "recipient", c, &[]).await?;
    let relay_peer = relay.amid().peer_id()?;
    sender.connect(relay_peer, relay_addrs.clone()).await?;
    recipient.connect(relay_peer, relay_addrs).await?;
    let me = recipient.amid().peer_id()?;
    let (mut s, mut r) = (sender.stream_control(), recipient.stream_control());
    let t = Instant::now();
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let expires_ms = far();
        let envelope = SignedEnvelope::seal(
            sender.identity(),
            &EnvelopeBody {
                v: ENVELOPE_VERSION,
                id: MessageId(id),
                from: sender.amid(),
                to: recipient.amid(),
                session: SessionId([0; 16]),
                seq: i as u64,
                ts_ms: agentmesh_dht::now_ms(),
                expires_ms,
                olm_type: 1,
                ciphertext: vec![7u8; 1024],
            },
        )?
        .to_bytes();
        mailbox::deposit(&mut s, relay_peer, &me, id, expires_ms, envelope).await?;
    }
    let deposit = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        let (items, _) = mailbox::fetch(&mut r, relay_peer, &me, 50).await?;
        if items.is_empty() {
            break;
        }
        got += items.len();
        let ids: Vec<[u8; 16]> = items.iter().map(|i| i.id).collect();
        mailbox::ack(&mut r, relay_peer, &me, &ids).await?;
    }
    assert_eq!(got, n, "every envelope came back");
    let drain = n as f64 / t.elapsed().as_secs_f64();
    for node in [sender, recipient, relay] {
        node.shutdown().await;
    }
    Ok((deposit, drain))
}

async fn rate(n: usize, dir: &std::path::Path, private: bool) -> Result<(f64, PathKind), Error> {
    let tag = if private { "p" } else { "d" };
    let boot = start(dir, &format!("boot-{tag}"), config(), &[]).await?;
    let boot_addrs = boot.wait_listening(2, WAIT).await;
    let rc = Node::builder(config()).plugin(RelayPlugin::new(RelayConfig::default()));
    let relay = start_with(dir, &format!("relay-{tag}"), rc, &boot_addrs).await?;
    let relay_addr = relay.wait_listening(2, WAIT).await[0].clone();
    let mut bc = config();
    bc.relays = vec![relay_addr];
    if private {
        bc.reachability = Reachability::Private;
    }
    let bob = start(dir, &format!("bob-{tag}"), bc, &boot_addrs).await?;
    let mut events = bob.events();
    if private {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(NodeEvent::Listening { addr }) = events.recv().await {
                    if addr.contains("p2p-circuit") {
                        return;
                    }
                }
            }
        })
        .await?;
    }
    if !bob.wait_published(WAIT).await {
        return Err("bob's card not published".into());
    }
    let mut ac = config();
    ac.dht.mode = agentmesh_dht::DhtMode::Client;
    let alice = start(dir, &format!("alice-{tag}"), ac, &boot_addrs).await?;
    let mut inbox = bob.messages().ok_or("inbox")?;
    let warm = alice
        .send(&bob.amid(), serde_json::json!("warm-up"))
        .await?;
    inbox.recv().await;
    let payload = serde_json::Value::String("x".repeat(1022));
    let t = Instant::now();
    // Read while sending: an unread inbox holds back acks, then sends.
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            match tokio::time::timeout(WAIT, inbox.recv()).await {
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
        true
    });
    for _ in 0..n {
        alice.send_nowait(&bob.amid(), payload.clone()).await?;
    }
    if !reader.await? {
        return Err("messages missing".into());
    }
    let r = n as f64 / t.elapsed().as_secs_f64();
    for node in [alice, bob, relay, boot] {
        node.shutdown().await;
    }
    Ok((r, warm.path))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let envelopes = env_usize("AGENTMESH_BENCH_ENVELOPES", 2000);
    let messages = env_usize("AGENTMESH_BENCH_MESSAGES", 5000);
    let dir = tempfile::tempdir()?;

    println!("mailbox, {envelopes} envelopes of 1 KiB, every change on disk before its answer");
    let (bd, bf) = bare_store(envelopes, dir.path()).await?;
    println!("  bare MailboxStore  deposit {bd:>9.0}/s   fetch+ack {bf:>9.0}/s");
    let (nd, nf) = over_network(envelopes, dir.path()).await?;
    println!("  relay over QUIC    deposit {nd:>9.0}/s   fetch+ack {nf:>9.0}/s");
    println!(
        "  round trip (deposit + fetch + ack) {:.0} envelopes/s",
        1.0 / (1.0 / nd + 1.0 / nf)
    );

    println!("messages, {messages} of 1 KiB, alice → bob");
    let (direct, dp) = rate(messages, dir.path(), false).await?;
    println!("  direct   ({dp})  {direct:>9.0} msgs/s");
    let (relayed, rp) = rate(messages, dir.path(), true).await?;
    println!(
        "  circuit  ({rp})  {relayed:>9.0} msgs/s   ({:.0} % of direct)",
        100.0 * relayed / direct
    );
    Ok(())
}
