//! KNOCK and decision decoding and verification (`/agentmesh/knock/1`).
//!
//! 1. `SignedKnock::from_bytes` + `verify` (+ `Policy::evaluate` if it verifies).
//! 2. `SignedDecision::from_bytes` + `verify` against a fixed, valid KNOCK,
//!    and `peek_knock_hash` + `verify_hash` (a decision on a mailed KNOCK).
//! 3. The input split in two halves: a decision and the KNOCK it answers.
//! 4. Signed content: after one selector byte, the input is decoded as a
//!    `KnockBody`, signed by a fixed initiator (any peer can sign any body
//!    with its own key), encoded, decoded, verified and evaluated by the
//!    receiver's policy. This is what a hostile peer can make the receiver
//!    process.
//! 5. Signed decision: the input (after the selector) is the body of a
//!    decision validly signed by the receiver, so the decision body decoder
//!    (which runs after the signature check) is reached.
//! 6. Signed reputation attestation: the input (after the selector) is the
//!    body of an attestation validly signed by the registry root, so the
//!    attestation body decoder is reached.
#![no_main]

use std::sync::LazyLock;

use agentmesh_node::{
    crypto::envelope::SessionId,
    identity::{Amid, Identity},
    knock::policy::{KnockContext, Policy},
    knock::{
        Intent, KnockBody, SignedDecision, SignedKnock, DOMAIN_SEP_DECISION, MAX_DECISION_SIZE,
        MAX_KNOCK_SIZE,
    },
    trust::credentials::{self, CredentialError},
};
use agentmesh_transports::codec;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

const NOW: u64 = 10_000_000;

/// Same field order and encoding as `KnockBody`, which is `#[non_exhaustive]`
/// and so cannot be built with a literal outside its crate.
#[derive(Serialize)]
struct KnockBodyWire {
    from: Amid,
    to: Amid,
    intent: Intent,
    session: SessionId,
    ts_ms: u64,
    #[serde(with = "serde_bytes")]
    nonce: [u8; 16],
    #[serde(with = "serde_bytes")]
    first: Vec<u8>,
}

/// Same encoding as `SignedKnock` / `SignedDecision`.
#[derive(Serialize)]
struct SignedWire<'a> {
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    #[serde(with = "serde_bytes")]
    sig: &'a [u8],
}

struct Fixtures {
    registry: Identity,
    root: ed25519_dalek::VerifyingKey,
    initiator: Identity,
    receiver: Identity,
    me: Amid,
    knock: SignedKnock,
    policy: Policy,
}

static FX: LazyLock<Fixtures> = LazyLock::new(|| {
    let initiator = Identity::from_seed(&[1; 32]);
    let receiver = Identity::from_seed(&[2; 32]);
    let me = receiver.amid();
    let wire = KnockBodyWire {
        from: initiator.amid(),
        to: me,
        intent: Intent::default(),
        session: SessionId([3; 16]),
        ts_ms: NOW,
        nonce: [4; 16],
        first: vec![1, 2, 3],
    };
    let body: KnockBody =
        codec::decode(&codec::encode(&wire).expect("encode"), MAX_KNOCK_SIZE).expect("decode");
    let knock = SignedKnock::sign(&initiator, &body).expect("sign");
    assert_eq!(knock.verify().expect("fixture knock verifies"), body);
    Fixtures {
        registry: Identity::from_seed(&[9; 32]),
        root: Identity::from_seed(&[9; 32])
            .amid()
            .verifying_key()
            .expect("root key"),
        initiator,
        receiver,
        me,
        knock,
        policy: Policy::permissive(),
    }
});

fuzz_target!(|data: &[u8]| {
    let fx = &*FX;

    // 1. Raw KNOCK.
    if let Ok(k) = SignedKnock::from_bytes(data) {
        let _ = k.hash();
        let _ = k.to_bytes();
        if let Ok(body) = k.verify() {
            let _ = fx
                .policy
                .evaluate(&fx.me, &body, KnockContext::default(), NOW);
        }
    }

    // 2. Raw decision answering a fixed KNOCK.
    // As it comes back for a KNOCK left in a mailbox: the KNOCK found by
    // the hash the decision names, then checked against that hash.
    if let Ok(d) = SignedDecision::from_bytes(data) {
        let _ = d.verify(&fx.me, &fx.knock);
        if let Some(hash) = d.peek_knock_hash() {
            let _ = d.verify_hash(&fx.me, &hash);
        }
        let _ = d.to_bytes();
    }

    // 3. Decision and KNOCK both from the input.
    let (a, b) = data.split_at(data.len() / 2);
    if let (Ok(d), Ok(k)) = (SignedDecision::from_bytes(a), SignedKnock::from_bytes(b)) {
        let _ = d.verify(&fx.me, &k);
    }

    let Some((&sel, rest)) = data.split_first() else {
        return;
    };

    // 4. Arbitrary KNOCK body, validly signed by the initiator.
    if let Ok(mut body) = codec::decode::<KnockBody>(rest, MAX_KNOCK_SIZE) {
        body.from = fx.initiator.amid();
        if sel & 1 == 1 {
            body.to = fx.me;
        }
        if let Ok(k) = SignedKnock::sign(&fx.initiator, &body) {
            if let Ok(k) = SignedKnock::from_bytes(&k.to_bytes()) {
                if let Ok(verified) = k.verify() {
                    assert_eq!(verified, body);
                    let checked = credentials::check(
                        &verified.credentials,
                        &verified.from,
                        &fx.root,
                        sel & 4 == 4,
                        NOW,
                        |_| sel & 8 == 8,
                    );
                    let ctx = KnockContext {
                        nonce_seen: sel & 2 == 2,
                        tier: checked.as_ref().map(|c| c.tier).unwrap_or_default(),
                        reputation: checked.as_ref().ok().and_then(|c| c.reputation),
                        revoked: matches!(checked, Err(CredentialError::Revoked)),
                        invalid_credentials: checked.is_err(),
                        ..KnockContext::default()
                    };
                    let _ = fx.policy.evaluate(&fx.me, &verified, ctx, NOW);
                }
            }
        }
    }

    // 5. Arbitrary decision body, validly signed by the receiver.
    if rest.len() <= MAX_DECISION_SIZE {
        let sig = fx.receiver.sign(DOMAIN_SEP_DECISION, rest);
        if let Ok(bytes) = codec::encode(&SignedWire {
            body: rest,
            sig: &sig,
        }) {
            if let Ok(d) = SignedDecision::from_bytes(&bytes) {
                let _ = d.verify(&fx.me, &fx.knock);
            }
        }
    }

    // 6. Arbitrary attestation body, validly signed by the registry root.
    if rest.len() <= credentials::MAX_ATTESTATION_SIZE {
        let a = credentials::SignedAttestation {
            body: rest.to_vec(),
            signature: fx.registry.sign(credentials::DOMAIN_SEP_REPUTATION, rest),
        };
        let _ = a.verify(&fx.root, &fx.initiator.amid(), NOW);
    }
});
