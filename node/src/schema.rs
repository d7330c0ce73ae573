//! Message schemas: the payload types agents agree on, as JSON Schema
//! (draft 2020-12), and the checks that hold a session to one.
//!
//! - **Standard schemas** ship with the node ([`STANDARD`]): `text`,
//!   `request`, `response`, `error`, `task-update` and `file-offer`, each
//!   named `agentmesh/<name>@<major>`. Their JSON is in `node/schemas/`.
//! - **Custom schemas** are the owner's, named `x-<namespace>/<name>@<major>`
//!   ([`Schemas::add`]).
//! - **Negotiation:** an agent's card lists, per capability, the schemas it
//!   accepts ([`crate::AgentCard::schemas`]); a sender reads them there and
//!   names one in its KNOCK ([`crate::Intent::schema`]). A KNOCK naming a
//!   schema the receiver does not know, or none where the capability lists
//!   some, is refused with [`crate::RejectReason::UnsupportedSchema`].
//! - **Validation:** in a session opened with a schema, the receiver checks
//!   every message and request the initiator sends against it before it
//!   accepts the message; one that does not conform is refused with
//!   [`crate::RejectReason::SchemaInvalid`] and never reaches the
//!   application. Replies are not checked: the initiator chose the peer.
//!   The sender checks its own payload first when it knows the schema.
//!
//! Schemas never load anything from the network or the disk: a `$ref`
//! reaches only schemas added here.

use std::collections::BTreeMap;

use crate::{content::Kind, crypto::session::Role, crypto::session::SessionInfo};

/// The standard schemas: id and JSON text.
pub const STANDARD: &[(&str, &str)] = &[
    ("agentmesh/text@1", include_str!("../schemas/text.json")),
    (
        "agentmesh/request@1",
        include_str!("../schemas/request.json"),
    ),
    (
        "agentmesh/response@1",
        include_str!("../schemas/response.json"),
    ),
    ("agentmesh/error@1", include_str!("../schemas/error.json")),
    (
        "agentmesh/task-update@1",
        include_str!("../schemas/task-update.json"),
    ),
    (
        "agentmesh/file-offer@1",
        include_str!("../schemas/file-offer.json"),
    ),
];

/// Longest schema id.
pub const MAX_SCHEMA_ID_LEN: usize = 80;
/// Most schemas a card lists, over all its capabilities.
pub const MAX_CARD_SCHEMAS: usize = 32;
/// Largest custom schema, as JSON text.
pub const MAX_SCHEMA_SIZE: usize = 64 * 1024;

/// Where schemas are placed for `$ref` resolution: a reserved domain that
/// never resolves, and nothing is ever fetched from it.
const BASE: &str = "https://schemas.agentmesh.invalid/";

/// Whether `id` is a well-formed schema id: `agentmesh/<name>@<major>` or
/// `x-<namespace>/<name>@<major>`; names of lowercase letters, digits and
/// `-`, starting with a letter or digit; the major version a number from 1.
pub fn is_valid_schema_id(id: &str) -> bool {
    if id.len() > MAX_SCHEMA_ID_LEN {
        return false;
    }
    let Some((path, major)) = id.rsplit_once('@') else {
        return false;
    };
    let major_ok = !major.is_empty()
        && major.len() <= 6
        && major.bytes().all(|b| b.is_ascii_digit())
        && !major.starts_with('0');
    let Some((ns, name)) = path.split_once('/') else {
        return false;
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 32
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !w.starts_with('-')
    };
    let ns_ok = ns == "agentmesh" || ns.strip_prefix("x-").is_some_and(word);
    major_ok && ns_ok && word(name)
}

/// Whether `id` names a custom (owner-defined) schema.
pub fn is_custom(id: &str) -> bool {
    id.starts_with("x-")
}

/// Errors adding or checking against schemas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Not a well-formed schema id (see [`is_valid_schema_id`]).
    #[error("invalid schema id {0:?}")]
    BadId(String),
    /// A custom schema must be named `x-<namespace>/<name>@<major>`.
    #[error("schema {0:?} is reserved: custom schemas are named x-<namespace>/<name>@<major>")]
    Reserved(String),
    /// A schema of this id is already known.
    #[error("schema {0:?} is already known")]
    Duplicate(String),
    /// The schema is over [`MAX_SCHEMA_SIZE`].
    #[error("schema {0:?} is too large")]
    TooLarge(String),
    /// The schema is not valid JSON Schema, or refers to one not known.
    #[error("schema {id:?} does not compile: {detail}")]
    Compile {
        /// The schema.
        id: String,
        /// Why.
        detail: String,
    },
    /// No schema of this id is known.
    #[error("unknown schema {0:?}")]
    Unknown(String),
    /// The payload does not conform.
    #[error("payload does not conform to {id}: {detail}")]
    Invalid {
        /// The schema.
        id: String,
        /// What does not conform (the first errors, shortened).
        detail: String,
    },
}

/// A loader that loads nothing: schemas reach only one another.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        Err(format!("{url}: schemas are never loaded from outside").into())
    }
}

/// The schemas a node knows, compiled.
pub struct Schemas {
    compiled: boon::Schemas,
    index: BTreeMap<String, (boon::SchemaIndex, serde_json::Value)>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas")
            .field("ids", &self.index.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Schemas {
    fn default() -> Self {
        Self::standard()
    }
}

impl Schemas {
    /// The standard schemas.
    pub fn standard() -> Self {
        let mut s = Self {
            compiled: boon::Schemas::new(),
            index: BTreeMap::new(),
        };
        for (id, text) in STANDARD {
            // The standard schemas are compiled by the tests below; a
            // failure here is a build defect, and leaves the schema unknown.
            if let Err(e) = serde_json::from_str(text)
                .map_err(|e| SchemaError::Compile {
                    id: (*id).into(),
                    detail: e.to_string(),
                })
                .and_then(|json| s.insert(id, json))
            {
                tracing::error!(error = %e, "standard schema not loaded");
            }
        }
        s
    }

    /// Adds a custom schema named `id` (`x-<namespace>/<name>@<major>`). It
    /// may `$ref` the standard schemas and those added before it by their
    /// ids (`"$ref": "agentmesh/text@1"`).
    pub fn add(&mut self, id: &str, json: serde_json::Value) -> Result<(), SchemaError> {
        if !is_valid_schema_id(id) {
            return Err(SchemaError::BadId(id.into()));
        }
        if !is_custom(id) {
            return Err(SchemaError::Reserved(id.into()));
        }
        if self.index.contains_key(id) {
            return Err(SchemaError::Duplicate(id.into()));
        }
        if serde_json::to_vec(&json).map_or(true, |b| b.len() > MAX_SCHEMA_SIZE) {
            return Err(SchemaError::TooLarge(id.into()));
        }
        self.insert(id, json)
    }

    /// Adds a custom schema from its JSON text.
    pub fn add_text(&mut self, id: &str, text: &str) -> Result<(), SchemaError> {
        if text.len() > MAX_SCHEMA_SIZE {
            return Err(SchemaError::TooLarge(id.into()));
        }
        let json = serde_json::from_str(text).map_err(|e| SchemaError::Compile {
            id: id.into(),
            detail: e.to_string(),
        })?;
        self.add(id, json)
    }

    fn insert(&mut self, id: &str, json: serde_json::Value) -> Result<(), SchemaError> {
        let compile = |detail: String| SchemaError::Compile {
            id: id.into(),
            detail,
        };
        let mut compiler = boon::Compiler::new();
        compiler.use_loader(Box::new(NoLoader));
        compiler.set_default_draft(boon::Draft::V2020_12);
        for (known, (_, j)) in &self.index {
            compiler
                .add_resource(&format!("{BASE}{known}"), absolute_refs(j.clone()))
                .map_err(|e| compile(e.to_string()))?;
        }
        let loc = format!("{BASE}{id}");
        compiler
            .add_resource(&loc, absolute_refs(json.clone()))
            .map_err(|e| compile(e.to_string()))?;
        let idx = compiler
            .compile(&loc, &mut self.compiled)
            .map_err(|e| compile(e.to_string()))?;
        self.index.insert(id.into(), (idx, json));
        Ok(())
    }

    /// Whether `id` is known.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// The ids known, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The JSON of schema `id`.
    pub fn get(&self, id: &str) -> Option<&serde_json::Value> {
        self.index.get(id).map(|(_, j)| j)
    }

    /// Checks `payload` against schema `id`.
    pub fn validate(&self, id: &str, payload: &serde_json::Value) -> Result<(), SchemaError> {
        let (idx, _) = self
            .index
            .get(id)
            .ok_or_else(|| SchemaError::Unknown(id.into()))?;
        self.compiled
            .validate(payload, *idx)
            .map_err(|e| SchemaError::Invalid {
                id: id.into(),
                detail: shorten(&format!("{e:#}").replace(BASE, "")),
            })
    }

    /// Checks a message of a session before it is accepted: the messages
    /// and requests of the initiator of a session opened with a schema.
    pub fn check_session_payload(
        &self,
        session: &SessionInfo,
        kind: &Kind,
        payload: &serde_json::Value,
    ) -> Result<(), SchemaError> {
        let Some(id) = &session.intent.schema else {
            return Ok(());
        };
        if session.role != Role::Responder || !matches!(kind, Kind::Message | Kind::Request) {
            return Ok(());
        }
        self.validate(id, payload)
    }
}

impl crate::crypto::session::PayloadCheck for Schemas {
    fn check(
        &self,
        session: &SessionInfo,
        kind: &Kind,
        payload: &serde_json::Value,
    ) -> Result<(), String> {
        self.check_session_payload(session, kind, payload)
            .map_err(|e| e.to_string())
    }
}

/// What a receiver accepts, per capability: the schemas listed in its card.
pub type Accepted = BTreeMap<String, Vec<String>>;

/// Checks the schema a KNOCK names against what the receiver accepts: a
/// named schema must be known (and listed, when the capability lists
/// some); a capability that lists schemas needs one named.
pub fn knock_schema_ok(
    schemas: &Schemas,
    accepted: &Accepted,
    capability: &str,
    schema: Option<&str>,
) -> Result<(), String> {
    let listed = accepted.get(capability).filter(|l| !l.is_empty());
    match (schema, listed) {
        (None, None) => Ok(()),
        (None, Some(l)) => Err(format!(
            "{capability} needs one of these schemas: {}",
            l.join(", ")
        )),
        (Some(s), _) if !schemas.contains(s) => Err(format!("unknown schema {s}")),
        (Some(s), Some(l)) if !l.iter().any(|x| x == s) => Err(format!(
            "{capability} does not take {s}; it takes {}",
            l.join(", ")
        )),
        (Some(_), _) => Ok(()),
    }
}

/// The schema with each `$ref` that names a schema by id (`agentmesh/text@1`,
/// optionally with a `#` fragment) made absolute: ids hold a `/`, so as
/// relative references they would resolve against the referring schema's
/// own namespace.
fn absolute_refs(mut json: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "$ref" {
                        if let serde_json::Value::String(r) = child {
                            let id = r.split('#').next().unwrap_or_default();
                            if is_valid_schema_id(id) {
                                *r = format!("{BASE}{r}");
                            }
                            continue;
                        }
                    }
                    walk(child);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut json);
    json
}

/// Whether a message naming `schema` (or none) may go in `session` without
/// a new KNOCK: in a session we opened, the schema must be the session's;
/// in one the peer opened, our messages are not checked, so only messages
/// naming no schema go there.
pub fn session_fits(session: &SessionInfo, schema: Option<&str>) -> bool {
    match session.role {
        Role::Initiator => session.intent.schema.as_deref() == schema,
        Role::Responder => schema.is_none(),
    }
}

/// At most 512 bytes of an error text, cut on a character boundary.
fn shorten(s: &str) -> String {
    const MAX: usize = 512;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::SessionId, Identity, Intent};
    use serde_json::json;

    #[test]
    fn standard_schemas_all_compile() {
        let s = Schemas::standard();
        let ids: Vec<&str> = s.ids().collect();
        assert_eq!(ids.len(), STANDARD.len(), "{ids:?}");
        for (id, _) in STANDARD {
            assert!(is_valid_schema_id(id), "{id}");
            assert!(s.contains(id));
        }
    }

    #[test]
    fn standard_payloads_pass_and_fail_as_documented() {
        let s = Schemas::standard();
        let good = [
            ("agentmesh/text@1", json!({"text": "hi"})),
            (
                "agentmesh/text@1",
                json!({"type": "text", "text": "hi", "format": "markdown"}),
            ),
            (
                "agentmesh/request@1",
                json!({"type": "request", "action": "forecast", "params": {"city": "Oslo"}}),
            ),
            (
                "agentmesh/response@1",
                json!({"type": "response", "result": [1, 2]}),
            ),
            (
                "agentmesh/error@1",
                json!({"type": "error", "code": "not_found", "message": "no such city"}),
            ),
            (
                "agentmesh/task-update@1",
                json!({"type": "task_update", "task_id": "t1", "state": "working", "progress": 0.5}),
            ),
            (
                "agentmesh/file-offer@1",
                json!({"type": "file_offer", "name": "a.csv", "size": 10, "sha256": "0".repeat(64)}),
            ),
        ];
        for (id, p) in good {
            s.validate(id, &p)
                .unwrap_or_else(|e| panic!("{id} {p}: {e}"));
        }
        let bad = [
            ("agentmesh/text@1", json!({"txt": "hi"})),
            ("agentmesh/text@1", json!({"text": 5})),
            ("agentmesh/request@1", json!({"type": "request"})),
            (
                "agentmesh/request@1",
                json!({"type": "reply", "action": "x"}),
            ),
            (
                "agentmesh/error@1",
                json!({"type": "error", "code": "Not Found", "message": "x"}),
            ),
            (
                "agentmesh/task-update@1",
                json!({"type": "task_update", "task_id": "t", "state": "sleeping"}),
            ),
            (
                "agentmesh/task-update@1",
                json!({"type": "task_update", "task_id": "t", "state": "working", "progress": 2}),
            ),
            (
                "agentmesh/file-offer@1",
                json!({"type": "file_offer", "name": "a", "size": -1, "sha256": "0".repeat(64)}),
            ),
            (
                "agentmesh/file-offer@1",
                json!({"type": "file_offer", "name": "a", "size": 1, "sha256": "xyz"}),
            ),
        ];
        for (id, p) in bad {
            match s.validate(id, &p) {
                Err(SchemaError::Invalid { id: got, detail }) => {
                    assert_eq!(got, id);
                    assert!(!detail.is_empty());
                }
                other => panic!("{id} {p}: {other:?}"),
            }
        }
        assert_eq!(
            s.validate("x-none/thing@1", &json!({})),
            Err(SchemaError::Unknown("x-none/thing@1".into()))
        );
    }

    #[test]
    fn schema_ids() {
        for ok in ["agentmesh/text@1", "x-weather/forecast@2", "x-a1/b-c@10"] {
            assert!(is_valid_schema_id(ok), "{ok}");
        }
        for bad in [
            "",
            "text",
            "agentmesh/text",
            "agentmesh/text@0",
            "agentmesh/text@01",
            "agentmesh/Text@1",
            "other/text@1",
            "x-/text@1",
            "x-w/-a@1",
            "x-w/a/b@1",
            "x-w/a@1.2",
            &format!("x-w/{}@1", "a".repeat(40)),
        ] {
            assert!(!is_valid_schema_id(bad), "{bad}");
        }
    }

    #[test]
    fn custom_schemas_compile_refer_to_known_ones_and_never_load() {
        let mut s = Schemas::standard();
        let forecast = json!({
            "type": "object",
            "required": ["type", "action", "params"],
            "allOf": [{"$ref": "agentmesh/request@1"}],
            "properties": {"params": {"type": "object", "required": ["city"],
                "properties": {"city": {"type": "string"}}}}
        });
        s.add("x-weather/forecast@1", forecast.clone()).unwrap();
        s.validate(
            "x-weather/forecast@1",
            &json!({"type": "request", "action": "forecast", "params": {"city": "Oslo"}}),
        )
        .unwrap();
        // The referenced standard schema applies too.
        assert!(s
            .validate(
                "x-weather/forecast@1",
                &json!({"type": "note", "action": "forecast", "params": {"city": "Oslo"}}),
            )
            .is_err());
        assert!(s
            .validate(
                "x-weather/forecast@1",
                &json!({"type": "request", "action": "f", "params": {}})
            )
            .is_err());
        assert_eq!(
            s.add("x-weather/forecast@1", forecast),
            Err(SchemaError::Duplicate("x-weather/forecast@1".into()))
        );
        assert_eq!(
            s.add("agentmesh/mine@1", json!({})),
            Err(SchemaError::Reserved("agentmesh/mine@1".into()))
        );
        assert!(matches!(
            s.add("x-a/b@1", json!({"type": 7})),
            Err(SchemaError::Compile { .. })
        ));
        // Outside references are refused, not fetched.
        for r in [
            "https://example.com/s.json",
            "file:///etc/passwd",
            "x-a/unknown@1",
        ] {
            assert!(
                matches!(
                    s.add("x-a/c@1", json!({"$ref": r})),
                    Err(SchemaError::Compile { .. })
                ),
                "{r}"
            );
        }
        assert!(!s.contains("x-a/c@1"));
        let big = json!({"description": "a".repeat(MAX_SCHEMA_SIZE)});
        assert_eq!(
            s.add("x-a/big@1", big),
            Err(SchemaError::TooLarge("x-a/big@1".into()))
        );
    }

    #[test]
    fn only_the_initiators_messages_and_requests_are_checked() {
        let s = Schemas::standard();
        let peer = Identity::generate().amid();
        let intent = Intent::new("weather/forecast", "query").with_schema("agentmesh/request@1");
        let session = |role| SessionInfo::new(SessionId([1; 16]), peer, role, intent.clone(), 0, 1);
        let bad = json!({"text": "hi"});
        let responder = session(Role::Responder);
        assert!(s
            .check_session_payload(&responder, &Kind::Message, &bad)
            .is_err());
        assert!(s
            .check_session_payload(&responder, &Kind::Request, &bad)
            .is_err());
        let reply = Kind::Reply {
            to: crate::crypto::envelope::MessageId([2; 16]),
        };
        assert!(s.check_session_payload(&responder, &reply, &bad).is_ok());
        assert!(s
            .check_session_payload(&session(Role::Initiator), &Kind::Message, &bad)
            .is_ok());
        let plain = SessionInfo::new(
            SessionId([1; 16]),
            peer,
            Role::Responder,
            Intent::default(),
            0,
            1,
        );
        assert!(s
            .check_session_payload(&plain, &Kind::Message, &bad)
            .is_ok());
    }

    #[test]
    fn knock_schema_rules() {
        let s = Schemas::standard();
        let mut accepted = Accepted::new();
        accepted.insert(
            "weather/forecast".into(),
            vec!["agentmesh/request@1".into()],
        );
        let ok = |cap, schema| knock_schema_ok(&s, &accepted, cap, schema);
        assert!(ok("weather/forecast", Some("agentmesh/request@1")).is_ok());
        assert!(ok("weather/forecast", None).is_err());
        assert!(ok("weather/forecast", Some("agentmesh/text@1")).is_err());
        assert!(ok("weather/forecast", Some("x-a/unknown@1")).is_err());
        assert!(ok("communication/messaging", None).is_ok());
        assert!(ok("communication/messaging", Some("agentmesh/text@1")).is_ok());
        assert!(ok("communication/messaging", Some("x-a/unknown@1")).is_err());
    }
}
