//! The devnet's agents in its registry: each agent is registered with the
//! `chat` capability (a request signed with the agent's own key, read from
//! its keystore), and after the exchange the registry's view of them is
//! printed. The devnet talks to the registry over `/agentmesh/registry/1`
//! from a node of its own.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use agentmesh_node::{
    crypto::keystore::{Keystore, Passphrase, KEYSTORE_FILE},
    registry::{
        protocol::{call, Request, Response},
        Operation, Registration, SignedRequest,
    },
    Config, Multiaddr, Node, PeerId,
};

use crate::process::DEVNET_PASSPHRASE;

/// The capability the devnet's agents register.
pub(super) const CAPABILITY: &str = "chat";
/// How long one attempt waits for the registry's answer.
const ATTEMPT: Duration = Duration::from_secs(20);
/// Attempts per request.
const ATTEMPTS: u32 = 3;

/// A node asking the devnet registry.
pub(super) struct RegistryClient {
    node: Node,
    registry: PeerId,
}

impl RegistryClient {
    /// Starts a node in `dir` joined through the bootstrap at `boot_addr`,
    /// whose registry it asks.
    pub(super) async fn start(dir: &Path, boot_addr: &str) -> Result<Self> {
        let addr: Multiaddr = boot_addr.parse().context("bootstrap address")?;
        let registry: PeerId = boot_addr
            .rsplit("/p2p/")
            .next()
            .context("bootstrap address without /p2p/")?
            .parse()
            .context("bootstrap peer id")?;
        let node = Node::builder(Config::local())
            .data_dir(dir)
            .passphrase(Passphrase::new(DEVNET_PASSPHRASE))
            .bootstrap(addr)
            .spawn()
            .await
            .context("starting the registry client node")?;
        Ok(Self { node, registry })
    }

    /// Asks the registry on a new stream; a stream that breaks or gets no
    /// answer in [`ATTEMPT`] is given up and the request sent again on
    /// another, up to [`ATTEMPTS`] times. A signed request whose first
    /// copy was applied is refused as `replayed` on a later attempt: that
    /// counts as done.
    async fn ask(&self, request: &Request) -> Result<Value> {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let mut control = self.node.stream_control();
            match call(&mut control, self.registry, request, ATTEMPT).await {
                Ok(Response::Ok { body }) => return Ok(body),
                Ok(Response::Error { code, .. }) if code == "replayed" && attempt > 0 => {
                    return Ok(Value::Null)
                }
                Ok(Response::Error { code, message }) => bail!("registry: {code}: {message}"),
                Ok(_) => bail!("registry: unexpected answer"),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "registry request failed; asking again");
                    last = Some(e);
                }
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
            .context("the registry did not answer")
    }

    /// Registers the agent whose data directory is `dir` as `name`.
    pub(super) async fn register(&self, name: &str, dir: &Path) -> Result<()> {
        let bytes = tokio::fs::read(dir.join(KEYSTORE_FILE))
            .await
            .with_context(|| format!("{name}'s keystore"))?;
        let keystore = tokio::task::spawn_blocking(move || {
            Keystore::decrypt(&bytes, &Passphrase::new(DEVNET_PASSPHRASE))
        })
        .await??;
        let op = Operation::Register(Registration::new(name, vec![CAPABILITY.into()]));
        let request = SignedRequest::sign(keystore.identity(), op, now_ms())?;
        self.ask(&Request::Signed { request }).await?;
        Ok(())
    }

    /// Prints each agent's tier and reputation as the registry reports
    /// them, and checks that a search for [`CAPABILITY`] finds them all.
    pub(super) async fn report(&self, agents: &[(&str, &str)]) -> Result<()> {
        println!("devnet: the registry's view");
        println!(
            "{:<6}  {:<10}  {:>10}  {:>8}",
            "agent", "tier", "reputation", "receipts"
        );
        for (name, amid) in agents {
            let amid: agentmesh_node::Amid = amid.parse().context("agent AMID")?;
            let v = self.ask(&Request::Lookup { amid }).await?;
            let evidence = self.ask(&Request::Evidence { amid }).await?;
            println!(
                "{name:<6}  {:<10}  {:>10.3}  {:>8}",
                v["tier"].as_str().unwrap_or("?"),
                v["reputation"].as_f64().unwrap_or(f64::NAN),
                evidence["receipts"].as_array().map_or(0, Vec::len)
            );
        }
        let found = self
            .ask(&Request::Search {
                capability: CAPABILITY.into(),
                tier_min: None,
                reputation_min: None,
                limit: None,
            })
            .await?;
        let results = found["results"].as_array().cloned().unwrap_or_default();
        let missing: Vec<&str> = agents
            .iter()
            .filter(|(_, amid)| !results.iter().any(|r| r["amid"] == *amid))
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            bail!(
                "`agentmesh search {CAPABILITY}` misses {}",
                missing.join(", ")
            );
        }
        println!(
            "devnet: `agentmesh search {CAPABILITY}` finds all {} agents",
            results.len()
        );
        Ok(())
    }

    /// Stops the node.
    pub(super) async fn shutdown(self) {
        self.node.shutdown().await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
