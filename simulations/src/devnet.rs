//! `agentmesh-sim devnet`: a whole local network on loopback. One bootstrap
//! (with the registry), one relay and N agents, each a separate process
//! with its own temporary data directory. The last agent is unreachable (no
//! direct address: it listens through the relay). The agents find each
//! other by AMID through the DHT, KNOCK, and exchange encrypted messages;
//! then one agent goes offline, gets mail in its relay mailbox, and fetches
//! it when it comes back. Every delivery is printed with its path.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use agentmesh_node::control::{Client, Request};

use crate::process::{start_agent, start_bootstrap_with_registry, start_relay, Proc};

mod registry;

const NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const WAIT: Duration = Duration::from_secs(60);

/// Options of a devnet run.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Number of agents.
    pub agents: usize,
    /// Exit after the exchange.
    pub once: bool,
    /// Keep data here instead of a temporary directory.
    pub dir: Option<PathBuf>,
}

/// The name of agent `i`.
pub fn agent_name(i: usize) -> String {
    NAMES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("agent{i}"))
}

struct Agent {
    name: String,
    amid: String,
    proc: Proc,
}

/// Runs the devnet. Returns the number of messages delivered.
pub async fn run(opts: DevnetOptions) -> Result<usize> {
    if opts.agents < 2 {
        bail!("a devnet needs at least 2 agents");
    }
    let exe = std::env::current_exe().context("locating agentmesh-sim")?;
    let tmp;
    let root = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("agentmesh-devnet")
                .tempdir()?;
            tmp.path().to_owned()
        }
    };
    println!("devnet: data in {}", root.display());
    let (boot, boot_addr, registry) =
        start_bootstrap_with_registry(&exe, &root.join("bootstrap"), &[]).await?;
    println!("devnet: bootstrap listening on {boot_addr}");
    println!(
        "devnet: registry at {registry}/v1 (try `agentmesh search chat --registry {registry}`)"
    );

    let (relay, relay_addrs) = start_relay(&exe, &root.join("relay"), &boot_addr, &[], &[]).await?;
    let relay_addr = relay_addrs.first().cloned().context("relay address")?;
    println!("devnet: relay listening on {relay_addr}");

    let mut agents = Vec::new();
    for i in 0..opts.agents {
        let name = agent_name(i);
        let args = agent_args(&relay_addr, &boot_addr, i + 1 == opts.agents);
        let (proc, amid) = start_agent(&exe, &name, &root.join(&name), &boot_addr, &args).await?;
        println!(
            "devnet: {name:<6} is {amid} ({})",
            if i + 1 == opts.agents {
                "unreachable: listens through the relay"
            } else {
                "card published in the DHT"
            }
        );
        if let Ok(api) = agentmesh_node::api::ApiInfo::read(&proc.dir) {
            println!(
                "devnet: {name:<6} local API at {} (token in {})",
                api.url.as_deref().unwrap_or("its Unix socket"),
                proc.dir.join(agentmesh_node::api::INFO_FILE).display()
            );
        }
        agents.push(Agent { name, amid, proc });
    }
    let registrar = register_agents(&root, &boot_addr, &agents).await?;

    let n = agents.len();
    let mut delivered = 0;
    // Round 1: each agent greets the next one, knowing only its AMID. The
    // first message to a new peer rides in the KNOCK.
    // Round 2: each answers the greeting in the session it accepted.
    for round in 0..2 {
        for i in 0..n {
            let (from, to) = if round == 0 {
                (i, (i + 1) % n)
            } else {
                ((i + 1) % n, i)
            };
            let text = if round == 0 {
                format!("hello {}, this is {}", agents[to].name, agents[from].name)
            } else {
                format!("hi {}, got your message", agents[to].name)
            };
            let payload = json!({ "text": text });
            if round == 0 && to + 1 == n {
                // The unreachable agent dialled everyone for the DHT; without
                // those connections, the only way to her is the relay.
                disconnect(&agents[from].proc.dir, &agents[to].amid).await?;
                println!(
                    "devnet: {} closes the connections {} opened to it",
                    agents[from].name, agents[to].name
                );
            }
            let mut client = Client::connect(&agents[from].proc.dir).await?;
            let resp = tokio::time::timeout(
                WAIT,
                client.request(&Request::Send {
                    to: agents[to].amid.clone(),
                    payload: payload.clone(),
                    capability: None,
                    schema: None,
                }),
            )
            .await
            .context("send timed out")??;
            let (true, Some(receipt)) = (resp.ok, resp.receipt) else {
                bail!(
                    "{} → {} failed: {}",
                    agents[from].name,
                    agents[to].name,
                    resp.error.unwrap_or_default()
                );
            };
            let id = receipt.id.to_string();
            let got = agents[to]
                .proc
                .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
                .await?;
            if got["payload"] != payload {
                bail!("{} received something else than was sent", agents[to].name);
            }
            delivered += 1;
            println!(
                "{:<6} → {:<6} {}  via {}{}",
                agents[from].name,
                agents[to].name,
                payload,
                receipt.path,
                if receipt.knocked {
                    " (KNOCK accepted, session opened)"
                } else {
                    " (session cached)"
                }
            );
        }
    }

    // Round 3: bob goes offline; alice's message waits in his relay mailbox,
    // sealed, and bob fetches it when he is back.
    let bob = agents.remove(1);
    let bob_args = agent_args(&relay_addr, &boot_addr, n == 2);
    bob.proc.terminate().await?;
    println!("devnet: {} is offline", bob.name);
    let payload = json!({ "text": format!("{}, this waits in your mailbox", bob.name) });
    let mut client = Client::connect(&agents[0].proc.dir).await?;
    let resp = tokio::time::timeout(
        WAIT,
        client.request(&Request::Send {
            to: bob.amid.clone(),
            payload: payload.clone(),
            capability: None,
            schema: None,
        }),
    )
    .await
    .context("send timed out")??;
    let (true, Some(receipt)) = (resp.ok, resp.receipt) else {
        bail!("mailbox deposit failed: {}", resp.error.unwrap_or_default());
    };
    println!(
        "{:<6} → {:<6} {}  via {} (stored at the relay)",
        agents[0].name, bob.name, payload, receipt.path
    );
    let (mut proc, _) = start_agent(
        &exe,
        &bob.name,
        &root.join(&bob.name),
        &boot_addr,
        &bob_args,
    )
    .await?;
    let id = receipt.id.to_string();
    let got = proc
        .wait_for(WAIT, |v| v["event"] == "message" && v["id"] == id.as_str())
        .await?;
    if got["payload"] != payload {
        bail!("{} received something else than was sent", bob.name);
    }
    agents[0]
        .proc
        .wait_for(WAIT, |v| {
            v["event"] == "delivered" && v["id"] == id.as_str()
        })
        .await?;
    delivered += 1;
    println!(
        "{:<6} ← {:<6} fetched from the mailbox on return  via {}; {} got the delivery receipt",
        bob.name,
        agents[0].name,
        got["path"].as_str().unwrap_or("?"),
        agents[0].name
    );
    agents.insert(
        1,
        Agent {
            name: bob.name,
            amid: bob.amid,
            proc,
        },
    );
    println!("devnet: {delivered} messages delivered end-to-end encrypted, each exactly once");
    end_with_receipt(&mut agents).await?;
    report_registry(registrar, &agents).await?;

    if !opts.once {
        if let Some(alice) = agents.first() {
            let link = async {
                let mut c = Client::connect(&alice.proc.dir).await.ok()?;
                let v = c
                    .call(
                        agentmesh_node::control::Method::POST,
                        "/v1/dashboard/link",
                        None,
                    )
                    .await
                    .ok()?
                    .ok()?;
                v["url"].as_str().map(str::to_owned)
            };
            if let Some(url) = link.await {
                println!(
                    "devnet: {}'s dashboard (one-time link, 2 min; another with `agentmesh --data-dir {}/{} dashboard`): {url}",
                    alice.name,
                    root.display(),
                    alice.name
                );
            }
        }
        println!("devnet: running; send with `agentmesh --data-dir {}/alice send <AMID> '<json>'` (Ctrl-C to stop)", root.display());
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    for a in agents.iter_mut() {
                        for v in a.proc.drain() {
                            if v["event"] == "message" {
                                println!("{:<6} ← {}: {}  via {}", a.name, v["from"].as_str().unwrap_or("?"), v["payload"], v["path"].as_str().unwrap_or("?"));
                            }
                        }
                    }
                }
            }
        }
    }
    for a in agents {
        let _ = a.proc.terminate().await;
    }
    let _ = relay.terminate().await;
    let _ = boot.terminate().await;
    Ok(delivered)
}

/// Registers every agent with the devnet registry, with the `chat`
/// capability; returns the client that did.
async fn register_agents(
    root: &Path,
    boot_addr: &str,
    agents: &[Agent],
) -> Result<registry::RegistryClient> {
    let client = registry::RegistryClient::start(&root.join("registrar"), boot_addr).await?;
    for a in agents {
        client
            .register(&a.name, &a.proc.dir)
            .await
            .with_context(|| format!("registering {}", a.name))?;
    }
    println!(
        "devnet: {} agents registered with capability `{}`",
        agents.len(),
        registry::CAPABILITY
    );
    Ok(client)
}

/// Prints the registry's view of the agents (tier, reputation) and checks
/// that searching their capability finds them.
async fn report_registry(client: registry::RegistryClient, agents: &[Agent]) -> Result<()> {
    let list: Vec<(&str, &str)> = agents
        .iter()
        .map(|a| (a.name.as_str(), a.amid.as_str()))
        .collect();
    let report = client.report(&list).await;
    client.shutdown().await;
    report
}

/// alice ends her conversation with bob: both sign the session receipt
/// and file it with the registry.
async fn end_with_receipt(agents: &mut [Agent]) -> Result<()> {
    let [alice, bob, ..] = agents else {
        return Ok(());
    };
    let mut client = Client::connect(&alice.proc.dir).await?;
    let resp = tokio::time::timeout(
        WAIT,
        client.request(&Request::End {
            amid: bob.amid.clone(),
        }),
    )
    .await
    .context("end timed out")??;
    if !resp.ok {
        bail!(
            "ending the conversation: {}",
            resp.error.unwrap_or_default()
        );
    }
    for a in [&mut *alice, &mut *bob] {
        let v = a
            .proc
            .wait_for(WAIT, |v| v["event"] == "receipt_filed")
            .await
            .with_context(|| format!("{}'s receipt filing", a.name))?;
        if v["filing"]["state"] != "filed" {
            bail!(
                "the registry did not take {}'s receipt: {}",
                a.name,
                v["filing"]
            );
        }
    }
    println!(
        "{:<6} ✕ {:<6} conversation ended; the session receipt is signed by both and filed by both",
        alice.name, bob.name
    );
    Ok(())
}

/// Has the agent in `dir` close its connections to `amid` and waits until
/// its status lists none; asks again every second, as the other agent may
/// dial again meanwhile (for the DHT).
async fn disconnect(dir: &Path, amid: &str) -> Result<()> {
    let mut client = Client::connect(dir).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut asked: Option<tokio::time::Instant> = None;
    loop {
        if asked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let resp = client
                .request(&Request::Disconnect { amid: amid.into() })
                .await?;
            if !resp.ok {
                bail!("disconnect: {}", resp.error.unwrap_or_default());
            }
            asked = Some(tokio::time::Instant::now());
        }
        let status = client
            .request(&Request::Status)
            .await?
            .status
            .context("status")?;
        if !status.net.connected.iter().any(|p| p.peer == amid) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the connections to {amid} stayed open");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Arguments of agent processes: every agent keeps its mailbox at the
/// relay and files session receipts with the bootstrap node's registry;
/// an unreachable one also listens through the relay.
fn agent_args(relay: &str, registry: &str, unreachable: bool) -> Vec<String> {
    let mut args = vec![
        "--relay".to_string(),
        relay.to_string(),
        "--registry".to_string(),
        registry.to_string(),
    ];
    if unreachable {
        args.push("--private".into());
    }
    args
}
