//! The credentials our KNOCKs show: renewed at the registry, installed,
//! and reloaded from disk.
use tracing::info;

use agentmesh_dht::now_ms;

use crate::{
    events::NodeEvent,
    knock::policy::Tier,
    registry::protocol::Request,
    runtime::Shared,
    trust::credentials::{self, Checked, Credentials},
};

use super::{call, root, RegistryClientError};

/// What [`Node::renew_credentials`](crate::Node::renew_credentials) and
/// [`Node::reload_credentials`](crate::Node::reload_credentials) installed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct CredentialsState {
    /// The tier the certificate chain proves.
    pub tier: Tier,
    /// The attested reputation.
    pub reputation: Option<credentials::Reputation>,
    /// When the reputation attestation expires, ms since the epoch.
    pub attestation_expires_ms: Option<u64>,
}

impl std::fmt::Display for CredentialsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tier = serde_json::to_value(self.tier).unwrap_or_default();
        write!(f, "tier {}", tier.as_str().unwrap_or("?"))?;
        if let Some(r) = self.reputation {
            write!(f, ", reputation {:.2}", r.as_f64())?;
        }
        if let Some(t) = self.attestation_expires_ms {
            let hours = t.saturating_sub(now_ms()) / 3_600_000;
            write!(f, ", attestation valid {hours} h more")?;
        }
        Ok(())
    }
}

fn state_of(checked: Checked, creds: &Credentials) -> CredentialsState {
    CredentialsState {
        tier: checked.tier,
        reputation: checked.reputation,
        attestation_expires_ms: creds.reputation.as_ref().and_then(|a| a.expires_ms()),
    }
}

/// Fetches fresh credentials from the registry, checks them against the
/// root key, stores them in the data directory and shows them in KNOCKs.
pub(super) async fn renew(shared: &Shared) -> Result<CredentialsState, RegistryClientError> {
    let v = call(shared, Request::Credentials { amid: shared.amid }).await?;
    let bytes = v["credentials"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| RegistryClientError::Answer("credentials are not hex".into()))?;
    let creds =
        Credentials::from_bytes(&bytes).map_err(|e| RegistryClientError::Answer(e.to_string()))?;
    let key = root(shared).await?;
    let checked = credentials::check(
        &creds,
        &shared.amid,
        &key,
        creds.chain.is_some(),
        now_ms(),
        |_| false,
    )?;
    credentials::save(&shared.dir, &creds)?;
    Ok(install(shared, checked, creds))
}

fn install(shared: &Shared, checked: Checked, creds: Credentials) -> CredentialsState {
    let state = state_of(checked, &creds);
    if let Ok(mut c) = shared.credentials.write() {
        *c = creds;
    }
    info!(tier = ?state.tier, reputation = ?state.reputation.map(|r| r.as_f64()), "credentials installed");
    shared.emit(NodeEvent::CredentialsUpdated(state.clone()));
    state
}

/// Reads the credentials stored in the data directory and shows them in
/// KNOCKs; `None` when none are stored.
pub(super) fn reload(shared: &Shared) -> Result<Option<CredentialsState>, RegistryClientError> {
    let Some(creds) = credentials::load(&shared.dir)? else {
        return Ok(None);
    };
    let subject = creds
        .chain
        .as_ref()
        .and_then(|c| c.0.first())
        .and_then(|c| c.certificate().ok())
        .map(|c| c.subject_key);
    if subject.is_some_and(|k| k != *shared.amid.as_bytes()) {
        return Err(RegistryClientError::NotOurs);
    }
    // Checked against the root when one is configured; otherwise shown as
    // stored (the receivers check them).
    let checked = match shared.registry_root() {
        Some(key) => credentials::check(&creds, &shared.amid, &key, false, now_ms(), |_| false)?,
        None => Checked::unverified(&creds),
    };
    Ok(Some(install(shared, checked, creds)))
}
