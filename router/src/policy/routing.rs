//! The `routing`, `ladder`, `privacy` and `budgets` sections: profiles and
//! thresholds, sticky sessions, the escalation ladder, privacy rules and
//! spending limits.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::*;

/// How `auto` requests are routed: which backends play the local and remote
/// parts, the score thresholds between tiers, and the aliases clients may ask for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// The local backend that answers the `local` and `local-reasoning` tiers.
    pub(super) local_backend: Option<Spanned<String>>,
    /// Remote backends for the `remote` tier, in order of preference.
    #[serde(default)]
    pub(super) remote_backends: Vec<Spanned<String>>,
    /// The remote backend whose prices make the all-cloud baseline that
    /// savings are measured against (default: the first of `remote_backends`,
    /// else the first remote backend).
    pub(super) baseline_backend: Option<Spanned<String>>,
    /// The remote backend that serves the API's other endpoints (files,
    /// audio, images, ..., and embeddings for a model not served here),
    /// passed through as sent (default: the first of `remote_backends`).
    pub(super) passthrough_backend: Option<Spanned<String>>,
    /// The profile of `model: "auto"`.
    #[serde(default = "default_thresholds")]
    pub(super) thresholds: Spanned<Thresholds>,
    /// Other profiles clients may name as `model`, e.g. `auto-fast`, `auto-quality`.
    #[serde(default)]
    pub(super) aliases: std::collections::BTreeMap<String, Spanned<Thresholds>>,
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// `route` (default): requests go where the routing sends them.
    /// `shadow`: each still goes to the remote model and its client gets
    /// that answer; a sampled share is also answered locally in the
    /// background and compared (see `shadow`). An alias may set its own.
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub shadow: ShadowConfig,
    /// A difficulty model file (`switchyard route train`'s `difficulty.bin`)
    /// to score requests with instead of the shipped one, relative to the
    /// policy file: one trained on the local model's own labels.
    pub(super) difficulty_model: Option<Spanned<String>>,
}

/// Whether a routing profile routes, or only shadows.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Route,
    Shadow,
}

/// Shadow mode's local work and its record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// The share of shadowed requests also answered locally, in [0, 1].
    pub sample: f64,
    /// Local shadow answers at once; a sampled request finding them all busy
    /// (or the local model serving clients) is skipped.
    pub max_concurrent: usize,
    /// The most tokens a shadow answer may take.
    pub max_tokens: u64,
    /// The file comparisons are appended to, relative to the policy file.
    pub file: String,
    /// When the file passes this size it is rotated (`FILE.1`, `FILE.2`, ...).
    pub max_file_mb: u64,
    /// Rotated files kept.
    pub keep_files: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            sample: 0.1,
            max_concurrent: 1,
            max_tokens: 256,
            file: "shadow.jsonl".to_string(),
            max_file_mb: 64,
            keep_files: 3,
        }
    }
}

impl RoutingConfig {
    /// `routing.mode`: the mode of every profile that sets none.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn local_backend(&self) -> Option<&str> {
        self.local_backend.as_ref().map(|name| name.value.as_str())
    }

    pub fn remote_backends(&self) -> impl Iterator<Item = &str> {
        self.remote_backends.iter().map(|name| name.value.as_str())
    }

    /// See [`RoutingConfig::passthrough_backend`]'s field.
    pub fn passthrough_backend(&self) -> Option<&str> {
        self.passthrough_backend
            .as_ref()
            .map(|name| name.value.as_str())
            .or_else(|| self.remote_backends().next())
    }

    /// See [`RoutingConfig::difficulty_model`]'s field.
    pub fn difficulty_model(&self) -> Option<&str> {
        self.difficulty_model.as_ref().map(|path| path.value.as_str())
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds.value
    }

    /// The aliases and their profiles, in the order of their names.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, Thresholds)> {
        self.aliases
            .iter()
            .map(|(alias, thresholds)| (alias.as_str(), thresholds.value))
    }
}

/// Thresholds for the shipped difficulty model, the same as the default
/// policy's: the quartiles of its score on held-out MMLU (docs/routing.md,
/// "Held-out MMLU"). A quarter of such prompts stay local, a quarter go remote.
fn default_thresholds() -> Spanned<Thresholds> {
    unspanned(BUILT_IN_THRESHOLDS)
}

pub(super) const BUILT_IN_THRESHOLDS: Thresholds = Thresholds {
    local_below: 0.537,
    remote_above: 0.578,
    ambiguous: AmbiguousChoice::LocalReasoning,
    mode: None,
};

/// A routing profile: `local` below `local_below`, `remote` from `remote_above`
/// up, and in between whatever `ambiguous` says.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub local_below: f32,
    pub remote_above: f32,
    pub ambiguous: AmbiguousChoice,
    /// This profile's mode, over `routing.mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// Where a request whose score falls between the two thresholds goes: the local
/// model thinking step by step (free, slower) or the remote model (paid, better).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AmbiguousChoice {
    LocalReasoning,
    Remote,
}

/// Sticky sessions: a conversation's tier only goes up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub sticky: bool,
    /// How long a conversation is remembered after its last request.
    pub(super) ttl_s: Spanned<u64>,
    /// Conversations remembered at once; the least recently used are forgotten.
    pub(super) max_entries: Spanned<usize>,
}

impl SessionsConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s.value)
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries.value
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            sticky: true,
            ttl_s: unspanned(3600),
            max_entries: unspanned(100_000),
        }
    }
}

/// The escalation ladder: a local answer that looks weak climbs to the next
/// tier (local -> local-reasoning -> remote) before the client sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LadderConfig {
    pub enabled: bool,
    /// Streamed local answers are held back for this many tokens...
    pub(super) precommit_tokens: Spanned<u32>,
    /// ...or this long, whichever comes first; then the choice is final.
    pub(super) precommit_ms: Spanned<u64>,
    /// An answer whose mean token log-probability is below this is weak.
    pub(super) min_mean_logprob: Spanned<f64>,
    /// Confidence is judged from this many tokens on.
    pub(super) min_tokens: Spanned<u32>,
}

impl LadderConfig {
    pub fn precommit_tokens(&self) -> u32 {
        self.precommit_tokens.value
    }

    pub fn precommit(&self) -> Duration {
        Duration::from_millis(self.precommit_ms.value)
    }

    pub fn min_mean_logprob(&self) -> f64 {
        self.min_mean_logprob.value
    }

    pub fn min_tokens(&self) -> u32 {
        self.min_tokens.value
    }
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            precommit_tokens: unspanned(16),
            precommit_ms: unspanned(1500),
            min_mean_logprob: unspanned(DEFAULT_MIN_MEAN_LOGPROB),
            min_tokens: unspanned(4),
        }
    }
}

/// See docs/reliability.md, "What the ladder buys", for how this was calibrated.
pub const DEFAULT_MIN_MEAN_LOGPROB: f64 = -2.0;

/// Privacy rules: a request that matches any of them is never sent to a remote
/// backend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Built-in detectors to run.
    #[serde(default)]
    pub(super) detectors: Vec<Spanned<Detector>>,
    /// Custom rules: a name (reported in logs, never the match) and a regex.
    #[serde(default)]
    pub patterns: Vec<PatternConfig>,
}

impl PrivacyConfig {
    pub fn detectors(&self) -> impl Iterator<Item = Detector> {
        self.detectors.iter().map(|detector| detector.value)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Detector {
    /// E-mail addresses.
    Email,
    /// Phone numbers (international or national formats, 9 to 15 digits).
    Phone,
    /// Payment card numbers (13 to 19 digits passing the Luhn check).
    Card,
    /// IBANs passing the mod-97 check.
    Iban,
    /// API keys, tokens and private keys in well-known formats.
    Secret,
}

impl Detector {
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Card => "card",
            Detector::Iban => "iban",
            Detector::Secret => "secret",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub(super) name: Spanned<String>,
    pub(super) regex: Spanned<String>,
}

impl PatternConfig {
    pub fn name(&self) -> &str {
        &self.name.value
    }

    pub fn regex(&self) -> &str {
        &self.regex.value
    }
}

/// Spending limits in USD. Remote spend is paced: as a budget fills past
/// `pacing_from`, the score needed to go remote rises smoothly; at the limit,
/// only requests that cannot be answered locally may still go remote, and they
/// are refused instead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// Where spend is kept across restarts, relative to the policy file
    /// (with `state.backend: memory`; with a shared store, spend lives there).
    pub(super) state_file: Option<Spanned<String>>,
    /// The fraction of a budget from which pacing starts.
    #[serde(default = "default_pacing_from")]
    pub(super) pacing_from: Spanned<f64>,
    /// Limits on all spend together.
    #[serde(default)]
    pub global: Limits,
    /// Limits for each client key (by its name in `auth.keys`).
    #[serde(default)]
    pub per_key: Limits,
}

impl BudgetsConfig {
    /// The state file; the policy check has made sure there is one when
    /// spend is kept in the process.
    pub fn state_file(&self) -> Option<&str> {
        self.state_file.as_ref().map(|f| f.value.as_str())
    }

    /// A problem with the state file (it cannot be opened, say), located at
    /// `state_file` so that start-up points at the line to fix like any
    /// problem of the file.
    pub fn state_file_problem(&self, message: impl Into<String>) -> Problem {
        match &self.state_file {
            Some(file) => Problem::at(file, message),
            None => Problem::whole(message),
        }
    }

    pub fn pacing_from(&self) -> f64 {
        self.pacing_from.value
    }
}

/// The largest budget limit: spend is counted in nano-dollars, exact in
/// integers and in the shared store's scripts up to about $9M.
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;

fn default_pacing_from() -> Spanned<f64> {
    unspanned(0.5)
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

impl Policy {
    pub(super) fn routing_problems(&self, backend_names: &HashSet<&str>, problems: &mut Vec<Problem>) {
        let routing = &self.routing;
        let is_local = |name: &str| self.backends.local.iter().any(|b| b.name.value == name);
        let is_remote = |name: &str| self.backends.remote.iter().any(|b| b.name.value == name);
        if let Some(local) = &routing.local_backend
            && !is_local(&local.value)
        {
            problems.push(Problem::at(
                local,
                format!("local_backend {:?} is not a configured local backend", local.value),
            ));
        }
        let mut seen = HashSet::new();
        for remote in &routing.remote_backends {
            if !is_remote(&remote.value) {
                problems.push(Problem::at(
                    remote,
                    format!("{:?} is not a configured remote backend", remote.value),
                ));
            }
            if !seen.insert(remote.value.as_str()) {
                problems.push(Problem::at(remote, format!("{:?} is listed twice", remote.value)));
            }
        }
        for (key, name) in [
            ("baseline_backend", &routing.baseline_backend),
            ("passthrough_backend", &routing.passthrough_backend),
        ] {
            if let Some(name) = name
                && !is_remote(&name.value)
            {
                problems.push(Problem::at(
                    name,
                    format!("{key} {:?} is not a configured remote backend", name.value),
                ));
            }
        }
        if routing.local_backend.is_none() && routing.remote_backends.is_empty() {
            problems.push(Problem {
                line: 0,
                column: 0,
                message: "routing needs a local_backend or at least one of remote_backends".into(),
            });
        }
        check_thresholds(&routing.thresholds, problems);
        let shadow = &routing.shadow;
        if !(0.0..=1.0).contains(&shadow.sample) || shadow.max_concurrent == 0 || shadow.max_file_mb == 0 {
            problems.push(Problem {
                line: 0,
                column: 0,
                message: "routing.shadow needs 0 <= sample <= 1, max_concurrent >= 1 and max_file_mb >= 1".into(),
            });
        }
        for (alias, thresholds) in &routing.aliases {
            if !is_model_name(alias) || alias == AUTO_MODEL || backend_names.contains(alias.as_str()) {
                problems.push(Problem::at(
                    thresholds,
                    format!("alias {alias:?} must be a model name that is neither \"auto\" nor a backend's name"),
                ));
            }
            check_thresholds(thresholds, problems);
        }
        let sessions = &routing.sessions;
        if sessions.ttl_s.value == 0 {
            problems.push(Problem::at(&sessions.ttl_s, "ttl_s must be positive"));
        }
        if sessions.max_entries.value == 0 {
            problems.push(Problem::at(&sessions.max_entries, "max_entries must be positive"));
        }
    }

    pub(super) fn privacy_problems(&self, problems: &mut Vec<Problem>) {
        let mut names = HashSet::new();
        for pattern in &self.privacy.patterns {
            if !is_model_name(&pattern.name.value) {
                problems.push(Problem::at(
                    &pattern.name,
                    "pattern name must be 1-64 characters of letters, digits, '-', '_', '.', ':' or '/'",
                ));
            }
            if !names.insert(pattern.name.value.as_str()) {
                problems.push(Problem::at(&pattern.name, "duplicate pattern name"));
            }
            if let Err(err) = regex::Regex::new(&pattern.regex.value) {
                let first = err.to_string().lines().last().unwrap_or("invalid").trim().to_string();
                problems.push(Problem::at(&pattern.regex, format!("invalid regex: {first}")));
            }
        }
    }
}

impl LadderConfig {
    /// Problems of the `ladder` section.
    pub(super) fn problems(&self, problems: &mut Vec<Problem>) {
        let ladder = self;
        if ladder.precommit_ms.value == 0 && ladder.precommit_tokens.value == 0 {
            problems.push(Problem::at(
                &ladder.precommit_ms,
                "give a pre-commit window in tokens or ms",
            ));
        }
        if !(ladder.min_mean_logprob.value.is_finite() && ladder.min_mean_logprob.value <= 0.0) {
            problems.push(Problem::at(
                &ladder.min_mean_logprob,
                "min_mean_logprob must be a log-probability (<= 0)",
            ));
        }
    }
}

pub(super) fn check_thresholds(t: &Spanned<Thresholds>, problems: &mut Vec<Problem>) {
    let Thresholds {
        local_below,
        remote_above,
        ..
    } = t.value;
    if !((0.0..=1.0).contains(&local_below) && (0.0..=1.0).contains(&remote_above) && local_below <= remote_above) {
        problems.push(Problem::at(t, "thresholds need 0 <= local_below <= remote_above <= 1"));
    }
}

pub(super) fn budget_problems(budgets: &BudgetsConfig, backend: StateBackend, problems: &mut Vec<Problem>) {
    match (&budgets.state_file, backend) {
        (Some(file), StateBackend::Memory) if file.value.trim().is_empty() => {
            problems.push(Problem::at(file, "state_file must not be empty"));
        }
        (Some(file), StateBackend::Redis) => problems.push(Problem::at(
            file,
            "with state.backend redis, spend is kept in the shared store: remove budgets.state_file",
        )),
        (None, StateBackend::Memory) => problems.push(Problem::whole(
            "budgets needs a state_file (where spend is kept across restarts), or state.backend: redis to keep it in a store shared by replicas",
        )),
        _ => {}
    }
    if !(0.0..1.0).contains(&budgets.pacing_from.value) {
        problems.push(Problem::at(
            &budgets.pacing_from,
            "pacing_from must be at least 0 and below 1",
        ));
    }
    for (scope, limits) in [("global", budgets.global), ("per_key", budgets.per_key)] {
        for limit in [limits.daily_usd, limits.monthly_usd].into_iter().flatten() {
            if !(limit.is_finite() && limit > 0.0 && limit <= MAX_BUDGET_USD) {
                problems.push(budgets.state_file_problem(format!(
                    "budgets.{scope}: limits must be positive numbers of USD, at most {MAX_BUDGET_USD}"
                )));
            }
        }
    }
}
