//! The policy file: one YAML document that says where Switchyard listens, who may
//! call it, and which backends answer.
//!
//! Loading is two steps, and every problem from either step carries the
//! `line:column` it came from:
//!
//! 1. **Shape** — serde turns the YAML into the typed structs below. Unknown keys
//!    are rejected (`deny_unknown_fields` everywhere), so a typo such as
//!    `api_key_evn` fails loudly instead of silently falling back to a default.
//! 2. **Meaning** — [`Policy::problems`] checks what types cannot express: unique
//!    backend names, well-formed URLs, sane timeouts, that `auto` points at a
//!    backend that exists. It reports *all* problems at once, not just the first,
//!    so `switchyard policy check` is useful as an editor loop.
//!
//! Values that need a location for step 2 are wrapped in [`Spanned`].
//! The file never holds secrets: upstream keys and client keys are named by the
//! environment variable that holds them (client keys may also be given as a
//! SHA-256 digest).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;
use switchyard_engine::sampling::SamplingParams;

/// Default request body limit. OpenAI itself accepts bodies far larger than any
/// sane chat request; 4 MiB holds ~1M tokens of text, well past any context window
/// we route to, while bounding what one request can make us buffer.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The model alias that lets Switchyard choose the backend.
pub const AUTO_MODEL: &str = "auto";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    pub backends: BackendsConfig,
    pub routing: RoutingConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    pub budgets: Option<BudgetsConfig>,
    #[serde(default)]
    pub ladder: LadderConfig,
    /// The directory of the policy file: relative paths in it are resolved from here.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Spanned<String>,
    pub max_body_bytes: Spanned<usize>,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    pub shutdown_drain_ms: u64,
    /// One request's deadline across all its upstream attempts and fallbacks
    /// (until a remote answer starts), and for the whole of a local answer,
    /// streamed or not (the engine stops it there).
    pub request_deadline_ms: Spanned<u64>,
    /// Serve `/metrics` and keep the Prometheus counters (off only to measure
    /// what they cost).
    pub metrics: bool,
    /// Listen on an address other than loopback with no client keys. Off,
    /// that is refused: anyone who can reach the address could spend the
    /// upstream budget (LiteLLM likewise refuses to start without a master
    /// key). On, for a network that is itself the boundary; a warning stays.
    pub allow_unauthenticated: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: unspanned("127.0.0.1:8080".to_string()),
            max_body_bytes: unspanned(DEFAULT_MAX_BODY_BYTES),
            shutdown_drain_ms: 30_000,
            request_deadline_ms: unspanned(180_000),
            metrics: true,
            allow_unauthenticated: false,
        }
    }
}

impl ServerConfig {
    /// The listen address; [`Policy::problems`] has already checked it parses.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.value.parse()
    }
}

/// Client authentication. With no keys listed, auth is off: fine on loopback;
/// elsewhere refused unless `server.allow_unauthenticated` says so (then
/// `switchyard serve` warns).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub keys: Vec<ClientKeyConfig>,
}

/// One client key. `name` identifies the caller in logs (and later in budgets);
/// the key itself comes from the environment or is given only as its digest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    pub name: Spanned<String>,
    /// Environment variable holding the key.
    pub key_env: Option<Spanned<String>>,
    /// Lower-case hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub key_sha256: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    #[serde(default)]
    pub remote: Vec<RemoteBackendConfig>,
    #[serde(default)]
    pub local: Vec<LocalBackendConfig>,
}

/// A GGUF model run in-process by the engine. Its price is zero.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBackendConfig {
    pub name: Spanned<String>,
    /// Path to the GGUF file, relative to the policy file's directory.
    pub model_path: Spanned<String>,
    /// Compute threads for this model.
    #[serde(default = "default_threads")]
    pub threads: Spanned<usize>,
    /// Caps the model's own context window (and with it the largest KV cache).
    pub context_length: Option<Spanned<u64>>,
    /// Requests that may wait while one generates; more get a 429.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: Spanned<usize>,
    /// How long a request may wait for the engine to take it up; past that it
    /// is treated like a full queue (answered remotely when the policy allows,
    /// else a 429). Unset: as long as the request's deadline allows.
    pub max_queue_wait_ms: Option<Spanned<u64>>,
    /// `max_tokens` for requests that give none (default: the rest of the context).
    pub default_max_tokens: Option<Spanned<u64>>,
    /// Token budget of the reasoning pass (`local-reasoning`, or a client's
    /// `reasoning_effort`), on top of the answer's own `max_tokens`.
    #[serde(default = "default_reasoning_max_tokens")]
    pub reasoning_max_tokens: Spanned<u64>,
    /// Whether this model serves the `local-reasoning` tier. `false` for a
    /// model whose reasoning pass does not help (measure it with
    /// `bench/local_reasoning.py`): what would be answered reasoning is answered
    /// plainly, tier `local`, and a weak local answer climbs straight to remote.
    #[serde(default = "default_reasoning")]
    pub reasoning: bool,
    /// Sampling for requests that leave a parameter out. OpenAI's own defaults
    /// (temperature 1, top_p 1) suit large models; small ones do better with the
    /// values their authors publish.
    #[serde(default)]
    pub sampling: SamplingDefaults,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
}

impl SamplingDefaults {
    /// These defaults as the engine's parameters (no penalties, no seed).
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            ..SamplingParams::default()
        }
    }
}

impl Default for SamplingDefaults {
    /// The engine's own defaults (OpenAI's).
    fn default() -> Self {
        let p = SamplingParams::default();
        Self {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
        }
    }
}

fn default_threads() -> Spanned<usize> {
    unspanned(switchyard_engine::engine::default_threads())
}

fn default_reasoning() -> bool {
    true
}

fn default_reasoning_max_tokens() -> Spanned<u64> {
    unspanned(256)
}

fn default_queue_capacity() -> Spanned<usize> {
    unspanned(8)
}

/// A remote, OpenAI-compatible endpoint (OpenAI, Together, Groq, vLLM, ...).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteBackendConfig {
    pub name: Spanned<String>,
    /// Everything before `/chat/completions`, e.g. `https://api.openai.com/v1`.
    pub base_url: Spanned<String>,
    /// Environment variable holding the upstream key; absent for endpoints that
    /// need none (a local vLLM, say).
    pub api_key_env: Option<Spanned<String>>,
    /// The model name sent upstream. Clients may ask for it by this name too, so
    /// code written against the provider works unchanged behind Switchyard.
    pub model: Spanned<String>,
    pub price: Price,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Largest `max_tokens` the upstream model accepts; requests above it are
    /// refused here with a 400 instead of spending a round trip.
    pub max_output_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// Retries of failed upstream calls (connect errors, timeouts, 429, 500, 502,
/// 503, 504), never after the client has received response bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 = no retries).
    pub max_attempts: Spanned<u32>,
    /// The delay before the first retry; it doubles each time, with full jitter.
    pub base_delay_ms: Spanned<u64>,
    /// The longest delay; a `Retry-After` longer than this moves on to the next
    /// backend instead of waiting.
    pub max_delay_ms: Spanned<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: unspanned(3),
            base_delay_ms: unspanned(200),
            max_delay_ms: unspanned(5_000),
        }
    }
}

/// The circuit breaker: after `failure_threshold` failed calls in a row the
/// backend is skipped for `cooldown_ms`; then one probe call decides whether it
/// is back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub failure_threshold: Spanned<u32>,
    pub cooldown_ms: Spanned<u64>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: unspanned(5),
            cooldown_ms: unspanned(30_000),
        }
    }
}

/// Prices in USD per million tokens, as providers publish them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok_usd: f64,
    pub output_per_mtok_usd: f64,
}

impl Price {
    /// A local model's price.
    pub const FREE: Price = Price {
        input_per_mtok_usd: 0.0,
        output_per_mtok_usd: 0.0,
    };

    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok_usd + completion_tokens as f64 * self.output_per_mtok_usd) / 1e6
    }
}

/// Upstream timeouts, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect_ms: Spanned<u64>,
    /// From sending the request to the response headers. Reasoning models can
    /// think for a long time before their first byte, hence the generous default.
    pub first_byte_ms: Spanned<u64>,
    /// Longest silence allowed between two pieces of a streamed answer.
    pub idle_ms: Spanned<u64>,
    /// Whole request, first byte to last.
    pub total_ms: Spanned<u64>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: unspanned(5_000),
            first_byte_ms: unspanned(120_000),
            idle_ms: unspanned(60_000),
            total_ms: unspanned(600_000),
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms.value)
    }
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms.value)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.value)
    }
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms.value)
    }
}

/// How `auto` requests are routed: which backends play the local and remote
/// parts, the score thresholds between tiers, and the aliases clients may ask for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// The local backend that answers the `local` and `local-reasoning` tiers.
    pub local_backend: Option<Spanned<String>>,
    /// Remote backends for the `remote` tier, in order of preference.
    #[serde(default)]
    pub remote_backends: Vec<Spanned<String>>,
    /// The remote backend whose prices make the all-cloud baseline that
    /// savings are measured against (default: the first of `remote_backends`,
    /// else the first remote backend).
    pub baseline_backend: Option<Spanned<String>>,
    /// The profile of `model: "auto"`.
    #[serde(default = "default_thresholds")]
    pub thresholds: Spanned<Thresholds>,
    /// Other profiles clients may name as `model`, e.g. `auto-fast`, `auto-quality`.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, Spanned<Thresholds>>,
    #[serde(default)]
    pub sessions: SessionsConfig,
}

/// Thresholds for the shipped difficulty model, the same as the default
/// policy's: the quartiles of its score on held-out MMLU (docs/routing.md,
/// "Held-out MMLU"). A quarter of such prompts stay local, a quarter go remote.
fn default_thresholds() -> Spanned<Thresholds> {
    unspanned(Thresholds {
        local_below: 0.537,
        remote_above: 0.578,
        ambiguous: AmbiguousChoice::LocalReasoning,
    })
}

/// A routing profile: `local` below `local_below`, `remote` from `remote_above`
/// up, and in between whatever `ambiguous` says.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub local_below: f32,
    pub remote_above: f32,
    pub ambiguous: AmbiguousChoice,
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
    pub ttl_s: Spanned<u64>,
    /// Conversations remembered at once; the least recently used are forgotten.
    pub max_entries: Spanned<usize>,
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
    pub precommit_tokens: Spanned<u32>,
    /// ...or this long, whichever comes first; then the choice is final.
    pub precommit_ms: Spanned<u64>,
    /// An answer whose mean token log-probability is below this is weak.
    pub min_mean_logprob: Spanned<f64>,
    /// Confidence is judged from this many tokens on.
    pub min_tokens: Spanned<u32>,
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
    pub detectors: Vec<Spanned<Detector>>,
    /// Custom rules: a name (reported in logs, never the match) and a regex.
    #[serde(default)]
    pub patterns: Vec<PatternConfig>,
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
    pub name: Spanned<String>,
    pub regex: Spanned<String>,
}

/// Spending limits in USD. Remote spend is paced: as a budget fills past
/// `pacing_from`, the score needed to go remote rises smoothly; at the limit,
/// only requests that cannot be answered locally may still go remote, and they
/// are refused instead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// Where spend is kept across restarts, relative to the policy file.
    pub state_file: Spanned<String>,
    /// The fraction of a budget from which pacing starts.
    #[serde(default = "default_pacing_from")]
    pub pacing_from: Spanned<f64>,
    /// Limits on all spend together.
    #[serde(default)]
    pub global: Limits,
    /// Limits for each client key (by its name in `auth.keys`).
    #[serde(default)]
    pub per_key: Limits,
}

fn default_pacing_from() -> Spanned<f64> {
    unspanned(0.5)
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

/// One thing wrong with a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the location is unknown (a default value, say).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl Problem {
    /// A problem of the file as a whole (line and column 0).
    pub(crate) fn whole(message: impl Into<String>) -> Self {
        Self {
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    pub(crate) fn at<T>(spanned: &Spanned<T>, message: impl Into<String>) -> Self {
        Self {
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Why a policy could not be loaded: the file could not be read, or it has problems.
#[derive(Debug)]
pub enum PolicyError {
    Read(std::io::Error),
    Invalid(Vec<Problem>),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Read(err) => write!(f, "cannot read policy file: {err}"),
            PolicyError::Invalid(problems) => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    /// The error as a report on the file it came from: one `FILE:LINE:COL: problem`
    /// line per problem, or `FILE: cannot read: ...`.
    pub fn in_file(&self, path: &Path) -> String {
        match self {
            PolicyError::Read(err) => format!("{}: cannot read: {err}", path.display()),
            PolicyError::Invalid(problems) => problems
                .iter()
                .map(|problem| format!("{}:{problem}", path.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl Policy {
    /// Reads, parses and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(PolicyError::Read)?;
        let mut policy = Policy::parse(&text)?;
        policy.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(policy)
    }

    /// Parses and checks policy text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy =
            serde_saphyr::from_str(text).map_err(|err| PolicyError::Invalid(vec![shape_problem(&err, text)]))?;
        let problems = policy.problems();
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError::Invalid(problems))
        }
    }

    /// Every problem of meaning in an already well-shaped policy.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let server = &self.server;
        if server.listen_addr().is_err() {
            problems.push(Problem::at(
                &server.listen,
                format!(
                    "listen address {:?} is not IP:PORT (for example 127.0.0.1:8080)",
                    server.listen.value
                ),
            ));
        }
        if let Ok(listen) = server.listen_addr()
            && let Some(problem) = self.unauthenticated_exposure(listen, "server.listen")
        {
            problems.push(problem);
        }
        if server.max_body_bytes.value == 0 {
            problems.push(Problem::at(&server.max_body_bytes, "max_body_bytes must be positive"));
        }
        if server.request_deadline_ms.value == 0 {
            problems.push(Problem::at(
                &server.request_deadline_ms,
                "request_deadline_ms must be positive",
            ));
        }

        let mut key_names = HashSet::new();
        for key in &self.auth.keys {
            if !key_names.insert(key.name.value.as_str()) {
                problems.push(Problem::at(
                    &key.name,
                    format!("duplicate client key name {:?}", key.name.value),
                ));
            }
            match (&key.key_env, &key.key_sha256) {
                (Some(_), Some(sha)) => problems.push(Problem::at(sha, "give key_env or key_sha256, not both")),
                (None, None) => problems.push(Problem::at(&key.name, "client key needs key_env or key_sha256")),
                (Some(env), None) => check_env_name(env, &mut problems),
                (None, Some(sha)) => {
                    let valid = sha.value.len() == 64
                        && sha
                            .value
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    if !valid {
                        problems.push(Problem::at(sha, "key_sha256 must be 64 lower-case hex digits"));
                    }
                }
            }
        }

        let mut backend_names = HashSet::new();
        for backend in &self.backends.remote {
            check_backend_name(&backend.name, &mut backend_names, &mut problems);
            check_base_url(&backend.base_url, &mut problems);
            if let Some(env) = &backend.api_key_env {
                check_env_name(env, &mut problems);
            }
            if backend.model.value.trim().is_empty() {
                problems.push(Problem::at(&backend.model, "model must not be empty"));
            }
            let price = backend.price;
            let price_ok = |p: f64| p.is_finite() && p >= 0.0;
            if !price_ok(price.input_per_mtok_usd) || !price_ok(price.output_per_mtok_usd) {
                problems.push(Problem::at(&backend.name, "prices must be finite and not negative"));
            }
            let t = &backend.timeouts;
            for timeout in [&t.connect_ms, &t.first_byte_ms, &t.idle_ms, &t.total_ms] {
                if timeout.value == 0 {
                    problems.push(Problem::at(timeout, "timeouts must be positive"));
                }
            }
            if t.first_byte_ms.value > t.total_ms.value {
                problems.push(Problem::at(&t.first_byte_ms, "first_byte_ms is longer than total_ms"));
            }
            if let Some(max) = &backend.max_output_tokens
                && max.value == 0
            {
                problems.push(Problem::at(max, "max_output_tokens must be positive"));
            }
            let retry = &backend.retry;
            if !(1..=10).contains(&retry.max_attempts.value) {
                problems.push(Problem::at(&retry.max_attempts, "max_attempts must be from 1 to 10"));
            }
            if retry.base_delay_ms.value > retry.max_delay_ms.value {
                problems.push(Problem::at(
                    &retry.base_delay_ms,
                    "base_delay_ms is longer than max_delay_ms",
                ));
            }
            if backend.breaker.failure_threshold.value == 0 {
                problems.push(Problem::at(
                    &backend.breaker.failure_threshold,
                    "failure_threshold must be positive",
                ));
            }
        }
        for backend in &self.backends.local {
            check_backend_name(&backend.name, &mut backend_names, &mut problems);
            if backend.model_path.value.trim().is_empty() {
                problems.push(Problem::at(&backend.model_path, "model_path must not be empty"));
            }
            if !(1..=256).contains(&backend.threads.value) {
                problems.push(Problem::at(&backend.threads, "threads must be from 1 to 256"));
            }
            if backend.queue_capacity.value == 0 {
                problems.push(Problem::at(&backend.queue_capacity, "queue_capacity must be positive"));
            }
            if let Some(wait) = &backend.max_queue_wait_ms
                && wait.value == 0
            {
                problems.push(Problem::at(
                    wait,
                    "max_queue_wait_ms must be positive (leave it out for no limit)",
                ));
            }
            if let Err(why) = backend.sampling.params().validate() {
                problems.push(Problem::at(&backend.name, format!("sampling defaults: {why}")));
            }
            for limit in [&backend.context_length, &backend.default_max_tokens]
                .into_iter()
                .flatten()
                .chain([&backend.reasoning_max_tokens])
            {
                if limit.value == 0 {
                    problems.push(Problem::at(limit, "must be positive"));
                }
            }
        }
        if self.backends.remote.is_empty() && self.backends.local.is_empty() {
            problems.push(Problem {
                line: 0,
                column: 0,
                message: "no backends are configured".into(),
            });
        }
        self.routing_problems(&backend_names, &mut problems);
        let ladder = &self.ladder;
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
        self.privacy_problems(&mut problems);
        if let Some(budgets) = &self.budgets {
            budget_problems(budgets, &mut problems);
        }
        problems
    }
}

impl Policy {
    /// Listening on `listen` (a non-loopback address) with no client keys, unless
    /// `server.allow_unauthenticated` allows it, is a problem located at
    /// `server.listen`; `origin` says where the address came from
    /// (`server.listen`, or `--listen` when the command line overrides it).
    /// Start, reload and `policy check` all ask this one question.
    pub fn unauthenticated_exposure(&self, listen: SocketAddr, origin: &str) -> Option<Problem> {
        if listen.ip().is_loopback() || !self.auth.keys.is_empty() || self.server.allow_unauthenticated {
            return None;
        }
        Some(Problem::at(
            &self.server.listen,
            format!(
                "{origin} {listen} is not a loopback address and auth.keys lists no client key: anyone who can reach it could spend your upstream budget; list client keys, or set server.allow_unauthenticated: true if the network is the boundary"
            ),
        ))
    }

    /// The all-cloud baseline: the backend named by `routing.baseline_backend`,
    /// else the first of `routing.remote_backends`, else the first remote backend.
    pub fn baseline(&self) -> Option<(&str, Price)> {
        let by_name = |name: &str| self.backends.remote.iter().find(|b| b.name.value == name);
        self.routing
            .baseline_backend
            .as_ref()
            .or(self.routing.remote_backends.first())
            .and_then(|n| by_name(&n.value))
            .or(self.backends.remote.first())
            .map(|b| (b.name.value.as_str(), b.price))
    }

    fn routing_problems(&self, backend_names: &HashSet<&str>, problems: &mut Vec<Problem>) {
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
        if let Some(baseline) = &routing.baseline_backend
            && !is_remote(&baseline.value)
        {
            problems.push(Problem::at(
                baseline,
                format!(
                    "baseline_backend {:?} is not a configured remote backend",
                    baseline.value
                ),
            ));
        }
        if routing.local_backend.is_none() && routing.remote_backends.is_empty() {
            problems.push(Problem {
                line: 0,
                column: 0,
                message: "routing needs a local_backend or at least one of remote_backends".into(),
            });
        }
        check_thresholds(&routing.thresholds, problems);
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

    fn privacy_problems(&self, problems: &mut Vec<Problem>) {
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

fn check_thresholds(t: &Spanned<Thresholds>, problems: &mut Vec<Problem>) {
    let Thresholds {
        local_below,
        remote_above,
        ..
    } = t.value;
    if !((0.0..=1.0).contains(&local_below) && (0.0..=1.0).contains(&remote_above) && local_below <= remote_above) {
        problems.push(Problem::at(t, "thresholds need 0 <= local_below <= remote_above <= 1"));
    }
}

fn budget_problems(budgets: &BudgetsConfig, problems: &mut Vec<Problem>) {
    if budgets.state_file.value.trim().is_empty() {
        problems.push(Problem::at(&budgets.state_file, "state_file must not be empty"));
    }
    if !(0.0..1.0).contains(&budgets.pacing_from.value) {
        problems.push(Problem::at(
            &budgets.pacing_from,
            "pacing_from must be at least 0 and below 1",
        ));
    }
    for (scope, limits) in [("global", budgets.global), ("per_key", budgets.per_key)] {
        for limit in [limits.daily_usd, limits.monthly_usd].into_iter().flatten() {
            if !(limit.is_finite() && limit > 0.0) {
                problems.push(Problem::at(
                    &budgets.state_file,
                    format!("budgets.{scope}: limits must be positive numbers of USD"),
                ));
            }
        }
    }
}

/// Names a client may send as `model`: what providers use, and nothing that could
/// smuggle control characters into a header or log line.
pub fn is_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

fn check_backend_name<'a>(name: &'a Spanned<String>, seen: &mut HashSet<&'a str>, problems: &mut Vec<Problem>) {
    if !is_model_name(&name.value) {
        problems.push(Problem::at(
            name,
            "backend name must be 1-64 characters of letters, digits, '-', '_', '.', ':' or '/'",
        ));
    }
    if name.value == AUTO_MODEL {
        problems.push(Problem::at(name, "\"auto\" is reserved for routing"));
    }
    if !seen.insert(name.value.as_str()) {
        problems.push(Problem::at(name, format!("duplicate backend name {:?}", name.value)));
    }
}

fn check_env_name(env: &Spanned<String>, problems: &mut Vec<Problem>) {
    let valid = !env.value.is_empty()
        && !env.value.starts_with(|c: char| c.is_ascii_digit())
        && env.value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        problems.push(Problem::at(
            env,
            format!("{:?} is not an environment variable name", env.value),
        ));
    }
}

fn check_base_url(url: &Spanned<String>, problems: &mut Vec<Problem>) {
    match reqwest::Url::parse(&url.value) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                problems.push(Problem::at(url, "base_url must not hold credentials; use api_key_env"));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                problems.push(Problem::at(url, "base_url must not have a query or fragment"));
            }
        }
        Ok(_) => problems.push(Problem::at(
            url,
            "base_url must be an http:// or https:// URL with a host",
        )),
        Err(err) => problems.push(Problem::at(url, format!("base_url is not a URL: {err}"))),
    }
}

/// A serde-saphyr error as one located problem. Its `Display` renders a source
/// snippet; we want the bare `line:column: message` that editors and CI parse.
fn shape_problem(err: &serde_saphyr::Error, text: &str) -> Problem {
    let (line, column) = err.location().map(|loc| (loc.line(), loc.column())).unwrap_or((0, 0));
    let mut message = bare_message(err);
    if let Some(hint) = misindented_hint(&message, text, line, column) {
        message.push_str(&hint);
    }
    // A flow collection left open is noticed only where its content stops
    // making sense, a line or more later: the parser gives up there, or a
    // plain scalar swallows the next lines and its value is refused. The
    // mistake is the opening bracket, so that is where the problem is.
    if let Some((opener, open_line, open_column)) = unclosed_flow_opening(text)
        && (line, column) >= (open_line, open_column)
    {
        return Problem {
            line: open_line,
            column: open_column,
            message: format!("this `{}` is never closed ({message})", opener as char),
        };
    }
    Problem { line, column, message }
}

/// The innermost `{` or `[` that opens a flow collection and is never closed
/// in the whole text, as `(bracket, line, column)`. Brackets in quoted
/// scalars, in comments and inside plain scalars (`a{2}`) do not count.
fn unclosed_flow_opening(text: &str) -> Option<(u8, u64, u64)> {
    let mut open: Vec<(u8, u64, u64)> = Vec::new();
    for (at_line, content) in (1u64..).zip(text.lines()) {
        let mut quote: Option<u8> = None;
        // The last byte that is not a space: what a bracket or quote follows.
        let mut previous = b'\n';
        for (at_column, &byte) in (1u64..).zip(content.as_bytes()) {
            match quote {
                Some(b'"') if byte == b'"' && previous != b'\\' => quote = None,
                Some(b'\'') if byte == b'\'' => quote = None,
                Some(_) => {}
                None => {
                    let starts_a_node = matches!(previous, b'\n' | b':' | b'-' | b',' | b'[' | b'{' | b'?');
                    match byte {
                        b'#' if content.as_bytes()[..at_column as usize - 1]
                            .last()
                            .is_none_or(u8::is_ascii_whitespace) =>
                        {
                            break;
                        }
                        b'"' | b'\'' if starts_a_node => quote = Some(byte),
                        b'{' | b'[' if starts_a_node => open.push((byte, at_line, at_column)),
                        b'}' | b']' if !open.is_empty() => {
                            open.pop();
                        }
                        _ => {}
                    }
                }
            }
            if !matches!(byte, b' ' | b'\t') {
                previous = byte;
            }
        }
    }
    open.pop()
}

/// For a "missing field `KEY`" problem: the nearest line that does set `KEY`,
/// but at another indentation than the mapping's keys (column `column`), is
/// most likely the key the reader was looking for.
fn misindented_hint(message: &str, text: &str, line: u64, column: u64) -> Option<String> {
    let key = message.strip_prefix("missing field `")?.strip_suffix('`')?;
    let want = column.checked_sub(1)? as usize;
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let body = l.trim_start();
            let body = body.strip_prefix("- ").map_or(body, str::trim_start);
            let indent = l.len() - body.len();
            let rest = body.strip_prefix(key)?.trim_start();
            (rest.starts_with(':') && indent != want).then_some((i as u64 + 1, indent))
        })
        .min_by_key(|(at, _)| at.abs_diff(line))
        .map(|(at, indent)| {
            format!(" (line {at} sets `{key}` indented {indent} spaces; the other keys here are indented {want})")
        })
}

fn bare_message(err: &serde_saphyr::Error) -> String {
    let rendered = err.to_string();
    // The first line is the message; the rest is the snippet.
    let first = rendered.lines().next().unwrap_or("invalid policy").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop a leading "line L column C: ": the location is reported separately.
    match first.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("line ") && prefix.contains(" column ") => rest.to_string(),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
backends:
  remote:
    - name: cloud
      base_url: https://api.example.com/v1
      api_key_env: EXAMPLE_API_KEY
      model: big-model
      price: { input_per_mtok_usd: 1.0, output_per_mtok_usd: 2.0 }
routing:
  remote_backends: [cloud]
  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }
";

    #[test]
    fn a_misindented_key_is_pointed_at() {
        for (from, to, line) in [
            ("      model: big-model", "     model: big-model", 6),
            ("      model: big-model", "    model: big-model", 6),
        ] {
            let text = MINIMAL.replace(from, to);
            let at = problems(&text);
            assert!(
                at[0].message.contains("missing field `model`")
                    && at[0].message.contains(&format!("line {line} sets `model` indented")),
                "{at:?}"
            );
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Policy::parse(text) {
            Ok(_) => Vec::new(),
            Err(PolicyError::Invalid(problems)) => problems,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn built_in_thresholds_are_the_default_policys() {
        // A policy without `thresholds` must route like the shipped default
        // policy: both follow the shipped difficulty model's score.
        let minimal = MINIMAL.replace(
            "  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }\n",
            "",
        );
        assert_ne!(minimal, MINIMAL);
        let built_in = Policy::parse(&minimal).unwrap().routing.thresholds.value;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/default.yaml");
        let shipped = Policy::load(Path::new(path)).unwrap().routing.thresholds.value;
        assert_eq!(
            (built_in.local_below, built_in.remote_above),
            (shipped.local_below, shipped.remote_above)
        );
    }

    #[test]
    fn minimal_policy_loads_with_defaults() {
        let policy = Policy::parse(MINIMAL).unwrap();
        assert_eq!(policy.server.listen.value, "127.0.0.1:8080");
        assert_eq!(policy.server.max_body_bytes.value, DEFAULT_MAX_BODY_BYTES);
        assert!(policy.auth.keys.is_empty());
        assert_eq!(policy.backends.remote[0].timeouts.connect_ms.value, 5_000);
    }

    #[test]
    fn unknown_key_is_reported_with_its_line_and_column() {
        let text = MINIMAL.replace("api_key_env:", "api_key_evn:");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (5, 7), "{found:?}");
        assert!(found[0].message.contains("api_key_evn"), "{found:?}");
    }

    #[test]
    fn every_problem_of_meaning_is_reported_at_once() {
        let text = MINIMAL
            .replace("https://api.example.com/v1", "ftp://x")
            .replace("remote_backends: [cloud]", "remote_backends: [nowhere]")
            + "server:\n  listen: localhost\n";
        let found = problems(&text);
        let lines: Vec<u64> = found.iter().map(|p| p.line).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            lines.contains(&4) && lines.contains(&9) && lines.contains(&12),
            "{found:?}"
        );
    }

    #[test]
    fn duplicate_backend_names_are_rejected() {
        let second = "    - name: cloud\n      base_url: http://127.0.0.1:9/v1\n      model: m\n      price: { input_per_mtok_usd: 0, output_per_mtok_usd: 0 }\n";
        let text = MINIMAL.replace("routing:", &format!("{second}routing:"));
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("duplicate backend name"));
        assert_eq!(found[0].line, 8);
    }

    #[test]
    fn client_keys_need_exactly_one_source() {
        let text = format!("{MINIMAL}auth:\n  keys:\n    - name: a\n    - name: b\n      key_sha256: XYZ\n");
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn base_url_with_credentials_is_rejected() {
        let text = MINIMAL.replace("https://api.example.com/v1", "https://user:pw@api.example.com/v1");
        let found = problems(&text);
        assert!(found[0].message.contains("credentials"), "{found:?}");
    }

    /// MINIMAL with a local backend `small` whose last line is `setting`.
    fn with_local(setting: &str) -> String {
        let local = format!("  local:\n    - name: small\n      model_path: m.gguf\n      {setting}\n");
        MINIMAL.replace("  remote:\n", &format!("{local}  remote:\n"))
    }

    #[test]
    fn sampling_defaults_are_checked_like_request_parameters() {
        let found = problems(&with_local("sampling: { temperature: 3.0 }"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("temperature"), "{found:?}");
    }

    #[test]
    fn a_zero_queue_wait_is_a_located_problem() {
        let found = problems(&with_local("max_queue_wait_ms: 0"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("max_queue_wait_ms"), "{found:?}");
        assert_eq!((found[0].line, found[0].column), (5, 26), "{found:?}");
        assert_eq!(problems(&with_local("max_queue_wait_ms: 2000")), Vec::new());
    }

    #[test]
    fn routing_privacy_and_budget_problems_are_located() {
        let text = MINIMAL.replace(
            "  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }\n",
            "  thresholds: { local_below: 0.8, remote_above: 0.7, ambiguous: remote }\n  aliases:\n    cloud: { local_below: 0.1, remote_above: 0.2, ambiguous: remote }\n",
        ) + "privacy:\n  detectors: [card]\n  patterns:\n    - name: bad\n      regex: '(unclosed'\nbudgets:\n  state_file: s.json\n  pacing_from: 1.5\n";
        let found = problems(&text);
        let at: Vec<(u64, &str)> = found.iter().map(|p| (p.line, p.message.as_str())).collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            at[0].0 == 10 && at[0].1.contains("local_below <= remote_above"),
            "{at:?}"
        );
        assert!(at[1].0 == 12 && at[1].1.contains("alias \"cloud\""), "{at:?}");
        assert!(at[2].0 == 17 && at[2].1.starts_with("invalid regex"), "{at:?}");
        assert!(at[3].0 == 20 && at[3].1.contains("pacing_from"), "{at:?}");
    }

    #[test]
    fn routing_must_name_backends_of_the_right_kind() {
        let text = MINIMAL.replace("  remote_backends: [cloud]\n", "  local_backend: cloud\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("not a configured local backend"), "{found:?}");
        let neither = MINIMAL.replace("  remote_backends: [cloud]\n", "");
        let found = problems(&neither);
        assert!(found[0].message.contains("needs a local_backend"), "{found:?}");
        let unknown_detector = format!("{MINIMAL}privacy:\n  detectors: [passport]\n");
        let found = problems(&unknown_detector);
        assert_eq!((found.len(), found[0].line), (1, 12), "{found:?}");
    }

    #[test]
    fn an_unclosed_flow_mapping_is_reported_where_it_opens() {
        let text = MINIMAL.replace(
            "ambiguous: remote }",
            "ambiguous: remote\nserver:\n  listen: 127.0.0.1:8080\n",
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (10, 15), "{found:?}");
        assert!(found[0].message.contains("`{` is never closed"), "{found:?}");
        // At the end of the file too.
        let at_end = MINIMAL.replace("ambiguous: remote }", "ambiguous: remote");
        let found = problems(&at_end);
        assert_eq!((found[0].line, found[0].column), (10, 15), "{found:?}");
        // A bracket in a comment or a quoted scalar closes nothing.
        for closed_in_words in ["ambiguous: remote # }", "ambiguous: remote, x: 'a }'"] {
            let text = MINIMAL.replace("ambiguous: remote }", closed_in_words);
            let found = problems(&text);
            assert_eq!(
                (found[0].line, found[0].column),
                (10, 15),
                "{closed_in_words}: {found:?}"
            );
        }
    }

    #[test]
    fn listening_beyond_loopback_without_client_keys_is_a_located_problem_unless_allowed() {
        let open = format!("{MINIMAL}server:\n  listen: 0.0.0.0:8080\n");
        let found = problems(&open);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (12, 11), "{found:?}");
        assert!(
            found[0].message.contains("server.listen 0.0.0.0:8080")
                && found[0].message.contains("allow_unauthenticated"),
            "{found:?}"
        );
        let allowed = format!("{open}  allow_unauthenticated: true\n");
        assert_eq!(problems(&allowed), Vec::new());
        let keyed = format!("{open}auth:\n  keys:\n    - name: a\n      key_env: A_KEY\n");
        assert_eq!(problems(&keyed), Vec::new());
        for loopback in ["127.0.0.1:8080", "'[::1]:8080'"] {
            assert_eq!(problems(&open.replace("0.0.0.0:8080", loopback)), Vec::new());
        }
    }

    #[test]
    fn cost_is_priced_per_million_tokens() {
        let price = Price {
            input_per_mtok_usd: 2.5,
            output_per_mtok_usd: 10.0,
        };
        assert!((price.cost_usd(1_000_000, 500_000) - 7.5).abs() < 1e-12);
    }
}
