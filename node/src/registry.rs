//! Registry protocol types: what agents send to a bootstrap registry (JSON
//! over HTTP under `/v1`) and what it publishes.
//!
//! Every state change is a [`SignedRequest`]: the signer's AMID, the exact
//! JSON text of a [`RequestBody`] (operation, timestamp, nonce) and an
//! Ed25519 signature over [`DOMAIN_SEP_REQUEST`] ‖ body text. The registry
//! refuses bodies whose timestamp is more than [`MAX_CLOCK_SKEW_MS`] away
//! from its clock and any request whose signature it has seen before (hex
//! compared case-blind), so a request cannot be replayed.
//!
//! Reputation evidence is public: a [`SessionReceipt`] is signed by both
//! sides of a session, and ratings are signed requests that name such a
//! session, so anyone can recompute a score with
//! [`crate::trust::reputation::score`].
//!
//! Revocations are [`SignedRevocation`]s signed by the registry root key;
//! the registry serves them as a list and publishes each one in the DHT
//! under [`revocation_namespace`], so nodes can check them while the
//! registry is down.

pub mod client;
pub mod protocol;

pub use client::{Client, ClientError};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::{
    card::Presence,
    identity::{Amid, Identity},
};

/// Domain-separation context of registry request signatures.
pub const DOMAIN_SEP_REQUEST: &[u8] = b"agentmesh/registry-request/v1\0";
/// Domain-separation context of session receipt signatures.
pub const DOMAIN_SEP_RECEIPT: &[u8] = b"agentmesh/session-receipt/v1\0";
/// Domain-separation context of revocation signatures.
pub const DOMAIN_SEP_REVOCATION: &[u8] = b"agentmesh/revocation/v1\0";
/// Largest request body accepted, in bytes.
pub const MAX_REQUEST_BODY: usize = 16 * 1024;
/// How far a request timestamp may be from the registry's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Longest display name.
pub const MAX_DISPLAY_NAME: usize = 128;
/// Most capabilities per agent.
pub const MAX_CAPABILITIES: usize = 32;
/// Longest capability.
pub const MAX_CAPABILITY_LEN: usize = 128;
/// Most relays or addresses per agent.
pub const MAX_ADDRS: usize = 16;
/// Longest address or relay.
pub const MAX_ADDR_LEN: usize = 256;
/// Most one-time prekeys per upload.
pub const MAX_ONE_TIME_KEYS: usize = 100;
/// Longest revocation reason.
pub const MAX_REASON: usize = 256;
/// Largest encoded revocation.
pub const MAX_REVOCATION_SIZE: usize = 1024;
/// DHT namespace prefix of revocation records.
pub const REVOCATION_NAMESPACE_PREFIX: &str = "rv-";

/// The DHT namespace of the revocation of `subject` (a key), published by
/// the registry node: records live at `/rv-<base58 key>/<registry peer>`.
pub fn revocation_namespace(subject: &[u8; 32]) -> String {
    format!(
        "{REVOCATION_NAMESPACE_PREFIX}{}",
        bs58::encode(subject).into_string()
    )
}

/// Why a request, receipt or revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Bytes or JSON that do not parse, or fields out of bounds.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The timestamp is too far from the registry's clock.
    #[error("timestamp {ts_ms} is outside the accepted window")]
    StaleTimestamp {
        /// The timestamp received.
        ts_ms: u64,
    },
}

fn hex64(s: &str) -> Result<[u8; 64], RegistryError> {
    let v = hex::decode(s).map_err(|_| RegistryError::Malformed("signature is not hex".into()))?;
    v.try_into()
        .map_err(|_| RegistryError::Malformed("signature is not 64 bytes".into()))
}

/// A new random nonce, hex.
pub fn new_nonce() -> String {
    let mut n = [0u8; 16];
    crate::storage::fill_random(&mut n);
    hex::encode(n)
}

/// An agent's registration (first or update).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Registration {
    /// Human-readable name.
    pub display_name: String,
    /// Capabilities, e.g. `communication/chat`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Curve25519 key for key agreement (hex), e.g. the Olm identity key.
    /// Defaults to the Montgomery form of the Ed25519 key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x25519_key: Option<String>,
    /// Mailbox relays (multiaddrs).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Listen addresses (multiaddrs).
    #[serde(default)]
    pub addrs: Vec<String>,
}

impl Registration {
    /// A registration with a name and capabilities.
    pub fn new(display_name: impl Into<String>, capabilities: Vec<String>) -> Self {
        Self {
            display_name: display_name.into(),
            capabilities,
            ..Self::default()
        }
    }

    /// Checks the bounds of every field.
    pub fn check(&self) -> Result<(), RegistryError> {
        if self.display_name.is_empty() || self.display_name.len() > MAX_DISPLAY_NAME {
            return Err(RegistryError::Malformed("display_name length".into()));
        }
        check_capabilities(&self.capabilities)?;
        if let Some(k) = &self.x25519_key {
            let ok = hex::decode(k).map(|b| b.len() == 32).unwrap_or(false);
            if !ok {
                return Err(RegistryError::Malformed(
                    "x25519_key must be 32 bytes hex".into(),
                ));
            }
        }
        for list in [&self.relays, &self.addrs] {
            if list.len() > MAX_ADDRS || list.iter().any(|a| a.len() > MAX_ADDR_LEN) {
                return Err(RegistryError::Malformed(
                    "too many or too long addresses".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a capability list: at most [`MAX_CAPABILITIES`], each one a
/// valid capability (the KNOCK's vocabulary: see
/// [`crate::knock::policy::is_valid_capability`]) of at most
/// [`MAX_CAPABILITY_LEN`] bytes.
pub fn check_capabilities(caps: &[String]) -> Result<(), RegistryError> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(RegistryError::Malformed(format!(
            "at most {MAX_CAPABILITIES} capabilities"
        )));
    }
    if let Some(bad) = caps
        .iter()
        .find(|c| c.len() > MAX_CAPABILITY_LEN || !crate::knock::policy::is_valid_capability(c))
    {
        let shown: String = bad.chars().take(64).collect();
        return Err(RegistryError::Malformed(format!(
            "capability {shown:?} is not a lowercase path such as `chat` or `weather/forecast`"
        )));
    }
    Ok(())
}

/// A prekey bundle upload (Olm keys, Curve25519, hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PrekeyBundle {
    /// Olm identity key.
    pub identity_key: String,
    /// Fallback key, used when the one-time keys run out.
    pub fallback_key: String,
    /// One-time keys; each is handed out once.
    #[serde(default)]
    pub one_time_keys: Vec<String>,
    /// The agent's signed card as `agentmesh card export` writes it: the
    /// registry hands it out with the keys, so a sender that cannot reach
    /// the DHT can still find the agent and start a session, trusting the
    /// card's own signature, not the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
}

impl PrekeyBundle {
    /// A bundle of raw keys.
    pub fn new(identity_key: [u8; 32], fallback_key: [u8; 32], one_time_keys: &[[u8; 32]]) -> Self {
        Self {
            identity_key: hex::encode(identity_key),
            fallback_key: hex::encode(fallback_key),
            one_time_keys: one_time_keys.iter().map(hex::encode).collect(),
            card: None,
        }
    }

    /// The bundle with the agent's exported card (see [`Self::card`]).
    pub fn with_card(mut self, card: String) -> Self {
        self.card = Some(card);
        self
    }

    /// Checks every key is 32 bytes of hex and the count is bounded.
    pub fn check(&self) -> Result<(), RegistryError> {
        if self.one_time_keys.len() > MAX_ONE_TIME_KEYS {
            return Err(RegistryError::Malformed("too many one-time keys".into()));
        }
        if self
            .card
            .as_ref()
            .is_some_and(|c| c.len() > crate::contacts::MAX_CARD_TEXT)
        {
            return Err(RegistryError::Malformed("card too long".into()));
        }
        let all = [&self.identity_key, &self.fallback_key]
            .into_iter()
            .chain(self.one_time_keys.iter());
        for k in all {
            if !hex::decode(k).map(|b| b.len() == 32).unwrap_or(false) {
                return Err(RegistryError::Malformed("keys must be 32 bytes hex".into()));
            }
        }
        Ok(())
    }
}

/// A rating of the other side of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Feedback {
    /// The session rated (hex of its 16-byte id); a receipt for it must be
    /// on file, signed by both sides.
    pub session_id: String,
    /// The agent rated.
    pub target: Amid,
    /// The rating, 0..=1.
    pub score: f64,
}

impl Feedback {
    /// A rating of `target` for `session_id`.
    pub fn new(session_id: impl Into<String>, target: Amid, score: f64) -> Self {
        Self {
            session_id: session_id.into(),
            target,
            score,
        }
    }
}

/// The signed content of a session receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReceiptBody {
    /// Session id, hex of 16 bytes.
    pub session_id: String,
    /// Who opened the session.
    pub initiator: Amid,
    /// Who accepted it.
    pub responder: Amid,
    /// Whether the session completed.
    pub completed: bool,
    /// When it ended, ms since the epoch.
    pub ended_ms: u64,
}

impl ReceiptBody {
    /// A receipt body.
    pub fn new(
        session_id: [u8; 16],
        initiator: Amid,
        responder: Amid,
        completed: bool,
        ended_ms: u64,
    ) -> Self {
        Self {
            session_id: hex::encode(session_id),
            initiator,
            responder,
            completed,
            ended_ms,
        }
    }
}

/// A session receipt: the exact JSON of a [`ReceiptBody`] and both sides'
/// signatures over [`DOMAIN_SEP_RECEIPT`] ‖ body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionReceipt {
    /// JSON of the body.
    pub body: String,
    /// Initiator's signature, hex.
    pub initiator_sig: String,
    /// Responder's signature, hex.
    pub responder_sig: String,
}

impl SessionReceipt {
    /// Signs `body` by both parties (for tests and for agents that hold both
    /// signatures after exchanging them).
    pub fn sign(
        body: &ReceiptBody,
        initiator: &Identity,
        responder: &Identity,
    ) -> Result<Self, RegistryError> {
        let text =
            serde_json::to_string(body).map_err(|e| RegistryError::Malformed(e.to_string()))?;
        Ok(Self::from_signatures(
            text.clone(),
            initiator.sign(DOMAIN_SEP_RECEIPT, text.as_bytes()),
            responder.sign(DOMAIN_SEP_RECEIPT, text.as_bytes()),
        ))
    }

    /// A receipt from a body text and the two signatures.
    pub fn from_signatures(body: String, initiator_sig: [u8; 64], responder_sig: [u8; 64]) -> Self {
        Self {
            body,
            initiator_sig: hex::encode(initiator_sig),
            responder_sig: hex::encode(responder_sig),
        }
    }

    /// Checks both signatures and returns the body.
    pub fn verify(&self) -> Result<ReceiptBody, RegistryError> {
        if self.body.len() > MAX_REQUEST_BODY {
            return Err(RegistryError::Malformed("receipt too large".into()));
        }
        let body: ReceiptBody = serde_json::from_str(&self.body)
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        let sid = hex::decode(&body.session_id).unwrap_or_default();
        if sid.len() != 16 {
            return Err(RegistryError::Malformed(
                "session_id must be 16 bytes hex".into(),
            ));
        }
        if body.initiator == body.responder {
            return Err(RegistryError::Malformed(
                "a session needs two agents".into(),
            ));
        }
        for (who, sig) in [
            (&body.initiator, &self.initiator_sig),
            (&body.responder, &self.responder_sig),
        ] {
            if !who.verify(DOMAIN_SEP_RECEIPT, self.body.as_bytes(), &hex64(sig)?) {
                return Err(RegistryError::BadSignature);
            }
        }
        Ok(body)
    }
}

/// A state change asked of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// Register or update the signer.
    Register(Registration),
    /// Set the signer's presence.
    Status {
        /// The new presence.
        presence: Presence,
    },
    /// Replace the signer's capabilities.
    Capabilities {
        /// The new list.
        capabilities: Vec<String>,
    },
    /// Upload the signer's prekey bundle.
    Prekeys(PrekeyBundle),
    /// Rate the other side of a session.
    Feedback(Feedback),
    /// File a session receipt signed by both sides (the signer is one).
    Session {
        /// The receipt.
        receipt: SessionReceipt,
    },
    /// Revoke an agent: the signer itself, or an agent whose organization
    /// the signer is.
    Revoke {
        /// The agent revoked.
        subject: Amid,
        /// Why.
        reason: String,
    },
    /// Register an organization; the signer is the organization key.
    OrgRegister {
        /// The domain to be verified by DNS.
        domain: String,
        /// Display name.
        name: String,
    },
    /// Ask for verification of the signer's organization.
    OrgVerify {
        /// The domain registered.
        domain: String,
    },
    /// Start OAuth verification (tier 1) of the signer: the answer names
    /// the provider URL to open in a browser.
    OauthAuthorize {},
    /// File the certificate the signer's verified organization issued to
    /// one of its agents (tier 1.5).
    OrgAgent {
        /// The agent.
        agent: Amid,
        /// The agent certificate signed by the organization key: CBOR of a
        /// [`crate::trust::cert::SignedCertificate`], hex.
        certificate: String,
    },
    /// Move the registration of a key the signer rotated away from to the
    /// signer: its record, tier (a tier 1 certificate is issued again for
    /// the new key) and reputation history. The old key is revoked.
    Rotate {
        /// The signer's rotation history, oldest first, ending at the
        /// signer: each a CBOR [`SignedRotation`](crate::identity::rotation::SignedRotation), hex.
        rotations: Vec<String>,
    },
}

impl Operation {
    /// The operation's name, as in its `op` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register(_) => "register",
            Self::Status { .. } => "status",
            Self::Capabilities { .. } => "capabilities",
            Self::Prekeys(_) => "prekeys",
            Self::Feedback(_) => "feedback",
            Self::Session { .. } => "session",
            Self::Revoke { .. } => "revoke",
            Self::OrgRegister { .. } => "org_register",
            Self::OrgVerify { .. } => "org_verify",
            Self::OrgAgent { .. } => "org_agent",
            Self::OauthAuthorize {} => "oauth_authorize",
            Self::Rotate { .. } => "rotate",
        }
    }
}

/// The signed content of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RequestBody {
    /// Signing time, ms since the epoch.
    pub ts_ms: u64,
    /// Random nonce, hex.
    pub nonce: String,
    /// What is asked.
    #[serde(flatten)]
    pub op: Operation,
}

/// A signed request as it is posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SignedRequest {
    /// Who signs.
    pub signer: Amid,
    /// JSON text of a [`RequestBody`], signed as is.
    pub body: String,
    /// Ed25519 signature over [`DOMAIN_SEP_REQUEST`] ‖ body, hex.
    pub signature: String,
}

impl SignedRequest {
    /// Signs `op` at `now_ms` with a fresh nonce.
    pub fn sign(identity: &Identity, op: Operation, now_ms: u64) -> Result<Self, RegistryError> {
        let body = RequestBody {
            ts_ms: now_ms,
            nonce: new_nonce(),
            op,
        };
        let text =
            serde_json::to_string(&body).map_err(|e| RegistryError::Malformed(e.to_string()))?;
        let signature = hex::encode(identity.sign(DOMAIN_SEP_REQUEST, text.as_bytes()));
        Ok(Self {
            signer: identity.amid(),
            body: text,
            signature,
        })
    }

    /// Checks size, signature and timestamp window, and returns the body.
    pub fn verify(&self, now_ms: u64) -> Result<RequestBody, RegistryError> {
        if self.body.len() > MAX_REQUEST_BODY {
            return Err(RegistryError::Malformed("body too large".into()));
        }
        let sig = hex64(&self.signature)?;
        if !self
            .signer
            .verify(DOMAIN_SEP_REQUEST, self.body.as_bytes(), &sig)
        {
            return Err(RegistryError::BadSignature);
        }
        let body: RequestBody = serde_json::from_str(&self.body)
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        if body.ts_ms.abs_diff(now_ms) > MAX_CLOCK_SKEW_MS {
            return Err(RegistryError::StaleTimestamp { ts_ms: body.ts_ms });
        }
        if body.nonce.is_empty() || body.nonce.len() > 64 {
            return Err(RegistryError::Malformed("nonce length".into()));
        }
        Ok(body)
    }
}

/// The signed content of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Wire format: fixed by its domain-separation version.
pub struct Revocation {
    /// The revoked key (agent or organization).
    #[serde(with = "serde_bytes")]
    pub subject_key: [u8; 32],
    /// Serial of a revoked certificate, when only it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<serde_bytes::ByteArray<16>>,
    /// Why.
    pub reason: String,
    /// When, ms since the epoch.
    pub revoked_ms: u64,
    /// The registry root key that signs it.
    #[serde(with = "serde_bytes")]
    pub issuer_key: [u8; 32],
}

/// A revocation as published: its CBOR body and the root's signature over
/// [`DOMAIN_SEP_REVOCATION`] ‖ body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRevocation {
    /// CBOR of a [`Revocation`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Root signature.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl Revocation {
    /// Signs with the registry root, which must be the `issuer_key`.
    pub fn sign(&self, root: &Identity) -> Result<SignedRevocation, RegistryError> {
        if root.amid().as_bytes() != &self.issuer_key {
            return Err(RegistryError::Malformed(
                "issuer_key is not the signer".into(),
            ));
        }
        if self.reason.len() > MAX_REASON {
            return Err(RegistryError::Malformed("reason too long".into()));
        }
        let body = codec::encode(self).map_err(|e| RegistryError::Malformed(e.to_string()))?;
        let signature = root.sign(DOMAIN_SEP_REVOCATION, &body);
        Ok(SignedRevocation { body, signature })
    }
}

impl SignedRevocation {
    /// Checks the root's signature and returns the revocation.
    pub fn verify(&self, root: &VerifyingKey) -> Result<Revocation, RegistryError> {
        let sig = Signature::from_bytes(&self.signature);
        root.verify_strict(
            &[DOMAIN_SEP_REVOCATION, self.body.as_slice()].concat(),
            &sig,
        )
        .map_err(|_| RegistryError::BadSignature)?;
        let r: Revocation = codec::decode(&self.body, MAX_REVOCATION_SIZE)
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        if r.issuer_key != root.to_bytes() {
            return Err(RegistryError::BadSignature);
        }
        Ok(r)
    }

    /// Encodes for a DHT record or a file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RegistryError> {
        codec::encode(self).map_err(|e| RegistryError::Malformed(e.to_string()))
    }

    /// Decodes (signature not checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RegistryError> {
        codec::decode(bytes, MAX_REVOCATION_SIZE + 128)
            .map_err(|e| RegistryError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn capabilities_share_the_knock_vocabulary() {
        assert!(check_capabilities(&[
            "chat".into(),
            "code-review".into(),
            "weather/forecast".into()
        ])
        .is_ok());
        let e = check_capabilities(&["chat".into(), "Chat Bot".into()]).unwrap_err();
        assert!(e.to_string().contains("Chat Bot"), "{e}");
        let many: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        assert!(check_capabilities(&many).is_err());
    }

    #[test]
    fn signed_request_round_trip() {
        let id = Identity::from_seed(&[1; 32]);
        let op = Operation::Register(Registration::new("bot", vec!["chat".into()]));
        let req = SignedRequest::sign(&id, op.clone(), NOW).unwrap();
        let json = serde_json::to_string(&req).unwrap();
        let back: SignedRequest = serde_json::from_str(&json).unwrap();
        let body = back.verify(NOW + 1000).unwrap();
        assert_eq!(body.op, op);
        assert!(req.body.contains("\"op\":\"register\""));
    }

    #[test]
    fn signed_request_refusals() {
        let id = Identity::from_seed(&[1; 32]);
        let other = Identity::from_seed(&[2; 32]);
        let op = Operation::Status {
            presence: Presence::Away,
        };
        let req = SignedRequest::sign(&id, op, NOW).unwrap();
        assert_eq!(
            req.verify(NOW + MAX_CLOCK_SKEW_MS + 1),
            Err(RegistryError::StaleTimestamp { ts_ms: NOW })
        );
        let mut forged = req.clone();
        forged.signer = other.amid();
        assert_eq!(forged.verify(NOW), Err(RegistryError::BadSignature));
        let mut edited = req.clone();
        edited.body = edited.body.replace("away", "dnd");
        assert_eq!(edited.verify(NOW), Err(RegistryError::BadSignature));
        let mut short = req;
        short.signature.truncate(10);
        assert!(matches!(
            short.verify(NOW),
            Err(RegistryError::Malformed(_))
        ));
    }

    #[test]
    fn receipts_need_both_signatures() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let c = Identity::from_seed(&[3; 32]);
        let body = ReceiptBody::new([7; 16], a.amid(), b.amid(), true, NOW);
        let r = SessionReceipt::sign(&body, &a, &b).unwrap();
        assert_eq!(r.verify().unwrap(), body);
        let forged = SessionReceipt::sign(&body, &a, &c).unwrap();
        assert_eq!(forged.verify(), Err(RegistryError::BadSignature));
        let self_deal = ReceiptBody::new([7; 16], a.amid(), a.amid(), true, NOW);
        assert!(matches!(
            SessionReceipt::sign(&self_deal, &a, &a).unwrap().verify(),
            Err(RegistryError::Malformed(_))
        ));
    }

    #[test]
    fn revocations_verify_under_the_root() {
        let root = Identity::from_seed(&[9; 32]);
        let r = Revocation {
            subject_key: [5; 32],
            serial: None,
            reason: "key compromised".into(),
            revoked_ms: NOW,
            issuer_key: *root.amid().as_bytes(),
        };
        let s = r.sign(&root).unwrap();
        let rk = root.amid().verifying_key().unwrap();
        let back = SignedRevocation::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back.verify(&rk).unwrap(), r);
        let other = Identity::from_seed(&[8; 32])
            .amid()
            .verifying_key()
            .unwrap();
        assert_eq!(back.verify(&other), Err(RegistryError::BadSignature));
        let mut bent = back;
        bent.body[3] ^= 1;
        assert_eq!(bent.verify(&rk), Err(RegistryError::BadSignature));
    }

    #[test]
    fn namespace_fits_the_dht_limit() {
        let ns = revocation_namespace(&[0xff; 32]);
        assert!(ns.len() <= 64 && !ns.contains('/'));
    }
}
