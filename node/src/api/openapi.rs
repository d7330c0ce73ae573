//! The OpenAPI 3.1 document of the local API, made from the router's own
//! route list and the descriptions here; a test checks that both name the
//! same routes.

use axum::http::Method;
use serde_json::{json, Map, Value};

use super::{routes, ErrorCode, VERSION};

/// How one operation is described.
struct Op {
    summary: &'static str,
    /// JSON schema of the body.
    body: Option<Value>,
    /// Query parameters: name, JSON type, description.
    query: &'static [(&'static str, &'static str, &'static str)],
    /// JSON schema of the answer.
    answer: Value,
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

fn describe(method: &Method, path: &str) -> Option<Op> {
    let amid_body = || obj(&["amid"], json!({ "amid": { "type": "string" } }));
    let empty = || json!({ "type": "object" });
    let ids_body = || {
        obj(
            &["ids"],
            json!({ "ids": { "type": "array", "items": { "type": "string", "pattern": "^[0-9a-f]{32}$" } } }),
        )
    };
    let op = match (method.as_str(), path) {
        ("POST", "/v1/send") => Op {
            summary: "Send a message; wait for its receipt unless `wait` is false",
            body: Some(obj(
                &["to", "payload"],
                json!({
                    "to": { "type": "string" }, "payload": {},
                    "capability": { "type": "string" },
                    "schema": { "type": "string", "description": "schema the payload follows, e.g. `agentmesh/request@1` (see GET /v1/schemas)" },
                    "wait": { "type": "boolean", "default": true }
                }),
            )),
            query: &[],
            answer: json!({ "type": "object", "properties": { "receipt": r("Receipt"), "id": { "type": "string" } } }),
        },
        ("POST", "/v1/request") => Op {
            summary: "Send a request and wait for its reply",
            body: Some(obj(
                &["to", "payload"],
                json!({
                    "to": { "type": "string" }, "payload": {},
                    "capability": { "type": "string" },
                    "schema": { "type": "string", "description": "schema the payload follows, e.g. `agentmesh/request@1` (see GET /v1/schemas)" },
                    "timeout_ms": { "type": "integer", "minimum": 0 }
                }),
            )),
            query: &[],
            answer: obj(&["reply"], json!({ "reply": r("Message") })),
        },
        ("POST", "/v1/reply") => Op {
            summary: "Reply to a received request or message",
            body: Some(obj(
                &["to", "id", "payload"],
                json!({ "to": { "type": "string" }, "id": { "type": "string" }, "session": { "type": "string" }, "payload": {} }),
            )),
            query: &[],
            answer: obj(&["receipt"], json!({ "receipt": r("Receipt") })),
        },
        ("POST", "/v1/end") => Op {
            summary: "End the conversation with an agent",
            body: Some(amid_body()),
            query: &[],
            answer: obj(&["session"], json!({ "session": { "type": "string" } })),
        },
        ("POST", "/v1/stream") => Op {
            summary: "Send bytes (base64) or a file as an encrypted stream",
            body: Some(obj(
                &["to"],
                json!({
                    "to": { "type": "string" }, "data_base64": { "type": "string" }, "path": { "type": "string" },
                    "chunk_size": { "type": "integer", "minimum": 1 }, "capability": { "type": "string" }
                }),
            )),
            query: &[],
            answer: obj(
                &["chunks", "bytes"],
                json!({ "chunks": { "type": "integer" }, "bytes": { "type": "integer" } }),
            ),
        },
        ("GET", "/v1/messages") => Op {
            summary: "Take received messages, each leased to this reader until acknowledged",
            body: None,
            query: &[
                (
                    "wait_ms",
                    "integer",
                    "Wait up to this long for a first message (at most 60000)",
                ),
                (
                    "max",
                    "integer",
                    "At most this many messages (1 to 256, default 32)",
                ),
                (
                    "lease_ms",
                    "integer",
                    "Lease of each message (1000 to 600000, default 30000)",
                ),
            ],
            answer: obj(
                &["messages"],
                json!({ "messages": { "type": "array", "items": r("Message") } }),
            ),
        },
        ("POST", "/v1/messages/ack") => Op {
            summary: "Acknowledge handled messages: removed from the durable inbox",
            body: Some(ids_body()),
            query: &[],
            answer: obj(&["acked"], json!({ "acked": { "type": "integer" } })),
        },
        ("POST", "/v1/messages/release") => Op {
            summary: "Hand leased messages out again at once",
            body: Some(ids_body()),
            query: &[],
            answer: obj(&["released"], json!({ "released": { "type": "integer" } })),
        },
        ("GET", "/v1/events") => Op {
            summary: "Node events after `since` (long-poll)",
            body: None,
            query: &[
                (
                    "since",
                    "integer",
                    "The last event id seen (0 for all kept)",
                ),
                (
                    "wait_ms",
                    "integer",
                    "Wait up to this long for a first event (at most 60000)",
                ),
                (
                    "limit",
                    "integer",
                    "At most this many events (1 to 1000, default 100)",
                ),
            ],
            answer: obj(
                &["events", "last_id", "dropped"],
                json!({
                    "events": { "type": "array", "items": r("Event") },
                    "last_id": { "type": "integer" }, "dropped": { "type": "integer" }
                }),
            ),
        },
        ("GET", "/v1/events/stream") => Op {
            summary: "Node events as Server-Sent Events (resume with Last-Event-ID or `since`)",
            body: None,
            query: &[("since", "integer", "The last event id seen")],
            answer: json!({ "type": "string", "contentMediaType": "text/event-stream" }),
        },
        ("GET", "/v1/status") => Op {
            summary: "The node's status",
            body: None,
            query: &[],
            answer: obj(
                &["status", "inbox", "killed", "relay_reservations"],
                json!({
                    "status": r("Status"), "inbox": { "type": "object" },
                    "killed": { "type": "boolean", "description": "The kill switch for everyone is on" },
                    "relay_reservations": { "type": "array", "items": { "type": "string" }, "description": "The relays this node holds a circuit relay reservation on" }
                }),
            ),
        },
        ("GET", "/v1/mailbox") => Op {
            summary: "Mail waiting for this agent at each relay that keeps its mailbox, asked now (nothing is fetched): envelopes and bytes, or why the relay could not say",
            body: None,
            query: &[],
            answer: obj(
                &["relays"],
                json!({ "relays": { "type": "array", "items": obj(&["relay"], json!({
                    "relay": { "type": "string", "description": "The relay's address" },
                    "envelopes": { "type": "integer" }, "bytes": { "type": "integer" },
                    "error": { "type": "string" }
                })) } }),
            ),
        },
        ("GET", "/v1/peers") => Op {
            summary: "Known agents (sessions, imported cards, petnames, connections, the blocklist): presence, last seen, path, sessions with the newest one's type and age, messages each way, blocked, petname; and whether the kill switch for everyone is on",
            body: None,
            query: &[],
            answer: obj(
                &["peers", "killed"],
                json!({
                    "peers": { "type": "array", "items": r("KnownPeer") },
                    "killed": { "type": "boolean", "description": "The kill switch for everyone is on" }
                }),
            ),
        },
        ("GET", "/v1/schemas") => Op {
            summary: "The message schemas this agent knows (JSON Schema), and those it takes per capability (listed in its card)",
            body: None,
            query: &[],
            answer: obj(
                &["schemas", "accepted"],
                json!({
                    "schemas": { "type": "array", "items": obj(&["id", "schema"], json!({ "id": { "type": "string" }, "schema": { "type": "object" } })) },
                    "accepted": { "type": "object", "additionalProperties": { "type": "array", "items": { "type": "string" } } }
                }),
            ),
        },
        ("GET", "/v1/card") => Op {
            summary: "Export this agent's signed card (the DHT record) as a string to hand out of band",
            body: None,
            query: &[],
            answer: obj(
                &["card", "amid", "seq", "expires_ms"],
                json!({
                    "card": { "type": "string", "description": "multibase base64url (`u…`) of the signed record" },
                    "amid": { "type": "string" }, "seq": { "type": "integer" },
                    "expires_ms": { "type": "integer" }, "details": { "type": "object" }
                }),
            ),
        },
        ("POST", "/v1/cards") => Op {
            summary: "Import another agent's signed card (verified: signature, expiry); it is then reached with no DHT",
            body: Some(obj(
                &["card"],
                json!({
                    "card": { "type": "string", "description": "an exported card string" },
                    "name": { "type": "string", "description": "a petname to give the agent" }
                }),
            )),
            query: &[],
            answer: obj(
                &["amid", "seq", "expires_ms"],
                json!({
                    "amid": { "type": "string" }, "seq": { "type": "integer" },
                    "expires_ms": { "type": "integer" }, "name": { "type": ["string", "null"] },
                    "details": { "type": "object" }
                }),
            ),
        },
        ("GET", "/v1/cards") => Op {
            summary: "The imported cards still valid",
            body: None,
            query: &[],
            answer: obj(
                &["cards"],
                json!({ "cards": { "type": "array", "items": { "type": "object" } } }),
            ),
        },
        ("GET", "/v1/names") => Op {
            summary: "Local petnames and the AMIDs they name",
            body: None,
            query: &[],
            answer: obj(
                &["names"],
                json!({ "names": { "type": "array", "items": r("Name") } }),
            ),
        },
        ("POST", "/v1/names") => Op {
            summary: "Name an agent locally (never published); a petname is then taken wherever an AMID is",
            body: Some(obj(
                &["name", "amid"],
                json!({
                    "name": { "type": "string", "pattern": "^[a-z][a-z0-9._-]{0,31}$" },
                    "amid": { "type": "string" }
                }),
            )),
            query: &[],
            answer: r("Name"),
        },
        ("DELETE", "/v1/names/{name}") => Op {
            summary: "Forget a petname",
            body: None,
            query: &[],
            answer: r("Name"),
        },
        ("GET", "/v1/sessions") => Op {
            summary: "Cached sessions",
            body: None,
            query: &[],
            answer: obj(
                &["sessions"],
                json!({ "sessions": { "type": "array", "items": { "type": "object" } } }),
            ),
        },
        ("GET", "/v1/lookup/{amid}") => Op {
            summary: "Look an agent's signed card up in the DHT (else the card imported out of band, if any)",
            body: None,
            query: &[],
            answer: obj(&["card"], json!({ "card": { "type": "object" } })),
        },
        ("POST", "/v1/close") => Op {
            summary: "End every session with an agent",
            body: Some(amid_body()),
            query: &[],
            answer: obj(&["closed"], json!({ "closed": { "type": "integer" } })),
        },
        ("POST", "/v1/disconnect") => Op {
            summary: "Close every connection to an agent (sessions stay)",
            body: Some(amid_body()),
            query: &[],
            answer: empty(),
        },
        ("POST", "/v1/block") => Op {
            summary: "Block an agent",
            body: Some(amid_body()),
            query: &[],
            answer: empty(),
        },
        ("POST", "/v1/kill") => Op {
            summary: "Kill switch: close sessions and block one agent, or everyone",
            body: Some(json!({ "type": "object", "properties": { "amid": { "type": "string" } } })),
            query: &[],
            answer: empty(),
        },
        ("POST", "/v1/kill/clear") => Op {
            summary: "Turn the kill switch for everyone off",
            body: None,
            query: &[],
            answer: empty(),
        },
        ("PUT", "/v1/presence") => Op {
            summary: "Set this agent's presence",
            body: Some(obj(
                &["state"],
                json!({ "state": { "enum": ["online", "away", "dnd", "offline"] } }),
            )),
            query: &[],
            answer: empty(),
        },
        ("GET", "/v1/policy") => Op {
            summary: "The KNOCK policy in force and its hash",
            body: None,
            query: &[],
            answer: obj(
                &["policy", "policy_hash"],
                json!({ "policy": { "type": "object" }, "policy_hash": { "type": "string" } }),
            ),
        },
        ("POST", "/v1/policy/reload") => Op {
            summary: "Read the policy file again",
            body: None,
            query: &[],
            answer: obj(
                &["policy_hash"],
                json!({ "policy_hash": { "type": "string" } }),
            ),
        },
        ("POST", "/v1/policy/check") => Op {
            summary:
                "Judge a KNOCK that is not sent, by the policy in force or one given (dry run)",
            body: Some(obj(
                &["capability"],
                json!({
                    "from": { "type": "string" }, "capability": { "type": "string" }, "action": { "type": "string" },
                    "tier": { "enum": ["anonymous", "verified", "organization"] },
                    "reputation": { "type": "number" }, "policy": { "type": "string", "description": "TOML" }
                }),
            )),
            query: &[],
            answer: obj(
                &["decision", "policy_hash"],
                json!({ "decision": { "type": "object" }, "policy_hash": { "type": "string" } }),
            ),
        },
        ("GET", "/v1/audit") => Op {
            summary: "The audit log, optionally verified",
            body: None,
            query: &[
                ("peer", "string", "Only entries about this AMID"),
                ("kind", "string", "Only entries of this kind"),
                ("limit", "integer", "Only the most recent N"),
                ("verify", "boolean", "Verify the whole hash chain"),
            ],
            answer: obj(
                &["audit"],
                json!({ "audit": { "type": "array", "items": { "type": "object" } }, "verified": { "type": "integer" } }),
            ),
        },
        ("GET", "/v1/receipts") => Op {
            summary: "Session receipts held and where each stands with the registry",
            body: None,
            query: &[],
            answer: obj(
                &["receipts"],
                json!({ "receipts": { "type": "array", "items": { "type": "object" } } }),
            ),
        },
        ("POST", "/v1/credentials") => Op {
            summary: "Reload credentials from the data directory, or renew them from the registry",
            body: Some(
                json!({ "type": "object", "properties": { "renew": { "type": "boolean" } } }),
            ),
            query: &[],
            answer: obj(
                &["credentials"],
                json!({ "credentials": { "type": "object" } }),
            ),
        },
        ("POST", "/v1/registry/register") => Op {
            summary:
                "Register this agent with the configured registry (a request signed with its key)",
            body: Some(obj(
                &["name"],
                json!({ "name": { "type": "string" }, "capabilities": { "type": "array", "items": { "type": "string" } } }),
            )),
            query: &[],
            answer: obj(
                &["registration"],
                json!({ "registration": { "type": "object" } }),
            ),
        },
        ("GET", "/v1/registry/search") => Op {
            summary: "Agents by capability, from the configured registry",
            body: None,
            query: &[
                ("capability", "string", "Capability or category (required)"),
                (
                    "tier_min",
                    "string",
                    "Lowest tier: anonymous, verified, organization",
                ),
                ("reputation_min", "number", "Lowest reputation, 0 to 1"),
                ("limit", "integer", "At most this many results"),
            ],
            answer: obj(&["results"], json!({ "results": { "type": "object" } })),
        },
        ("PUT", "/v1/policy") => Op {
            summary: "Put a policy (TOML) in force now; the policy file is not changed",
            body: Some(obj(
                &["policy"],
                json!({ "policy": { "type": "string", "description": "TOML" } }),
            )),
            query: &[],
            answer: obj(
                &["policy_hash"],
                json!({ "policy_hash": { "type": "string" } }),
            ),
        },
        ("POST", "/v1/dashboard/link") => Op {
            summary: "A one-time link that logs a browser into the dashboard",
            body: None,
            query: &[],
            answer: obj(
                &["url"],
                json!({ "url": { "type": "string" }, "expires_in_s": { "type": "integer" } }),
            ),
        },
        ("GET", "/v1/stats/timeseries") => Op {
            summary: "The last hour minute by minute (messages by path, KNOCK decisions) and the delivery latency histogram",
            body: None,
            query: &[],
            answer: obj(
                &["now_ms", "minute_ms", "minutes", "latency"],
                json!({
                    "now_ms": { "type": "integer" },
                    "minute_ms": { "type": "integer" },
                    "minutes": {
                        "type": "array", "minItems": 60, "maxItems": 60,
                        "description": "Oldest first; the last is the current minute",
                        "items": obj(&["start_ms", "sent", "received", "knocks"], json!({
                            "start_ms": { "type": "integer" },
                            "sent": r("ByPath"), "received": r("ByPath"),
                            "knocks": obj(&["accepted", "rejected"], json!({
                                "accepted": { "type": "integer" }, "rejected": { "type": "integer" }
                            }))
                        }))
                    },
                    "latency": obj(&["buckets", "count", "sum_ms"], json!({
                        "buckets": {
                            "type": "array",
                            "description": "Deliveries per bucket (not cumulative), up to le_ms; the last has no bound",
                            "items": obj(&["le_ms", "count"], json!({
                                "le_ms": { "type": ["integer", "null"] }, "count": { "type": "integer" }
                            }))
                        },
                        "count": { "type": "integer" }, "sum_ms": { "type": "integer" }
                    }))
                }),
            ),
        },
        ("GET", "/v1/registry/standing") => Op {
            summary: "This agent's tier and reputation at its registry, from a cache (looked up again in the background when stale)",
            body: None,
            query: &[],
            answer: obj(
                &["state", "checked_ms"],
                json!({
                    "state": { "enum": ["checking", "not_configured", "registered", "not_registered", "unknown"] },
                    "tier": { "enum": ["anonymous", "verified", "organization"] },
                    "reputation": { "type": "number" },
                    "error": { "type": "string" },
                    "checked_ms": { "type": ["integer", "null"] }
                }),
            ),
        },
        ("GET", "/v1/diagnostics") => Op {
            summary: "The doctor's checks, each with a fix when it failed: bootstrap nodes and relays reached and their round trips, AutoNAT reachability, the NAT's mapping (from the addresses peers saw), hole punching (and with `punch` a probe of one peer), clock skew against peers and the registry, the data directory (write and fsync), keystore and policy file",
            body: None,
            query: &[(
                "punch",
                "string",
                "An AMID: reach that agent (through a relay if need be) and wait up to 10 s for a direct connection",
            )],
            answer: obj(
                &["checks", "nat_mapping", "probes"],
                json!({
                    "checks": {
                        "type": "array",
                        "items": obj(&["check", "result", "detail", "fix"], json!({
                            "check": { "type": "string" },
                            "result": { "enum": ["ok", "warn", "fail", "skip"] },
                            "detail": { "type": "string" },
                            "fix": { "type": ["string", "null"] }
                        }))
                    },
                    "nat_mapping": obj(&["kind"], json!({
                        "kind": { "enum": ["no_nat", "endpoint_independent", "endpoint_dependent", "unknown"] },
                        "addr": { "type": "string" },
                        "seen": {
                            "type": "array",
                            "description": "Each peer and the address it saw us at",
                            "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 }
                        },
                        "observers": { "type": "integer" }
                    })),
                    "probes": { "type": "array", "items": r("PeerProbe") },
                    "clock_skew_ms": { "type": ["integer", "null"], "description": "Our clock minus the senders' of recent messages" },
                    "registry_clock": {
                        "description": "Our clock against the registry's (null: no registry, or it did not answer)",
                        "oneOf": [
                            obj(&["offset_ms", "uncertainty_ms", "rtt_ms"], json!({
                                "offset_ms": { "type": "integer", "description": "Our clock minus the registry's, at the midpoint of the round trip" },
                                "uncertainty_ms": { "type": "integer", "description": "Half the round trip" },
                                "rtt_ms": { "type": "integer" }
                            })),
                            { "type": "null" }
                        ]
                    },
                    "punch": {
                        "description": "The hole-punch probe asked for with `punch` (null otherwise)",
                        "oneOf": [
                            obj(&["peer", "outcome"], json!({
                                "peer": { "type": "string" },
                                "outcome": { "enum": ["direct", "relayed_only", "unreachable"] },
                                "path": { "type": "string", "description": "direct: the direct path (direct_quic, direct_tcp, direct_webrtc)" },
                                "upgraded": { "type": "boolean", "description": "direct: it replaced a relayed connection" },
                                "already": { "type": "boolean", "description": "direct, relayed_only: the connection was up before the probe (relayed_only: no new hole punch was tried on it)" },
                                "ms": { "type": "integer", "description": "direct: time to direct (from the relayed connection when upgraded, else from the start)" },
                                "waited_ms": { "type": "integer", "description": "relayed_only: how long the probe waited" },
                                "error": { "type": "string", "description": "unreachable: why" }
                            })),
                            { "type": "null" }
                        ]
                    }
                }),
            ),
        },
        ("GET", "/metrics") => Op {
            summary: "Counters and gauges in the Prometheus text format",
            body: None,
            query: &[],
            answer: json!({ "type": "string", "contentMediaType": "text/plain" }),
        },
        ("GET", "/") => Op {
            summary: "The dashboard (HTML), with a session from a login link",
            body: None,
            query: &[],
            answer: json!({ "type": "string", "contentMediaType": "text/html" }),
        },
        ("GET", "/login") => Op {
            summary: "Redeem a one-time login link (`code`): sets the session cookie",
            body: None,
            query: &[("code", "string", "The link's code")],
            answer: json!({ "type": "string" }),
        },
        ("GET", "/v1/openapi.json") => Op {
            summary: "This document",
            body: None,
            query: &[],
            answer: json!({ "type": "object" }),
        },
        _ => return None,
    };
    Some(op)
}

fn components() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "securitySchemes": { "token": { "type": "http", "scheme": "bearer", "description": "The token in api.json" } },
        "schemas": {
            "Error": obj(&["error"], json!({ "error": obj(&["code", "message"], json!({
                "code": { "enum": codes }, "message": { "type": "string" },
                "reason": { "type": "string" }, "retry_after_ms": { "type": "integer" }
            })) })),
            "Receipt": obj(&["id", "to", "path", "knocked", "session"], json!({
                "id": { "type": "string" }, "to": { "type": "string" },
                "path": { "enum": ["direct_quic", "direct_tcp", "direct_web_rtc", "relayed", "mailbox", "other"] },
                "knocked": { "type": "boolean" }, "session": { "type": "string" }
            })),
            "Message": obj(&["id", "from", "session", "seq", "ts_ms", "payload", "path", "kind"], json!({
                "id": { "type": "string" }, "from": { "type": "string" }, "session": { "type": "string" },
                "seq": { "type": "integer" }, "ts_ms": { "type": "integer" }, "payload": {},
                "path": { "type": "string" }, "kind": { "enum": ["message", "request", "reply"] },
                "reply_to": { "type": "string" }, "deliveries": { "type": "integer" }
            })),
            "Event": obj(&["id", "ts_ms", "event"], json!({
                "id": { "type": "integer" }, "ts_ms": { "type": "integer" },
                "event": obj(&["event"], json!({ "event": { "type": "string" } }))
            })),
            "ByPath": obj(&["direct-quic", "direct-tcp", "direct-webrtc", "relayed", "mailbox", "other"], json!({
                "direct-quic": { "type": "integer" }, "direct-tcp": { "type": "integer" },
                "direct-webrtc": { "type": "integer" }, "relayed": { "type": "integer" },
                "mailbox": { "type": "integer" }, "other": { "type": "integer" }
            })),
            "PeerProbe": obj(&["peer", "role", "connected"], json!({
                "peer": { "type": "string" }, "role": { "enum": ["bootstrap", "relay", "peer"] },
                "addr": { "type": ["string", "null"] }, "connected": { "type": "boolean" },
                "rtt_ms": { "type": ["integer", "null"], "description": "The last ping round trip" },
                "observed_addr": { "type": ["string", "null"], "description": "Our address as this peer saw it (identify)" }
            })),
            "KnownPeer": obj(&["amid", "card_imported", "sessions"], json!({
                "amid": { "type": "string" }, "name": { "type": ["string", "null"], "description": "Our petname for it" },
                "presence": { "type": ["string", "null"], "enum": ["online", "away", "dnd", "offline", null], "description": "From the freshest card held" },
                "card_expires_ms": { "type": ["integer", "null"] },
                "card_imported": { "type": "boolean", "description": "A card of it was imported out of band" },
                "last_seen_ms": { "type": ["integer", "null"], "description": "Last connected, wrote or acknowledged (since the node started)" },
                "path": { "type": ["string", "null"], "description": "The connection's path, when connected" },
                "sessions": { "type": "integer" }, "session_expires_ms": { "type": ["integer", "null"] },
                "session_type": { "type": ["string", "null"], "enum": ["conversation", "request_response", "stream", "unknown", null], "description": "The newest session's type" },
                "session_since_ms": { "type": ["integer", "null"], "description": "When the newest session was opened" },
                "messages_sent": { "type": "integer", "description": "Since the node started; a message left in a mailbox counts once" },
                "messages_received": { "type": "integer", "description": "Since the node started" },
                "blocked": { "type": "boolean", "description": "On the blocklist (killed, blocked or by the policy)" }
            })),
            "Name": obj(&["name", "amid"], json!({
                "name": { "type": "string" }, "amid": { "type": "string" }
            })),
            "Status": obj(&["amid", "fingerprint", "did", "sessions", "known_peers"], json!({
                "amid": { "type": "string" }, "fingerprint": { "type": "string" },
                "did": { "type": "string", "description": "The agent's key as a did:key DID" },
                "sessions": { "type": "array" }, "known_peers": { "type": "array" }
            })),
        }
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, _) in routes::routes() {
        let Some(op) = describe(&method, path) else {
            continue;
        };
        let mut operation = json!({
            "summary": op.summary,
            "operationId": format!("{}{}", method.as_str().to_lowercase(), path.replace(['/', '{', '}', '.'], "_")),
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": op.answer } } },
                "default": { "description": "An error", "content": { "application/json": { "schema": r("Error") } } }
            }
        });
        let mut params: Vec<Value> = op
            .query
            .iter()
            .map(|(name, ty, doc)| {
                json!({ "name": name, "in": "query", "required": false, "description": doc, "schema": { "type": ty } })
            })
            .collect();
        if path.contains("{amid}") {
            params.push(json!({ "name": "amid", "in": "path", "required": true, "schema": { "type": "string" } }));
        }
        if path.contains("{name}") {
            params.push(json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }));
        }
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": body } }
            });
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method.as_str().to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "AgentMesh local API",
            "version": format!("{VERSION}"),
            "description": "The API a running AgentMesh node serves to its applications on loopback and its Unix socket."
        },
        "servers": [{ "url": "http://127.0.0.1" }],
        "security": [{ "token": [] }],
        "paths": paths,
        "components": components(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut n = 0;
        for (method, path, _) in routes::routes() {
            assert!(
                describe(&method, path).is_some(),
                "{method} {path} has no description"
            );
            assert!(
                paths[path].get(method.as_str().to_lowercase()).is_some(),
                "{method} {path} missing from the document"
            );
            n += 1;
        }
        let described: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(described, n, "the document names routes the router lacks");
    }

    #[test]
    fn every_error_code_is_in_the_error_schema() {
        let doc = document();
        let codes = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["enum"];
        assert_eq!(codes.as_array().unwrap().len(), ErrorCode::ALL.len());
    }
}
