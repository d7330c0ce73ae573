//! Agent cards (`AgentCard::from_record`), read from DHT records.
//!
//! 1. Raw record: `SignedRecord::from_bytes` -> `verify(0)` ->
//!    `AgentCard::from_record` (random bytes rarely carry a valid signature).
//! 2. Signed payload: the input is the payload of a record validly signed by
//!    a fixed key, so the card decoder sees arbitrary payloads.
//! 3. Signed card: the input decoded as a card, its subject set to the
//!    signing key, re-encoded and signed, so the checks after the subject
//!    check (list limits) see arbitrary cards.
#![no_main]

use std::sync::LazyLock;

use agentmesh_dht::SignedRecord;
use agentmesh_node::card::{
    AgentCard, CARD_NAMESPACE, MAX_ADDRS, MAX_CAPABILITIES, MAX_CARD_SIZE, MAX_ONE_TIME_KEYS,
};
use agentmesh_node::identity::Amid;
use agentmesh_transports::codec;
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;

static KEY: LazyLock<Keypair> =
    LazyLock::new(|| Keypair::ed25519_from_bytes([7u8; 32]).expect("valid ed25519 seed"));

fn check(card: &AgentCard) {
    assert!(card.one_time_keys.len() <= MAX_ONE_TIME_KEYS);
    assert!(card.addrs.len() <= MAX_ADDRS);
    assert!(card.capabilities.len() <= MAX_CAPABILITIES);
    let _ = card.multiaddrs();
    let _ = card.to_payload();
}

fuzz_target!(|data: &[u8]| {
    // 1. Raw record bytes.
    if let Ok(rec) = SignedRecord::from_bytes(data) {
        if let Ok(v) = rec.verify(0) {
            if let Ok(card) = AgentCard::from_record(&v) {
                check(&card);
            }
        }
    }

    // 2. Arbitrary payload in a validly signed card record.
    if let Ok(rec) = SignedRecord::sign(&KEY, CARD_NAMESPACE, data.to_vec(), 1, u64::MAX) {
        let v = rec.verify(0).expect("a freshly signed record verifies");
        if let Ok(card) = AgentCard::from_record(&v) {
            check(&card);
            assert_eq!(card.seq, 1);
            assert_eq!(card.expires_ms, u64::MAX);
        }
    }

    // 3. Arbitrary card about the signer.
    let Ok(mut card) = codec::decode::<AgentCard>(data, MAX_CARD_SIZE) else {
        return;
    };
    card.amid = Amid::from_libp2p(&KEY.public()).expect("ed25519 key");
    let Ok(payload) = card.to_payload() else {
        return;
    };
    let Ok(rec) = SignedRecord::sign(&KEY, CARD_NAMESPACE, payload, 2, u64::MAX) else {
        return;
    };
    let v = rec.verify(0).expect("a freshly signed record verifies");
    match AgentCard::from_record(&v) {
        Ok(back) => {
            check(&back);
            assert_eq!(back.amid, card.amid);
            assert_eq!(back.capabilities, card.capabilities);
            assert_eq!(back.addrs, card.addrs);
        }
        Err(_) => assert!(
            card.one_time_keys.len() > MAX_ONE_TIME_KEYS
                || card.addrs.len() > MAX_ADDRS
                || card.capabilities.len() > MAX_CAPABILITIES
                || v.payload.len() > MAX_CARD_SIZE
        ),
    }
});
