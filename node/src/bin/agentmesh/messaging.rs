//! Commands that send through the running node.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use agentmesh_node::control::{Client, Request};

use crate::{
    args::{ReplyArgs, RequestArgs, SendArgs, StreamArgs},
    ask, json_or_text,
};

/// `agentmesh send`: one message, with its receipt.
pub(crate) async fn send(dir: &Path, json: bool, a: &SendArgs) -> Result<()> {
    let SendArgs {
        to,
        payload,
        capability,
    } = a;
    let payload = json_or_text(payload);
    let mut client = Client::connect(dir).await?;
    let resp = client
        .request(&Request::Send {
            to: to.to_string(),
            payload,
            capability: capability.clone(),
        })
        .await?;
    if json {
        println!("{}", serde_json::to_string(&resp)?);
    }
    match (resp.ok, resp.receipt) {
        (true, Some(r)) if !json => {
            println!(
                "delivered {} to {} via {}{}",
                r.id,
                r.to,
                r.path,
                if r.knocked { " (KNOCK accepted)" } else { "" }
            );
        }
        (true, _) => {}
        (false, _) => bail!(resp.error.unwrap_or_else(|| "send failed".into())),
    }
    Ok(())
}

/// `agentmesh request`: a request, and its reply.
pub(crate) async fn request(dir: &Path, json: bool, a: &RequestArgs) -> Result<()> {
    let RequestArgs {
        to,
        payload,
        capability,
        timeout,
    } = a;
    let req = Request::SendRequest {
        to: to.to_string(),
        payload: json_or_text(payload),
        capability: capability.clone(),
        timeout_ms: Some(timeout.saturating_mul(1000)),
    };
    let resp = ask(dir, &req).await?;
    let reply = resp.reply.context("no reply in response")?;
    if json {
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        println!("{}", reply.payload);
    }
    Ok(())
}

/// `agentmesh reply`: the reply to a request.
pub(crate) async fn reply(dir: &Path, json: bool, a: &ReplyArgs) -> Result<()> {
    let ReplyArgs {
        to,
        id,
        payload,
        session,
    } = a;
    let req = Request::Reply {
        to: to.to_string(),
        id: id.clone(),
        session: session.clone(),
        payload: json_or_text(payload),
    };
    let resp = ask(dir, &req).await?;
    if let Some(r) = resp.receipt {
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("delivered {} to {} via {}", r.id, r.to, r.path);
        }
    }
    Ok(())
}

/// `agentmesh stream`: a file as a stream.
pub(crate) async fn stream(dir: &Path, json: bool, a: &StreamArgs) -> Result<()> {
    let StreamArgs {
        to,
        file,
        chunk_size,
        capability,
    } = a;
    let path = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let req = Request::Stream {
        to: to.to_string(),
        path,
        chunk_size: Some(*chunk_size),
        capability: capability.clone(),
    };
    let resp = ask(dir, &req).await?;
    let (chunks, bytes) = (resp.chunks.unwrap_or(0), resp.bytes.unwrap_or(0));
    if json {
        println!("{}", json!({"chunks": chunks, "bytes": bytes}));
    } else {
        println!("sent {bytes} bytes in {chunks} chunks to {to}");
    }
    Ok(())
}
