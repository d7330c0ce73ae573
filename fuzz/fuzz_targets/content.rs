//! `Content::from_bytes`: the decrypted plaintext of an envelope (its kind —
//! message, request, reply, end, stream chunk or finish — and its body), as a
//! peer chose it. Decoded content must re-encode and decode to itself, and
//! reading its JSON payload must not panic. The body of an end is the
//! peer's session receipt proposal: it is decoded and countersigned against
//! a fixed session, as a node does when the peer ends a conversation.
#![no_main]

use agentmesh_node::{
    content::{Content, Kind},
    crypto::envelope::SessionId,
    crypto::session::{Role, SessionInfo},
    identity::Identity,
    knock::Intent,
    trust::receipts::{countersign, Proposal},
};
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
    if content.kind == Kind::End {
        if let Ok(p) = Proposal::from_bytes(&content.body) {
            let me = Identity::from_seed(&[1; 32]);
            let peer = Identity::from_seed(&[2; 32]).amid();
            let info = SessionInfo::new(
                SessionId([7; 16]),
                peer,
                Role::Responder,
                Intent::default(),
                1_000,
                2_000,
            );
            if let Ok(signed) = countersign(&me, &info, &p, true, 1_500) {
                // Only a proposal the peer signed is countersigned.
                signed
                    .receipt
                    .verify()
                    .expect("a countersigned receipt verifies");
            }
        }
    }
});
