//! The outcome vocabulary every layer shares: where a request is answered
//! ([`Tier`]), why ([`Reason`]), why the local model cannot take it
//! ([`Ineligible`]), why no tier can ([`RouteError`]), why a backend gave no
//! answer ([`BackendError`]), and what went otherwise than decided
//! ([`Degraded`]). Plain types with no dependencies on the rest of the crate,
//! so that routing, backends, the ladder, metrics and the HTTP layer may all
//! import them; how they are written on the wire is decided once, in
//! `openai::error`, when the HTTP layer renders them.

use axum::http::{HeaderValue, StatusCode};
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
    /// An endpoint with no local counterpart (files, audio, ...): passed
    /// through to a remote backend.
    RemoteOnlyEndpoint,
    /// Shadow mode: answered by the remote model as before Switchyard; the
    /// routing's own decision is only recorded (and sometimes tried locally).
    Shadow,
    /// The shared state store is unreachable and the fail-safe allowance
    /// for remote calls is used up.
    StateStoreDown,
    /// A rate limit (`rate_limits`) refused the request.
    RateLimited,
}

impl Reason {
    pub const ALL: [Reason; 26] = [
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
        Reason::RemoteOnlyEndpoint,
        Reason::Shadow,
        Reason::StateStoreDown,
        Reason::RateLimited,
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
            Reason::RemoteOnlyEndpoint => "remote-only-endpoint",
            Reason::Shadow => "shadow",
            Reason::StateStoreDown => "state-store-down",
            Reason::RateLimited => "rate-limited",
        }
    }
}

/// Why a local model cannot take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// Tools, or a conversation that holds tool calls or results, for a model
    /// whose chat template offers no tools; tools of a kind other than `function`.
    Tools,
    /// Images, audio or other non-text content.
    Images,
    /// A `response_format` schema the grammar compiler cannot hold an answer to.
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
    /// The shared state store keeping the budgets is unreachable, this
    /// replica's fail-safe allowance is used up, and the local model cannot
    /// serve the request.
    StateStoreDown {
        allowance_usd: f64,
        reason: String,
        why: Reason,
    },
}

impl RouteError {
    /// The reason code a refusal carries in `x-switchyard-reason`, logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            RouteError::PrivacyUnservable { .. } => Reason::PrivacyRule,
            RouteError::BudgetExhausted { .. } => Reason::BudgetExhausted,
            RouteError::MaxCostExceeded { .. } => Reason::MaxCost,
            RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. } => Reason::RemoteUnavailable,
            RouteError::StateStoreDown { .. } => Reason::StateStoreDown,
        }
    }
}

/// Which quantity a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Requests,
    Tokens,
}

impl RateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        }
    }
}

/// A request a rate limit refused.
#[derive(Debug, Clone)]
pub struct RateRefusal {
    /// `key` (the caller's own limit) or `global`.
    pub scope: &'static str,
    pub kind: RateKind,
    pub per_minute: u64,
    pub requested: u64,
    /// When the request would be admitted; `None` when it never can (it
    /// costs more than the whole limit).
    pub retry_ms: Option<u64>,
}

/// Why a backend gave no answer. Backends return these; the ladder decides
/// from them whether another backend may do better ([`Self::is_unavailable`]),
/// and the HTTP layer renders them in OpenAI's format.
#[derive(Debug, Clone)]
pub enum BackendError {
    /// The backend exists but cannot be used now (e.g. its key is not set).
    Unavailable { backend: String, reason: String },
    /// The backend's circuit breaker refuses calls for `retry_after_s` more seconds.
    BreakerOpen { backend: String, retry_after_s: u64 },
    /// The upstream answered with an error; we pass on what is safe of it.
    /// Boxed: it is the largest variant, and errors travel in every `Result`.
    Upstream(Box<UpstreamError>),
    /// The upstream refused our credentials (401 or 403): the backend's key
    /// setting is wrong, not the client's.
    UpstreamAuth {
        backend: String,
        status: StatusCode,
        key_env: Option<String>,
    },
    /// Could not connect to the upstream, or it broke the connection.
    UpstreamUnreachable { backend: String, detail: String },
    /// The upstream did not answer within its timeout.
    UpstreamTimeout { backend: String, timeout_ms: u64 },
    /// The upstream's answer started, then nothing came for `idle_ms`.
    UpstreamStalled { backend: String, idle_ms: u64 },
    /// The upstream's event stream ended before `[DONE]`, or its connection broke.
    UpstreamStreamCut { backend: String, detail: String },
    /// The upstream answered 2xx with a body that is not what OpenAI's format promises.
    UpstreamInvalid { backend: String, detail: String },
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded { message: String },
    /// The local engine cannot take the request now: its queue is full, or
    /// the request found no turn within the backend's `max_queue_wait_ms`.
    LocalBusy { backend: String, detail: String },
    /// A local generation was stopped at the request's deadline
    /// (`server.request_deadline_ms`); `deadline_ms` is what was left of it
    /// when the local backend was asked, `detail` how far it got.
    LocalTimeout {
        backend: String,
        deadline_ms: u64,
        detail: String,
    },
    /// The request is one this backend cannot take as it is (a value past its
    /// limits, messages its chat template refuses): the client's to fix.
    Rejected { message: String, param: Option<String> },
}

/// An upstream's own error response, as much of it as is safe to pass on:
/// its status and, from an OpenAI error object, its `type`, `code` and
/// `param` as they came and its message with secrets redacted (read by
/// `openai::error`).
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub backend: String,
    pub status: StatusCode,
    pub message: String,
    pub error_type: String,
    /// A string, a number or null, as the upstream sent it.
    pub code: serde_json::Value,
    pub param: serde_json::Value,
    pub retry_after: Option<HeaderValue>,
}

impl BackendError {
    /// A request this backend refuses, pointing at the field to blame.
    pub fn rejected(message: impl Into<String>, param: &str) -> BackendError {
        BackendError::Rejected {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// Stable, low-cardinality code: the error's `code` field, and a label in
    /// logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            BackendError::Unavailable { .. } | BackendError::BreakerOpen { .. } => "backend_unavailable",
            BackendError::Upstream(_) => "upstream_error",
            BackendError::UpstreamAuth { .. } => "upstream_auth_failed",
            BackendError::UpstreamUnreachable { .. } => "upstream_unreachable",
            BackendError::UpstreamTimeout { .. } | BackendError::UpstreamStalled { .. } => "upstream_timeout",
            BackendError::UpstreamStreamCut { .. } => "upstream_stream_cut",
            BackendError::UpstreamInvalid { .. } => "upstream_invalid_response",
            BackendError::ContextLengthExceeded { .. } => "context_length_exceeded",
            BackendError::LocalBusy { .. } => "engine_busy",
            BackendError::LocalTimeout { .. } => "local_timeout",
            BackendError::Rejected { .. } => "invalid_request",
        }
    }

    /// Failures of the upstream, not of the request: worth a retry or a
    /// fallback, and counted by the circuit breaker. (A refused key is the
    /// upstream's too, but retrying cannot mend it: see [`Self::is_unavailable`].)
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::UpstreamUnreachable { .. }
            | BackendError::UpstreamTimeout { .. }
            | BackendError::UpstreamStalled { .. }
            | BackendError::UpstreamStreamCut { .. }
            | BackendError::UpstreamInvalid { .. } => true,
            BackendError::Upstream(e) => matches!(e.status.as_u16(), 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// Failures that another backend may not have: the upstream's, or a
    /// backend that cannot take calls now (no key, breaker open, its key refused).
    pub fn is_unavailable(&self) -> bool {
        self.is_transient()
            || matches!(
                self,
                BackendError::Unavailable { .. } | BackendError::BreakerOpen { .. } | BackendError::UpstreamAuth { .. }
            )
    }
}
