//! The mailbox server: store-and-forward of sealed envelopes for agents
//! that are offline.
//!
//! The protocol's wire types and the client that deposits, fetches and
//! acknowledges are the node's ([`agentmesh_node::mailbox`], re-exported
//! here); this module is the relay's side: the [`MailboxStore`] on sled and
//! [`serve`], which answers [`MAILBOX_PROTOCOL`] on a node's streams.

mod server;
mod store;

pub use agentmesh_node::mailbox::{
    ack, count, deposit, fetch, name_senders, ByteArrayId, EnvelopeId, ErrorCode, MailItem,
    MailboxError, Request, Response, MAILBOX_PROTOCOL, MAX_FRAME_SIZE,
};
pub use server::serve;
pub use store::{DepositError, MailboxStats, MailboxStore, StoreError};
