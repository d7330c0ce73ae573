//! The command line: what each `agentmesh` command takes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use agentmesh_node::{Amid, Multiaddr};

use crate::registry_cli;

#[derive(Parser)]
#[command(
    name = "agentmesh",
    version,
    about = "An AgentMesh agent: P2P, end-to-end encrypted messaging for AI agents"
)]
pub(crate) struct Cli {
    /// Data directory (keystore, database, control socket).
    #[arg(long, global = true, env = "AGENTMESH_HOME")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Evaluate a KNOCK against a policy file locally (a dry run: no
    /// network, no state).
    Check(CheckArgs),
    /// Make the running node read its policy file again.
    Reload,
}

#[derive(Subcommand)]
pub(crate) enum CredentialsCmd {
    /// Make the running node read the credentials `agentmesh verify`
    /// stored again and show them in its KNOCKs.
    Reload,
    /// Make the running node fetch fresh credentials (a new 24 h
    /// reputation attestation) from its registry now (`run --registry`).
    Renew,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Register this agent with a registry (or update its entry); the
    /// request is signed with the agent's key.
    ///
    /// With a node running for the data directory, through its local API:
    /// the node registers with its own registry (`run --registry`), its
    /// relays and, without --capability, the capabilities it runs with.
    /// With none running (or with --direct), straight to --registry.
    Register(RegisterArgs),
    /// Search a registry for agents offering a capability.
    ///
    /// With a node running for the data directory, through its local API
    /// and the node's registry (`run --registry`); with none running (or
    /// with --direct), straight to --registry.
    Search(SearchArgs),
    /// Set this agent's presence at a registry: online, away, dnd or
    /// offline (signed with the agent's key).
    RegistryPresence(PresenceArgs),
    /// Replace this agent's capabilities at a registry.
    Capabilities(CapabilitiesArgs),
    /// Revoke an agent at a registry: this agent itself (a lost or
    /// retired key), or, with `--amid`, an agent of the organization this
    /// agent's key is.
    Revoke(RevokeArgs),
    /// Prove a tier to a registry and store the credentials it issues
    /// (certificate chain, transparency-log proof, reputation attestation)
    /// in the data directory; `agentmesh run` shows them in its KNOCKs.
    /// With neither `--oauth` nor `--org`, fetch them again.
    Verify(VerifyArgs),
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
    /// Print this agent's AMID and fingerprint (and the AMIDs it held
    /// before, if it rotated).
    Id,
    /// Move this agent to a new identity key (with the node stopped): the
    /// old key signs the move, the node publishes it, peers follow.
    RotateKey,
    /// Join the network and run until interrupted.
    Run(Box<RunArgs>),
    /// Check or reload a KNOCK policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Send a JSON payload to an agent through the running node.
    Send(SendArgs),
    /// Send a request and print its reply (a `request_response` session).
    Request(RequestArgs),
    /// Reply to a received request or message (its id as printed by `run`).
    Reply(ReplyArgs),
    /// End the conversation with an agent: an end message after everything
    /// sent before it; both sides then forget the session.
    End {
        /// The agent: an AMID or a petname.
        amid: String,
    },
    /// Send a file as a stream of end-to-end encrypted chunks (the receiver
    /// prints its size and SHA-256 at the end).
    Stream(StreamArgs),
    /// Show sessions, known peers and network state of the running node.
    Status,
    /// Export this agent's signed card, or import another agent's: an
    /// imported card reaches its agent with no DHT.
    #[command(subcommand)]
    Card(crate::contacts::CardCmd),
    /// Known agents: petname, presence (from their last card), last seen,
    /// path and sessions.
    Peers,
    /// Name an agent locally (`agentmesh name bob am…`), or forget a name
    /// (`--rm`); the name is then taken wherever an AMID is. Names are
    /// never published.
    Name(crate::contacts::NameArgs),
    /// List the petnames.
    Names,
    /// Print a one-time link that opens the running node's dashboard in a
    /// browser.
    Dashboard,
    /// Check the running node (listening, DHT, card, reachability,
    /// mailbox, clocks, inbox) and say what to fix.
    Doctor {
        /// Also probe hole punching to this agent: reach it (through a
        /// relay if need be) and wait up to 10 s for a direct connection.
        #[arg(long, value_name = "AMID")]
        punch: Option<Amid>,
    },
    /// Block an agent on the running node.
    Block {
        /// The agent: an AMID or a petname.
        amid: String,
    },
    /// Set this agent's presence: online, away, dnd or offline.
    Presence {
        /// The state.
        state: String,
    },
    /// Look an agent's card up in the DHT (keys, addresses, capabilities,
    /// presence).
    Lookup {
        /// The agent: an AMID or a petname.
        amid: String,
    },
    /// End every session with an agent (both sides forget it).
    Close {
        /// The agent: an AMID or a petname.
        amid: String,
    },
    /// Close every connection to an agent; sessions stay, and the next
    /// message finds a path again.
    Disconnect {
        /// The agent: an AMID or a petname.
        amid: String,
    },
    /// List the session receipts the running node holds (signed by both
    /// sides at the end of a conversation) and whether its registry has
    /// them.
    Receipts,
    /// Reload or renew the credentials the running node shows in KNOCKs.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// List the running node's audit log (metadata only, never content).
    Audit(AuditArgs),
    /// The owner's kill switch: close an agent's sessions at once and block
    /// it, or (`--all`) everyone, until `--clear`.
    Kill(KillArgs),
}

/// Arguments of `run`.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// Bootstrap peer(s), as multiaddrs ending in `/p2p/<peer id>`.
    #[arg(long, env = "AGENTMESH_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Listen address(es). Defaults to QUIC and TCP on 127.0.0.1.
    #[arg(long)]
    pub(crate) listen: Vec<Multiaddr>,
    /// Refuse KNOCKs from this AMID.
    #[arg(long)]
    pub(crate) block: Vec<Amid>,
    /// Accept KNOCKs only from these AMIDs.
    #[arg(long)]
    pub(crate) allow: Vec<Amid>,
    /// Capability to advertise (repeatable). Defaults to
    /// `communication/messaging`.
    #[arg(long)]
    pub(crate) capability: Vec<String>,
    /// Message schemas a capability takes, as `CAPABILITY=SCHEMA`
    /// (repeatable; e.g. `weather/forecast=agentmesh/request@1`): listed in
    /// the card; KNOCKs for the capability must name one, and messages are
    /// checked against it.
    #[arg(long = "accept-schema", value_name = "CAPABILITY=SCHEMA")]
    pub(crate) accept_schema: Vec<String>,
    /// A custom message schema, as `ID=FILE` (repeatable): `ID` is
    /// `x-<namespace>/<name>@<major>`, `FILE` a JSON Schema (draft
    /// 2020-12) that may `$ref` the standard schemas by id.
    #[arg(long = "schema-file", value_name = "ID=FILE")]
    pub(crate) schema_file: Vec<String>,
    /// Policy file (TOML); reloaded on SIGHUP or `agentmesh policy reload`.
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// Relay(s) to keep our mailbox and, when behind a NAT, to listen
    /// through; multiaddrs ending in `/p2p/<relay id>`. Defaults to
    /// relays found in the DHT.
    #[arg(long = "relay", env = "AGENTMESH_RELAYS", value_delimiter = ',')]
    pub(crate) relays: Vec<Multiaddr>,
    /// Not reachable directly (behind a NAT or firewall): listen only
    /// through relays and advertise only relayed addresses. Without
    /// `--private` or `--public`, reachability is learned from peers
    /// (AutoNAT).
    #[arg(long, conflicts_with = "public")]
    pub(crate) private: bool,
    /// Reachable directly: never listen through relays, whatever
    /// peers report.
    #[arg(long)]
    pub(crate) public: bool,
    /// The registry root key (its AMID) that KNOCK certificates,
    /// revocations and reputation attestations are checked against.
    /// Without it every initiator is anonymous.
    #[arg(long, env = "AGENTMESH_REGISTRY_ROOT")]
    pub(crate) registry_root: Option<Amid>,
    /// How a relayed connection becomes direct: `quic` (DCUtR hole
    /// punching), `webrtc` (ICE with STUN, signalled over the relay) or
    /// `both`.
    #[arg(long, default_value = "quic")]
    pub(crate) hole_punch: agentmesh_node::HolePunch,
    /// STUN server(s) for WebRTC, as `host:port` (repeatable).
    #[arg(long = "stun", env = "AGENTMESH_STUN", value_delimiter = ',')]
    pub(crate) stun: Vec<String>,
    /// The registry's node, a multiaddr ending in `/p2p/<peer id>`
    /// (usually the bootstrap node): session receipts are filed with
    /// it, and credentials are fetched from it at start and renewed
    /// every `--credentials-refresh` seconds.
    #[arg(long)]
    pub(crate) registry: Option<Multiaddr>,
    /// Seconds between credential renewals from `--registry`.
    #[arg(long, default_value_t = 6 * 3600)]
    pub(crate) credentials_refresh: u64,
    /// Seconds between revocation syncs with `--registry` (0: none on a
    /// schedule; KNOCKs showing a certificate chain not checked before
    /// are still checked with the registry).
    #[arg(long, default_value_t = 300)]
    pub(crate) revocation_sync: u64,
    /// Loopback address of the local API (port 0: any free port; it is
    /// written to `api.json` in the data directory).
    #[arg(long, env = "AGENTMESH_API", default_value = "127.0.0.1:0")]
    pub(crate) api: std::net::SocketAddr,
    /// Serve the A2A gateway on this loopback address (port 0: any free
    /// port; written to `api.json` as `a2a`).
    #[arg(long, env = "AGENTMESH_A2A")]
    pub(crate) a2a: Option<std::net::SocketAddr>,
    /// Hand A2A requests arriving over the mesh to this A2A server (its
    /// JSON-RPC URL), and carry its answers back.
    #[arg(long, env = "AGENTMESH_A2A_UPSTREAM")]
    pub(crate) a2a_upstream: Option<url::Url>,
    /// Refuse new connections while this process's resident memory is
    /// over this: a share of the system's memory (`90%`), a size
    /// (`512MiB`, `2GB`, bytes) or `off`.
    #[arg(long, env = "AGENTMESH_MAX_MEMORY", default_value = "90%")]
    pub(crate) max_memory: agentmesh_node::MemoryCap,
}

/// Arguments of `send`.
#[derive(Args)]
pub(crate) struct SendArgs {
    /// Recipient: an AMID or a petname (`agentmesh name`).
    pub(crate) to: String,
    /// Payload: JSON, or plain text (sent as {"text": ...}).
    pub(crate) payload: String,
    /// Capability declared in the KNOCK.
    #[arg(long)]
    pub(crate) capability: Option<String>,
    /// Schema the payload follows, e.g. `agentmesh/request@1`: named in
    /// the KNOCK, checked here and by the recipient.
    #[arg(long)]
    pub(crate) schema: Option<String>,
}

/// Arguments of `request`.
#[derive(Args)]
pub(crate) struct RequestArgs {
    /// Recipient: an AMID or a petname (`agentmesh name`).
    pub(crate) to: String,
    /// Payload: JSON, or plain text (sent as {"text": ...}).
    pub(crate) payload: String,
    /// Capability declared in the KNOCK.
    #[arg(long)]
    pub(crate) capability: Option<String>,
    /// Schema the payload follows, e.g. `agentmesh/request@1`.
    #[arg(long)]
    pub(crate) schema: Option<String>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
}

/// Arguments of `reply`.
#[derive(Args)]
pub(crate) struct ReplyArgs {
    /// The agent that sent it (an AMID or a petname).
    pub(crate) to: String,
    /// Its message id.
    pub(crate) id: String,
    /// Payload: JSON, or plain text (sent as {"text": ...}).
    pub(crate) payload: String,
    /// Reply in this session only (as printed by `run --json`); fails
    /// when the conversation has ended.
    #[arg(long)]
    pub(crate) session: Option<String>,
}

/// Arguments of `stream`.
#[derive(Args)]
pub(crate) struct StreamArgs {
    /// Recipient: an AMID or a petname (`agentmesh name`).
    pub(crate) to: String,
    /// The file.
    pub(crate) file: PathBuf,
    /// Bytes per chunk (at most 64 KiB).
    #[arg(long, default_value_t = 16 * 1024)]
    pub(crate) chunk_size: usize,
    /// Capability declared in the KNOCK.
    #[arg(long)]
    pub(crate) capability: Option<String>,
}

/// Arguments of `audit`.
#[derive(Args)]
pub(crate) struct AuditArgs {
    /// Only entries about this AMID.
    #[arg(long)]
    pub(crate) peer: Option<Amid>,
    /// Only entries of this kind, e.g. knock_decision, message_in, kill.
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// Only the most recent N entries.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Verify the whole hash chain (reports the first tampered entry).
    #[arg(long)]
    pub(crate) verify: bool,
}

/// Arguments of `kill`.
#[derive(Args)]
pub(crate) struct KillArgs {
    /// The agent.
    #[arg(required_unless_present_any = ["all", "clear"])]
    pub(crate) amid: Option<String>,
    /// Everyone: refuse all, send nothing (survives restarts).
    #[arg(long, conflicts_with = "amid")]
    pub(crate) all: bool,
    /// Turn the kill switch for everyone off.
    #[arg(long, conflicts_with_all = ["amid", "all"])]
    pub(crate) clear: bool,
}

/// Arguments of `verify`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// Tier 1: sign in with this OAuth provider (the name the registry
    /// is configured with, e.g. `github`).
    #[arg(long, conflicts_with = "org")]
    pub(crate) oauth: Option<String>,
    /// Tier 1.5: prove control of this domain with a DNS TXT record at
    /// `_agentmesh.<domain>`; this agent's key is the organization key.
    #[arg(long)]
    pub(crate) org: Option<String>,
    /// Organization name (with `--org`). Defaults to the domain.
    #[arg(long, requires = "org")]
    pub(crate) org_name: Option<String>,
    /// Follow the provider's redirects here instead of waiting for a
    /// browser (providers that consent without a page).
    #[arg(long, requires = "oauth")]
    pub(crate) follow: bool,
    /// Seconds to wait for the sign-in or the DNS record.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
    #[command(flatten)]
    pub(crate) registry: registry_cli::RegistryArg,
}

/// Arguments of `register`.
#[derive(Args)]
pub(crate) struct RegisterArgs {
    /// Display name. Defaults to `agent-<short AMID>`.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A capability offered (repeat for several).
    #[arg(long = "capability")]
    pub(crate) capabilities: Vec<String>,
    /// A mailbox relay (multiaddr; repeat for several). Only with
    /// --direct, or with no node running: a running node registers the
    /// relays it runs with.
    #[arg(long = "relay")]
    pub(crate) relays: Vec<String>,
    /// Talk to --registry directly even when a node runs for the data
    /// directory.
    #[arg(long)]
    pub(crate) direct: bool,
    #[command(flatten)]
    pub(crate) registry: registry_cli::RegistryArg,
}

/// Arguments of `registry-presence`.
#[derive(Args)]
pub(crate) struct PresenceArgs {
    /// online, away, dnd or offline.
    pub(crate) presence: String,
    #[command(flatten)]
    pub(crate) registry: registry_cli::RegistryArg,
}

/// Arguments of `capabilities`.
#[derive(Args)]
pub(crate) struct CapabilitiesArgs {
    /// The new list, e.g. `chat weather/forecast`.
    #[arg(required = true)]
    pub(crate) capabilities: Vec<String>,
    #[command(flatten)]
    pub(crate) registry: registry_cli::RegistryArg,
}

/// Arguments of `revoke`.
#[derive(Args)]
pub(crate) struct RevokeArgs {
    /// The agent revoked; this agent itself when absent.
    #[arg(long)]
    pub(crate) amid: Option<String>,
    /// Why, for the revocation list.
    #[arg(long)]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) registry: registry_cli::RegistryArg,
}

/// Arguments of `search`.
#[derive(Args)]
pub(crate) struct SearchArgs {
    /// Capability or category, e.g. `weather` or `weather/forecast`.
    pub(crate) capability: String,
    /// Lowest tier: anonymous, verified or organization.
    #[arg(long)]
    pub(crate) tier_min: Option<String>,
    /// Lowest reputation, 0..1.
    #[arg(long)]
    pub(crate) reputation_min: Option<f64>,
    /// At most this many results.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Talk to --registry directly even when a node runs for the data
    /// directory.
    #[arg(long)]
    pub(crate) direct: bool,
    #[command(flatten)]
    pub(crate) registry: registry_cli::RegistryArg,
}

/// Arguments of `check`.
#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The policy file (TOML).
    pub(crate) file: PathBuf,
    /// The initiator. Defaults to a fresh anonymous AMID.
    #[arg(long)]
    pub(crate) from: Option<Amid>,
    /// Capability of the intent.
    #[arg(long, default_value = "communication/messaging")]
    pub(crate) capability: String,
    /// Action of the intent.
    #[arg(long, default_value = "send")]
    pub(crate) action: String,
    /// Tier of the initiator: anonymous, verified or organization.
    #[arg(long, default_value = "anonymous")]
    pub(crate) tier: String,
    /// Registry-attested reputation of the initiator, 0 to 1. Defaults
    /// to none shown.
    #[arg(long)]
    pub(crate) reputation: Option<f64>,
}
