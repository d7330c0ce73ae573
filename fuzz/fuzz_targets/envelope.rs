//! Envelope decoding and opening.
//!
//! Path 1 (wire bytes): `SignedEnvelope::from_bytes` on the raw input, then
//! `open` for a fixed recipient. Random bytes almost never carry a valid
//! signature, so this covers the outer decoder, the inner body decoder (it
//! runs before the signature check) and the signature check.
//!
//! Path 2 (signed content): the input (after one selector byte) is decoded as
//! an `EnvelopeBody`, re-signed by a fixed sender (any peer can sign any body
//! with its own key), sealed, encoded, decoded and opened. This reaches the
//! version, recipient and time-window checks with arbitrary field values and
//! checks that a sealed envelope round-trips.
#![no_main]

use std::sync::LazyLock;

use agentmesh_node::{
    crypto::envelope::{
        EnvelopeBody, SignedEnvelope, ENVELOPE_VERSION, MAX_CLOCK_SKEW_MS,
        MAX_ENVELOPE_LIFETIME_MS, MAX_ENVELOPE_SIZE,
    },
    identity::{Amid, Identity},
};
use agentmesh_transports::codec;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_000_000;

struct Fixtures {
    me: Amid,
    sender: Identity,
}

static FX: LazyLock<Fixtures> = LazyLock::new(|| Fixtures {
    me: Identity::from_seed(&[2; 32]).amid(),
    sender: Identity::from_seed(&[1; 32]),
});

fuzz_target!(|data: &[u8]| {
    let fx = &*FX;

    // Path 1: raw wire bytes.
    if let Ok(env) = SignedEnvelope::from_bytes(data) {
        let _ = env.open(&fx.me, NOW);
        let _ = env.to_bytes();
    }

    // Path 2: arbitrary body, validly signed.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut body) = codec::decode::<EnvelopeBody>(rest, MAX_ENVELOPE_SIZE) else {
        return;
    };
    body.from = fx.sender.amid();
    if sel & 1 == 1 {
        body.to = fx.me;
    }
    let Ok(sealed) = SignedEnvelope::seal(&fx.sender, &body) else {
        return;
    };
    let bytes = sealed.to_bytes();
    if bytes.len() > MAX_ENVELOPE_SIZE {
        return;
    }
    let decoded = SignedEnvelope::from_bytes(&bytes).expect("a sealed envelope decodes");
    assert_eq!(decoded, sealed);
    let opened = decoded.open(&fx.me, NOW);
    let should_open = body.v == ENVELOPE_VERSION
        && body.to == fx.me
        && body.expires_ms > NOW
        // An expiry over a week away is refused (`ExpiryTooFar`).
        && body.expires_ms <= NOW + MAX_ENVELOPE_LIFETIME_MS
        && body.ts_ms <= NOW + MAX_CLOCK_SKEW_MS;
    if should_open {
        assert_eq!(opened.expect("a valid envelope opens"), body);
    } else {
        assert!(opened.is_err());
    }
});
