//! Commands that talk to a registry with the agent's key.

use std::path::Path;

use anyhow::Result;

use crate::{
    args::{RegisterArgs, SearchArgs, VerifyArgs},
    load_keystore, registry_cli, verify_cli,
};

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
