//! `Keystore::decrypt` on hostile keystore files.
//!
//! The file names its own Argon2id cost parameters and `decrypt` does not
//! bound them (see README.md, "Findings"): a file asking for gigabytes of
//! memory or billions of iterations would make every run slow or OOM. So the
//! target only runs inputs under 512 bytes, and first reads the parameters
//! with a decoder at least as lenient as the keystore's own (every field
//! except `kdf` is ignored) and skips inputs whose parameters are costly.
#![no_main]

use agentmesh_node::keystore::{KdfParams, Keystore, Passphrase};
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

/// Largest Argon2 memory cost run, in KiB.
const MAX_M_COST: u32 = 256;
const MAX_T_COST: u32 = 2;
const MAX_P_COST: u32 = 4;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 512 {
        return;
    }
    if let Ok(f) = codec::decode::<KdfOnly>(data, usize::MAX) {
        if f.kdf.m_cost > MAX_M_COST || f.kdf.t_cost > MAX_T_COST || f.kdf.p_cost > MAX_P_COST {
            return;
        }
    }
    let _ = Keystore::decrypt(data, &Passphrase::new("x"));
});
