//! The `backends` section: local models and remote endpoints, with their
//! sampling defaults, prices, timeouts, retries and breakers.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::{SamplingHints, SamplingParams};

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    #[serde(default)]
    pub remote: Vec<RemoteBackendConfig>,
    #[serde(default)]
    pub local: Vec<LocalBackendConfig>,
}

/// A model run in-process by the engine: a GGUF file or a Hugging Face
/// directory. Its price is zero.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBackendConfig {
    pub(super) name: Spanned<String>,
    /// Path to the GGUF file or the Hugging Face model directory, relative to
    /// the policy file's directory.
    pub(super) model_path: Spanned<String>,
    /// What a Hugging Face checkpoint's float weights are encoded as when
    /// loaded: `q8_0`, `q6_k` (the default), `q4_k`, `q4_0` or `none`. A GGUF
    /// file keeps its own blocks.
    pub(super) quant: Option<Spanned<String>>,
    /// Compute threads for this model.
    #[serde(default = "default_threads")]
    pub(super) threads: Spanned<usize>,
    /// Caps the model's own context window (and with it the largest KV cache).
    pub(super) context_length: Option<Spanned<u64>>,
    /// Requests that may wait for a place in the batch; more get a 429.
    #[serde(default = "default_queue_capacity")]
    pub(super) queue_capacity: Spanned<usize>,
    /// Requests decoded together (continuous batching): a decode step reads
    /// the weights once for all of them, so on a CPU, where reading the
    /// weights is what a step costs, more answers at once cost little more
    /// time per token than one.
    #[serde(default = "default_max_sequences")]
    pub(super) max_sequences: Spanned<usize>,
    /// Memory (MiB) the running requests' states (KV caches, recurrent
    /// states) may take together, each counted at its largest (its prompt and
    /// its whole `max_tokens`); a request that does not fit waits for a
    /// running one to finish. One request always runs, whatever its size.
    #[serde(default = "default_max_state_mb")]
    pub(super) max_state_mb: Spanned<u64>,
    /// How long a request may wait for the engine to take it up; past that it
    /// is treated like a full queue (answered remotely when the policy allows,
    /// else a 429). Unset: as long as the request's deadline allows.
    pub(super) max_queue_wait_ms: Option<Spanned<u64>>,
    /// `max_tokens` for requests that give none (default: the rest of the context).
    pub(super) default_max_tokens: Option<Spanned<u64>>,
    /// Memory (MiB) the states of finished requests may keep for their
    /// conversations' next turns (KV caches, recurrent states); the least
    /// recently used go first, and the last one is always kept.
    #[serde(default = "default_state_cache_mb")]
    pub(super) state_cache_mb: Spanned<u64>,
    /// Token budget of the reasoning (`local-reasoning`, or a client's
    /// `reasoning_effort`): for a model that thinks natively, its thinking
    /// budget (past it `</think>` is forced and the answer follows; the
    /// thinking counts against the request's `max_completion_tokens`); for
    /// others, the reasoning pass's, on top of the answer's own `max_tokens`.
    #[serde(default = "default_reasoning_max_tokens")]
    pub(super) reasoning_max_tokens: Spanned<u64>,
    /// Whether this model serves the `local-reasoning` tier. `false` for a
    /// model whose reasoning pass does not help (measure it with
    /// `bench/local_reasoning.py`): what would be answered reasoning is answered
    /// plainly, tier `local`, and a weak local answer climbs straight to remote.
    #[serde(default = "default_reasoning")]
    pub reasoning: bool,
    /// Whether this model serves `/v1/embeddings` (an embedding model such as
    /// Qwen3-Embedding: the final hidden state at the input's last token,
    /// normalised). A model named for embeddings without it is refused.
    #[serde(default)]
    pub embeddings: bool,
    /// Sampling for requests that leave a parameter out. OpenAI's own defaults
    /// (temperature 1, top_p 1) suit large models; small ones do better with the
    /// values their authors publish, which a checkpoint's
    /// `generation_config.json` fills in where this leaves a value unset.
    #[serde(default)]
    pub sampling: SamplingDefaults,
    /// Sampling for answers of a model that thinks natively (Qwen3) with
    /// thinking on; each value unset here comes from `sampling`, then from
    /// the model's recommendation for thinking. `sampling` (over the model's
    /// recommendation without thinking) is for answers with thinking off.
    #[serde(default)]
    pub thinking_sampling: SamplingDefaults,
}

impl LocalBackendConfig {
    pub fn name(&self) -> &str {
        &self.name.value
    }

    pub fn model_path(&self) -> &str {
        &self.model_path.value
    }

    pub fn threads(&self) -> usize {
        self.threads.value
    }

    /// The `quant` setting (checked with the policy: an unknown name is a problem).
    pub fn quant(&self) -> Quantization {
        self.quant
            .as_ref()
            .and_then(|q| Quantization::parse(&q.value))
            .unwrap_or_default()
    }

    pub fn context_length(&self) -> Option<u64> {
        self.context_length.as_ref().map(|c| c.value)
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity.value
    }

    pub fn max_sequences(&self) -> usize {
        self.max_sequences.value
    }

    pub fn max_state_bytes(&self) -> usize {
        (self.max_state_mb.value as usize).saturating_mul(1 << 20)
    }

    pub fn max_queue_wait(&self) -> Option<Duration> {
        self.max_queue_wait_ms
            .as_ref()
            .map(|ms| Duration::from_millis(ms.value))
    }

    pub fn default_max_tokens(&self) -> Option<u64> {
        self.default_max_tokens.as_ref().map(|m| m.value)
    }

    pub fn reasoning_max_tokens(&self) -> u64 {
        self.reasoning_max_tokens.value
    }

    pub fn state_cache_bytes(&self) -> usize {
        (self.state_cache_mb.value as usize).saturating_mul(1 << 20)
    }
}

/// Sampling for requests that leave a parameter out. Each value unset here
/// comes from the model's publisher when it says (a checkpoint's
/// `generation_config.json`), else from OpenAI's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
}

/// The sampling a local model's requests start from, every value known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingBase {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
}

impl SamplingBase {
    /// These values as the engine's parameters (no penalties, no seed).
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            ..SamplingParams::default()
        }
    }
}

impl SamplingDefaults {
    /// Each value from here, else from `under`.
    pub fn or(&self, under: &SamplingDefaults) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature.or(under.temperature),
            top_p: self.top_p.or(under.top_p),
            top_k: self.top_k.or(under.top_k),
            min_p: self.min_p.or(under.min_p),
            repetition_penalty: self.repetition_penalty.or(under.repetition_penalty),
            presence_penalty: self.presence_penalty.or(under.presence_penalty),
        }
    }

    /// Each value from here, else from the model's `hints`, else the engine's
    /// own (OpenAI's) default.
    pub fn over(&self, hints: &SamplingHints) -> SamplingBase {
        let engine = SamplingParams::default();
        SamplingBase {
            temperature: self.temperature.or(hints.temperature).unwrap_or(engine.temperature),
            top_p: self.top_p.or(hints.top_p).unwrap_or(engine.top_p),
            top_k: self.top_k.or(hints.top_k).unwrap_or(engine.top_k),
            min_p: self.min_p.or(hints.min_p).unwrap_or(engine.min_p),
            repetition_penalty: self
                .repetition_penalty
                .or(hints.repetition_penalty)
                .unwrap_or(engine.repetition_penalty),
            presence_penalty: self
                .presence_penalty
                .or(hints.presence_penalty)
                .unwrap_or(engine.presence_penalty),
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

fn default_state_cache_mb() -> Spanned<u64> {
    unspanned((switchyard_engine::engine::Engine::DEFAULT_STATE_CACHE_BYTES >> 20) as u64)
}

fn default_queue_capacity() -> Spanned<usize> {
    unspanned(8)
}

fn default_max_sequences() -> Spanned<usize> {
    unspanned(8)
}

/// The embedded 135M model's f16 KV cache takes 22.5 KiB a position: 512 MiB
/// hold eight sequences of 2 900 positions. A larger model fits fewer, or
/// shorter, ones together; the rest wait their turn.
fn default_max_state_mb() -> Spanned<u64> {
    unspanned(512)
}

/// More sequences than this gain nothing on a CPU (a step becomes bound by
/// its arithmetic, not by reading the weights, long before) and would only
/// hold more memory.
const MAX_SEQUENCES_LIMIT: usize = 256;

/// A remote, OpenAI-compatible endpoint (OpenAI, Together, Groq, vLLM, ...).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteBackendConfig {
    pub(super) name: Spanned<String>,
    /// Everything before `/chat/completions`, e.g. `https://api.openai.com/v1`.
    pub(super) base_url: Spanned<String>,
    /// Environment variable holding the upstream key; absent for endpoints that
    /// need none (a local vLLM, say).
    pub(super) api_key_env: Option<Spanned<String>>,
    /// The model name sent upstream. Clients may ask for it by this name too, so
    /// code written against the provider works unchanged behind Switchyard.
    pub(super) model: Spanned<String>,
    pub price: Price,
    /// What this upstream charges for calls other than its chat model's:
    /// embeddings, audio, images, ... (see [`EndpointPrice`]). A call none of
    /// them prices is free as far as the budgets know.
    #[serde(default)]
    pub endpoint_prices: EndpointPrices,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Largest `max_tokens` the upstream model accepts; requests above it are
    /// refused here with a 400 instead of spending a round trip.
    pub(super) max_output_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

impl RemoteBackendConfig {
    pub fn name(&self) -> &str {
        &self.name.value
    }

    pub fn base_url(&self) -> &str {
        &self.base_url.value
    }

    pub fn api_key_env(&self) -> Option<&str> {
        self.api_key_env.as_ref().map(|env| env.value.as_str())
    }

    pub fn model(&self) -> &str {
        &self.model.value
    }

    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_output_tokens.as_ref().map(|m| m.value)
    }
}

/// A remote backend's `endpoint_prices`, in the policy's order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct EndpointPrices(Vec<EndpointPrice>);

impl EndpointPrices {
    /// The price of a call to `endpoint` (the path after `/v1/`) for
    /// `model`: the first entry of `endpoint_prices` whose endpoint is that
    /// path or a parent of it (`audio` prices `audio/transcriptions`) and whose
    /// model, if it names one, is the request's. With `model` unknown (a
    /// multipart body), only entries naming no model apply.
    pub fn of(&self, endpoint: &str, model: Option<&str>) -> Option<Price> {
        self.0
            .iter()
            .find(|entry| {
                entry.covers(endpoint) && entry.model.as_ref().is_none_or(|m| Some(m.value.as_str()) == model)
            })
            .map(EndpointPrice::price)
    }

    /// Whether some price of `endpoint` depends on the request's model.
    pub fn by_model(&self, endpoint: &str) -> bool {
        self.0
            .iter()
            .any(|entry| entry.model.is_some() && entry.covers(endpoint))
    }

    /// The first price of `endpoint`, whatever model it names: what a local
    /// answer to that endpoint saves.
    pub fn first_for(&self, endpoint: &str) -> Option<Price> {
        self.0
            .iter()
            .find(|entry| entry.covers(endpoint))
            .map(EndpointPrice::price)
    }
}

/// One price of a remote backend's `endpoint_prices`, e.g.
/// `{ endpoint: embeddings, model: text-embedding-3-small, input_per_mtok_usd: 0.02 }`
/// or `{ endpoint: images/generations, per_call_usd: 0.04 }`. Tokens are read
/// from the answer's `usage` (`prompt_tokens`/`completion_tokens` or
/// `input_tokens`/`output_tokens`), minutes from a transcription's
/// `usage.seconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPrice {
    /// The path after `/v1/`, or a parent of it.
    pub(super) endpoint: Spanned<String>,
    /// The request's `model` (JSON bodies); absent, any model.
    pub(super) model: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) input_per_mtok_usd: f64,
    #[serde(default)]
    pub(super) output_per_mtok_usd: f64,
    #[serde(default)]
    pub(super) per_call_usd: f64,
    #[serde(default)]
    pub(super) per_minute_usd: f64,
}

impl EndpointPrice {
    /// Whether the entry's endpoint is `endpoint` or a parent of it.
    fn covers(&self, endpoint: &str) -> bool {
        endpoint
            .strip_prefix(self.endpoint.value.trim_matches('/'))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn price(&self) -> Price {
        Price {
            input_per_mtok_usd: self.input_per_mtok_usd,
            output_per_mtok_usd: self.output_per_mtok_usd,
            per_call_usd: self.per_call_usd,
            per_minute_usd: self.per_minute_usd,
        }
    }
}

/// Retries of failed upstream calls (connect errors, timeouts, 429, 500, 502,
/// 503, 504), never after the client has received response bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 = no retries).
    pub(super) max_attempts: Spanned<u32>,
    /// The delay before the first retry; it doubles each time, with full jitter.
    pub(super) base_delay_ms: Spanned<u64>,
    /// The longest delay; a `Retry-After` longer than this moves on to the next
    /// backend instead of waiting.
    pub(super) max_delay_ms: Spanned<u64>,
}

impl RetryConfig {
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.value
    }

    pub fn base_delay(&self) -> Duration {
        Duration::from_millis(self.base_delay_ms.value)
    }

    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms.value)
    }
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
    pub(super) failure_threshold: Spanned<u32>,
    pub(super) cooldown_ms: Spanned<u64>,
}

impl BreakerConfig {
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.value
    }

    pub fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms.value)
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: unspanned(5),
            cooldown_ms: unspanned(30_000),
        }
    }
}

/// Prices in USD per million tokens, as providers publish them, and what a
/// provider may add per call (a request fee, an image) or per minute of audio.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok_usd: f64,
    pub output_per_mtok_usd: f64,
    #[serde(default)]
    pub per_call_usd: f64,
    #[serde(default)]
    pub per_minute_usd: f64,
}

impl Price {
    /// A local model's price.
    pub const FREE: Price = Price {
        input_per_mtok_usd: 0.0,
        output_per_mtok_usd: 0.0,
        per_call_usd: 0.0,
        per_minute_usd: 0.0,
    };

    /// What one answered call with these tokens costs.
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.per_call_usd
            + (prompt_tokens as f64 * self.input_per_mtok_usd + completion_tokens as f64 * self.output_per_mtok_usd)
                / 1e6
    }

    /// What one answered call costs, audio minutes included.
    pub fn cost_of(&self, usage: &crate::reply::Usage) -> f64 {
        self.cost_usd(usage.prompt_tokens, usage.completion_tokens) + usage.seconds as f64 / 60.0 * self.per_minute_usd
    }

    fn problem(&self) -> Option<&'static str> {
        let ok = |p: f64| p.is_finite() && p >= 0.0;
        let all = [
            self.input_per_mtok_usd,
            self.output_per_mtok_usd,
            self.per_call_usd,
            self.per_minute_usd,
        ];
        (!all.into_iter().all(ok)).then_some("prices must be finite and not negative")
    }
}

/// Upstream timeouts, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub(super) connect_ms: Spanned<u64>,
    /// From sending the request to the response headers. Reasoning models can
    /// think for a long time before their first byte, hence the generous default.
    pub(super) first_byte_ms: Spanned<u64>,
    /// Longest silence allowed between two pieces of a streamed answer.
    pub(super) idle_ms: Spanned<u64>,
    /// Whole request, first byte to last.
    pub(super) total_ms: Spanned<u64>,
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

impl BackendsConfig {
    /// Problems of the `backends` section; the names of its backends.
    pub(super) fn problems(&self, problems: &mut Vec<Problem>) -> HashSet<&str> {
        let mut backend_names = HashSet::new();
        for backend in &self.remote {
            check_backend_name(&backend.name, &mut backend_names, problems);
            check_base_url(&backend.base_url, problems);
            if let Some(env) = &backend.api_key_env {
                check_env_name(env, problems);
            }
            if backend.model.value.trim().is_empty() {
                problems.push(Problem::at(&backend.model, "model must not be empty"));
            }
            if let Some(problem) = backend.price.problem() {
                problems.push(Problem::at(&backend.name, problem));
            }
            for entry in &backend.endpoint_prices.0 {
                if let Some(problem) = entry.price().problem() {
                    problems.push(Problem::at(&entry.endpoint, problem));
                }
                let path = entry.endpoint.value.trim_matches('/');
                if path.is_empty() || path.starts_with("v1/") || path.contains(char::is_whitespace) {
                    problems.push(Problem::at(
                        &entry.endpoint,
                        "endpoint is the path after /v1/, e.g. embeddings or audio/transcriptions",
                    ));
                }
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
        for backend in &self.local {
            check_backend_name(&backend.name, &mut backend_names, problems);
            if let Some(quant) = &backend.quant
                && Quantization::parse(&quant.value).is_none()
            {
                problems.push(Problem::at(
                    quant,
                    format!("quant must be one of {}, not {:?}", Quantization::NAMES, quant.value),
                ));
            }
            if backend.model_path.value.trim().is_empty() {
                problems.push(Problem::at(&backend.model_path, "model_path must not be empty"));
            }
            if !(1..=256).contains(&backend.threads.value) {
                problems.push(Problem::at(&backend.threads, "threads must be from 1 to 256"));
            }
            if backend.queue_capacity.value == 0 {
                problems.push(Problem::at(&backend.queue_capacity, "queue_capacity must be positive"));
            }
            if !(1..=MAX_SEQUENCES_LIMIT).contains(&backend.max_sequences.value) {
                problems.push(Problem::at(
                    &backend.max_sequences,
                    format!("max_sequences must be from 1 to {MAX_SEQUENCES_LIMIT}"),
                ));
            }
            if backend.max_state_mb.value == 0 {
                problems.push(Problem::at(&backend.max_state_mb, "max_state_mb must be positive"));
            }
            if let Some(wait) = &backend.max_queue_wait_ms
                && wait.value == 0
            {
                problems.push(Problem::at(
                    wait,
                    "max_queue_wait_ms must be positive (leave it out for no limit)",
                ));
            }
            if let Err(why) = backend.sampling.over(&SamplingHints::default()).params().validate() {
                problems.push(Problem::at(&backend.name, format!("sampling defaults: {why}")));
            }
            if let Err(why) = backend
                .thinking_sampling
                .over(&SamplingHints::default())
                .params()
                .validate()
            {
                problems.push(Problem::at(&backend.name, format!("thinking_sampling: {why}")));
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
        if self.remote.is_empty() && self.local.is_empty() {
            problems.push(Problem {
                line: 0,
                column: 0,
                message: "no backends are configured".into(),
            });
        }
        backend_names
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
