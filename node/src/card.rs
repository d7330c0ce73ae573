//! The agent card: what an agent publishes in the DHT so others can reach it
//! and start an encrypted session with no round trip.
//!
//! The card is the payload of a signed DHT record in namespace
//! [`CARD_NAMESPACE`], signed by the agent's own key; the record carries its
//! sequence number and expiry.

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use agentmesh_dht::VerifiedRecord;
use agentmesh_transports::codec;

use crate::identity::Amid;

/// DHT namespace of agent cards.
pub const CARD_NAMESPACE: &str = "card";
/// Largest encoded card accepted.
pub const MAX_CARD_SIZE: usize = 12 * 1024;
/// Most one-time prekeys a card lists.
pub const MAX_ONE_TIME_KEYS: usize = 32;
/// Most addresses a card lists.
pub const MAX_ADDRS: usize = 16;
/// Most capabilities a card lists.
pub const MAX_CAPABILITIES: usize = 32;
/// Most mailbox relays a card lists.
pub const MAX_RELAYS: usize = 16;

/// Errors reading a card.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CardError {
    /// The payload did not decode.
    #[error("malformed card: {0}")]
    Malformed(String),
    /// The card names another agent than the key that signed it.
    #[error("card subject does not match its signer")]
    SubjectMismatch,
    /// A list is over its limit.
    #[error("card field {0} is over its limit")]
    TooMany(&'static str),
    /// A listed capability is not a valid capability (see
    /// [`crate::knock::policy::is_valid_capability`]).
    #[error("card lists an invalid capability {0:?}")]
    InvalidCapability(String),
    /// The schemas listed name an invalid schema id, or a capability the
    /// card does not list.
    #[error("card lists invalid schemas: {0}")]
    InvalidSchemas(String),
}

/// Whether an agent wants to be reached, as published in its card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Presence {
    /// Reachable and answering.
    #[default]
    Online,
    /// Reachable, answers may be slow.
    Away,
    /// Do not disturb: reachable, but asks not to be contacted.
    Dnd,
    /// Not reachable.
    Offline,
    /// The agent moved to a new key: this card is the tombstone its
    /// successor leaves under the old key (no addresses, no keys), and its
    /// rotation record says where it went
    /// ([`crate::identity::rotation`]). Never set by hand.
    Moved,
    /// A presence this version does not know (published by a newer
    /// agent): the card is still read, and the agent treated as online.
    #[serde(other)]
    Unknown,
}

impl std::str::FromStr for Presence {
    type Err = CardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Self::Online),
            "away" => Ok(Self::Away),
            "dnd" => Ok(Self::Dnd),
            "offline" => Ok(Self::Offline),
            other => Err(CardError::Malformed(format!(
                "presence {other:?}: online, away, dnd or offline"
            ))),
        }
    }
}

/// An agent card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentCard {
    /// The agent.
    pub amid: Amid,
    /// Olm (Curve25519) identity key.
    #[serde(with = "serde_bytes")]
    pub olm_identity_key: [u8; 32],
    /// Olm one-time prekeys.
    pub one_time_keys: Vec<serde_bytes::ByteArray<32>>,
    /// Olm fallback prekey, used when the one-time keys run out.
    #[serde(with = "serde_bytes")]
    pub fallback_key: [u8; 32],
    /// Advertised capabilities, e.g. `chat` or `weather/forecast`.
    pub capabilities: Vec<String>,
    /// Addresses the agent listens on.
    pub addrs: Vec<String>,
    /// The agent's presence.
    #[serde(default)]
    pub presence: Presence,
    /// Relays that keep the agent's mailbox, each ending in
    /// `/p2p/<relay id>`: senders deposit sealed envelopes there when the
    /// agent cannot be reached.
    #[serde(default)]
    pub relays: Vec<String>,
    /// Message schemas accepted per capability ([`crate::schema`]): a KNOCK
    /// for a capability listed here must name one of its schemas. At most
    /// [`crate::schema::MAX_CARD_SCHEMAS`] in all.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub schemas: std::collections::BTreeMap<String, Vec<String>>,
    /// Sequence number of the record (filled in on read).
    #[serde(skip)]
    pub seq: u64,
    /// Expiry of the record, ms since the epoch (filled in on read).
    #[serde(skip)]
    pub expires_ms: u64,
}

impl AgentCard {
    /// Encodes the card as a record payload.
    pub fn to_payload(&self) -> Result<Vec<u8>, CardError> {
        codec::encode(self).map_err(|e| CardError::Malformed(e.to_string()))
    }

    /// The tombstone an agent that moved to a new key leaves under `old`:
    /// presence [`Presence::Moved`], no addresses, relays, capabilities nor
    /// keys.
    pub fn moved(old: Amid) -> Self {
        Self {
            amid: old,
            olm_identity_key: [0; 32],
            one_time_keys: Vec::new(),
            fallback_key: [0; 32],
            capabilities: Vec::new(),
            addrs: Vec::new(),
            presence: Presence::Moved,
            relays: Vec::new(),
            schemas: Default::default(),
            seq: 0,
            expires_ms: 0,
        }
    }

    /// Reads a card from a verified DHT record, checking that the card is
    /// about the record's signer.
    pub fn from_record(record: &VerifiedRecord) -> Result<Self, CardError> {
        let mut card: AgentCard = codec::decode(&record.payload, MAX_CARD_SIZE)
            .map_err(|e| CardError::Malformed(e.to_string()))?;
        if Amid::from_libp2p(&record.public_key) != Some(card.amid) {
            return Err(CardError::SubjectMismatch);
        }
        if card.one_time_keys.len() > MAX_ONE_TIME_KEYS {
            return Err(CardError::TooMany("one_time_keys"));
        }
        if card.addrs.len() > MAX_ADDRS {
            return Err(CardError::TooMany("addrs"));
        }
        if card.relays.len() > MAX_RELAYS {
            return Err(CardError::TooMany("relays"));
        }
        if card.capabilities.len() > MAX_CAPABILITIES {
            return Err(CardError::TooMany("capabilities"));
        }
        if let Some(bad) = card
            .capabilities
            .iter()
            .find(|c| !crate::knock::policy::is_valid_capability(c))
        {
            return Err(CardError::InvalidCapability(bad.chars().take(64).collect()));
        }
        card.check_schemas()?;
        card.seq = record.seq;
        card.expires_ms = record.expires_ms;
        Ok(card)
    }

    /// Checks the schemas listed: at most
    /// [`MAX_CARD_SCHEMAS`](crate::schema::MAX_CARD_SCHEMAS), well-formed
    /// ids, for capabilities the card lists.
    fn check_schemas(&self) -> Result<(), CardError> {
        let listed: usize = self.schemas.values().map(Vec::len).sum();
        if self.schemas.len() > crate::schema::MAX_CARD_SCHEMAS
            || listed > crate::schema::MAX_CARD_SCHEMAS
        {
            return Err(CardError::TooMany("schemas"));
        }
        for (capability, ids) in &self.schemas {
            if !self.capabilities.contains(capability) {
                return Err(CardError::InvalidSchemas(format!(
                    "{} is not a listed capability",
                    capability.chars().take(64).collect::<String>()
                )));
            }
            if let Some(bad) = ids.iter().find(|id| !crate::schema::is_valid_schema_id(id)) {
                return Err(CardError::InvalidSchemas(format!(
                    "{:?} is not a schema id",
                    bad.chars().take(80).collect::<String>()
                )));
            }
        }
        Ok(())
    }

    /// The schemas the agent takes for `capability` (empty: any payload).
    pub fn schemas_for(&self, capability: &str) -> &[String] {
        self.schemas.get(capability).map_or(&[], Vec::as_slice)
    }

    /// The listed addresses that parse.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addrs.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// The listed mailbox relays that parse and name their PeerId.
    pub fn relay_addrs(&self) -> Vec<(libp2p::PeerId, Multiaddr)> {
        self.relays
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter_map(|a| match a.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(p)) => Some((p, a)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use agentmesh_dht::SignedRecord;

    fn record(id: &Identity, capabilities: &[&str]) -> VerifiedRecord {
        record_with(id, capabilities, Vec::new(), Presence::Online)
    }

    fn signed(id: &Identity, payload: Vec<u8>) -> VerifiedRecord {
        let key = id.libp2p_keypair().unwrap();
        SignedRecord::sign(&key, "card", payload, 1, u64::MAX)
            .unwrap()
            .verify(0)
            .unwrap()
    }

    fn record_with(
        id: &Identity,
        capabilities: &[&str],
        relays: Vec<String>,
        presence: Presence,
    ) -> VerifiedRecord {
        let card = AgentCard {
            amid: id.amid(),
            olm_identity_key: [1; 32],
            one_time_keys: Vec::new(),
            fallback_key: [2; 32],
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            addrs: Vec::new(),
            presence,
            relays,
            schemas: Default::default(),
            seq: 0,
            expires_ms: 0,
        };
        signed(id, card.to_payload().unwrap())
    }

    #[test]
    fn a_card_lists_a_bounded_number_of_relays() {
        let id = Identity::from_seed(&[6; 32]);
        let relays = |n: usize| {
            (0..n)
                .map(|i| format!("/ip4/127.0.0.1/udp/{i}/quic-v1"))
                .collect()
        };
        let r = record_with(&id, &["chat"], relays(MAX_RELAYS), Presence::Online);
        assert_eq!(AgentCard::from_record(&r).unwrap().relays.len(), MAX_RELAYS);
        let r = record_with(&id, &["chat"], relays(MAX_RELAYS + 1), Presence::Online);
        assert_eq!(
            AgentCard::from_record(&r),
            Err(CardError::TooMany("relays"))
        );
    }

    #[test]
    fn a_presence_from_a_newer_agent_does_not_make_its_card_unreadable() {
        let id = Identity::from_seed(&[7; 32]);
        // A card as a newer agent would write it, with a presence this
        // version does not know (same fields, same order).
        #[derive(serde::Serialize)]
        struct Newer<'a> {
            amid: Amid,
            #[serde(with = "serde_bytes")]
            olm_identity_key: [u8; 32],
            one_time_keys: Vec<serde_bytes::ByteArray<32>>,
            #[serde(with = "serde_bytes")]
            fallback_key: [u8; 32],
            capabilities: Vec<&'a str>,
            addrs: Vec<String>,
            presence: &'a str,
            relays: Vec<String>,
        }
        let newer = |presence| Newer {
            amid: id.amid(),
            olm_identity_key: [1; 32],
            one_time_keys: Vec::new(),
            fallback_key: [2; 32],
            capabilities: vec!["chat"],
            addrs: Vec::new(),
            presence,
            relays: Vec::new(),
        };
        let read = |presence| {
            AgentCard::from_record(&signed(&id, codec::encode(&newer(presence)).unwrap()))
                .unwrap()
                .presence
        };
        assert_eq!(read("away"), Presence::Away);
        assert_eq!(read("sleeping"), Presence::Unknown);
    }

    #[test]
    fn a_card_lists_capabilities_of_the_knock_vocabulary() {
        let id = Identity::from_seed(&[5; 32]);
        let ok = AgentCard::from_record(&record(&id, &["chat", "weather/forecast"])).unwrap();
        assert_eq!(ok.capabilities, ["chat", "weather/forecast"]);
        assert_eq!(
            AgentCard::from_record(&record(&id, &["chat", "Weather Forecast"])),
            Err(CardError::InvalidCapability("Weather Forecast".into()))
        );
    }
}
