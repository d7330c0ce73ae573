//! `agentmesh dashboard` and `agentmesh doctor`: the owner's view of a
//! running node, through its local API.

use std::path::Path;

use agentmesh_node::control::{Client, Method};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

async fn call(dir: &Path, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let mut c = Client::connect(dir).await?;
    match c.call(method, path, body.as_ref()).await? {
        Ok(v) => Ok(v),
        Err(e) => bail!("{}: {}", e.code.as_str(), e.message),
    }
}

/// `agentmesh dashboard`: prints a one-time login link to the dashboard.
pub(crate) async fn dashboard(dir: &Path, json: bool) -> Result<()> {
    let link = call(dir, Method::POST, "/v1/dashboard/link", None).await?;
    let url = link["url"].as_str().context("no link in the answer")?;
    if json {
        println!("{link}");
    } else {
        println!(
            "Open this link in a browser on this machine (valid once, for {} s):",
            link["expires_in_s"]
        );
        println!("{url}");
    }
    Ok(())
}

/// One finding of the doctor.
struct Finding {
    ok: Option<bool>,
    what: &'static str,
    detail: String,
}

fn finding(ok: Option<bool>, what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        ok,
        what,
        detail: detail.into(),
    }
}

/// What the doctor concludes from a node's status (`ok: None` is a
/// warning).
fn diagnose(status: &Value, inbox: &Value) -> Vec<Finding> {
    let s = status;
    let count = |k: &str| s[k].as_array().map_or(0, Vec::len);
    let mut out = vec![finding(
        Some(true),
        "node",
        format!("running as {}", s["amid"].as_str().unwrap_or("?")),
    )];
    out.push(if count("listen_addrs") > 0 {
        finding(
            Some(true),
            "listening",
            format!("{} address(es)", count("listen_addrs")),
        )
    } else {
        finding(
            Some(false),
            "listening",
            "no listen address: check --listen and the firewall",
        )
    });
    let table = s["routing_table"].as_u64().unwrap_or(0);
    out.push(if table > 0 {
        finding(Some(true), "DHT", format!("{table} peer(s) in the routing table ({})", s["dht_mode"].as_str().unwrap_or("?")))
    } else {
        finding(Some(false), "DHT", "no peer in the routing table: no bootstrap reached (check --bootstrap and that it runs)")
    });
    out.push(if s["card_published"] == true {
        finding(
            Some(true),
            "card",
            "published on other peers: others can find this agent by AMID",
        )
    } else {
        finding(
            Some(false),
            "card",
            "not published on any other peer yet: others cannot find this agent",
        )
    });
    let reach = s["reachability"].as_str().unwrap_or("?");
    let nat = s["nat"].as_str().unwrap_or("unknown");
    let relays = count("mailbox_relays");
    out.push(match (nat, relays) {
        ("public", _) => finding(
            Some(true),
            "reachability",
            format!("public ({reach}); peers dial it directly"),
        ),
        (_, 0) if reach == "private" || nat == "private" => finding(
            Some(false),
            "reachability",
            format!("behind a NAT ({nat}) and no relay: unreachable; add --relay or run a relay"),
        ),
        _ => finding(
            None,
            "reachability",
            format!("{reach}, NAT {nat}: direct dials may fail; relays carry the rest"),
        ),
    });
    out.push(if relays > 0 {
        finding(
            Some(true),
            "mailbox",
            format!("kept at {relays} relay(s): mail waits there while offline"),
        )
    } else {
        finding(
            None,
            "mailbox",
            "no relay keeps this agent's mailbox: messages sent while it is offline are not kept",
        )
    });
    let ready = inbox["ready"].as_u64().unwrap_or(0);
    out.push(if ready > 1000 {
        finding(
            None,
            "inbox",
            format!(
                "{ready} messages wait to be read: is the application reading (GET /v1/messages)?"
            ),
        )
    } else {
        finding(
            Some(true),
            "inbox",
            format!("{ready} waiting, {} being handled", inbox["leased"]),
        )
    });
    out
}

/// `agentmesh doctor`: checks the running node and says what to fix.
pub(crate) async fn doctor(dir: &Path, json_out: bool) -> Result<()> {
    let answer = match call(dir, Method::GET, "/v1/status", None).await {
        Ok(a) => a,
        Err(e) => {
            let f = finding(Some(false), "node", format!("not reached: {e:#}"));
            print_findings(&[f], json_out);
            bail!("the node is not running");
        }
    };
    let findings = diagnose(&answer["status"], &answer["inbox"]);
    print_findings(&findings, json_out);
    if findings.iter().any(|f| f.ok == Some(false)) {
        bail!("some checks failed");
    }
    Ok(())
}

fn print_findings(findings: &[Finding], json_out: bool) {
    for f in findings {
        if json_out {
            let level = match f.ok {
                Some(true) => "ok",
                Some(false) => "fail",
                None => "warn",
            };
            println!(
                "{}",
                json!({"check": f.what, "result": level, "detail": f.detail})
            );
        } else {
            let mark = match f.ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "warn",
            };
            println!("{mark} {:<13} {}", f.what, f.detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lonely_node_behind_a_nat_is_told_what_to_fix() {
        let status = json!({
            "amid": "am1", "listen_addrs": ["/ip4/127.0.0.1/udp/1/quic-v1"], "routing_table": 0,
            "dht_mode": "client", "card_published": false, "reachability": "private",
            "nat": "private", "mailbox_relays": []
        });
        let f = diagnose(&status, &json!({"ready": 0, "leased": 0}));
        let failed: Vec<&str> = f
            .iter()
            .filter(|f| f.ok == Some(false))
            .map(|f| f.what)
            .collect();
        assert_eq!(failed, vec!["DHT", "card", "reachability"]);
    }

    #[test]
    fn a_joined_public_node_passes() {
        let status = json!({
            "amid": "am1", "listen_addrs": ["/ip4/1.2.3.4/udp/1/quic-v1"], "routing_table": 5,
            "dht_mode": "server", "card_published": true, "reachability": "auto",
            "nat": "public", "mailbox_relays": ["/ip4/5.6.7.8/udp/1/quic-v1/p2p/x"]
        });
        let f = diagnose(&status, &json!({"ready": 2, "leased": 0}));
        assert!(
            f.iter().all(|f| f.ok == Some(true)),
            "{:?}",
            f.iter().map(|f| &f.detail).collect::<Vec<_>>()
        );
    }
}
