//! The user-space delay line, in network namespaces: a host's packets leave
//! it no sooner than the set delay, in order, and stop being delayed when
//! the line is dropped. Needs root (see `agentmesh_sim::netns`).

use std::time::{Duration, Instant};

use agentmesh_sim::netns::{Lab, NatKind};

/// Round trips of a UDP echo from `a` to `b`; each answer must be the one
/// sent (in order, nothing lost on this idle link).
fn round_trips(
    a: &agentmesh_sim::netns::Host,
    b: &agentmesh_sim::netns::Host,
    n: u8,
) -> Vec<Duration> {
    let server = b.udp_socket(0).unwrap();
    let to = server.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let (len, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(&buf[..len], from).unwrap();
        }
    });
    let client = a.udp_socket(0).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rtts = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        client.send_to(&[i], to).unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = client.recv_from(&mut buf).expect("echo arrives");
        assert_eq!(&buf[..len], &[i]);
        rtts.push(start.elapsed());
    }
    echo.join().unwrap();
    rtts
}

#[test]
fn a_delayed_host_sends_nothing_before_its_delay_and_loses_nothing() {
    if agentmesh_sim::netns::skip_test(
        "a_delayed_host_sends_nothing_before_its_delay_and_loses_nothing",
    ) {
        return;
    }
    let mut lab = Lab::new().expect("network namespaces (run as root)");
    let a = lab.public_host("a").unwrap();
    let b = lab.public_host("b").unwrap();
    let delay = Duration::from_millis(40);
    {
        let line_a = a.delay_egress(delay).unwrap();
        let line_b = b.delay_egress(delay).unwrap();
        for rtt in round_trips(&a, &b, 5) {
            assert!(rtt >= 2 * delay, "{rtt:?} is less than two delays");
        }
        assert!(line_a.delayed() >= 5 && line_b.delayed() >= 5);
        assert_eq!(line_a.dropped() + line_b.dropped(), 0);
    }
    // Dropped: the routes are gone and packets flow without the device.
    assert_eq!(round_trips(&a, &b, 3).len(), 3);

    // A host behind a NAT router: delayed, then translated as usual.
    let behind = lab.nat_host("c", NatKind::PortRestricted).unwrap();
    let _line = behind.host.delay_egress(delay).unwrap();
    for rtt in round_trips(&behind.host, &b, 3) {
        assert!(rtt >= delay, "{rtt:?} is less than the delay");
    }
}
