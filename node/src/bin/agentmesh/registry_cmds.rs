//! Commands that talk to a registry with the agent's key.

use std::path::Path;

use anyhow::{bail, Result};

use agentmesh_node::{card::Presence, registry::Operation, Amid};
use anyhow::Context;

use crate::{
    args::{CapabilitiesArgs, PresenceArgs, RegisterArgs, RevokeArgs, SearchArgs, VerifyArgs},
    load_keystore, registry_cli, verify_cli,
};

/// `agentmesh registry-presence`.
pub(crate) async fn presence(dir: &Path, json: bool, a: &PresenceArgs) -> Result<()> {
    let presence: Presence = a
        .presence
        .parse()
        .with_context(|| format!("{:?}: presence is online, away, dnd or offline", a.presence))?;
    let ks = load_keystore(dir)?;
    let op = Operation::Status { presence };
    registry_cli::signed_op(ks.identity(), &a.registry, "/v1/registry/status", op, json).await
}

/// `agentmesh capabilities`.
pub(crate) async fn capabilities(dir: &Path, json: bool, a: &CapabilitiesArgs) -> Result<()> {
    let ks = load_keystore(dir)?;
    let op = Operation::Capabilities {
        capabilities: a.capabilities.clone(),
    };
    registry_cli::signed_op(
        ks.identity(),
        &a.registry,
        "/v1/registry/capabilities",
        op,
        json,
    )
    .await
}

/// `agentmesh revoke`.
pub(crate) async fn revoke(dir: &Path, json: bool, a: &RevokeArgs) -> Result<()> {
    let ks = load_keystore(dir)?;
    let subject = match &a.amid {
        Some(text) => text
            .parse::<Amid>()
            .with_context(|| format!("{text:?} is not an AMID"))?,
        None => ks.identity().amid(),
    };
    let op = Operation::Revoke {
        subject,
        reason: a.reason.clone(),
    };
    registry_cli::signed_op(ks.identity(), &a.registry, "/v1/registry/revoke", op, json).await
}

/// `agentmesh register`: through the running node's local API when a node
/// runs for `dir` (and not `--direct`), else straight to the registry.
pub(crate) async fn register(dir: &Path, json: bool, a: &RegisterArgs) -> Result<()> {
    let RegisterArgs {
        name,
        capabilities,
        relays,
        direct,
        registry,
    } = a;
    if !direct {
        if let Some((mut node, info)) = registry_cli::running_node(dir).await? {
            if !relays.is_empty() {
                bail!(
                    "a node runs for {}: it registers the relays it runs with (`agentmesh run --relay`); pass --direct to register these instead",
                    dir.display()
                );
            }
            return registry_cli::register_via_node(
                &mut node,
                &info,
                name.as_deref(),
                capabilities,
                json,
            )
            .await;
        }
    }
    let ks = load_keystore(dir)?;
    let name = name
        .clone()
        .unwrap_or_else(|| format!("agent-{}", ks.identity().amid().short()));
    registry_cli::register(
        ks.identity(),
        &ks.rotations(),
        registry,
        &name,
        capabilities,
        relays,
        json,
    )
    .await?;
    Ok(())
}

/// `agentmesh search`: through the running node's local API when a node
/// runs for `dir` (and not `--direct`), else straight to the registry.
pub(crate) async fn search(dir: &Path, json: bool, a: &SearchArgs) -> Result<()> {
    let SearchArgs {
        capability,
        tier_min,
        reputation_min,
        limit,
        direct,
        registry,
    } = a;
    if !direct {
        if let Some((mut node, _)) = registry_cli::running_node(dir).await? {
            return registry_cli::search_via_node(
                &mut node,
                capability,
                tier_min.as_deref(),
                *reputation_min,
                *limit,
                json,
            )
            .await;
        }
    }
    registry_cli::search(
        registry,
        capability,
        tier_min.as_deref(),
        *reputation_min,
        *limit,
        json,
    )
    .await?;
    Ok(())
}

/// `agentmesh verify`.
pub(crate) async fn verify(dir: &Path, json: bool, a: &VerifyArgs) -> Result<()> {
    let VerifyArgs {
        oauth,
        org,
        org_name,
        follow,
        timeout,
        registry,
    } = a;
    let ks = load_keystore(dir)?;
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
        dir,
        registry,
        method,
        std::time::Duration::from_secs(*timeout),
        json,
    )
    .await?;
    Ok(())
}
