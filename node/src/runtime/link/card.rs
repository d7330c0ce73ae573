//! Finding and reaching the peer: its card (imported out of band, from the
//! DHT, the offline card it pushed as it stopped, or, when the DHT has
//! none, from the registry) and the connection.

use libp2p::PeerId;
use tokio::{sync::oneshot, time::Instant};

use agentmesh_dht::now_ms;
use agentmesh_transports::PathKind;

use super::{Link, LinkError, OFFLINE_RECHECK, RESOLVE_TIMEOUT};

/// The DHT is asked at most this often whether a peer moved to a new key,
/// before mail goes to its mailbox (see [`Link::moved_since_resolved`]).
const MOVED_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);
use crate::{
    card::{AgentCard, Presence},
    runtime::{Command, SendError},
};

impl Link {
    /// The peer's card ([`Self::resolve_any`]); one that says the peer
    /// moved to a new key fails the send as not found (the sender follows
    /// its rotation record, see [`Node::send`](crate::Node::send)).
    pub(super) async fn resolve(&mut self) -> Result<AgentCard, LinkError> {
        let card = self.resolve_any().await?;
        if card.presence == Presence::Moved {
            return Err(LinkError::Fatal(SendError::NotFound(self.peer)));
        }
        Ok(card)
    }

    /// The peer's card, cached, imported, from the DHT or the registry.
    async fn resolve_any(&mut self) -> Result<AgentCard, LinkError> {
        if let Some(c) = &self.card {
            if c.expires_ms > now_ms() {
                return Ok(c.clone());
            }
        }
        // A card imported out of band reaches the peer with no DHT; once
        // dialling it failed, the DHT is asked first (the peer may have
        // moved and published a newer card), and the imported card is
        // tried again only when the DHT has none.
        if !self.skip_imported {
            if let Some(card) = self.shared.contacts.card(&self.peer, now_ms()) {
                self.take_card(card.clone(), true);
                return Ok(card);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Resolve {
                amid: self.peer,
                reply: tx,
            })
            .await
            .map_err(|_| LinkError::Fatal(SendError::Stopped))?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
            Ok(Ok(Some(card))) => {
                self.take_card(card.clone(), false);
                Ok(card)
            }
            Ok(Ok(None)) | Err(_) => {
                if std::mem::take(&mut self.skip_imported) {
                    if let Some(card) = self.shared.contacts.card(&self.peer, now_ms()) {
                        self.take_card(card.clone(), true);
                        return Ok(card);
                    }
                }
                // The DHT has none: the registry may keep the peer's card
                // (checked by the card's own signature).
                if let Some(card) =
                    crate::runtime::registry::card_from_registry(&self.shared, &self.peer).await
                {
                    self.take_card(card.clone(), false);
                    return Ok(card);
                }
                Err(LinkError::Retry("card not found".into()))
            }
            Ok(Err(_)) => Err(LinkError::Fatal(SendError::Stopped)),
        }
    }

    /// Uses `card` from now on (`imported`: out of band, not from the DHT).
    pub(super) fn take_card(&mut self, card: AgentCard, imported: bool) {
        self.peer_relays = card.relay_addrs();
        self.card = Some(card);
        self.card_at = Some(Instant::now());
        self.card_imported = imported;
    }

    /// Whether the peer, not connected to us, said it went offline: a
    /// newer card in our own DHT store (a peer pushes its offline card to
    /// the peers it is connected to as it stops) or a looked-up one.
    /// Messages for it then go to its mailbox without a dial that could
    /// only time out. A card that says `offline` is looked up again after
    /// [`OFFLINE_RECHECK`], so a peer that came back is dialled again.
    pub(super) async fn said_offline(&mut self, peer_id: PeerId) -> bool {
        if self.peer_relays.is_empty() || self.is_connected(peer_id) {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        let asked = self
            .shared
            .commands
            .send(Command::LocalCard {
                amid: self.peer,
                reply: tx,
            })
            .await;
        if let (Ok(()), Ok(Some(local))) = (asked, rx.await) {
            if self.card.as_ref().is_none_or(|c| local.seq > c.seq) {
                self.take_card(local, false);
            }
        }
        let offline = |c: &Option<AgentCard>| {
            c.as_ref()
                .is_some_and(|c| c.presence == Presence::Offline && c.expires_ms > now_ms())
        };
        let stale = self.card_at.is_none_or(|t| t.elapsed() >= OFFLINE_RECHECK);
        if offline(&self.card) && stale {
            let believed = self.card.take();
            if self.resolve().await.is_err() && self.card.is_none() {
                // Not found now: keep what we had, and ask again later.
                self.card = believed;
                self.card_at = Some(Instant::now());
            }
        }
        offline(&self.card)
    }

    /// Whether the peer's card, looked up again in the DHT (at most once
    /// per [`MOVED_RECHECK`]), now says it moved to a new key (a
    /// tombstone): mail for a key left is read by nobody. A failed lookup
    /// keeps the card held.
    pub(super) async fn moved_since_resolved(&mut self) -> bool {
        if self
            .moved_checked
            .is_some_and(|t| t.elapsed() < MOVED_RECHECK)
        {
            return self
                .card
                .as_ref()
                .is_some_and(|c| c.presence == Presence::Moved);
        }
        self.moved_checked = Some(Instant::now());
        let believed = self.card.take();
        match self.resolve().await {
            Ok(_) => false,
            Err(_) if self.card.is_none() => {
                self.card = believed;
                self.card_at = Some(Instant::now());
                false
            }
            Err(_) => self
                .card
                .as_ref()
                .is_some_and(|c| c.presence == Presence::Moved),
        }
    }

    pub(super) fn is_connected(&self, peer_id: PeerId) -> bool {
        self.shared
            .paths
            .lock()
            .map(|p| p.contains_key(&peer_id))
            .unwrap_or(false)
    }

    pub(super) async fn connect(&mut self, peer_id: PeerId) -> Result<PathKind, LinkError> {
        let card = self.resolve().await?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Connect {
                peer: peer_id,
                addrs: card.multiaddrs(),
                reply: tx,
            })
            .await
            .map_err(|_| LinkError::Fatal(SendError::Stopped))?;
        match rx.await {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(e)) => {
                // The card may be stale (the peer restarted elsewhere).
                self.card = None;
                self.skip_imported = self.card_imported;
                Err(LinkError::Retry(e))
            }
            Err(_) => Err(LinkError::Fatal(SendError::Stopped)),
        }
    }
}
