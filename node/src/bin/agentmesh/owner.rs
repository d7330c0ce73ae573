//! `agentmesh dashboard` and `agentmesh doctor`: the owner's view of a
//! running node, through its local API.

use std::path::Path;

use agentmesh_node::{
    control::{Client, Method},
    diagnostics::{Finding, Outcome},
    Amid,
};
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

/// The doctor's table: one row per check, and under a failed or warned one
/// what to do about it.
fn print_findings(findings: &[Finding], json_out: bool) {
    if json_out {
        for f in findings {
            let v = serde_json::to_value(f).unwrap_or_else(|e| json!({"error": e.to_string()}));
            println!("{v}");
        }
        return;
    }
    println!("{:<6} {:<17} DETAIL", "RESULT", "CHECK");
    for f in findings {
        let mark = match f.result {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
            _ => "skip",
        };
        println!("{mark:<6} {:<17} {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            println!("{:<6} {:<17} fix: {fix}", "", "");
        }
    }
}

/// `agentmesh doctor`: asks the running node to run the checks
/// (`GET /v1/diagnostics`, with a hole-punch probe of `punch` when given)
/// and prints what to fix.
pub(crate) async fn doctor(dir: &Path, json_out: bool, punch: Option<&Amid>) -> Result<()> {
    let path = match punch {
        Some(peer) => format!("/v1/diagnostics?punch={peer}"),
        None => "/v1/diagnostics".to_owned(),
    };
    let answer = match call(dir, Method::GET, &path, None).await {
        Ok(a) => a,
        Err(e) => {
            let f = Finding::new(
                "node",
                Outcome::Fail,
                format!("not reached: {e:#}"),
                Some(format!(
                    "start it (`agentmesh run`), or name its data directory with --data-dir (now {})",
                    dir.display()
                )),
            );
            print_findings(&[f], json_out);
            bail!("the node is not running");
        }
    };
    let findings: Vec<Finding> = serde_json::from_value(answer["checks"].clone())
        .context("the node's answer has no checks")?;
    print_findings(&findings, json_out);
    if findings.iter().any(|f| f.result == Outcome::Fail) {
        bail!("some checks failed");
    }
    Ok(())
}
