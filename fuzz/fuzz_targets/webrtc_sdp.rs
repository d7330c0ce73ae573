//! What a peer's `/webrtc-signaling/0.0.1` messages carry once
//! `webrtc_signal` has unframed them: an SDP offer or answer and trickled
//! ICE candidates as JSON (`transports/src/webrtc/mod.rs`). Those are
//! decoded by the `webrtc` crate, not by AgentMesh code:
//!
//! - `RTCSessionDescription::offer` / `answer` (what `set_remote_description`
//!   is handed): parses the SDP with the `sdp` crate. A parsed SDP must
//!   print (`marshal`) and the printed SDP must parse again.
//! - `add_candidate`: `serde_json::from_str::<RTCIceCandidateInit>`, then
//!   (as `RTCPeerConnection::add_ice_candidate` does) the `candidate:` prefix
//!   stripped and `unmarshal_candidate`; a parsed candidate converts to an
//!   `RTCIceCandidate` and back to JSON.
//!
//! The first byte picks the message (offer, answer, candidate JSON); the
//! rest is its `data`. The same bytes are also framed as a signalling
//! message and decoded, so seeds of `webrtc_signal` reach here too.
#![no_main]

use std::sync::Arc;

use agentmesh_transports::webrtc::signal::{decode_frame, Signal};
use libfuzzer_sys::fuzz_target;
use webrtc::{
    ice::candidate::{candidate_base::unmarshal_candidate, Candidate},
    ice_transport::{ice_candidate::RTCIceCandidate, ice_candidate::RTCIceCandidateInit},
    peer_connection::sdp::session_description::RTCSessionDescription,
};

fn sdp(text: &str, offer: bool) {
    let desc = if offer {
        RTCSessionDescription::offer(text.to_owned())
    } else {
        RTCSessionDescription::answer(text.to_owned())
    };
    let Ok(desc) = desc else {
        return;
    };
    let parsed = desc.unmarshal().expect("a parsed SDP parses again");
    let printed = parsed.marshal();
    // What the crate prints it must read back.
    let _ = RTCSessionDescription::offer(printed).expect("a printed SDP parses");
}

fn candidate(json: &str) {
    // `add_candidate` in transports/src/webrtc/mod.rs.
    let Ok(init) = serde_json::from_str::<RTCIceCandidateInit>(json) else {
        return;
    };
    if init.candidate.is_empty() {
        return;
    }
    // `RTCPeerConnection::add_ice_candidate`.
    let value = init
        .candidate
        .strip_prefix("candidate:")
        .unwrap_or(init.candidate.as_str());
    if value.is_empty() {
        return;
    }
    let Ok(c) = unmarshal_candidate(value) else {
        return;
    };
    let _ = c.marshal();
    let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
    let ice = RTCIceCandidate::from(&c);
    let _ = ice.to_json();
}

fn signal(s: Signal) {
    match s {
        Signal::Offer(t) => sdp(&t, true),
        Signal::Answer(t) => sdp(&t, false),
        Signal::Candidate(Some(c)) => candidate(&c),
        Signal::Candidate(None) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((s, _)) = decode_frame(data) {
        signal(s);
    }
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 3 {
        0 => sdp(text, true),
        1 => sdp(text, false),
        _ => candidate(text),
    }
});
