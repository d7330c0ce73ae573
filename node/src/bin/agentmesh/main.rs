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
//! agentmesh card export [--out FILE]     this agent's signed card
//! agentmesh card import <FILE|STRING>    reach an agent with no DHT
//! agentmesh peers                        known agents, presence, path
//! agentmesh name <NAME> <AMID>           a local petname (or --rm NAME)
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

mod args;
mod contacts;
mod identity;
mod messaging;
mod owner;
mod registry_cli;
mod registry_cmds;
mod registry_p2p;
mod show;
mod verify_cli;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use args::{Cli, Cmd, PolicyCmd};

use agentmesh_node::{
    control::{Client, Request, Response},
    crypto::keystore::Keystore,
    Passphrase,
};

/// The agent's keystore in `dir`.
pub(crate) fn load_keystore(dir: &std::path::Path) -> Result<Keystore> {
    let pass = Passphrase::from_env()?;
    let bytes = std::fs::read(dir.join(agentmesh_node::crypto::keystore::KEYSTORE_FILE))
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
pub(crate) async fn ask(dir: &std::path::Path, req: &Request) -> Result<Response> {
    let resp = Client::connect(dir).await?.request(req).await?;
    if !resp.ok {
        bail!(resp.error.unwrap_or_else(|| "request failed".into()));
    }
    Ok(resp)
}

/// A JSON argument, or plain text as `{"text": ...}`.
pub(crate) fn json_or_text(arg: &str) -> serde_json::Value {
    serde_json::from_str(arg).unwrap_or_else(|_| json!({"text": arg}))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    agentmesh_node::daemon::init_process(cli.json);
    let dir = data_dir(&cli)?;
    let json = cli.json;
    match &cli.command {
        Cmd::Init => identity::init(&dir, json),
        Cmd::Id => identity::id(&dir, json),
        Cmd::RotateKey => identity::rotate_key(&dir, json),
        Cmd::Run(a) => identity::run(&dir, json, a).await,
        Cmd::Policy(PolicyCmd::Check(a)) => identity::check(a, json),
        Cmd::Policy(PolicyCmd::Reload) => {
            let resp = ask(&dir, &Request::ReloadPolicy).await?;
            println!("policy reloaded ({})", resp.policy_hash.unwrap_or_default());
            Ok(())
        }
        Cmd::Send(a) => messaging::send(&dir, json, a).await,
        Cmd::Request(a) => messaging::request(&dir, json, a).await,
        Cmd::Reply(a) => messaging::reply(&dir, json, a).await,
        Cmd::Stream(a) => messaging::stream(&dir, json, a).await,
        Cmd::End { amid } => {
            simple(
                &dir,
                Request::End {
                    amid: amid.to_string(),
                },
            )
            .await
        }
        Cmd::Status => show::status(&dir, json).await,
        Cmd::Card(c) => contacts::card(&dir, json, c).await,
        Cmd::Peers => contacts::peers(&dir, json).await,
        Cmd::Name(a) => contacts::name(&dir, json, a).await,
        Cmd::Names => contacts::names(&dir, json).await,
        Cmd::Dashboard => owner::dashboard(&dir, json).await,
        Cmd::Doctor { punch } => owner::doctor(&dir, json, punch.as_ref()).await,
        Cmd::Audit(a) => show::audit(&dir, json, a).await,
        Cmd::Presence { state } => {
            simple(
                &dir,
                Request::Presence {
                    state: state.clone(),
                },
            )
            .await
        }
        Cmd::Lookup { amid } => show::lookup(&dir, json, amid).await,
        Cmd::Close { amid } => {
            simple(
                &dir,
                Request::Close {
                    amid: amid.to_string(),
                },
            )
            .await
        }
        Cmd::Disconnect { amid } => {
            simple(
                &dir,
                Request::Disconnect {
                    amid: amid.to_string(),
                },
            )
            .await
        }
        Cmd::Block { amid } => {
            simple(
                &dir,
                Request::Block {
                    amid: amid.to_string(),
                },
            )
            .await
        }
        Cmd::Receipts => show::receipts(&dir, json).await,
        Cmd::Credentials(cmd) => show::credentials(&dir, json, cmd).await,
        Cmd::Kill(a) => show::kill(&dir, a).await,
        Cmd::Register(a) => registry_cmds::register(&dir, json, a).await,
        Cmd::Search(a) => registry_cmds::search(&dir, json, a).await,
        Cmd::RegistryPresence(a) => registry_cmds::presence(&dir, json, a).await,
        Cmd::Capabilities(a) => registry_cmds::capabilities(&dir, json, a).await,
        Cmd::Revoke(a) => registry_cmds::revoke(&dir, json, a).await,
        Cmd::Verify(a) => registry_cmds::verify(&dir, json, a).await,
        Cmd::Did { amid, registry } => registry_cli::did(registry, amid).await,
        Cmd::Reputation(registry_cli::ReputationCmd::Verify { amid, registry }) => {
            registry_cli::reputation(amid, registry, json).await
        }
        Cmd::Reputation(registry_cli::ReputationCmd::Rate {
            amid,
            session,
            score,
            registry,
        }) => {
            let ks = load_keystore(&dir)?;
            registry_cli::rate(ks.identity(), amid, session, *score, registry, json).await
        }
    }
}

/// A request whose answer only says it was done.
async fn simple(dir: &std::path::Path, req: Request) -> Result<()> {
    ask(dir, &req).await.map(|_| ())
}
