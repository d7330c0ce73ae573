//! The local API's request bodies: the JSON a local client posts to the
//! node (`node/src/api/routes`, what `agentmesh` and the SDKs send over the
//! Unix socket or the TCP listener; `control.rs` is only the client side of
//! the same HTTP API, there is no other control framing).
//!
//! The routes' body types are private, so this target decodes the input
//! (an empty body reads as `{}`, as the routes' `Body` extractor does) into
//! copies of them (same fields, same `deny_unknown_fields`), then runs the
//! public decoders each route applies to the fields:
//!
//! - `Amid` parsing (every route naming an agent), `contacts::validate_name`
//!   (`PUT /v1/names`, `POST /v1/cards`), `Presence` parsing;
//! - `Policy::from_toml` (`PUT /v1/policy`, `POST /v1/policy/check`, and the
//!   policy file itself): a policy that parses must hash, print as TOML
//!   (`GET /v1/policy`) and parse back to the same policy;
//! - the policy check: the decoded tier, reputation (`Reputation::from_f64`)
//!   and intent judged by `Policy::evaluate`, as `POST /v1/policy/check` does;
//! - a message payload made into `Content` (send, request, reply), the
//!   message ids (`id16`), and a stream's `data_base64`.
//!
//! Independently of JSON, the whole input as UTF-8 is read as a policy file.
#![no_main]

use std::sync::LazyLock;

use agentmesh_node::{
    contacts,
    content::{Content, Kind},
    crypto::envelope::SessionId,
    identity::{Amid, Identity},
    knock::policy::{KnockContext, Policy, Tier},
    knock::{Intent, KnockBody, MAX_KNOCK_SIZE},
    trust::credentials::Reputation,
    Presence,
};
use agentmesh_transports::codec;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NOW: u64 = 10_000_000;

// Copies of the routes' bodies (node/src/api/routes/*.rs).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SendBody {
    to: String,
    payload: Value,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    wait: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RequestBody {
    to: String,
    payload: Value,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    to: String,
    id: String,
    #[serde(default)]
    session: Option<String>,
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StreamBody {
    to: String,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    path: Option<std::path::PathBuf>,
    #[serde(default)]
    chunk_size: Option<usize>,
    #[serde(default)]
    capability: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmidBody {
    amid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    amid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    from: Option<String>,
    capability: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    tier: Option<Tier>,
    #[serde(default)]
    reputation: Option<f64>,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    card: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
    amid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CredentialsBody {
    #[serde(default)]
    renew: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RegisterBody {
    name: String,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

/// Same field order and encoding as `KnockBody` (`#[non_exhaustive]`).
#[derive(Serialize)]
struct KnockBodyWire {
    from: Amid,
    to: Amid,
    intent: Intent,
    session: SessionId,
    ts_ms: u64,
    #[serde(with = "serde_bytes")]
    nonce: [u8; 16],
    #[serde(with = "serde_bytes")]
    first: Vec<u8>,
}

struct Fixtures {
    me: Amid,
    other: Amid,
}

static FX: LazyLock<Fixtures> = LazyLock::new(|| Fixtures {
    me: Identity::from_seed(&[2; 32]).amid(),
    other: Identity::from_seed(&[1; 32]).amid(),
});

fn amid(text: &str) -> Option<Amid> {
    let a: Amid = text.parse().ok()?;
    assert_eq!(a.to_string().parse::<Amid>().ok(), Some(a));
    Some(a)
}

fn id16(text: &str) -> Option<[u8; 16]> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
}

fn payload(kind: Kind, p: &Value) {
    if let Ok(c) = Content::json(kind, p) {
        if let Ok(bytes) = c.to_bytes() {
            let back = Content::from_bytes(&bytes).expect("encoded content decodes");
            assert_eq!(back, c);
            back.payload().expect("a JSON payload reads back");
        }
    }
}

/// A policy that parses must hash, print as TOML and parse back to itself.
fn policy(text: &str) -> Option<Policy> {
    let p = Policy::from_toml(text).ok()?;
    let hash = p.hash();
    let toml = toml::to_string(&p).expect("a parsed policy prints as TOML");
    let again = Policy::from_toml(&toml).expect("a printed policy parses");
    assert_eq!(again.hash(), hash, "policy TOML round trip: {toml}");
    Some(p)
}

fn check(fx: &Fixtures, b: CheckBody) {
    let p = match &b.policy {
        Some(text) => match policy(text) {
            Some(p) => p,
            None => return,
        },
        None => Policy::permissive(),
    };
    let from = match &b.from {
        Some(a) => match amid(a) {
            Some(a) => a,
            None => return,
        },
        None => fx.other,
    };
    // As the route: the default intent with the capability and action given.
    let intent = Intent::new(
        b.capability,
        b.action.unwrap_or_else(|| Intent::default().action),
    );
    let wire = KnockBodyWire {
        from,
        to: fx.me,
        intent,
        session: SessionId([0; 16]),
        ts_ms: NOW,
        nonce: [0; 16],
        first: Vec::new(),
    };
    let Ok(bytes) = codec::encode(&wire) else {
        return;
    };
    let Ok(knock) = codec::decode::<KnockBody>(&bytes, MAX_KNOCK_SIZE) else {
        return;
    };
    let kctx = KnockContext {
        tier: b.tier.unwrap_or_default(),
        reputation: b.reputation.map(Reputation::from_f64),
        ..KnockContext::default()
    };
    if let Some(r) = kctx.reputation {
        assert!(r.permille() <= 1000);
    }
    let decision = p.evaluate(&fx.me, &knock, kctx, NOW);
    let _ = serde_json::to_value(&decision).expect("a decision prints as JSON");
}

fuzz_target!(|data: &[u8]| {
    let fx = &*FX;

    // The policy file (or a policy posted as text).
    if let Ok(text) = std::str::from_utf8(data) {
        policy(text);
    }

    let body: &[u8] = if data.is_empty() { b"{}" } else { data };

    if let Ok(b) = serde_json::from_slice::<SendBody>(body) {
        amid(&b.to);
        payload(Kind::Message, &b.payload);
    }
    if let Ok(b) = serde_json::from_slice::<RequestBody>(body) {
        amid(&b.to);
        payload(Kind::Request, &b.payload);
    }
    if let Ok(b) = serde_json::from_slice::<ReplyBody>(body) {
        amid(&b.to);
        if let Some(id) = id16(&b.id) {
            let _ = b.session.as_deref().map(id16);
            payload(
                Kind::Reply {
                    to: agentmesh_node::crypto::envelope::MessageId(id),
                },
                &b.payload,
            );
        }
    }
    if let Ok(b) = serde_json::from_slice::<StreamBody>(body) {
        amid(&b.to);
        if let Some(d) = &b.data_base64 {
            use base64::Engine as _;
            let _ = base64::engine::general_purpose::STANDARD.decode(d.as_bytes());
        }
        let _ = b
            .chunk_size
            .unwrap_or(16 * 1024)
            .clamp(1, agentmesh_node::content::MAX_CHUNK_SIZE);
    }
    if let Ok(b) = serde_json::from_slice::<AmidBody>(body) {
        amid(&b.amid);
    }
    if let Ok(KillBody { amid: Some(a) }) = serde_json::from_slice::<KillBody>(body) {
        amid(&a);
    }
    if let Ok(b) = serde_json::from_slice::<PresenceBody>(body) {
        if let Ok(p) = b.state.parse::<Presence>() {
            let _ = p;
        }
    }
    if let Ok(b) = serde_json::from_slice::<PolicyBody>(body) {
        policy(&b.policy);
    }
    if let Ok(b) = serde_json::from_slice::<CheckBody>(body) {
        check(fx, b);
    }
    if let Ok(b) = serde_json::from_slice::<ImportBody>(body) {
        if let Some(n) = &b.name {
            let _ = contacts::validate_name(n);
        }
        let _ = contacts::decode_card(b.card.as_bytes(), NOW);
    }
    if let Ok(b) = serde_json::from_slice::<NameBody>(body) {
        let _ = contacts::validate_name(&b.name);
        amid(&b.amid);
    }
    if let Ok(b) = serde_json::from_slice::<IdsBody>(body) {
        for id in &b.ids {
            id16(id);
        }
    }
    let _ = serde_json::from_slice::<CredentialsBody>(body);
    let _ = serde_json::from_slice::<RegisterBody>(body);
});
