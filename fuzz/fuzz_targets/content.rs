//! `Content::from_bytes`: the decrypted plaintext of an envelope (its kind —
//! message, request, reply, end, stream chunk or finish — and its body), as a
//! peer chose it. Decoded content must re-encode and decode to itself, and
//! reading its JSON payload must not panic.
#![no_main]

use agentmesh_node::content::Content;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = Content::from_bytes(data) else {
        return;
    };
    let _ = content.payload();
    if let Ok(bytes) = content.to_bytes() {
        assert_eq!(
            Content::from_bytes(&bytes).expect("encoded content decodes"),
            content
        );
    }
});
