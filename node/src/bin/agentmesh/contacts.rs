//! `agentmesh card`, `peers`, `name` and `names`: cards handed out of band,
//! known agents, and local petnames.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use agentmesh_node::control::{Client, Method};

/// `agentmesh card …`.
#[derive(Subcommand)]
pub(crate) enum CardCmd {
    /// Print this agent's signed card (the record it publishes in the DHT)
    /// as a string to hand out of band; whoever imports it reaches this
    /// agent with no DHT.
    Export {
        /// Write it to this file instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import another agent's card (a file or the string itself): the
    /// running node verifies its signature and expiry, keeps it, and
    /// reaches that agent with it.
    Import {
        /// The card: a file holding it, or the `u…` string.
        card: String,
        /// Also name the agent so (see `agentmesh name`).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Arguments of `name`.
#[derive(Args)]
pub(crate) struct NameArgs {
    /// The name: a-z, 0-9, '-', '_', '.', starting with a letter, at most
    /// 32 characters.
    pub(crate) name: String,
    /// The agent's AMID (not with `--rm`).
    #[arg(required_unless_present = "rm")]
    pub(crate) amid: Option<String>,
    /// Forget the name.
    #[arg(long)]
    pub(crate) rm: bool,
}

/// Calls the running node's API.
async fn call(dir: &Path, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let mut client = Client::connect(dir).await?;
    match client.call(method, path, body.as_ref()).await? {
        Ok(v) => Ok(v),
        Err(e) => bail!("{} ({})", e.message, e.code.as_str()),
    }
}

/// `agentmesh card export|import`.
pub(crate) async fn card(dir: &Path, json_out: bool, cmd: &CardCmd) -> Result<()> {
    match cmd {
        CardCmd::Export { out } => {
            let v = call(dir, Method::GET, "/v1/card", None).await?;
            let card = v["card"].as_str().context("no card in the answer")?;
            match out {
                Some(path) => {
                    std::fs::write(path, format!("{card}\n"))
                        .with_context(|| format!("writing {}", path.display()))?;
                    if json_out {
                        println!(
                            "{}",
                            json!({ "amid": v["amid"], "expires_ms": v["expires_ms"], "file": path })
                        );
                    } else {
                        eprintln!(
                            "card of {} written to {} (expires at {} ms)",
                            v["amid"].as_str().unwrap_or_default(),
                            path.display(),
                            v["expires_ms"]
                        );
                    }
                }
                None if json_out => println!("{v}"),
                None => println!("{card}"),
            }
        }
        CardCmd::Import { card, name } => {
            let path = Path::new(card);
            let text = if !card.starts_with('u') || path.is_file() {
                let bytes = std::fs::read(path).with_context(|| {
                    format!("{card:?} is neither a card string (u…) nor a readable file")
                })?;
                match String::from_utf8(bytes) {
                    Ok(t) => t.trim().to_owned(),
                    Err(e) => {
                        // Raw record bytes: hand them over as a card string.
                        use base64::Engine as _;
                        format!(
                            "u{}",
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(e.into_bytes())
                        )
                    }
                }
            } else {
                card.trim().to_owned()
            };
            let v = call(
                dir,
                Method::POST,
                "/v1/cards",
                Some(json!({ "card": text, "name": name })),
            )
            .await?;
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "imported the card of {}{} (expires at {} ms)",
                    v["amid"].as_str().unwrap_or_default(),
                    name.as_deref()
                        .map(|n| format!(" as {n}"))
                        .unwrap_or_default(),
                    v["expires_ms"]
                );
            }
        }
    }
    Ok(())
}

/// `agentmesh peers`: known agents, presence, last seen, path, sessions.
pub(crate) async fn peers(dir: &Path, json_out: bool) -> Result<()> {
    let v = call(dir, Method::GET, "/v1/peers", None).await?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no known agents");
        return Ok(());
    }
    let now = agentmesh_dht::now_ms();
    println!(
        "{:<16} {:<54} {:<9} {:<12} {:<14} SESSION",
        "NAME", "AMID", "PRESENCE", "LAST SEEN", "PATH"
    );
    for p in peers {
        let text = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
        let last_seen = p["last_seen_ms"]
            .as_u64()
            .map(|t| format!("{}s ago", now.saturating_sub(t) / 1000))
            .unwrap_or_else(|| "-".into());
        let sessions = p["sessions"].as_u64().unwrap_or(0);
        let session = if sessions == 0 {
            "none".to_owned()
        } else {
            format!("{sessions} open")
        };
        let mut presence = text("presence");
        if p["card_imported"].as_bool() == Some(true) {
            presence.push('*');
        }
        println!(
            "{:<16} {:<54} {:<9} {:<12} {:<14} {session}",
            text("name"),
            text("amid"),
            presence,
            last_seen,
            text("path"),
        );
    }
    Ok(())
}

/// `agentmesh name NAME AMID` / `agentmesh name --rm NAME`.
pub(crate) async fn name(dir: &Path, json_out: bool, a: &NameArgs) -> Result<()> {
    let v = if a.rm {
        let path = format!(
            "/v1/names/{}",
            url::form_urlencoded::byte_serialize(a.name.as_bytes()).collect::<String>()
        );
        call(dir, Method::DELETE, &path, None).await?
    } else {
        let amid = a.amid.as_deref().context("an AMID to name")?;
        call(
            dir,
            Method::POST,
            "/v1/names",
            Some(json!({ "name": a.name, "amid": amid })),
        )
        .await?
    };
    if json_out {
        println!("{v}");
    } else if a.rm {
        println!(
            "forgot {} ({})",
            a.name,
            v["amid"].as_str().unwrap_or_default()
        );
    } else {
        println!("{} = {}", a.name, v["amid"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `agentmesh names`: every petname.
pub(crate) async fn names(dir: &Path, json_out: bool) -> Result<()> {
    let v = call(dir, Method::GET, "/v1/names", None).await?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    for n in v["names"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {}",
            n["name"].as_str().unwrap_or_default(),
            n["amid"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
