//! Identity rotation at run time: the node publishes where it went (a
//! rotation record under each key it left), and follows where others went
//! when they cannot be reached under the AMID it knows.

use std::{sync::Arc, time::Duration};

use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};

use agentmesh_dht::{now_ms, SignedRecord};

use super::{Command, Node, SendError, Shared};
use crate::{
    card::AgentCard,
    events::NodeEvent,
    identity::{
        rotation::{SignedRotation, MAX_HOPS, ROTATION_NAMESPACE},
        Amid, Identity,
    },
    knock::KnockBody,
};

/// Lifetime of a published rotation record.
const RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often rotation records are published again.
const REPUBLISH: Duration = Duration::from_secs(6 * 3600);
/// Wait before trying again when no peer stored a record.
const RETRY: Duration = Duration::from_secs(30);

/// Publishes a rotation record for each identity the node left, once its
/// card is out (it has peers then), and again every [`REPUBLISH`].
pub(super) async fn publish(shared: Arc<Shared>, previous: Vec<(Identity, SignedRotation)>) {
    if previous.is_empty() {
        return;
    }
    let mut events = shared.events.subscribe();
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            e = events.recv() => match e {
                Ok(NodeEvent::CardPublished { .. }) => break,
                Err(broadcast::error::RecvError::Closed) => return,
                _ => {}
            },
        }
    }
    loop {
        let mut stored_everywhere = true;
        for (old, rotation) in &previous {
            let stored = put(&shared, old, rotation).await;
            debug!(old = %old.amid().short(), ?stored, "rotation record published");
            stored_everywhere &= matches!(stored, Ok(true));
        }
        let wait = if stored_everywhere { REPUBLISH } else { RETRY };
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Stores one rotation record, and the tombstone card that replaces the
/// last card of the key left (so that senders stop writing to its mailbox
/// and follow), both signed by the key left.
async fn put(shared: &Shared, old: &Identity, rotation: &SignedRotation) -> Result<bool, String> {
    let key = old.libp2p_keypair().map_err(|e| e.to_string())?;
    let now = now_ms();
    let expires = now.saturating_add(RECORD_TTL.as_millis() as u64);
    let tombstone = AgentCard::moved(old.amid())
        .to_payload()
        .map_err(|e| e.to_string())?;
    let card = SignedRecord::sign(&key, crate::card::CARD_NAMESPACE, tombstone, now, expires)
        .map_err(|e| e.to_string())?;
    put_signed(shared, card).await?;
    let record = SignedRecord::sign(&key, ROTATION_NAMESPACE, rotation.to_bytes(), now, expires)
        .map_err(|e| e.to_string())?;
    put_signed(shared, record).await
}

/// Stores a record signed elsewhere; whether another peer stored it.
async fn put_signed(shared: &Shared, record: SignedRecord) -> Result<bool, String> {
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .send(Command::PutSigned { record, reply: tx })
        .await
        .map_err(|_| "node stopped".to_string())?;
    tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|_| "node stopped".to_string())?
}

/// Whether a failed send may have failed because the agent moved to another
/// key (its old AMID no longer answers).
pub(super) fn maybe_moved(e: &SendError) -> bool {
    matches!(
        e,
        SendError::NotFound(_)
            | SendError::DeliveryTimeout
            | SendError::NotAcknowledged
            | SendError::InvalidRecipient
            | SendError::Mailbox(_)
            | SendError::CircuitOpen { .. }
    )
}

/// Notes the rotations an accepted KNOCK showed (checked with it), so that
/// sends to the initiator's old AMIDs, and petnames of them, go to its key.
pub(super) fn note_history(shared: &Shared, body: &KnockBody) {
    let former = body.former();
    let Some(first) = former.first() else {
        return;
    };
    if shared.contacts.moved_to(first) == body.from {
        return;
    }
    let next = former.iter().skip(1).chain(std::iter::once(&body.from));
    for (old, new) in former.iter().zip(next) {
        match shared.contacts.set_moved(old, new) {
            Ok(renamed) => info!(%old, %new, renamed, "agent moved to a new key"),
            Err(e) => warn!(error = %e, "could not note a rotation"),
        }
    }
}

impl Node {
    /// Where `amid` went, when it rotated its identity: follows its rotation
    /// records in the DHT, checking each (both keys' signatures, the record
    /// signed by the key left), at most
    /// [`MAX_HOPS`](crate::identity::rotation::MAX_HOPS) of them. Returns the
    /// AMID held now and the statements that lead there, oldest first;
    /// `None` when `amid` did not rotate (no record found).
    pub async fn follow_rotation(&self, amid: &Amid) -> Option<(Amid, Vec<SignedRotation>)> {
        let mut at = *amid;
        let mut chain: Vec<SignedRotation> = Vec::new();
        for _ in 0..MAX_HOPS {
            let Ok(peer) = at.peer_id() else { break };
            let Some(record) = self.get_record(ROTATION_NAMESPACE, &peer).await else {
                break;
            };
            let Ok(rotation) = SignedRotation::from_bytes(&record.payload) else {
                break;
            };
            chain.push(rotation);
            match crate::identity::rotation::follow(*amid, &chain) {
                Ok(next) => at = next,
                Err(e) => {
                    warn!(%amid, error = %e, "rotation record refused");
                    chain.pop();
                    break;
                }
            }
        }
        if chain.is_empty() {
            return None;
        }
        self.learn_rotation(amid, &at);
        Some((at, chain))
    }

    /// Notes that `old` is now `new`: later sends to `old` go to `new`, and
    /// petnames of `old` name `new`.
    fn learn_rotation(&self, old: &Amid, new: &Amid) {
        match self.shared.contacts.set_moved(old, new) {
            Ok(renamed) => info!(%old, %new, renamed, "agent moved to a new key"),
            Err(e) => warn!(error = %e, "could not note a rotation"),
        }
    }

    /// The AMID `amid` is known to hold now (itself when it is not known to
    /// have rotated).
    pub fn current_amid(&self, amid: &Amid) -> Amid {
        self.shared.contacts.moved_to(amid)
    }
}
