//! `/agentmesh/registry/1` decoding: what a registry node reads from any
//! peer (`Request`) and what a client reads back (`Response`), and the
//! length-prefixed frame reader in front of both.
//!
//! 1. `Request::from_bytes`; a decoded request must re-encode and decode to
//!    itself, and a signed request in it is verified.
//! 2. `Response::from_bytes`; the same round trip.
//! 3. `read_frame` over the input as a stream, with a small limit.
#![no_main]

use agentmesh_node::registry::protocol::{read_frame, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::from_bytes(data) {
        if let Ok(bytes) = r.to_bytes() {
            let again = Request::from_bytes(&bytes).expect("re-encoded request decodes");
            // Floats (reputation_min) may be NaN, which is never equal.
            if format!("{again:?}") != format!("{r:?}") {
                panic!("request does not round trip: {r:?} vs {again:?}");
            }
        }
        if let Request::Signed { request } = &r {
            let _ = request.verify(1_700_000_000_000);
        }
    }
    if let Ok(r) = Response::from_bytes(data) {
        if let Ok(bytes) = r.to_bytes() {
            let again = Response::from_bytes(&bytes).expect("re-encoded response decodes");
            assert_eq!(format!("{again:?}"), format!("{r:?}"));
        }
    }
    let mut cursor = futures::io::Cursor::new(data);
    let _ = futures::executor::block_on(read_frame(&mut cursor, 4096));
});
