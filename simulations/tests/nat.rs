//! NAT traversal between real processes in network namespaces, behind NAT
//! routers made with nftables (see `agentmesh_sim::netns`). Needs root: run
//! as root, these tests fail (rather than pass) without it.

use agentmesh_sim::netns::{Lab, NatKind};

#[test]
fn each_nat_kind_maps_and_filters_as_named() {
    let mut lab = Lab::new().expect("network namespaces");
    for kind in NatKind::ALL {
        let nat = lab.nat_host(&format!("h{}", kind as u8), kind).unwrap();
        let seen = lab.probe(&nat).unwrap();
        assert_eq!(seen, kind.expected(), "{kind}");
    }
}
