//! A STUN binding server (RFC 5389): tells a client the address and port its
//! UDP packets arrive from, so that it can offer that server-reflexive
//! address to a peer as an ICE candidate.
//!
//! Only the Binding method is served; each request is answered with one
//! Binding success response carrying XOR-MAPPED-ADDRESS and FINGERPRINT.
//! Anything else (not STUN, not a request, another method) gets no answer.
//! The response is at most a few bytes longer than the request, so the
//! server is a poor amplifier.

use std::{net::SocketAddr, sync::Arc};

use stun::{
    fingerprint::FINGERPRINT,
    message::{Message, Setter, BINDING_REQUEST, BINDING_SUCCESS},
    xoraddr::XorMappedAddress,
};
use tokio::net::UdpSocket;

/// Largest datagram read; longer ones are truncated and then fail to decode.
const MAX_DATAGRAM: usize = 1500;

/// Errors of the STUN server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Binding or using the UDP socket failed.
    #[error("stun socket: {0}")]
    Io(#[from] std::io::Error),
    /// The datagram is not a well-formed STUN message.
    #[error("malformed stun message: {0}")]
    Malformed(String),
    /// A well-formed STUN message that is not a Binding request.
    #[error("not a binding request")]
    NotBindingRequest,
    /// The response could not be built.
    #[error("stun response: {0}")]
    Encode(String),
}

/// Decodes one datagram and, if it is a Binding request, returns the
/// Binding success response for a client seen at `from`.
pub fn respond(datagram: &[u8], from: SocketAddr) -> Result<Vec<u8>, StunError> {
    if !stun::message::is_message(datagram) {
        return Err(StunError::Malformed("no stun header".into()));
    }
    let mut request = Message::new();
    request
        .unmarshal_binary(datagram)
        .map_err(|e| StunError::Malformed(e.to_string()))?;
    if request.typ != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let mut response = Message::new();
    let setters: [Box<dyn Setter>; 4] = [
        Box::new(request),
        Box::new(BINDING_SUCCESS),
        Box::new(XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }),
        Box::new(FINGERPRINT),
    ];
    response
        .build(&setters)
        .map_err(|e| StunError::Encode(e.to_string()))?;
    Ok(response.raw)
}

/// A bound STUN server; [`StunServer::run`] serves it.
#[derive(Debug, Clone)]
pub struct StunServer {
    socket: Arc<UdpSocket>,
}

impl StunServer {
    /// Binds the UDP socket.
    pub async fn bind(addr: SocketAddr) -> Result<Self, StunError> {
        Ok(Self {
            socket: Arc::new(UdpSocket::bind(addr).await?),
        })
    }

    /// The address the server answers on.
    pub fn local_addr(&self) -> Result<SocketAddr, StunError> {
        Ok(self.socket.local_addr()?)
    }

    /// Answers Binding requests until the future is dropped or the socket
    /// fails. Bad datagrams are dropped with a debug log.
    pub async fn run(self) -> Result<(), StunError> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).await?;
            match respond(&buf[..n], from) {
                Ok(reply) => {
                    if let Err(e) = self.socket.send_to(&reply, from).await {
                        tracing::debug!(%from, error = %e, "stun reply not sent");
                    }
                }
                Err(e) => tracing::debug!(%from, error = %e, "stun datagram dropped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::{agent::TransactionId, message::Getter};

    #[test]
    fn answers_binding_request_with_reflexive_address() {
        let mut req = Message::new();
        req.build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(BINDING_REQUEST),
        ])
        .unwrap();
        let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let reply = respond(&req.raw, from).unwrap();
        let mut resp = Message::new();
        resp.unmarshal_binary(&reply).unwrap();
        assert_eq!(resp.typ, BINDING_SUCCESS);
        assert_eq!(resp.transaction_id, req.transaction_id);
        let mut xor = XorMappedAddress::default();
        xor.get_from(&resp).unwrap();
        assert_eq!(SocketAddr::new(xor.ip, xor.port), from);
    }

    #[test]
    fn rejects_garbage_and_other_methods() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            respond(b"hello", from),
            Err(StunError::Malformed(_))
        ));
        let mut ind = Message::new();
        ind.build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(BINDING_SUCCESS),
        ])
        .unwrap();
        assert!(matches!(
            respond(&ind.raw, from),
            Err(StunError::NotBindingRequest)
        ));
    }
}
