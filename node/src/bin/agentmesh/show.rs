//! Commands that read or steer the running node's state.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use agentmesh_node::{control::Request, trust::receipts::Filing};

use crate::{
    args::{AuditArgs, CredentialsCmd, KillArgs},
    ask,
};

/// `agentmesh status`: identity, network, paths and sessions.
pub(crate) async fn status(dir: &Path, json: bool) -> Result<()> {
    let resp = ask(dir, &Request::Status).await?;
    let status = resp.status.context("no status in response")?;
    if json {
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
    Ok(())
}

/// `agentmesh audit`: the audit log, and its chain checked.
pub(crate) async fn audit(dir: &Path, json: bool, a: &AuditArgs) -> Result<()> {
    let AuditArgs {
        peer,
        kind,
        limit,
        verify,
    } = a;
    let req = Request::Audit {
        peer: peer.map(|p| p.to_string()),
        kind: kind.clone(),
        limit: *limit,
        verify: *verify,
    };
    let resp = ask(dir, &req).await?;
    let entries = resp.audit.unwrap_or_default();
    if json {
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
    Ok(())
}

/// `agentmesh lookup`: a peer's card.
pub(crate) async fn lookup(dir: &Path, json: bool, amid: &str) -> Result<()> {
    let amid = amid.to_string();
    let resp = ask(dir, &Request::Lookup { amid }).await?;
    let card = resp.card.context("no card in response")?;
    if json {
        println!("{}", serde_json::to_string(&card)?);
    } else {
        println!("amid          {}", card.amid);
        println!("presence      {:?}", card.presence);
        println!("capabilities  {}", card.capabilities.join(", "));
        for (capability, ids) in &card.schemas {
            println!("schemas       {capability}: {}", ids.join(", "));
        }
        for a in &card.addrs {
            println!("address       {a}");
        }
        println!(
            "prekeys       {} one-time + fallback",
            card.one_time_keys.len()
        );
    }
    Ok(())
}

/// `agentmesh receipts`: session receipts held and their filing.
pub(crate) async fn receipts(dir: &Path, json: bool) -> Result<()> {
    let receipts = ask(dir, &Request::Receipts)
        .await?
        .receipts
        .unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string(&receipts)?);
    }
    for held in receipts.iter().filter(|_| !json) {
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
    Ok(())
}

/// `agentmesh credentials`: reload or renew what KNOCKs show.
pub(crate) async fn credentials(dir: &Path, json: bool, cmd: &CredentialsCmd) -> Result<()> {
    let renew = matches!(cmd, CredentialsCmd::Renew);
    let state = ask(dir, &Request::Credentials { renew })
        .await?
        .credentials
        .context("no credentials in the answer")?;
    if json {
        println!("{}", serde_json::to_string(&state)?);
    } else {
        println!("showing {state} in KNOCKs");
    }
    Ok(())
}

/// `agentmesh kill`: the owner's kill switch.
pub(crate) async fn kill(dir: &Path, a: &KillArgs) -> Result<()> {
    let KillArgs { amid, all, clear } = a;
    let req = if *clear {
        Request::ClearKill
    } else {
        Request::Kill {
            amid: if *all { None } else { amid.clone() },
        }
    };
    ask(dir, &req).await?;
    Ok(())
}
