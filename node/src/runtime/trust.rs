//! The node's side of registry trust: the credentials its KNOCKs show, the
//! local revocation set, the pinned registry root, and the check of an
//! initiator's credentials.
//!
//! The registry root key is pinned: taken from
//! [`Config::registry_root`](super::Config) when set, or else from the
//! registry the first time it names one, and stored in the database. A
//! registry that later names another root is refused
//! ([`RootPinError::Changed`]); nothing it serves is believed then.

use std::sync::OnceLock;

use ed25519_dalek::VerifyingKey;
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use super::{Node, Shared};
use crate::{
    audit::AuditEvent,
    events::NodeEvent,
    identity::Amid,
    knock::KnockBody,
    lru::BoundedLru,
    registry::{revocation_namespace, Revocation, SignedRevocation},
    trust::cert::{CertChain, Revocable},
    trust::credentials::{self, Checked, CredentialError, Credentials},
};

/// Sled tree of revoked keys (`k` ‖ key) and serials (`s` ‖ serial).
pub(super) const REVOKED_TREE: &str = "revoked";
/// Sled tree of what the node keeps about its registry.
pub(super) const REGISTRY_TRUST_TREE: &str = "registry-trust";
/// Key of the pinned registry root key in [`REGISTRY_TRUST_TREE`].
const PINNED_ROOT: &[u8] = b"root";
/// Most certificate chains remembered as checked with the registry.
const MAX_CHECKED_CHAINS: usize = 4096;
/// Most keys whose revocation status is followed one by one, when the
/// registry does not serve its whole list.
const MAX_WATCHED_KEYS: usize = 1024;

/// A registry root key other than the pinned one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootPinError {
    /// The registry names a root key other than the pinned one.
    #[error(
        "the registry names root key {offered}, but {pinned} is pinned; the change is refused"
    )]
    Changed {
        /// The pinned root key.
        pinned: Amid,
        /// The root key the registry named.
        offered: Amid,
    },
    /// The key the registry named is not a valid Ed25519 key.
    #[error("the registry names an invalid root key")]
    Invalid,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
}

/// Opens the pin of the registry root: the configured key (stored as the
/// pin, replacing another with a warning), or else the stored one.
pub(super) fn open_root_pin(
    db: &sled::Db,
    configured: Option<[u8; 32]>,
) -> Result<(sled::Tree, OnceLock<VerifyingKey>), sled::Error> {
    let tree = db.open_tree(REGISTRY_TRUST_TREE)?;
    let pin = OnceLock::new();
    let stored = tree
        .get(PINNED_ROOT)?
        .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok());
    let configured = configured.and_then(|k| match VerifyingKey::from_bytes(&k) {
        Ok(key) => Some(key),
        Err(_) => {
            tracing::warn!("the configured registry root is not a valid key; ignored");
            None
        }
    });
    if let Some(key) = configured {
        if stored.is_some_and(|s| s != key.to_bytes()) {
            tracing::warn!(
                root = %amid_of(&key),
                "the configured registry root replaces the pinned one"
            );
        }
        if stored != Some(key.to_bytes()) {
            tree.insert(PINNED_ROOT, key.to_bytes().as_slice())?;
            tree.flush()?;
        }
        let _ = pin.set(key);
    } else if let Some(key) = stored.and_then(|s| VerifyingKey::from_bytes(&s).ok()) {
        let _ = pin.set(key);
    }
    Ok((tree, pin))
}

fn amid_of(key: &VerifyingKey) -> String {
    Amid::from_bytes(&key.to_bytes())
        .map(|a| a.to_string())
        .unwrap_or_else(|_| hex::encode(key.to_bytes()))
}

/// What the node follows at the registry: chains it has checked, and keys
/// whose revocation it asks about.
#[derive(Debug)]
pub(super) struct RevocationWatch {
    /// Fingerprints of chains already checked with the registry.
    chains: BoundedLru<[u8; 32], ()>,
    /// Keys followed, each with when it was last checked (ms).
    keys: BoundedLru<[u8; 32], u64>,
}

impl Default for RevocationWatch {
    fn default() -> Self {
        Self {
            chains: BoundedLru::new(MAX_CHECKED_CHAINS),
            keys: BoundedLru::new(MAX_WATCHED_KEYS),
        }
    }
}

impl RevocationWatch {
    /// Records `chain` as checked; whether it was new.
    pub(super) fn first_sight(&mut self, chain: &CertChain, now: u64) -> bool {
        let Ok(bytes) = chain.to_bytes() else {
            return false;
        };
        let print: [u8; 32] = Sha256::digest(&bytes).into();
        if self.chains.get(&print).is_some() {
            let _ = self.chains.update(&print, |_| ((), 0));
            return false;
        }
        self.chains.insert(print, (), 0, now);
        true
    }

    /// Follows `key` (kept while there is room; never checked yet).
    pub(super) fn watch(&mut self, key: [u8; 32], now: u64) {
        if self.keys.get(&key).is_none() {
            self.keys.insert(key, 0, 0, now);
        }
    }

    /// Up to `max` followed keys, the longest unchecked first.
    pub(super) fn due(&self, max: usize) -> Vec<[u8; 32]> {
        let mut keys: Vec<_> = self.keys.iter().map(|(k, at)| (*at, *k)).collect();
        keys.sort_unstable();
        keys.into_iter().take(max).map(|(_, k)| k).collect()
    }

    /// Records that `key` was checked at `now`.
    pub(super) fn checked(&mut self, key: &[u8; 32], now: u64) {
        let _ = self.keys.update(key, |at| {
            *at = now;
            ((), 0)
        });
    }

    /// Stops following `key` (it is revoked).
    pub(super) fn forget(&mut self, key: &[u8; 32]) {
        let _ = self.keys.remove(key);
    }
}

/// The subject keys of a chain: the agent's and its organization's.
pub(super) fn chain_keys(chain: &CertChain) -> Vec<[u8; 32]> {
    chain
        .0
        .iter()
        .filter_map(|c| c.certificate().ok())
        .map(|c| c.subject_key)
        .collect()
}

/// Errors of the revocation set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No registry root key is configured or pinned, so revocations
    /// cannot be checked.
    #[error("no registry root key configured or pinned")]
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
    /// The pinned registry root key: the configured one, or the one the
    /// registry named first.
    pub(super) fn registry_root(&self) -> Option<VerifyingKey> {
        self.root_pin.get().copied()
    }

    /// Checks a root key the registry names against the pin, pinning it
    /// when none is (trust on first use). A different key is refused with a
    /// warning and [`NodeEvent::RegistryRootRefused`]; the pin stays.
    pub(super) fn pin_root(&self, offered: &[u8; 32]) -> Result<VerifyingKey, RootPinError> {
        let offered = VerifyingKey::from_bytes(offered).map_err(|_| RootPinError::Invalid)?;
        if self.root_pin.get().is_none() {
            // Stored before it is used: a restart keeps the same pin.
            let _guard = self.root_pin_lock.lock().unwrap_or_else(|e| e.into_inner());
            if self.root_pin.get().is_none() {
                self.trust_tree
                    .insert(PINNED_ROOT, offered.to_bytes().as_slice())?;
                self.trust_tree.flush()?;
                let _ = self.root_pin.set(offered);
                tracing::info!(root = %amid_of(&offered), "registry root pinned on first use");
            }
        }
        let pinned = self.root_pin.get().copied().ok_or(RootPinError::Invalid)?;
        if pinned == offered {
            return Ok(pinned);
        }
        let (Ok(pinned), Ok(offered)) = (
            Amid::from_bytes(&pinned.to_bytes()),
            Amid::from_bytes(&offered.to_bytes()),
        ) else {
            return Err(RootPinError::Invalid);
        };
        tracing::warn!(
            %pinned, %offered,
            "the registry names another root key; refused, nothing it serves is believed"
        );
        self.emit(NodeEvent::RegistryRootRefused { pinned, offered });
        Err(RootPinError::Changed { pinned, offered })
    }

    /// The revocation watch, even after a panic elsewhere.
    pub(super) fn watch(&self) -> std::sync::MutexGuard<'_, RevocationWatch> {
        self.revocation_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        self.store_revocations(verified)
    }

    /// Checks one revocation a registry or the DHT served against the
    /// pinned root and adds it; one that does not verify is logged and
    /// dropped. Returns whether it was believed and new.
    pub(super) fn believe(
        &self,
        signed: &SignedRevocation,
        source: &str,
    ) -> Result<bool, TrustError> {
        let root = self.registry_root().ok_or(TrustError::NoRegistryRoot)?;
        let rev = match signed.verify(&root) {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!(
                    source, error = %e,
                    "revocation refused: not signed by the pinned registry root"
                );
                return Err(TrustError::BadRevocation {
                    index: 0,
                    reason: e.to_string(),
                });
            }
        };
        let bytes = signed.to_bytes().map_err(|e| TrustError::BadRevocation {
            index: 0,
            reason: e.to_string(),
        })?;
        Ok(self.store_revocations(vec![(rev, bytes)])? > 0)
    }

    fn store_revocations(&self, verified: Vec<(Revocation, Vec<u8>)>) -> Result<usize, TrustError> {
        let mut added = 0;
        for (rev, bytes) in verified {
            let entry = match &rev.serial {
                Some(serial) => serial_entry(serial),
                None => key_entry(&rev.subject_key),
            };
            if self.revoked.insert(entry, bytes)?.is_none() {
                added += 1;
                if rev.serial.is_none() {
                    self.watch().forget(&rev.subject_key);
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
    /// pinned registry root ([`Node::registry_root`]); a batch with an
    /// invalid one adds nothing.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::Identity,
        knock::policy::Tier,
        trust::cert::{CertKind, Certificate, CERT_VERSION},
    };

    fn chain(root: &Identity, agent: &Identity, serial: u8) -> CertChain {
        let cert = Certificate {
            version: CERT_VERSION,
            kind: CertKind::Agent,
            subject_key: *agent.amid().as_bytes(),
            subject_name: "github:1".into(),
            tier: Tier::Verified,
            issuer_key: *root.amid().as_bytes(),
            serial: [serial; 16],
            not_before_ms: 0,
            not_after_ms: u64::MAX / 2,
        };
        CertChain(vec![cert.sign_as(root).unwrap()])
    }

    #[test]
    fn a_chain_is_new_once_and_keys_are_checked_longest_unchecked_first() {
        let root = Identity::from_seed(&[1; 32]);
        let (a, b) = (Identity::from_seed(&[2; 32]), Identity::from_seed(&[3; 32]));
        let mut w = RevocationWatch::default();
        let ca = chain(&root, &a, 1);
        assert!(w.first_sight(&ca, 10));
        assert!(!w.first_sight(&ca, 11));
        assert!(w.first_sight(&chain(&root, &a, 2), 12), "another serial");
        assert_eq!(chain_keys(&ca), vec![*a.amid().as_bytes()]);

        let (ka, kb) = (*a.amid().as_bytes(), *b.amid().as_bytes());
        w.watch(ka, 10);
        w.watch(kb, 10);
        w.checked(&ka, 100);
        assert_eq!(w.due(1), vec![kb], "never checked goes first");
        w.checked(&kb, 200);
        assert_eq!(w.due(2), vec![ka, kb]);
        // Watching again does not reset when a key was checked.
        w.watch(kb, 300);
        assert_eq!(w.due(2), vec![ka, kb]);
        w.forget(&ka);
        assert_eq!(w.due(2), vec![kb]);
    }

    #[test]
    fn the_watch_is_bounded() {
        let mut w = RevocationWatch::default();
        for i in 0..(MAX_WATCHED_KEYS as u32 + 10) {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            w.watch(k, u64::from(i));
        }
        assert_eq!(w.due(usize::MAX).len(), MAX_WATCHED_KEYS);
    }

    #[test]
    fn the_pin_is_stored_and_a_configured_root_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (one, two) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
        let (_, pin) = open_root_pin(&db, None).unwrap();
        assert!(pin.get().is_none(), "nothing pinned yet");
        let (_, pin) = open_root_pin(&db, Some(*one.amid().as_bytes())).unwrap();
        assert_eq!(
            pin.get().map(|k| k.to_bytes()),
            Some(*one.amid().as_bytes())
        );
        // Without a configured root, the stored pin.
        let (_, pin) = open_root_pin(&db, None).unwrap();
        assert_eq!(
            pin.get().map(|k| k.to_bytes()),
            Some(*one.amid().as_bytes())
        );
        // A configured root is the operator's choice: it replaces the pin.
        let (_, pin) = open_root_pin(&db, Some(*two.amid().as_bytes())).unwrap();
        assert_eq!(
            pin.get().map(|k| k.to_bytes()),
            Some(*two.amid().as_bytes())
        );
        let (_, pin) = open_root_pin(&db, None).unwrap();
        assert_eq!(
            pin.get().map(|k| k.to_bytes()),
            Some(*two.amid().as_bytes())
        );
    }
}
