//! Transparency log decoding and verification: tree heads and proofs as
//! served by the registry (CBOR and JSON).
//!
//! 1. `SignedTreeHead::from_bytes` + `verify` against the fixed registry key.
//! 2. `InclusionProof::from_bytes` + `verify` against a fixed, valid head.
//! 3. `ConsistencyProof::from_bytes` + `verify` between two fixed heads.
//! 4. The same three from JSON.
//! 5. Verification with decoded content but a valid signature: the input's
//!    proof checked against a head signed over its own claimed size.
#![no_main]

use std::sync::LazyLock;

use agentmesh_node::{
    identity::Identity,
    trust::transparency::{
        leaf_hash, ConsistencyProof, InclusionProof, MemoryTree, SignedTreeHead,
    },
};
use ed25519_dalek::VerifyingKey;
use libfuzzer_sys::fuzz_target;

struct Fixtures {
    registry: Identity,
    key: VerifyingKey,
    old: SignedTreeHead,
    head: SignedTreeHead,
    leaf: [u8; 32],
}

static FX: LazyLock<Fixtures> = LazyLock::new(|| {
    let registry = Identity::from_seed(&[5; 32]);
    let key = registry.amid().verifying_key().expect("key");
    let mut t = MemoryTree::default();
    for i in 0..11u8 {
        t.append(&[i]);
    }
    let old = SignedTreeHead::sign(&registry, 6, t.root_at(6).expect("root"), 1);
    let head = SignedTreeHead::sign(&registry, 11, t.root(), 2);
    Fixtures {
        registry,
        key,
        old,
        head,
        leaf: leaf_hash(&[3]),
    }
});

fn check(
    fx: &Fixtures,
    h: Option<SignedTreeHead>,
    i: Option<InclusionProof>,
    c: Option<ConsistencyProof>,
) {
    if let Some(h) = h {
        let _ = h.verify(&fx.key);
        let _ = h.to_bytes();
    }
    if let Some(p) = i {
        let _ = p.verify(&fx.leaf, &fx.head);
        // 5. A head validly signed for the size the proof claims.
        let head = SignedTreeHead::sign(&fx.registry, p.tree_size, fx.head.root, 3);
        let _ = p.verify(&fx.leaf, &head);
        let _ = p.to_bytes();
    }
    if let Some(p) = c {
        let _ = p.verify(&fx.old, &fx.head);
        let old = SignedTreeHead::sign(&fx.registry, p.first_size, fx.old.root, 3);
        let new = SignedTreeHead::sign(&fx.registry, p.second_size, fx.head.root, 4);
        let _ = p.verify(&old, &new);
        let _ = p.to_bytes();
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = &*FX;
    check(
        fx,
        SignedTreeHead::from_bytes(data).ok(),
        InclusionProof::from_bytes(data).ok(),
        ConsistencyProof::from_bytes(data).ok(),
    );
    if data.len() <= 8 * 1024 {
        check(
            fx,
            serde_json::from_slice(data).ok(),
            serde_json::from_slice(data).ok(),
            serde_json::from_slice(data).ok(),
        );
    }
});
