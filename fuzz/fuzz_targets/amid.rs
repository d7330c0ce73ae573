//! AMID text parsing (`"am…".parse::<Amid>()`): AMIDs arrive in cards,
//! configuration and user input. A parsed AMID must print back to the very
//! same text (no two texts name one key).
#![no_main]

use agentmesh_node::identity::Amid;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(amid) = s.parse::<Amid>() else {
        return;
    };
    let text = amid.to_string();
    assert_eq!(text, s, "AMID text is not canonical");
    assert_eq!(text.parse::<Amid>().expect("a printed AMID parses"), amid);
    let _ = amid.peer_id();
    let _ = amid.fingerprint();
});
