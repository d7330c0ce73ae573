//! The node's side of registry trust: the credentials its KNOCKs show, the
//! local revocation set, and the check of an initiator's credentials.

use ed25519_dalek::VerifyingKey;
use libp2p::PeerId;

use super::{Node, Shared};
use crate::{
    audit::AuditEvent,
    cert::Revocable,
    credentials::{self, Checked, CredentialError, Credentials},
    identity::Amid,
    knock::KnockBody,
    registry::{revocation_namespace, SignedRevocation},
};

/// Sled tree of revoked keys (`k` ‖ key) and serials (`s` ‖ serial).
pub(super) const REVOKED_TREE: &str = "revoked";

/// Errors of the revocation set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No registry root key is configured, so revocations cannot be checked.
    #[error("no registry root key configured")]
    NoRegistryRoot,
    /// A revocation is not signed by the registry root or is malformed.
    #[error("revocation {index} is invalid: {reason}")]
    BadRevocation {
        /// Its position in the batch.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
}

fn key_entry(key: &[u8; 32]) -> Vec<u8> {
    [b"k".as_slice(), key].concat()
}

fn serial_entry(serial: &[u8; 16]) -> Vec<u8> {
    [b"s".as_slice(), serial].concat()
}

/// What the receiver makes of an initiator's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Assessment {
    pub(super) checked: Checked,
    pub(super) revoked: bool,
    pub(super) invalid: bool,
}

impl Shared {
    /// The registry root key, if configured and valid.
    pub(super) fn registry_root(&self) -> Option<VerifyingKey> {
        self.config
            .registry_root
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
    }

    /// What our KNOCKs show.
    pub(super) fn credentials(&self) -> Credentials {
        self.credentials
            .read()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Whether a key or serial is in the local revocation set. A read error
    /// counts as revoked: refusing is the safe side.
    pub(super) fn is_revoked(&self, r: Revocable<'_>) -> bool {
        let entry = match r {
            Revocable::Key(k) => key_entry(k),
            Revocable::Serial(s) => serial_entry(s),
        };
        self.revoked.contains_key(entry).unwrap_or(true)
    }

    /// Checks the initiator's credentials at `now`: revocation of the
    /// initiator first (also without a registry root), then the chain, log
    /// proof and reputation against the root.
    pub(super) fn assess(&self, body: &KnockBody, now: u64) -> Assessment {
        if self.is_revoked(Revocable::Key(body.from.as_bytes())) {
            return Assessment {
                revoked: true,
                ..Assessment::default()
            };
        }
        let Some(root) = self.registry_root() else {
            // Nothing to check against: the initiator is anonymous.
            return Assessment::default();
        };
        match credentials::check(
            &body.credentials,
            &body.from,
            &root,
            self.config.require_log_inclusion,
            now,
            |r| self.is_revoked(r),
        ) {
            Ok(checked) => Assessment {
                checked,
                ..Assessment::default()
            },
            Err(CredentialError::Revoked) => Assessment {
                revoked: true,
                ..Assessment::default()
            },
            Err(e) => {
                tracing::info!(from = %body.from.short(), error = %e, "credentials refused");
                Assessment {
                    invalid: true,
                    ..Assessment::default()
                }
            }
        }
    }

    /// Ends every session with a revoked agent: its next message needs a
    /// KNOCK, which is refused.
    fn close_revoked(&self, key: &[u8; 32]) {
        let Ok(peer) = Amid::from_bytes(key) else {
            return;
        };
        let sessions = self.store().forget_peer(&peer);
        for session in sessions {
            self.audit(AuditEvent::SessionClosed {
                peer,
                session,
                why: "revoked".into(),
            });
        }
    }

    fn add_revocations(&self, revocations: &[SignedRevocation]) -> Result<usize, TrustError> {
        let root = self.registry_root().ok_or(TrustError::NoRegistryRoot)?;
        let mut verified = Vec::with_capacity(revocations.len());
        for (index, r) in revocations.iter().enumerate() {
            let rev = r.verify(&root).map_err(|e| TrustError::BadRevocation {
                index,
                reason: e.to_string(),
            })?;
            let bytes = r.to_bytes().map_err(|e| TrustError::BadRevocation {
                index,
                reason: e.to_string(),
            })?;
            verified.push((rev, bytes));
        }
        let mut added = 0;
        for (rev, bytes) in verified {
            let entry = match &rev.serial {
                Some(serial) => serial_entry(serial),
                None => key_entry(&rev.subject_key),
            };
            if self.revoked.insert(entry, bytes)?.is_none() {
                added += 1;
                if rev.serial.is_none() {
                    self.close_revoked(&rev.subject_key);
                }
                tracing::info!(
                    subject = %bs58::encode(rev.subject_key).into_string(),
                    serial = rev.serial.is_some(),
                    "revocation added"
                );
            }
        }
        self.revoked.flush()?;
        Ok(added)
    }
}

impl Node {
    /// Replaces what this node's KNOCKs show (certificates, log proof,
    /// reputation attestation), e.g. after the registry issued them.
    pub fn set_credentials(&self, credentials: Credentials) {
        if let Ok(mut c) = self.shared.credentials.write() {
            *c = credentials;
        }
    }

    /// Adds registry revocations to the local revocation set, which KNOCKs
    /// are checked against before anything else (it is on disk and needs no
    /// registry at KNOCK time). Every revocation must be signed by the
    /// configured registry root; a batch with an invalid one adds nothing.
    /// Returns how many were new.
    pub fn add_revocations(&self, revocations: &[SignedRevocation]) -> Result<usize, TrustError> {
        self.shared.add_revocations(revocations)
    }

    /// Whether `amid`'s key is in the local revocation set.
    pub fn is_revoked(&self, amid: &Amid) -> bool {
        self.shared.is_revoked(Revocable::Key(amid.as_bytes()))
    }

    /// Looks up the revocation of `subject` that the registry node
    /// `registry` published in the DHT and adds it to the local set.
    /// Returns whether one was found and is new.
    pub async fn fetch_revocation(
        &self,
        registry: &PeerId,
        subject: &Amid,
    ) -> Result<bool, TrustError> {
        let ns = revocation_namespace(subject.as_bytes());
        let Some(record) = self.get_record(&ns, registry).await else {
            return Ok(false);
        };
        let signed = SignedRevocation::from_bytes(&record.payload).map_err(|e| {
            TrustError::BadRevocation {
                index: 0,
                reason: e.to_string(),
            }
        })?;
        Ok(self.add_revocations(&[signed])? > 0)
    }
}
