//! Test vectors of the trust formats (SPEC.md §11, §12, §14): tier
//! certificates and chains, revocations, signed tree heads, inclusion and
//! consistency proofs, reputation attestations and the credentials a KNOCK
//! shows. Kept in `vectors/cert.json` and `vectors/transparency.json`.
//!
//! As in `vectors.rs`: every stored vector is decoded with the crate's
//! public decoders and verified against the fixed registry root, the
//! decoded fields must equal the stored ones, the decoded value must
//! re-encode to the same bytes, and every vector is built again from the
//! fixed inputs (Ed25519 signatures are deterministic) and must be
//! byte-identical.
//!
//! `AGENTMESH_WRITE_VECTORS=1 cargo test -p agentmesh-node --test vectors_trust`
//! rewrites the two files from the fixed inputs, then checks them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use agentmesh_node::{
    crypto::envelope::SessionId,
    identity::rotation::SignedRotation,
    knock::{KnockBody, SignedKnock},
    registry::{Revocation, SignedRevocation, MAX_REVOCATION_SIZE},
    trust::cert::{CertChain, CertKind, Certificate, Revocable, SignedCertificate, CERT_VERSION},
    trust::credentials::{
        self, Credentials, LogInclusion, Reputation, ReputationAttestation, SignedAttestation,
        MAX_ATTESTATION_SIZE,
    },
    trust::transparency::{
        leaf_hash, ConsistencyProof, InclusionProof, LeafKind, MemoryTree, SignedTreeHead,
        DOMAIN_SEP_TREE_HEAD,
    },
    Amid, Identity, Intent, Tier,
};
use agentmesh_transports::codec;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The environment variable that rewrites the vectors.
const WRITE_ENV: &str = "AGENTMESH_WRITE_VECTORS";
/// The time every vector is made at (2023-11-14T22:13:20Z), as in `vectors.rs`.
const T0: u64 = 1_700_000_000_000;
/// An hour, in ms.
const HOUR: u64 = 3_600_000;
/// A year (365 days), in ms.
const YEAR: u64 = 365 * 24 * HOUR;
/// When the chains are checked.
const CHECK_AT: u64 = T0 + HOUR;

/// Seeds of the identities: `Identity::from_seed(&[n; 32])`; the same
/// alice, bob and registry root as `vectors.rs`, and an organization key.
const ALICE: u8 = 1;
const BOB: u8 = 2;
const REGISTRY_ROOT: u8 = 4;
const ORG: u8 = 5;
/// The key alice held before she rotated to her present one.
const ALICE_OLD: u8 = 6;

/// Certificate serials.
const SERIAL_ALICE: [u8; 16] = [0xa1; 16];
const SERIAL_ORG: [u8; 16] = [0x0e; 16];
const SERIAL_BOB: [u8; 16] = [0xb0; 16];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors")
}

fn identity(n: u8) -> Identity {
    Identity::from_seed(&[n; 32])
}

fn amid(n: u8) -> Amid {
    identity(n).amid()
}

fn key32(n: u8) -> [u8; 32] {
    *amid(n).as_bytes()
}

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("not hex: {e}"))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One vector as stored (the format of `vectors.rs`, SPEC.md §14.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vector {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Seed of the key it is verified against: the registry root (the
    /// trust anchor of a chain, the signer of a head), or the issuer of a
    /// lone certificate.
    signer_seed: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    context: Value,
    hex: String,
    decoded: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VectorFile {
    description: String,
    vectors: Vec<Vector>,
}

impl Vector {
    fn signer_key(&self) -> Result<VerifyingKey, String> {
        let seed = self
            .signer_seed
            .as_ref()
            .ok_or_else(|| "every trust vector names signer_seed".to_string())?;
        let seed: [u8; 32] = unhex(seed)?
            .try_into()
            .map_err(|_| "signer_seed is not 32 bytes".to_string())?;
        Identity::from_seed(&seed)
            .amid()
            .verifying_key()
            .map_err(err)
    }
}

fn vector(name: &str, ty: &str, signer: u8, bytes: Vec<u8>, note: &str, context: Value) -> Vector {
    let mut v = Vector {
        name: name.into(),
        ty: ty.into(),
        note: (!note.is_empty()).then(|| note.to_string()),
        signer_seed: Some(h(&[signer; 32])),
        context,
        hex: h(&bytes),
        decoded: Value::Null,
    };
    v.decoded =
        decode(&v, &bytes).unwrap_or_else(|e| panic!("built vector {name} does not decode: {e}"));
    v
}

// ---------------------------------------------------------------------------
// Decoders: bytes → readable fields, through the crate's public decoders,
// checking every signature against `signer_seed` and requiring the decoded
// value to re-encode to the same bytes.
// ---------------------------------------------------------------------------

fn same_bytes(what: &str, bytes: &[u8], again: &[u8]) -> Result<(), String> {
    if bytes == again {
        Ok(())
    } else {
        Err(format!("{what} does not re-encode to the same bytes"))
    }
}

fn ctx_str<'a>(context: &'a Value, key: &str) -> Result<&'a str, String> {
    context[key]
        .as_str()
        .ok_or_else(|| format!("context.{key} missing"))
}

fn ctx_u64(context: &Value, key: &str) -> Result<u64, String> {
    context[key]
        .as_u64()
        .ok_or_else(|| format!("context.{key} missing"))
}

fn ctx_head(context: &Value, key: &str, root: &VerifyingKey) -> Result<SignedTreeHead, String> {
    let bytes = unhex(ctx_str(context, key)?)?;
    let head = SignedTreeHead::from_bytes(&bytes).map_err(err)?;
    head.verify(root)
        .map_err(|e| format!("context.{key}: {e}"))?;
    same_bytes(key, &bytes, &head.to_bytes())?;
    Ok(head)
}

fn decode(v: &Vector, bytes: &[u8]) -> Result<Value, String> {
    let key = v.signer_key()?;
    match v.ty.as_str() {
        "signed_certificate" => {
            let c = SignedCertificate::from_bytes(bytes).map_err(err)?;
            same_bytes("the certificate", bytes, &c.to_bytes().map_err(err)?)?;
            let fields = certificate_json(&c, &key)?;
            Ok(fields)
        }
        "cert_chain" => {
            let chain = CertChain::from_bytes(bytes).map_err(err)?;
            same_bytes("the chain", bytes, &chain.to_bytes().map_err(err)?)?;
            let subject: Amid = ctx_str(&v.context, "subject")?.parse().map_err(err)?;
            let now = ctx_u64(&v.context, "now_ms")?;
            let tier = chain.verify(&subject, &key, now, |_| false).map_err(err)?;
            // Issuers from the root down: the last certificate's is the
            // root, each other's the subject of the one after it.
            let mut issuer = key;
            let mut certs = Vec::new();
            for c in chain.0.iter().rev() {
                certs.push(certificate_json(c, &issuer)?);
                issuer = VerifyingKey::from_bytes(&c.certificate().map_err(err)?.subject_key)
                    .map_err(err)?;
            }
            certs.reverse();
            Ok(json!({
                "certificates": certs,
                "tier": tier,
                "log_leaf": h(&Credentials::log_leaf(&chain).map_err(err)?),
            }))
        }
        "signed_revocation" => {
            let s = SignedRevocation::from_bytes(bytes).map_err(err)?;
            same_bytes("the revocation", bytes, &s.to_bytes().map_err(err)?)?;
            let r = s.verify(&key).map_err(err)?;
            // The body as signed is the encoding of its fields.
            same_bytes(
                "the revocation body",
                &s.body,
                &codec::encode(&r).map_err(err)?,
            )?;
            let _: Revocation = codec::decode(&s.body, MAX_REVOCATION_SIZE).map_err(err)?;
            Ok(json!({
                "body_hex": h(&s.body),
                "body": {
                    "subject_key": h(&r.subject_key),
                    "serial": r.serial.map(|s| h(&s.into_array())),
                    "reason": r.reason,
                    "revoked_ms": r.revoked_ms,
                    "issuer_key": h(&r.issuer_key),
                },
                "signature": h(&s.signature),
            }))
        }
        "signed_tree_head" => {
            let head = SignedTreeHead::from_bytes(bytes).map_err(err)?;
            same_bytes("the head", bytes, &head.to_bytes())?;
            head.verify(&key).map_err(err)?;
            let json_form = serde_json::to_value(&head).map_err(err)?;
            let back: SignedTreeHead = serde_json::from_value(json_form.clone()).map_err(err)?;
            if back != head {
                return Err("the JSON form does not read back".into());
            }
            Ok(json!({
                "size": head.size,
                "root": h(&head.root),
                "timestamp_ms": head.timestamp_ms,
                "signature": h(&head.signature),
                "signed_bytes": h(&[
                    DOMAIN_SEP_TREE_HEAD,
                    &SignedTreeHead::signed_bytes(head.size, &head.root, head.timestamp_ms)[..],
                ]
                .concat()),
                "json": json_form,
            }))
        }
        "inclusion_proof" => {
            let p = InclusionProof::from_bytes(bytes).map_err(err)?;
            same_bytes("the proof", bytes, &p.to_bytes())?;
            let head = ctx_head(&v.context, "head_hex", &key)?;
            let leaf = unhex(ctx_str(&v.context, "leaf_hex")?)?;
            p.verify(&leaf_hash(&leaf), &head).map_err(err)?;
            Ok(json!({
                "leaf_index": p.leaf_index,
                "tree_size": p.tree_size,
                "path": p.path.iter().map(|x| h(x)).collect::<Vec<_>>(),
                "leaf_hash": h(&leaf_hash(&leaf)),
                "root": h(&head.root),
            }))
        }
        "consistency_proof" => {
            let p = ConsistencyProof::from_bytes(bytes).map_err(err)?;
            same_bytes("the proof", bytes, &p.to_bytes())?;
            let older = ctx_head(&v.context, "older_head_hex", &key)?;
            let newer = ctx_head(&v.context, "newer_head_hex", &key)?;
            p.verify(&older, &newer).map_err(err)?;
            Ok(json!({
                "first_size": p.first_size,
                "second_size": p.second_size,
                "path": p.path.iter().map(|x| h(x)).collect::<Vec<_>>(),
                "first_root": h(&older.root),
                "second_root": h(&newer.root),
            }))
        }
        "signed_attestation" => {
            let a: SignedAttestation =
                codec::decode(bytes, MAX_ATTESTATION_SIZE + 128).map_err(err)?;
            same_bytes("the attestation", bytes, &codec::encode(&a).map_err(err)?)?;
            attestation_json(&a, &key, &v.context)
        }
        "credentials" => {
            let c = Credentials::from_bytes(bytes).map_err(err)?;
            same_bytes("the credentials", bytes, &c.to_bytes().map_err(err)?)?;
            let subject: Amid = ctx_str(&v.context, "subject")?.parse().map_err(err)?;
            let now = ctx_u64(&v.context, "now_ms")?;
            let checked =
                credentials::check(&c, &subject, &key, true, now, |_| false).map_err(err)?;
            let mut out = json!({
                "tier": checked.tier,
                "reputation": checked.reputation,
            });
            if let Some(chain) = &c.chain {
                out["chain_hex"] = json!(h(&chain.to_bytes().map_err(err)?));
            }
            if let Some(inc) = &c.inclusion {
                out["inclusion"] = json!({
                    "proof_hex": h(&inc.proof.to_bytes()),
                    "head_hex": h(&inc.head.to_bytes()),
                });
            }
            if let Some(a) = &c.reputation {
                out["reputation_hex"] = json!(h(&codec::encode(a).map_err(err)?));
            }
            Ok(out)
        }
        "signed_knock" => {
            let k = SignedKnock::from_bytes(bytes).map_err(err)?;
            same_bytes("the knock", bytes, &k.to_bytes())?;
            // The initiator's signature and its rotation history.
            let body = k.verify().map_err(err)?;
            let now = ctx_u64(&v.context, "now_ms")?;
            let checked =
                credentials::check(&body.credentials, &body.from, &key, true, now, |_| false)
                    .map_err(err)?;
            Ok(json!({
                "from": body.from.to_string(),
                "to": body.to.to_string(),
                "capability": body.intent.capability,
                "ts_ms": body.ts_ms,
                "credentials_hex": h(&body.credentials.to_bytes().map_err(err)?),
                "tier": checked.tier,
                "reputation": checked.reputation,
                "moved_from": body.former().iter().map(Amid::to_string).collect::<Vec<_>>(),
                "moved_from_hex": body.moved_from.iter().map(|r| h(&r.to_bytes())).collect::<Vec<_>>(),
            }))
        }
        other => Err(format!("unknown vector type {other:?}")),
    }
}

/// A certificate's fields, its signature checked under `issuer`.
fn certificate_json(c: &SignedCertificate, issuer: &VerifyingKey) -> Result<Value, String> {
    if !c.signed_by(issuer) {
        return Err("a certificate's signature does not verify under its issuer".into());
    }
    let cert = c.certificate().map_err(err)?;
    if cert.issuer_key != issuer.to_bytes() {
        return Err("a certificate's issuer_key is not its signer".into());
    }
    same_bytes(
        "a certificate body",
        &c.body,
        &codec::encode(&cert).map_err(err)?,
    )?;
    Ok(json!({
        "body_hex": h(&c.body),
        "body": {
            "version": cert.version,
            "kind": cert.kind,
            "subject_key": h(&cert.subject_key),
            "subject_name": cert.subject_name,
            "tier": cert.tier,
            "issuer_key": h(&cert.issuer_key),
            "serial": h(&cert.serial),
            "not_before_ms": cert.not_before_ms,
            "not_after_ms": cert.not_after_ms,
        },
        "signature": h(&c.signature),
        "subject_amid": cert.subject_amid().map(|a| a.to_string()),
    }))
}

fn attestation_json(
    a: &SignedAttestation,
    root: &VerifyingKey,
    context: &Value,
) -> Result<Value, String> {
    let subject: Amid = ctx_str(context, "subject")?.parse().map_err(err)?;
    let now = ctx_u64(context, "now_ms")?;
    let score = a.verify(root, &subject, now).map_err(err)?;
    let body: ReputationAttestation = codec::decode(&a.body, MAX_ATTESTATION_SIZE).map_err(err)?;
    same_bytes(
        "the attestation body",
        &a.body,
        &codec::encode(&body).map_err(err)?,
    )?;
    Ok(json!({
        "body_hex": h(&a.body),
        "body": {
            "amid": body.amid.to_string(),
            "score_permille": body.score.permille(),
            "expires_ms": body.expires_ms,
        },
        "signature": h(&a.signature),
        "score": score,
    }))
}

// ---------------------------------------------------------------------------
// The fixed inputs.
// ---------------------------------------------------------------------------

/// Everything made from the fixed inputs.
struct Fixtures {
    alice_cert: SignedCertificate,
    org_cert: SignedCertificate,
    bob_cert: SignedCertificate,
    chain_verified: CertChain,
    chain_org: CertChain,
    revoke_serial: SignedRevocation,
    revoke_key: SignedRevocation,
    /// The log's leaves, in order.
    leaves: Vec<Vec<u8>>,
    log: MemoryTree,
    older_head: SignedTreeHead,
    newer_head: SignedTreeHead,
    attestation: SignedAttestation,
}

/// The log's first leaves: key bindings (SPEC.md §11.2, CBOR map `amid`,
/// `x25519_key`, `bound_ms`; the registry's type lives in `bootstrap`).
#[derive(Serialize)]
struct KeyBinding {
    amid: Amid,
    x25519_key: Option<String>,
    bound_ms: u64,
}

fn fixtures() -> Fixtures {
    let root = identity(REGISTRY_ROOT);
    let org = identity(ORG);
    let cert = |kind, subject: u8, name: &str, tier, issuer: u8, serial| Certificate {
        version: CERT_VERSION,
        kind,
        subject_key: key32(subject),
        subject_name: name.into(),
        tier,
        issuer_key: key32(issuer),
        serial,
        not_before_ms: T0,
        not_after_ms: T0 + YEAR,
    };
    let alice_cert = cert(
        CertKind::Agent,
        ALICE,
        "github:alice",
        Tier::Verified,
        REGISTRY_ROOT,
        SERIAL_ALICE,
    )
    .sign_as(&root)
    .expect("alice's certificate");
    let org_cert = cert(
        CertKind::Organization,
        ORG,
        "example.org",
        Tier::Organization,
        REGISTRY_ROOT,
        SERIAL_ORG,
    )
    .sign_as(&root)
    .expect("the organization's certificate");
    let bob_cert = cert(
        CertKind::Agent,
        BOB,
        "bob",
        Tier::Organization,
        ORG,
        SERIAL_BOB,
    )
    .sign_as(&org)
    .expect("bob's certificate");
    let chain_verified = CertChain(vec![alice_cert.clone()]);
    let chain_org = CertChain(vec![bob_cert.clone(), org_cert.clone()]);

    let revoke_serial = Revocation {
        subject_key: key32(BOB),
        serial: Some(serde_bytes::ByteArray::new(SERIAL_BOB)),
        reason: "superseded".into(),
        revoked_ms: T0 + 2 * HOUR,
        issuer_key: key32(REGISTRY_ROOT),
    }
    .sign(&root)
    .expect("a serial revocation");
    let revoke_key = Revocation {
        subject_key: key32(ORG),
        serial: None,
        reason: "key compromise".into(),
        revoked_ms: T0 + 3 * HOUR,
        issuer_key: key32(REGISTRY_ROOT),
    }
    .sign(&root)
    .expect("a key revocation");

    let binding = |n: u8, ms: u64| {
        LeafKind::KeyBinding.leaf(
            &codec::encode(&KeyBinding {
                amid: amid(n),
                x25519_key: None,
                bound_ms: ms,
            })
            .expect("a key binding encodes"),
        )
    };
    let leaves = vec![
        binding(ALICE, T0),
        binding(BOB, T0 + 1),
        Credentials::log_leaf(&chain_verified).expect("alice's leaf"),
        LeafKind::Certificate.leaf(&codec::encode(&org_cert).expect("org leaf")),
        Credentials::log_leaf(&chain_org).expect("bob's leaf"),
        LeafKind::Revocation.leaf(&revoke_serial.to_bytes().expect("revocation leaf")),
        LeafKind::Revocation.leaf(&revoke_key.to_bytes().expect("revocation leaf")),
    ];
    let mut log = MemoryTree::default();
    for l in &leaves {
        log.append(l);
    }
    let older_head = SignedTreeHead::sign(&root, 3, log.root_at(3).expect("root at 3"), T0 + 1000);
    let newer_head = SignedTreeHead::sign(&root, log.len(), log.root(), T0 + 4 * HOUR);
    let attestation = ReputationAttestation {
        amid: amid(ALICE),
        score: Reputation::from_permille(870),
        expires_ms: T0 + 24 * HOUR,
    }
    .sign(&root);
    Fixtures {
        alice_cert,
        org_cert,
        bob_cert,
        chain_verified,
        chain_org,
        revoke_serial,
        revoke_key,
        leaves,
        log,
        older_head,
        newer_head,
        attestation,
    }
}

fn build() -> Vec<(&'static str, VectorFile)> {
    let f = fixtures();
    let check_ctx = |n: u8| json!({ "subject": amid(n).to_string(), "now_ms": CHECK_AT });
    let cert_file = VectorFile {
        description: "Tier certificates and chains (SPEC.md §12.2, §12.3), revocations (§12.4), a reputation attestation (§12.5) and credentials as a KNOCK shows them (§12.6). signer_seed is the key each vector verifies against: the registry root (seed 4) for chains, revocations, the attestation and credentials, the issuer for a lone certificate; the organization key is seed 5. Chains and credentials are checked for context.subject at context.now_ms.".into(),
        vectors: vec![
            vector(
                "certificate_agent_verified",
                "signed_certificate",
                REGISTRY_ROOT,
                f.alice_cert.to_bytes().expect("cert"),
                "alice's tier 1 (verified) agent certificate, issued by the registry root",
                Value::Null,
            ),
            vector(
                "certificate_organization",
                "signed_certificate",
                REGISTRY_ROOT,
                f.org_cert.to_bytes().expect("cert"),
                "the organization example.org (seed 5), certified by the registry root",
                Value::Null,
            ),
            vector(
                "certificate_agent_of_organization",
                "signed_certificate",
                ORG,
                f.bob_cert.to_bytes().expect("cert"),
                "bob's agent certificate, issued by the organization key",
                Value::Null,
            ),
            vector(
                "chain_verified",
                "cert_chain",
                REGISTRY_ROOT,
                f.chain_verified.to_bytes().expect("chain"),
                "tier 1: root → alice; log_leaf is the transparency-log leaf of its agent certificate",
                check_ctx(ALICE),
            ),
            vector(
                "chain_organization",
                "cert_chain",
                REGISTRY_ROOT,
                f.chain_org.to_bytes().expect("chain"),
                "tier 1.5: root → example.org → bob, agent certificate first",
                check_ctx(BOB),
            ),
            vector(
                "revocation_of_a_certificate",
                "signed_revocation",
                REGISTRY_ROOT,
                f.revoke_serial.to_bytes().expect("revocation"),
                "revokes the one certificate with serial b0…b0 (bob's), with its serial",
                Value::Null,
            ),
            vector(
                "revocation_of_a_key",
                "signed_revocation",
                REGISTRY_ROOT,
                f.revoke_key.to_bytes().expect("revocation"),
                "revokes the organization key itself (no serial): every chain through it",
                Value::Null,
            ),
            vector(
                "reputation_attestation",
                "signed_attestation",
                REGISTRY_ROOT,
                codec::encode(&f.attestation).expect("attestation"),
                "alice's reputation 0.870, valid for a day",
                check_ctx(ALICE),
            ),
            vector(
                "credentials",
                "credentials",
                REGISTRY_ROOT,
                Credentials {
                    chain: Some(f.chain_verified.clone()),
                    inclusion: Some(LogInclusion {
                        proof: f.log.inclusion_proof(2, f.log.len()).expect("proof"),
                        head: f.newer_head.clone(),
                    }),
                    reputation: Some(f.attestation.clone()),
                }
                .to_bytes()
                .expect("credentials"),
                "what alice's KNOCKs show: her chain, its inclusion in the log (leaf 2 of the 7-leaf head of transparency.json) and her reputation; checked with the inclusion required",
                check_ctx(ALICE),
            ),
            vector(
                "knock_with_credentials_and_history",
                "signed_knock",
                REGISTRY_ROOT,
                SignedKnock::sign(
                    &identity(ALICE),
                    &KnockBody {
                        from: amid(ALICE),
                        to: amid(BOB),
                        intent: Intent::new("weather/forecast", "query"),
                        session: SessionId([0x5e; 16]),
                        ts_ms: CHECK_AT,
                        nonce: [0x4e; 16],
                        first: Vec::new(),
                        credentials: Credentials {
                            chain: Some(f.chain_verified.clone()),
                            inclusion: Some(LogInclusion {
                                proof: f.log.inclusion_proof(2, f.log.len()).expect("proof"),
                                head: f.newer_head.clone(),
                            }),
                            reputation: Some(f.attestation.clone()),
                        },
                        moved_from: vec![SignedRotation::sign(
                            &identity(ALICE_OLD),
                            &identity(ALICE),
                            T0,
                        )
                        .expect("rotation")],
                    },
                )
                .expect("knock")
                .to_bytes(),
                "a KNOCK from alice to bob (SPEC.md §5.2) showing the credentials above and her rotation history (§2.4: she moved from seed 6 to seed 1); signed by alice (checked with the key in `from`), credentials checked against the root. `first` is empty here: knock.json has a KNOCK with its first envelope",
                check_ctx(ALICE),
            ),
        ],
    };

    let leaves: Vec<String> = f.leaves.iter().map(|l| h(l)).collect();
    let inclusion = |index: u64, head: &SignedTreeHead, note: &str, name: &str| {
        vector(
            name,
            "inclusion_proof",
            REGISTRY_ROOT,
            f.log
                .inclusion_proof(index, head.size)
                .expect("inclusion")
                .to_bytes(),
            note,
            json!({
                "leaf_hex": leaves[index as usize],
                "head_hex": h(&head.to_bytes()),
            }),
        )
    };
    let transparency_file = VectorFile {
        description: "The registry's transparency log (SPEC.md §11): signed tree heads, inclusion and consistency proofs, all signed by or checked against the registry root (seed 4). The log holds 7 leaves, in order: key bindings of alice and bob, the certificate leaves of alice's chain, of the organization and of bob's chain (cert.json), and the two revocations of cert.json. context holds the leaf data and the heads (CBOR, hex) a proof is checked against.".into(),
        vectors: vec![
            vector(
                "tree_head_3",
                "signed_tree_head",
                REGISTRY_ROOT,
                f.older_head.to_bytes(),
                "the head of the first 3 leaves; json is its JSON form (hex strings)",
                json!({ "leaves_hex": leaves[..3] }),
            ),
            vector(
                "tree_head_7",
                "signed_tree_head",
                REGISTRY_ROOT,
                f.newer_head.to_bytes(),
                "the head of all 7 leaves",
                json!({ "leaves_hex": leaves }),
            ),
            inclusion(
                2,
                &f.newer_head,
                "alice's certificate leaf (index 2) in the 7-leaf tree",
                "inclusion_alice_certificate",
            ),
            inclusion(
                6,
                &f.newer_head,
                "the last leaf (index 6, a revocation) of the 7-leaf tree: a path shorter than the tree's height",
                "inclusion_last_leaf",
            ),
            inclusion(
                0,
                &f.older_head,
                "leaf 0 in the 3-leaf tree",
                "inclusion_first_leaf_of_3",
            ),
            vector(
                "consistency_3_to_7",
                "consistency_proof",
                REGISTRY_ROOT,
                f.log
                    .consistency_proof(3, f.log.len())
                    .expect("consistency")
                    .to_bytes(),
                "the 7-leaf tree extends the 3-leaf tree",
                json!({
                    "older_head_hex": h(&f.older_head.to_bytes()),
                    "newer_head_hex": h(&f.newer_head.to_bytes()),
                }),
            ),
        ],
    };
    vec![
        ("cert.json", cert_file),
        ("transparency.json", transparency_file),
    ]
}

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}

fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&p, x, y, out),
                    (Some(x), None) => out.push(format!("  {p}: {} stored, absent now", short(x))),
                    (None, Some(y)) => out.push(format!("  {p}: absent stored, {} now", short(y))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!(
            "  {path}: {} stored, {} now",
            short(want),
            short(got)
        )),
    }
}

/// A stored vector on its own: its bytes decode, verify and re-encode, to
/// the fields stored with it.
fn check_stored(file: &str, v: &Vector) -> Result<(), String> {
    let at = format!("{file} {:?}", v.name);
    let bytes = unhex(&v.hex).map_err(|e| format!("{at}: {e}"))?;
    let decoded =
        decode(v, &bytes).map_err(|e| format!("{at}: the stored bytes no longer decode: {e}"))?;
    if decoded != v.decoded {
        let mut d = Vec::new();
        diff("decoded", &v.decoded, &decoded, &mut d);
        return Err(format!(
            "{at}: the stored bytes decode to other fields than stored:\n{}",
            d.join("\n")
        ));
    }
    Ok(())
}

fn compare(file: &str, stored: &Vector, built: &Vector) -> Result<(), String> {
    let at = format!("{file} {:?}", built.name);
    if stored.ty != built.ty
        || stored.signer_seed != built.signer_seed
        || stored.context != built.context
    {
        return Err(format!("{at}: its type, signer or context changed"));
    }
    if stored.hex != built.hex {
        let offset = stored
            .hex
            .as_bytes()
            .chunks(2)
            .zip(built.hex.as_bytes().chunks(2))
            .position(|(a, b)| a != b)
            .unwrap_or(stored.hex.len().min(built.hex.len()) / 2);
        let mut d = Vec::new();
        diff("decoded", &stored.decoded, &built.decoded, &mut d);
        return Err(format!(
            "{at}: the encoding changed: {} bytes stored, {} now, first difference at byte {offset}; fields (stored, then now):\n{}",
            stored.hex.len() / 2,
            built.hex.len() / 2,
            d.join("\n"),
        ));
    }
    if stored.note != built.note {
        return Err(format!("{at}: its note changed"));
    }
    Ok(())
}

fn check_file(name: &str, stored: &VectorFile, built: &VectorFile) -> Vec<String> {
    let mut errors: Vec<String> = stored
        .vectors
        .iter()
        .filter_map(|v| check_stored(name, v).err())
        .collect();
    let names = |f: &VectorFile| {
        f.vectors
            .iter()
            .map(|v| v.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (have, want) = (names(stored), names(built));
    if have.len() != stored.vectors.len() {
        errors.push(format!("{name}: two vectors share a name"));
    }
    for missing in want.difference(&have) {
        errors.push(format!("{name}: no vector {missing:?}"));
    }
    for extra in have.difference(&want) {
        errors.push(format!("{name}: vector {extra:?} is not made any more"));
    }
    for b in &built.vectors {
        if let Some(s) = stored.vectors.iter().find(|s| s.name == b.name) {
            if let Err(e) = compare(name, s, b) {
                errors.push(e);
            }
        }
    }
    if stored.description != built.description {
        errors.push(format!("{name}: its description changed"));
    }
    errors
}

fn read(name: &str) -> Result<VectorFile, String> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(name: &str, value: &VectorFile) {
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).expect("vectors/");
    let mut text = serde_json::to_string_pretty(value).expect("json");
    text.push('\n');
    std::fs::write(dir.join(name), text).expect("write");
}

#[test]
fn every_trust_vector_decodes_verifies_and_is_reproduced() {
    let writing = std::env::var(WRITE_ENV).is_ok_and(|v| v == "1");
    let fix = format!("if the change is intended, `{WRITE_ENV}=1 cargo test -p agentmesh-node --test vectors_trust` rewrites vectors/cert.json and vectors/transparency.json (review the diff, and SPEC.md)");
    let built = build();
    if writing {
        for (name, file) in &built {
            write(name, file);
        }
    }
    let mut errors = Vec::new();
    for (name, file) in &built {
        match read(name) {
            Ok(stored) => errors.extend(check_file(name, &stored, file)),
            Err(e) => errors.push(e),
        }
    }
    let count: usize = built.iter().map(|(_, f)| f.vectors.len()).sum();
    assert!(count >= 15, "only {count} vectors");
    assert!(
        errors.is_empty(),
        "{} problem(s) with the trust vectors:\n{}\n{fix}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn revocations_and_changes_are_caught() {
    let f = fixtures();
    let root = identity(REGISTRY_ROOT)
        .amid()
        .verifying_key()
        .expect("root key");

    // The chains verify, and each revocation refuses the chain it names.
    assert_eq!(
        f.chain_org.verify(&amid(BOB), &root, CHECK_AT, |_| false),
        Ok(Tier::Organization)
    );
    for r in [&f.revoke_serial, &f.revoke_key] {
        let r = r.verify(&root).expect("the revocation verifies");
        let revoked = |x: Revocable<'_>| match (x, &r.serial) {
            (Revocable::Serial(s), Some(serial)) => s == &serial.into_array(),
            (Revocable::Key(k), None) => k == &r.subject_key,
            _ => false,
        };
        assert!(f
            .chain_org
            .verify(&amid(BOB), &root, CHECK_AT, revoked)
            .is_err());
        assert_eq!(
            f.chain_verified
                .verify(&amid(ALICE), &root, CHECK_AT, revoked),
            Ok(Tier::Verified),
            "a revocation of bob's chain leaves alice's"
        );
    }

    // Another root, another subject, or a time outside the window.
    let other = identity(ALICE).amid().verifying_key().expect("key");
    assert!(f
        .chain_verified
        .verify(&amid(ALICE), &other, CHECK_AT, |_| false)
        .is_err());
    assert!(f
        .chain_verified
        .verify(&amid(BOB), &root, CHECK_AT, |_| false)
        .is_err());
    assert!(f
        .chain_verified
        .verify(&amid(ALICE), &root, T0 + YEAR, |_| false)
        .is_err());

    let built = build();
    let find = |file: &str, name: &str| {
        built
            .iter()
            .find(|(n, _)| *n == file)
            .and_then(|(_, f)| f.vectors.iter().find(|v| v.name == name))
            .cloned()
            .expect("vector")
    };
    for (file, name) in [
        ("cert.json", "chain_organization"),
        ("cert.json", "revocation_of_a_key"),
        ("cert.json", "credentials"),
        ("transparency.json", "tree_head_7"),
        ("transparency.json", "inclusion_alice_certificate"),
        ("transparency.json", "consistency_3_to_7"),
    ] {
        let v = find(file, name);
        check_stored(file, &v).expect("the vector itself passes");
        // A flipped byte (a signature, a hash or a size): refused.
        let mut bytes = unhex(&v.hex).expect("hex");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let flipped = Vector {
            hex: h(&bytes),
            ..v.clone()
        };
        assert!(
            check_stored(file, &flipped).is_err(),
            "{name}: a flipped last byte is caught"
        );
        // Checked against another key than the root.
        let other = Vector {
            signer_seed: Some(h(&[ALICE; 32])),
            ..v.clone()
        };
        assert!(
            check_stored(file, &other).is_err(),
            "{name}: another root is caught"
        );
        // A field stored wrong.
        let mut wrong = v.clone();
        wrong.decoded["extra"] = json!(1);
        assert!(check_stored(file, &wrong).is_err());
    }

    // An inclusion proof checked for another leaf, and a consistency proof
    // between heads of the other order.
    let mut v = find("transparency.json", "inclusion_alice_certificate");
    v.context["leaf_hex"] = json!(h(&f.leaves[3]));
    assert!(check_stored("transparency.json", &v).is_err());
    let mut v = find("transparency.json", "consistency_3_to_7");
    let older = v.context["older_head_hex"].clone();
    v.context["older_head_hex"] = v.context["newer_head_hex"].clone();
    v.context["newer_head_hex"] = older;
    assert!(check_stored("transparency.json", &v).is_err());
}
