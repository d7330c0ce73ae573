//! The node's state and what it knows of others: status, peers, sessions,
//! cards, petnames and lookups.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{ApiError, Ctx, ErrorCode},
    contacts::CardImportError,
};

use super::{amid, internal, name_error, recipient, Answer, Body};

/// The node's status, with what the API adds: the inbox, the kill switch
/// for everyone, and the relays we hold a circuit relay reservation on.
pub(super) async fn status(State(ctx): State<Arc<Ctx>>) -> Answer {
    let status = ctx.node.status().await;
    let (ready, leased) = ctx.inbox.counts();
    let reservations = status.net.relay_reservations();
    Ok(Json(json!({
        "status": status,
        "inbox": { "ready": ready, "leased": leased },
        "killed": ctx.node.is_killed(),
        "relay_reservations": reservations,
    })))
}

/// Every peer the node knows, with its newest session's type and age, the
/// messages each way, and whether it is blocked.
pub(super) async fn peers(State(ctx): State<Arc<Ctx>>) -> Answer {
    let mut peers = ctx.node.peers().await;
    ctx.node.describe_peers(&mut peers, agentmesh_dht::now_ms());
    ctx.traffic.describe(&mut peers);
    Ok(Json(
        json!({ "peers": peers, "killed": ctx.node.is_killed() }),
    ))
}

pub(super) async fn export_card(State(ctx): State<Arc<Ctx>>) -> Answer {
    let record = ctx.node.card_record().await.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "no card yet: the node listens on no address",
        )
    })?;
    let card = crate::contacts::decode_card(&record.to_bytes().map_err(internal)?, 0)
        .map(|(c, _)| c)
        .map_err(internal)?;
    Ok(Json(json!({
        "card": crate::contacts::encode_card(&record),
        "amid": card.amid,
        "seq": card.seq,
        "expires_ms": card.expires_ms,
        "details": card,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportBody {
    card: String,
    #[serde(default)]
    name: Option<String>,
}

pub(super) async fn import_card(State(ctx): State<Arc<Ctx>>, Body(b): Body<ImportBody>) -> Answer {
    if let Some(name) = &b.name {
        crate::contacts::validate_name(name).map_err(name_error)?;
    }
    let card = ctx.node.import_card(b.card.as_bytes()).map_err(|e| {
        let code = match &e {
            CardImportError::Expired { .. } => ErrorCode::CardExpired,
            CardImportError::Storage(_) => ErrorCode::Storage,
            _ => ErrorCode::InvalidCard,
        };
        ApiError::new(code, e.to_string())
    })?;
    if let Some(name) = &b.name {
        ctx.node.set_name(name, &card.amid).map_err(name_error)?;
    }
    Ok(Json(json!({
        "amid": card.amid,
        "seq": card.seq,
        "expires_ms": card.expires_ms,
        "name": b.name,
        "details": card,
    })))
}

pub(super) async fn imported_cards(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(json!({ "cards": ctx.node.imported_cards() })))
}

pub(super) async fn names(State(ctx): State<Arc<Ctx>>) -> Answer {
    let names: Vec<Value> = ctx
        .node
        .names()
        .into_iter()
        .map(|(name, amid)| json!({ "name": name, "amid": amid }))
        .collect();
    Ok(Json(json!({ "names": names })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NameBody {
    name: String,
    amid: String,
}

pub(super) async fn set_name(State(ctx): State<Arc<Ctx>>, Body(b): Body<NameBody>) -> Answer {
    let a = amid(&b.amid)?;
    ctx.node.set_name(&b.name, &a).map_err(name_error)?;
    Ok(Json(json!({ "name": b.name, "amid": a })))
}

pub(super) async fn remove_name(State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> Answer {
    let a = ctx.node.remove_name(&name).map_err(name_error)?;
    Ok(Json(json!({ "name": name, "amid": a })))
}

pub(super) async fn sessions(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(
        json!({ "sessions": ctx.node.status().await.sessions }),
    ))
}

pub(super) async fn schemas(State(ctx): State<Arc<Ctx>>) -> Answer {
    let known = ctx.node.schemas();
    let list: Vec<Value> = known
        .ids()
        .filter_map(|id| known.get(id).map(|s| json!({ "id": id, "schema": s })))
        .collect();
    Ok(Json(
        json!({ "schemas": list, "accepted": ctx.node.accepted_schemas() }),
    ))
}

pub(super) async fn lookup(State(ctx): State<Arc<Ctx>>, Path(text): Path<String>) -> Answer {
    let a = recipient(&ctx, &text)?;
    // The DHT's card, else one imported out of band.
    let found = match ctx.node.lookup(&a).await {
        Some(card) => Some(card),
        None => ctx.node.imported_cards().into_iter().find(|c| c.amid == a),
    };
    match found {
        Some(card) => Ok(Json(json!({ "card": card }))),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no card found for {a}"),
        )),
    }
}
