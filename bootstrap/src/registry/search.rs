//! Search by capability (a category finds its subcategories), filtered by
//! tier and reputation, best reputation first.

use serde::Serialize;

use agentmesh_node::Tier;

use super::{AgentView, Registry, RegistryError, StoreError};

/// Default number of search results.
pub const DEFAULT_LIMIT: usize = 50;
/// Longest capability searched for.
pub const MAX_SEARCH_CAPABILITY: usize = 128;
/// Largest number of search or leaderboard results.
pub const MAX_LIMIT: usize = 500;

/// What a search asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Capability or category (`weather` also finds `weather/forecast`).
    pub capability: String,
    /// Lowest tier.
    pub tier_min: Tier,
    /// Lowest reputation, 0..1.
    pub reputation_min: f64,
    /// At most this many results (capped at the registry's maximum).
    pub limit: usize,
}

impl SearchQuery {
    /// Any agent with `capability`, at most [`DEFAULT_LIMIT`] of them.
    pub fn new(capability: impl Into<String>) -> Self {
        Self {
            capability: capability.into(),
            tier_min: Tier::Anonymous,
            reputation_min: 0.0,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Parses a tier filter: `anonymous`/`2`, `verified`/`1`,
/// `organization`/`1.5`.
pub fn parse_tier(s: &str) -> Option<Tier> {
    match s {
        "anonymous" | "2" => Some(Tier::Anonymous),
        "verified" | "1" => Some(Tier::Verified),
        "organization" | "1.5" => Some(Tier::Organization),
        _ => None,
    }
}

/// Why a search was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The capability is empty or longer than [`MAX_SEARCH_CAPABILITY`].
    #[error("capability length")]
    CapabilityLength,
    /// The lowest reputation is not a finite number.
    #[error("reputation_min")]
    ReputationMin,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SearchError> for RegistryError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Store(e) => Self::Store(e),
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// Search results as the API answers them.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SearchResults {
    /// How many.
    pub count: usize,
    /// Best reputation first.
    pub results: Vec<AgentView>,
}

impl Registry {
    /// Agents matching `q`, best reputation first.
    pub fn search(&self, q: &SearchQuery, now_ms: u64) -> Result<Vec<AgentView>, SearchError> {
        // Filtered and ranked on the cached score inputs; records are read
        // (and views built) only for the results answered.
        let mut matches = Vec::new();
        self.sync_shared_scores()?;
        for amid in self.inner.store.agents_with(&q.capability)? {
            let Some(inputs) = self.inputs_synced(&amid)? else {
                continue;
            };
            if inputs.revoked || inputs.tier < q.tier_min {
                continue;
            }
            let reputation = inputs.score(now_ms).score;
            if reputation >= q.reputation_min {
                matches.push((reputation, amid));
            }
        }
        matches.sort_by(|(ra, a), (rb, b)| rb.total_cmp(ra).then(a.cmp(b)));
        matches.truncate(q.limit.min(MAX_LIMIT));
        let mut out = Vec::with_capacity(matches.len());
        for (reputation, amid) in matches {
            if let Some(a) = self.inner.store.agent(&amid)? {
                out.push(Self::view_scored(a, reputation));
            }
        }
        Ok(out)
    }

    /// [`Registry::search`] as the API answers it, with its bounds checked.
    pub fn search_results(
        &self,
        q: &SearchQuery,
        now_ms: u64,
    ) -> Result<SearchResults, SearchError> {
        if q.capability.is_empty() || q.capability.len() > MAX_SEARCH_CAPABILITY {
            return Err(SearchError::CapabilityLength);
        }
        if !q.reputation_min.is_finite() {
            return Err(SearchError::ReputationMin);
        }
        let results = self.search(q, now_ms)?;
        Ok(SearchResults {
            count: results.len(),
            results,
        })
    }
}
