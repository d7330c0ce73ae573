//! This agent's standing with its registry, for the dashboard's overview
//! (`GET /v1/registry/standing`): its tier and reputation as the registry
//! publishes them.
//!
//! The route answers at once from a cache and, when the cache is stale,
//! asks the registry in the background (one lookup at a time), so a slow
//! or unreachable registry never holds a page up: until an answer comes the
//! standing reads `checking`, and `unknown` when the registry cannot be
//! asked.
//!
//! [`StandingCache`] decides when to ask and keeps the answer; it never
//! reads the clock or does I/O. [`route`] does both.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, Json};
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, Ctx};
use crate::{knock::policy::Tier, registry::protocol::Request, runtime::RegistryClientError};

/// How long an answer (registered, not registered, no registry) is kept.
const FRESH_MS: u64 = 60_000;
/// How soon the registry is asked again after it could not be.
const RETRY_MS: u64 = 15_000;
/// Longest wait for the registry's answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The registry's error code for an agent it has no record of.
const UNKNOWN_AGENT: &str = "unknown_agent";

/// What is known of this agent's standing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum Standing {
    /// Not asked yet, or the first answer has not come.
    Checking,
    /// The node has no registry.
    NotConfigured,
    /// The registry knows this agent.
    Registered {
        /// Its tier.
        tier: Tier,
        /// Its reputation, 0 to 1.
        reputation: f64,
    },
    /// The registry has no record of this agent.
    NotRegistered,
    /// The registry could not be asked, or its answer was not understood.
    Unknown {
        /// Why.
        error: String,
    },
}

impl Standing {
    /// The standing the registry's answer (or failure) gives.
    pub(super) fn from_answer(answer: Result<Value, RegistryClientError>) -> Self {
        match answer {
            Ok(body) => {
                // The agent's public view, bare or under `agent`.
                let agent = body.get("agent").unwrap_or(&body);
                let tier = agent
                    .get("tier")
                    .and_then(|t| serde_json::from_value::<Tier>(t.clone()).ok());
                let reputation = agent.get("reputation").and_then(Value::as_f64);
                match (tier, reputation) {
                    (Some(tier), Some(reputation)) => Self::Registered { tier, reputation },
                    _ => Self::Unknown {
                        error: "the registry's answer names no tier or reputation".into(),
                    },
                }
            }
            Err(RegistryClientError::NotConfigured) => Self::NotConfigured,
            Err(RegistryClientError::Refused { code, .. }) if code == UNKNOWN_AGENT => {
                Self::NotRegistered
            }
            Err(e) => Self::Unknown {
                error: e.to_string(),
            },
        }
    }
}

/// The last answer and when it came.
#[derive(Debug)]
pub(super) struct StandingCache {
    standing: Standing,
    checked_ms: Option<u64>,
    asking: bool,
}

impl Default for StandingCache {
    fn default() -> Self {
        Self {
            standing: Standing::Checking,
            checked_ms: None,
            asking: false,
        }
    }
}

/// The cache as the route answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct View {
    #[serde(flatten)]
    standing: Standing,
    /// When the registry last answered (or could not be asked), ms since
    /// the Unix epoch.
    checked_ms: Option<u64>,
}

impl StandingCache {
    /// Whether to ask the registry now: nothing is being asked, and the
    /// answer is missing or stale. When it returns true, the caller asks
    /// and hands the outcome to [`StandingCache::handle_answer`].
    pub(super) fn poll_ask(&mut self, now_ms: u64) -> bool {
        if self.asking {
            return false;
        }
        let due = match self.checked_ms {
            None => true,
            Some(at) => {
                let keep = match self.standing {
                    Standing::Unknown { .. } | Standing::Checking => RETRY_MS,
                    _ => FRESH_MS,
                };
                now_ms >= at.saturating_add(keep)
            }
        };
        self.asking = due;
        due
    }

    /// The outcome of the question [`StandingCache::poll_ask`] asked for.
    pub(super) fn handle_answer(&mut self, now_ms: u64, standing: Standing) {
        self.standing = standing;
        self.checked_ms = Some(now_ms);
        self.asking = false;
    }

    /// What is known now.
    pub(super) fn view(&self) -> View {
        View {
            standing: self.standing.clone(),
            checked_ms: self.checked_ms,
        }
    }
}

fn lock(m: &Mutex<StandingCache>) -> std::sync::MutexGuard<'_, StandingCache> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `GET /v1/registry/standing`: the cached standing, at once; a lookup in
/// the background when it is stale.
pub(super) async fn route(State(ctx): State<Arc<Ctx>>) -> Result<Json<View>, ApiError> {
    let now = agentmesh_dht::now_ms();
    let (ask, view) = {
        let mut cache = lock(&ctx.standing);
        (cache.poll_ask(now), cache.view())
    };
    if ask {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let lookup = ctx.node.registry_call(Request::Lookup {
                amid: ctx.node.amid(),
            });
            let standing = tokio::select! {
                // The API stops: let go of the node at once.
                _ = ctx.cancel.cancelled() => return,
                answer = tokio::time::timeout(LOOKUP_TIMEOUT, lookup) => match answer {
                    Ok(answer) => Standing::from_answer(answer),
                    Err(_) => Standing::Unknown {
                        error: format!("the registry did not answer within {} s", LOOKUP_TIMEOUT.as_secs()),
                    },
                },
            };
            lock(&ctx.standing).handle_answer(agentmesh_dht::now_ms(), standing);
        });
    }
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_become_standings() {
        assert_eq!(
            Standing::from_answer(Ok(
                json!({"amid": "am1", "tier": "verified", "reputation": 0.75})
            )),
            Standing::Registered {
                tier: Tier::Verified,
                reputation: 0.75
            }
        );
        assert_eq!(
            Standing::from_answer(Ok(
                json!({"agent": {"tier": "anonymous", "reputation": 0.5}})
            )),
            Standing::Registered {
                tier: Tier::Anonymous,
                reputation: 0.5
            }
        );
        assert!(matches!(
            Standing::from_answer(Ok(json!({"tier": "emperor", "reputation": 1.0}))),
            Standing::Unknown { .. }
        ));
        assert_eq!(
            Standing::from_answer(Err(RegistryClientError::NotConfigured)),
            Standing::NotConfigured
        );
        assert_eq!(
            Standing::from_answer(Err(RegistryClientError::Refused {
                code: UNKNOWN_AGENT.into(),
                message: "no such agent".into()
            })),
            Standing::NotRegistered
        );
        assert!(matches!(
            Standing::from_answer(Err(RegistryClientError::Unreachable("timeout".into()))),
            Standing::Unknown { error } if error.contains("timeout")
        ));
    }

    #[test]
    fn one_question_at_a_time_and_again_when_stale() {
        let mut c = StandingCache::default();
        assert_eq!(c.view().standing, Standing::Checking);
        assert!(c.poll_ask(0));
        assert!(!c.poll_ask(1), "one question at a time");
        c.handle_answer(
            10,
            Standing::Unknown {
                error: "down".into(),
            },
        );
        assert!(!c.poll_ask(10 + RETRY_MS - 1));
        assert!(c.poll_ask(10 + RETRY_MS), "a failure is retried soon");
        c.handle_answer(
            20_000,
            Standing::Registered {
                tier: Tier::Anonymous,
                reputation: 0.5,
            },
        );
        assert!(!c.poll_ask(20_000 + RETRY_MS));
        assert!(c.poll_ask(20_000 + FRESH_MS), "an answer is kept a minute");
        let view = serde_json::to_value(c.view()).unwrap();
        assert_eq!(
            view,
            json!({"state": "registered", "tier": "anonymous", "reputation": 0.5, "checked_ms": 20_000})
        );
    }
}
