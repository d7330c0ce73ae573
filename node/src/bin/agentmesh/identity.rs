//! Commands on the agent's own identity and policy, without a running node.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use agentmesh_node::{
    crypto::keystore::{KdfParams, Keystore},
    knock::policy::KnockContext,
    knock::{Decision, KnockBody},
    Config, Identity, Intent, Node, Passphrase, Policy, Tier,
};

use crate::args::{CheckArgs, RunArgs};

/// `agentmesh init`: creates the identity, or reports the existing one.
pub(crate) fn init(dir: &Path, json: bool) -> Result<()> {
    let pass = Passphrase::from_env()?;
    let (ks, created) = Keystore::load_or_create(dir, &pass, KdfParams::default())?;
    let amid = ks.identity().amid();
    if json {
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
    Ok(())
}

/// `agentmesh id`: the AMID, its fingerprint and PeerId.
pub(crate) fn id(dir: &Path, json: bool) -> Result<()> {
    let pass = Passphrase::from_env()?;
    let bytes = std::fs::read(dir.join(agentmesh_node::crypto::keystore::KEYSTORE_FILE))
        .with_context(|| format!("no identity in {} (run `agentmesh init`)", dir.display()))?;
    let ks = Keystore::decrypt(&bytes, &pass)?;
    let amid = ks.identity().amid();
    // The AMIDs this agent held before, oldest first (each checked).
    let history = ks
        .rotations()
        .iter()
        .map(|r| r.verify().map(|b| (b.old, b.ts_ms)))
        .collect::<Result<Vec<_>, _>>()?;
    if json {
        let previous: Vec<_> = history
            .iter()
            .map(|(a, ts)| json!({"amid": a, "rotated_ms": ts}))
            .collect();
        println!(
            "{}",
            json!({"amid": amid, "fingerprint": amid.fingerprint(), "peer_id": amid.peer_id()?.to_string(), "previous": previous})
        );
    } else {
        println!("{amid}\nfingerprint {}", amid.fingerprint());
        for (a, _) in &history {
            println!("previously  {a}");
        }
    }
    Ok(())
}

/// `agentmesh rotate-key`: moves the agent to a new identity key (the node
/// must be stopped). The old key signs, with the new one, the statement
/// that it moved; the node publishes it under the old key from its next
/// start, and senders that knew the old AMID follow it.
pub(crate) fn rotate_key(dir: &Path, json: bool) -> Result<()> {
    let pass = Passphrase::from_env()?;
    let rotation = Keystore::rotate_file(dir, &pass, KdfParams::default(), agentmesh_dht::now_ms())
        .context("rotating the identity key (is the node stopped?)")?;
    let body = rotation.verify()?;
    if json {
        println!(
            "{}",
            json!({"old": body.old, "new": body.new, "rotated_ms": body.ts_ms})
        );
    } else {
        println!("rotated {} -> {}", body.old, body.new);
        println!("start the node again: it publishes where it went under the old key");
    }
    Ok(())
}

/// `agentmesh policy check`: a KNOCK judged by a policy file, locally.
pub(crate) fn check(a: &CheckArgs, json: bool) -> Result<()> {
    let CheckArgs {
        file,
        from,
        capability,
        action,
        tier,
        reputation,
    } = a;
    let policy = Policy::from_file(file)?;
    let tier: Tier =
        serde_json::from_value(json!(tier)).context("tier: anonymous, verified or organization")?;
    let me = Identity::generate();
    let from = from.unwrap_or_else(|| Identity::generate().amid());
    let now = agentmesh_dht::now_ms();
    let knock = KnockBody {
        from,
        to: me.amid(),
        intent: Intent::new(capability.clone(), action.clone()),
        session: agentmesh_node::crypto::envelope::SessionId([0; 16]),
        ts_ms: now,
        nonce: [0; 16],
        first: Vec::new(),
        credentials: Default::default(),
        moved_from: Vec::new(),
    };
    let ctx = KnockContext {
        tier,
        reputation: reputation.map(agentmesh_node::trust::credentials::Reputation::from_f64),
        ..KnockContext::default()
    };
    let decision = policy.evaluate(&me.amid(), &knock, ctx, now);
    let hash = hex::encode(policy.hash());
    if json {
        println!("{}", json!({"decision": decision, "policy_hash": hash}));
    } else {
        match decision {
            Decision::Accept { .. } => println!("ACCEPT"),
            Decision::Reject { reason, .. } => println!("REJECT: {reason}"),
            _ => println!("{decision:?}"),
        }
        println!("policy {hash}");
    }
    Ok(())
}

/// `agentmesh run`: joins the network and serves until stopped.
pub(crate) async fn run(dir: &Path, json: bool, a: &RunArgs) -> Result<()> {
    let RunArgs {
        bootstrap,
        listen,
        block,
        allow,
        capability,
        accept_schema,
        schema_file,
        policy,
        relays,
        private,
        public,
        registry_root,
        hole_punch,
        stun,
        registry,
        credentials_refresh,
        revocation_sync,
        api,
        a2a,
        a2a_upstream,
        max_memory,
    } = a;
    let mut config = Config::local();
    config.hole_punch = *hole_punch;
    config.connections.max_memory = *max_memory;
    config.stun_servers = stun.clone();
    config.registry_root = registry_root.map(|r| *r.as_bytes());
    config.registry = registry.clone();
    config.credentials_refresh = std::time::Duration::from_secs((*credentials_refresh).max(1));
    config.revocation_sync =
        Some(std::time::Duration::from_secs(*revocation_sync)).filter(|d| !d.is_zero());
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
    for a in accept_schema {
        let (cap, id) = a
            .split_once('=')
            .with_context(|| format!("--accept-schema {a:?}: CAPABILITY=SCHEMA expected"))?;
        config
            .accept_schemas
            .entry(cap.to_string())
            .or_default()
            .push(id.to_string());
    }
    for f in schema_file {
        let (id, path) = f
            .split_once('=')
            .with_context(|| format!("--schema-file {f:?}: ID=FILE expected"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let json = serde_json::from_str(&text).with_context(|| format!("{path}: not JSON"))?;
        config.custom_schemas.push((id.to_string(), json));
    }
    config.policy_file = policy.clone();
    config.policy.block.extend(block.iter().copied());
    config.policy.allow.extend(allow.iter().copied());
    let node = Node::builder(config)
        .data_dir(dir)
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
    let mut options = agentmesh_node::api::ApiOptions::new(Some(*api));
    options.a2a_listen = *a2a;
    options.a2a_upstream = a2a_upstream.clone();
    agentmesh_node::daemon::serve_with_api(node, dir, json, options).await?;
    Ok(())
}
