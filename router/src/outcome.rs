//! The outcome vocabulary every layer shares: where a request is answered
//! ([`Tier`]), why ([`Reason`]), why the local model cannot take it
//! ([`Ineligible`]), why no tier can ([`RouteError`]), and what went otherwise
//! than decided ([`Degraded`]). Plain types with no
//! dependencies on the rest of the crate, so that routing, backends, the ladder,
//! metrics and the HTTP layer may all import them; how they are written on the
//! wire is the HTTP layer's business (`openai::error`).

use serde::Serialize;

/// Where a request is answered. Ordered: a conversation only moves up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Local,
    LocalReasoning,
    Remote,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Local, Tier::LocalReasoning, Tier::Remote];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::LocalReasoning => "local-reasoning",
            Tier::Remote => "remote",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// This tier as a local backend serves it: `local-reasoning` is `local`
    /// on one that does not reason (`reasoning: false`).
    pub fn served(self, local_reasons: bool) -> Tier {
        match self {
            Tier::LocalReasoning if !local_reasons => Tier::Local,
            tier => tier,
        }
    }
}

/// Why a request went where it went: short, stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The client named a backend; no routing.
    ModelPinned,
    ScoreLow,
    ScoreAmbiguous,
    ScoreHigh,
    TierOverride,
    StickySession,
    PrivacyRule,
    IneligibleTools,
    IneligibleImages,
    IneligibleJson,
    IneligibleFields,
    IneligibleContext,
    LocalUnavailable,
    RemoteUnavailable,
    BudgetPaced,
    BudgetExhausted,
    MaxCost,
    /// Escalated by the ladder: the local answer was empty...
    WeakEmpty,
    /// ...cut by our own token limit...
    WeakTruncated,
    /// ...looping...
    WeakRepetition,
    /// ...refusing the task...
    WeakRefusal,
    /// ...or the model was unsure of its tokens.
    WeakConfidence,
}

impl Reason {
    pub const ALL: [Reason; 22] = [
        Reason::ModelPinned,
        Reason::ScoreLow,
        Reason::ScoreAmbiguous,
        Reason::ScoreHigh,
        Reason::TierOverride,
        Reason::StickySession,
        Reason::PrivacyRule,
        Reason::IneligibleTools,
        Reason::IneligibleImages,
        Reason::IneligibleJson,
        Reason::IneligibleFields,
        Reason::IneligibleContext,
        Reason::LocalUnavailable,
        Reason::RemoteUnavailable,
        Reason::BudgetPaced,
        Reason::BudgetExhausted,
        Reason::MaxCost,
        Reason::WeakEmpty,
        Reason::WeakTruncated,
        Reason::WeakRepetition,
        Reason::WeakRefusal,
        Reason::WeakConfidence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ModelPinned => "model-pinned",
            Reason::ScoreLow => "score-low",
            Reason::ScoreAmbiguous => "score-ambiguous",
            Reason::ScoreHigh => "score-high",
            Reason::TierOverride => "tier-override",
            Reason::StickySession => "sticky-session",
            Reason::PrivacyRule => "privacy-rule",
            Reason::IneligibleTools => "ineligible-tools",
            Reason::IneligibleImages => "ineligible-images",
            Reason::IneligibleJson => "ineligible-json",
            Reason::IneligibleFields => "ineligible-fields",
            Reason::IneligibleContext => "ineligible-context",
            Reason::LocalUnavailable => "local-unavailable",
            Reason::RemoteUnavailable => "remote-unavailable",
            Reason::BudgetPaced => "budget-paced",
            Reason::BudgetExhausted => "budget-exhausted",
            Reason::MaxCost => "max-cost",
            Reason::WeakEmpty => "weak-empty",
            Reason::WeakTruncated => "weak-truncated",
            Reason::WeakRepetition => "weak-repetition",
            Reason::WeakRefusal => "weak-refusal",
            Reason::WeakConfidence => "weak-confidence",
        }
    }
}

/// Why a local model cannot take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// Tools or function calling, or a conversation that holds tool calls or results.
    Tools,
    /// Images, audio or other non-text content.
    Images,
    /// `response_format` (JSON mode or a schema).
    JsonMode,
    /// Other fields a local model cannot honour (`logit_bias`, `n` > 1, ...).
    Fields,
    /// The prompt (estimated) and `max_tokens` do not fit the context window.
    Context,
    /// The model is not loaded.
    Unavailable,
}

impl Ineligible {
    /// The reason code of a request routed away for this.
    pub fn reason(self) -> Reason {
        match self {
            Ineligible::Tools => Reason::IneligibleTools,
            Ineligible::Images => Reason::IneligibleImages,
            Ineligible::JsonMode => Reason::IneligibleJson,
            Ineligible::Fields => Reason::IneligibleFields,
            Ineligible::Context => Reason::IneligibleContext,
            Ineligible::Unavailable => Reason::LocalUnavailable,
        }
    }
}

/// Why an answer did not come from where the decision sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    RemoteUnavailable,
    LocalBusy,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::RemoteUnavailable => "remote-unavailable",
            Degraded::LocalBusy => "local-busy",
        }
    }
}

/// A request that no tier can take under the policy.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteError {
    /// A privacy rule keeps it local, and the local model cannot serve it.
    PrivacyUnservable { rule: String, why: Reason },
    /// The budget is spent, and the local model cannot serve it.
    BudgetExhausted { why: Reason },
    /// The remote call would cost more than the client allows, and the local
    /// model cannot serve it.
    MaxCostExceeded { estimate_usd: f64, why: Reason },
    /// Neither tier is available.
    NoBackend { why: Reason },
    /// Every remote backend failed and the local model cannot serve the request.
    RemoteFailed { last: &'static str },
}

impl RouteError {
    /// The reason code a refusal carries in `x-switchyard-reason`, logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            RouteError::PrivacyUnservable { .. } => Reason::PrivacyRule,
            RouteError::BudgetExhausted { .. } => Reason::BudgetExhausted,
            RouteError::MaxCostExceeded { .. } => Reason::MaxCost,
            RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. } => Reason::RemoteUnavailable,
        }
    }
}
