//! Identity rotation statements (`SignedRotation`), read from `rot` records
//! in the DHT: raw bytes through `from_bytes` + `verify`, and statements
//! validly signed by two fixed keys over an arbitrary body (reaches the
//! body decoder and the chain walk). A statement that verifies must name two
//! different keys and re-encode to itself; `follow` never panics.
#![no_main]

use agentmesh_node::identity::{
    rotation::{follow, SignedRotation, DOMAIN_SEP_ROTATION},
    Identity,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SignedRotation::from_bytes(data) {
        if let Ok(body) = r.verify() {
            assert_ne!(body.old, body.new);
            let again = SignedRotation::from_bytes(&r.to_bytes()).expect("re-encodes");
            assert_eq!(again, r);
            let _ = follow(body.old, &[r]);
        }
    }
    // An arbitrary body signed by both fixed keys.
    let old = Identity::from_seed(&[1; 32]);
    let new = Identity::from_seed(&[2; 32]);
    let signed = SignedRotation {
        body: data.to_vec(),
        sig_old: old.sign(DOMAIN_SEP_ROTATION, data).to_vec(),
        sig_new: new.sign(DOMAIN_SEP_ROTATION, data).to_vec(),
    };
    if let Ok(body) = signed.verify() {
        assert_eq!((body.old, body.new), (old.amid(), new.amid()));
        assert_eq!(follow(old.amid(), &[signed.clone()]), Ok(new.amid()));
        let _ = follow(new.amid(), &[signed.clone(), signed]);
    }
});
