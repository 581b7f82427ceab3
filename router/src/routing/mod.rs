//! The routing brain: for each `auto` request, which tier answers it (the local
//! model, the local model reasoning step by step, or a remote model) and why.
//!
//! - [`features`] and [`difficulty`]: a request's signals and its learned
//!   difficulty score.
//! - [`decide`]: the decision as a pure function of what is known.
//! - [`privacy`]: detectors and patterns that keep a request local.
//! - [`budget`]: remote spend, kept across restarts, and budget pacing.
//! - [`calibration`]: thresholds chosen from labelled or shadow evidence.
//! - [`sessions`]: sticky conversations, whose tier only goes up.
//!
//! [`Routing::decide`] is the one entry point: a validated request and its
//! hints in, a [`Decision`] out, for routed and pinned requests alike.
//! [`Routing`] is what one policy generation knows (profiles, rules, backends);
//! [`Ledger`](budget::Ledger) and [`Sessions`](sessions::Sessions) outlive
//! reloads. Every decision carries a stable [`Reason`] code, sent to clients in
//! `x-switchyard-reason` and used as a metric label.

pub mod budget;
pub mod calibration;
pub mod decide;
pub mod difficulty;
pub mod features;
pub mod privacy;
pub mod sessions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::auth::Caller;
use crate::backends::{Backend, Backends};
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::outcome::{Ineligible, Reason, RouteError, Tier};
use crate::policy::{AUTO_MODEL, Mode, Policy, Price, ShadowConfig, Thresholds};
use budget::{BudgetLimits, Pacing, Refusal, Reservation, SpendBook};
use decide::{Situation, Verdict};
use privacy::PrivacyRules;
use sessions::SessionKeys;

/// Output tokens assumed when pricing a remote call (its budget hold, and
/// `x-switchyard-max-cost-usd`) for a request that sets no `max_tokens`, to
/// a backend that sets no `max_output_tokens`.
pub const DEFAULT_OUTPUT_TOKENS_ESTIMATE: u64 = 1_000;

/// What a client asked of the routing through headers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Hints {
    pub tier: Option<Tier>,
    pub max_cost_usd: Option<f64>,
    pub session: Option<String>,
}

/// The outcome of routing one request.
#[derive(Clone)]
pub struct Decision {
    pub tier: Tier,
    pub reason: Reason,
    /// The difficulty score, when the request was scored.
    pub score: Option<f32>,
    pub backend: Arc<Backend>,
    /// Budget pacing level at decision time.
    pub pacing: f64,
    /// Where the request may go if its backend fails or is full.
    pub fallbacks: Fallbacks,
    /// What each remote call for this request holds against the budgets;
    /// `None` when the policy sets none.
    pub budget: Option<BudgetClaim>,
}

/// A request's claim on the budgets: each remote call it makes must be
/// admitted by the ledger, which holds what that backend may charge for it
/// (see [`worst_case_usd`]) until the call's cost is known.
#[derive(Clone)]
pub struct BudgetClaim {
    ledger: SpendBook,
    limits: BudgetLimits,
    caller: Option<String>,
    prompt_tokens: u64,
    /// The request's `max_tokens`, when it sets one, and its `n`.
    max_tokens: Option<u64>,
    choices: u64,
    /// Why the local model cannot stand in when a call is refused: the
    /// request names a remote model, or routing found it needs the remote.
    why: Reason,
    /// A call admitted ahead (see [`BudgetClaim::admit_ahead`]), shared by
    /// the claim's clones.
    ahead: Arc<Mutex<Option<Ahead>>>,
}

/// The admission of a call made before the ladder asked for it.
struct Ahead {
    backend: Arc<Backend>,
    /// `None` once taken.
    admitted: Option<Result<Option<Reservation>, ApiError>>,
}

impl Drop for Ahead {
    /// A hold nobody took (the request was refused or went away first) is
    /// let go, charging nothing: no call was made under it.
    fn drop(&mut self) {
        if let Some(Ok(Some(reservation))) = self.admitted.take() {
            reservation.release();
        }
    }
}

impl BudgetClaim {
    /// Admits a call to `backend` now, before the ladder asks: with a
    /// shared store, the hold then travels in the same round trip as the
    /// request's rate limits instead of one after them. The first
    /// [`BudgetClaim::admit`] of the same backend takes the outcome, a
    /// refusal included; a hold never taken is released when the claim goes.
    pub async fn admit_ahead(&self, backend: &Arc<Backend>) {
        let admitted = self.admit(backend).await;
        *self.ahead.lock().expect("ahead lock") = Some(Ahead {
            backend: backend.clone(),
            admitted: Some(admitted),
        });
    }

    /// Admits a call to `backend`: `Ok(None)` for a free one, `Err` when the
    /// budget (counting calls in flight) is spent.
    pub async fn admit(&self, backend: &Backend) -> Result<Option<Reservation>, ApiError> {
        let taken = {
            let mut ahead = self.ahead.lock().expect("ahead lock");
            match ahead.as_mut() {
                Some(ahead) if std::ptr::eq(ahead.backend.as_ref(), backend) => ahead.admitted.take(),
                _ => None,
            }
        };
        if let Some(admitted) = taken {
            return admitted;
        }
        let output_tokens = billable_output_tokens(backend, self.max_tokens, self.choices);
        let usd = price_of(backend).cost_usd(self.prompt_tokens, output_tokens);
        if usd <= 0.0 {
            return Ok(None);
        }
        reserve(&self.ledger, &self.limits, self.caller.as_deref(), usd, self.why).await
    }
}

/// Holds `usd` against the budgets.
async fn reserve(
    ledger: &SpendBook,
    limits: &BudgetLimits,
    caller: Option<&str>,
    usd: f64,
    why: Reason,
) -> Result<Option<Reservation>, ApiError> {
    match ledger.reserve(limits, caller, usd).await {
        Ok(reservation) => Ok(Some(reservation)),
        Err(Refusal::Exhausted) => Err(ApiError::Route(RouteError::BudgetExhausted { why })),
        Err(Refusal::StoreDown { allowance_usd, reason }) => Err(ApiError::Route(RouteError::StateStoreDown {
            allowance_usd,
            reason,
            why,
        })),
    }
}

/// Output tokens a request may use as rate limits count them: `max_tokens`
/// (or [`DEFAULT_OUTPUT_TOKENS_ESTIMATE`]) for each of its `n` choices.
pub fn output_tokens_bound(request: &ChatRequest) -> u64 {
    let n = u64::from(request.sampling.n.unwrap_or(1).max(1));
    request
        .max_tokens
        .unwrap_or(DEFAULT_OUTPUT_TOKENS_ESTIMATE)
        .saturating_mul(n)
}

/// Output tokens a call to `backend` may be billed for: `max_tokens`, else
/// the most its model may write (`max_output_tokens`), else
/// [`DEFAULT_OUTPUT_TOKENS_ESTIMATE`], for each of `choices`. Only the first
/// two bound a call; without either, a call can cost more than its hold.
pub fn billable_output_tokens(backend: &Backend, max_tokens: Option<u64>, choices: u64) -> u64 {
    let limit = match backend {
        Backend::Remote(remote) => remote.max_output_tokens(),
        Backend::Local(_) => None,
    };
    max_tokens
        .or(limit)
        .unwrap_or(DEFAULT_OUTPUT_TOKENS_ESTIMATE)
        .saturating_mul(choices.max(1))
}

/// The most a call of `request` to `backend` may cost.
pub fn worst_case_usd(backend: &Backend, request: &ChatRequest, prompt_tokens_estimate: u64) -> f64 {
    let choices = u64::from(request.sampling.n.unwrap_or(1));
    let output_tokens = billable_output_tokens(backend, request.max_tokens, choices);
    price_of(backend).cost_usd(prompt_tokens_estimate, output_tokens)
}

/// The other backends a routed request may be answered by: the local model
/// when it can serve the request, and the remote backends, in order, when the
/// policy lets the request leave the machine. Pinned requests have none.
#[derive(Clone, Default)]
pub struct Fallbacks {
    pub local: Option<Arc<Backend>>,
    pub remotes: Vec<Arc<Backend>>,
}

/// The routing part of one policy generation.
pub struct Routing {
    profiles: HashMap<String, Thresholds>,
    local: Option<Arc<Backend>>,
    remotes: Vec<Arc<Backend>>,
    passthrough: Option<Arc<Backend>>,
    privacy: PrivacyRules,
    budgets: Option<BudgetLimits>,
    sticky: bool,
    mode: Mode,
    shadow: ShadowConfig,
    /// `shadow.file`, resolved against the policy file's directory.
    shadow_file: std::path::PathBuf,
    /// Offline (the audit, `route explain`): remote backends count as
    /// ready whether or not their keys are set here.
    offline: bool,
    /// The policy's `difficulty_model`, loaded; `None`: the shipped one.
    difficulty: Option<Arc<difficulty::DifficultyModel>>,
}

/// What the routing needs to know of a request besides its body.
struct RequestFacts<'a> {
    pub caller: &'a Caller,
    pub hints: &'a Hints,
    /// Difficulty in [0, 1]: the chance the local answer falls short.
    pub score: f32,
    pub prompt_tokens_estimate: u64,
}

impl Routing {
    /// Builds the routing of a checked policy over its backends.
    pub fn new(policy: &Policy, backends: &Backends) -> Result<Routing, String> {
        let routing = &policy.routing;
        let mut profiles = HashMap::new();
        profiles.insert(AUTO_MODEL.to_string(), routing.thresholds());
        for (alias, thresholds) in routing.aliases() {
            // The policy check refuses an alias named like a backend; one named
            // like an upstream model may be meant (clients written for `gpt-4o`
            // get routed), but it is said once.
            if let Some(backend) = backends.resolve(alias) {
                tracing::warn!(
                    alias,
                    backend = backend.name(),
                    "the alias is also this backend's upstream model name: requests for it are routed, not pinned to the backend"
                );
            }
            profiles.insert(alias.to_string(), thresholds);
        }
        let by_name = |name: &str| backends.all().iter().find(|b| b.name() == name).cloned();
        let difficulty = difficulty::DifficultyModel::of_policy(policy)?.map(Arc::new);
        Ok(Routing {
            profiles,
            local: routing.local_backend().and_then(by_name),
            remotes: routing.remote_backends().filter_map(by_name).collect(),
            passthrough: routing.passthrough_backend().and_then(by_name),
            privacy: PrivacyRules::from_config(&policy.privacy).map_err(|e| format!("privacy rules: {e}"))?,
            budgets: policy.budgets.as_ref().map(BudgetLimits::from_config),
            sticky: routing.sessions.sticky,
            mode: routing.mode(),
            shadow: routing.shadow.clone(),
            shadow_file: policy.base_dir.join(&routing.shadow.file),
            offline: false,
            difficulty,
        })
    }

    /// The local backend of the `local` tiers.
    pub fn local_backend(&self) -> Option<&Arc<Backend>> {
        self.local.as_ref()
    }

    /// The model that scores requests: the policy's `difficulty_model`, else the shipped one.
    pub fn difficulty_model(&self) -> &difficulty::DifficultyModel {
        self.difficulty
            .as_deref()
            .unwrap_or_else(|| difficulty::DifficultyModel::embedded())
    }

    /// The remote backend that serves the API's other endpoints (files,
    /// audio, images, ...): the policy's `passthrough_backend`, else the
    /// first of `remote_backends`.
    pub fn passthrough_backend(&self) -> Option<&Arc<Backend>> {
        self.passthrough.as_ref()
    }

    /// Whether the policy has privacy rules.
    pub fn has_privacy_rules(&self) -> bool {
        !self.privacy.is_empty()
    }

    /// The privacy rule `text` matches, if any.
    pub fn privacy_match(&self, text: &str) -> Option<&str> {
        self.privacy.first_match(text)
    }

    /// Whether requests for `model` are routed or only shadowed: a
    /// profile's own mode, else `routing.mode`; a named backend is routed.
    pub fn mode_of(&self, model: &str) -> Mode {
        self.profiles
            .get(model)
            .map_or(Mode::Route, |thresholds| thresholds.mode.unwrap_or(self.mode))
    }

    pub fn shadow(&self) -> &ShadowConfig {
        &self.shadow
    }

    /// Decides as a serving daemon would with every remote backend up: for
    /// the tools that replay traffic offline, where upstream keys are often
    /// not set.
    pub fn assume_remotes_ready(&mut self) {
        self.offline = true;
    }

    /// Where shadow comparisons are written.
    pub fn shadow_file(&self) -> &std::path::Path {
        &self.shadow_file
    }

    /// Whether `model` names a routing profile (`auto` or an alias).
    pub fn is_profile(&self, model: &str) -> bool {
        self.profiles.contains_key(model)
    }

    pub fn profile_names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn budgets(&self) -> Option<&BudgetLimits> {
        self.budgets.as_ref()
    }

    /// Admits a call outside chat (a priced pass-through or remote
    /// embeddings call) that may cost `usd`: `Ok(None)` when it is free or the
    /// policy sets no budgets, `Err` when the caller's budgets (counting calls
    /// in flight) are spent. No local model can stand in for these.
    pub async fn admit_call(
        &self,
        ledger: Option<&SpendBook>,
        caller: &Caller,
        usd: f64,
    ) -> Result<Option<Reservation>, ApiError> {
        // A priced call is checked even when nothing of it can be bounded in
        // advance (a per-minute price, a body of unknown length): a spent
        // budget refuses it, and its hold of zero is settled with its cost.
        match (ledger, &self.budgets) {
            (Some(ledger), Some(limits)) => {
                reserve(
                    ledger,
                    limits,
                    caller_name(caller),
                    usd.max(0.0),
                    Reason::RemoteOnlyEndpoint,
                )
                .await
            }
            _ => Ok(None),
        }
    }

    /// Where a request's conversation is looked up and remembered, when
    /// sessions are sticky and the request is routed (a pinned request has
    /// no tier to keep).
    pub fn session_keys(&self, request: &ChatRequest, caller: &Caller, hints: &Hints) -> Option<SessionKeys> {
        if !self.sticky || !self.is_profile(&request.model) {
            return None;
        }
        let caller = caller_name(caller).unwrap_or("");
        Some(match &hints.session {
            Some(session) => SessionKeys::named(caller, session),
            None => SessionKeys::from_messages(caller, request.messages().as_array().map_or(&[][..], Vec::as_slice)),
        })
    }

    /// The one entry point: where a validated request goes and why. A
    /// routing profile (`auto` and its aliases) is scored and decided by the
    /// rules; a backend the client named (or its upstream model) is checked
    /// against the cost limit, the privacy rules and the budgets, and pinned.
    /// `session_floor` is the tier the request's conversation has reached
    /// (looked up with [`Routing::session_keys`]); the caller remembers the
    /// decided tier under the same keys.
    pub fn decide(
        &self,
        request: &ChatRequest,
        caller: &Caller,
        hints: &Hints,
        backends: &Backends,
        ledger: Option<&SpendBook>,
        session_floor: Option<Tier>,
    ) -> Result<Decision, ApiError> {
        let text = features::text_for_scoring(request);
        let features = features::Features::extract(request, &text);
        let profile = self.is_profile(&request.model);
        let facts = RequestFacts {
            caller,
            hints,
            // Only a routing profile is scored.
            score: if profile {
                self.difficulty_model().score(&features, &text)
            } else {
                f32::NAN
            },
            prompt_tokens_estimate: features.prompt_tokens_estimate,
        };
        if profile {
            return self.route(request, &facts, ledger, session_floor);
        }
        let backend = backends
            .resolve(&request.model)
            .ok_or_else(|| ApiError::ModelNotFound(request.model.clone()))?;
        self.check_pinned(request, backend, &facts, ledger)?;
        Ok(Decision {
            tier: match backend.as_ref() {
                Backend::Local(_) => Tier::Local,
                Backend::Remote(_) => Tier::Remote,
            },
            reason: Reason::ModelPinned,
            score: None,
            backend: backend.clone(),
            pacing: 0.0,
            fallbacks: Fallbacks::default(),
            budget: self.claim(request, &facts, ledger, true),
        })
    }

    /// [`Routing::decide`] with sessions kept in this process's table: the
    /// conversation's floor looked up, and the decided tier remembered (the
    /// command-line tools, which have no shared store).
    pub fn decide_remembering(
        &self,
        request: &ChatRequest,
        caller: &Caller,
        hints: &Hints,
        backends: &Backends,
        ledger: Option<&SpendBook>,
        sessions: &sessions::Sessions,
    ) -> Result<Decision, ApiError> {
        let keys = self.session_keys(request, caller, hints);
        let decision = self.decide(
            request,
            caller,
            hints,
            backends,
            ledger,
            keys.and_then(|k| sessions.floor(k)),
        )?;
        if let Some(keys) = keys {
            sessions.remember(keys, decision.tier);
        }
        Ok(decision)
    }

    /// Whether the local backend serves the `local-reasoning` tier.
    fn local_reasons(&self) -> bool {
        self.local.as_deref().is_some_and(local_reasons)
    }

    /// The tier a request of `tier` is answered at: `local-reasoning` is
    /// plain `local` on a local model that does not reason.
    pub fn served(&self, tier: Tier) -> Tier {
        tier.served(self.local_reasons())
    }

    /// The remote backends that can take a call now, in order of preference.
    fn ready_remotes(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.remotes.iter().filter(|b| match b.as_ref() {
            Backend::Remote(_) if self.offline => true,
            Backend::Remote(remote) => remote.readiness().is_ok() && !remote.breaker().is_open(),
            Backend::Local(_) => false,
        })
    }

    /// A request that names a backend skips scoring and tiers, but not the
    /// privacy rules, a spent budget nor the client's own cost cap: none can be
    /// bypassed by naming a remote model.
    fn check_pinned(
        &self,
        request: &ChatRequest,
        backend: &Backend,
        facts: &RequestFacts<'_>,
        ledger: Option<&SpendBook>,
    ) -> Result<(), ApiError> {
        if let Backend::Local(_) = backend {
            return Ok(());
        }
        let estimate_usd = worst_case_usd(backend, request, facts.prompt_tokens_estimate);
        if facts.hints.max_cost_usd.is_some_and(|max| estimate_usd > max) {
            return Err(ApiError::Route(RouteError::MaxCostExceeded {
                estimate_usd,
                why: Reason::ModelPinned,
            }));
        }
        if !self.privacy.is_empty()
            && let Some(rule) = self.privacy.first_match(&privacy::egress_text(&request.body))
        {
            tracing::info!(privacy_rule = rule, "a privacy rule keeps this request on the machine");
            return Err(ApiError::Route(RouteError::PrivacyUnservable {
                rule: rule.to_string(),
                why: Reason::ModelPinned,
            }));
        }
        // With the shared store unreachable, admission alone decides (from
        // the fail-safe allowance) when the call goes out.
        if let (Some(ledger), Some(limits)) = (ledger, &self.budgets)
            && !ledger.degraded()
            && ledger.pacing(limits, caller_name(facts.caller)).exhausted()
        {
            return Err(ApiError::Route(RouteError::BudgetExhausted {
                why: Reason::ModelPinned,
            }));
        }
        Ok(())
    }

    /// Routes a request that asked for a profile.
    fn route(
        &self,
        request: &ChatRequest,
        facts: &RequestFacts<'_>,
        ledger: Option<&SpendBook>,
        session_floor: Option<Tier>,
    ) -> Result<Decision, ApiError> {
        let thresholds = *self
            .profiles
            .get(&request.model)
            .ok_or_else(|| ApiError::ModelNotFound(request.model.clone()))?;
        let caller_name = caller_name(facts.caller);
        let pacing = match (ledger, &self.budgets) {
            (Some(ledger), Some(limits)) => ledger.pacing(limits, caller_name),
            _ => Pacing::OFF,
        };
        let local = match &self.local {
            Some(backend) => match backend.as_ref() {
                Backend::Local(local) => local.eligibility(request, facts.prompt_tokens_estimate),
                Backend::Remote(_) => Err(Ineligible::Unavailable),
            },
            None => Err(Ineligible::Unavailable),
        };
        let local_reasons = self.local_reasons();
        let remote = self.ready_remotes().next();
        let remote_cost_estimate_usd = remote.map_or(0.0, |backend| {
            worst_case_usd(backend, request, facts.prompt_tokens_estimate)
        });
        let situation = Situation {
            score: facts.score,
            thresholds,
            local,
            local_reasons,
            remote_available: remote.is_some(),
            privacy_rule: if self.privacy.is_empty() {
                None
            } else {
                self.privacy
                    .first_match(&privacy::egress_text(&request.body))
                    .map(str::to_string)
            },
            tier_override: facts.hints.tier,
            session_floor,
            pacing: pacing.level,
            remote_cost_estimate_usd,
            max_cost_usd: facts.hints.max_cost_usd,
        };
        if let Some(rule) = &situation.privacy_rule {
            tracing::info!(privacy_rule = %rule, "a privacy rule keeps this request on the machine");
        }
        let degraded = ledger.is_some_and(SpendBook::degraded);
        let Verdict { tier, reason } = match decide::decide(&situation) {
            // The shared store is down: routed requests stay local, but one
            // the local model cannot serve may still go out, if the
            // fail-safe allowance admits it.
            Err(RouteError::BudgetExhausted { .. }) if degraded => decide::decide(&Situation {
                pacing: 0.0,
                ..situation.clone()
            }),
            decided => decided,
        }
        .map_err(ApiError::Route)?;
        let backend = match tier {
            Tier::Remote => remote.cloned(),
            Tier::Local | Tier::LocalReasoning => self.local.clone(),
        }
        .expect("decide only picks a tier whose backend is available");
        let remote_permitted = situation.privacy_rule.is_none()
            && (pacing.level < 1.0 || (degraded && tier == Tier::Remote))
            && facts
                .hints
                .max_cost_usd
                .is_none_or(|max| remote_cost_estimate_usd <= max);
        let fallbacks = Fallbacks {
            local: self.local.clone().filter(|_| situation.local.is_ok()),
            remotes: if remote_permitted {
                self.ready_remotes().cloned().collect()
            } else {
                Vec::new()
            },
        };
        Ok(Decision {
            tier,
            reason,
            score: Some(facts.score),
            backend,
            pacing: pacing.level,
            fallbacks,
            budget: self.claim(request, facts, ledger, false),
        })
    }

    /// The request's claim on the budgets, when the policy sets them;
    /// `pinned` when the request names its backend.
    fn claim(
        &self,
        request: &ChatRequest,
        facts: &RequestFacts<'_>,
        ledger: Option<&SpendBook>,
        pinned: bool,
    ) -> Option<BudgetClaim> {
        Some(BudgetClaim {
            ledger: ledger?.clone(),
            limits: self.budgets?,
            caller: caller_name(facts.caller).map(str::to_string),
            prompt_tokens: facts.prompt_tokens_estimate,
            max_tokens: request.max_tokens,
            choices: u64::from(request.sampling.n.unwrap_or(1)),
            why: if pinned {
                Reason::ModelPinned
            } else {
                Reason::BudgetExhausted
            },
            ahead: Arc::default(),
        })
    }
}

pub fn caller_name(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Client(name) => Some(name),
        Caller::Anonymous => None,
    }
}

/// Whether a backend serves the `local-reasoning` tier (remote ones never do).
pub fn local_reasons(backend: &Backend) -> bool {
    match backend {
        Backend::Local(local) => local.reasons(),
        Backend::Remote(_) => false,
    }
}

/// What a backend charges; local models are free.
pub fn price_of(backend: &Backend) -> Price {
    match backend {
        Backend::Remote(remote) => remote.price(),
        Backend::Local(_) => Price::FREE,
    }
}

/// Shapes a request for the local tier it was routed to: reasoning on or off
/// (the router's choice overrides the client's `reasoning_effort`), and the
/// chat template's `enable_thinking` switch (Qwen3's native thinking) set to
/// match unless the client set it.
pub fn prepare_for_tier(request: &mut ChatRequest, tier: Tier) {
    if tier == Tier::Remote {
        return;
    }
    request.reasoning = tier == Tier::LocalReasoning;
    if let Value::Object(kwargs) = request
        .body
        .entry("chat_template_kwargs")
        .or_insert_with(|| Value::Object(Default::default()))
    {
        kwargs
            .entry("enable_thinking")
            .or_insert(Value::Bool(request.reasoning));
    }
}
