//! The agent's prekey bundle at its registry: its Olm keys and its signed
//! card, uploaded whenever the card changed (once the agent is registered),
//! and read back by a sender whose DHT lookup found no card. The sender
//! trusts the card's own signature, not the registry: a registry can only
//! withhold a card, never forge one.

use tokio::sync::oneshot;
use tracing::{debug, info};

use agentmesh_dht::now_ms;

use super::{call, RegistryClientError, Shared};
use crate::{
    card::AgentCard,
    contacts,
    identity::Amid,
    registry::{protocol::Request, Operation, PrekeyBundle, SignedRequest},
    runtime::Command,
};

/// Uploads the bundle when the card differs from the one uploaded last
/// (`uploaded`, the exported card string). Whether an upload was made.
pub(super) async fn upload_if_changed(
    shared: &Shared,
    uploaded: &mut Option<String>,
) -> Result<bool, RegistryClientError> {
    let (tx, rx) = oneshot::channel();
    if shared
        .commands
        .send(Command::OwnCard { reply: tx })
        .await
        .is_err()
    {
        return Ok(false);
    }
    let Ok(Some(record)) = rx.await else {
        // No card yet (no listen address): nothing to upload.
        return Ok(false);
    };
    let card = contacts::encode_card(&record);
    if uploaded.as_ref() == Some(&card) {
        return Ok(false);
    }
    let (identity_key, one_time_keys, fallback_key) = shared.store().card_keys();
    let bundle =
        PrekeyBundle::new(identity_key, fallback_key, &one_time_keys).with_card(card.clone());
    let request = SignedRequest::sign(&shared.identity, Operation::Prekeys(bundle), now_ms())
        .map_err(|e| RegistryClientError::Answer(e.to_string()))?;
    call(shared, Request::Signed { request }).await?;
    debug!("prekey bundle and card uploaded to the registry");
    *uploaded = Some(card);
    Ok(true)
}

/// `amid`'s card as its registry holds it, checked by its own signature:
/// for a sender whose DHT lookup found none. `None` when the registry has
/// none, cannot be reached, or hands out a card that does not verify.
pub(crate) async fn card_from_registry(shared: &Shared, amid: &Amid) -> Option<AgentCard> {
    shared.config.registry.as_ref()?;
    let body = match call(shared, Request::Prekeys { amid: *amid }).await {
        Ok(b) => b,
        Err(e) => {
            debug!(peer = %amid.short(), error = %e, "no card from the registry");
            return None;
        }
    };
    let text = body.get("card")?.as_str()?;
    match contacts::decode_card(text.as_bytes(), now_ms()) {
        Ok((card, _)) if &card.amid == amid => {
            info!(peer = %amid.short(), "card found through the registry");
            Some(card)
        }
        Ok(_) => {
            debug!(peer = %amid.short(), "the registry handed out another agent's card");
            None
        }
        Err(e) => {
            debug!(peer = %amid.short(), error = %e, "the registry's card does not verify");
            None
        }
    }
}
