//! The receiver's policy: a pure, deterministic decision on a KNOCK.
//!
//! [`Policy::evaluate`] takes the KNOCK, the local state that matters (was
//! the nonce seen, is the sender within its rate limit) and the time, and
//! checks, in this order: recipient and timestamp, replayed nonce, intent
//! validity, revocation, credentials, blocklist, allowlist, tier minimum,
//! rate limit, intent rules, reputation minimum. It never looks at message
//! content. The same inputs always give the same decision, and every
//! decision names the [`Policy::hash`] of the policy that made it.
//!
//! Policies come from presets ([`Preset`]) or a TOML file:
//!
//! ```toml
//! preset = "default"          # permissive | default | strict
//! min_tier = "anonymous"      # anonymous | verified | organization
//! reputation_min = 0.6        # registry-attested score in 0..=1; unset: none
//! session_ttl_secs = 86400
//! block = ["am…"]
//! allow = []                  # empty: everyone not blocked
//!
//! [rate]
//! knocks_per_minute = 30
//! messages_per_minute = 100
//!
//! [[intent]]                  # first matching rule decides
//! capability = "finance/*"
//! action = "*"
//! allow = false
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use agentmesh_transports::codec;

use crate::{
    crypto::envelope::MAX_CLOCK_SKEW_MS,
    identity::Amid,
    knock::{Decision, KnockBody, RejectReason, SessionType},
    trust::credentials::Reputation,
};

/// Capability categories of the AgentMesh taxonomy. Custom categories are
/// written `x-<namespace>/<category>`.
pub const CATEGORIES: [&str; 9] = [
    "travel",
    "commerce",
    "finance",
    "productivity",
    "creative",
    "research",
    "development",
    "communication",
    "marketplace",
];
/// Default lifetime of an accepted session.
pub const DEFAULT_SESSION_TTL_MS: u64 = 24 * 3600 * 1000;
/// Longest capability or action name.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `cap` is a valid capability: one vocabulary for the registry,
/// the card and the KNOCK. A capability is a lowercase path of one or more
/// segments (`chat`, `code-review`, `weather/forecast`, `travel/flights`);
/// segments are ASCII letters, digits, `-` and `_`, at most
/// [`MAX_NAME_LEN`] bytes in all. A path under one of the taxonomy's
/// [`CATEGORIES`] is a well-known capability (see [`taxonomy_category`]);
/// `x-<namespace>/<name>[/…]` is a custom one, and must name something
/// under its namespace.
pub fn is_valid_capability(cap: &str) -> bool {
    if cap.is_empty() || cap.len() > MAX_NAME_LEN {
        return false;
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    let mut parts = cap.split('/');
    let Some(first) = parts.next() else {
        return false;
    };
    let rest: Vec<&str> = parts.collect();
    if !segment_ok(first) || !rest.iter().all(|s| segment_ok(s)) {
        return false;
    }
    if let Some(ns) = first.strip_prefix("x-") {
        // x-<namespace>/<name>
        return !ns.is_empty() && !rest.is_empty();
    }
    true
}

/// The taxonomy category a capability belongs to (`travel/flights` →
/// `travel`), or `None` for one outside the taxonomy (`chat`,
/// `weather/forecast`, `x-acme/booking`).
pub fn taxonomy_category(cap: &str) -> Option<&'static str> {
    let first = cap.split('/').next()?;
    CATEGORIES.iter().copied().find(|c| *c == first)
}

/// Trust tier of an agent. Without a certificate from a registry an agent is
/// [`Tier::Anonymous`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Tier 2: a key, nothing more.
    #[default]
    Anonymous,
    /// Tier 1: a human identity verified by OAuth.
    Verified,
    /// Tier 1.5: an organization verified by DNS.
    Organization,
}

/// Per-AMID rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    /// KNOCKs per minute per initiator. Defaults to 30.
    pub knocks_per_minute: u32,
    /// Messages per minute per sender. Defaults to 100.
    pub messages_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            knocks_per_minute: 30,
            messages_per_minute: 100,
        }
    }
}

/// An intent rule: `capability` and `action` are patterns where `*` matches
/// anything and a trailing `/*` matches a category and everything under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRule {
    /// Capability pattern, e.g. `travel/*`.
    pub capability: String,
    /// Action pattern, e.g. `query` or `*`.
    #[serde(default = "star")]
    pub action: String,
    /// Allow or deny when the rule matches.
    pub allow: bool,
    /// Tiers the rule applies to; all when empty.
    #[serde(default)]
    pub tiers: Vec<Tier>,
}

fn star() -> String {
    "*".into()
}

fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        return value
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    }
    pattern == value
}

impl IntentRule {
    fn matches(&self, knock: &KnockBody, tier: Tier) -> bool {
        (self.tiers.is_empty() || self.tiers.contains(&tier))
            && pattern_matches(&self.capability, &knock.intent.capability)
            && pattern_matches(&self.action, &knock.intent.action)
    }
}

/// A starting point for a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Anyone not blocked, any intent.
    Permissive,
    /// Anyone not blocked; intents allowed unless a rule denies them;
    /// 30 KNOCKs and 100 messages per minute.
    #[default]
    Default,
    /// Verified agents only; intents denied unless a rule allows them;
    /// 10 KNOCKs and 50 messages per minute.
    Strict,
}

/// The receiver's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// The preset this policy started from.
    pub preset: Preset,
    /// Always refused.
    pub block: BTreeSet<Amid>,
    /// When not empty, only these are accepted.
    pub allow: BTreeSet<Amid>,
    /// Lowest tier accepted.
    pub min_tier: Tier,
    /// Rate limits per AMID.
    pub rate: RateLimits,
    /// Intent rules, first match decides.
    #[serde(rename = "intent")]
    pub intents: Vec<IntentRule>,
    /// Whether an intent no rule matches is allowed.
    pub allow_unmatched_intents: bool,
    /// Lifetime of accepted sessions, seconds.
    pub session_ttl_secs: u64,
    /// Lowest registry-attested reputation accepted; a KNOCK without an
    /// attestation is refused when set. Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation_min: Option<Reputation>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::preset(Preset::Default)
    }
}

/// Errors loading a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid.
    #[error("invalid policy: {0}")]
    Parse(String),
    /// A rule names an invalid capability pattern.
    #[error("invalid capability pattern {0:?}")]
    BadPattern(String),
}

/// The state [`Policy::evaluate`] needs besides the KNOCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KnockContext {
    /// The initiator's tier, as shown by its certificates.
    pub tier: Tier,
    /// Whether the KNOCK's nonce was seen before.
    pub nonce_seen: bool,
    /// `Some(ms)` when the initiator is over its KNOCK rate: retry after.
    pub rate_limited: Option<u64>,
    /// The initiator, or a certificate it shows, is in the local revocation
    /// set.
    pub revoked: bool,
    /// The initiator's credentials do not verify against the registry root.
    pub invalid_credentials: bool,
    /// The initiator's registry-attested reputation, if shown and valid.
    pub reputation: Option<Reputation>,
}

impl Policy {
    /// Anyone not blocked. (Shorthand for `Policy::preset(Preset::Permissive)`.)
    pub fn permissive() -> Self {
        Self::preset(Preset::Permissive)
    }

    /// A policy from a preset.
    pub fn preset(preset: Preset) -> Self {
        let base = Self {
            preset,
            block: BTreeSet::new(),
            allow: BTreeSet::new(),
            min_tier: Tier::Anonymous,
            rate: RateLimits::default(),
            intents: Vec::new(),
            allow_unmatched_intents: true,
            session_ttl_secs: DEFAULT_SESSION_TTL_MS / 1000,
            reputation_min: None,
        };
        match preset {
            Preset::Permissive | Preset::Default => base,
            Preset::Strict => Self {
                min_tier: Tier::Verified,
                rate: RateLimits {
                    knocks_per_minute: 10,
                    messages_per_minute: 50,
                },
                allow_unmatched_intents: false,
                session_ttl_secs: 3600,
                ..base
            },
        }
    }

    /// Parses a TOML policy. Fields not given take the preset's values.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        #[derive(Deserialize)]
        struct PresetOnly {
            #[serde(default)]
            preset: Preset,
        }
        let p: PresetOnly = toml::from_str::<toml::Table>(text)
            .map_err(|e| PolicyError::Parse(e.to_string()))
            .and_then(|t| {
                toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| PolicyError::Parse(e.to_string()))
            })?;
        // Start from the preset, then overlay what the file says.
        let mut base = toml::Value::try_from(Self::preset(p.preset))
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        let overlay: toml::Table =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        if let toml::Value::Table(t) = &mut base {
            for (k, v) in overlay {
                t.insert(k, v);
            }
        }
        let policy: Policy = base
            .try_into()
            .map_err(|e: toml::de::Error| PolicyError::Parse(e.to_string()))?;
        for r in &policy.intents {
            let cap = r.capability.trim_end_matches("/*");
            if r.capability != "*" && !is_valid_capability(cap) {
                return Err(PolicyError::BadPattern(r.capability.clone()));
            }
        }
        Ok(policy)
    }

    /// Reads a TOML policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// SHA-256 of the policy's canonical encoding: names the policy in
    /// signed decisions and the audit log.
    pub fn hash(&self) -> [u8; 32] {
        let bytes = codec::encode(self).unwrap_or_default();
        Sha256::digest(bytes).into()
    }

    /// Session lifetime in ms.
    pub fn session_ttl_ms(&self) -> u64 {
        if self.session_ttl_secs == 0 {
            DEFAULT_SESSION_TTL_MS
        } else {
            self.session_ttl_secs.saturating_mul(1000)
        }
    }

    /// Evaluates a verified KNOCK. Pure: the same inputs give the same
    /// decision; it never reads the clock or any content.
    pub fn evaluate(
        &self,
        me: &Amid,
        knock: &KnockBody,
        ctx: KnockContext,
        now_ms: u64,
    ) -> Decision {
        self.evaluate_aged(me, knock, ctx, now_ms, MAX_CLOCK_SKEW_MS)
    }

    /// [`Self::evaluate`] for a KNOCK that waited in a mailbox: it may have
    /// been sent up to `max_age_ms` ago (and, as any KNOCK, no more than
    /// the clock skew ahead of `now_ms`). Pure, as `evaluate`.
    pub fn evaluate_mailed(
        &self,
        me: &Amid,
        knock: &KnockBody,
        ctx: KnockContext,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Decision {
        self.evaluate_aged(me, knock, ctx, now_ms, max_age_ms.max(MAX_CLOCK_SKEW_MS))
    }

    fn evaluate_aged(
        &self,
        me: &Amid,
        knock: &KnockBody,
        ctx: KnockContext,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Decision {
        let reject = |reason| Decision::Reject {
            reason,
            retry_after_ms: None,
        };
        if &knock.to != me {
            return reject(RejectReason::WrongRecipient);
        }
        if knock.ts_ms.saturating_add(max_age_ms) < now_ms
            || knock.ts_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS)
        {
            return reject(RejectReason::StaleTimestamp);
        }
        if ctx.nonce_seen {
            return reject(RejectReason::ReplayedNonce);
        }
        if !is_valid_capability(&knock.intent.capability)
            || knock.intent.action.is_empty()
            || knock.intent.session_type == SessionType::Unknown
            || knock
                .intent
                .schema
                .as_deref()
                .is_some_and(|s| !crate::schema::is_valid_schema_id(s))
        {
            return reject(RejectReason::InvalidIntent);
        }
        if ctx.revoked {
            return reject(RejectReason::Revoked);
        }
        if ctx.invalid_credentials {
            return reject(RejectReason::InvalidCredentials);
        }
        // The lists follow an agent that rotated its key: the AMIDs its
        // KNOCK proves it held before count as its own.
        let former = knock.former();
        let is = |list: &BTreeSet<Amid>| {
            list.contains(&knock.from) || former.iter().any(|a| list.contains(a))
        };
        if is(&self.block) {
            return reject(RejectReason::Blocked);
        }
        if !self.allow.is_empty() && !is(&self.allow) {
            return reject(RejectReason::NotAllowed);
        }
        if ctx.tier < self.min_tier {
            return reject(RejectReason::TierTooLow);
        }
        if let Some(ms) = ctx.rate_limited {
            return Decision::Reject {
                reason: RejectReason::RateLimited,
                retry_after_ms: Some(ms),
            };
        }
        let allowed = self
            .intents
            .iter()
            .find(|r| r.matches(knock, ctx.tier))
            .map(|r| r.allow)
            .unwrap_or(self.allow_unmatched_intents);
        if !allowed {
            return reject(RejectReason::IntentDenied);
        }
        if let Some(min) = self.reputation_min {
            if ctx.reputation.is_none_or(|r| r < min) {
                return reject(RejectReason::ReputationTooLow);
            }
        }
        Decision::Accept {
            session: knock.session,
            expires_ms: now_ms.saturating_add(self.session_ttl_ms()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::envelope::SessionId, identity::Identity, knock::Intent};
    use proptest::prelude::*;

    const NOW: u64 = 10_000_000;

    fn knock(from: &Identity, to: Amid, cap: &str, action: &str, ts: u64) -> KnockBody {
        KnockBody {
            from: from.amid(),
            to,
            intent: Intent::new(cap, action),
            session: SessionId([3; 16]),
            ts_ms: ts,
            nonce: [4; 16],
            first: vec![],
            credentials: Default::default(),
            moved_from: Vec::new(),
        }
    }

    fn reason(d: Decision) -> Option<RejectReason> {
        match d {
            Decision::Accept { .. } => None,
            Decision::Reject { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn allow_and_block_lists_follow_a_rotated_key() {
        use crate::identity::rotation::SignedRotation;
        let (old, mid, new, b) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let chain = vec![
            SignedRotation::sign(&old, &mid, 1).unwrap(),
            SignedRotation::sign(&mid, &new, 2).unwrap(),
        ];
        let mut moved = knock(&new, b.amid(), "chat", "hello", NOW);
        moved.moved_from = chain;
        let plain = knock(&new, b.amid(), "chat", "hello", NOW);
        let ctx = KnockContext::default();

        let mut allow_old = Policy::permissive();
        allow_old.allow.insert(old.amid());
        assert_eq!(
            reason(allow_old.evaluate(&b.amid(), &moved, ctx, NOW)),
            None
        );
        // without its history, the new key is a stranger
        assert_eq!(
            reason(allow_old.evaluate(&b.amid(), &plain, ctx, NOW)),
            Some(RejectReason::NotAllowed)
        );

        let mut block_mid = Policy::permissive();
        block_mid.block.insert(mid.amid());
        assert_eq!(
            reason(block_mid.evaluate(&b.amid(), &moved, ctx, NOW)),
            Some(RejectReason::Blocked)
        );
        assert_eq!(
            reason(block_mid.evaluate(&b.amid(), &plain, ctx, NOW)),
            None
        );
    }

    #[test]
    fn a_mailed_knock_may_be_as_old_as_its_mailbox_allows_and_no_more() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let p = Policy::permissive();
        let day = 24 * 3600 * 1000;
        let now = 10 * day;
        let max_age = 3 * day;
        let at = |ts| knock(&a, b.amid(), "chat", "talk", ts);
        let ctx = KnockContext::default();
        // A day old: stale live, fine from a mailbox.
        let old = at(now - day);
        assert_eq!(
            reason(p.evaluate(&b.amid(), &old, ctx, now)),
            Some(RejectReason::StaleTimestamp)
        );
        assert_eq!(
            reason(p.evaluate_mailed(&b.amid(), &old, ctx, now, max_age)),
            None
        );
        // Older than the mailbox keeps mail, or from the future: stale.
        for ts in [now - max_age - 1, now + MAX_CLOCK_SKEW_MS + 1] {
            assert_eq!(
                reason(p.evaluate_mailed(&b.amid(), &at(ts), ctx, now, max_age)),
                Some(RejectReason::StaleTimestamp),
                "{ts}"
            );
        }
        // Never narrower than a live KNOCK's window.
        let skewed = at(now - MAX_CLOCK_SKEW_MS);
        assert_eq!(
            reason(p.evaluate_mailed(&b.amid(), &skewed, ctx, now, 0)),
            None
        );
    }

    #[test]
    fn taxonomy() {
        for ok in [
            "travel",
            "travel/flights",
            "x-acme/booking",
            "x-acme/booking/v2",
            "communication/messaging",
            // The seed's own examples.
            "chat",
            "code-review",
            "weather/forecast",
        ] {
            assert!(is_valid_capability(ok), "{ok}");
        }
        assert_eq!(taxonomy_category("travel/flights"), Some("travel"));
        assert_eq!(taxonomy_category("weather/forecast"), None);
        assert_eq!(taxonomy_category("x-acme/booking"), None);
        for bad in [
            "",
            "Chat",
            "Travel",
            "weather forecast",
            "/chat",
            "chat\n",
            "travel/",
            "x-/a",
            "x-acme",
            "travel//a",
            "trav el",
        ] {
            assert!(!is_valid_capability(bad), "{bad}");
        }
    }

    /// Seed A's example KNOCK (`weather/forecast`, `query`) is judged by
    /// policy, not refused as an invalid intent; a rule can still name it.
    #[test]
    fn the_seed_example_intent_is_judged_by_policy() {
        let a = Identity::from_seed(&[1; 32]);
        let me = Identity::from_seed(&[2; 32]).amid();
        let k = knock(&a, me, "weather/forecast", "query", NOW);
        let open = Policy::default();
        assert_eq!(
            reason(open.evaluate(&me, &k, KnockContext::default(), NOW)),
            None
        );
        let denied =
            Policy::from_toml("[[intent]]\ncapability = \"weather/*\"\nallow = false\n").unwrap();
        assert_eq!(
            reason(denied.evaluate(&me, &k, KnockContext::default(), NOW)),
            Some(RejectReason::IntentDenied)
        );
        let bad = knock(&a, me, "Weather Forecast", "query", NOW);
        assert_eq!(
            reason(open.evaluate(&me, &bad, KnockContext::default(), NOW)),
            Some(RejectReason::InvalidIntent)
        );
    }

    /// The policy matrix: tier × list × intent × rate.
    #[test]
    fn matrix() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let me = b.amid();
        let policy = Policy::from_toml(
            r#"
            preset = "default"
            [[intent]]
            capability = "finance/*"
            allow = false
            [[intent]]
            capability = "travel/*"
            action = "book"
            allow = true
            tiers = ["verified", "organization"]
            [[intent]]
            capability = "travel/*"
            action = "book"
            allow = false
            "#,
        )
        .unwrap();
        let mut blocked = policy.clone();
        blocked.block.insert(a.amid());
        let mut allow_other = policy.clone();
        allow_other
            .allow
            .insert(Identity::from_seed(&[9; 32]).amid());
        let mut strict = Policy::preset(Preset::Strict);
        strict.intents.push(IntentRule {
            capability: "travel/*".into(),
            action: "*".into(),
            allow: true,
            tiers: vec![],
        });

        use RejectReason::*;
        use Tier::*;
        type Case<'a> = (
            &'a Policy,
            Tier,
            &'a str,
            &'a str,
            Option<u64>,
            Option<RejectReason>,
        );
        let cases: Vec<Case<'_>> = vec![
            (&policy, Anonymous, "travel/flights", "query", None, None),
            (
                &policy,
                Anonymous,
                "finance/payments",
                "pay",
                None,
                Some(IntentDenied),
            ),
            (
                &policy,
                Anonymous,
                "travel/hotels",
                "book",
                None,
                Some(IntentDenied),
            ),
            (&policy, Verified, "travel/hotels", "book", None, None),
            (&policy, Organization, "travel/hotels", "book", None, None),
            (
                &policy,
                Anonymous,
                "travel/flights",
                "query",
                Some(1500),
                Some(RateLimited),
            ),
            (
                &policy,
                Anonymous,
                "Chat Bot",
                "query",
                None,
                Some(InvalidIntent),
            ),
            (
                &blocked,
                Organization,
                "travel/flights",
                "query",
                None,
                Some(Blocked),
            ),
            (
                &allow_other,
                Organization,
                "travel/flights",
                "query",
                None,
                Some(NotAllowed),
            ),
            (
                &strict,
                Anonymous,
                "travel/flights",
                "query",
                None,
                Some(TierTooLow),
            ),
            (&strict, Verified, "travel/flights", "query", None, None),
            (
                &strict,
                Verified,
                "research/search",
                "query",
                None,
                Some(IntentDenied),
            ),
            // a blocked sender is refused before its rate is even considered
            (
                &blocked,
                Anonymous,
                "travel/flights",
                "query",
                Some(10),
                Some(Blocked),
            ),
        ];
        for (p, tier, cap, action, rate, want) in cases {
            let k = knock(&a, me, cap, action, NOW);
            let ctx = KnockContext {
                tier,
                rate_limited: rate,
                ..KnockContext::default()
            };
            assert_eq!(
                reason(p.evaluate(&me, &k, ctx, NOW)),
                want,
                "{tier:?} {cap} {action} {rate:?}"
            );
        }
        let k = knock(&a, me, "travel/flights", "query", NOW);
        let d = policy.evaluate(
            &me,
            &k,
            KnockContext {
                rate_limited: Some(1500),
                ..KnockContext::default()
            },
            NOW,
        );
        assert_eq!(
            d,
            Decision::Reject {
                reason: RateLimited,
                retry_after_ms: Some(1500)
            }
        );
    }

    /// The policy matrix: tier × reputation × revocation × credentials,
    /// and the evaluation order (revocation, credentials, blocklist,
    /// allowlist, tier, rate, intents, reputation).
    #[test]
    fn matrix_tier_reputation_revocation() {
        let a = Identity::from_seed(&[1; 32]);
        let me = Identity::from_seed(&[2; 32]).amid();
        let policy = Policy::from_toml(
            r#"
            min_tier = "verified"
            reputation_min = 0.6
            [[intent]]
            capability = "finance/*"
            allow = false
            "#,
        )
        .unwrap();
        assert_eq!(policy.reputation_min, Some(Reputation::from_f64(0.6)));
        let mut blocked = policy.clone();
        blocked.block.insert(a.amid());
        let no_rep = Policy {
            reputation_min: None,
            ..policy.clone()
        };

        use RejectReason::*;
        use Tier::*;
        let r = |x: f64| Some(Reputation::from_f64(x));
        // (policy, tier, reputation, revoked, invalid credentials, rate, capability, expected)
        type Case<'a> = (
            &'a Policy,
            Tier,
            Option<Reputation>,
            bool,
            bool,
            Option<u64>,
            &'a str,
            Option<RejectReason>,
        );
        let q = "travel/flights";
        let cases: Vec<Case<'_>> = vec![
            (&policy, Verified, r(0.6), false, false, None, q, None),
            (&policy, Organization, r(0.9), false, false, None, q, None),
            (
                &policy,
                Verified,
                r(0.599),
                false,
                false,
                None,
                q,
                Some(ReputationTooLow),
            ),
            (
                &policy,
                Organization,
                None,
                false,
                false,
                None,
                q,
                Some(ReputationTooLow),
            ),
            (
                &policy,
                Anonymous,
                r(1.0),
                false,
                false,
                None,
                q,
                Some(TierTooLow),
            ),
            (&no_rep, Verified, None, false, false, None, q, None),
            (
                &no_rep,
                Anonymous,
                None,
                false,
                false,
                None,
                q,
                Some(TierTooLow),
            ),
            // revocation first: before credentials, lists, tier, rate
            (
                &policy,
                Organization,
                r(1.0),
                true,
                false,
                None,
                q,
                Some(Revoked),
            ),
            (
                &blocked,
                Anonymous,
                None,
                true,
                true,
                Some(5),
                q,
                Some(Revoked),
            ),
            (
                &policy,
                Organization,
                r(1.0),
                false,
                true,
                None,
                q,
                Some(InvalidCredentials),
            ),
            (
                &blocked,
                Organization,
                r(1.0),
                false,
                true,
                None,
                q,
                Some(InvalidCredentials),
            ),
            (
                &blocked,
                Organization,
                r(1.0),
                false,
                false,
                None,
                q,
                Some(Blocked),
            ),
            // tier before rate, rate before intents, intents before reputation
            (
                &policy,
                Anonymous,
                None,
                false,
                false,
                Some(5),
                q,
                Some(TierTooLow),
            ),
            (
                &policy,
                Verified,
                None,
                false,
                false,
                Some(5),
                q,
                Some(RateLimited),
            ),
            (
                &policy,
                Verified,
                None,
                false,
                false,
                None,
                "finance/pay",
                Some(IntentDenied),
            ),
            (
                &policy,
                Verified,
                r(0.9),
                false,
                false,
                None,
                "finance/pay",
                Some(IntentDenied),
            ),
        ];
        for (p, tier, reputation, revoked, invalid, rate, cap, want) in cases {
            let k = knock(&a, me, cap, "query", NOW);
            let ctx = KnockContext {
                tier,
                reputation,
                revoked,
                invalid_credentials: invalid,
                rate_limited: rate,
                ..KnockContext::default()
            };
            assert_eq!(
                reason(p.evaluate(&me, &k, ctx, NOW)),
                want,
                "{tier:?} {reputation:?} revoked={revoked} invalid={invalid} {rate:?} {cap}"
            );
        }
        assert!(Policy::from_toml("reputation_min = 1.5").is_err());
        assert_ne!(policy.hash(), no_rep.hash());
    }

    #[test]
    fn every_known_session_type_is_accepted_and_an_unknown_one_is_invalid() {
        let a = Identity::from_seed(&[1; 32]);
        let me = Identity::from_seed(&[2; 32]).amid();
        let p = Policy::default();
        for t in [
            SessionType::RequestResponse,
            SessionType::Conversation,
            SessionType::Stream,
        ] {
            let mut k = knock(&a, me, "travel/flights", "query", NOW);
            k.intent.session_type = t;
            assert_eq!(
                reason(p.evaluate(&me, &k, KnockContext::default(), NOW)),
                None
            );
        }
        // A KNOCK naming a session type this version does not know.
        #[derive(Serialize)]
        struct WireIntent {
            capability: &'static str,
            action: &'static str,
            session_type: &'static str,
        }
        let intent: Intent = codec::decode(
            &codec::encode(&WireIntent {
                capability: "travel/flights",
                action: "query",
                session_type: "telepathy",
            })
            .unwrap(),
            1024,
        )
        .unwrap();
        assert_eq!(intent.session_type, SessionType::Unknown);
        let mut k = knock(&a, me, "travel/flights", "query", NOW);
        k.intent = intent;
        assert_eq!(
            reason(p.evaluate(&me, &k, KnockContext::default(), NOW)),
            Some(RejectReason::InvalidIntent)
        );
    }

    #[test]
    fn toml_overlays_preset_and_hash_tracks_content() {
        let p = Policy::from_toml("preset = \"strict\"\nsession_ttl_secs = 60\n").unwrap();
        assert_eq!(p.min_tier, Tier::Verified);
        assert_eq!(p.session_ttl_secs, 60);
        assert_eq!(p.rate.knocks_per_minute, 10);
        let q = Policy::from_toml("preset = \"strict\"\nsession_ttl_secs = 61\n").unwrap();
        assert_ne!(p.hash(), q.hash());
        assert_eq!(p.hash(), p.clone().hash());
        assert!(matches!(
            Policy::from_toml("nonsense = 1"),
            Err(PolicyError::Parse(_))
        ));
        assert!(matches!(
            Policy::from_toml("[[intent]]\ncapability = \"Bad Cap\"\nallow = true"),
            Err(PolicyError::BadPattern(_))
        ));
    }

    proptest! {
        /// Evaluation is deterministic and does not depend on the order in
        /// which independent lists were filled.
        #[test]
        fn deterministic_and_order_stable(
            ts in 0u64..20_000_000,
            now in 0u64..20_000_000,
            seen: bool,
            rate in proptest::option::of(0u64..100_000),
            tier in 0u8..3,
            blocked_seeds in proptest::collection::vec(3u8..50, 0..5),
        ) {
            let a = Identity::from_seed(&[1; 32]);
            let b = Identity::from_seed(&[2; 32]);
            let tier = [Tier::Anonymous, Tier::Verified, Tier::Organization][tier as usize];
            let k = knock(&a, b.amid(), "travel/flights", "query", ts);
            let mut p1 = Policy::default();
            let mut p2 = Policy::default();
            for s in &blocked_seeds {
                p1.block.insert(Identity::from_seed(&[*s; 32]).amid());
            }
            for s in blocked_seeds.iter().rev() {
                p2.block.insert(Identity::from_seed(&[*s; 32]).amid());
            }
            let ctx = KnockContext {
                tier,
                nonce_seen: seen,
                rate_limited: rate,
                ..KnockContext::default()
            };
            let d1 = p1.evaluate(&b.amid(), &k, ctx, now);
            prop_assert_eq!(&d1, &p1.evaluate(&b.amid(), &k, ctx, now));
            prop_assert_eq!(&d1, &p2.evaluate(&b.amid(), &k, ctx, now));
            prop_assert_eq!(p1.hash(), p2.hash());
        }
    }
}
