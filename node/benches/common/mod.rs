//! Helpers shared by the benches: payloads, stores with an established
//! session, bare Olm session pairs.
#![allow(dead_code)]

use std::path::Path;

use serde::Serialize;
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};

use agentmesh_node::{
    card::AgentCard,
    crypto::envelope::MessageId,
    crypto::session::SessionStore,
    identity::{Amid, Identity},
    knock::Intent,
};
use agentmesh_transports::codec;

/// Fixed clock for the store (its API takes time as an argument).
pub(crate) const NOW: u64 = 1_700_000_000_000;
/// Session expiry far past [`NOW`].
pub(crate) const FAR: u64 = NOW + 365 * 24 * 3600 * 1000;
/// Length of the JSON payload in bytes.
pub(crate) const PAYLOAD_BYTES: usize = 1024;

/// A JSON string whose encoding is exactly [`PAYLOAD_BYTES`] bytes, its
/// first 16 characters the hex of `i`.
pub(crate) fn payload(i: u64) -> serde_json::Value {
    let mut s = format!("{i:016x}");
    while s.len() < PAYLOAD_BYTES - 2 {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    serde_json::Value::String(s)
}

/// [`payload`] as the content of a message.
pub(crate) fn content(i: u64) -> agentmesh_node::content::Content {
    agentmesh_node::content::Content::json(agentmesh_node::content::Kind::Message, &payload(i))
        .expect("json")
}

/// The shape of an [`AgentCard`] on the wire (the card is `non_exhaustive`,
/// so it is built by decoding).
#[derive(Serialize)]
struct CardWire {
    amid: Amid,
    #[serde(with = "serde_bytes")]
    olm_identity_key: [u8; 32],
    one_time_keys: Vec<serde_bytes::ByteArray<32>>,
    #[serde(with = "serde_bytes")]
    fallback_key: [u8; 32],
    capabilities: Vec<String>,
    addrs: Vec<String>,
}

/// The card `store` would publish for `amid`.
pub(crate) fn card_of(store: &SessionStore, amid: Amid) -> AgentCard {
    let (id, otks, fallback) = store.card_keys();
    let wire = CardWire {
        amid,
        olm_identity_key: id,
        one_time_keys: otks.into_iter().map(serde_bytes::ByteArray::new).collect(),
        fallback_key: fallback,
        capabilities: vec!["chat".into()],
        addrs: vec![],
    };
    let bytes = codec::encode(&wire).expect("card encodes");
    codec::decode(&bytes, usize::MAX).expect("card decodes")
}

/// One agent: identity, store and its database.
pub(crate) struct Side {
    pub(crate) id: Identity,
    pub(crate) store: SessionStore,
    pub(crate) db: sled::Db,
}

impl Side {
    pub(crate) fn amid(&self) -> Amid {
        self.id.amid()
    }

    /// Removes every message from the inbox.
    pub(crate) fn drain(&self) {
        for (arrival, _) in self.store.inbox() {
            self.store.take_inbox(arrival).expect("inbox entry removed");
        }
    }
}

/// One side on a temporary sled database, or on disk under `dir` configured
/// as a node configures its database.
pub(crate) fn side(seed: u8, dir: Option<&Path>) -> Side {
    let db = match dir {
        None => sled::Config::new().temporary(true).open(),
        Some(d) => sled::Config::new()
            .path(d.join(format!("db{seed}")))
            .flush_every_ms(Some(200))
            .open(),
    }
    .expect("sled opens");
    let id = Identity::from_seed(&[seed; 32]);
    let store = SessionStore::open(id.amid(), &db, &[seed; 32]).expect("store opens");
    Side { id, store, db }
}

/// alice KNOCKs bob (first message, accepted); with `reply`, bob then
/// answers once, so that the Olm session is established in both directions
/// and alice sends normal (not pre-key) messages.
pub(crate) fn pair(dir: Option<&Path>, reply: bool) -> (Side, Side) {
    let mut a = side(1, dir);
    let mut b = side(2, dir);
    let card = card_of(&b.store, b.amid());
    let (pending, env) = a
        .store
        .seal_first(
            &a.id,
            &card,
            false,
            Intent::default(),
            MessageId::random(),
            &content(0),
            NOW,
        )
        .expect("first message seals");
    let sid = SessionStore::pending_session_id(&pending);
    let info = SessionStore::responder_info(a.amid(), sid, Intent::default(), NOW, FAR);
    b.store
        .receive(&env, Some(&info), NOW)
        .expect("first message opens");
    a.store
        .commit_outbound(pending, FAR)
        .expect("session commits");
    if reply {
        let r = b
            .store
            .seal(
                &b.id,
                &a.amid(),
                None,
                MessageId::random(),
                &content(1),
                NOW,
            )
            .expect("reply seals");
        a.store.receive(&r, None, NOW).expect("reply opens");
    }
    a.drain();
    b.drain();
    (a, b)
}

/// A bare vodozemac session pair (alice, bob); with `established`, bob has
/// answered once, so alice sends normal messages, else pre-key messages.
pub(crate) fn olm_pair(established: bool) -> (Session, Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().expect("one-time key");
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .expect("outbound session");
    let first = a.encrypt(b"hello").expect("encrypts");
    let OlmMessage::PreKey(pre) = first else {
        panic!("the first message is a pre-key message");
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &pre)
        .expect("inbound session")
        .session;
    if established {
        let reply = b.encrypt(b"hi").expect("encrypts");
        a.decrypt(&reply).expect("decrypts");
    }
    (a, b)
}
