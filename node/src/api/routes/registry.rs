//! Registry routes: session receipts, credentials, registration and search.

use std::sync::Arc;

use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, Ctx, ErrorCode};

use super::{Answer, Body, Q};

pub(super) async fn receipts(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(json!({ "receipts": ctx.node.receipts() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialsBody {
    #[serde(default)]
    renew: bool,
}

pub(super) async fn credentials(
    State(ctx): State<Arc<Ctx>>,
    Body(b): Body<CredentialsBody>,
) -> Answer {
    let state = if b.renew {
        ctx.node.renew_credentials().await.map(Some)
    } else {
        ctx.node.reload_credentials()
    }
    .map_err(|e| ApiError::new(ErrorCode::Unreachable, e.to_string()))?;
    match state {
        Some(state) => Ok(Json(json!({ "credentials": state }))),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "no credentials stored (run `agentmesh verify`)",
        )),
    }
}

fn registry_error(e: crate::runtime::RegistryClientError) -> ApiError {
    use crate::runtime::RegistryClientError as E;
    match e {
        E::NotConfigured => ApiError::new(
            ErrorCode::NotFound,
            "no registry configured (start the node with --registry)",
        ),
        E::Refused { code, message } => ApiError::new(
            ErrorCode::BadRequest,
            format!("the registry refused: {code}: {message}"),
        ),
        e => ApiError::new(ErrorCode::Unreachable, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterBody {
    name: String,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

pub(super) async fn registry_register(
    State(ctx): State<Arc<Ctx>>,
    Body(b): Body<RegisterBody>,
) -> Answer {
    let answer = ctx
        .node
        .register(&b.name, b.capabilities)
        .await
        .map_err(registry_error)?;
    Ok(Json(json!({ "registration": answer })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    capability: String,
    #[serde(default)]
    tier_min: Option<crate::knock::policy::Tier>,
    #[serde(default)]
    reputation_min: Option<f64>,
    #[serde(default)]
    limit: Option<u32>,
}

pub(super) async fn registry_search(State(ctx): State<Arc<Ctx>>, Q(q): Q<SearchQuery>) -> Answer {
    let answer = ctx
        .node
        .registry_call(crate::registry::protocol::Request::Search {
            capability: q.capability,
            tier_min: q.tier_min,
            reputation_min: q.reputation_min,
            limit: q.limit,
        })
        .await
        .map_err(registry_error)?;
    Ok(Json(json!({ "results": answer })))
}
