//! Reputation: session receipts both sides signed, ratings of filed
//! sessions, scores (from the cached inputs of [`super::scores`]), the
//! published evidence behind a score, and the leaderboard.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use serde::Serialize;
use tracing::warn;

use agentmesh_node::{
    registry::{Feedback, ReceiptBody, SessionReceipt, SignedRequest, MAX_CLOCK_SKEW_MS},
    trust::reputation::{Rating, Score, SessionOutcome},
    Amid, Tier,
};

use super::{
    scores::ScoreInputs, search::MAX_LIMIT, store, AgentRecord, FeedbackRecord, Registry,
    RegistryError, StoreError,
};

/// Leaderboard rows when the request names no limit.
pub const DEFAULT_LEADERBOARD_LIMIT: usize = 10;

/// The answer to `session`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ReceiptFiled {
    /// The session, hex.
    pub session_id: String,
    /// Whether the session completed.
    pub completed: bool,
    /// Whether the other party had filed the same receipt already (it
    /// counts once).
    pub duplicate: bool,
}

/// The answer to `feedback`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Rated {
    /// Who was rated.
    pub target: Amid,
    /// Always true: refusals are errors.
    pub accepted: bool,
    /// The target's score now.
    pub score: f64,
    /// Whether the target's score moved fast enough to need review.
    pub flagged: bool,
}

/// An agent's score with its parts, as the API answers it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AgentScore {
    /// The agent.
    pub amid: Amid,
    /// The score and its parts.
    #[serde(flatten)]
    pub score: Score,
}

/// The published evidence behind an agent's score.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Evidence {
    /// The agent.
    pub amid: Amid,
    /// Its tier.
    pub tier: Tier,
    /// When it registered.
    pub registered_ms: u64,
    /// When the score was computed.
    pub computed_ms: u64,
    /// Receipts naming it.
    pub receipts: Vec<SessionReceipt>,
    /// Ratings of it, with their signed requests.
    pub ratings: Vec<FeedbackRecord>,
    /// Whom it rated.
    pub rated: Vec<Amid>,
    /// The score.
    pub score: Score,
}

/// One row of the leaderboard.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LeaderboardRow {
    /// 1 for the best.
    pub rank: usize,
    /// The agent.
    pub amid: Amid,
    /// Its display name.
    pub display_name: String,
    /// Its tier.
    pub tier: Tier,
    /// Its score.
    pub score: f64,
    /// Whether its score is flagged for review.
    pub flagged: bool,
}

/// The best reputations.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Leaderboard {
    /// Best first.
    pub leaderboard: Vec<LeaderboardRow>,
}

/// What a score is computed from, as read from storage.
struct Gathered {
    agent: AgentRecord,
    outcomes: Vec<SessionOutcome>,
    ratings: Vec<FeedbackRecord>,
    rated: HashSet<Amid>,
}

fn rating_of(f: &FeedbackRecord) -> Rating {
    Rating {
        rater: f.rater,
        score: f.score,
        ts_ms: f.ts_ms,
        rater_tier: f.rater_tier,
        rater_registered_ms: f.rater_registered_ms,
        origin: f.origin.clone(),
    }
}

impl Registry {
    pub(super) fn session(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        receipt: SessionReceipt,
        now_ms: u64,
    ) -> Result<ReceiptFiled, RegistryError> {
        let body: ReceiptBody = receipt.verify()?;
        if *signer != body.initiator && *signer != body.responder {
            return Err(RegistryError::Forbidden(
                "the signer is not a party of this session".into(),
            ));
        }
        self.live_agent(&body.initiator)?;
        self.live_agent(&body.responder)?;
        if body.ended_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Err(RegistryError::Invalid("session ends in the future".into()));
        }
        let sid = hex::decode(&body.session_id)
            .map_err(|_| RegistryError::Invalid("session_id".into()))?;
        if let Some(filed) = self.inner.store.receipts.get(&sid)? {
            // Both parties file the same receipt: the second filing is
            // answered as the first, and counts nothing twice.
            let same = serde_json::from_slice::<SessionReceipt>(&filed)
                .map(|f| f.body == receipt.body)
                .unwrap_or(false);
            if !same {
                return Err(RegistryError::Conflict(
                    "another receipt is filed for this session".into(),
                ));
            }
            self.mark_seen(req, now_ms)?;
            return Ok(ReceiptFiled {
                session_id: body.session_id,
                completed: body.completed,
                duplicate: true,
            });
        }
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.receipts, &sid, &receipt)?;
        for party in [&body.initiator, &body.responder] {
            self.inner
                .store
                .receipts_by
                .insert(store::cat(&[party.as_bytes(), &sid]), [])?;
        }
        self.invalidate_scores(&[&body.initiator, &body.responder])?;
        Ok(ReceiptFiled {
            session_id: body.session_id,
            completed: body.completed,
            duplicate: false,
        })
    }

    pub(super) fn feedback(
        &self,
        req: &SignedRequest,
        signer: &Amid,
        f: Feedback,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<Rated, RegistryError> {
        if !f.score.is_finite() || !(0.0..=1.0).contains(&f.score) {
            return Err(RegistryError::Invalid("score must be in 0..=1".into()));
        }
        if f.target == *signer {
            return Err(RegistryError::Forbidden(
                "agents cannot rate themselves".into(),
            ));
        }
        let rater = self.live_agent(signer)?;
        self.live_agent(&f.target)?;
        let sid = hex::decode(&f.session_id)
            .ok()
            .filter(|s| s.len() == 16)
            .ok_or_else(|| RegistryError::Invalid("session_id must be 16 bytes hex".into()))?;
        let receipt: SessionReceipt =
            store::get_json(&self.inner.store.receipts, "receipts", &sid)?.ok_or_else(|| {
                RegistryError::Forbidden("no receipt signed by both sides for this session".into())
            })?;
        let body = receipt.verify()?;
        let parties = [body.initiator, body.responder];
        if !parties.contains(signer) || !parties.contains(&f.target) {
            return Err(RegistryError::Forbidden(
                "rater and target must be the two sides of the session".into(),
            ));
        }
        let key = store::cat(&[f.target.as_bytes(), signer.as_bytes(), &sid]);
        if self.inner.store.feedback.contains_key(&key)? {
            return Err(RegistryError::Conflict("session already rated".into()));
        }
        let rec = FeedbackRecord {
            rater: *signer,
            target: f.target,
            session_id: f.session_id,
            score: f.score,
            ts_ms: now_ms,
            rater_tier: rater.tier,
            rater_registered_ms: rater.registered_ms,
            origin: self.origin_tag(client),
            request: req.clone(),
        };
        self.mark_seen(req, now_ms)?;
        store::put_json(&self.inner.store.feedback, &key, &rec)?;
        self.inner
            .store
            .rated_by
            .insert(store::cat(&[signer.as_bytes(), f.target.as_bytes()]), [])?;
        // The target's ratings and, for the mutual rule, whom the signer rated.
        self.invalidate_scores(&[&f.target, signer])?;
        let score = self.score(&f.target, now_ms)?;
        if score.flagged {
            warn!(target: "agentmesh::registry", amid = %f.target, score = score.score, "rapid reputation change flagged for review");
        }
        Ok(Rated {
            target: f.target,
            accepted: true,
            score: score.score,
            flagged: score.flagged,
        })
    }

    /// What `amid`'s score is computed from; `None` when it is not
    /// registered.
    fn gather(&self, amid: &Amid) -> Result<Option<Gathered>, StoreError> {
        let Some(agent) = self.inner.store.agent(amid)? else {
            return Ok(None);
        };
        let mut outcomes = Vec::new();
        let mut ratings = Vec::new();
        let mut rated = HashSet::new();
        // The history of the keys it rotated away from is its own.
        for key in agent.previous.iter().chain(std::iter::once(amid)) {
            for r in self.inner.store.receipts_of(key)? {
                // Both signatures were checked when the receipt was filed.
                if let Ok(b) = serde_json::from_str::<ReceiptBody>(&r.body) {
                    outcomes.push(SessionOutcome {
                        ended_ms: b.ended_ms,
                        completed: b.completed,
                    });
                }
            }
            ratings.extend(self.inner.store.feedback_of(key)?);
            rated.extend(self.inner.store.rated_by(key)?);
        }
        Ok(Some(Gathered {
            agent,
            outcomes,
            ratings,
            rated,
        }))
    }

    /// The inputs of `amid`'s score, read from storage; `None` when it is
    /// not registered.
    fn score_inputs(&self, amid: &Amid) -> Result<Option<ScoreInputs>, StoreError> {
        Ok(self.gather(amid)?.map(|g| ScoreInputs {
            tier: g.agent.tier,
            registered_ms: g.agent.registered_ms,
            outcomes: g.outcomes,
            ratings: g.ratings.iter().map(rating_of).collect(),
            rated: g.rated,
            revoked: g.agent.revoked,
        }))
    }

    /// `amid`'s score inputs, from the cache when they are current (see
    /// [`super::scores`]); `None` when it is not registered.
    pub(super) fn inputs(&self, amid: &Amid) -> Result<Option<Arc<ScoreInputs>>, StoreError> {
        self.sync_shared_scores()?;
        self.inputs_synced(amid)
    }

    /// Drops the cached score inputs if another bootstrap node sharing the
    /// database changed any since they were read (one query; nothing on
    /// sled).
    pub(super) fn sync_shared_scores(&self) -> Result<(), StoreError> {
        if let Some(generation) = self.inner.store.db().generation()? {
            self.inner.scores.sync_shared(generation);
        }
        Ok(())
    }

    /// [`Self::inputs`] without [`Self::sync_shared_scores`] (for a caller
    /// that synced once for many agents).
    pub(super) fn inputs_synced(
        &self,
        amid: &Amid,
    ) -> Result<Option<Arc<ScoreInputs>>, StoreError> {
        let cache = &self.inner.scores;
        match cache.get(amid) {
            Ok(inputs) => Ok(Some(inputs)),
            Err(generation) => {
                let Some(inputs) = self.score_inputs(amid)? else {
                    return Ok(None);
                };
                let inputs = Arc::new(inputs);
                cache.insert(*amid, generation, inputs.clone());
                Ok(Some(inputs))
            }
        }
    }

    /// `amid`'s reputation now, from cached inputs when they are current
    /// (see [`super::scores`]).
    pub fn score(&self, amid: &Amid, now_ms: u64) -> Result<Score, RegistryError> {
        match self.inputs(amid)? {
            Some(inputs) => Ok(inputs.score(now_ms)),
            None => Err(RegistryError::UnknownAgent(amid.to_string())),
        }
    }

    /// [`Registry::score`] with the agent it is of, as the API answers it.
    pub fn agent_score(&self, amid: &Amid, now_ms: u64) -> Result<AgentScore, RegistryError> {
        Ok(AgentScore {
            amid: *amid,
            score: self.score(amid, now_ms)?,
        })
    }

    /// `amid`'s reputation now, computed from storage without the cache.
    pub fn score_uncached(&self, amid: &Amid, now_ms: u64) -> Result<Score, RegistryError> {
        match self.score_inputs(amid)? {
            Some(inputs) => Ok(inputs.score(now_ms)),
            None => Err(RegistryError::UnknownAgent(amid.to_string())),
        }
    }

    /// The published evidence behind `amid`'s score: receipts, ratings with
    /// their signed requests, and whom the agent rated.
    pub fn evidence(&self, amid: &Amid, now_ms: u64) -> Result<Evidence, RegistryError> {
        let a = self.agent_or_unknown(amid)?;
        let receipts = self.inner.store.receipts_of(amid)?;
        let ratings = self.inner.store.feedback_of(amid)?;
        let rated = self.inner.store.rated_by(amid)?;
        let score = self.score(amid, now_ms)?;
        Ok(Evidence {
            amid: *amid,
            tier: a.tier,
            registered_ms: a.registered_ms,
            computed_ms: now_ms,
            receipts,
            ratings,
            rated,
            score,
        })
    }

    /// The `limit` best reputations (at most [`MAX_LIMIT`]).
    pub fn leaderboard(&self, limit: usize, now_ms: u64) -> Result<Leaderboard, RegistryError> {
        let mut rows = Vec::new();
        for a in self.inner.store.all_agents()? {
            if a.revoked {
                continue;
            }
            let s = self.score(&a.amid, now_ms)?;
            rows.push((s.score, a.amid, a.display_name, a.tier, s.flagged));
        }
        rows.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        rows.truncate(limit.min(MAX_LIMIT));
        let leaderboard = rows
            .into_iter()
            .enumerate()
            .map(
                |(i, (score, amid, display_name, tier, flagged))| LeaderboardRow {
                    rank: i + 1,
                    amid,
                    display_name,
                    tier,
                    score,
                    flagged,
                },
            )
            .collect();
        Ok(Leaderboard { leaderboard })
    }
}
