//! Identity: one Ed25519 key that is both the agent's signing key and its
//! libp2p key, so the PeerId and the AMID name the same key.
//!
//! An **AMID** (AgentMesh ID) is the self-certifying text form of the public
//! key: `am` followed by base58 of `version (1 byte) || public key (32 bytes)
//! || checksum (4 bytes)`, where the checksum is the first four bytes of
//! SHA-256(SHA-256(version || key)). Because the key is inside the AMID, a
//! signature can be checked and the peer dialled from the AMID alone.
//!
//! Every way to make an [`Amid`] (text, CBOR bytes, raw bytes, a
//! `VerifyingKey`, a libp2p key) refuses a key that is not a valid point
//! ([`AmidError::InvalidKey`]) or is of small order ([`AmidError::WeakKey`]),
//! so an `Amid` always names a key whose signatures only its secret can make.

pub mod rotation;

use std::{fmt, str::FromStr};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Text prefix of every AMID.
pub const AMID_PREFIX: &str = "am";
/// Version byte of the current AMID format.
pub const AMID_VERSION: u8 = 1;
const AMID_RAW_LEN: usize = 1 + 32 + 4;
/// Multicodec prefix of an Ed25519 public key (`ed25519-pub`, varint
/// `0xed`), as `did:key` writes it.
const MULTICODEC_ED25519_PUB: [u8; 2] = [0xed, 0x01];

/// Errors parsing an AMID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmidError {
    /// The text does not start with `am`.
    #[error("AMID must start with \"am\"")]
    MissingPrefix,
    /// The text is not base58.
    #[error("AMID is not valid base58")]
    NotBase58,
    /// The decoded length is wrong.
    #[error("AMID has {0} bytes, expected 37")]
    BadLength(usize),
    /// Unknown format version.
    #[error("unsupported AMID version {0}")]
    UnsupportedVersion(u8),
    /// The checksum does not match (typo?).
    #[error("AMID checksum mismatch")]
    BadChecksum,
    /// The embedded bytes are not an Ed25519 public key.
    #[error("AMID does not hold a valid Ed25519 key")]
    InvalidKey,
    /// The key is a point of small order: anyone can forge signatures that
    /// verify against it.
    #[error("AMID holds a weak (small-order) key")]
    WeakKey,
}

/// An agent's identifier: its Ed25519 public key in checksummed text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amid([u8; 32]);

fn checksum(version: u8, key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update([version]);
    h.update(key);
    let once = h.finalize();
    let twice = Sha256::digest(once);
    [twice[0], twice[1], twice[2], twice[3]]
}

impl Amid {
    /// The AMID of a public key, if it is not of small order.
    pub fn from_key(key: &VerifyingKey) -> Result<Self, AmidError> {
        if key.is_weak() {
            return Err(AmidError::WeakKey);
        }
        Ok(Self(key.to_bytes()))
    }

    /// The AMID of raw public key bytes, if they are a valid key that is
    /// not of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, AmidError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| AmidError::InvalidKey)?;
        if key.is_weak() {
            return Err(AmidError::WeakKey);
        }
        Ok(Self(*bytes))
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, AmidError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| AmidError::InvalidKey)
    }

    /// The libp2p PeerId of the same key.
    pub fn peer_id(&self) -> Result<PeerId, AmidError> {
        let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .map_err(|_| AmidError::InvalidKey)?;
        Ok(libp2p::identity::PublicKey::from(pk).to_peer_id())
    }

    /// The AMID of a libp2p public key, if it is an Ed25519 key that is
    /// not of small order ([`Amid::try_from_libp2p`] says why not).
    pub fn from_libp2p(pk: &libp2p::identity::PublicKey) -> Option<Self> {
        Self::try_from_libp2p(pk).ok()
    }

    /// The AMID of a libp2p public key: [`AmidError::InvalidKey`] when it
    /// is not Ed25519, [`AmidError::WeakKey`] when it is of small order.
    pub fn try_from_libp2p(pk: &libp2p::identity::PublicKey) -> Result<Self, AmidError> {
        let ed = pk
            .clone()
            .try_into_ed25519()
            .map_err(|_| AmidError::InvalidKey)?;
        Self::from_bytes(&ed.to_bytes())
    }

    /// Verifies `sig` over `domain || msg`, strictly: a weak (small-order)
    /// key or a non-canonical signature verifies nothing, so no signature
    /// is malleable and none can be made for a key without its secret.
    pub fn verify(&self, domain: &[u8], msg: &[u8], sig: &[u8]) -> bool {
        let Ok(key) = self.verifying_key() else {
            return false;
        };
        Self::verify_with(&key, domain, msg, sig)
    }

    /// [`Amid::verify`] with the key already decoded (from
    /// [`Amid::verifying_key`]), for callers that keep keys they check
    /// often: decoding a key costs about a tenth of a verification.
    pub fn verify_with(key: &VerifyingKey, domain: &[u8], msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        key.verify_strict(&[domain, msg].concat(), &sig).is_ok()
    }

    /// The same key as a `did:key` DID (`did:key:z6Mk…`): the multicodec
    /// `ed25519-pub` prefix and the key, in base58btc multibase.
    pub fn did_key(&self) -> String {
        let mut raw = Vec::with_capacity(MULTICODEC_ED25519_PUB.len() + self.0.len());
        raw.extend_from_slice(&MULTICODEC_ED25519_PUB);
        raw.extend_from_slice(&self.0);
        format!("did:key:z{}", bs58::encode(raw).into_string())
    }

    /// A short form for logs: the first 10 characters.
    pub fn short(&self) -> String {
        self.to_string().chars().take(10).collect()
    }

    /// Human fingerprint of the key: eight groups of four hex digits of its
    /// SHA-256, e.g. `a1b2:c3d4:…`. Compare it out of band.
    pub fn fingerprint(&self) -> String {
        let h = Sha256::digest(self.0);
        h[..16]
            .chunks(2)
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl fmt::Display for Amid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(AMID_RAW_LEN);
        raw.push(AMID_VERSION);
        raw.extend_from_slice(&self.0);
        raw.extend_from_slice(&checksum(AMID_VERSION, &self.0));
        write!(f, "{AMID_PREFIX}{}", bs58::encode(raw).into_string())
    }
}

impl fmt::Debug for Amid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amid({self})")
    }
}

impl FromStr for Amid {
    type Err = AmidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .strip_prefix(AMID_PREFIX)
            .ok_or(AmidError::MissingPrefix)?;
        if body.len() > 64 {
            return Err(AmidError::BadLength(body.len()));
        }
        let raw = bs58::decode(body)
            .into_vec()
            .map_err(|_| AmidError::NotBase58)?;
        if raw.len() != AMID_RAW_LEN {
            return Err(AmidError::BadLength(raw.len()));
        }
        if raw[0] != AMID_VERSION {
            return Err(AmidError::UnsupportedVersion(raw[0]));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[1..33]);
        if raw[33..] != checksum(raw[0], &key) {
            return Err(AmidError::BadChecksum);
        }
        Self::from_bytes(&key)
    }
}

impl Serialize for Amid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Amid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
            let arr: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| D::Error::custom("AMID must be 32 bytes"))?;
            // Checked like every other way in: a weak key is refused here,
            // not only when a signature is verified against it.
            Amid::from_bytes(&arr).map_err(D::Error::custom)
        }
    }
}

/// The agent's secret identity. Zeroized on drop; `Debug` shows only the AMID.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("amid", &self.amid())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        crate::storage::fill_random(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The identity with this 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The secret seed (for the keystore).
    pub(crate) fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The AMID.
    pub fn amid(&self) -> Amid {
        // Never of small order: the key is a clamped secret scalar (a
        // multiple of 8 in [2^254, 2^255), never a multiple of the group
        // order) times the base point, a point of prime order.
        let key = self.key.verifying_key();
        debug_assert!(!key.is_weak());
        Amid(key.to_bytes())
    }

    /// Signs `domain || msg`.
    pub fn sign(&self, domain: &[u8], msg: &[u8]) -> [u8; 64] {
        self.key.sign(&[domain, msg].concat()).to_bytes()
    }

    /// Signs a JWS signing input (`BASE64URL(header) "." BASE64URL(payload)`,
    /// RFC 7515) with EdDSA, as JOSE verifiers expect: the input itself, with
    /// no domain prefix. Such an input starts with the base64url of a JSON
    /// object, which none of AgentMesh's domain-separated messages does.
    pub fn sign_jws(&self, signing_input: &str) -> [u8; 64] {
        debug_assert!(signing_input.starts_with("eyJ"));
        self.key.sign(signing_input.as_bytes()).to_bytes()
    }

    /// The same key as a libp2p keypair.
    pub fn libp2p_keypair(&self) -> Result<libp2p::identity::Keypair, AmidError> {
        let mut seed = self.seed();
        libp2p::identity::Keypair::ed25519_from_bytes(seed.as_mut())
            .map_err(|_| AmidError::InvalidKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn did_key_matches_the_did_key_test_vector() {
        // did:key test vectors (w3c-ccg/did-method-key, ed25519-x25519.json):
        // the key of the all-zero seed.
        let amid = Identity::from_seed(&[0; 32]).amid();
        assert_eq!(
            amid.did_key(),
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
    }

    #[test]
    fn peer_id_matches_libp2p_key() {
        let id = Identity::generate();
        assert_eq!(
            id.amid().peer_id().unwrap(),
            id.libp2p_keypair().unwrap().public().to_peer_id()
        );
        assert_eq!(
            Amid::from_libp2p(&id.libp2p_keypair().unwrap().public()),
            Some(id.amid())
        );
    }

    #[test]
    fn debug_leaks_no_secret() {
        let id = Identity::from_seed(&[7u8; 32]);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&hex::encode([7u8; 32])));
        assert!(!dbg.contains("[7, 7"));
    }

    #[test]
    fn fingerprint_shape() {
        let fp = Identity::generate().amid().fingerprint();
        assert_eq!(fp.len(), 8 * 4 + 7);
        assert_eq!(fp.split(':').count(), 8);
    }

    #[test]
    fn typos_are_caught() {
        let amid = Identity::generate().amid().to_string();
        assert!(matches!(
            amid[2..].parse::<Amid>(),
            Err(AmidError::MissingPrefix)
        ));
        assert!(matches!(
            "am0OIl".parse::<Amid>(),
            Err(AmidError::NotBase58)
        ));
        assert!(matches!(
            "am2g".parse::<Amid>(),
            Err(AmidError::BadLength(_))
        ));
        // change one character in the middle
        let mut chars: Vec<char> = amid.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
        let typo: String = chars.into_iter().collect();
        assert!(typo.parse::<Amid>().is_err());
    }

    #[test]
    fn signatures_are_domain_separated() {
        let id = Identity::generate();
        let sig = id.sign(b"ctx-a", b"msg");
        assert!(id.amid().verify(b"ctx-a", b"msg", &sig));
        assert!(!id.amid().verify(b"ctx-b", b"msg", &sig));
        assert!(!id.amid().verify(b"ctx-a", b"msh", &sig));
    }

    proptest! {
        #[test]
        fn round_trip(seed: [u8; 32]) {
            let amid = Identity::from_seed(&seed).amid();
            let text = amid.to_string();
            prop_assert!(text.starts_with("am"));
            prop_assert_eq!(text.parse::<Amid>().unwrap(), amid);
        }

        #[test]
        fn parse_never_panics(s: String) {
            let _ = s.parse::<Amid>();
        }
    }

    #[test]
    fn every_way_to_make_an_amid_refuses_a_weak_key() {
        let mut weak = [0u8; 32];
        weak[0] = 1;
        // From CBOR, as it arrives inside envelopes, KNOCKs and records.
        let cbor = agentmesh_transports::codec::encode(&serde_bytes::ByteBuf::from(weak.to_vec()))
            .unwrap();
        let err = agentmesh_transports::codec::decode::<Amid>(&cbor, 64).unwrap_err();
        assert!(err.to_string().contains("weak"), "{err}");
        // Bytes that are no point at all are refused too.
        let off_curve = (2u8..=255)
            .map(|y| {
                let mut k = [0u8; 32];
                k[0] = y;
                k
            })
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .expect("some small y is off the curve");
        assert_eq!(Amid::from_bytes(&off_curve), Err(AmidError::InvalidKey));
        let cbor =
            agentmesh_transports::codec::encode(&serde_bytes::ByteBuf::from(off_curve.to_vec()))
                .unwrap();
        assert!(agentmesh_transports::codec::decode::<Amid>(&cbor, 64).is_err());
        // From a decoded key and from a libp2p key.
        let key = VerifyingKey::from_bytes(&weak).unwrap();
        assert_eq!(Amid::from_key(&key), Err(AmidError::WeakKey));
        let libp2p_key: libp2p::identity::PublicKey =
            libp2p::identity::ed25519::PublicKey::try_from_bytes(&weak)
                .unwrap()
                .into();
        assert_eq!(Amid::try_from_libp2p(&libp2p_key), Err(AmidError::WeakKey));
        assert_eq!(Amid::from_libp2p(&libp2p_key), None);
        // A real key goes through every one of them.
        let me = Identity::from_seed(&[7; 32]).amid();
        let cbor = agentmesh_transports::codec::encode(&me).unwrap();
        assert_eq!(
            agentmesh_transports::codec::decode::<Amid>(&cbor, 64).unwrap(),
            me
        );
        assert_eq!(Amid::from_key(&me.verifying_key().unwrap()), Ok(me));
    }

    #[test]
    fn weak_keys_are_refused_as_amids_and_verify_nothing() {
        // The identity point: of small order, and a valid encoding.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert_eq!(Amid::from_bytes(&weak), Err(AmidError::WeakKey));
        // Its text form, checksum and all, is refused when parsed.
        let text = Amid(weak).to_string();
        assert_eq!(text.parse::<Amid>(), Err(AmidError::WeakKey));
        // Arriving in a binary structure, it verifies nothing: with the
        // identity point as key, the all-identity signature (R = identity,
        // s = 0) satisfies the plain verification equation for any message.
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert!(!Amid(weak).verify(b"d", b"any message", &sig));
        // A real key still verifies its own signatures.
        let me = Identity::from_seed(&[7; 32]);
        let good = me.sign(b"d", b"m");
        assert!(me.amid().verify(b"d", b"m", &good));
    }
}
