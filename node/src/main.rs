//! `agentmesh`: run an AgentMesh agent and talk to it.
//!
//! ```text
//! agentmesh init                         create the identity (keystore)
//! agentmesh id                           print AMID and fingerprint
//! agentmesh run --bootstrap <multiaddr>  join the network and serve
//! agentmesh send <AMID> '<json>'         send through the running agent
//! agentmesh request <AMID> '<json>'      send a request, print the reply
//! agentmesh stream <AMID> <file>         send a file as a stream
//! agentmesh status                       sessions, peers, network
//! agentmesh register --name <name>       register with a registry
//! agentmesh search <capability>          find agents in a registry
//! agentmesh verify --oauth <provider>    tier 1: sign in, store credentials
//! agentmesh verify --org <domain>        tier 1.5: DNS TXT challenge
//! agentmesh did <AMID>                   an agent's DID document
//! agentmesh reputation verify <AMID>     recompute a published score
//! ```
//!
//! The keystore passphrase comes from `AGENTMESH_PASSPHRASE` or the file
//! named by `AGENTMESH_PASSPHRASE_FILE`.

mod registry_cli;
mod registry_p2p;
mod verify_cli;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use agentmesh_node::{
    control::{Client, Request, Response},
    keystore::{KdfParams, Keystore},
    knock::{Decision, KnockBody},
    policy::KnockContext,
    receipts::Filing,
    Amid, Config, Identity, Intent, Multiaddr, Node, Passphrase, Policy, Tier,
};

#[derive(Parser)]
#[command(
    name = "agentmesh",
    version,
    about = "An AgentMesh agent: P2P, end-to-end encrypted messaging for AI agents"
)]
struct Cli {
    /// Data directory (keystore, database, control socket).
    #[arg(long, global = true, env = "AGENTMESH_HOME")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Evaluate a KNOCK against a policy file locally (a dry run: no
    /// network, no state).
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// The initiator. Defaults to a fresh anonymous AMID.
        #[arg(long)]
        from: Option<Amid>,
        /// Capability of the intent.
        #[arg(long, default_value = "communication/messaging")]
        capability: String,
        /// Action of the intent.
        #[arg(long, default_value = "send")]
        action: String,
        /// Tier of the initiator: anonymous, verified or organization.
        #[arg(long, default_value = "anonymous")]
        tier: String,
        /// Registry-attested reputation of the initiator, 0 to 1. Defaults
        /// to none shown.
        #[arg(long)]
        reputation: Option<f64>,
    },
    /// Make the running node read its policy file again.
    Reload,
}

#[derive(Subcommand)]
enum CredentialsCmd {
    /// Make the running node read the credentials `agentmesh verify`
    /// stored again and show them in its KNOCKs.
    Reload,
    /// Make the running node fetch fresh credentials (a new 24 h
    /// reputation attestation) from its registry now (`run --registry`).
    Renew,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register this agent with a registry (or update its entry); the
    /// request is signed with the agent's key.
    Register {
        /// Display name. Defaults to `agent-<short AMID>`.
        #[arg(long)]
        name: Option<String>,
        /// A capability offered (repeat for several).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// A mailbox relay (multiaddr; repeat for several).
        #[arg(long = "relay")]
        relays: Vec<String>,
        #[command(flatten)]
        registry: registry_cli::RegistryArg,
    },
    /// Search a registry for agents offering a capability.
    Search {
        /// Capability or category, e.g. `weather` or `weather/forecast`.
        capability: String,
        /// Lowest tier: anonymous, verified or organization.
        #[arg(long)]
        tier_min: Option<String>,
        /// Lowest reputation, 0..1.
        #[arg(long)]
        reputation_min: Option<f64>,
        /// At most this many results.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        registry: registry_cli::RegistryArg,
    },
    /// Prove a tier to a registry and store the credentials it issues
    /// (certificate chain, transparency-log proof, reputation attestation)
    /// in the data directory; `agentmesh run` shows them in its KNOCKs.
    /// With neither `--oauth` nor `--org`, fetch them again.
    Verify {
        /// Tier 1: sign in with this OAuth provider (the name the registry
        /// is configured with, e.g. `github`).
        #[arg(long, conflicts_with = "org")]
        oauth: Option<String>,
        /// Tier 1.5: prove control of this domain with a DNS TXT record at
        /// `_agentmesh.<domain>`; this agent's key is the organization key.
        #[arg(long)]
        org: Option<String>,
        /// Organization name (with `--org`). Defaults to the domain.
        #[arg(long, requires = "org")]
        org_name: Option<String>,
        /// Follow the provider's redirects here instead of waiting for a
        /// browser (providers that consent without a page).
        #[arg(long, requires = "oauth")]
        follow: bool,
        /// Seconds to wait for the sign-in or the DNS record.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        registry: registry_cli::RegistryArg,
    },
    /// Print an agent's DID document (`did:agentmesh:<AMID>`) from a registry.
    Did {
        /// The agent.
        amid: Amid,
        #[command(flatten)]
        registry: registry_cli::RegistryArg,
    },
    /// Reputation published by a registry.
    #[command(subcommand)]
    Reputation(registry_cli::ReputationCmd),
    /// Create the identity in the data directory (if there is none).
    Init,
    /// Print this agent's AMID and fingerprint.
    Id,
    /// Join the network and run until interrupted.
    Run {
        /// Bootstrap peer(s), as multiaddrs ending in `/p2p/<peer id>`.
        #[arg(long, env = "AGENTMESH_BOOTSTRAP", value_delimiter = ',')]
        bootstrap: Vec<Multiaddr>,
        /// Listen address(es). Defaults to QUIC and TCP on 127.0.0.1.
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// Refuse KNOCKs from this AMID.
        #[arg(long)]
        block: Vec<Amid>,
        /// Accept KNOCKs only from these AMIDs.
        #[arg(long)]
        allow: Vec<Amid>,
        /// Capability to advertise (repeatable). Defaults to
        /// `communication/messaging`.
        #[arg(long)]
        capability: Vec<String>,
        /// Policy file (TOML); reloaded on SIGHUP or `agentmesh policy reload`.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Relay(s) to keep our mailbox and, when behind a NAT, to listen
        /// through; multiaddrs ending in `/p2p/<relay id>`. Defaults to
        /// relays found in the DHT.
        #[arg(long = "relay", env = "AGENTMESH_RELAYS", value_delimiter = ',')]
        relays: Vec<Multiaddr>,
        /// Not reachable directly (behind a NAT or firewall): listen only
        /// through relays and advertise only relayed addresses. Without
        /// `--private` or `--public`, reachability is learned from peers
        /// (AutoNAT).
        #[arg(long, conflicts_with = "public")]
        private: bool,
        /// Reachable directly: never listen through relays, whatever
        /// peers report.
        #[arg(long)]
        public: bool,
        /// The registry root key (its AMID) that KNOCK certificates,
        /// revocations and reputation attestations are checked against.
        /// Without it every initiator is anonymous.
        #[arg(long, env = "AGENTMESH_REGISTRY_ROOT")]
        registry_root: Option<Amid>,
        /// How a relayed connection becomes direct: `quic` (DCUtR hole
        /// punching), `webrtc` (ICE with STUN, signalled over the relay) or
        /// `both`.
        #[arg(long, default_value = "quic")]
        hole_punch: agentmesh_node::HolePunch,
        /// STUN server(s) for WebRTC, as `host:port` (repeatable).
        #[arg(long = "stun", env = "AGENTMESH_STUN", value_delimiter = ',')]
        stun: Vec<String>,
        /// The registry's node, a multiaddr ending in `/p2p/<peer id>`
        /// (usually the bootstrap node): session receipts are filed with
        /// it, and credentials are fetched from it at start and renewed
        /// every `--credentials-refresh` seconds.
        #[arg(long)]
        registry: Option<Multiaddr>,
        /// Seconds between credential renewals from `--registry`.
        #[arg(long, default_value_t = 6 * 3600)]
        credentials_refresh: u64,
    },
    /// Check or reload a KNOCK policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Send a JSON payload to an agent through the running node.
    Send {
        /// Recipient AMID.
        to: Amid,
        /// Payload: JSON, or plain text (sent as {"text": ...}).
        payload: String,
        /// Capability declared in the KNOCK.
        #[arg(long)]
        capability: Option<String>,
    },
    /// Send a request and print its reply (a `request_response` session).
    Request {
        /// Recipient AMID.
        to: Amid,
        /// Payload: JSON, or plain text (sent as {"text": ...}).
        payload: String,
        /// Capability declared in the KNOCK.
        #[arg(long)]
        capability: Option<String>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Reply to a received request or message (its id as printed by `run`).
    Reply {
        /// The agent that sent it.
        to: Amid,
        /// Its message id.
        id: String,
        /// Payload: JSON, or plain text (sent as {"text": ...}).
        payload: String,
        /// Reply in this session only (as printed by `run --json`); fails
        /// when the conversation has ended.
        #[arg(long)]
        session: Option<String>,
    },
    /// End the conversation with an agent: an end message after everything
    /// sent before it; both sides then forget the session.
    End {
        /// The agent.
        amid: Amid,
    },
    /// Send a file as a stream of end-to-end encrypted chunks (the receiver
    /// prints its size and SHA-256 at the end).
    Stream {
        /// Recipient AMID.
        to: Amid,
        /// The file.
        file: PathBuf,
        /// Bytes per chunk (at most 64 KiB).
        #[arg(long, default_value_t = 16 * 1024)]
        chunk_size: usize,
        /// Capability declared in the KNOCK.
        #[arg(long)]
        capability: Option<String>,
    },
    /// Show sessions, known peers and network state of the running node.
    Status,
    /// Block an agent on the running node.
    Block {
        /// The AMID.
        amid: Amid,
    },
    /// Set this agent's presence: online, away, dnd or offline.
    Presence {
        /// The state.
        state: String,
    },
    /// Look an agent's card up in the DHT (keys, addresses, capabilities,
    /// presence).
    Lookup {
        /// The agent.
        amid: Amid,
    },
    /// End every session with an agent (both sides forget it).
    Close {
        /// The agent.
        amid: Amid,
    },
    /// Close every connection to an agent; sessions stay, and the next
    /// message finds a path again.
    Disconnect {
        /// The agent.
        amid: Amid,
    },
    /// List the session receipts the running node holds (signed by both
    /// sides at the end of a conversation) and whether its registry has
    /// them.
    Receipts,
    /// Reload or renew the credentials the running node shows in KNOCKs.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// List the running node's audit log (metadata only, never content).
    Audit {
        /// Only entries about this AMID.
        #[arg(long)]
        peer: Option<Amid>,
        /// Only entries of this kind, e.g. knock_decision, message_in, kill.
        #[arg(long)]
        kind: Option<String>,
        /// Only the most recent N entries.
        #[arg(long)]
        limit: Option<usize>,
        /// Verify the whole hash chain (reports the first tampered entry).
        #[arg(long)]
        verify: bool,
    },
    /// The owner's kill switch: close an agent's sessions at once and block
    /// it, or (`--all`) everyone, until `--clear`.
    Kill {
        /// The agent.
        #[arg(required_unless_present_any = ["all", "clear"])]
        amid: Option<Amid>,
        /// Everyone: refuse all, send nothing (survives restarts).
        #[arg(long, conflicts_with = "amid")]
        all: bool,
        /// Turn the kill switch for everyone off.
        #[arg(long, conflicts_with_all = ["amid", "all"])]
        clear: bool,
    },
}

/// The agent's keystore in `dir`.
fn load_keystore(dir: &std::path::Path) -> Result<Keystore> {
    let pass = Passphrase::from_env()?;
    let bytes = std::fs::read(dir.join(agentmesh_node::keystore::KEYSTORE_FILE))
        .with_context(|| format!("no identity in {} (run `agentmesh init`)", dir.display()))?;
    Ok(Keystore::decrypt(&bytes, &pass)?)
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(d) = &cli.data_dir {
        return Ok(d.clone());
    }
    let home = std::env::var_os("HOME").context("no --data-dir and no HOME")?;
    Ok(PathBuf::from(home).join(".agentmesh"))
}

/// Sends `req` to the running node in `dir`; an answer that is not ok
/// becomes the error.
async fn ask(dir: &std::path::Path, req: &Request) -> Result<Response> {
    let resp = Client::connect(dir).await?.request(req).await?;
    if !resp.ok {
        bail!(resp.error.unwrap_or_else(|| "request failed".into()));
    }
    Ok(resp)
}

/// A JSON argument, or plain text as `{"text": ...}`.
fn json_or_text(arg: &str) -> serde_json::Value {
    serde_json::from_str(arg).unwrap_or_else(|_| json!({"text": arg}))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    agentmesh_node::daemon::init_process(cli.json);
    let dir = data_dir(&cli)?;
    match &cli.command {
        Cmd::Init => {
            let pass = Passphrase::from_env()?;
            let (ks, created) = Keystore::load_or_create(&dir, &pass, KdfParams::default())?;
            let amid = ks.identity().amid();
            if cli.json {
                println!(
                    "{}",
                    json!({"amid": amid, "fingerprint": amid.fingerprint(), "created": created})
                );
            } else {
                println!(
                    "{} identity {amid}",
                    if created { "created" } else { "existing" }
                );
                println!("fingerprint {}", amid.fingerprint());
            }
        }
        Cmd::Id => {
            let pass = Passphrase::from_env()?;
            let bytes = std::fs::read(dir.join(agentmesh_node::keystore::KEYSTORE_FILE))
                .with_context(|| {
                    format!("no identity in {} (run `agentmesh init`)", dir.display())
                })?;
            let amid = Keystore::decrypt(&bytes, &pass)?.identity().amid();
            if cli.json {
                println!(
                    "{}",
                    json!({"amid": amid, "fingerprint": amid.fingerprint(), "peer_id": amid.peer_id()?.to_string()})
                );
            } else {
                println!("{amid}\nfingerprint {}", amid.fingerprint());
            }
        }
        Cmd::Run {
            bootstrap,
            listen,
            block,
            allow,
            capability,
            policy,
            relays,
            private,
            public,
            registry_root,
            hole_punch,
            stun,
            registry,
            credentials_refresh,
        } => {
            let mut config = Config::local();
            config.hole_punch = *hole_punch;
            config.stun_servers = stun.clone();
            config.registry_root = registry_root.map(|r| *r.as_bytes());
            config.registry = registry.clone();
            config.credentials_refresh =
                std::time::Duration::from_secs((*credentials_refresh).max(1));
            config.relays = relays.clone();
            if *private {
                config.reachability = agentmesh_node::Reachability::Private;
            }
            if *public {
                config.reachability = agentmesh_node::Reachability::Public;
            }
            if !listen.is_empty() {
                config.transport.listen = listen.clone();
            }
            if !capability.is_empty() {
                config.capabilities = capability.clone();
            }
            config.policy_file = policy.clone();
            config.policy.block.extend(block.iter().copied());
            config.policy.allow.extend(allow.iter().copied());
            let node = Node::builder(config)
                .data_dir(&dir)
                .bootstraps(bootstrap.iter().cloned())
                .spawn()
                .await
                .context("starting node")?;
            // What `agentmesh verify` stored, shown in KNOCKs from the start.
            match node.reload_credentials() {
                Ok(Some(state)) => tracing::info!(%state, "stored credentials loaded"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "stored credentials not shown"),
            }
            agentmesh_node::daemon::serve(node, &dir, cli.json).await?;
        }
        Cmd::Policy(PolicyCmd::Check {
            file,
            from,
            capability,
            action,
            tier,
            reputation,
        }) => {
            let policy = Policy::from_file(file)?;
            let tier: Tier = serde_json::from_value(json!(tier))
                .context("tier: anonymous, verified or organization")?;
            let me = Identity::generate();
            let from = from.unwrap_or_else(|| Identity::generate().amid());
            let now = agentmesh_dht::now_ms();
            let knock = KnockBody {
                from,
                to: me.amid(),
                intent: Intent::new(capability.clone(), action.clone()),
                session: agentmesh_node::envelope::SessionId([0; 16]),
                ts_ms: now,
                nonce: [0; 16],
                first: Vec::new(),
                credentials: Default::default(),
            };
            let ctx = KnockContext {
                tier,
                reputation: reputation.map(agentmesh_node::credentials::Reputation::from_f64),
                ..KnockContext::default()
            };
            let decision = policy.evaluate(&me.amid(), &knock, ctx, now);
            let hash = hex::encode(policy.hash());
            if cli.json {
                println!("{}", json!({"decision": decision, "policy_hash": hash}));
            } else {
                match decision {
                    Decision::Accept { .. } => println!("ACCEPT"),
                    Decision::Reject { reason, .. } => println!("REJECT: {reason}"),
                    _ => println!("{decision:?}"),
                }
                println!("policy {hash}");
            }
        }
        Cmd::Policy(PolicyCmd::Reload) => {
            let resp = ask(&dir, &Request::ReloadPolicy).await?;
            println!("policy reloaded ({})", resp.policy_hash.unwrap_or_default());
        }
        Cmd::Send {
            to,
            payload,
            capability,
        } => {
            let payload = json_or_text(payload);
            let mut client = Client::connect(&dir).await?;
            let resp = client
                .request(&Request::Send {
                    to: to.to_string(),
                    payload,
                    capability: capability.clone(),
                })
                .await?;
            if cli.json {
                println!("{}", serde_json::to_string(&resp)?);
            }
            match (resp.ok, resp.receipt) {
                (true, Some(r)) if !cli.json => {
                    println!(
                        "delivered {} to {} via {}{}",
                        r.id,
                        r.to,
                        r.path,
                        if r.knocked { " (KNOCK accepted)" } else { "" }
                    );
                }
                (true, _) => {}
                (false, _) => bail!(resp.error.unwrap_or_else(|| "send failed".into())),
            }
        }
        Cmd::Request {
            to,
            payload,
            capability,
            timeout,
        } => {
            let req = Request::SendRequest {
                to: to.to_string(),
                payload: json_or_text(payload),
                capability: capability.clone(),
                timeout_ms: Some(timeout.saturating_mul(1000)),
            };
            let resp = ask(&dir, &req).await?;
            let reply = resp.reply.context("no reply in response")?;
            if cli.json {
                println!("{}", serde_json::to_string(&reply)?);
            } else {
                println!("{}", reply.payload);
            }
        }
        Cmd::Reply {
            to,
            id,
            payload,
            session,
        } => {
            let req = Request::Reply {
                to: to.to_string(),
                id: id.clone(),
                session: session.clone(),
                payload: json_or_text(payload),
            };
            let resp = ask(&dir, &req).await?;
            if let Some(r) = resp.receipt {
                if cli.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("delivered {} to {} via {}", r.id, r.to, r.path);
                }
            }
        }
        Cmd::End { amid } => {
            let amid = amid.to_string();
            ask(&dir, &Request::End { amid }).await?;
        }
        Cmd::Stream {
            to,
            file,
            chunk_size,
            capability,
        } => {
            let path =
                std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
            let req = Request::Stream {
                to: to.to_string(),
                path,
                chunk_size: Some(*chunk_size),
                capability: capability.clone(),
            };
            let resp = ask(&dir, &req).await?;
            let (chunks, bytes) = (resp.chunks.unwrap_or(0), resp.bytes.unwrap_or(0));
            if cli.json {
                println!("{}", json!({"chunks": chunks, "bytes": bytes}));
            } else {
                println!("sent {bytes} bytes in {chunks} chunks to {to}");
            }
        }
        Cmd::Status => {
            let resp = ask(&dir, &Request::Status).await?;
            let status = resp.status.context("no status in response")?;
            if cli.json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!("amid         {}", status.amid);
                println!("fingerprint  {}", status.fingerprint);
                for a in &status.net.listen_addrs {
                    println!("listening    {a}");
                }
                println!(
                    "card         {}",
                    if status.net.card_published {
                        "published"
                    } else {
                        "not yet published"
                    }
                );
                println!(
                    "dht          {} peers in routing table, {} records, {:?} mode",
                    status.net.routing_table, status.net.dht_records, status.net.dht_mode
                );
                println!(
                    "reachability {} ({:?} mode)",
                    status.net.nat, status.net.reachability
                );
                for a in &status.net.external_addrs {
                    println!("external     {a}");
                }
                for p in &status.net.connected {
                    match p.addrs.first() {
                        Some(a) => println!("connected    {} via {} at {a}", p.peer, p.path),
                        None => println!("connected    {} via {}", p.peer, p.path),
                    }
                }
                for (kind, c) in &status.net.path_attempts {
                    println!(
                        "paths        {kind}: {} attempts, {} connected, {} failed",
                        c.attempts, c.successes, c.failures
                    );
                }
                for l in &status.net.learned_paths {
                    let last = l.last_ok.map_or("none".to_string(), |k| k.to_string());
                    let failing: Vec<String> = l.failing.iter().map(|k| k.to_string()).collect();
                    println!(
                        "learned      {} first {last}, failing [{}]",
                        l.peer,
                        failing.join(", ")
                    );
                }
                for s in &status.sessions {
                    println!("session      {} with {} ({:?})", s.session, s.peer, s.role);
                }
            }
        }
        Cmd::Audit {
            peer,
            kind,
            limit,
            verify,
        } => {
            let req = Request::Audit {
                peer: peer.map(|p| p.to_string()),
                kind: kind.clone(),
                limit: *limit,
                verify: *verify,
            };
            let resp = ask(&dir, &req).await?;
            let entries = resp.audit.unwrap_or_default();
            if cli.json {
                println!("{}", json!({"entries": entries, "verified": resp.verified}));
            } else {
                for e in &entries {
                    println!(
                        "{:>6}  {}  {}",
                        e.index,
                        e.ts_ms,
                        serde_json::to_string(&e.event)?
                    );
                }
                if let Some(n) = resp.verified {
                    println!("chain verified: {n} entries");
                }
            }
        }
        Cmd::Presence { state } => {
            let state = state.clone();
            ask(&dir, &Request::Presence { state }).await?;
        }
        Cmd::Register {
            name,
            capabilities,
            relays,
            registry,
        } => {
            let ks = load_keystore(&dir)?;
            let name = name
                .clone()
                .unwrap_or_else(|| format!("agent-{}", ks.identity().amid().short()));
            registry_cli::register(
                ks.identity(),
                registry,
                &name,
                capabilities,
                relays,
                cli.json,
            )
            .await?;
        }
        Cmd::Search {
            capability,
            tier_min,
            reputation_min,
            limit,
            registry,
        } => {
            registry_cli::search(
                registry,
                capability,
                tier_min.as_deref(),
                *reputation_min,
                *limit,
                cli.json,
            )
            .await?;
        }
        Cmd::Verify {
            oauth,
            org,
            org_name,
            follow,
            timeout,
            registry,
        } => {
            let ks = load_keystore(&dir)?;
            let method = match (oauth, org) {
                (Some(provider), _) => verify_cli::Method::OAuth {
                    provider,
                    follow: *follow,
                },
                (None, Some(domain)) => verify_cli::Method::Org {
                    domain,
                    name: org_name.as_deref().unwrap_or(domain),
                },
                (None, None) => verify_cli::Method::Refresh,
            };
            verify_cli::verify(
                ks.identity(),
                &dir,
                registry,
                method,
                std::time::Duration::from_secs(*timeout),
                cli.json,
            )
            .await?;
        }
        Cmd::Did { amid, registry } => registry_cli::did(registry, amid).await?,
        Cmd::Reputation(registry_cli::ReputationCmd::Verify { amid, registry }) => {
            registry_cli::reputation(amid, registry, cli.json).await?
        }
        Cmd::Reputation(registry_cli::ReputationCmd::Rate {
            amid,
            session,
            score,
            registry,
        }) => {
            let ks = load_keystore(&dir)?;
            registry_cli::rate(ks.identity(), amid, session, *score, registry, cli.json).await?
        }
        Cmd::Lookup { amid } => {
            let amid = amid.to_string();
            let resp = ask(&dir, &Request::Lookup { amid }).await?;
            let card = resp.card.context("no card in response")?;
            if cli.json {
                println!("{}", serde_json::to_string(&card)?);
            } else {
                println!("amid          {}", card.amid);
                println!("presence      {:?}", card.presence);
                println!("capabilities  {}", card.capabilities.join(", "));
                for a in &card.addrs {
                    println!("address       {a}");
                }
                println!(
                    "prekeys       {} one-time + fallback",
                    card.one_time_keys.len()
                );
            }
        }
        Cmd::Close { amid } => {
            let amid = amid.to_string();
            ask(&dir, &Request::Close { amid }).await?;
        }
        Cmd::Disconnect { amid } => {
            let amid = amid.to_string();
            ask(&dir, &Request::Disconnect { amid }).await?;
        }
        Cmd::Receipts => {
            let receipts = ask(&dir, &Request::Receipts)
                .await?
                .receipts
                .unwrap_or_default();
            if cli.json {
                println!("{}", serde_json::to_string(&receipts)?);
            }
            for held in receipts.iter().filter(|_| !cli.json) {
                let body = held.receipt.verify()?;
                let filing = match &held.filing {
                    Filing::Filed => "filed".to_owned(),
                    Filing::Refused { code } => format!("refused ({code})"),
                    _ => "not filed yet".to_owned(),
                };
                println!(
                    "session {} with {}: {}, {filing}",
                    body.session_id,
                    held.peer,
                    if body.completed {
                        "completed"
                    } else {
                        "not completed"
                    },
                );
            }
        }
        Cmd::Credentials(cmd) => {
            let renew = matches!(cmd, CredentialsCmd::Renew);
            let state = ask(&dir, &Request::Credentials { renew })
                .await?
                .credentials
                .context("no credentials in the answer")?;
            if cli.json {
                println!("{}", serde_json::to_string(&state)?);
            } else {
                println!("showing {state} in KNOCKs");
            }
        }
        Cmd::Kill { amid, all, clear } => {
            let req = if *clear {
                Request::ClearKill
            } else {
                Request::Kill {
                    amid: if *all {
                        None
                    } else {
                        amid.map(|a| a.to_string())
                    },
                }
            };
            ask(&dir, &req).await?;
        }
        Cmd::Block { amid } => {
            let amid = amid.to_string();
            ask(&dir, &Request::Block { amid }).await?;
        }
    }
    Ok(())
}
