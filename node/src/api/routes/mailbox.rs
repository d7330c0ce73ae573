//! `GET /v1/mailbox`: the mail waiting for this agent at each relay that
//! keeps its mailbox, asked now (the mailbox protocol's `count` request,
//! which only the recipient may make). Nothing is fetched.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json};
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use serde_json::{json, Value};
use tracing::debug;

use crate::{
    api::Ctx,
    mailbox::{self, MailboxError},
    runtime::Node,
};

use super::{internal, Answer};

/// Longest wait for one relay's answer, a dial included.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks every mailbox relay at once; one entry per relay, in the node's
/// order: `{relay, envelopes, bytes}` or `{relay, error}`.
pub(super) async fn mailbox(State(ctx): State<Arc<Ctx>>) -> Answer {
    let me = ctx.node.amid().peer_id().map_err(internal)?;
    let relays = ctx.node.status().await.net.mailbox_relays;
    let asks = relays.into_iter().map(|addr| {
        let node = ctx.node.clone();
        async move {
            let held = tokio::time::timeout(ASK_TIMEOUT, held_at(&node, &addr, &me))
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()));
            match held {
                Ok((envelopes, bytes)) => json!({
                    "relay": addr, "envelopes": envelopes, "bytes": bytes,
                }),
                Err(error) => {
                    debug!(relay = %addr, %error, "mailbox count failed");
                    json!({ "relay": addr, "error": error })
                }
            }
        }
    });
    let relays: Vec<Value> = futures::future::join_all(asks).await;
    Ok(Json(json!({ "relays": relays })))
}

/// The mail `relay_addr` (a multiaddr ending in `/p2p/<relay>`) holds for
/// `me`, dialling it first when no stream can be opened.
async fn held_at(node: &Node, relay_addr: &str, me: &PeerId) -> Result<(u64, u64), String> {
    let addr: Multiaddr = relay_addr
        .parse()
        .map_err(|e| format!("not a multiaddr: {e}"))?;
    let Some(Protocol::P2p(relay)) = addr.iter().last() else {
        return Err("the address names no relay (/p2p/<id>)".into());
    };
    let mut control = node.stream_control();
    match mailbox::count(&mut control, relay, me).await {
        Err(MailboxError::Unreachable(_)) => {
            node.connect(relay, vec![addr])
                .await
                .map_err(|e| format!("cannot reach the relay: {e}"))?;
            mailbox::count(&mut control, relay, me)
                .await
                .map_err(|e| e.to_string())
        }
        r => r.map_err(|e| e.to_string()),
    }
}
