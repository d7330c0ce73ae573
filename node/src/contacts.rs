//! Contacts: agent cards imported out of band and local petnames.
//!
//! A card is the signed DHT record an agent publishes ([`crate::card`]).
//! Exported as a string it is the record's bytes in multibase base64url
//! (`u…`); anyone holding it can reach the agent with no DHT at all, for as
//! long as the card has not expired. Importing checks the signature, the
//! namespace, the expiry and the card itself; a forged, altered or expired
//! card is refused with a [`CardImportError`].
//!
//! Petnames are local names for AMIDs (`bob` for `am…`), kept by the node
//! and never published. A name can never be mistaken for an AMID: it is
//! lower case, at most [`MAX_NAME_LEN`] characters, and never parses as one.

use std::str::FromStr;

use agentmesh_dht::{SignedRecord, VerifiedRecord};
use base64::Engine as _;

use crate::{
    card::{AgentCard, CardError, CARD_NAMESPACE},
    identity::{Amid, AMID_PREFIX},
};

/// Multibase prefix of an exported card string (base64url, no padding).
pub const CARD_STRING_PREFIX: char = 'u';
/// Longest petname.
pub const MAX_NAME_LEN: usize = 32;
/// Most petnames a node keeps.
pub const MAX_NAMES: usize = 10_000;
/// Most imported cards a node keeps.
pub const MAX_IMPORTED_CARDS: usize = 10_000;
/// Largest exported card string (or file) accepted.
pub const MAX_CARD_TEXT: usize = 64 * 1024;

const CARDS_TREE: &str = "contacts_cards";
const NAMES_TREE: &str = "contacts_names";
const MOVED_TREE: &str = "contacts_moved";
/// Most rotations remembered (old AMID to new).
const MAX_MOVED: usize = 4096;

/// Why a card was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CardImportError {
    /// Neither a card string nor the bytes of a signed record.
    #[error("not a card: {0}")]
    Malformed(String),
    /// The signature does not match the record (forged or altered).
    #[error("the card's signature does not verify")]
    Forged,
    /// The card's record has expired.
    #[error("the card expired at {expires_ms} ms since the epoch")]
    Expired {
        /// Its expiry, ms since the epoch.
        expires_ms: u64,
    },
    /// A signed record, but not a card.
    #[error("the record is in namespace {0:?}, not a card")]
    NotACard(String),
    /// The signed payload is not a valid card.
    #[error(transparent)]
    Card(#[from] CardError),
    /// The card is our own.
    #[error("the card is this agent's own")]
    Own,
    /// The node could not keep it.
    #[error("storage: {0}")]
    Storage(String),
}

/// Why a petname was refused or not found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// Not a valid name.
    #[error("invalid name {0:?}: 1 to 32 of a-z, 0-9, '-', '_', '.', starting with a letter, not starting with \"am\" followed by base58")]
    Invalid(String),
    /// Neither an AMID nor a known name.
    #[error("{0:?} is neither an AMID nor a known name")]
    Unknown(String),
    /// Too many names already.
    #[error("too many names (at most {MAX_NAMES})")]
    Full,
    /// The node could not read or write its names.
    #[error("storage: {0}")]
    Storage(String),
}

/// Encodes a signed card record as an exportable string (`u…`).
pub fn encode_card(record: &SignedRecord) -> String {
    let bytes = record.to_bytes().unwrap_or_default();
    let mut s = String::from(CARD_STRING_PREFIX);
    s.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    s
}

/// Reads a card from an exported string or the raw record bytes and
/// verifies it at `now_ms`: signature, namespace, expiry, and the card
/// (its subject is its signer, its lists are within their limits).
pub fn decode_card(
    input: &[u8],
    now_ms: u64,
) -> Result<(AgentCard, SignedRecord), CardImportError> {
    if input.len() > MAX_CARD_TEXT {
        return Err(CardImportError::Malformed(format!(
            "{} bytes, over {MAX_CARD_TEXT}",
            input.len()
        )));
    }
    let bytes = match std::str::from_utf8(input).map(str::trim) {
        Ok(text) if text.starts_with(CARD_STRING_PREFIX) => {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&text[CARD_STRING_PREFIX.len_utf8()..])
                .map_err(|e| CardImportError::Malformed(format!("bad base64url: {e}")))?
        }
        _ => input.to_vec(),
    };
    let signed =
        SignedRecord::from_bytes(&bytes).map_err(|e| CardImportError::Malformed(e.to_string()))?;
    let verified = verify(signed, now_ms)?;
    if verified.namespace != CARD_NAMESPACE {
        return Err(CardImportError::NotACard(verified.namespace));
    }
    let card = AgentCard::from_record(&verified)?;
    Ok((card, verified.signed))
}

fn verify(signed: SignedRecord, now_ms: u64) -> Result<VerifiedRecord, CardImportError> {
    use agentmesh_dht::RecordError;
    signed.verify(now_ms).map_err(|e| match e {
        RecordError::BadSignature | RecordError::InvalidKey => CardImportError::Forged,
        RecordError::Expired { expires_ms } => CardImportError::Expired { expires_ms },
        other => CardImportError::Malformed(other.to_string()),
    })
}

/// Checks a petname: 1 to [`MAX_NAME_LEN`] of `a-z`, `0-9`, `-`, `_`, `.`,
/// starting with a letter, and never something that could be an AMID (an
/// AMID starts with `am` followed by base58, and names are lower case only).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let invalid = || NameError::Invalid(name.chars().take(64).collect());
    let mut chars = name.chars();
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !chars.next().is_some_and(|c| c.is_ascii_lowercase())
    {
        return Err(invalid());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid());
    }
    if Amid::from_str(name).is_ok() {
        return Err(invalid());
    }
    // "am" then only base58 characters reads like an AMID being typed.
    if let Some(rest) = name.strip_prefix(AMID_PREFIX) {
        let base58 = |c: char| c.is_ascii_alphanumeric() && !matches!(c, '0' | 'O' | 'I' | 'l');
        if rest.len() >= 8 && rest.chars().all(base58) {
            return Err(invalid());
        }
    }
    Ok(())
}

/// A contact: a known agent with its name and imported card.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Contact {
    /// The agent.
    pub amid: Amid,
    /// Our petname for it.
    pub name: Option<String>,
    /// Its imported card, when one is held and unexpired.
    pub card: Option<AgentCard>,
}

/// What the node keeps: imported cards (by AMID) and petnames.
#[derive(Debug, Clone)]
pub(crate) struct Contacts {
    cards: sled::Tree,
    names: sled::Tree,
    /// Agents that rotated their identity: old AMID to new, as followed
    /// from their checked rotation records.
    moved: sled::Tree,
}

fn storage(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Contacts {
    /// Opens the trees in `db`.
    pub(crate) fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            cards: db.open_tree(CARDS_TREE)?,
            names: db.open_tree(NAMES_TREE)?,
            moved: db.open_tree(MOVED_TREE)?,
        })
    }

    /// Keeps a verified card, unless a newer one of the same agent is held.
    /// Returns the card kept.
    pub(crate) fn import(
        &self,
        card: &AgentCard,
        signed: &SignedRecord,
        now_ms: u64,
    ) -> Result<(), CardImportError> {
        let key = card.amid.to_string();
        if let Some(held) = self.card(&card.amid, now_ms) {
            if held.seq > card.seq {
                return Ok(());
            }
        } else if self.cards.len() >= MAX_IMPORTED_CARDS {
            self.sweep(now_ms);
            if self.cards.len() >= MAX_IMPORTED_CARDS {
                return Err(CardImportError::Storage(format!(
                    "too many imported cards (at most {MAX_IMPORTED_CARDS})"
                )));
            }
        }
        let bytes = signed
            .to_bytes()
            .map_err(|e| CardImportError::Storage(storage(e)))?;
        self.cards
            .insert(key.as_bytes(), bytes)
            .map_err(|e| CardImportError::Storage(storage(e)))?;
        self.cards
            .flush()
            .map_err(|e| CardImportError::Storage(storage(e)))?;
        Ok(())
    }

    /// The imported card of `amid`, when held and unexpired at `now_ms`.
    pub(crate) fn card(&self, amid: &Amid, now_ms: u64) -> Option<AgentCard> {
        let bytes = self.cards.get(amid.to_string().as_bytes()).ok()??;
        decode_card(&bytes, now_ms).ok().map(|(c, _)| c)
    }

    /// Every imported card still valid at `now_ms`.
    pub(crate) fn cards(&self, now_ms: u64) -> Vec<AgentCard> {
        self.cards
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, v)| decode_card(&v, now_ms).ok().map(|(c, _)| c))
            .collect()
    }

    /// Drops the expired cards.
    fn sweep(&self, now_ms: u64) {
        for (k, v) in self.cards.iter().filter_map(Result::ok) {
            if decode_card(&v, now_ms).is_err() {
                let _ = self.cards.remove(k);
            }
        }
    }

    /// Names `amid` `name` (replacing what `name` named).
    pub(crate) fn set_name(&self, name: &str, amid: &Amid) -> Result<(), NameError> {
        validate_name(name)?;
        if self.names.len() >= MAX_NAMES && !self.names.contains_key(name).unwrap_or(false) {
            return Err(NameError::Full);
        }
        self.names
            .insert(name.as_bytes(), amid.to_string().as_bytes())
            .map_err(|e| NameError::Storage(storage(e)))?;
        self.names
            .flush()
            .map_err(|e| NameError::Storage(storage(e)))?;
        Ok(())
    }

    /// Forgets `name`; returns the AMID it named.
    pub(crate) fn remove_name(&self, name: &str) -> Result<Amid, NameError> {
        let old = self
            .names
            .remove(name.as_bytes())
            .map_err(|e| NameError::Storage(storage(e)))?
            .ok_or_else(|| NameError::Unknown(name.chars().take(64).collect()))?;
        let _ = self.names.flush();
        std::str::from_utf8(&old)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| NameError::Storage("a stored name holds no AMID".into()))
    }

    /// Every name with its AMID, by name.
    pub(crate) fn names(&self) -> Vec<(String, Amid)> {
        self.names
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let name = String::from_utf8(k.to_vec()).ok()?;
                let amid = std::str::from_utf8(&v).ok()?.parse().ok()?;
                Some((name, amid))
            })
            .collect()
    }

    /// The first name (in order) given to `amid`.
    pub(crate) fn name_of(&self, amid: &Amid) -> Option<String> {
        self.names()
            .into_iter()
            .find(|(_, a)| a == amid)
            .map(|(n, _)| n)
    }

    /// Notes that `old` moved to `new` (a checked rotation) and points the
    /// petnames of `old` at `new`. Returns how many names moved.
    pub(crate) fn set_moved(&self, old: &Amid, new: &Amid) -> Result<usize, NameError> {
        let st = |e: sled::Error| NameError::Storage(storage(e));
        if self.moved.len() >= MAX_MOVED && !self.moved.contains_key(old.as_bytes()).map_err(st)? {
            return Err(NameError::Full);
        }
        self.moved
            .insert(old.as_bytes(), new.as_bytes().as_slice())
            .map_err(st)?;
        let mut renamed = 0;
        for (name, amid) in self.names() {
            if &amid == old {
                self.names
                    .insert(name.as_bytes(), new.to_string().as_bytes())
                    .map_err(st)?;
                renamed += 1;
            }
        }
        self.moved.flush().map_err(st)?;
        self.names.flush().map_err(st)?;
        Ok(renamed)
    }

    /// The AMID `amid` holds now, following the rotations noted (at most
    /// [`MAX_HOPS`](crate::identity::rotation::MAX_HOPS)); `amid` itself
    /// when none is noted.
    pub(crate) fn moved_to(&self, amid: &Amid) -> Amid {
        let mut at = *amid;
        for _ in 0..crate::identity::rotation::MAX_HOPS {
            let next = self
                .moved
                .get(at.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok())
                .and_then(|b| Amid::from_bytes(&b).ok());
            match next {
                Some(n) if n != *amid => at = n,
                _ => break,
            }
        }
        at
    }

    /// An AMID, or the AMID a petname names.
    pub(crate) fn resolve(&self, text: &str) -> Result<Amid, NameError> {
        if let Ok(amid) = text.parse() {
            return Ok(amid);
        }
        let unknown = || NameError::Unknown(text.chars().take(64).collect());
        let bytes = self
            .names
            .get(text.as_bytes())
            .map_err(|e| NameError::Storage(storage(e)))?
            .ok_or_else(unknown)?;
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{card::Presence, identity::Identity};

    fn signed(id: &Identity, expires_ms: u64) -> SignedRecord {
        let card = AgentCard {
            amid: id.amid(),
            olm_identity_key: [1; 32],
            one_time_keys: Vec::new(),
            fallback_key: [2; 32],
            capabilities: vec!["chat".into()],
            addrs: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            presence: Presence::Online,
            relays: Vec::new(),
            schemas: Default::default(),
            seq: 0,
            expires_ms: 0,
        };
        let key = id.libp2p_keypair().unwrap();
        SignedRecord::sign(
            &key,
            CARD_NAMESPACE,
            card.to_payload().unwrap(),
            7,
            expires_ms,
        )
        .unwrap()
    }

    #[test]
    fn a_card_string_round_trips_and_verifies() {
        let id = Identity::from_seed(&[3; 32]);
        let record = signed(&id, 10_000);
        let text = encode_card(&record);
        assert!(text.starts_with('u'));
        let (card, back) = decode_card(text.as_bytes(), 1_000).unwrap();
        assert_eq!(card.amid, id.amid());
        assert_eq!(card.seq, 7);
        assert_eq!(back, record);
        // Raw bytes are accepted too, and surrounding whitespace.
        assert!(decode_card(&record.to_bytes().unwrap(), 1_000).is_ok());
        assert!(decode_card(format!("  {text}\n").as_bytes(), 1_000).is_ok());
    }

    #[test]
    fn expired_forged_and_foreign_cards_are_refused() {
        let id = Identity::from_seed(&[3; 32]);
        let text = encode_card(&signed(&id, 10_000));
        assert_eq!(
            decode_card(text.as_bytes(), 20_000).unwrap_err(),
            CardImportError::Expired { expires_ms: 10_000 }
        );
        // Flip one bit of the signed body.
        let mut bytes = signed(&id, 10_000).to_bytes().unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        let err = decode_card(&bytes, 1_000).unwrap_err();
        assert!(
            matches!(err, CardImportError::Forged | CardImportError::Malformed(_)),
            "{err:?}"
        );
        assert!(matches!(
            decode_card(b"not a card", 0),
            Err(CardImportError::Malformed(_))
        ));
        let key = id.libp2p_keypair().unwrap();
        let other = SignedRecord::sign(&key, "other", vec![1, 2], 1, 10_000).unwrap();
        assert_eq!(
            decode_card(encode_card(&other).as_bytes(), 0).unwrap_err(),
            CardImportError::NotACard("other".into())
        );
    }

    /// The wire form of a signed record, to put one record's signature on
    /// another's body.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Raw {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    }

    #[test]
    fn a_forged_signature_is_refused_as_forged() {
        use agentmesh_transports::codec;
        let good: Raw = codec::decode(
            &signed(&Identity::from_seed(&[3; 32]), 10_000)
                .to_bytes()
                .unwrap(),
            1 << 16,
        )
        .unwrap();
        let other: Raw = codec::decode(
            &signed(&Identity::from_seed(&[4; 32]), 10_000)
                .to_bytes()
                .unwrap(),
            1 << 16,
        )
        .unwrap();
        let forged = codec::encode(&Raw {
            body: good.body,
            signature: other.signature,
        })
        .unwrap();
        assert_eq!(
            decode_card(&forged, 0).unwrap_err(),
            CardImportError::Forged
        );
    }

    #[test]
    fn names_never_read_as_amids() {
        let amid = Identity::from_seed(&[9; 32]).amid().to_string();
        for bad in [
            "",
            "Bob",
            "1bob",
            "bob smith",
            "a-very-long-name-that-is-over-the-limit",
            amid.as_str(),
            &amid.to_lowercase(),
            "am3xkq9zpw",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["bob", "alice-2", "weather.bot", "am", "amy", "am_x"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn names_resolve_and_are_forgotten() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let contacts = Contacts::open(&db).unwrap();
        let bob = Identity::from_seed(&[9; 32]).amid();
        contacts.set_name("bob", &bob).unwrap();
        assert_eq!(contacts.resolve("bob"), Ok(bob));
        assert_eq!(contacts.resolve(&bob.to_string()), Ok(bob));
        assert_eq!(contacts.name_of(&bob).as_deref(), Some("bob"));
        assert!(matches!(
            contacts.resolve("carol"),
            Err(NameError::Unknown(_))
        ));
        assert_eq!(contacts.remove_name("bob"), Ok(bob));
        assert!(contacts.resolve("bob").is_err());
        assert!(contacts.remove_name("bob").is_err());
    }

    #[test]
    fn the_newest_imported_card_is_kept() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let contacts = Contacts::open(&db).unwrap();
        let id = Identity::from_seed(&[3; 32]);
        let (card, record) = decode_card(encode_card(&signed(&id, 10_000)).as_bytes(), 0).unwrap();
        contacts.import(&card, &record, 0).unwrap();
        assert_eq!(contacts.card(&id.amid(), 5_000).map(|c| c.seq), Some(7));
        assert!(contacts.card(&id.amid(), 20_000).is_none());
        assert_eq!(contacts.cards(0).len(), 1);
    }
}
