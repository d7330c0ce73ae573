//! Certificate chain decoding and verification (tier certificates carried
//! in KNOCKs and cards).
//!
//! 1. `CertChain::from_bytes` + `verify` against a fixed root and subject.
//! 2. `SignedCertificate::from_bytes` + `certificate` + `signed_by`.
//! 3. Signed content: the input (after one selector byte) is decoded as a
//!    `Certificate`, signed by the root (so the checks after the signature
//!    are reached), optionally under a fixed organization certificate, and
//!    the chain verified.
//! 4. Revocations as found in DHT records: `SignedRevocation::from_bytes` +
//!    `verify` against the fixed root.
#![no_main]

use std::sync::LazyLock;

use agentmesh_node::{
    identity::{Amid, Identity},
    knock::policy::Tier,
    registry::SignedRevocation,
    trust::cert::{CertChain, CertKind, Certificate, Revocable, SignedCertificate, CERT_VERSION},
};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;

struct Fixtures {
    root: SigningKey,
    subject: Amid,
    org_cert: SignedCertificate,
}

static FX: LazyLock<Fixtures> = LazyLock::new(|| {
    let root = SigningKey::from_bytes(&[1; 32]);
    let org = SigningKey::from_bytes(&[2; 32]);
    let subject = Identity::from_seed(&[3; 32]).amid();
    let org_cert = Certificate {
        version: CERT_VERSION,
        kind: CertKind::Organization,
        subject_key: org.verifying_key().to_bytes(),
        subject_name: "example.org".into(),
        tier: Tier::Organization,
        issuer_key: root.verifying_key().to_bytes(),
        serial: [2; 16],
        not_before_ms: 0,
        not_after_ms: u64::MAX,
    }
    .sign(&root)
    .expect("sign");
    Fixtures {
        root,
        subject,
        org_cert,
    }
});

fn revoked(r: Revocable<'_>) -> bool {
    matches!(r, Revocable::Serial(s) if s[0] == 0xff)
}

fuzz_target!(|data: &[u8]| {
    let fx = &*FX;
    let root = fx.root.verifying_key();

    // 1. Raw chain.
    if let Ok(chain) = CertChain::from_bytes(data) {
        let _ = chain.verify(&fx.subject, &root, NOW, revoked);
        let _ = chain.to_bytes();
    }

    // 2. Raw certificate.
    if let Ok(c) = SignedCertificate::from_bytes(data) {
        let _ = c.certificate();
        let _ = c.signed_by(&root);
    }

    // 4. Revocation record.
    if let Ok(r) = SignedRevocation::from_bytes(data) {
        let _ = r.verify(&root);
        let _ = r.to_bytes();
    }

    // 3. Arbitrary certificate body, validly signed.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if let Ok(c) = agentmesh_transports::codec::decode::<Certificate>(rest, 1024) {
        let mut c = c;
        c.issuer_key = root.to_bytes();
        if let Ok(signed) = c.sign(&fx.root) {
            let chain = if sel & 1 == 1 {
                CertChain(vec![signed, fx.org_cert.clone()])
            } else {
                CertChain(vec![signed])
            };
            if let Ok(bytes) = chain.to_bytes() {
                if let Ok(decoded) = CertChain::from_bytes(&bytes) {
                    assert_eq!(decoded, chain);
                    let _ = decoded.verify(&fx.subject, &root, NOW, revoked);
                }
            }
        }
    }
});
