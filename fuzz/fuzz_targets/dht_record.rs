//! DHT signed records (`agentmesh_dht::SignedRecord`), as received from
//! Kademlia peers.
//!
//! 1. `SignedRecord::validate(data, b"/card/x", 0)` and `from_bytes` +
//!    `verify` on the raw input.
//! 2. Signed content: the input gives a namespace and a payload that a fixed
//!    key signs; a record that signs must verify and validate under its own key.
#![no_main]

use std::sync::LazyLock;

use agentmesh_dht::{SignedRecord, MAX_NAMESPACE_LEN};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;

static KEY: LazyLock<Keypair> =
    LazyLock::new(|| Keypair::ed25519_from_bytes([7u8; 32]).expect("valid ed25519 seed"));

fuzz_target!(|data: &[u8]| {
    // 1. Raw wire bytes.
    let _ = SignedRecord::validate(data, b"/card/x", 0);
    if let Ok(rec) = SignedRecord::from_bytes(data) {
        let _ = rec.to_bytes();
        if let Ok(v) = rec.verify(0) {
            let key = v.key();
            assert!(SignedRecord::validate(data, &key, 0).is_ok());
            let _ = v.may_replace(&v);
        }
    }

    // 2. Namespace (first byte = its length) and payload from the input.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len()).min(MAX_NAMESPACE_LEN + 2);
    let (ns, payload) = rest.split_at(n);
    let Ok(ns) = std::str::from_utf8(ns) else {
        return;
    };
    let Ok(rec) = SignedRecord::sign(&KEY, ns, payload.to_vec(), 1, u64::MAX) else {
        return;
    };
    let bytes = rec.to_bytes().expect("a signed record encodes");
    let v = SignedRecord::from_bytes(&bytes)
        .expect("a signed record decodes")
        .verify(0)
        .expect("a signed record verifies");
    assert_eq!(v.payload, payload);
    assert_eq!(v.namespace, ns);
    SignedRecord::validate(&bytes, &v.key(), 0).expect("a signed record validates");
});
