//! In-memory cache of the inputs of each agent's reputation score.
//!
//! Reading an agent's evidence (its record, receipts, ratings and whom it
//! rated) from the database is what makes a score expensive; the formula
//! itself is cheap. The cache keeps those inputs per agent and the score is
//! still computed on every request from them, so the time-dependent parts
//! (age factor, rapid-change flag, evidence dated in the future) are always
//! exact: a cached score equals a fresh computation at any instant.
//!
//! An entry is dropped whenever one of its inputs changes: the agent record
//! is written (registration, update, tier change, revocation), a receipt
//! naming the agent is filed, the agent is rated, or the agent rates someone
//! (the mutual rule depends on whom the subject rated). A generation counter
//! keeps a read that raced with such a change from storing stale inputs.
//! The cache is not persisted; after a restart it fills again from disk.
//!
//! When several bootstrap nodes share one database, each bumps the
//! database's write generation after such a change, and a node seeing a
//! generation other than the one its entries were read under drops them all
//! ([`ScoreCache::sync_shared`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use agentmesh_node::{
    identity::Amid,
    knock::policy::Tier,
    trust::reputation::{self, Evidence, Rating, Score, SessionOutcome},
};

/// Entries kept before the cache is emptied and refilled.
pub const MAX_ENTRIES: usize = 100_000;

/// Everything an agent's score is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreInputs {
    /// The agent's tier.
    pub tier: Tier,
    /// When it registered.
    pub registered_ms: u64,
    /// Outcomes of its sessions.
    pub outcomes: Vec<SessionOutcome>,
    /// Ratings of it.
    pub ratings: Vec<Rating>,
    /// Agents it rated.
    pub rated: HashSet<Amid>,
    /// Whether the agent is revoked (searches skip it).
    pub revoked: bool,
}

impl ScoreInputs {
    /// The score at `now_ms`.
    pub fn score(&self, now_ms: u64) -> Score {
        reputation::score(
            &Evidence {
                tier: self.tier,
                registered_ms: self.registered_ms,
                outcomes: &self.outcomes,
                ratings: &self.ratings,
                rated_by_subject: &self.rated,
            },
            now_ms,
        )
    }
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    shared_generation: Option<u64>,
    entries: HashMap<Amid, Arc<ScoreInputs>>,
}

/// The cache. Cheap to share behind the registry.
#[derive(Debug, Default)]
pub struct ScoreCache {
    state: Mutex<State>,
}

impl ScoreCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached inputs of `amid`, or the generation to pass to
    /// [`ScoreCache::insert`] after reading them from storage.
    pub fn get(&self, amid: &Amid) -> Result<Arc<ScoreInputs>, u64> {
        let s = self.lock();
        s.entries.get(amid).cloned().ok_or(s.generation)
    }

    /// Stores inputs read after [`ScoreCache::get`] returned `generation`,
    /// unless something was invalidated since.
    pub fn insert(&self, amid: Amid, generation: u64, inputs: Arc<ScoreInputs>) {
        let mut s = self.lock();
        if s.generation != generation {
            return;
        }
        if s.entries.len() >= MAX_ENTRIES {
            s.entries.clear();
        }
        s.entries.insert(amid, inputs);
    }

    /// Drops the entries of `amids` (call after their inputs changed).
    pub fn invalidate(&self, amids: &[&Amid]) {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        for a in amids {
            s.entries.remove(*a);
        }
    }

    /// Drops every entry unless `shared` is the database's write
    /// generation the entries were read under (see the module's notes).
    pub fn sync_shared(&self, shared: u64) {
        let mut s = self.lock();
        if s.shared_generation != Some(shared) {
            s.shared_generation = Some(shared);
            s.generation = s.generation.wrapping_add(1);
            s.entries.clear();
        }
    }

    /// Whether `amid` has an entry.
    pub fn contains(&self, amid: &Amid) -> bool {
        self.lock().entries.contains_key(amid)
    }
}
