//! `cargo run -p agentmesh-node --example quickstart`
//!
//! Three nodes in one process on loopback: a bootstrap, alice and bob. Bob
//! publishes his card in the DHT; alice knows only his AMID, resolves it,
//! KNOCKs, and sends end-to-end encrypted messages; bob answers.

use std::time::Duration;

use agentmesh_node::{Config, Node, Passphrase};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let start = |name: &'static str, bootstrap: Vec<agentmesh_node::Multiaddr>| {
        Node::builder(Config::local())
            .data_dir(dir.path().join(name))
            .passphrase(Passphrase::new(format!("{name}'s passphrase")))
            .bootstraps(bootstrap)
            .spawn()
    };

    let bootstrap = start("bootstrap", vec![]).await?;
    let boot_addrs = loop {
        let a = bootstrap.listen_addrs().await;
        if !a.is_empty() {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let alice = start("alice", boot_addrs.clone()).await?;
    let bob = start("bob", boot_addrs).await?;
    println!("alice {} ({})", alice.amid(), alice.fingerprint());
    println!("bob   {} ({})", bob.amid(), bob.fingerprint());
    bob.wait_published(Duration::from_secs(30)).await;

    // Bob handles messages as they come.
    let bob_handle = bob.clone();
    bob.on_message(move |msg| {
        println!(
            "bob got {} from {} via {}",
            msg.payload,
            msg.from.short(),
            msg.path
        );
        let (bob, to) = (bob_handle.clone(), msg.from);
        tokio::spawn(async move { bob.send(&to, json!({"text": "hello alice"})).await });
    });
    let mut alice_inbox = alice.messages().expect("first call");

    // Alice knows only bob's AMID.
    let receipt = alice
        .send(&bob.amid(), json!({"text": "hello bob", "task": 42}))
        .await?;
    println!(
        "alice's message delivered via {} (KNOCK: {})",
        receipt.path, receipt.knocked
    );

    let reply = alice_inbox.recv().await.expect("a reply");
    println!("alice got {} from {}", reply.payload, reply.from.short());
    println!("{}", serde_json::to_string_pretty(&alice.status().await)?);
    Ok(())
}
