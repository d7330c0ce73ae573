//! The errors of the node's API: starting, dialling, publishing, sending.

use crate::mailbox::MailboxError;

use crate::{
    audit::AuditError, crypto::envelope::SessionId, crypto::keystore::KeystoreError,
    identity::Amid, knock::RejectReason, storage::StorageError,
};

use super::RegistryClientError;

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// No data directory was given.
    #[error("no data directory")]
    NoDataDir,
    /// The keystore could not be opened.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// The database could not be opened (is another node using it?).
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    /// Sessions could not be loaded.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The DHT could not be started.
    #[error(transparent)]
    Dht(#[from] agentmesh_dht::DhtError),
    /// The transports could not be started.
    #[error(transparent)]
    Transport(#[from] agentmesh_transports::TransportError),
    /// An identity error.
    #[error(transparent)]
    Identity(#[from] crate::identity::AmidError),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] crate::knock::policy::PolicyError),
    /// The audit log does not open (tampered, or another key).
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// A plugin did not start.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// The registry address is not usable.
    #[error(transparent)]
    Registry(#[from] RegistryClientError),
    /// A capability in the configuration is not a valid capability (see
    /// [`crate::knock::policy::is_valid_capability`]).
    #[error("capability {0:?} is not a lowercase path such as `chat` or `weather/forecast`")]
    InvalidCapability(String),
    /// A custom schema does not compile, or `accept_schemas` names a
    /// schema not known or a capability not advertised.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// `accept_schemas` lists schemas for a capability the node does not
    /// advertise, or more than a card holds.
    #[error("accept_schemas: {0}")]
    AcceptSchemas(String),
}

/// Why a dial made through the node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The node is shutting down.
    #[error("node stopped")]
    Stopped,
    /// No connection within the dial timeout.
    #[error("dial timed out")]
    Timeout,
    /// The transports gave up, with their reason.
    #[error("dial failed: {0}")]
    Failed(String),
}

/// Why a record could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The node is shutting down.
    #[error("node stopped")]
    Stopped,
    /// The DHT did not finish the put in time.
    #[error("publish timed out")]
    Timeout,
    /// The record could not be signed or stored locally, with the reason.
    #[error("record refused: {0}")]
    Record(String),
}

/// Errors sending a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The recipient refused the KNOCK or the message.
    #[error("rejected by recipient: {0}")]
    Rejected(RejectReason),
    /// The recipient's card was not found in the DHT.
    #[error("no card found for {0}")]
    NotFound(Amid),
    /// The delivery deadline passed before the message was delivered (or
    /// deposited in a mailbox).
    #[error("delivery failed: not delivered in time")]
    DeliveryTimeout,
    /// The message was written but the recipient did not acknowledge it
    /// before the delivery deadline.
    #[error("delivery failed: not acknowledged in time")]
    NotAcknowledged,
    /// The recipient's AMID holds no usable key.
    #[error("delivery failed: the AMID has no valid key")]
    InvalidRecipient,
    /// Too many requests are waiting for their replies.
    #[error("too many requests waiting for replies")]
    Busy,
    /// Our own storage failed; nothing was sent.
    #[error("storage: {0}")]
    Storage(String),
    /// The payload is too large or not serializable.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The node is shutting down, or the owner killed the peer's link.
    #[error("node stopped")]
    Stopped,
    /// The owner's kill switch is on: nothing is sent.
    #[error("the owner's kill switch is on")]
    Killed,
    /// Too many recent failures with this peer: not tried again before the
    /// cool-down ends.
    #[error("circuit open; retry in {retry_after_ms} ms")]
    CircuitOpen {
        /// Time left in the cool-down.
        retry_after_ms: u64,
    },
    /// The recipient could not be reached and no relay took the envelope
    /// for its mailbox.
    #[error("mailbox deposit failed: {0}")]
    Mailbox(#[from] MailboxError),
    /// The session (conversation) this message belongs to has ended: one
    /// side ended or closed it, or it expired. A plain `send` opens a new one.
    #[error("the session has ended")]
    SessionEnded {
        /// The session, when there was one.
        session: Option<SessionId>,
    },
    /// No reply to a request came in time.
    #[error("no reply within {timeout_ms} ms")]
    Timeout {
        /// The time waited.
        timeout_ms: u64,
    },
}
