//! Cards imported out of band (`contacts::decode_card`): the text an owner
//! pastes (`agentmesh card import`, `POST /v1/cards`) or the raw record
//! bytes of a card file.
//!
//! 1. The input as given: an exported string (`u` + base64url, multibase) or raw
//!    record bytes; anything may come in.
//! 2. The input as the payload of a card record validly signed by a fixed
//!    key, exported as a string: the card decoder sees arbitrary payloads
//!    behind a good signature.
//!
//! A card that decodes exports to a string that decodes to the same card.
#![no_main]

use std::sync::LazyLock;

use agentmesh_dht::SignedRecord;
use agentmesh_node::card::CARD_NAMESPACE;
use agentmesh_node::contacts::{decode_card, encode_card};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;

static KEY: LazyLock<Keypair> =
    LazyLock::new(|| Keypair::ed25519_from_bytes([9u8; 32]).expect("valid ed25519 seed"));

fn round_trip(input: &[u8]) {
    let Ok((card, record)) = decode_card(input, 0) else {
        return;
    };
    let text = encode_card(&record);
    let (again, _) = decode_card(text.as_bytes(), 0).expect("an exported card imports");
    assert_eq!(again.amid, card.amid);
    assert_eq!(again.seq, card.seq);
    assert_eq!(again.addrs, card.addrs);
    assert_eq!(again.capabilities, card.capabilities);
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    if let Ok(rec) = SignedRecord::sign(&KEY, CARD_NAMESPACE, data.to_vec(), 1, u64::MAX) {
        round_trip(encode_card(&rec).as_bytes());
    }
});
