//! Reputation scoring: a pure function of published evidence, so anyone
//! holding the receipts and ratings a registry publishes can recompute an
//! agent's score.
//!
//! ```text
//! reputation = 0.3 × completion_rate + 0.4 × avg_peer_feedback
//!            + 0.1 × age_factor      + 0.2 × tier_bonus
//! ```
//!
//! - `completion_rate`: completed sessions / sessions with a receipt signed
//!   by both sides; 0.5 when there is none.
//! - `avg_peer_feedback`: weighted mean of ratings (each in 0..=1) with one
//!   neutral pseudo-rating of 0.5 and weight [`FEEDBACK_PRIOR_WEIGHT`], so a
//!   rating's weight matters even when it is the only one.
//! - `age_factor`: account age / [`AGE_FULL_MS`], capped at 1.
//! - `tier_bonus`: 0 for tier 2, 0.5 for tier 1, 1 for tier 1.5.
//!
//! Until an agent has any evidence (no receipt, no rating) its score is the
//! tier's starting reputation (0.5, 0.6, 0.7).
//!
//! Anti-gaming weights multiply a rating's weight:
//! - rater of tier 2 (anonymous): × [`ANONYMOUS_RATER_WEIGHT`] (50 %);
//! - mutual rating (the subject also rated the rater): × [`MUTUAL_WEIGHT`]
//!   (an 80 % discount);
//! - same network origin as an earlier rating of the same subject: × 0;
//! - rater account younger than [`NEW_ACCOUNT_MS`] (7 days) when rating:
//!   × [`NEW_ACCOUNT_WEIGHT`] (25 %).
//!
//! A score that moved by more than [`RAPID_CHANGE_THRESHOLD`] within
//! [`RAPID_CHANGE_WINDOW_MS`] is flagged for review.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{identity::Amid, knock::policy::Tier};

/// Weight of the completion rate.
pub const W_COMPLETION: f64 = 0.3;
/// Weight of the peer feedback.
pub const W_FEEDBACK: f64 = 0.4;
/// Weight of the age factor.
pub const W_AGE: f64 = 0.1;
/// Weight of the tier bonus.
pub const W_TIER: f64 = 0.2;
/// Weight of the neutral pseudo-rating in the feedback mean.
pub const FEEDBACK_PRIOR_WEIGHT: f64 = 1.0;
/// Value of the neutral pseudo-rating and of missing components.
pub const NEUTRAL: f64 = 0.5;
/// Multiplier of ratings by tier-2 (anonymous) raters.
pub const ANONYMOUS_RATER_WEIGHT: f64 = 0.5;
/// Multiplier of mutual ratings.
pub const MUTUAL_WEIGHT: f64 = 0.2;
/// Multiplier of ratings by accounts younger than [`NEW_ACCOUNT_MS`].
pub const NEW_ACCOUNT_WEIGHT: f64 = 0.25;
/// Age under which an account counts as new: 7 days.
pub const NEW_ACCOUNT_MS: u64 = 7 * DAY_MS;
/// Age at which the age factor reaches 1: 90 days.
pub const AGE_FULL_MS: u64 = 90 * DAY_MS;
/// Window of the rapid-change check: 24 hours.
pub const RAPID_CHANGE_WINDOW_MS: u64 = DAY_MS;
/// Score change within the window that flags an agent for review.
pub const RAPID_CHANGE_THRESHOLD: f64 = 0.2;
const DAY_MS: u64 = 86_400_000;

/// Starting reputation of a tier.
pub fn starting_score(tier: Tier) -> f64 {
    match tier {
        Tier::Anonymous => 0.5,
        Tier::Verified => 0.6,
        Tier::Organization => 0.7,
    }
}

/// Tier bonus of the formula.
pub fn tier_bonus(tier: Tier) -> f64 {
    match tier {
        Tier::Anonymous => 0.0,
        Tier::Verified => 0.5,
        Tier::Organization => 1.0,
    }
}

/// The outcome of one session, from a receipt both sides signed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SessionOutcome {
    /// When the session ended, ms since the epoch.
    pub ended_ms: u64,
    /// Whether it completed.
    pub completed: bool,
}

/// One rating of the subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// Who rated.
    pub rater: Amid,
    /// The rating, 0..=1.
    pub score: f64,
    /// When it was given, ms since the epoch.
    pub ts_ms: u64,
    /// The rater's tier when rating.
    pub rater_tier: Tier,
    /// When the rater's account was registered.
    pub rater_registered_ms: u64,
    /// Opaque tag of the network origin of the rating (equal tags, same
    /// origin); empty when unknown.
    pub origin: String,
}

/// Everything a score is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The subject's tier.
    pub tier: Tier,
    /// When the subject registered.
    pub registered_ms: u64,
    /// Outcomes of the subject's sessions.
    pub outcomes: &'a [SessionOutcome],
    /// Ratings of the subject.
    pub ratings: &'a [Rating],
    /// Agents the subject has rated (for the mutual rule).
    pub rated_by_subject: &'a HashSet<Amid>,
}

/// A computed score and its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Score {
    /// The reputation, 0..=1.
    pub score: f64,
    /// Completion-rate component.
    pub completion_rate: f64,
    /// Peer-feedback component.
    pub feedback: f64,
    /// Age component.
    pub age_factor: f64,
    /// Tier component.
    pub tier_bonus: f64,
    /// Sessions counted.
    pub sessions: usize,
    /// Ratings counted (any weight).
    pub ratings: usize,
    /// Effective weight of each rating, in the order given.
    pub weights: Vec<f64>,
    /// Whether the score moved fast enough to need review.
    pub flagged: bool,
}

/// The anti-gaming weight of each rating, in the order given. Only ratings
/// given at or before `at_ms` count (others get 0).
pub fn rating_weights(e: &Evidence<'_>, at_ms: u64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..e.ratings.len()).collect();
    order.sort_by_key(|&i| (e.ratings[i].ts_ms, i));
    let mut weights = vec![0.0; e.ratings.len()];
    let mut origins: HashSet<&str> = HashSet::new();
    for i in order {
        let r = &e.ratings[i];
        if r.ts_ms > at_ms || !(0.0..=1.0).contains(&r.score) {
            continue;
        }
        if !r.origin.is_empty() && !origins.insert(r.origin.as_str()) {
            continue;
        }
        let mut w = 1.0;
        if r.rater_tier == Tier::Anonymous {
            w *= ANONYMOUS_RATER_WEIGHT;
        }
        if e.rated_by_subject.contains(&r.rater) {
            w *= MUTUAL_WEIGHT;
        }
        if r.ts_ms.saturating_sub(r.rater_registered_ms) < NEW_ACCOUNT_MS {
            w *= NEW_ACCOUNT_WEIGHT;
        }
        weights[i] = w;
    }
    weights
}

fn score_at(e: &Evidence<'_>, at_ms: u64) -> Score {
    let outcomes: Vec<&SessionOutcome> =
        e.outcomes.iter().filter(|o| o.ended_ms <= at_ms).collect();
    let weights = rating_weights(e, at_ms);
    let counted = e.ratings.iter().filter(|r| r.ts_ms <= at_ms).count();
    let bonus = tier_bonus(e.tier);
    let age_factor = (at_ms.saturating_sub(e.registered_ms) as f64 / AGE_FULL_MS as f64).min(1.0);
    if outcomes.is_empty() && counted == 0 {
        return Score {
            score: starting_score(e.tier),
            completion_rate: NEUTRAL,
            feedback: NEUTRAL,
            age_factor,
            tier_bonus: bonus,
            sessions: 0,
            ratings: 0,
            weights,
            flagged: false,
        };
    }
    let completion_rate = if outcomes.is_empty() {
        NEUTRAL
    } else {
        outcomes.iter().filter(|o| o.completed).count() as f64 / outcomes.len() as f64
    };
    let (sum, total) = e
        .ratings
        .iter()
        .zip(&weights)
        .fold((0.0, 0.0), |(s, t), (r, w)| (s + w * r.score, t + w));
    let feedback = (sum + FEEDBACK_PRIOR_WEIGHT * NEUTRAL) / (total + FEEDBACK_PRIOR_WEIGHT);
    let score = W_COMPLETION * completion_rate
        + W_FEEDBACK * feedback
        + W_AGE * age_factor
        + W_TIER * bonus;
    Score {
        score: score.clamp(0.0, 1.0),
        completion_rate,
        feedback,
        age_factor,
        tier_bonus: bonus,
        sessions: outcomes.len(),
        ratings: counted,
        weights,
        flagged: false,
    }
}

/// The subject's score at `now_ms`, flagged when it moved by more than
/// [`RAPID_CHANGE_THRESHOLD`] since `now_ms - RAPID_CHANGE_WINDOW_MS`.
pub fn score(e: &Evidence<'_>, now_ms: u64) -> Score {
    let mut now = score_at(e, now_ms);
    let before = score_at(e, now_ms.saturating_sub(RAPID_CHANGE_WINDOW_MS));
    now.flagged = (now.score - before.score).abs() > RAPID_CHANGE_THRESHOLD;
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const NOW: u64 = 1_800_000_000_000;
    const OLD: u64 = NOW - 365 * DAY_MS;

    fn amid(b: u8) -> Amid {
        Identity::from_seed(&[b; 32]).amid()
    }

    fn rating(rater: u8, score: f64, tier: Tier, origin: &str) -> Rating {
        Rating {
            rater: amid(rater),
            score,
            ts_ms: NOW - 2 * DAY_MS,
            rater_tier: tier,
            rater_registered_ms: OLD,
            origin: origin.into(),
        }
    }

    fn ev<'a>(
        ratings: &'a [Rating],
        outcomes: &'a [SessionOutcome],
        rated: &'a HashSet<Amid>,
    ) -> Evidence<'a> {
        Evidence {
            tier: Tier::Verified,
            registered_ms: OLD,
            outcomes,
            ratings,
            rated_by_subject: rated,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn done(n: usize, completed: usize) -> Vec<SessionOutcome> {
        (0..n)
            .map(|i| SessionOutcome {
                ended_ms: NOW - 3 * DAY_MS,
                completed: i < completed,
            })
            .collect()
    }

    #[test]
    fn starting_scores_without_evidence() {
        let none = HashSet::new();
        for (tier, s) in [
            (Tier::Anonymous, 0.5),
            (Tier::Verified, 0.6),
            (Tier::Organization, 0.7),
        ] {
            let e = Evidence {
                tier,
                ..ev(&[], &[], &none)
            };
            assert!(close(score(&e, NOW).score, s));
        }
    }

    #[test]
    fn formula_figures() {
        // 4 sessions, 3 completed; one rating of 1.0 by an old tier-1
        // rater; account a year old (age factor 1); tier 1 (bonus 0.5).
        let none = HashSet::new();
        let r = [rating(1, 1.0, Tier::Verified, "a")];
        let o = done(4, 3);
        let s = score(&ev(&r, &o, &none), NOW);
        assert!(close(s.completion_rate, 0.75));
        assert!(close(s.feedback, 0.75)); // (1 + 0.5) / (1 + 1)
        assert!(close(s.age_factor, 1.0));
        // 0.3*0.75 + 0.4*0.75 + 0.1*1 + 0.2*0.5 = 0.725
        assert!(close(s.score, 0.725));
        assert!(!s.flagged);
    }

    #[test]
    fn anonymous_rater_counts_half() {
        let none = HashSet::new();
        let r = [rating(1, 1.0, Tier::Anonymous, "a")];
        let o = done(4, 3);
        let s = score(&ev(&r, &o, &none), NOW);
        assert_eq!(s.weights, vec![0.5]);
        // (0.5*1 + 0.5) / (0.5 + 1) = 2/3
        assert!(close(s.feedback, 2.0 / 3.0));
        assert!(close(s.score, 0.225 + 0.4 * 2.0 / 3.0 + 0.1 + 0.1));
    }

    #[test]
    fn mutual_rating_is_discounted_80_percent() {
        let rated: HashSet<Amid> = [amid(1)].into();
        let r = [rating(1, 1.0, Tier::Verified, "a")];
        let o = done(4, 3);
        let s = score(&ev(&r, &o, &rated), NOW);
        assert!(close(s.weights[0], 0.2));
        // (0.2 + 0.5) / 1.2
        assert!(close(s.feedback, 0.7 / 1.2));
        assert!(close(s.score, 0.225 + 0.4 * 0.7 / 1.2 + 0.2));
    }

    #[test]
    fn same_origin_after_the_first_counts_zero() {
        let none = HashSet::new();
        let mut second = rating(2, 0.0, Tier::Verified, "a");
        second.ts_ms += 1;
        let r = [second, rating(1, 1.0, Tier::Verified, "a")];
        let o = done(4, 3);
        let s = score(&ev(&r, &o, &none), NOW);
        // The earlier rating (rater 1) counts; the later one is ignored.
        assert_eq!(s.weights, vec![0.0, 1.0]);
        assert!(close(s.feedback, 0.75));
        assert!(close(s.score, 0.725));
        // Different origins both count: (1 + 0 + 0.5) / 3 = 0.5.
        let mut other = r.clone();
        other[0].origin = "b".into();
        let s = score(&ev(&other, &o, &none), NOW);
        assert_eq!(s.weights, vec![1.0, 1.0]);
        assert!(close(s.feedback, 0.5));
    }

    #[test]
    fn new_account_counts_a_quarter() {
        let none = HashSet::new();
        let mut r = rating(1, 1.0, Tier::Verified, "a");
        r.rater_registered_ms = r.ts_ms - 6 * DAY_MS;
        let o = done(4, 3);
        let s = score(&ev(&[r.clone()], &o, &none), NOW);
        assert_eq!(s.weights, vec![0.25]);
        // (0.25 + 0.5) / 1.25 = 0.6
        assert!(close(s.feedback, 0.6));
        assert!(close(s.score, 0.225 + 0.24 + 0.2));
        // Seven days old: full weight.
        r.rater_registered_ms = r.ts_ms - 7 * DAY_MS;
        assert_eq!(score(&ev(&[r], &o, &none), NOW).weights, vec![1.0]);
    }

    #[test]
    fn weights_combine() {
        // Anonymous, new and mutual: 0.5 * 0.25 * 0.2 = 0.025.
        let rated: HashSet<Amid> = [amid(1)].into();
        let mut r = rating(1, 1.0, Tier::Anonymous, "a");
        r.rater_registered_ms = r.ts_ms;
        let s = score(&ev(&[r], &[], &rated), NOW);
        assert!(close(s.weights[0], 0.025));
    }

    #[test]
    fn rapid_change_is_flagged() {
        let none = HashSet::new();
        // Yesterday: 10 sessions, all completed, excellent ratings. Today: 10
        // failed sessions and ten bad ratings.
        let mut o = done(10, 10);
        o.extend((0..10).map(|_| SessionOutcome {
            ended_ms: NOW - 1000,
            completed: false,
        }));
        let mut r: Vec<Rating> = (1..=5)
            .map(|i| rating(i, 1.0, Tier::Verified, &format!("o{i}")))
            .collect();
        r.extend((6..=15).map(|i| Rating {
            ts_ms: NOW - 1000,
            ..rating(i, 0.0, Tier::Verified, &format!("o{i}"))
        }));
        let s = score(&ev(&r, &o, &none), NOW);
        assert!(s.flagged, "{s:?}");
        // Without today's evidence the score is steady.
        let s = score(&ev(&r[..5], &o[..10], &none), NOW);
        assert!(!s.flagged);
    }

    #[test]
    fn age_factor_grows_to_one() {
        let none = HashSet::new();
        let o = done(1, 1);
        let mut e = ev(&[], &o, &none);
        e.registered_ms = NOW - 45 * DAY_MS;
        assert!(close(score(&e, NOW).age_factor, 0.5));
        e.registered_ms = NOW;
        assert!(close(score(&e, NOW).age_factor, 0.0));
    }

    #[test]
    fn out_of_range_ratings_count_zero() {
        let none = HashSet::new();
        let r = [rating(1, 7.0, Tier::Verified, "a")];
        let s = score(&ev(&r, &done(1, 1), &none), NOW);
        assert_eq!(s.weights, vec![0.0]);
        assert!(close(s.feedback, 0.5));
    }
}
