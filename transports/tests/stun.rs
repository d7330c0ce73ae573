//! The STUN server answers webrtc-rs's STUN client on loopback.

use std::{sync::Arc, time::Duration};

use agentmesh_transports::stun::StunServer;
use stun::{
    agent::TransactionId,
    client::ClientBuilder,
    message::{Getter, Message, BINDING_REQUEST},
    xoraddr::XorMappedAddress,
};
use tokio::net::UdpSocket;

#[tokio::test]
async fn stun_client_learns_its_reflexive_address() {
    let server = StunServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server_addr = server.local_addr().unwrap();
    let serving = tokio::spawn(server.run());

    let conn = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = conn.local_addr().unwrap();
    conn.connect(server_addr).await.unwrap();
    let mut client = ClientBuilder::new()
        .with_conn(Arc::new(conn))
        .build()
        .unwrap();
    let mut request = Message::new();
    request
        .build(&[Box::<TransactionId>::default(), Box::new(BINDING_REQUEST)])
        .unwrap();
    // The client's handler API takes an unbounded sender; one event is sent.
    #[allow(clippy::disallowed_methods)]
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    client.send(&request, Some(Arc::new(tx))).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("stun response in time")
        .expect("an event");
    let response = event.event_body.expect("a response, not a timeout");
    let mut xor = XorMappedAddress::default();
    xor.get_from(&response).unwrap();
    assert_eq!(std::net::SocketAddr::new(xor.ip, xor.port), local);
    client.close().await.unwrap();
    serving.abort();
}
