//! Wire-format test vectors (SPEC.md §14), kept in `vectors/` at the
//! repository root.
//!
//! Every vector there is read back: its bytes are decoded with the crate's
//! public decoders, its signatures checked, and the decoded fields must equal
//! the readable JSON stored beside the bytes. Then every vector is built again
//! from its fixed inputs (seeds `[n; 32]`, timestamps, ids and nonces; Ed25519
//! signatures are deterministic) and the bytes must be identical, so a change
//! to the format fails here and names the fields that changed.
//!
//! Olm ciphertexts are random. `vectors/olm.json` keeps them, with the
//! vodozemac pickle of each receiver's state before the message; they are
//! decrypted here and must give the stored plaintexts, and the envelopes of
//! the other files carry exactly these ciphertexts.
//!
//! `AGENTMESH_WRITE_VECTORS=1 cargo test -p agentmesh-node --test vectors`
//! rewrites the files from the fixed inputs (keeping the Olm messages while
//! they still decrypt to the plaintexts the inputs give), then checks them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use agentmesh_dht::{record_key, SignedRecord};
use agentmesh_node::{
    card::{AgentCard, MAX_CARD_SIZE},
    contacts,
    content::{Content, Kind},
    crypto::envelope::{
        EnvelopeBody, MessageId, SessionId, SignedEnvelope, StreamId, ENVELOPE_VERSION,
        OLM_TYPE_DECISION, OLM_TYPE_KNOCK,
    },
    crypto::session::{Role, SessionInfo, DEFAULT_MESSAGE_TTL_MS},
    knock::{Decision, KnockBody, SignedDecision, SignedKnock},
    mailbox,
    registry::{
        protocol::{Request as RegistryRequest, Response as RegistryResponse},
        Operation, Registration, SignedRequest, DOMAIN_SEP_RECEIPT, DOMAIN_SEP_REQUEST,
    },
    trust::receipts::{self, Proposal},
    wire::MsgFrame,
    Amid, Identity, Intent, Presence, RejectReason, SessionType, Tier,
};
use agentmesh_transports::codec;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use vodozemac::{
    olm::{
        Account, AccountPickle, Message, OlmMessage, PreKeyMessage, Session, SessionConfig,
        SessionPickle,
    },
    Curve25519PublicKey,
};

/// The environment variable that rewrites the vectors.
const WRITE_ENV: &str = "AGENTMESH_WRITE_VECTORS";
/// The time every vector is made at (2023-11-14T22:13:20Z).
const T0: u64 = 1_700_000_000_000;
/// An hour, in ms.
const HOUR: u64 = 3_600_000;

/// Seeds of the identities: `Identity::from_seed(&[n; 32])`.
const ALICE: u8 = 1;
const BOB: u8 = 2;
const RELAY: u8 = 3;
const REGISTRY_ROOT: u8 = 4;

/// Fixed ids of the vectors.
const SESSION: SessionId = SessionId([0x5e; 16]);
const NONCE: [u8; 16] = [0x4e; 16];
const ID1: MessageId = MessageId([0x01; 16]);
const ID2: MessageId = MessageId([0x02; 16]);
const ID3: MessageId = MessageId([0x03; 16]);
const ID_DECISION: MessageId = MessageId([0xd0; 16]);
const STREAM: StreamId = StreamId([0x57; 16]);

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors")
}

fn identity(n: u8) -> Identity {
    Identity::from_seed(&[n; 32])
}

fn amid(n: u8) -> Amid {
    identity(n).amid()
}

fn peer(n: u8) -> PeerId {
    amid(n).peer_id().expect("a seed's key is a valid key")
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

/// One vector as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vector {
    /// Unique in its file.
    name: String,
    /// Which decoder reads it (see [`decode`]).
    #[serde(rename = "type")]
    ty: String,
    /// What it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// The 32-byte Ed25519 seed, hex, of the key that signed it (for a
    /// frame: what it carries); `null` when nothing in it is signed.
    signer_seed: Option<String>,
    /// Inputs a check needs besides the bytes (e.g. the text a bare
    /// signature signs).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    context: Value,
    /// The encoded bytes.
    hex: String,
    /// The fields, as the crate's decoders read them.
    decoded: Value,
}

/// A file of vectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VectorFile {
    description: String,
    vectors: Vec<Vector>,
}

impl Vector {
    fn signer(&self) -> Result<Option<Amid>, String> {
        let Some(seed) = &self.signer_seed else {
            return Ok(None);
        };
        let seed: [u8; 32] = unhex(seed)?
            .try_into()
            .map_err(|_| "signer_seed is not 32 bytes".to_string())?;
        Ok(Some(Identity::from_seed(&seed).amid()))
    }
}

/// Builds a vector from its bytes: the readable fields are what the
/// decoders read from them.
fn vector(
    name: &str,
    ty: &str,
    signer: Option<u8>,
    bytes: Vec<u8>,
    note: &str,
    context: Value,
) -> Vector {
    let signer_amid = signer.map(amid);
    let decoded = decode(ty, &bytes, signer_amid.as_ref(), &context)
        .unwrap_or_else(|e| panic!("built vector {name} does not decode: {e}"));
    Vector {
        name: name.into(),
        ty: ty.into(),
        note: (!note.is_empty()).then(|| note.to_string()),
        signer_seed: signer.map(|n| h(&[n; 32])),
        context,
        hex: h(&bytes),
        decoded,
    }
}

// ---------------------------------------------------------------------------
// Decoders: bytes → readable fields, through the crate's public decoders,
// checking every signature on the way.
// ---------------------------------------------------------------------------

/// The outer map of every signed message: `body` and `sig` (`signature` in
/// a DHT record), read to show the signature bytes.
#[derive(Deserialize)]
struct Outer {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(alias = "signature")]
    sig: ByteBuf,
}

/// The signed body of a decision, to show its timestamp.
#[derive(Deserialize)]
struct DecisionBodyFields {
    decision: Decision,
    knock_hash: ByteBuf,
    policy_hash: ByteBuf,
    ts_ms: u64,
}

fn outer(bytes: &[u8], max: usize) -> Result<Outer, String> {
    codec::decode(bytes, max).map_err(err)
}

fn need_signer(signer: Option<&Amid>) -> Result<&Amid, String> {
    signer.ok_or_else(|| "a signed vector needs signer_seed".to_string())
}

/// Decodes `bytes` as a `ty` and renders its fields.
fn decode(ty: &str, bytes: &[u8], signer: Option<&Amid>, context: &Value) -> Result<Value, String> {
    match ty {
        "amid" => {
            let a: Amid = codec::decode(bytes, 64).map_err(err)?;
            if signer.is_some_and(|s| s != &a) {
                return Err("the AMID is not the key of signer_seed".into());
            }
            let text = a.to_string();
            if text.parse::<Amid>().map_err(err)? != a {
                return Err("the text form does not parse back".into());
            }
            Ok(json!({
                "text": text,
                "public_key": h(a.as_bytes()),
                "did_key": a.did_key(),
                "peer_id": a.peer_id().map_err(err)?.to_string(),
            }))
        }
        "agent_card" => {
            let card: AgentCard = codec::decode(bytes, MAX_CARD_SIZE).map_err(err)?;
            Ok(card_json(&card))
        }
        "signed_record" => signed_record_json(bytes, need_signer(signer)?),
        "signed_knock" => knock_json(bytes, need_signer(signer)?),
        "signed_decision" => decision_json(bytes, need_signer(signer)?),
        "signed_envelope" => envelope_json(bytes, need_signer(signer)?),
        "content" => content_json(bytes, signer),
        "receipt_proposal" => {
            let p = Proposal::from_bytes(bytes).map_err(err)?;
            proposal_json(&p, need_signer(signer)?)
        }
        "msg_frame" => msg_frame_json(bytes, signer, context),
        "mailbox_request" => mailbox_request_json(bytes, signer),
        "mailbox_response" => mailbox_response_json(bytes, signer),
        "registry_request" => {
            let r = RegistryRequest::from_bytes(bytes).map_err(err)?;
            if let RegistryRequest::Signed { request } = &r {
                let body = request.verify(T0).map_err(err)?;
                if Some(&request.signer) != signer {
                    return Err("the signed request's signer is not signer_seed".into());
                }
                // The body is kept as signed: a JSON text, fields in order.
                if serde_json::to_string(&body).map_err(err)? != request.body {
                    return Err("the signed body is not the encoding of its fields".into());
                }
            }
            serde_json::to_value(&r).map_err(err)
        }
        "registry_response" => {
            let r = RegistryResponse::from_bytes(bytes).map_err(err)?;
            serde_json::to_value(&r).map_err(err)
        }
        other => Err(format!("unknown vector type {other:?}")),
    }
}

fn card_json(card: &AgentCard) -> Value {
    json!({
        "amid": card.amid.to_string(),
        "olm_identity_key": h(&card.olm_identity_key),
        "one_time_keys": card.one_time_keys.iter().map(|k| h(&k[..])).collect::<Vec<_>>(),
        "fallback_key": h(&card.fallback_key),
        "capabilities": card.capabilities,
        "addrs": card.addrs,
        "presence": card.presence,
        "relays": card.relays,
    })
}

fn signed_record_json(bytes: &[u8], signer: &Amid) -> Result<Value, String> {
    let signed = SignedRecord::from_bytes(bytes).map_err(err)?;
    let o = outer(bytes, agentmesh_dht::MAX_RECORD_SIZE)?;
    // Checked at the time it was made: the signature, strictly, and the
    // expiry.
    let record = signed.clone().verify(T0).map_err(err)?;
    if record.subject != signer.peer_id().map_err(err)? {
        return Err("the record's subject is not signer_seed".into());
    }
    let key = record.key();
    let mut v = json!({
        "body_hex": h(&o.body),
        "body": {
            "namespace": record.namespace,
            "public_key": h(&record.public_key.encode_protobuf()),
            "seq": record.seq,
            "expires_ms": record.expires_ms,
            "payload": h(&record.payload),
        },
        "signature": h(&o.sig),
        "subject": record.subject.to_string(),
        "record_key": String::from_utf8(key.clone()).map_err(err)?,
    });
    if record.key() != record_key(&record.namespace, &record.subject) {
        return Err("record key".into());
    }
    if record.namespace == agentmesh_node::card::CARD_NAMESPACE {
        let card = AgentCard::from_record(&record).map_err(err)?;
        let exported = contacts::encode_card(&signed);
        let (imported, _) = contacts::decode_card(exported.as_bytes(), T0).map_err(err)?;
        if imported != card {
            return Err("the exported card does not import as the same card".into());
        }
        v["card"] = card_json(&card);
        v["exported"] = json!(exported);
    }
    Ok(v)
}

fn knock_json(bytes: &[u8], signer: &Amid) -> Result<Value, String> {
    let knock = SignedKnock::from_bytes(bytes).map_err(err)?;
    let body = knock.verify().map_err(err)?;
    if &body.from != signer {
        return Err("the KNOCK's from is not signer_seed".into());
    }
    let o = outer(bytes, agentmesh_node::knock::MAX_KNOCK_SIZE)?;
    let mut fields = json!({
        "from": body.from.to_string(),
        "to": body.to.to_string(),
        "intent": serde_json::to_value(&body.intent).map_err(err)?,
        "session": body.session.to_string(),
        "ts_ms": body.ts_ms,
        "nonce": h(&body.nonce),
        "first_hex": h(&body.first),
        "first": envelope_json(&body.first, &body.from)?,
    });
    if !body.credentials.is_empty() {
        fields["credentials"] = serde_json::to_value(&body.credentials).map_err(err)?;
    }
    Ok(json!({
        "body_hex": h(&o.body),
        "body": fields,
        "sig": h(&o.sig),
        "knock_hash": h(&knock.hash()),
    }))
}

fn decision_json(bytes: &[u8], signer: &Amid) -> Result<Value, String> {
    let d = SignedDecision::from_bytes(bytes).map_err(err)?;
    let hash = d
        .peek_knock_hash()
        .ok_or_else(|| "no KNOCK hash".to_string())?;
    let (decision, policy_hash) = d.verify_hash(signer, &hash).map_err(err)?;
    let o = outer(bytes, agentmesh_node::knock::MAX_DECISION_SIZE)?;
    let fields: DecisionBodyFields =
        codec::decode(&o.body, agentmesh_node::knock::MAX_DECISION_SIZE).map_err(err)?;
    if fields.decision != decision || fields.policy_hash[..] != policy_hash[..] {
        return Err("the decision's fields read two ways differ".into());
    }
    Ok(json!({
        "body_hex": h(&o.body),
        "body": {
            "decision": serde_json::to_value(&decision).map_err(err)?,
            "knock_hash": h(&fields.knock_hash),
            "policy_hash": h(&policy_hash),
            "ts_ms": fields.ts_ms,
        },
        "sig": h(&o.sig),
    }))
}

fn envelope_json(bytes: &[u8], signer: &Amid) -> Result<Value, String> {
    let env = SignedEnvelope::from_bytes(bytes).map_err(err)?;
    let body = env.verify_signature().map_err(err)?;
    if &body.from != signer {
        return Err("the envelope's from is not signer_seed".into());
    }
    // It opens for its recipient when it was sent: version, recipient and
    // time window.
    env.open(&body.to, body.ts_ms).map_err(err)?;
    let o = outer(bytes, agentmesh_node::crypto::envelope::MAX_ENVELOPE_SIZE)?;
    let ciphertext = match body.olm_type {
        0 | 1 => olm_json(body.olm_type, &body.ciphertext)?,
        OLM_TYPE_KNOCK => {
            let k = knock_json(&body.ciphertext, signer)?;
            json!({ "signed_knock": k })
        }
        OLM_TYPE_DECISION => json!({ "signed_decision": decision_json(&body.ciphertext, signer)? }),
        t => return Err(format!("olm_type {t}")),
    };
    Ok(json!({
        "body_hex": h(&o.body),
        "body": {
            "v": body.v,
            "id": body.id.to_string(),
            "from": body.from.to_string(),
            "to": body.to.to_string(),
            "session": body.session.to_string(),
            "seq": body.seq,
            "ts_ms": body.ts_ms,
            "expires_ms": body.expires_ms,
            "olm_type": body.olm_type,
            "ciphertext_hex": h(&body.ciphertext),
            "ciphertext": ciphertext,
        },
        "sig": h(&o.sig),
    }))
}

/// The fields of a binary Olm message (SPEC.md §7.2).
fn olm_json(olm_type: u8, ct: &[u8]) -> Result<Value, String> {
    let normal = |m: &Message| {
        let b = m.to_bytes();
        json!({
            "version": m.version(),
            "ratchet_key": h(&m.ratchet_key().to_bytes()),
            "chain_index": m.chain_index(),
            "aes_ciphertext": h(m.ciphertext()),
            "mac": h(&b[b.len().saturating_sub(8)..]),
        })
    };
    match olm_type {
        0 => {
            let m = PreKeyMessage::from_bytes(ct).map_err(err)?;
            Ok(json!({
                "pre_key_message": {
                    "version": ct.first(),
                    "one_time_key": h(&m.one_time_key().to_bytes()),
                    "base_key": h(&m.base_key().to_bytes()),
                    "identity_key": h(&m.identity_key().to_bytes()),
                    "session_id": m.session_id(),
                    "message": normal(m.message()),
                }
            }))
        }
        1 => Ok(json!({ "message": normal(&Message::from_bytes(ct).map_err(err)?) })),
        t => Err(format!("olm_type {t} is not an Olm message")),
    }
}

fn content_json(bytes: &[u8], signer: Option<&Amid>) -> Result<Value, String> {
    let c = Content::from_bytes(bytes).map_err(err)?;
    let body = if c.kind.carries_json() {
        c.payload().map_err(err)?
    } else if c.kind == Kind::End && !c.body.is_empty() {
        let p = Proposal::from_bytes(&c.body).map_err(err)?;
        json!({ "receipt_proposal": proposal_json(&p, need_signer(signer)?)? })
    } else {
        json!(h(&c.body))
    };
    Ok(json!({
        "kind": serde_json::to_value(c.kind).map_err(err)?,
        "body_hex": h(&c.body),
        "body": body,
    }))
}

fn proposal_json(p: &Proposal, signer: &Amid) -> Result<Value, String> {
    if !signer.verify(DOMAIN_SEP_RECEIPT, p.body.as_bytes(), &p.signature) {
        return Err("the receipt proposal's signature does not verify".into());
    }
    let body: Value = serde_json::from_str(&p.body).map_err(err)?;
    Ok(json!({ "body": p.body, "body_fields": body, "signature": h(&p.signature) }))
}

fn msg_frame_json(bytes: &[u8], signer: Option<&Amid>, context: &Value) -> Result<Value, String> {
    let f = MsgFrame::from_bytes(bytes).map_err(err)?;
    Ok(match f {
        MsgFrame::Envelope(e) => json!({ "envelope": envelope_json(&e, need_signer(signer)?)? }),
        MsgFrame::Ack { id } => json!({ "ack": { "id": id.to_string() } }),
        MsgFrame::Nack {
            id,
            reason,
            retry_after_ms,
        } => {
            json!({ "nack": { "id": id.to_string(), "reason": reason, "retry_after_ms": retry_after_ms } })
        }
        MsgFrame::Close { session, receipt } => {
            let receipt = match receipt {
                Some(p) => proposal_json(&p, need_signer(signer)?)?,
                None => Value::Null,
            };
            json!({ "close": { "session": session.to_string(), "receipt": receipt } })
        }
        MsgFrame::Delivered { ids } => {
            json!({ "delivered": { "ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>() } })
        }
        MsgFrame::Countersigned { session, signature } => {
            // A bare signature: over the receipt body we proposed.
            let body = context["receipt_body"]
                .as_str()
                .ok_or_else(|| "context.receipt_body is missing".to_string())?;
            if !need_signer(signer)?.verify(DOMAIN_SEP_RECEIPT, body.as_bytes(), &signature) {
                return Err("the countersignature does not verify".into());
            }
            json!({ "countersigned": { "session": session.to_string(), "signature": h(&signature) } })
        }
        MsgFrame::Decision(d) => json!({ "decision": decision_json(&d, need_signer(signer)?)? }),
        other => return Err(format!("a frame this test does not know: {other:?}")),
    })
}

fn peer_json(bytes: &[u8]) -> Result<Value, String> {
    let p = PeerId::from_bytes(bytes).map_err(err)?;
    Ok(json!({ "peer_id": p.to_string(), "hex": h(bytes) }))
}

fn mailbox_request_json(bytes: &[u8], signer: Option<&Amid>) -> Result<Value, String> {
    Ok(match mailbox::Request::from_bytes(bytes).map_err(err)? {
        mailbox::Request::Deposit {
            to,
            id,
            expires_ms,
            envelope,
        } => json!({
            "op": "deposit",
            "to": peer_json(&to)?,
            "id": h(&id),
            "expires_ms": expires_ms,
            "envelope_hex": h(&envelope),
            "envelope": envelope_json(&envelope, need_signer(signer)?)?,
        }),
        mailbox::Request::Fetch { recipient, max } => {
            json!({ "op": "fetch", "recipient": peer_json(&recipient)?, "max": max })
        }
        mailbox::Request::Ack { recipient, ids } => json!({
            "op": "ack",
            "recipient": peer_json(&recipient)?,
            "ids": ids.iter().map(|i| h(&i[..])).collect::<Vec<_>>(),
        }),
        mailbox::Request::Senders { recipient, known } => json!({
            "op": "senders",
            "recipient": peer_json(&recipient)?,
            "known": known.iter().map(|k| peer_json(k)).collect::<Result<Vec<_>, _>>()?,
        }),
        // A variant added since: it needs a vector, and a rendering here.
        #[allow(unreachable_patterns)]
        other => return Err(format!("a request this test does not render: {other:?}")),
    })
}

fn mailbox_response_json(bytes: &[u8], signer: Option<&Amid>) -> Result<Value, String> {
    Ok(match mailbox::Response::from_bytes(bytes).map_err(err)? {
        mailbox::Response::Deposited { duplicate } => {
            json!({ "result": "deposited", "duplicate": duplicate })
        }
        mailbox::Response::Mail { items, more } => {
            let items = items
                .iter()
                .map(|i| {
                    Ok(json!({
                        "id": h(&i.id),
                        "from": peer_json(&i.from)?,
                        "deposited_ms": i.deposited_ms,
                        "expires_ms": i.expires_ms,
                        "envelope_hex": h(&i.envelope),
                        "envelope": envelope_json(&i.envelope, need_signer(signer)?)?,
                    }))
                })
                .collect::<Result<Vec<_>, String>>()?;
            json!({ "result": "mail", "items": items, "more": more })
        }
        mailbox::Response::Named { count } => json!({ "result": "named", "count": count }),
        mailbox::Response::Acked { removed, unknown } => json!({
            "result": "acked",
            "removed": removed,
            "unknown": unknown.iter().map(|i| h(&i[..])).collect::<Vec<_>>(),
        }),
        mailbox::Response::Error {
            code,
            retry_after_ms,
            detail,
        } => json!({
            "result": "error",
            "code": code,
            "retry_after_ms": retry_after_ms,
            "detail": detail,
        }),
        #[allow(unreachable_patterns)]
        other => return Err(format!("a response this test does not render: {other:?}")),
    })
}

// ---------------------------------------------------------------------------
// Olm: the random part, kept with what decrypts it.
// ---------------------------------------------------------------------------

/// `vectors/olm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OlmFixture {
    description: String,
    /// Alice's Olm (Curve25519) identity key, hex.
    alice_identity_key: String,
    /// Bob's Olm identity key, one-time key and fallback key, hex: the keys
    /// of his card (`vectors/card.json`).
    bob_identity_key: String,
    bob_one_time_key: String,
    bob_fallback_key: String,
    /// The three messages of `vectors/envelope.json`, in order.
    messages: Vec<OlmVector>,
}

/// One Olm message and what decrypts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OlmVector {
    name: String,
    sender: String,
    receiver: String,
    /// 0: pre-key message, 1: normal message.
    olm_type: u8,
    /// The binary Olm message, as in an envelope's `ciphertext`, hex.
    ciphertext: String,
    /// `account` (a pre-key message opens a new inbound session from it) or
    /// `session`.
    receiver_state_kind: String,
    /// The receiver's state just before the message: a vodozemac 0.11
    /// `AccountPickle` or `SessionPickle`, serialized as JSON, not encrypted.
    receiver_state: Value,
    /// The decrypted plaintext (a `Content`), hex.
    plaintext: String,
    /// The message's and the plaintext's fields.
    decoded: Value,
}

/// The three Olm plaintexts: alice's request (sealed to bob's fallback key,
/// as a KNOCK left in a mailbox is), bob's reply, alice's next message.
fn olm_contents() -> [Content; 3] {
    [
        Content::json(Kind::Request, &json!({"city": "Paris"})).expect("json"),
        Content::json(Kind::Reply { to: ID1 }, &json!({"forecast": "sunny"})).expect("json"),
        Content::json(Kind::Message, &json!({"text": "thanks"})).expect("json"),
    ]
}

fn key_bytes(hex_key: &str) -> Result<Curve25519PublicKey, String> {
    let b: [u8; 32] = unhex(hex_key)?
        .try_into()
        .map_err(|_| "a key is not 32 bytes".to_string())?;
    Ok(Curve25519PublicKey::from_bytes(b))
}

fn olm_decoded(olm_type: u8, ct: &[u8], plain: &[u8]) -> Result<Value, String> {
    Ok(json!({ "olm": olm_json(olm_type, ct)?, "plaintext": content_json(plain, None)? }))
}

/// Decrypts every message of the fixture with the stored state; each must
/// give its stored plaintext, which must be `contents`.
fn check_olm(f: &OlmFixture, contents: &[Content; 3]) -> Result<(), String> {
    if f.messages.len() != 3 {
        return Err(format!("{} Olm messages, expected 3", f.messages.len()));
    }
    let alice_key = key_bytes(&f.alice_identity_key)?;
    for (m, content) in f.messages.iter().zip(contents) {
        let ct = unhex(&m.ciphertext)?;
        let msg = OlmMessage::from_parts(usize::from(m.olm_type), &ct)
            .map_err(|e| format!("{}: {e}", m.name))?;
        let plain = match (&msg, m.receiver_state_kind.as_str()) {
            (OlmMessage::PreKey(pre), "account") => {
                let pickle: AccountPickle = serde_json::from_value(m.receiver_state.clone())
                    .map_err(|e| format!("{}: account pickle: {e}", m.name))?;
                let mut account = Account::from_pickle(pickle);
                if pre.identity_key() != alice_key {
                    return Err(format!("{}: not from alice's identity key", m.name));
                }
                account
                    .create_inbound_session(SessionConfig::version_1(), alice_key, pre)
                    .map_err(|e| format!("{}: {e}", m.name))?
                    .plaintext
            }
            (OlmMessage::Normal(_), "session") => {
                let pickle: SessionPickle = serde_json::from_value(m.receiver_state.clone())
                    .map_err(|e| format!("{}: session pickle: {e}", m.name))?;
                Session::from_pickle(pickle)
                    .decrypt(&msg)
                    .map_err(|e| format!("{}: {e}", m.name))?
            }
            _ => {
                return Err(format!(
                    "{}: olm_type and receiver_state_kind disagree",
                    m.name
                ))
            }
        };
        if h(&plain) != m.plaintext {
            return Err(format!(
                "{}: decrypts to {}, not the stored plaintext",
                m.name,
                h(&plain)
            ));
        }
        let want = content.to_bytes().map_err(err)?;
        if plain != want {
            return Err(format!(
                "{}: the plaintext is {}, the fixed inputs now give {} (rewrite the vectors)",
                m.name,
                h(&plain),
                h(&want)
            ));
        }
        let decoded = olm_decoded(m.olm_type, &ct, &plain)?;
        if decoded != m.decoded {
            let mut d = Vec::new();
            diff("decoded", &m.decoded, &decoded, &mut d);
            return Err(format!(
                "{}: decoded fields differ:\n{}",
                m.name,
                d.join("\n")
            ));
        }
    }
    Ok(())
}

/// New Olm messages between fresh accounts (vodozemac, Olm v1 as the node
/// uses it).
fn new_olm_fixture(contents: &[Content; 3]) -> OlmFixture {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    bob.generate_fallback_key();
    let bob_otk = *bob.one_time_keys().values().next().expect("one key");
    let bob_fallback = *bob.fallback_key().values().next().expect("a fallback key");
    let bob_before = serde_json::to_value(bob.pickle()).expect("pickle");
    let plain: Vec<Vec<u8>> = contents
        .iter()
        .map(|c| c.to_bytes().expect("content"))
        .collect();

    let mut a = alice
        .create_outbound_session(
            SessionConfig::version_1(),
            bob.curve25519_key(),
            bob_fallback,
        )
        .expect("session");
    let m1 = a.encrypt(&plain[0]).expect("encrypt");
    let alice_after_1 = serde_json::to_value(a.pickle()).expect("pickle");
    let OlmMessage::PreKey(pre) = &m1 else {
        panic!("the first message is a pre-key message")
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), pre)
        .expect("inbound")
        .session;
    let m2 = b.encrypt(&plain[1]).expect("encrypt");
    let bob_after_2 = serde_json::to_value(b.pickle()).expect("pickle");
    a.decrypt(&m2).expect("decrypt");
    let m3 = a.encrypt(&plain[2]).expect("encrypt");

    let entry = |name: &str,
                 sender: &str,
                 receiver: &str,
                 m: &OlmMessage,
                 kind: &str,
                 state: Value,
                 p: &[u8]| {
        let (t, ct) = m.to_parts();
        let t = u8::try_from(t).expect("0 or 1");
        OlmVector {
            name: name.into(),
            sender: sender.into(),
            receiver: receiver.into(),
            olm_type: t,
            ciphertext: h(&ct),
            receiver_state_kind: kind.into(),
            receiver_state: state,
            plaintext: h(p),
            decoded: olm_decoded(t, &ct, p).expect("decodes"),
        }
    };
    OlmFixture {
        description: "Olm messages of the envelopes in envelope.json (vodozemac 0.11, SessionConfig::version_1: Olm v1 with 8-byte MACs). Each is decrypted with receiver_state, the receiver's vodozemac state (JSON pickle, unencrypted) just before it: a pre-key message opens an inbound session from bob's account; normal messages decrypt with the stored session. The plaintext is the Content CBOR of SPEC.md 6.7.".into(),
        alice_identity_key: h(&alice.curve25519_key().to_bytes()),
        bob_identity_key: h(&bob.curve25519_key().to_bytes()),
        bob_one_time_key: h(&bob_otk.to_bytes()),
        bob_fallback_key: h(&bob_fallback.to_bytes()),
        messages: vec![
            entry("alice to bob, pre-key (to bob's fallback key)", "alice", "bob", &m1, "account", bob_before, &plain[0]),
            entry("bob to alice, normal", "bob", "alice", &m2, "session", alice_after_1, &plain[1]),
            entry("alice to bob, normal (alice has bob's answer)", "alice", "bob", &m3, "session", bob_after_2, &plain[2]),
        ],
    }
}

// ---------------------------------------------------------------------------
// The vectors, from fixed inputs.
// ---------------------------------------------------------------------------

/// The card's wire layout, written out (SPEC.md §4.1): `AgentCard` has no
/// public constructor, so the test encodes the card itself and requires the
/// crate to read it and encode it back to the same bytes.
#[derive(Serialize)]
struct CardWire {
    amid: Amid,
    #[serde(with = "serde_bytes")]
    olm_identity_key: [u8; 32],
    one_time_keys: Vec<ByteArray<32>>,
    #[serde(with = "serde_bytes")]
    fallback_key: [u8; 32],
    capabilities: Vec<String>,
    addrs: Vec<String>,
    presence: Presence,
    relays: Vec<String>,
}

/// A registry request body with a fixed nonce (`SignedRequest::sign` draws
/// a random one).
#[derive(Serialize)]
struct RequestBodyWire<'a> {
    ts_ms: u64,
    nonce: &'a str,
    #[serde(flatten)]
    op: &'a Operation,
}

fn bytes32(hex_key: &str) -> [u8; 32] {
    unhex(hex_key).expect("hex").try_into().expect("32 bytes")
}

struct Built {
    files: Vec<(&'static str, VectorFile)>,
}

#[allow(clippy::too_many_arguments)]
fn envelope(
    from: u8,
    to: u8,
    id: MessageId,
    session: SessionId,
    seq: u64,
    ts_ms: u64,
    olm_type: u8,
    ciphertext: Vec<u8>,
) -> SignedEnvelope {
    SignedEnvelope::seal(
        &identity(from),
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id,
            from: amid(from),
            to: amid(to),
            session,
            seq,
            ts_ms,
            expires_ms: ts_ms + DEFAULT_MESSAGE_TTL_MS,
            olm_type,
            ciphertext,
        },
    )
    .expect("seal")
}

fn build(olm: &OlmFixture) -> Built {
    let ct = |i: usize| unhex(&olm.messages[i].ciphertext).expect("hex");
    let no = Value::Null;

    // Identities.
    let amids = VectorFile {
        description: "AMIDs of the identities the vectors use: Identity::from_seed(&[n; 32]). hex is the CBOR form (bytes[32], the raw Ed25519 key); decoded.text the text form (SPEC.md 2.1, 2.2).".into(),
        vectors: [(ALICE, "alice"), (BOB, "bob"), (RELAY, "relay"), (REGISTRY_ROOT, "registry root")]
            .into_iter()
            .map(|(n, name)| {
                vector(name, "amid", Some(n), codec::encode(&amid(n)).expect("cbor"), "signer_seed is the identity's own seed", no.clone())
            })
            .collect(),
    };

    // Bob's card, with the Olm keys of the fixture.
    let relay_addr = format!("/ip4/192.0.2.7/tcp/4001/p2p/{}", peer(RELAY));
    let card = CardWire {
        amid: amid(BOB),
        olm_identity_key: bytes32(&olm.bob_identity_key),
        one_time_keys: vec![ByteArray::new(bytes32(&olm.bob_one_time_key))],
        fallback_key: bytes32(&olm.bob_fallback_key),
        capabilities: vec!["chat".into(), "weather/forecast".into()],
        addrs: vec!["/ip4/192.0.2.2/udp/4001/quic-v1".into()],
        presence: Presence::Online,
        relays: vec![relay_addr],
    };
    let card_payload = codec::encode(&card).expect("cbor");
    let crate_card: AgentCard =
        codec::decode(&card_payload, MAX_CARD_SIZE).expect("the crate reads the card");
    assert_eq!(
        crate_card.to_payload().expect("payload"),
        card_payload,
        "the crate encodes the card as SPEC.md 4.1 says"
    );
    let bob_key = identity(BOB).libp2p_keypair().expect("key");
    let card_record = SignedRecord::sign(&bob_key, "card", card_payload.clone(), T0, T0 + HOUR)
        .expect("sign")
        .to_bytes()
        .expect("bytes");
    let alice_key = identity(ALICE).libp2p_keypair().expect("key");
    let other_record = SignedRecord::sign(
        &alice_key,
        "example",
        b"any payload".to_vec(),
        7,
        T0 + 24 * HOUR,
    )
    .expect("sign")
    .to_bytes()
    .expect("bytes");
    let cards = VectorFile {
        description: "Bob's agent card (SPEC.md 4) and the DHT records it and other payloads travel in (SPEC.md 3), signed by the subject's key. The card's Olm keys are those of olm.json.".into(),
        vectors: vec![
            vector("card payload", "agent_card", None, card_payload, "the CBOR AgentCard, the payload of the record below", no.clone()),
            vector("card record", "signed_record", Some(BOB), card_record, "as published in the DHT under its record key; decoded.exported is the card as handed out of band (SPEC.md 4.4)", no.clone()),
            vector("other record", "signed_record", Some(ALICE), other_record, "a record in another namespace: the payload is opaque to the DHT", no.clone()),
        ],
    };

    // The envelopes.
    let e1 = envelope(ALICE, BOB, ID1, SESSION, 0, T0, 0, ct(0));
    let e2 = envelope(BOB, ALICE, ID2, SESSION, 1, T0 + 2_000, 1, ct(1));
    let e3 = envelope(ALICE, BOB, ID3, SESSION, 1, T0 + 3_000, 1, ct(2));
    let envelopes = VectorFile {
        description: "Signed envelopes (SPEC.md 6) of one session: the first, in the KNOCK; bob's reply; alice's next message. The ciphertexts are the Olm messages of olm.json, which decrypt to the Contents given there.".into(),
        vectors: vec![
            vector("first message (pre-key)", "signed_envelope", Some(ALICE), e1.to_bytes(), "seq 0, olm_type 0: rides in the KNOCK", no.clone()),
            vector("reply (normal)", "signed_envelope", Some(BOB), e2.to_bytes(), "the responder counts from 1", no.clone()),
            vector("next message (normal)", "signed_envelope", Some(ALICE), e3.to_bytes(), "", no.clone()),
        ],
    };

    // Contents (plaintexts), one per kind.
    let alice_info = SessionInfo::new(
        SESSION,
        amid(BOB),
        Role::Initiator,
        Intent::default(),
        T0,
        T0 + 24 * HOUR,
    );
    let completed =
        receipts::propose(&identity(ALICE), &alice_info, true, T0 + 5_000).expect("propose");
    let contents_file = VectorFile {
        description:
            "Content (SPEC.md 6.7): the Olm plaintext of every envelope, one vector per kind."
                .into(),
        vectors: vec![
            vector(
                "message",
                "content",
                None,
                Content::json(Kind::Message, &json!({"text": "hello"}))
                    .expect("json")
                    .to_bytes()
                    .expect("cbor"),
                "",
                no.clone(),
            ),
            vector(
                "request",
                "content",
                None,
                olm_contents()[0].to_bytes().expect("cbor"),
                "",
                no.clone(),
            ),
            vector(
                "reply",
                "content",
                None,
                olm_contents()[1].to_bytes().expect("cbor"),
                "",
                no.clone(),
            ),
            vector(
                "end with a receipt proposal",
                "content",
                Some(ALICE),
                Content::bytes(Kind::End, completed.to_bytes().expect("cbor"))
                    .to_bytes()
                    .expect("cbor"),
                "the body is a CBOR Proposal (SPEC.md 8.4) signed by the ender",
                no.clone(),
            ),
            vector(
                "end",
                "content",
                None,
                Content::bytes(Kind::End, Vec::new())
                    .to_bytes()
                    .expect("cbor"),
                "",
                no.clone(),
            ),
            vector(
                "chunk",
                "content",
                None,
                Content::bytes(
                    Kind::Chunk {
                        stream: STREAM,
                        index: 0,
                    },
                    vec![0, 1, 2, 0xff],
                )
                .to_bytes()
                .expect("cbor"),
                "raw bytes",
                no.clone(),
            ),
            vector(
                "finish",
                "content",
                None,
                Content::bytes(
                    Kind::Finish {
                        stream: STREAM,
                        chunks: 3,
                    },
                    Vec::new(),
                )
                .to_bytes()
                .expect("cbor"),
                "",
                no.clone(),
            ),
        ],
    };

    // The KNOCK and its decisions.
    let knock = SignedKnock::sign(
        &identity(ALICE),
        &KnockBody {
            from: amid(ALICE),
            to: amid(BOB),
            intent: Intent::new("weather/forecast", "query")
                .with_session_type(SessionType::RequestResponse),
            session: SESSION,
            ts_ms: T0,
            nonce: NONCE,
            first: e1.to_bytes(),
            credentials: Default::default(),
            moved_from: Vec::new(),
        },
    )
    .expect("sign");
    let policy_hash: [u8; 32] = Sha256::digest(b"agentmesh vector policy").into();
    let accept = SignedDecision::sign(
        &identity(BOB),
        &knock,
        Decision::Accept {
            session: SESSION,
            expires_ms: T0 + 1_000 + 24 * HOUR,
        },
        policy_hash,
        T0 + 1_000,
    );
    let rate_limited = SignedDecision::sign(
        &identity(BOB),
        &knock,
        Decision::Reject {
            reason: RejectReason::RateLimited,
            retry_after_ms: Some(30_000),
        },
        policy_hash,
        T0 + 1_000,
    );
    let not_allowed = SignedDecision::sign(
        &identity(BOB),
        &knock,
        Decision::Reject {
            reason: RejectReason::NotAllowed,
            retry_after_ms: None,
        },
        policy_hash,
        T0 + 1_000,
    );
    let knocks = VectorFile {
        description: "A KNOCK (SPEC.md 5.2, 5.3), anonymous (no credentials), carrying the first envelope of envelope.json, and the signed decisions answering it (SPEC.md 5.4, 5.5). knock_hash is SHA-256 of the KNOCK's body.".into(),
        vectors: vec![
            vector("knock", "signed_knock", Some(ALICE), knock.to_bytes(), "", no.clone()),
            vector("accept", "signed_decision", Some(BOB), accept.to_bytes(), "", no.clone()),
            vector("reject rate_limited", "signed_decision", Some(BOB), rate_limited.to_bytes(), "retry_after_ms present", no.clone()),
            vector("reject not_allowed", "signed_decision", Some(BOB), not_allowed.to_bytes(), "retry_after_ms absent", no.clone()),
        ],
    };

    // First contact through a mailbox: the control envelopes.
    let control_knock = SignedEnvelope::seal(
        &identity(ALICE),
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: ID1,
            from: amid(ALICE),
            to: amid(BOB),
            session: SESSION,
            seq: 0,
            ts_ms: T0,
            expires_ms: T0 + DEFAULT_MESSAGE_TTL_MS,
            olm_type: OLM_TYPE_KNOCK,
            ciphertext: knock.to_bytes(),
        },
    )
    .expect("seal");
    let control_decision = SignedEnvelope::seal(
        &identity(BOB),
        &EnvelopeBody {
            v: ENVELOPE_VERSION,
            id: ID_DECISION,
            from: amid(BOB),
            to: amid(ALICE),
            session: SessionId([0; 16]),
            seq: 0,
            ts_ms: T0 + 1_000,
            expires_ms: T0 + 1_000 + DEFAULT_MESSAGE_TTL_MS,
            olm_type: OLM_TYPE_DECISION,
            ciphertext: accept.to_bytes(),
        },
    )
    .expect("seal");
    let deposit_knock = mailbox::Request::Deposit {
        to: peer(BOB).to_bytes(),
        id: ID1.0,
        expires_ms: T0 + DEFAULT_MESSAGE_TTL_MS,
        envelope: ByteBuf::from(control_knock.to_bytes()),
    };
    let first_contact = VectorFile {
        description: "First contact through a mailbox (SPEC.md 9.6): the KNOCK of knock.json in a control envelope (olm_type 128) with the id and expiry of its first message, its deposit at bob's relay, and bob's decision in a control envelope (olm_type 129, session all zeros, seq 0) for alice's mailbox.".into(),
        vectors: vec![
            vector("knock control envelope", "signed_envelope", Some(ALICE), control_knock.to_bytes(), "olm_type 128: the ciphertext is the SignedKnock, in the clear", no.clone()),
            vector("deposit of the knock", "mailbox_request", Some(ALICE), deposit_knock.to_bytes().expect("cbor"), "", no.clone()),
            vector("decision control envelope", "signed_envelope", Some(BOB), control_decision.to_bytes(), "olm_type 129: the ciphertext is the SignedDecision, in the clear", no.clone()),
        ],
    };

    // MsgFrame, each variant.
    let closing =
        receipts::propose(&identity(ALICE), &alice_info, false, T0 + 5_000).expect("propose");
    let bob_info = SessionInfo::new(
        SESSION,
        amid(ALICE),
        Role::Responder,
        Intent::default(),
        T0,
        T0 + 24 * HOUR,
    );
    let countersigned =
        receipts::countersign(&identity(BOB), &bob_info, &completed, true, T0 + 5_000)
            .expect("countersign");
    let frames = VectorFile {
        description: "MsgFrame on /agentmesh/msg/1 (SPEC.md 8.3), one vector per variant, without the 4-byte length prefix of SPEC.md 8.1.".into(),
        vectors: vec![
            vector("envelope", "msg_frame", Some(ALICE), MsgFrame::Envelope(e3.to_bytes()).to_bytes(), "", no.clone()),
            vector("ack", "msg_frame", None, MsgFrame::Ack { id: ID3 }.to_bytes(), "", no.clone()),
            vector("nack rate_limited", "msg_frame", None, MsgFrame::Nack { id: ID3, reason: RejectReason::RateLimited, retry_after_ms: Some(1_500) }.to_bytes(), "", no.clone()),
            vector("nack decrypt_failed", "msg_frame", None, MsgFrame::Nack { id: ID3, reason: RejectReason::DecryptFailed, retry_after_ms: None }.to_bytes(), "retry_after_ms absent", no.clone()),
            vector("close with a receipt", "msg_frame", Some(ALICE), MsgFrame::Close { session: SESSION, receipt: Some(closing) }.to_bytes(), "the closer's receipt proposal, completed: false", no.clone()),
            vector("close", "msg_frame", None, MsgFrame::Close { session: SESSION, receipt: None }.to_bytes(), "receipt absent", no.clone()),
            vector("delivered", "msg_frame", None, MsgFrame::Delivered { ids: vec![ID1, ID3] }.to_bytes(), "", no.clone()),
            vector("countersigned", "msg_frame", Some(BOB), MsgFrame::Countersigned { session: SESSION, signature: countersigned.signature }.to_bytes(), "bob's signature over the receipt body alice proposed in her end message (content.json)", json!({ "receipt_body": completed.body })),
            vector("decision", "msg_frame", Some(BOB), MsgFrame::Decision(accept.to_bytes()).to_bytes(), "a decision on a KNOCK left in bob's mailbox, sent back on a message stream", no.clone()),
        ],
    };

    // Mailbox requests and responses.
    let item = mailbox::MailItem {
        id: ID3.0,
        from: peer(ALICE).to_bytes(),
        deposited_ms: T0 + 3_100,
        expires_ms: T0 + 3_000 + DEFAULT_MESSAGE_TTL_MS,
        envelope: ByteBuf::from(e3.to_bytes()),
    };
    let mb = |name: &str, signer: Option<u8>, r: mailbox::Request| {
        vector(
            name,
            "mailbox_request",
            signer,
            r.to_bytes().expect("cbor"),
            "",
            Value::Null,
        )
    };
    let mr = |name: &str, signer: Option<u8>, r: mailbox::Response| {
        vector(
            name,
            "mailbox_response",
            signer,
            r.to_bytes().expect("cbor"),
            "",
            Value::Null,
        )
    };
    let mailbox_file = VectorFile {
        description: "The mailbox protocol /agentmesh/mailbox/1 (SPEC.md 9.2, 9.3): every request and response variant, without the length prefix. PeerIds are their binary form.".into(),
        vectors: vec![
            mb("deposit", Some(ALICE), mailbox::Request::Deposit { to: peer(BOB).to_bytes(), id: ID3.0, expires_ms: T0 + 3_000 + DEFAULT_MESSAGE_TTL_MS, envelope: ByteBuf::from(e3.to_bytes()) }),
            mb("fetch", None, mailbox::Request::Fetch { recipient: peer(BOB).to_bytes(), max: 50 }),
            mb("ack", None, mailbox::Request::Ack { recipient: peer(BOB).to_bytes(), ids: vec![ByteArray::new(ID1.0), ByteArray::new(ID3.0)] }),
            mb("senders", None, mailbox::Request::Senders { recipient: peer(BOB).to_bytes(), known: vec![ByteBuf::from(peer(ALICE).to_bytes())] }),
            mr("deposited", None, mailbox::Response::Deposited { duplicate: false }),
            mr("mail", Some(ALICE), mailbox::Response::Mail { items: vec![item], more: false }),
            mr("named", None, mailbox::Response::Named { count: 1 }),
            mr("acked", None, mailbox::Response::Acked { removed: 1, unknown: vec![ByteArray::new(ID1.0)] }),
            mr("error rate_limited", None, mailbox::Response::Error { code: mailbox::ErrorCode::RateLimited, retry_after_ms: Some(60_000), detail: "too many deposits this minute".into() }),
            mr("error forged", None, mailbox::Response::error(mailbox::ErrorCode::Forged, "the envelope is not signed by the depositing peer")),
        ],
    };

    // Registry frames.
    let op = Operation::Register(Registration::new("Alice", vec!["weather/forecast".into()]));
    let nonce = h(&[0x6e; 16]);
    let body_text = serde_json::to_string(&RequestBodyWire {
        ts_ms: T0,
        nonce: &nonce,
        op: &op,
    })
    .expect("json");
    let signature = h(&identity(ALICE).sign(DOMAIN_SEP_REQUEST, body_text.as_bytes()));
    let signed: SignedRequest = serde_json::from_value(json!({
        "signer": amid(ALICE).to_string(),
        "body": body_text,
        "signature": signature,
    }))
    .expect("a signed request");
    let a = amid(ALICE);
    let rq = |name: &str, signer: Option<u8>, r: RegistryRequest| {
        vector(
            name,
            "registry_request",
            signer,
            r.to_bytes().expect("cbor"),
            "",
            Value::Null,
        )
    };
    let rs = |name: &str, r: RegistryResponse| {
        vector(
            name,
            "registry_response",
            None,
            r.to_bytes().expect("cbor"),
            "",
            Value::Null,
        )
    };
    let registry_file = VectorFile {
        description: "The registry protocol /agentmesh/registry/1 (SPEC.md 10): every request variant and both responses, without the length prefix. The signed request's body is JSON text with a fixed nonce.".into(),
        vectors: vec![
            rq("lookup", None, RegistryRequest::Lookup { amid: a }),
            rq("search", None, RegistryRequest::Search { capability: "weather/forecast".into(), tier_min: Some(Tier::Verified), reputation_min: Some(0.5), limit: Some(10) }),
            rq("search, no filters", None, RegistryRequest::Search { capability: "chat".into(), tier_min: None, reputation_min: None, limit: None }),
            rq("did", None, RegistryRequest::Did { amid: a }),
            rq("prekeys", None, RegistryRequest::Prekeys { amid: a }),
            rq("signed register", Some(ALICE), RegistryRequest::Signed { request: signed }),
            rq("revocation", None, RegistryRequest::Revocation { amid: a }),
            rq("crl", None, RegistryRequest::Crl),
            rq("credentials", None, RegistryRequest::Credentials { amid: a }),
            rq("root", None, RegistryRequest::Root),
            rq("log_head", None, RegistryRequest::LogHead { size: Some(42) }),
            rq("log_head, latest", None, RegistryRequest::LogHead { size: None }),
            rq("log_proof", None, RegistryRequest::LogProof { index: Some(3), hash: None, size: Some(42) }),
            rq("log_proof by hash", None, RegistryRequest::LogProof { index: None, hash: Some(h(&[0xab; 32])), size: None }),
            rq("log_consistency", None, RegistryRequest::LogConsistency { first: 10, second: Some(42) }),
            rq("org", None, RegistryRequest::Org { domain: "example.com".into() }),
            rq("evidence", None, RegistryRequest::Evidence { amid: a }),
            rq("leaderboard", None, RegistryRequest::Leaderboard { limit: Some(5) }),
            rq("time", None, RegistryRequest::Time),
            rs("ok", RegistryResponse::Ok { body: json!({"amid": a.to_string(), "capabilities": ["weather/forecast"], "display_name": "Alice", "reputation": 0.5, "tier": "anonymous"}) }),
            rs("ok time", RegistryResponse::Ok { body: json!({"time_ms": T0}) }),
            rs("error", RegistryResponse::Error { code: "unknown_agent".into(), message: "unknown agent".into() }),
        ],
    };

    Built {
        files: vec![
            ("amid.json", amids),
            ("card.json", cards),
            ("envelope.json", envelopes),
            ("content.json", contents_file),
            ("knock.json", knocks),
            ("first_contact.json", first_contact),
            ("msg_frame.json", frames),
            ("mailbox.json", mailbox_file),
            ("registry.json", registry_file),
        ],
    }
}

// ---------------------------------------------------------------------------
// Checking.
// ---------------------------------------------------------------------------

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}

/// The paths at which `want` and `got` differ.
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

/// Checks one stored vector on its own: its bytes decode, with valid
/// signatures, to the fields stored with it.
fn check_stored(file: &str, v: &Vector) -> Result<(), String> {
    let at = format!("{file} {:?}", v.name);
    let bytes = unhex(&v.hex).map_err(|e| format!("{at}: {e}"))?;
    let decoded = decode(&v.ty, &bytes, v.signer()?.as_ref(), &v.context)
        .map_err(|e| format!("{at}: the stored bytes no longer decode: {e}"))?;
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

/// Compares a stored vector with the one the fixed inputs give now.
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
        // What the stored bytes hold now, against what the inputs give.
        let stored_fields = unhex(&stored.hex)
            .and_then(|b| decode(&stored.ty, &b, stored.signer()?.as_ref(), &stored.context))
            .unwrap_or_else(|_| stored.decoded.clone());
        let mut d = Vec::new();
        diff("decoded", &stored_fields, &built.decoded, &mut d);
        let fields = if d.is_empty() {
            "  (the same fields, encoded otherwise)".to_string()
        } else {
            d.join("\n")
        };
        return Err(format!(
            "{at}: the encoding changed: {} bytes stored, {} now, first difference at byte {offset}; fields (stored, then now):\n{fields}",
            stored.hex.len() / 2,
            built.hex.len() / 2,
        ));
    }
    // Same bytes: check_stored compares the fields.
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

fn read<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn write<T: Serialize>(name: &str, value: &T) {
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).expect("vectors/");
    let mut text = serde_json::to_string_pretty(value).expect("json");
    text.push('\n');
    std::fs::write(dir.join(name), text).expect("write");
}

/// The Olm fixture: the stored one; when writing, a new one if there is
/// none or it no longer decrypts to the fixed plaintexts.
fn olm_fixture(writing: bool) -> Result<OlmFixture, String> {
    let contents = olm_contents();
    let stored = read::<OlmFixture>("olm.json").and_then(|f| check_olm(&f, &contents).map(|()| f));
    match stored {
        Ok(f) => Ok(f),
        Err(e) if writing => {
            eprintln!("olm.json made anew ({e})");
            let f = new_olm_fixture(&contents);
            check_olm(&f, &contents)?;
            write("olm.json", &f);
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

#[test]
fn every_vector_decodes_verifies_and_is_reproduced() {
    let writing = std::env::var(WRITE_ENV).is_ok_and(|v| v == "1");
    let fix = format!("if the change is intended, `{WRITE_ENV}=1 cargo test -p agentmesh-node --test vectors` rewrites vectors/ (review the diff, and SPEC.md)");
    let olm = olm_fixture(writing).unwrap_or_else(|e| panic!("vectors/olm.json: {e}\n{fix}"));
    let built = build(&olm);
    if writing {
        for (name, file) in &built.files {
            write(name, file);
        }
    }
    let mut errors = Vec::new();
    for (name, file) in &built.files {
        match read::<VectorFile>(name) {
            Ok(stored) => errors.extend(check_file(name, &stored, file)),
            Err(e) => errors.push(e),
        }
    }
    let mut count = 0;
    for (_, file) in &built.files {
        count += file.vectors.len();
    }
    assert!(count >= 60, "only {count} vectors");
    assert!(
        errors.is_empty(),
        "{} problem(s) with the wire-format vectors:\n{}\n{fix}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn a_changed_byte_or_field_is_caught() {
    // Fresh Olm messages: this checks the checks, not the stored files.
    let olm = new_olm_fixture(&olm_contents());
    let built = build(&olm);
    let (name, knocks) = built
        .files
        .iter()
        .find(|(n, _)| *n == "knock.json")
        .expect("knock.json");
    let knock = knocks
        .vectors
        .iter()
        .find(|v| v.name == "knock")
        .expect("the knock");
    check_stored(name, knock).expect("the vector itself passes");

    // A byte of the signed body flipped: the signature no longer verifies.
    let mut bytes = unhex(&knock.hex).expect("hex");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    let flipped = Vector {
        hex: h(&bytes),
        ..knock.clone()
    };
    let e = check_stored(name, &flipped).expect_err("a flipped byte is caught");
    assert!(e.contains("no longer decode"), "{e}");
    assert!(compare(name, &flipped, knock)
        .expect_err("differs")
        .contains("first difference at byte"));

    // A field stored wrong: reported with its path.
    let mut wrong = knock.clone();
    wrong.decoded["body"]["ts_ms"] = json!(T0 + 1);
    let e = check_stored(name, &wrong).expect_err("a wrong field is caught");
    assert!(e.contains("decoded.body.ts_ms"), "{e}");

    // Signed by someone else than stated.
    let other = Vector {
        signer_seed: Some(h(&[BOB; 32])),
        ..knock.clone()
    };
    assert!(check_stored(name, &other).is_err());

    // An Olm message that does not decrypt to its plaintext.
    let mut bad = olm.clone();
    let mut ct = unhex(&bad.messages[1].ciphertext).expect("hex");
    let last = ct.len() - 1;
    ct[last] ^= 0x01;
    bad.messages[1].ciphertext = h(&ct);
    assert!(
        check_olm(&bad, &olm_contents()).is_err(),
        "a changed MAC is caught"
    );
}
