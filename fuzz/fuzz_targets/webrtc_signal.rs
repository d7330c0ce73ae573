//! `signal::decode_frame`: length-prefixed `/webrtc-signaling/0.0.1`
//! messages, as read from a peer. Decoded messages must re-encode and
//! decode to themselves.
#![no_main]

use agentmesh_transports::webrtc::signal::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((signal, used)) = decode_frame(data) else {
        return;
    };
    assert!(used <= data.len());
    let bytes = signal.encode();
    let (again, _) = decode_frame(&bytes).expect("an encoded message decodes");
    assert_eq!(again, signal);
});
