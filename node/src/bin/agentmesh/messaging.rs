//! Commands that send through the running node.

use std::{io::IsTerminal as _, path::Path};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use agentmesh_node::control::{Client, Method, Request};

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
        schema,
    } = a;
    let payload = json_or_text(payload);
    let mut client = Client::connect(dir).await?;
    let resp = client
        .request(&Request::Send {
            to: to.to_string(),
            payload,
            capability: capability.clone(),
            schema: schema.clone(),
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
        schema,
        timeout,
    } = a;
    let req = Request::SendRequest {
        to: to.to_string(),
        payload: json_or_text(payload),
        capability: capability.clone(),
        schema: schema.clone(),
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

/// `agentmesh stream`: a file as a stream. On a terminal (and without
/// `--json`) a progress bar on stderr shows the bytes the recipient has
/// acknowledged so far, read from the node's `delivered` events.
pub(crate) async fn stream(dir: &Path, json: bool, a: &StreamArgs) -> Result<()> {
    let StreamArgs {
        to,
        file,
        chunk_size,
        capability,
    } = a;
    let path = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let size = std::fs::metadata(&path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    let req = Request::Stream {
        to: to.to_string(),
        path,
        chunk_size: Some(*chunk_size),
        capability: capability.clone(),
    };
    let bar = (!json && std::io::stderr().is_terminal()).then(|| bytes_bar(size));
    let resp = match &bar {
        Some(bar) => {
            let watching = watch_delivered(dir, to.to_string(), *chunk_size as u64, bar);
            let asked = ask(dir, &req);
            tokio::pin!(asked);
            tokio::select! {
                r = &mut asked => r,
                // Only ends when the events cannot be read; the bar then
                // stays where it is and the stream goes on.
                () = watching => asked.await,
            }
        }
        None => ask(dir, &req).await,
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let resp = resp?;
    let (chunks, bytes) = (resp.chunks.unwrap_or(0), resp.bytes.unwrap_or(0));
    if json {
        println!("{}", json!({"chunks": chunks, "bytes": bytes}));
    } else {
        println!("sent {bytes} bytes in {chunks} chunks to {to}");
    }
    Ok(())
}

/// A bar of `total` bytes on stderr.
fn bytes_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("sent");
    bar
}

/// How long one read of the event log waits for news.
const EVENT_WAIT_MS: u64 = 1000;

/// Moves `bar` by `chunk` bytes for each message delivered to `to` from
/// now on (the stream's chunks; another message to the same agent meanwhile
/// counts too, and the bar stops at its length). Returns only when the
/// node's events cannot be read.
async fn watch_delivered(dir: &Path, to: String, chunk: u64, bar: &ProgressBar) {
    let Ok(mut client) = Client::connect(dir).await else {
        return;
    };
    // Start after the newest event: the stream's are all still to come.
    let mut since = match client.call(Method::GET, "/v1/events?limit=1", None).await {
        Ok(Ok(page)) => page["last_id"].as_u64().unwrap_or(0),
        _ => return,
    };
    loop {
        let path = format!("/v1/events?since={since}&wait_ms={EVENT_WAIT_MS}&limit=1000");
        let Ok(Ok(page)) = client.call(Method::GET, &path, None).await else {
            return;
        };
        for entry in page["events"].as_array().into_iter().flatten() {
            since = since.max(entry["id"].as_u64().unwrap_or(since));
            let e = &entry["event"];
            if e["event"] == "delivered" && e["to"] == to.as_str() {
                let left = bar.length().unwrap_or(0).saturating_sub(bar.position());
                bar.inc(chunk.min(left));
            }
        }
        since = since.max(page["last_id"].as_u64().unwrap_or(since));
    }
}
