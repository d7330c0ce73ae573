//! `Keystore::decrypt` on hostile keystore files.
//!
//! The file names its own Argon2id cost parameters. `decrypt` must refuse
//! costs over its caps (1 GiB, 64 passes, 16 lanes) before deriving, but the
//! costs it accepts are far too slow for fuzzing. So the target only runs
//! inputs under 512 bytes, first reads the parameters with a decoder at least
//! as lenient as the keystore's own (every field except `kdf` is ignored),
//! and runs only inputs whose parameters are cheap or over the caps. Should
//! the caps ever go, over-cap inputs show up as fuzzer timeouts or OOMs.
#![no_main]

use agentmesh_node::crypto::keystore::{KdfParams, Keystore, Passphrase};
use agentmesh_transports::codec;
use libfuzzer_sys::fuzz_target;
use serde::{de::IgnoredAny, Deserialize};

/// The keystore file layout, same field order (for packed, integer-keyed CBOR).
#[derive(Deserialize)]
#[allow(dead_code)]
struct KdfOnly {
    version: IgnoredAny,
    kdf: KdfParams,
    salt: IgnoredAny,
    nonce: IgnoredAny,
    ciphertext: IgnoredAny,
}

/// Costs cheap enough to derive on every run.
fn cheap(k: &KdfParams) -> bool {
    k.m_cost <= 256 && k.t_cost <= 2 && k.p_cost <= 4
}

/// Costs `decrypt` refuses before deriving (node/src/keystore.rs caps).
fn over_caps(k: &KdfParams) -> bool {
    k.m_cost > 1024 * 1024 || k.t_cost > 64 || k.p_cost > 16
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 512 {
        return;
    }
    if let Ok(f) = codec::decode::<KdfOnly>(data, usize::MAX) {
        if !cheap(&f.kdf) && !over_caps(&f.kdf) {
            return;
        }
    }
    let _ = Keystore::decrypt(data, &Passphrase::new("x"));
});
