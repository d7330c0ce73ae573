//! DID documents: `did:agentmesh:<amid>`, with the agent's Ed25519 key
//! (authentication, assertion), its X25519 key (key agreement) and service
//! endpoints (registry, mailbox relays, node addresses). The same key is
//! also named in `did:key` form (`alsoKnownAs`).

use serde_json::{json, Value};

use agentmesh_node::Amid;

use super::AgentRecord;

/// DID method name.
pub const DID_METHOD: &str = "agentmesh";
/// Multicodec prefix of an Ed25519 public key.
const MULTICODEC_ED25519: [u8; 2] = [0xed, 0x01];
/// Multicodec prefix of an X25519 public key.
const MULTICODEC_X25519: [u8; 2] = [0xec, 0x01];

/// `did:agentmesh:<amid>`.
pub fn did_of(amid: &Amid) -> String {
    format!("did:{DID_METHOD}:{amid}")
}

fn multibase(prefix: [u8; 2], key: &[u8]) -> String {
    format!(
        "z{}",
        bs58::encode([prefix.as_slice(), key].concat()).into_string()
    )
}

/// `did:key` of an Ed25519 key.
pub fn did_key_of(amid: &Amid) -> String {
    format!("did:key:{}", multibase(MULTICODEC_ED25519, amid.as_bytes()))
}

/// The X25519 (Montgomery) form of the agent's Ed25519 key.
pub fn x25519_of(amid: &Amid) -> Option<[u8; 32]> {
    amid.verifying_key()
        .ok()
        .map(|k| k.to_montgomery().to_bytes())
}

/// The DID document of a registered agent. `registry_url` is the public
/// API URL; `default_relays` are named when the agent lists none.
pub fn document(agent: &AgentRecord, registry_url: &str, default_relays: &[String]) -> Value {
    let did = did_of(&agent.amid);
    let x25519 = agent
        .x25519_key
        .as_deref()
        .and_then(|h| hex::decode(h).ok())
        .filter(|k| k.len() == 32)
        .or_else(|| x25519_of(&agent.amid).map(|k| k.to_vec()))
        .unwrap_or_default();
    let mut services = vec![json!({
        "id": format!("{did}#registry"),
        "type": "AgentMeshRegistry",
        "serviceEndpoint": format!("{}/v1", registry_url.trim_end_matches('/')),
    })];
    let relays = if agent.relays.is_empty() {
        default_relays
    } else {
        &agent.relays
    };
    for (i, r) in relays.iter().enumerate() {
        services.push(json!({
            "id": format!("{did}#relay-{i}"),
            "type": "AgentMeshRelay",
            "serviceEndpoint": r,
        }));
    }
    if !agent.addrs.is_empty() {
        services.push(json!({
            "id": format!("{did}#node"),
            "type": "AgentMeshNode",
            "serviceEndpoint": agent.addrs,
        }));
    }
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/suites/ed25519-2020/v1",
            "https://w3id.org/security/suites/x25519-2020/v1"
        ],
        "id": did,
        "alsoKnownAs": [did_key_of(&agent.amid)],
        "verificationMethod": [
            {
                "id": format!("{did}#key-1"),
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyMultibase": multibase(MULTICODEC_ED25519, agent.amid.as_bytes()),
            },
            {
                "id": format!("{did}#key-agreement-1"),
                "type": "X25519KeyAgreementKey2020",
                "controller": did,
                "publicKeyMultibase": multibase(MULTICODEC_X25519, &x25519),
            }
        ],
        "authentication": [format!("{did}#key-1")],
        "assertionMethod": [format!("{did}#key-1")],
        "keyAgreement": [format!("{did}#key-agreement-1")],
        "service": services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_node::{Identity, Tier};

    #[test]
    fn document_names_both_keys_and_services() {
        let amid = Identity::from_seed(&[1; 32]).amid();
        let rec = AgentRecord {
            amid,
            display_name: "bot".into(),
            capabilities: vec![],
            x25519_key: None,
            relays: vec![],
            addrs: vec!["/ip4/127.0.0.1/udp/1/quic-v1".into()],
            presence: Default::default(),
            tier: Tier::Anonymous,
            certificate: None,
            org: None,
            registered_ms: 0,
            last_seen_ms: 0,
            revoked: false,
            previous: Vec::new(),
            moved_to: None,
        };
        let d = document(&rec, "http://r.example/", &["/dns4/relay/tcp/1".into()]);
        assert_eq!(d["id"], format!("did:agentmesh:{amid}"));
        let vm = d["verificationMethod"].as_array().unwrap();
        assert_eq!(vm[0]["type"], "Ed25519VerificationKey2020");
        assert!(vm[0]["publicKeyMultibase"]
            .as_str()
            .unwrap()
            .starts_with("z6Mk"));
        assert!(vm[1]["publicKeyMultibase"]
            .as_str()
            .unwrap()
            .starts_with("z6LS"));
        assert!(d["alsoKnownAs"][0]
            .as_str()
            .unwrap()
            .starts_with("did:key:z6Mk"));
        let svc = d["service"].as_array().unwrap();
        assert_eq!(svc[0]["serviceEndpoint"], "http://r.example/v1");
        assert_eq!(svc[1]["type"], "AgentMeshRelay");
        assert_eq!(svc[2]["type"], "AgentMeshNode");
    }
}
