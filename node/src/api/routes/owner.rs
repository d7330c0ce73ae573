//! The owner's routes: closing and blocking, the kill switch, presence,
//! the policy, metrics and the audit log.

use std::sync::Arc;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    api::{ApiError, Ctx, ErrorCode},
    audit::AuditFilter,
    card::Presence,
    crypto::envelope::SessionId,
    knock::Intent,
};

use super::{amid, internal, ok, recipient, AmidBody, Answer, Body, Q};

pub(super) async fn close(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    let a = recipient(&ctx, &b.amid)?;
    let closed = ctx.node.close_session(&a).await;
    if closed == 0 {
        return Err(ApiError::new(
            ErrorCode::NoSession,
            format!("no session with {a}"),
        ));
    }
    Ok(Json(json!({ "closed": closed })))
}

pub(super) async fn disconnect(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    let a = recipient(&ctx, &b.amid)?;
    let peer = a
        .peer_id()
        .map_err(|e| ApiError::new(ErrorCode::InvalidAmid, e.to_string()))?;
    ctx.node.disconnect(peer).await;
    ok()
}

pub(super) async fn block(State(ctx): State<Arc<Ctx>>, Body(b): Body<AmidBody>) -> Answer {
    ctx.node.block(recipient(&ctx, &b.amid)?);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KillBody {
    #[serde(default)]
    amid: Option<String>,
}

pub(super) async fn kill(State(ctx): State<Arc<Ctx>>, Body(b): Body<KillBody>) -> Answer {
    let target = b.amid.as_deref().map(|t| recipient(&ctx, t)).transpose()?;
    ctx.node.kill(target).await;
    ok()
}

pub(super) async fn clear_kill(State(ctx): State<Arc<Ctx>>) -> Answer {
    ctx.node.clear_kill();
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PresenceBody {
    state: String,
}

pub(super) async fn presence(State(ctx): State<Arc<Ctx>>, Body(b): Body<PresenceBody>) -> Answer {
    let p: Presence = b
        .state
        .parse()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("{e}")))?;
    ctx.node.set_presence(p).await;
    ok()
}

pub(super) async fn policy(State(ctx): State<Arc<Ctx>>) -> Answer {
    let policy = ctx.node.policy();
    Ok(Json(json!({
        "policy": policy,
        "toml": toml::to_string(&policy).map_err(internal)?,
        "policy_hash": hex::encode(policy.hash()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyBody {
    policy: String,
}

/// Puts a policy (TOML) in force at once. The policy file, if any, is not
/// changed: a reload or a restart reads it again.
pub(super) async fn set_policy(State(ctx): State<Arc<Ctx>>, Body(b): Body<PolicyBody>) -> Answer {
    let policy = crate::knock::policy::Policy::from_toml(&b.policy)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("policy: {e}")))?;
    let hash = hex::encode(policy.hash());
    ctx.node.set_policy(policy);
    Ok(Json(json!({ "policy_hash": hash })))
}

pub(super) async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let status = ctx.node.status().await;
    let mut text = ctx
        .metrics
        .render(&status, ctx.inbox.counts(), ctx.node.is_killed());
    text.push_str(&ctx.node.libp2p_metrics());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub(super) async fn timeseries(State(ctx): State<Arc<Ctx>>) -> Answer {
    let now = agentmesh_dht::now_ms();
    let minutes = ctx
        .timeseries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .snapshot(now);
    Ok(Json(json!({
        "now_ms": now,
        "minute_ms": crate::api::timeseries::MINUTE_MS,
        "minutes": minutes,
        "latency": ctx.metrics.latency_json(),
    })))
}

pub(super) async fn reload_policy(State(ctx): State<Arc<Ctx>>) -> Answer {
    let hash = ctx
        .node
        .reload_policy()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Json(json!({ "policy_hash": hex::encode(hash) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckBody {
    #[serde(default)]
    from: Option<String>,
    capability: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    tier: Option<crate::knock::policy::Tier>,
    #[serde(default)]
    reputation: Option<f64>,
    /// A policy (TOML) to judge with instead of the one in force.
    #[serde(default)]
    policy: Option<String>,
}

/// Judges a KNOCK that was never sent: the decision the policy in force
/// (or the one given) would take. Pure: nothing is recorded.
pub(super) async fn check_policy(State(ctx): State<Arc<Ctx>>, Body(b): Body<CheckBody>) -> Answer {
    use crate::{
        knock::policy::{KnockContext, Policy},
        knock::KnockBody,
    };
    let policy = match &b.policy {
        Some(text) => Policy::from_toml(text)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("policy: {e}")))?,
        None => ctx.node.policy(),
    };
    let from = match &b.from {
        Some(a) => amid(a)?,
        None => crate::identity::Identity::generate().amid(),
    };
    let me = ctx.node.amid();
    let now = agentmesh_dht::now_ms();
    let default = Intent::default();
    let intent = Intent {
        capability: b.capability,
        action: b.action.unwrap_or(default.action.clone()),
        ..default
    };
    let knock = KnockBody {
        from,
        to: me,
        intent,
        session: SessionId([0; 16]),
        ts_ms: now,
        nonce: [0; 16],
        first: Vec::new(),
        credentials: Default::default(),
        moved_from: Vec::new(),
    };
    let kctx = KnockContext {
        tier: b.tier.unwrap_or_default(),
        reputation: b
            .reputation
            .map(crate::trust::credentials::Reputation::from_f64),
        ..KnockContext::default()
    };
    let decision = policy.evaluate(&me, &knock, kctx, now);
    Ok(Json(json!({
        "decision": decision,
        "policy_hash": hex::encode(policy.hash()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    verify: bool,
}

pub(super) async fn audit(State(ctx): State<Arc<Ctx>>, Q(q): Q<AuditQuery>) -> Answer {
    let mut filter = AuditFilter::default();
    if let Some(p) = &q.peer {
        filter = filter.peer(amid(p)?);
    }
    if let Some(k) = q.kind {
        filter = filter.kind(k);
    }
    if let Some(l) = q.limit {
        filter = filter.limit(l);
    }
    let verified = if q.verify {
        Some(
            ctx.node
                .verify_audit_log()
                .map_err(|e| ApiError::new(ErrorCode::Storage, format!("audit chain: {e}")))?,
        )
    } else {
        None
    };
    let entries = ctx
        .node
        .audit_log(&filter)
        .map_err(|e| ApiError::new(ErrorCode::Storage, format!("audit log: {e}")))?;
    let mut answer = json!({ "audit": entries });
    if let Some(n) = verified {
        answer["verified"] = json!(n);
    }
    Ok(Json(answer))
}
