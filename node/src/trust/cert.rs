//! Tier certificates: how an agent proves tier 1 (verified) or tier 1.5
//! (organization) to a peer that judges its KNOCK, without asking the
//! registry.
//!
//! A certificate binds an Ed25519 subject key (an organization key, or an
//! agent's identity key, i.e. its [`Amid`]) to a name and a [`Tier`] for a
//! validity window. It is encoded as CBOR and signed over
//! [`DOMAIN_SEP_CERT`] ‖ body by its issuer.
//!
//! A [`CertChain`] lists the agent certificate first, then the organization
//! certificate if any. The registry root key is the trust anchor; it is
//! configured out of band and never carried in the chain:
//!
//! ```text
//! tier 1   (Verified):      root ──signs──▶ agent
//! tier 1.5 (Organization):  root ──signs──▶ org ──signs──▶ agent
//! ```
//!
//! [`CertChain::verify`] checks every signature, issuer link, kind, validity
//! window, the subject, tier consistency, the chain length and revocation
//! (serials and subject keys), and returns the tier the chain proves.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use agentmesh_transports::codec;

use crate::{
    identity::{Amid, Identity},
    knock::policy::Tier,
};

/// Domain-separation context of certificate signatures.
pub const DOMAIN_SEP_CERT: &[u8] = b"agentmesh/cert/v1\0";
/// Version of the certificate format.
pub const CERT_VERSION: u8 = 1;
/// Largest encoded certificate body accepted.
pub const MAX_CERT_SIZE: usize = 1024;
/// Most certificates in a chain (agent + organization).
pub const MAX_CHAIN_LEN: usize = 2;
/// Largest encoded chain accepted.
pub const MAX_CHAIN_SIZE: usize = MAX_CHAIN_LEN * (MAX_CERT_SIZE + 128) + 16;
/// Longest subject name (a DNS name is at most 253 bytes).
pub const MAX_SUBJECT_NAME: usize = 253;

/// What a certificate's subject key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertKind {
    /// An organization key, which may sign agent certificates.
    Organization,
    /// An agent's identity key.
    Agent,
}

/// The signed content of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Wire format: fixed by its version, hence not `non_exhaustive`.
pub struct Certificate {
    /// Format version, [`CERT_VERSION`].
    pub version: u8,
    /// Organization or agent.
    pub kind: CertKind,
    /// Ed25519 public key of the subject.
    #[serde(with = "serde_bytes")]
    pub subject_key: [u8; 32],
    /// Organization domain, or `provider:subject` of the OAuth account
    /// behind a tier 1 agent, or the agent's name within its organization.
    pub subject_name: String,
    /// Tier this certificate grants.
    pub tier: Tier,
    /// Ed25519 public key of the issuer (registry root or organization).
    #[serde(with = "serde_bytes")]
    pub issuer_key: [u8; 32],
    /// Serial number, unique per issuer; revocations may name it.
    #[serde(with = "serde_bytes")]
    pub serial: [u8; 16],
    /// Start of validity, ms since the epoch (inclusive).
    pub not_before_ms: u64,
    /// End of validity, ms since the epoch (exclusive).
    pub not_after_ms: u64,
}

/// A certificate as it travels: the exact encoded body and the issuer's
/// signature over [`DOMAIN_SEP_CERT`] ‖ body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCertificate {
    /// CBOR of a [`Certificate`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Issuer's Ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// A certificate chain: the agent certificate first, then the organization
/// certificate for tier 1.5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertChain(pub Vec<SignedCertificate>);

/// What a revocation check is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocable<'a> {
    /// A certificate serial.
    Serial(&'a [u8; 16]),
    /// A subject key (an agent or organization key).
    Key(&'a [u8; 32]),
}

/// Why a certificate or chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Bytes that do not decode, or fields out of bounds.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// A certificate format this version does not know.
    #[error("unsupported certificate version {0}")]
    UnsupportedVersion(u8),
    /// The chain holds no certificate.
    #[error("empty certificate chain")]
    Empty,
    /// The chain is longer than [`MAX_CHAIN_LEN`].
    #[error("certificate chain of {0} certificates is too long")]
    TooLong(usize),
    /// A signature does not verify under its issuer's key.
    #[error("bad signature on certificate {index}")]
    BadSignature {
        /// Position in the chain.
        index: usize,
    },
    /// The issuer key is not a valid Ed25519 key.
    #[error("certificate {index} names an invalid issuer key")]
    InvalidKey {
        /// Position in the chain.
        index: usize,
    },
    /// A certificate is past its validity window.
    #[error("certificate {index} expired at {not_after_ms} ms")]
    Expired {
        /// Position in the chain.
        index: usize,
        /// End of validity.
        not_after_ms: u64,
    },
    /// A certificate is not valid yet.
    #[error("certificate {index} is not valid before {not_before_ms} ms")]
    NotYetValid {
        /// Position in the chain.
        index: usize,
        /// Start of validity.
        not_before_ms: u64,
    },
    /// The agent certificate names another key.
    #[error("certificate is for another agent")]
    WrongSubject,
    /// A certificate is not issued by the next one in the chain (or the last
    /// one not by the root).
    #[error("certificate {index} is not issued by its parent")]
    BrokenChain {
        /// Position in the chain.
        index: usize,
    },
    /// A certificate has the wrong kind for its position.
    #[error("certificate {index} has kind {kind:?} where another was expected")]
    WrongKind {
        /// Position in the chain.
        index: usize,
        /// The kind found.
        kind: CertKind,
    },
    /// The tier does not match the chain's shape.
    #[error("certificate {index} claims tier {tier:?}, inconsistent with its chain")]
    TierMismatch {
        /// Position in the chain.
        index: usize,
        /// The tier claimed.
        tier: Tier,
    },
    /// A certificate or one of the keys it names is revoked.
    #[error("certificate {index} is revoked")]
    Revoked {
        /// Position in the chain.
        index: usize,
    },
}

impl Certificate {
    /// Encodes and signs this certificate with the issuer's key. The issuer
    /// key recorded in the certificate must be the signer's.
    pub fn sign(&self, issuer: &SigningKey) -> Result<SignedCertificate, CertError> {
        if issuer.verifying_key().to_bytes() != self.issuer_key {
            return Err(CertError::Malformed(
                "issuer_key is not the signing key".into(),
            ));
        }
        let body = self.encode()?;
        let signature = issuer
            .sign(&[DOMAIN_SEP_CERT, body.as_slice()].concat())
            .to_bytes();
        Ok(SignedCertificate { body, signature })
    }

    /// Encodes and signs this certificate with an [`Identity`] key (e.g. a
    /// registry root kept in a keystore). The issuer key recorded in the
    /// certificate must be the identity's.
    pub fn sign_as(&self, issuer: &Identity) -> Result<SignedCertificate, CertError> {
        if issuer.amid().as_bytes() != &self.issuer_key {
            return Err(CertError::Malformed(
                "issuer_key is not the signing key".into(),
            ));
        }
        let body = self.encode()?;
        let signature = issuer.sign(DOMAIN_SEP_CERT, &body);
        Ok(SignedCertificate { body, signature })
    }

    fn encode(&self) -> Result<Vec<u8>, CertError> {
        self.check_fields()?;
        let body = codec::encode(self).map_err(|e| CertError::Malformed(e.to_string()))?;
        if body.len() > MAX_CERT_SIZE {
            return Err(CertError::Malformed("certificate too large".into()));
        }
        Ok(body)
    }

    /// The agent's AMID, for an agent certificate.
    pub fn subject_amid(&self) -> Option<Amid> {
        match self.kind {
            CertKind::Agent => Amid::from_bytes(&self.subject_key).ok(),
            CertKind::Organization => None,
        }
    }

    /// Whether `now_ms` is inside the validity window.
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        self.not_before_ms <= now_ms && now_ms < self.not_after_ms
    }

    fn check_fields(&self) -> Result<(), CertError> {
        if self.version != CERT_VERSION {
            return Err(CertError::UnsupportedVersion(self.version));
        }
        if self.subject_name.len() > MAX_SUBJECT_NAME {
            return Err(CertError::Malformed("subject name too long".into()));
        }
        if self.not_before_ms >= self.not_after_ms {
            return Err(CertError::Malformed("empty validity window".into()));
        }
        Ok(())
    }
}

impl SignedCertificate {
    /// Decodes the body without checking the signature.
    pub fn certificate(&self) -> Result<Certificate, CertError> {
        let cert: Certificate = codec::decode(&self.body, MAX_CERT_SIZE)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        cert.check_fields()?;
        Ok(cert)
    }

    /// Whether the signature verifies under `issuer`.
    pub fn signed_by(&self, issuer: &VerifyingKey) -> bool {
        let sig = Signature::from_bytes(&self.signature);
        issuer
            .verify_strict(&[DOMAIN_SEP_CERT, self.body.as_slice()].concat(), &sig)
            .is_ok()
    }

    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CertError> {
        codec::encode(self).map_err(|e| CertError::Malformed(e.to_string()))
    }

    /// Decodes from the wire (signature not checked). Only the canonical
    /// encoding is accepted.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        codec::decode_canonical(bytes, MAX_CERT_SIZE + 128)
            .map_err(|e| CertError::Malformed(e.to_string()))
    }
}

impl CertChain {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CertError> {
        codec::encode(self).map_err(|e| CertError::Malformed(e.to_string()))
    }

    /// Decodes from the wire (nothing verified yet). Only the one canonical
    /// encoding of a chain is accepted, so a chain has one byte form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        let chain: Self = codec::decode_canonical(bytes, MAX_CHAIN_SIZE)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        if chain.0.len() > MAX_CHAIN_LEN {
            return Err(CertError::TooLong(chain.0.len()));
        }
        Ok(chain)
    }

    /// Verifies the chain for `subject` against the registry `root` key at
    /// `now_ms` and returns the tier it proves. `is_revoked` is asked about
    /// every certificate serial and every subject key in the chain.
    pub fn verify(
        &self,
        subject: &Amid,
        root: &VerifyingKey,
        now_ms: u64,
        is_revoked: impl Fn(Revocable<'_>) -> bool,
    ) -> Result<Tier, CertError> {
        let len = self.0.len();
        if len == 0 {
            return Err(CertError::Empty);
        }
        if len > MAX_CHAIN_LEN {
            return Err(CertError::TooLong(len));
        }
        let certs = self
            .0
            .iter()
            .map(SignedCertificate::certificate)
            .collect::<Result<Vec<_>, _>>()?;

        // Signatures and issuer links, from the anchor down.
        let mut issuer = *root;
        for index in (0..len).rev() {
            let cert = &certs[index];
            if cert.issuer_key != issuer.to_bytes() {
                return Err(CertError::BrokenChain { index });
            }
            if !self.0[index].signed_by(&issuer) {
                return Err(CertError::BadSignature { index });
            }
            if index > 0 {
                issuer = VerifyingKey::from_bytes(&cert.subject_key)
                    .map_err(|_| CertError::InvalidKey { index: index - 1 })?;
            }
        }

        // Kinds and tiers by position.
        let expected_tier = if len == 1 {
            Tier::Verified
        } else {
            Tier::Organization
        };
        for (index, cert) in certs.iter().enumerate() {
            let expected_kind = if index == 0 {
                CertKind::Agent
            } else {
                CertKind::Organization
            };
            if cert.kind != expected_kind {
                return Err(CertError::WrongKind {
                    index,
                    kind: cert.kind,
                });
            }
            if cert.tier != expected_tier {
                return Err(CertError::TierMismatch {
                    index,
                    tier: cert.tier,
                });
            }
        }

        if &certs[0].subject_key != subject.as_bytes() {
            return Err(CertError::WrongSubject);
        }

        for (index, cert) in certs.iter().enumerate() {
            if now_ms < cert.not_before_ms {
                return Err(CertError::NotYetValid {
                    index,
                    not_before_ms: cert.not_before_ms,
                });
            }
            if now_ms >= cert.not_after_ms {
                return Err(CertError::Expired {
                    index,
                    not_after_ms: cert.not_after_ms,
                });
            }
            if is_revoked(Revocable::Serial(&cert.serial))
                || is_revoked(Revocable::Key(&cert.subject_key))
            {
                return Err(CertError::Revoked { index });
            }
        }
        Ok(expected_tier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;
    const DAY: u64 = 86_400_000;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn cert(
        kind: CertKind,
        subject: [u8; 32],
        tier: Tier,
        issuer: &SigningKey,
        serial: u8,
    ) -> Certificate {
        Certificate {
            version: CERT_VERSION,
            kind,
            subject_key: subject,
            subject_name: "example.org".into(),
            tier,
            issuer_key: issuer.verifying_key().to_bytes(),
            serial: [serial; 16],
            not_before_ms: NOW - DAY,
            not_after_ms: NOW + DAY,
        }
    }

    struct Fx {
        root: SigningKey,
        org: SigningKey,
        agent: Identity,
    }

    fn fx() -> Fx {
        Fx {
            root: key(1),
            org: key(2),
            agent: Identity::from_seed(&[3; 32]),
        }
    }

    fn tier1(f: &Fx) -> CertChain {
        let c = cert(
            CertKind::Agent,
            *f.agent.amid().as_bytes(),
            Tier::Verified,
            &f.root,
            1,
        );
        CertChain(vec![c.sign(&f.root).unwrap()])
    }

    fn tier15(f: &Fx) -> CertChain {
        let org = cert(
            CertKind::Organization,
            f.org.verifying_key().to_bytes(),
            Tier::Organization,
            &f.root,
            2,
        );
        let agent = cert(
            CertKind::Agent,
            *f.agent.amid().as_bytes(),
            Tier::Organization,
            &f.org,
            3,
        );
        CertChain(vec![
            agent.sign(&f.org).unwrap(),
            org.sign(&f.root).unwrap(),
        ])
    }

    fn never(_: Revocable<'_>) -> bool {
        false
    }

    #[test]
    fn valid_chains_prove_their_tier() {
        let f = fx();
        let root = f.root.verifying_key();
        let me = f.agent.amid();
        assert_eq!(tier1(&f).verify(&me, &root, NOW, never), Ok(Tier::Verified));
        assert_eq!(
            tier15(&f).verify(&me, &root, NOW, never),
            Ok(Tier::Organization)
        );
    }

    #[test]
    fn wire_round_trip() {
        let f = fx();
        let chain = tier15(&f);
        let bytes = chain.to_bytes().unwrap();
        assert_eq!(CertChain::from_bytes(&bytes).unwrap(), chain);
        let one = &chain.0[0];
        assert_eq!(
            SignedCertificate::from_bytes(&one.to_bytes().unwrap()).unwrap(),
            *one
        );
    }

    #[test]
    fn other_root_is_refused() {
        let f = fx();
        let me = f.agent.amid();
        let other = key(9).verifying_key();
        assert_eq!(
            tier1(&f).verify(&me, &other, NOW, never),
            Err(CertError::BrokenChain { index: 0 })
        );
        assert_eq!(
            tier15(&f).verify(&me, &other, NOW, never),
            Err(CertError::BrokenChain { index: 1 })
        );
    }

    #[test]
    fn forged_signature_is_refused() {
        let f = fx();
        // Claims the root as issuer but is signed by another key.
        let c = cert(
            CertKind::Agent,
            *f.agent.amid().as_bytes(),
            Tier::Verified,
            &f.root,
            1,
        );
        let body = codec::encode(&c).unwrap();
        let signature = key(9)
            .sign(&[DOMAIN_SEP_CERT, body.as_slice()].concat())
            .to_bytes();
        let chain = CertChain(vec![SignedCertificate { body, signature }]);
        assert_eq!(
            chain.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never),
            Err(CertError::BadSignature { index: 0 })
        );
    }

    #[test]
    fn identity_signing_matches_key_signing() {
        let root_id = Identity::from_seed(&[1; 32]);
        let f = fx();
        let c = cert(
            CertKind::Agent,
            *f.agent.amid().as_bytes(),
            Tier::Verified,
            &f.root,
            1,
        );
        let a = c.sign_as(&root_id).unwrap();
        assert_eq!(a, c.sign(&f.root).unwrap());
        assert!(c.sign_as(&f.agent).is_err());
    }

    #[test]
    fn signing_with_another_key_than_the_issuer_is_refused() {
        let f = fx();
        let c = cert(CertKind::Agent, [5; 32], Tier::Verified, &f.root, 1);
        assert!(matches!(c.sign(&f.org), Err(CertError::Malformed(_))));
    }

    #[test]
    fn agent_cannot_skip_the_organization() {
        // An org-signed agent certificate alone does not chain to the root.
        let f = fx();
        let chain = CertChain(vec![tier15(&f).0[0].clone()]);
        assert_eq!(
            chain.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never),
            Err(CertError::BrokenChain { index: 0 })
        );
    }

    #[test]
    fn agent_certificate_cannot_sign_agents() {
        // root → agent A (tier 1) used as if it were an organization.
        let f = fx();
        let a = key(4);
        let a_cert = cert(
            CertKind::Agent,
            a.verifying_key().to_bytes(),
            Tier::Organization,
            &f.root,
            1,
        );
        let b_cert = cert(
            CertKind::Agent,
            *f.agent.amid().as_bytes(),
            Tier::Organization,
            &a,
            2,
        );
        let chain = CertChain(vec![
            b_cert.sign(&a).unwrap(),
            a_cert.sign(&f.root).unwrap(),
        ]);
        assert_eq!(
            chain.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never),
            Err(CertError::WrongKind {
                index: 1,
                kind: CertKind::Agent
            })
        );
    }

    #[test]
    fn organization_certificate_is_not_an_agent() {
        let f = fx();
        let org = cert(
            CertKind::Organization,
            *f.agent.amid().as_bytes(),
            Tier::Verified,
            &f.root,
            1,
        );
        let chain = CertChain(vec![org.sign(&f.root).unwrap()]);
        assert_eq!(
            chain.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never),
            Err(CertError::WrongKind {
                index: 0,
                kind: CertKind::Organization
            })
        );
    }

    #[test]
    fn tier_must_match_the_shape() {
        let f = fx();
        let me = f.agent.amid();
        let root = f.root.verifying_key();
        // Root-signed agent cert claiming organization tier.
        let c = cert(
            CertKind::Agent,
            *me.as_bytes(),
            Tier::Organization,
            &f.root,
            1,
        );
        assert_eq!(
            CertChain(vec![c.sign(&f.root).unwrap()]).verify(&me, &root, NOW, never),
            Err(CertError::TierMismatch {
                index: 0,
                tier: Tier::Organization
            })
        );
        let c = cert(CertKind::Agent, *me.as_bytes(), Tier::Anonymous, &f.root, 1);
        assert_eq!(
            CertChain(vec![c.sign(&f.root).unwrap()]).verify(&me, &root, NOW, never),
            Err(CertError::TierMismatch {
                index: 0,
                tier: Tier::Anonymous
            })
        );
    }

    #[test]
    fn certificate_of_another_agent_is_refused() {
        let f = fx();
        let other = Identity::from_seed(&[7; 32]).amid();
        assert_eq!(
            tier1(&f).verify(&other, &f.root.verifying_key(), NOW, never),
            Err(CertError::WrongSubject)
        );
        assert_eq!(
            tier15(&f).verify(&other, &f.root.verifying_key(), NOW, never),
            Err(CertError::WrongSubject)
        );
    }

    #[test]
    fn validity_windows_are_enforced() {
        let f = fx();
        let me = f.agent.amid();
        let root = f.root.verifying_key();
        let chain = tier15(&f);
        assert_eq!(
            chain.verify(&me, &root, NOW + DAY, never),
            Err(CertError::Expired {
                index: 0,
                not_after_ms: NOW + DAY
            })
        );
        assert_eq!(
            chain.verify(&me, &root, NOW - DAY - 1, never),
            Err(CertError::NotYetValid {
                index: 0,
                not_before_ms: NOW - DAY
            })
        );
        assert!(chain.verify(&me, &root, NOW - DAY, never).is_ok());
        assert!(chain.verify(&me, &root, NOW + DAY - 1, never).is_ok());

        // An expired organization invalidates its agents.
        let mut org = cert(
            CertKind::Organization,
            f.org.verifying_key().to_bytes(),
            Tier::Organization,
            &f.root,
            2,
        );
        org.not_after_ms = NOW - 1;
        let chain = CertChain(vec![chain.0[0].clone(), org.sign(&f.root).unwrap()]);
        assert_eq!(
            chain.verify(&me, &root, NOW, never),
            Err(CertError::Expired {
                index: 1,
                not_after_ms: NOW - 1
            })
        );
    }

    #[test]
    fn revocation_by_serial_or_key() {
        let f = fx();
        let me = f.agent.amid();
        let root = f.root.verifying_key();
        let chain = tier15(&f);
        let org_key = f.org.verifying_key().to_bytes();
        assert_eq!(
            chain.verify(&me, &root, NOW, |r| r == Revocable::Serial(&[3; 16])),
            Err(CertError::Revoked { index: 0 })
        );
        assert_eq!(
            chain.verify(&me, &root, NOW, |r| r == Revocable::Serial(&[2; 16])),
            Err(CertError::Revoked { index: 1 })
        );
        assert_eq!(
            chain.verify(&me, &root, NOW, |r| r == Revocable::Key(&org_key)),
            Err(CertError::Revoked { index: 1 })
        );
        assert_eq!(
            chain.verify(&me, &root, NOW, |r| r == Revocable::Key(me.as_bytes())),
            Err(CertError::Revoked { index: 0 })
        );
        assert!(chain
            .verify(&me, &root, NOW, |r| r == Revocable::Serial(&[9; 16]))
            .is_ok());
    }

    #[test]
    fn length_limits() {
        let f = fx();
        let me = f.agent.amid();
        let root = f.root.verifying_key();
        assert_eq!(
            CertChain(vec![]).verify(&me, &root, NOW, never),
            Err(CertError::Empty)
        );
        let mut long = tier15(&f);
        long.0.push(long.0[1].clone());
        assert_eq!(
            long.verify(&me, &root, NOW, never),
            Err(CertError::TooLong(3))
        );
        assert_eq!(
            CertChain::from_bytes(&long.to_bytes().unwrap()),
            Err(CertError::TooLong(3))
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        let f = fx();
        let mut c = cert(CertKind::Agent, [5; 32], Tier::Verified, &f.root, 1);
        c.version = 2;
        assert_eq!(c.sign(&f.root), Err(CertError::UnsupportedVersion(2)));
        c.version = CERT_VERSION;
        c.subject_name = "x".repeat(MAX_SUBJECT_NAME + 1);
        assert!(matches!(c.sign(&f.root), Err(CertError::Malformed(_))));
        c.subject_name = "ok".into();
        c.not_after_ms = c.not_before_ms;
        assert!(matches!(c.sign(&f.root), Err(CertError::Malformed(_))));
    }

    #[test]
    fn snapshot_is_stable() {
        let f = fx();
        let c = cert(CertKind::Agent, [5; 32], Tier::Verified, &f.root, 1);
        let body = codec::encode(&c).unwrap();
        assert_eq!(
            hex::encode(&body[..24]),
            "a96776657273696f6e01646b696e64656167656e746b7375"
        );
    }

    #[test]
    fn every_byte_position_matters() {
        let f = fx();
        for chain in [tier1(&f), tier15(&f)] {
            let bytes = chain.to_bytes().unwrap();
            for i in 0..bytes.len() {
                // Every delta: 0xe0 turns a text-string field name into a
                // byte string, which serde accepts unless decoding is canonical.
                for delta in 1u8..=255 {
                    let mut b = bytes.clone();
                    b[i] = b[i].wrapping_add(delta);
                    if let Ok(c) = CertChain::from_bytes(&b) {
                        assert!(
                            c.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never)
                                .is_err(),
                            "byte {i} + {delta} still verifies"
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any single-byte change anywhere in an encoded chain makes it
        /// fail to decode or fail to verify.
        #[test]
        fn any_byte_change_fails(org in any::<bool>(), pos in any::<usize>(), delta in 1u8..=255) {
            let f = fx();
            let chain = if org { tier15(&f) } else { tier1(&f) };
            let mut bytes = chain.to_bytes().unwrap();
            let i = pos % bytes.len();
            bytes[i] = bytes[i].wrapping_add(delta);
            if let Ok(c) = CertChain::from_bytes(&bytes) {
                prop_assert!(c.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never).is_err());
            }
        }

        /// Random bytes never panic the decoder or the verifier.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let f = fx();
            if let Ok(c) = CertChain::from_bytes(&bytes) {
                let _ = c.verify(&f.agent.amid(), &f.root.verifying_key(), NOW, never);
            }
            let _ = SignedCertificate::from_bytes(&bytes).map(|c| c.certificate());
        }
    }
}
