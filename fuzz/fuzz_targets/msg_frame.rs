//! `MsgFrame::from_bytes`: frames of the `/agentmesh/msg/1` stream, as read
//! from a peer. Decoded frames must re-encode and decode to themselves.
#![no_main]

use agentmesh_node::{crypto::envelope::MAX_ENVELOPE_SIZE, wire::MsgFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = MsgFrame::from_bytes(data) else {
        return;
    };
    let bytes = frame.to_bytes();
    // The decoder's limit is MAX_ENVELOPE_SIZE + 64; a re-encoding can be a
    // few bytes longer than a packed input, so only check within the limit.
    if !bytes.is_empty() && bytes.len() <= MAX_ENVELOPE_SIZE + 64 {
        assert_eq!(
            MsgFrame::from_bytes(&bytes).expect("an encoded frame decodes"),
            frame
        );
    }
});
