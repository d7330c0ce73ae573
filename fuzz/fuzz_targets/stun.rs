//! `stun::respond`: datagrams sent to the STUN server. A response is only
//! made for a Binding request and is itself a well-formed STUN message.
#![no_main]

use agentmesh_transports::stun::respond;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let from = "192.0.2.1:3478".parse().expect("address");
    if let Ok(reply) = respond(data, from) {
        assert!(reply.len() >= 20);
        assert!(
            respond(&reply, from).is_err(),
            "a response is not a request"
        );
    }
});
