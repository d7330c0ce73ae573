//! Commands that talk to a registry with the agent's key.

use std::path::Path;

use anyhow::Result;

use agentmesh_node::{card::Presence, registry::Operation, Amid};
use anyhow::Context;

use crate::{
    args::{CapabilitiesArgs, PresenceArgs, RegisterArgs, RevokeArgs, SearchArgs, VerifyArgs},
    load_keystore, registry_cli, verify_cli,
};

/// `agentmesh registry-presence`.
pub(crate) async fn presence(dir: &Path, json: bool, a: &PresenceArgs) -> Result<()> {
    let presence: Presence = serde_json::from_value(serde_json::Value::String(a.presence.clone()))
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

/// `agentmesh register`.
pub(crate) async fn register(dir: &Path, json: bool, a: &RegisterArgs) -> Result<()> {
    let RegisterArgs {
        name,
        capabilities,
        relays,
        registry,
    } = a;
    let ks = load_keystore(dir)?;
    let name = name
        .clone()
        .unwrap_or_else(|| format!("agent-{}", ks.identity().amid().short()));
    registry_cli::register(ks.identity(), registry, &name, capabilities, relays, json).await?;
    Ok(())
}

/// `agentmesh search`.
pub(crate) async fn search(json: bool, a: &SearchArgs) -> Result<()> {
    let SearchArgs {
        capability,
        tier_min,
        reputation_min,
        limit,
        registry,
    } = a;
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
