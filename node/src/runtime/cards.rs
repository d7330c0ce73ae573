//! The node's card and what it knows of others: presence, lookups,
//! imported cards and petnames, known peers, and signed DHT records.

use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{broadcast, oneshot};
use tracing::info;

use agentmesh_dht::now_ms;

use crate::{
    card::{AgentCard, Presence},
    contacts::{CardImportError, NameError},
    events::NodeEvent,
    identity::Amid,
};

use super::{Command, KnownPeer, Node, PublishError, SHUTDOWN_PUBLISH_TIMEOUT};

impl Node {
    /// Sets the presence published in the card and republishes it.
    pub async fn set_presence(&self, presence: Presence) {
        if let Ok(mut p) = self.shared.presence.write() {
            *p = presence;
        }
        let _ = self.shared.commands.send(Command::Republish).await;
    }

    /// Republishes the card with presence `offline` and waits until a peer
    /// stored it, or the timeout.
    pub(super) async fn publish_offline(&self) {
        let mut events = self.events();
        if let Ok(mut p) = self.shared.presence.write() {
            *p = Presence::Offline;
        }
        // The new record's sequence number is at least the current time.
        let since = now_ms();
        if self
            .shared
            .commands
            .send(Command::PublishToConnected)
            .await
            .is_err()
        {
            return;
        }
        let stored = tokio::time::timeout(SHUTDOWN_PUBLISH_TIMEOUT, async {
            loop {
                match events.recv().await {
                    // Stored, or there was no peer to store it.
                    Ok(NodeEvent::CardPublished { seq, .. }) if seq >= since => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
        if stored.is_err() {
            tracing::warn!("could not publish presence offline before stopping");
        }
    }

    /// The message schemas this node knows ([`crate::schema`]).
    pub fn schemas(&self) -> &crate::schema::Schemas {
        &self.shared.schemas
    }

    /// The schemas this node takes per capability (listed in its card).
    pub fn accepted_schemas(&self) -> &crate::schema::Accepted {
        &self.shared.config.accept_schemas
    }

    /// The schemas `amid` takes per capability, from its card (the DHT's,
    /// else one imported out of band): what a sender names in its intent.
    /// `None` when no card is found.
    pub async fn schemas_of(&self, amid: &Amid) -> Option<crate::schema::Accepted> {
        let card = match self.lookup(amid).await {
            Some(c) => c,
            None => self
                .imported_cards()
                .into_iter()
                .find(|c| &c.amid == amid)?,
        };
        Some(card.schemas)
    }

    /// Looks up an agent's card (keys, addresses, capabilities, presence)
    /// through the DHT.
    pub async fn lookup(&self, amid: &Amid) -> Option<AgentCard> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Resolve {
                amid: *amid,
                reply: tx,
            })
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()?
    }

    /// This agent's own signed card, the record it publishes in the DHT
    /// (signed now when it has not been yet). `None` while the node listens
    /// on no address, or once it stopped.
    pub async fn card_record(&self) -> Option<agentmesh_dht::SignedRecord> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::OwnCard { reply: tx })
            .await
            .ok()?;
        rx.await.ok()?
    }

    /// This agent's own signed card as a string to hand out of band
    /// ([`crate::contacts::encode_card`]): whoever imports it
    /// ([`Node::import_card`]) can reach this agent with no DHT.
    pub async fn export_card(&self) -> Option<String> {
        self.card_record()
            .await
            .map(|r| crate::contacts::encode_card(&r))
    }

    /// Imports another agent's card (an exported string, or the signed
    /// record's bytes): verifies its signature, namespace and expiry, keeps
    /// it in the node's database, and reaches that agent with it before any
    /// DHT lookup. A newer card of the same agent is kept over an older one.
    pub fn import_card(&self, input: &[u8]) -> Result<AgentCard, CardImportError> {
        let now = now_ms();
        let (card, signed) = crate::contacts::decode_card(input, now)?;
        if card.amid == self.shared.amid {
            return Err(CardImportError::Own);
        }
        self.shared.contacts.import(&card, &signed, now)?;
        info!(peer = %card.amid.short(), seq = card.seq, "card imported");
        Ok(card)
    }

    /// The imported cards still valid.
    pub fn imported_cards(&self) -> Vec<AgentCard> {
        self.shared.contacts.cards(now_ms())
    }

    /// Names `amid` `name` locally (never published); a name given again
    /// names the new AMID.
    pub fn set_name(&self, name: &str, amid: &Amid) -> Result<(), NameError> {
        self.shared.contacts.set_name(name, amid)
    }

    /// Forgets the petname `name`; returns the AMID it named.
    pub fn remove_name(&self, name: &str) -> Result<Amid, NameError> {
        self.shared.contacts.remove_name(name)
    }

    /// Every petname with its AMID, by name.
    pub fn names(&self) -> Vec<(String, Amid)> {
        self.shared.contacts.names()
    }

    /// The petname of `amid`, if it has one.
    pub fn name_of(&self, amid: &Amid) -> Option<String> {
        self.shared.contacts.name_of(amid)
    }

    /// An AMID, or the AMID a petname names: the one place a recipient
    /// given by the application is read.
    pub fn resolve_name(&self, text: &str) -> Result<Amid, NameError> {
        self.shared.contacts.resolve(text)
    }

    /// Every agent this node knows: sessions, imported cards, petnames and
    /// connected agents, with what is known of each.
    pub async fn peers(&self) -> Vec<KnownPeer> {
        let status = self.status().await;
        let now = now_ms();
        let mut peers: std::collections::BTreeMap<Amid, KnownPeer> = Default::default();
        fn add(
            peers: &mut std::collections::BTreeMap<Amid, KnownPeer>,
            amid: Amid,
        ) -> &mut KnownPeer {
            peers.entry(amid).or_insert_with(|| KnownPeer::new(amid))
        }
        for s in &status.sessions {
            let p = add(&mut peers, s.peer);
            p.sessions += 1;
            p.session_expires_ms = p.session_expires_ms.max(Some(s.expires_ms));
        }
        for card in self.shared.contacts.cards(now) {
            let p = add(&mut peers, card.amid);
            p.card_imported = true;
            p.presence = Some(card.presence);
            p.card_expires_ms = Some(card.expires_ms);
        }
        for (name, amid) in self.shared.contacts.names() {
            let p = add(&mut peers, amid);
            if p.name.is_none() {
                p.name = Some(name);
            }
        }
        for c in &status.net.connected {
            if let Ok(amid) = c.peer.parse::<Amid>() {
                add(&mut peers, amid).path = Some(c.path);
            }
        }
        let seen = self
            .shared
            .last_seen
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        for (amid, at) in &seen {
            if let Some(p) = peers.get_mut(amid) {
                p.last_seen_ms = Some(*at);
            }
        }
        // Presence from the freshest card we hold (a DHT one may be newer).
        for p in peers.values_mut() {
            if let Some(card) = self.local_card(&p.amid).await {
                if p.card_expires_ms.is_none_or(|e| card.expires_ms > e) {
                    p.presence = Some(card.presence);
                    p.card_expires_ms = Some(card.expires_ms);
                }
            }
        }
        peers.into_values().collect()
    }

    /// The card of `amid` in our own DHT store, without a lookup.
    async fn local_card(&self, amid: &Amid) -> Option<AgentCard> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::LocalCard {
                amid: *amid,
                reply: tx,
            })
            .await
            .ok()?;
        rx.await.ok()?
    }

    /// Publishes a record about this node in `namespace` (signed by the
    /// node's key, sequence = current time in ms, expiring after `ttl`) to
    /// the DHT, for services built on a node (a registry publishing
    /// revocations, for instance). Services use namespaces `x-<name>`:
    /// nodes store only the namespaces of
    /// [`KNOWN_NAMESPACES`](super::KNOWN_NAMESPACES) by default. Returns
    /// whether at least one other peer stored it; `Err` when it could not be
    /// signed or stored locally.
    pub async fn publish_record(
        &self,
        namespace: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, PublishError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::PutRecord {
                namespace: namespace.to_owned(),
                payload,
                ttl,
                reply: tx,
            })
            .await
            .map_err(|_| PublishError::Stopped)?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| PublishError::Timeout)?
            .map_err(|_| PublishError::Stopped)?
            .map_err(PublishError::Record)
    }

    /// Looks up the record in `namespace` about `subject` through the DHT
    /// (validated: signed by `subject`, not expired). `None` when no peer
    /// has one.
    pub async fn get_record(
        &self,
        namespace: &str,
        subject: &PeerId,
    ) -> Option<agentmesh_dht::VerifiedRecord> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::GetRecord {
                namespace: namespace.to_owned(),
                subject: *subject,
                reply: tx,
            })
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()?
    }
}
