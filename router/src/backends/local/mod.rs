//! The in-process model, served through the OpenAI chat API.
//!
//! A request is turned into a prompt with the model's own chat template,
//! tokenized, and queued on the [`Engine`]. Tokens come back through a channel
//! as the engine produces them, and leave as typed events (`reply::Event`):
//! a streamed answer's as they come, a whole one's together.
//! When the client goes away the channel closes, and the engine stops the
//! generation at its next token.
//!
//! Rendering and tokenizing a prompt is CPU work proportional to its text, so
//! it runs on tokio's blocking threads, `PROMPTS_ENCODED_AT_ONCE` at a time,
//! never on the async workers that answer every other connection. Before any of
//! it, a prompt whose text cannot fit the context window, whatever it says, is
//! refused from its byte count alone (see [`Tokenizer::fewest_tokens`]): a
//! pinned request with a 400, a routed one by being ineligible here.
//!
//! Client text is plain text: a control token spelled in a message
//! (`<|im_end|>`) reaches the model as the characters it is, and only the chat
//! template's own markers are control tokens (see
//! [`Tokenizer::escape_control_text`]).
//!
//! Here: the backend (loading, readiness, eligibility, answering within a
//! deadline and a queue wait). `prepare`: the request in the engine's terms
//! (checks, prompt, sampling, the passes of a reasoning answer). `driver`:
//! the answer on the engine and its events. Writing them for the client is
//! `openai::completion`'s.
//!
//! [`Tokenizer::fewest_tokens`]: switchyard_engine::tokenizer::Tokenizer::fewest_tokens
//! [`Tokenizer::escape_control_text`]: switchyard_engine::tokenizer::Tokenizer::escape_control_text

mod driver;
mod fingerprint;
mod prepare;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_engine::constraint::Grammar;
use switchyard_engine::engine::{EmbedJob, Engine, EngineOptions, LoadOptions, LocalModel};
use switchyard_engine::generate::GenerateError;
use switchyard_engine::model::ModelInfo;
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::ModeHints;
use tokio::sync::{Semaphore, mpsc};

use crate::openai::request::ChatRequest;
use crate::openai::structured::ToolChoice;
use crate::outcome::{BackendError, Ineligible};
use crate::policy::{LocalBackendConfig, SamplingBase};
use crate::reply::{ChatReply, Event};

/// One input of an embeddings request.
#[derive(Debug, Clone)]
pub enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u32>),
}
use driver::{Driver, InFlight, Update, busy, engine_stopped, generation_error, submit};
pub use driver::{Generation, QueueWait};
pub use fingerprint::fingerprint;
use prepare::fewest_prompt_tokens;
pub use prepare::{ANSWER_INSTRUCTION, REASONING_INSTRUCTION};

/// Fields a local model cannot honour; a request that needs them must go to a
/// backend that can (the router will route them; named directly, they are a 400).
const UNSUPPORTED_FIELDS: &[&str] = &["functions", "function_call", "logit_bias", "audio", "prediction"];

/// Prompts rendered and tokenized at once, on tokio's blocking threads. While
/// `tokenizers` works, a prompt holds several times its text in memory (an
/// offset pair for every byte, a string per piece); the text is bounded by the
/// context window (see [`Tokenizer::fewest_tokens`]), and this bounds how many
/// such texts are worked on together: 16 clients sending the largest prompts
/// hold 2 prompts' worth of that memory and wait (asynchronously, holding no
/// thread) for the rest. Two, not one, so that a short prompt need not wait
/// behind a long one; more would not finish sooner on the cores the engine
/// leaves free.
const PROMPTS_ENCODED_AT_ONCE: usize = 2;

/// Why [`LocalBackend::greedy_answer`] gave no answer.
#[derive(Debug)]
pub enum GreedyEnd {
    /// The request or the generation failed; what happened.
    Failed(String),
    /// `give_way` asked it to stop.
    GaveWay,
}

/// What the local engine is doing and holding, read for `/metrics` and the status page.
#[derive(Debug, Clone, Copy)]
pub struct LoadFigures {
    /// Jobs waiting for a place in the batch.
    pub queued: usize,
    /// The most jobs that may wait (the policy's `queue_capacity`).
    pub queue_capacity: usize,
    /// Answers being produced (queued or running, including a reasoning answer's two passes).
    pub in_flight: i64,
    /// Memory the model's weights take, as loaded.
    pub model_bytes: u64,
    /// Memory held by the engine's KV cache.
    pub kv_cache_bytes: u64,
    /// Sequences in the running batch (prefilling or decoding).
    pub running: usize,
    /// The most sequences the batch holds (the policy's `max_sequences`).
    pub max_sequences: usize,
}

pub struct LocalBackend {
    name: String,
    /// A model that failed to load leaves its backend unavailable, with the
    /// reason, while the rest of the daemon serves on.
    engine: Result<Arc<Engine>, String>,
    /// Token budget of the reasoning pass.
    reasoning_max_tokens: u64,
    /// Whether the model serves the `local-reasoning` tier (a client's
    /// `reasoning_effort` is ignored when it does not).
    reasons: bool,
    /// Whether the model serves `/v1/embeddings`.
    embeds: bool,
    /// How long a request may wait for its turn before it counts as busy.
    max_queue_wait: Option<Duration>,
    /// Answers being generated or waiting (for metrics).
    in_flight: Arc<std::sync::atomic::AtomicI64>,
    /// What the loaded model is; `None` when it did not load.
    info: Option<ModelInfo>,
    default_max_tokens: Option<u64>,
    /// The policy's sampling defaults over the model's own, without thinking
    /// (and for every answer of a model that does not think natively).
    sampling: SamplingBase,
    /// The same for answers with native thinking on.
    thinking_sampling: SamplingBase,
    /// Everything of the configuration that the loaded engine depends on: a
    /// reloaded policy with the same identity keeps this backend (and its model).
    identity: String,
    /// Turns to render and tokenize a prompt, [`PROMPTS_ENCODED_AT_ONCE`] of them.
    prompt_turns: Arc<Semaphore>,
    /// The model file or directory, as the policy names it (resolved).
    model_path: std::path::PathBuf,
    /// What a directory's float weights became at load.
    quant: Quantization,
}

impl LocalBackend {
    /// Loads the model and starts its engine. A model that cannot be used is
    /// logged and leaves the backend unavailable; it does not stop the daemon.
    pub fn load(config: &LocalBackendConfig, policy_dir: &Path) -> LocalBackend {
        let path = policy_dir.join(config.model_path());
        let started = Instant::now();
        let options = LoadOptions {
            context_length: config.context_length().map(|c| c as usize),
            quant: config.quant(),
            ..LoadOptions::default()
        };
        let mut info = None;
        let mut hints = ModeHints::default();
        let engine = LocalModel::load_with(&path, &options)
            .map_err(|err| format!("cannot load {}: {err}", path.display()))
            .and_then(|model| {
                info = Some(model.model.info());
                hints = model.sampling_hints;
                Engine::start_with(
                    model,
                    EngineOptions {
                        threads: config.threads(),
                        queue_capacity: config.queue_capacity(),
                        state_cache_bytes: config.state_cache_bytes(),
                        max_sequences: config.max_sequences(),
                        max_state_bytes: config.max_state_bytes(),
                    },
                )
                .map(Arc::new)
                .map_err(|err| format!("cannot start the engine: {err}"))
            });
        // The vocabulary's token trie for constrained answers (JSON, tools) is
        // built now, not on the first request that needs it.
        let grammar_started = Instant::now();
        if let Ok(engine) = &engine
            && let Err(err) = engine.constraint(&Grammar::JsonObject)
        {
            tracing::warn!(
                backend = config.name(),
                reason = err,
                "constrained answers are unavailable"
            );
        }
        let grammar_ms = grammar_started.elapsed().as_millis() as u64;
        match (&engine, &info) {
            (Ok(engine), info) => tracing::info!(
                backend = config.name(),
                model = %path.display(),
                architecture = info.as_ref().map_or("", |i| i.architecture),
                quant = info.as_ref().map_or("", |i| i.quant),
                parameters = info.as_ref().map_or(0, |i| i.parameters),
                weight_bytes = info.as_ref().map_or(0, |i| i.weight_bytes),
                context_tokens = engine.context_length(),
                threads = config.threads(),
                max_sequences = engine.max_sequences(),
                load_ms = started.elapsed().as_millis() as u64,
                grammar_ms,
                tool_format = engine.template().and_then(|t| t.tool_format()).map_or("none", |f| f.name()),
                "local model loaded"
            ),
            (Err(reason), _) => tracing::error!(backend = config.name(), reason, "local backend is unavailable"),
        }
        LocalBackend {
            name: config.name().to_string(),
            engine,
            default_max_tokens: config.default_max_tokens(),
            sampling: config.sampling.over(&hints.direct),
            thinking_sampling: config.thinking_sampling.or(&config.sampling).over(&hints.thinking),
            reasoning_max_tokens: config.reasoning_max_tokens(),
            reasons: config.reasoning,
            embeds: config.embeddings,
            max_queue_wait: config.max_queue_wait(),
            in_flight: Arc::default(),
            info,
            identity: Self::identity_of(config, policy_dir),
            prompt_turns: Arc::new(Semaphore::new(PROMPTS_ENCODED_AT_ONCE)),
            model_path: path,
            quant: config.quant(),
        }
    }

    /// The model file or directory it loads.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// What a directory's float weights become at load.
    pub fn quant(&self) -> Quantization {
        self.quant
    }

    /// See [`LocalBackend::identity`].
    pub fn identity_of(config: &LocalBackendConfig, policy_dir: &Path) -> String {
        format!(
            "{}|{}|{}|{}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}",
            config.name(),
            policy_dir.join(config.model_path()).display(),
            config.quant(),
            config.threads(),
            config.context_length(),
            config.queue_capacity(),
            config.max_sequences(),
            config.max_state_bytes(),
            config.max_queue_wait(),
            config.default_max_tokens(),
            config.sampling,
            config.thinking_sampling,
            config.reasoning_max_tokens(),
            config.reasoning,
            config.state_cache_bytes(),
            config.embeddings,
        )
    }

    /// Whether this model serves the `local-reasoning` tier.
    pub fn reasons(&self) -> bool {
        self.reasons
    }

    /// Whether this model serves `/v1/embeddings`.
    pub fn embeds(&self) -> bool {
        self.embeds
    }

    /// The embeddings of `inputs` (text, or token ids), one per input, in
    /// order, and the tokens they read. An input longer than the context
    /// window is a 400 naming it; a full queue is a 429.
    pub async fn embed(&self, inputs: Vec<EmbeddingInput>) -> Result<(Vec<Vec<f32>>, u64), BackendError> {
        let engine = self.engine()?.clone();
        let context = engine.context_length();
        let vocab = engine.tokenizer().vocab_size() as u32;
        let tokenized = tokio::task::spawn_blocking({
            let engine = engine.clone();
            move || {
                inputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, input)| {
                        let tokens = match input {
                            EmbeddingInput::Text(text) => engine
                                .tokenizer()
                                .encode_document(&text)
                                .map_err(|err| BackendError::rejected(format!("Cannot tokenize input {i}: {err}"), "input"))?,
                            EmbeddingInput::Tokens(tokens) => tokens,
                        };
                        if tokens.is_empty() {
                            return Err(BackendError::rejected(format!("Input {i} is empty."), "input"));
                        }
                        if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
                            return Err(BackendError::rejected(
                                format!("Input {i} holds token id {bad}, past the model's vocabulary of {vocab}."),
                                "input",
                            ));
                        }
                        if tokens.len() > context {
                            return Err(BackendError::ContextLengthExceeded {
                                message: format!(
                                    "This model's maximum context length is {context} tokens. However, input {i} is {} tokens.",
                                    tokens.len()
                                ),
                            });
                        }
                        Ok(tokens)
                    })
                    .collect::<Result<Vec<_>, _>>()
            }
        })
        .await
        .map_err(|err| BackendError::Unavailable {
            backend: self.name.clone(),
            reason: format!("preparing the inputs failed: {err}"),
        })??;
        let tokens: u64 = tokenized.iter().map(|t| t.len() as u64).sum();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job = EmbedJob {
            inputs: tokenized,
            reply: Box::new(move |embeddings| {
                let _ = sender.send(embeddings);
            }),
        };
        engine.submit_embeddings(job).map_err(|_| {
            busy(
                &self.name,
                format!("{} requests are already waiting", engine.queue_capacity()),
            )
        })?;
        let embeddings = receiver.await.map_err(|_| engine_stopped(&self.name))?;
        Ok((embeddings, tokens))
    }

    /// Whether a model that thinks natively thinks for `request`: as its
    /// `chat_template_kwargs.enable_thinking` says, else as `request.reasoning`
    /// (the client's `reasoning_effort`, or the tier it was routed to) when
    /// this backend reasons at all.
    pub(super) fn thinks(&self, request: &ChatRequest) -> bool {
        let asked = request
            .body
            .get("chat_template_kwargs")
            .and_then(|kwargs| kwargs.get("enable_thinking"))
            .and_then(serde_json::Value::as_bool);
        // A legacy completion continues its prompt as written.
        request.legacy.is_none() && asked.unwrap_or(request.reasoning && self.reasons)
    }

    /// The engine's load and memory, for metrics; `None` when the model did not load.
    pub fn load_figures(&self) -> Option<LoadFigures> {
        let engine = self.engine.as_ref().ok()?;
        Some(LoadFigures {
            queued: engine.queue_depth(),
            queue_capacity: engine.queue_capacity(),
            in_flight: self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            model_bytes: self.info.as_ref().map_or(0, |info| info.weight_bytes),
            kv_cache_bytes: engine.kv_cache_bytes() as u64,
            running: engine.running(),
            max_sequences: engine.max_sequences(),
        })
    }

    /// What the loaded model is; `None` when it did not load.
    pub fn info(&self) -> Option<&ModelInfo> {
        self.info.as_ref()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn engine(&self) -> Result<&Arc<Engine>, BackendError> {
        self.engine.as_ref().map_err(|reason| BackendError::Unavailable {
            backend: self.name.clone(),
            reason: reason.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tokens `text` makes for this model's tokenizer (literal text: a
    /// control token's string counts as the text it is), if it loaded.
    pub fn count_tokens(&self, text: &str) -> Option<u64> {
        let engine = self.engine.as_ref().ok()?;
        engine.tokenizer().encode(text, false).ok().map(|ids| ids.len() as u64)
    }

    pub fn readiness(&self) -> Result<(), String> {
        self.engine.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Whether this model can answer a request, judged before any tokenization
    /// from the request's fields and an estimate of its prompt length.
    pub fn eligibility(&self, request: &ChatRequest, prompt_tokens_estimate: u64) -> Result<(), Ineligible> {
        let engine = self.engine.as_ref().map_err(|_| Ineligible::Unavailable)?;
        let asks = &request.asks;
        let tool_format = engine.template().and_then(|template| template.tool_format());
        let calls_tools = request
            .tools
            .as_ref()
            .is_some_and(|tools| tools.choice != ToolChoice::None);
        if (calls_tools || asks.tool_turn.is_some()) && tool_format.is_none() {
            return Err(Ineligible::Tools);
        }
        if UNSUPPORTED_FIELDS.iter().any(|f| request.uses(f))
            || request.sampling.n.is_some_and(|n| n != 1)
            || request.unservable_locally().is_some()
        {
            return Err(Ineligible::Fields);
        }
        if asks.non_text {
            return Err(Ineligible::Images);
        }
        // The answer's grammar (compiled once per schema and kept): what the
        // model cannot be held to goes to a backend that may answer it.
        if let Err(refused) = prepare::answer_form(engine, request, tool_format, &self.name) {
            return Err(refused.why);
        }
        // The same sound floor that refuses a pinned request before tokenizing
        // (the estimate is usually higher; this makes sure of it).
        let fewest =
            fewest_prompt_tokens(engine.tokenizer(), request.messages()).map_or(0, |(_, fewest)| fewest as u64);
        let needed = prompt_tokens_estimate.max(fewest) + request.max_tokens.unwrap_or(0);
        if needed >= engine.context_length() as u64 {
            return Err(Ineligible::Context);
        }
        Ok(())
    }

    /// Answers within `deadline`: a generation still running then is stopped.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        request_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<ChatReply, BackendError> {
        let wait = self.max_queue_wait.map(QueueWait::whole);
        self.generate_within(request, request_id, wait, Some(deadline))
            .await?
            .into_reply(Vec::new())
            .await
    }

    /// Starts generating an answer and returns its events as they come. The
    /// request is refused here (not in the events) when it is invalid, does not
    /// fit, or the queue is full.
    ///
    /// A model that thinks natively thinks when the request's
    /// `chat_template_kwargs.enable_thinking` says so, or, when it says
    /// nothing, with `request.reasoning` (see `LocalBackend::thinks`); its
    /// thinking stops at `reasoning_max_tokens`. Another model, with
    /// `request.reasoning`, first reasons (prompted step by step, within
    /// `reasoning_max_tokens`), then answers with its reasoning in view. Either
    /// way the reasoning comes back as `reasoning_content`, never in `content`.
    pub async fn generate(&self, request: &ChatRequest, request_id: &str) -> Result<Generation, BackendError> {
        self.generate_within(request, request_id, self.max_queue_wait.map(QueueWait::whole), None)
            .await
    }

    /// The model's greedy answer to `messages` (thinking on or off as
    /// `thinking` says, at most `max_tokens`): its text and completion tokens,
    /// for comparing with another model's answer (the audit, shadow mode).
    /// `give_way` is asked every 10 ms; when it says so the answer is dropped
    /// (and the engine's work with it).
    pub async fn greedy_answer(
        &self,
        messages: &serde_json::Value,
        max_tokens: u64,
        thinking: bool,
        request_id: &str,
        give_way: impl Fn(&LocalBackend) -> bool,
    ) -> Result<(String, u64), GreedyEnd> {
        let body = serde_json::json!({
            "model": self.name,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "chat_template_kwargs": { "enable_thinking": thinking },
        });
        let request =
            ChatRequest::parse(body.to_string().as_bytes()).map_err(|err| GreedyEnd::Failed(err.message()))?;
        let failed = |err: BackendError| GreedyEnd::Failed(format!("the local model failed: {err:?}"));
        let mut generation = self.generate(&request, request_id).await.map_err(failed)?;
        let mut text = String::new();
        let mut watch = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                event = generation.events.recv() => match event {
                    Some(Event::Content { text: piece, .. }) => text.push_str(&piece),
                    Some(Event::Finished(finished)) => return Ok((text, finished.usage.completion_tokens)),
                    Some(Event::Failed(err)) => return Err(failed(err)),
                    None => return Err(GreedyEnd::Failed("the local model stopped".into())),
                    Some(_) => {}
                },
                _ = watch.tick() => {
                    if give_way(self) {
                        return Err(GreedyEnd::GaveWay);
                    }
                }
            }
        }
    }

    /// The backend's `max_queue_wait_ms`, if it has one.
    pub fn max_queue_wait(&self) -> Option<Duration> {
        self.max_queue_wait
    }

    /// As [`LocalBackend::generate`], waiting for a turn at most `wait` (what is
    /// left of a budget several calls share) instead of the backend's own bound,
    /// and ending with [`BackendError::LocalTimeout`] at `deadline`.
    pub async fn generate_within(
        &self,
        request: &ChatRequest,
        request_id: &str,
        wait: Option<QueueWait>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Generation, BackendError> {
        // Rounded to the nearest ms: asked at once, this is the policy's own figure.
        let deadline_ms = deadline.map_or(0, |d| {
            (d.saturating_duration_since(tokio::time::Instant::now()).as_micros() as u64 + 500) / 1000
        });
        let engine = self.engine()?.clone();
        let encoder = self.encoder(&engine);
        let mut plan = self.prepare(&engine, &encoder, request).await?;
        // Every pass of the answer (reasoning, then answer) ends at the deadline.
        plan.generation.deadline = deadline.map(tokio::time::Instant::into_std);
        let (sender, events) = mpsc::unbounded_channel();
        // Models that think natively think in the one pass; others reason
        // in a pass of their own when the request (or its tier) asks.
        let reasoning = engine.thinking().is_none() && request.reasoning && self.reasons && request.legacy.is_none();
        let first_pass = if reasoning {
            plan.reasoning_pass(&encoder, self.reasoning_max_tokens).await?
        } else {
            plan.generation.clone()
        };
        let prompt_tokens = first_pass.prompt_tokens.len();
        let (mut first, started) = submit(&engine, first_pass, &self.name)?;
        tracing::debug!(
            request_id,
            backend = self.name,
            prompt_tokens,
            "local generation queued"
        );
        let queued_at = Instant::now();
        let turn_by = wait.map(|wait| tokio::time::Instant::now() + wait.left);
        if let Some(give_up) = turn_by.into_iter().chain(deadline).min()
            && tokio::time::timeout_at(give_up, started).await.is_err()
        {
            // Dropping `first` makes the engine skip the job when its turn comes.
            return Err(match wait {
                Some(wait) if turn_by == Some(give_up) => busy(&self.name, wait.describe()),
                _ => generation_error(
                    &self.name,
                    GenerateError::DeadlinePassed {
                        prompt_tokens,
                        prefilled: 0,
                        generated: 0,
                    },
                    deadline_ms,
                ),
            });
        }
        let queued = queued_at.elapsed();
        // Wait for the first event before answering, so that a request the
        // engine refuses still gets a proper status instead of a broken stream.
        let head = match first.recv().await {
            Some(Update::Done(Err(err))) => return Err(generation_error(&self.name, err, deadline_ms)),
            Some(update) => update,
            None => return Err(engine_stopped(&self.name)),
        };
        let driver = Driver {
            engine,
            encoder,
            in_flight: InFlight::enter(&self.in_flight),
            name: self.name.clone(),
            sender,
            plan,
            deadline_ms,
            inter_token: crate::metrics::metrics()
                .local_inter_token_latency
                .with_label_values(&[self.name.as_str()]),
        };
        tokio::spawn(driver.run(head, first, reasoning));
        Ok(Generation {
            events,
            queued,
            model: self.name.clone(),
            tokenizer: self.engine()?.tokenizer().clone(),
            stream: request.stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    /// The identity of a policy's only backend, local, with `setting` (a line).
    fn identity_with(setting: &str) -> String {
        let text = format!(
            "backends:\n  local:\n    - name: small\n      model_path: m.gguf\n      {setting}\nrouting:\n  local_backend: small\n"
        );
        let policy = Policy::parse(&text).unwrap();
        LocalBackend::identity_of(&policy.backends.local[0], Path::new("/policies"))
    }

    #[test]
    fn a_new_batch_size_or_state_budget_is_a_new_engine() {
        let default = identity_with("reasoning: true");
        assert_eq!(identity_with("max_sequences: 8"), default);
        assert_eq!(identity_with("max_state_mb: 512"), default);
        assert_ne!(identity_with("max_sequences: 4"), default);
        assert_ne!(identity_with("max_state_mb: 256"), default);
    }
}
