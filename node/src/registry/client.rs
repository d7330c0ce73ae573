//! A registry client for programs that are not nodes (the `agentmesh` CLI,
//! scripts): a small swarm of its own, with an ephemeral key and no
//! listener, that speaks `/agentmesh/registry/1` ([`protocol`](super::protocol))
//! to one registry node. A running node asks its registry through its own
//! swarm instead ([`Node::registry_call`](crate::Node::registry_call)).

use std::time::Duration;

use futures::StreamExt;
use libp2p::{identity::Keypair, multiaddr::Protocol, relay, swarm::NetworkBehaviour};

use agentmesh_transports::{build_swarm, TransportConfig, TransportError};

use super::{
    protocol::{call, ProtocolError, Request, Response},
    SignedRequest,
};
use crate::{Multiaddr, PeerId};

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    relay: relay::client::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// Why a [`Client`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address does not end in `/p2p/<peer id>`.
    #[error("a registry multiaddr must end in /p2p/<peer id>: {0}")]
    Address(Multiaddr),
    /// The transports could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The registry node could not be dialled.
    #[error("dialling the registry: {0}")]
    Dial(#[from] libp2p::swarm::DialError),
}

/// A connection to one registry node. Dropping it stops its swarm.
pub struct Client {
    control: libp2p_stream::Control,
    peer: PeerId,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer", &self.peer).finish()
    }
}

impl Client {
    /// Dials the registry node at `addr` (ending in `/p2p/<peer id>`).
    /// Must be called within a Tokio runtime: the swarm runs on a task of
    /// its own.
    pub fn connect(addr: &Multiaddr) -> Result<Self, ClientError> {
        let peer = addr
            .iter()
            .find_map(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            })
            .ok_or_else(|| ClientError::Address(addr.clone()))?;
        let mut config = TransportConfig::default();
        config.listen = Vec::new();
        let mut swarm = build_swarm(Keypair::generate_ed25519(), &config, |_, relay| {
            ClientBehaviour {
                relay,
                stream: libp2p_stream::Behaviour::new(),
            }
        })?;
        let control = swarm.behaviour().stream.new_control();
        swarm.dial(addr.clone())?;
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Ok(Self {
            control,
            peer,
            task,
        })
    }

    /// The registry node's peer id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Sends `request` and reads the answer, within `timeout` (connection
    /// included).
    pub async fn call(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ProtocolError> {
        let mut control = self.control.clone();
        call(&mut control, self.peer, request, timeout).await
    }

    /// Sends a signed request (the operation is in its body).
    pub async fn signed(
        &self,
        request: SignedRequest,
        timeout: Duration,
    ) -> Result<Response, ProtocolError> {
        self.call(&Request::Signed { request }, timeout).await
    }
}
