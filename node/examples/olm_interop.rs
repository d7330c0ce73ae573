//! `olm_interop`: the node's own Olm path (`SessionStore::seal_first`,
//! `seal` and `receive`), driven one JSON line at a time, so that another
//! Olm implementation can read what we seal and write what we open.
//! `sdk/python/tests/test_olm_interop.py` drives it with libolm (the
//! reference C implementation, through `python-olm`).
//!
//! We are the identity of seed `[1; 32]`, with a session store of our own
//! in a temporary directory. A peer is named by a seed byte `n`: the
//! identity of seed `[n; 32]` signs the envelopes that carry the peer's Olm
//! messages to us (Olm itself is the other implementation's). Binary values
//! are hex; an Olm ciphertext is the binary Olm message, as an envelope
//! carries it (SPEC.md §7.2).
//!
//! Requests on stdin, one answer per line on stdout:
//!
//! ```text
//! {"op":"card"}
//!   → {"ok":true,"amid":"am…","identity_key":hex,"one_time_keys":[hex…],"fallback_key":hex}
//! {"op":"seal_first","peer":2,"identity_key":hex,"one_time_key":hex,"payload":{…}}
//!   the peer's keys become a card signed by the peer and read back as the
//!   node reads cards; the first message of a new session is sealed to it
//!   → {"ok":true,"olm_type":0,"ciphertext":hex,"plaintext":hex,"envelope":hex}
//! {"op":"seal","peer":2,"payload":{…}}
//!   the next message in the current session with the peer → the same fields
//! {"op":"receive","peer":2,"olm_type":0|1,"ciphertext":hex,"first":bool}
//!   the peer's Olm message, in an envelope signed by the peer, opened by
//!   the store (first: as the first message of a KNOCK-accepted session)
//!   → {"ok":true,"kind":…,"payload":{…},"seq":n}
//! {"op":"libolm_account","account":{…},"key":"…"}
//!   a vodozemac account pickle (JSON, as `vectors/olm.json` keeps them)
//!   exported in libolm's pickle format, encrypted with the key's bytes
//!   → {"ok":true,"pickle":"…"}
//! any failure → {"ok":false,"error":"…","reason":"decrypt_failed"|…}
//! ```
//!
//! Build: `cargo build -p agentmesh-node --example olm_interop`.

use std::io::{BufRead, Write};

use agentmesh_dht::{now_ms, SignedRecord};
use agentmesh_node::{
    card::{AgentCard, MAX_CARD_SIZE},
    content::{Content, Kind},
    crypto::envelope::{EnvelopeBody, MessageId, SessionId, SignedEnvelope, ENVELOPE_VERSION},
    crypto::session::{SessionStore, DEFAULT_MESSAGE_TTL_MS},
    Amid, Identity, Intent, Presence,
};
use agentmesh_transports::codec;
use serde::Serialize;
use serde_bytes::ByteArray;
use serde_json::{json, Value};
use vodozemac::olm::{Account, AccountPickle};

/// Our seed byte.
const US: u8 = 1;
/// How long a session lasts here.
const SESSION_TTL_MS: u64 = 24 * 3_600_000;

/// A card as the wire has it (SPEC.md §4.1), for the peer's keys.
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

struct State {
    me: Identity,
    store: SessionStore,
    /// The sequence number of each peer's next envelope to us.
    next_seq: std::collections::HashMap<u8, u64>,
}

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a Value, String> {
    req.get(name).ok_or_else(|| format!("missing {name:?}"))
}

fn key32(req: &Value, name: &str) -> Result<[u8; 32], String> {
    let text = field(req, name)?
        .as_str()
        .ok_or(format!("{name} is not a string"))?;
    hex::decode(text)
        .map_err(|e| format!("{name}: {e}"))?
        .try_into()
        .map_err(|_| format!("{name} is not 32 bytes"))
}

fn peer_seed(req: &Value) -> Result<u8, String> {
    let n = field(req, "peer")?.as_u64().ok_or("peer is not a number")?;
    u8::try_from(n)
        .ok()
        .filter(|n| *n != US)
        .ok_or_else(|| format!("peer {n}: a seed byte other than {US}"))
}

fn identity(n: u8) -> Identity {
    Identity::from_seed(&[n; 32])
}

/// The peer's keys as a card: encoded, signed by the peer into a DHT record,
/// and read back through `AgentCard::from_record` as the node reads cards.
fn card_of(peer: u8, identity_key: [u8; 32], one_time_key: [u8; 32]) -> Result<AgentCard, String> {
    let who = identity(peer);
    let payload = codec::encode(&CardWire {
        amid: who.amid(),
        olm_identity_key: identity_key,
        one_time_keys: vec![ByteArray::new(one_time_key)],
        fallback_key: one_time_key,
        capabilities: Vec::new(),
        addrs: Vec::new(),
        presence: Presence::Online,
        relays: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    if payload.len() > MAX_CARD_SIZE {
        return Err("card too large".into());
    }
    let now = now_ms();
    let key = who.libp2p_keypair().map_err(|e| e.to_string())?;
    let record = SignedRecord::sign(&key, "card", payload, now, now + 3_600_000)
        .map_err(|e| e.to_string())?
        .verify(now)
        .map_err(|e| e.to_string())?;
    AgentCard::from_record(&record).map_err(|e| e.to_string())
}

fn content(req: &Value) -> Result<Content, String> {
    Content::json(Kind::Message, field(req, "payload")?).map_err(|e| e.to_string())
}

fn sealed(env: &SignedEnvelope, content: &Content) -> Result<Value, String> {
    let body = env.peek().ok_or("the sealed envelope does not decode")?;
    Ok(json!({
        "ok": true,
        "olm_type": body.olm_type,
        "ciphertext": hex::encode(&body.ciphertext),
        "plaintext": hex::encode(content.to_bytes().map_err(|e| e.to_string())?),
        "envelope": hex::encode(env.to_bytes()),
    }))
}

impl State {
    fn handle(&mut self, req: &Value) -> Result<Value, String> {
        let now = now_ms();
        match field(req, "op")?.as_str().unwrap_or_default() {
            "card" => {
                let (id, otks, fallback) = self.store.card_keys();
                Ok(json!({
                    "ok": true,
                    "amid": self.me.amid().to_string(),
                    "identity_key": hex::encode(id),
                    "one_time_keys": otks.iter().map(hex::encode).collect::<Vec<_>>(),
                    "fallback_key": hex::encode(fallback),
                }))
            }
            "seal_first" => {
                let peer = peer_seed(req)?;
                let card = card_of(
                    peer,
                    key32(req, "identity_key")?,
                    key32(req, "one_time_key")?,
                )?;
                let content = content(req)?;
                let (pending, env) = self
                    .store
                    .seal_first(
                        &self.me,
                        &card,
                        false,
                        Intent::default(),
                        MessageId::random(),
                        &content,
                        now,
                    )
                    .map_err(|e| e.to_string())?;
                // The peer accepts (a KNOCK's answer): the session is kept.
                self.store
                    .commit_outbound(pending, now + SESSION_TTL_MS)
                    .map_err(|e| e.to_string())?;
                sealed(&env, &content)
            }
            "seal" => {
                let peer = identity(peer_seed(req)?).amid();
                let content = content(req)?;
                let env = self
                    .store
                    .seal(&self.me, &peer, None, MessageId::random(), &content, now)
                    .map_err(|e| e.to_string())?;
                // Durable before it leaves, as a link does.
                self.store.save(now).map_err(|e| e.to_string())?;
                self.store.flush().map_err(|e| e.to_string())?;
                sealed(&env, &content)
            }
            "receive" => self.receive(req, now),
            "libolm_account" => {
                // A vodozemac account (an unencrypted JSON pickle, as
                // vectors/olm.json keeps them) in libolm's pickle format.
                let pickle: AccountPickle = serde_json::from_value(field(req, "account")?.clone())
                    .map_err(|e| format!("account: {e}"))?;
                let key = field(req, "key")?.as_str().ok_or("key is not a string")?;
                let pickle = Account::from_pickle(pickle)
                    .to_libolm_pickle(key.as_bytes())
                    .map_err(|e| e.to_string())?;
                Ok(json!({ "ok": true, "pickle": pickle }))
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }

    fn receive(&mut self, req: &Value, now: u64) -> Result<Value, String> {
        let seed = peer_seed(req)?;
        let peer = identity(seed);
        let olm_type = field(req, "olm_type")?
            .as_u64()
            .and_then(|t| u8::try_from(t).ok())
            .ok_or("olm_type is not a byte")?;
        let ciphertext = hex::decode(field(req, "ciphertext")?.as_str().unwrap_or_default())
            .map_err(|e| format!("ciphertext: {e}"))?;
        let first = req.get("first").and_then(Value::as_bool).unwrap_or(false);
        let (session, knock) = if first {
            let id = SessionId::random();
            let info = SessionStore::responder_info(
                peer.amid(),
                id,
                Intent::default(),
                now,
                now + SESSION_TTL_MS,
            );
            self.next_seq.insert(seed, 0);
            (id, Some(info))
        } else {
            let current = self
                .store
                .current_session(&peer.amid(), now)
                .ok_or("no session with the peer")?;
            (current.id, None)
        };
        let seq = self.next_seq.entry(seed).or_insert(1);
        let env = SignedEnvelope::seal(
            &peer,
            &EnvelopeBody {
                v: ENVELOPE_VERSION,
                id: MessageId::random(),
                from: peer.amid(),
                to: self.me.amid(),
                session,
                seq: *seq,
                ts_ms: now,
                expires_ms: now + DEFAULT_MESSAGE_TTL_MS,
                olm_type,
                ciphertext,
            },
        )
        .map_err(|e| e.to_string())?;
        *seq += 1;
        // The bytes as they travel.
        let env = SignedEnvelope::from_bytes(&env.to_bytes()).map_err(|e| e.to_string())?;
        match self.store.receive(&env, knock.as_ref(), now) {
            Ok((_, got)) => Ok(json!({
                "ok": true,
                "kind": got.kind,
                "payload": got.payload,
                "seq": got.seq,
            })),
            Err(e) => Ok(json!({
                "ok": false,
                "error": e.to_string(),
                "reason": e.reason(),
            })),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let me = identity(US);
    let store = SessionStore::open(me.amid(), &db, &[7; 32])?;
    let mut state = State {
        me,
        store,
        next_seq: Default::default(),
    };
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = serde_json::from_str::<Value>(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|req| state.handle(&req))
            .unwrap_or_else(|e| json!({ "ok": false, "error": e }));
        let mut out = stdout.lock();
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
