//! What an initiator shows in its KNOCK to prove its tier and reputation,
//! and how the receiver checks it without asking the registry.
//!
//! [`Credentials`] ride in the signed [`KnockBody`](crate::knock::KnockBody):
//!
//! - a [`CertChain`] (tier 1: root → agent; tier 1.5: root → org → agent);
//! - optionally the agent certificate's inclusion in the registry's
//!   transparency log: an [`InclusionProof`] and the [`SignedTreeHead`] it
//!   leads to, so a certificate the registry issued but did not log (a key
//!   swapped unseen) is refused;
//! - optionally a [`SignedAttestation`] of the agent's reputation, signed by
//!   the registry root with an expiry.
//!
//! The receiver runs [`check`] with the registry root key it was configured
//! with and its local revocation set, and gets the [`Tier`] and
//! [`Reputation`] that go into the policy's
//! [`KnockContext`](crate::knock::policy::KnockContext).
//!
//! ```
//! use agentmesh_node::trust::credentials::{check, Credentials, Reputation, ReputationAttestation};
//! use agentmesh_node::identity::Identity;
//!
//! let root = Identity::generate();
//! let agent = Identity::generate();
//! let attestation = ReputationAttestation {
//!     amid: agent.amid(),
//!     score: Reputation::from_f64(0.8),
//!     expires_ms: 2_000,
//! }
//! .sign(&root);
//! let creds = Credentials {
//!     reputation: Some(attestation),
//!     ..Credentials::default()
//! };
//! let root_key = root.amid().verifying_key().unwrap();
//! let checked = check(&creds, &agent.amid(), &root_key, false, 1_000, |_| false).unwrap();
//! assert_eq!(checked.reputation, Some(Reputation::from_f64(0.8)));
//! ```

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use agentmesh_transports::codec;

use crate::{
    identity::{Amid, Identity},
    knock::policy::Tier,
    trust::cert::{CertChain, CertError, Revocable},
    trust::transparency::{leaf_hash, InclusionProof, LeafKind, SignedTreeHead},
};

/// Domain-separation context of reputation attestations.
pub const DOMAIN_SEP_REPUTATION: &[u8] = b"agentmesh/reputation/v1\0";
/// Largest encoded attestation body accepted.
pub const MAX_ATTESTATION_SIZE: usize = 256;
/// Largest encoded [`Credentials`] accepted: a chain, a proof, a tree head
/// and an attestation.
pub const MAX_CREDENTIALS_SIZE: usize = crate::trust::cert::MAX_CHAIN_SIZE
    + crate::trust::transparency::MAX_PROOF_SIZE
    + crate::trust::transparency::MAX_TREE_HEAD_SIZE
    + MAX_ATTESTATION_SIZE
    + 256;

/// A reputation score in `0..=1`, kept in thousandths so that policies and
/// KNOCKs compare and hash exactly. Written as a number in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Reputation(u16);

impl Reputation {
    /// The score `x` (clamped to `0..=1`), rounded to thousandths.
    pub fn from_f64(x: f64) -> Self {
        let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        Self((x * 1000.0).round() as u16)
    }

    /// Thousandths, `0..=1000`.
    pub fn from_permille(p: u16) -> Self {
        Self(p.min(1000))
    }

    /// The score as a number in `0..=1`.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// Thousandths.
    pub fn permille(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Reputation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.as_f64())
    }
}

impl Serialize for Reputation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_f64(self.as_f64())
        } else {
            s.serialize_u16(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Reputation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let x = f64::deserialize(d)?;
            if !(0.0..=1.0).contains(&x) {
                return Err(serde::de::Error::custom("reputation must be in 0..=1"));
            }
            Ok(Self::from_f64(x))
        } else {
            let p = u16::deserialize(d)?;
            if p > 1000 {
                return Err(serde::de::Error::custom("reputation over 1000 permille"));
            }
            Ok(Self(p))
        }
    }
}

/// The signed content of a reputation attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Wire format: fixed by its domain-separation version.
pub struct ReputationAttestation {
    /// The agent.
    pub amid: Amid,
    /// Its score.
    pub score: Reputation,
    /// End of validity, ms since the epoch (exclusive).
    pub expires_ms: u64,
}

impl ReputationAttestation {
    /// Signs with the registry root key.
    pub fn sign(&self, root: &Identity) -> SignedAttestation {
        // A struct of an AMID and two integers always encodes.
        let body = codec::encode(self).unwrap_or_default();
        let signature = root.sign(DOMAIN_SEP_REPUTATION, &body);
        SignedAttestation { body, signature }
    }
}

/// A reputation attestation as it travels: its CBOR body and the registry
/// root's signature over [`DOMAIN_SEP_REPUTATION`] ‖ body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAttestation {
    /// CBOR of a [`ReputationAttestation`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Root signature.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl SignedAttestation {
    /// The expiry the body states, unchecked; `None` if it does not decode.
    pub fn expires_ms(&self) -> Option<u64> {
        codec::decode::<ReputationAttestation>(&self.body, MAX_ATTESTATION_SIZE)
            .ok()
            .map(|a| a.expires_ms)
    }

    /// Checks the signature, the subject and the expiry; returns the score.
    pub fn verify(
        &self,
        root: &VerifyingKey,
        subject: &Amid,
        now_ms: u64,
    ) -> Result<Reputation, CredentialError> {
        root.verify_strict(
            &[DOMAIN_SEP_REPUTATION, self.body.as_slice()].concat(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| CredentialError::BadAttestation)?;
        let a: ReputationAttestation = codec::decode(&self.body, MAX_ATTESTATION_SIZE)
            .map_err(|_| CredentialError::BadAttestation)?;
        if &a.amid != subject {
            return Err(CredentialError::BadAttestation);
        }
        if now_ms >= a.expires_ms {
            return Err(CredentialError::AttestationExpired);
        }
        Ok(a.score)
    }
}

/// The agent certificate's place in the registry's transparency log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogInclusion {
    /// Inclusion of `LeafKind::Certificate ‖ agent certificate` (CBOR of the
    /// chain's first [`SignedCertificate`](crate::trust::cert::SignedCertificate)).
    pub proof: InclusionProof,
    /// The head the proof leads to, signed by the registry root.
    pub head: SignedTreeHead,
}

/// What a KNOCK shows about its initiator. Empty for an anonymous agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
// Wire format: fixed by the KNOCK version, hence not `non_exhaustive`.
pub struct Credentials {
    /// Tier certificates, agent first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<CertChain>,
    /// Transparency-log inclusion of the agent certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<LogInclusion>,
    /// Registry-signed reputation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<SignedAttestation>,
}

impl Credentials {
    /// Whether nothing is shown.
    pub fn is_empty(&self) -> bool {
        self.chain.is_none() && self.inclusion.is_none() && self.reputation.is_none()
    }

    /// CBOR encoding, as the registry hands credentials out and a node
    /// stores them.
    pub fn to_bytes(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(self)
    }

    /// Decodes CBOR credentials (at most [`MAX_CREDENTIALS_SIZE`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_CREDENTIALS_SIZE)
    }

    /// The transparency-log leaf of a chain's agent certificate.
    pub fn log_leaf(chain: &CertChain) -> Result<Vec<u8>, CertError> {
        let first = chain.0.first().ok_or(CertError::Empty)?;
        let bytes = codec::encode(first).map_err(|e| CertError::Malformed(e.to_string()))?;
        Ok(LeafKind::Certificate.leaf(&bytes))
    }
}

/// File in an agent's data directory that holds the credentials its KNOCKs
/// show (CBOR); `agentmesh verify` writes it and `agentmesh run` loads it.
pub const CREDENTIALS_FILE: &str = "credentials.cbor";

/// Why stored credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoredCredentialsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold credentials.
    #[error("{path}: malformed credentials: {source}")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: codec::CodecError,
    },
}

/// Writes `creds` to [`CREDENTIALS_FILE`] in `dir` (atomically, owner-only).
pub fn save(dir: &std::path::Path, creds: &Credentials) -> Result<(), StoredCredentialsError> {
    let path = dir.join(CREDENTIALS_FILE);
    let bytes = creds
        .to_bytes()
        .map_err(|source| StoredCredentialsError::Malformed {
            path: path.clone(),
            source,
        })?;
    crate::crypto::keystore::write_private(&path, &bytes)
        .map_err(|source| StoredCredentialsError::Io { path, source })
}

/// Reads [`CREDENTIALS_FILE`] from `dir`; `None` when there is none.
pub fn load(dir: &std::path::Path) -> Result<Option<Credentials>, StoredCredentialsError> {
    let path = dir.join(CREDENTIALS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoredCredentialsError::Io { path, source }),
    };
    Credentials::from_bytes(&bytes)
        .map(Some)
        .map_err(|source| StoredCredentialsError::Malformed { path, source })
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The certificate chain does not verify.
    #[error("certificate chain: {0}")]
    Chain(#[from] CertError),
    /// A key or certificate in the chain, or the initiator, is revoked.
    #[error("revoked")]
    Revoked,
    /// The inclusion proof or its tree head does not verify, or a proof is
    /// required and missing.
    #[error("certificate not proven to be in the transparency log")]
    NotLogged,
    /// The reputation attestation's signature or subject is wrong.
    #[error("bad reputation attestation")]
    BadAttestation,
    /// The reputation attestation expired.
    #[error("reputation attestation expired")]
    AttestationExpired,
}

/// What the receiver learned from valid credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Checked {
    /// The tier the chain proves ([`Tier::Anonymous`] without one).
    pub tier: Tier,
    /// The attested reputation, if shown.
    pub reputation: Option<Reputation>,
}

impl Checked {
    /// What `creds` claim, without checking any signature: for showing
    /// stored credentials when no root key is configured.
    pub fn unverified(creds: &Credentials) -> Self {
        let tier = creds
            .chain
            .as_ref()
            .and_then(|c| c.0.first())
            .and_then(|c| c.certificate().ok())
            .map(|c| c.tier)
            .unwrap_or_default();
        let reputation = creds.reputation.as_ref().and_then(|a| {
            codec::decode::<ReputationAttestation>(&a.body, MAX_ATTESTATION_SIZE)
                .ok()
                .map(|a| a.score)
        });
        Self { tier, reputation }
    }
}

/// Checks `creds` of the initiator `subject` against the registry `root`
/// key at `now_ms`: the chain (with `is_revoked` asked about every serial
/// and key), the log inclusion (required when `require_inclusion` and a
/// chain is shown) and the reputation attestation.
pub fn check(
    creds: &Credentials,
    subject: &Amid,
    root: &VerifyingKey,
    require_inclusion: bool,
    now_ms: u64,
    is_revoked: impl Fn(Revocable<'_>) -> bool,
) -> Result<Checked, CredentialError> {
    if is_revoked(Revocable::Key(subject.as_bytes())) {
        return Err(CredentialError::Revoked);
    }
    let mut out = Checked::default();
    if let Some(chain) = &creds.chain {
        out.tier = chain
            .verify(subject, root, now_ms, &is_revoked)
            .map_err(|e| match e {
                CertError::Revoked { .. } => CredentialError::Revoked,
                e => CredentialError::Chain(e),
            })?;
        match &creds.inclusion {
            Some(inc) => {
                inc.head
                    .verify(root)
                    .map_err(|_| CredentialError::NotLogged)?;
                let leaf = Credentials::log_leaf(chain)?;
                inc.proof
                    .verify(&leaf_hash(&leaf), &inc.head)
                    .map_err(|_| CredentialError::NotLogged)?;
            }
            None if require_inclusion => return Err(CredentialError::NotLogged),
            None => {}
        }
    }
    if let Some(a) = &creds.reputation {
        out.reputation = Some(a.verify(root, subject, now_ms)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trust::cert::{CertKind, Certificate, SignedCertificate};
    use crate::trust::transparency::MemoryTree;

    pub(crate) const NOW: u64 = 1_700_000_000_000;

    /// A certificate for `subject` issued by `issuer`.
    pub(crate) fn cert(
        issuer: &Identity,
        subject: [u8; 32],
        kind: CertKind,
        tier: Tier,
        serial: u8,
        not_after_ms: u64,
    ) -> SignedCertificate {
        Certificate {
            version: crate::trust::cert::CERT_VERSION,
            kind,
            subject_key: subject,
            subject_name: "example.org".into(),
            tier,
            issuer_key: *issuer.amid().as_bytes(),
            serial: [serial; 16],
            not_before_ms: NOW - 1000,
            not_after_ms,
        }
        .sign_as(issuer)
        .unwrap()
    }

    /// A tier-1.5 chain root → org → agent.
    pub(crate) fn org_chain(root: &Identity, org: &Identity, agent: &Amid) -> CertChain {
        let org_cert = cert(
            root,
            *org.amid().as_bytes(),
            CertKind::Organization,
            Tier::Organization,
            1,
            NOW + 3_600_000,
        );
        let agent_cert = cert(
            org,
            *agent.as_bytes(),
            CertKind::Agent,
            Tier::Organization,
            2,
            NOW + 3_600_000,
        );
        CertChain(vec![agent_cert, org_cert])
    }

    #[test]
    fn stored_credentials_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let root = Identity::generate();
        let creds = Credentials {
            reputation: Some(
                ReputationAttestation {
                    amid: Identity::generate().amid(),
                    score: Reputation::from_f64(0.7),
                    expires_ms: NOW,
                }
                .sign(&root),
            ),
            ..Credentials::default()
        };
        save(dir.path(), &creds).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(creds));
        std::fs::write(dir.path().join(CREDENTIALS_FILE), b"\xff\x00junk").unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StoredCredentialsError::Malformed { .. })
        ));
    }

    #[test]
    fn chain_inclusion_and_reputation() {
        let root = Identity::from_seed(&[1; 32]);
        let org = Identity::from_seed(&[2; 32]);
        let agent = Identity::from_seed(&[3; 32]).amid();
        let rk = root.amid().verifying_key().unwrap();
        let chain = org_chain(&root, &org, &agent);

        // Anonymous: nothing shown.
        let c = check(&Credentials::default(), &agent, &rk, true, NOW, |_| false).unwrap();
        assert_eq!(c.tier, Tier::Anonymous);

        // Chain without a proof: fine unless a proof is required.
        let mut creds = Credentials {
            chain: Some(chain.clone()),
            ..Credentials::default()
        };
        assert_eq!(
            check(&creds, &agent, &rk, false, NOW, |_| false)
                .unwrap()
                .tier,
            Tier::Organization
        );
        assert_eq!(
            check(&creds, &agent, &rk, true, NOW, |_| false),
            Err(CredentialError::NotLogged)
        );

        // With the log proof.
        let mut log = MemoryTree::default();
        log.append(b"other");
        let i = log.append(&Credentials::log_leaf(&chain).unwrap());
        log.append(b"later");
        let head = SignedTreeHead::sign(&root, log.len(), log.root(), NOW);
        creds.inclusion = Some(LogInclusion {
            proof: log.inclusion_proof(i, log.len()).unwrap(),
            head: head.clone(),
        });
        assert_eq!(
            check(&creds, &agent, &rk, true, NOW, |_| false)
                .unwrap()
                .tier,
            Tier::Organization
        );
        // A proof of another leaf, or a head not signed by the root.
        let mut bad = creds.clone();
        bad.inclusion.as_mut().unwrap().proof = log.inclusion_proof(0, log.len()).unwrap();
        assert_eq!(
            check(&bad, &agent, &rk, true, NOW, |_| false),
            Err(CredentialError::NotLogged)
        );
        let mut bad = creds.clone();
        bad.inclusion.as_mut().unwrap().head =
            SignedTreeHead::sign(&org, log.len(), log.root(), NOW);
        assert_eq!(
            check(&bad, &agent, &rk, true, NOW, |_| false),
            Err(CredentialError::NotLogged)
        );

        // Another agent presenting this chain, an expired chain, a chain
        // from another root.
        let other = Identity::from_seed(&[4; 32]).amid();
        assert!(matches!(
            check(&creds, &other, &rk, false, NOW, |_| false),
            Err(CredentialError::Chain(CertError::WrongSubject))
        ));
        assert!(matches!(
            check(&creds, &agent, &rk, false, NOW + 3_600_000, |_| false),
            Err(CredentialError::Chain(CertError::Expired { .. }))
        ));
        let fake_root = Identity::from_seed(&[5; 32]);
        let forged = Credentials {
            chain: Some(org_chain(&fake_root, &org, &agent)),
            ..Credentials::default()
        };
        assert!(matches!(
            check(&forged, &agent, &rk, false, NOW, |_| false),
            Err(CredentialError::Chain(_))
        ));

        // Revoked: the organization's key, the agent's key, a serial, and
        // the initiator without any chain.
        let org_key = *org.amid().as_bytes();
        assert_eq!(
            check(&creds, &agent, &rk, false, NOW, |r| r
                == Revocable::Key(&org_key)),
            Err(CredentialError::Revoked)
        );
        assert_eq!(
            check(&creds, &agent, &rk, false, NOW, |r| r
                == Revocable::Serial(&[2; 16])),
            Err(CredentialError::Revoked)
        );
        assert_eq!(
            check(&Credentials::default(), &agent, &rk, false, NOW, |r| r
                == Revocable::Key(agent.as_bytes())),
            Err(CredentialError::Revoked)
        );

        // Reputation: valid, expired, for someone else, signed by another key.
        let att = |amid, signer: &Identity, expires_ms| Credentials {
            reputation: Some(
                ReputationAttestation {
                    amid,
                    score: Reputation::from_f64(0.72),
                    expires_ms,
                }
                .sign(signer),
            ),
            ..Credentials::default()
        };
        assert_eq!(
            check(&att(agent, &root, NOW + 1), &agent, &rk, false, NOW, |_| {
                false
            })
            .unwrap()
            .reputation,
            Some(Reputation::from_permille(720))
        );
        assert_eq!(
            check(&att(agent, &root, NOW), &agent, &rk, false, NOW, |_| false),
            Err(CredentialError::AttestationExpired)
        );
        assert_eq!(
            check(&att(other, &root, NOW + 1), &agent, &rk, false, NOW, |_| {
                false
            }),
            Err(CredentialError::BadAttestation)
        );
        assert_eq!(
            check(&att(agent, &org, NOW + 1), &agent, &rk, false, NOW, |_| {
                false
            }),
            Err(CredentialError::BadAttestation)
        );
    }

    #[test]
    fn reputation_serde() {
        let r = Reputation::from_f64(0.6);
        assert_eq!(serde_json::to_string(&r).unwrap(), "0.6");
        assert_eq!(serde_json::from_str::<Reputation>("0.6").unwrap(), r);
        assert!(serde_json::from_str::<Reputation>("1.5").is_err());
        let bytes = codec::encode(&r).unwrap();
        assert_eq!(codec::decode::<Reputation>(&bytes, 16).unwrap(), r);
        assert!(codec::decode::<Reputation>(&codec::encode(&1001u16).unwrap(), 16).is_err());
        assert_eq!(Reputation::from_f64(f64::NAN), Reputation::from_permille(0));
        assert_eq!(Reputation::from_f64(7.0).permille(), 1000);
    }
}
