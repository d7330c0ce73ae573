//! The A2A gateway's decoders: a JSON-RPC request as an A2A client posts it,
//! and a Server-Sent Events body as an upstream A2A server answers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agentmesh_node::api::a2a::fuzz_decode(data);
});
