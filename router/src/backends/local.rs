//! The in-process model, served through the OpenAI chat API.
//!
//! A request is turned into a prompt with the model's own chat template,
//! tokenized, and queued on the [`Engine`]. Tokens come back through a channel
//! as the engine produces them; streamed requests relay each as an OpenAI chunk.
//! When the client goes away the channel closes, and the engine stops the
//! generation at its next token.
//!
//! Rendering and tokenizing a prompt is CPU work proportional to its text, so
//! it runs on tokio's blocking threads, [`PROMPTS_ENCODED_AT_ONCE`] at a time,
//! never on the async workers that answer every other connection. Before any of
//! it, a prompt whose text cannot fit the context window, whatever it says, is
//! refused from its byte count alone (see [`Tokenizer::fewest_tokens`]): a
//! pinned request with a 400, a routed one by being ineligible here.
//!
//! Client text is plain text: a control token spelled in a message
//! (`<|im_end|>`) reaches the model as the characters it is, and only the chat
//! template's own markers are control tokens (see
//! [`Tokenizer::escape_control_text`]).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use switchyard_engine::engine::{Engine, EngineBusy, Job, JobEvent, LocalModel};
use switchyard_engine::generate::{FinishReason, GenerateError, GenerationOutput, GenerationRequest, TokenEvent};
use switchyard_engine::sampling::{SampledToken, SamplingParams};
use switchyard_engine::tokenizer::{ChatEncodeError, Tokenizer};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::ChatReply;
use crate::openai::Usage;
use crate::openai::completion::{Completion, Finish, logprobs_json};
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::openai::sse;
use crate::outcome::Ineligible;
use crate::policy::{LocalBackendConfig, SamplingDefaults};

/// Fields a local model cannot honour; a request that needs them must go to a
/// backend that can (the router will route them; named directly, they are a 400).
const UNSUPPORTED_FIELDS: &[&str] = &[
    "tools",
    "functions",
    "response_format",
    "logit_bias",
    "audio",
    "prediction",
];

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

/// What the local engine is doing and holding, read for `/metrics` and the status page.
#[derive(Debug, Clone, Copy)]
pub struct LoadFigures {
    /// Jobs waiting for the engine.
    pub queued: usize,
    /// Answers being produced (queued or running, including a reasoning answer's two passes).
    pub in_flight: i64,
    /// Size of the model file (the weights stay as quantized blocks).
    pub model_bytes: u64,
    /// Memory held by the engine's KV cache.
    pub kv_cache_bytes: u64,
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
    /// How long a request may wait for its turn before it counts as busy.
    max_queue_wait: Option<Duration>,
    /// Answers being generated or waiting (for metrics).
    in_flight: Arc<std::sync::atomic::AtomicI64>,
    model_bytes: u64,
    default_max_tokens: Option<u64>,
    sampling: SamplingDefaults,
    /// Everything of the configuration that the loaded engine depends on: a
    /// reloaded policy with the same identity keeps this backend (and its model).
    identity: String,
    /// Turns to render and tokenize a prompt, [`PROMPTS_ENCODED_AT_ONCE`] of them.
    prompt_turns: Arc<Semaphore>,
}

/// What the engine thread sends back to the request's task.
enum Update {
    Token(TokenEvent),
    Done(Result<GenerationOutput, GenerateError>),
}

/// A job for one generation; its events arrive on the returned channel, and
/// the oneshot fires when the engine takes the job up. When the receiver is
/// dropped the engine stops the generation at its next token, or skips it if
/// it has not started.
fn job(generation: GenerationRequest) -> (Job, mpsc::UnboundedReceiver<Update>, oneshot::Receiver<()>) {
    let (sender, updates) = mpsc::unbounded_channel();
    let (started_tx, started) = oneshot::channel();
    let mut started_tx = Some(started_tx);
    let job = Job {
        request: generation,
        sink: Box::new(move |event| {
            let update = match event {
                JobEvent::Started => {
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(());
                    }
                    return if sender.is_closed() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    };
                }
                // Between prefill chunks: a long prompt stops when its client leaves.
                JobEvent::Prefilled { .. } if sender.is_closed() => return ControlFlow::Break(()),
                JobEvent::Prefilled { .. } => return ControlFlow::Continue(()),
                JobEvent::Token(token) => Update::Token(token.clone()),
                JobEvent::Done(result) => Update::Done(result),
            };
            match sender.send(update) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        }),
    };
    (job, updates, started)
}

/// What a request may still wait for a turn: the backend's `max_queue_wait_ms`,
/// or what is left of it when the rungs of one request's ladder share it.
#[derive(Debug, Clone, Copy)]
pub struct QueueWait {
    pub bound: Duration,
    pub left: Duration,
}

impl QueueWait {
    pub fn whole(bound: Duration) -> QueueWait {
        QueueWait { bound, left: bound }
    }

    /// After waiting `waited` of it.
    pub fn spend(self, waited: Duration) -> QueueWait {
        QueueWait {
            left: self.left.saturating_sub(waited),
            ..self
        }
    }

    fn describe(self) -> String {
        if self.left == self.bound {
            format!("no turn within {} ms", self.bound.as_millis())
        } else {
            format!(
                "no turn within {} ms, counting the {} ms this request already waited for an earlier answer",
                self.bound.as_millis(),
                (self.bound - self.left).as_millis()
            )
        }
    }
}

fn busy(backend: &str, detail: String) -> ApiError {
    ApiError::LocalBusy {
        backend: backend.to_string(),
        detail,
    }
}

/// Queues one generation, or says the engine is busy.
fn submit(
    engine: &Engine,
    generation: GenerationRequest,
    backend: &str,
) -> Result<(mpsc::UnboundedReceiver<Update>, oneshot::Receiver<()>), ApiError> {
    let (job, updates, started) = job(generation);
    engine.submit(job).map_err(|EngineBusy| {
        busy(
            backend,
            format!("{} requests are already waiting", engine.queue_capacity()),
        )
    })?;
    Ok((updates, started))
}

/// A piece of a local answer, in order: reasoning (if any), content, then one
/// `Finished` or `Failed`.
#[derive(Debug, Clone)]
pub enum Piece {
    Reasoning { text: String, token: Option<SampledToken> },
    Content { text: String, token: Option<SampledToken> },
    Finished(Finished),
    Failed(ApiError),
}

#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub reasoning_tokens: u64,
    /// The answer stopped at the client's own `max_tokens`.
    pub client_limited: bool,
}

impl Finished {
    /// How it is written in OpenAI's objects.
    fn finish(&self) -> Finish {
        Finish {
            reason: self.finish_reason.as_openai(),
            usage: self.usage,
            reasoning_tokens: self.reasoning_tokens,
        }
    }
}

/// Runs the passes of one answer on the engine and turns their events into pieces.
struct Driver {
    engine: Arc<Engine>,
    encoder: PromptEncoder,
    in_flight: InFlight,
    name: String,
    sender: mpsc::UnboundedSender<Piece>,
    plan: Plan,
    /// What was left of the request's deadline when the answer was asked for.
    deadline_ms: u64,
}

/// Counts an answer as in flight while it lives.
struct InFlight(Arc<std::sync::atomic::AtomicI64>);

impl InFlight {
    fn enter(counter: &Arc<std::sync::atomic::AtomicI64>) -> InFlight {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Driver {
    async fn run(self, head: Update, mut updates: mpsc::UnboundedReceiver<Update>, reasoning: bool) {
        let mut usage = Usage::default();
        let mut reasoning_tokens = 0;
        let mut next = Some(head);
        let mut reasoning_text = String::new();
        if reasoning {
            let Some(output) = self.forward(&mut next, &mut updates, true, &mut reasoning_text).await else {
                return;
            };
            usage.prompt_tokens += output.prompt_tokens as u64;
            usage.completion_tokens += output.tokens.len() as u64;
            reasoning_tokens = output.tokens.len() as u64;
            let answer = match self.plan.answer_pass(&self.encoder, reasoning_text.trim()).await {
                Ok(answer) => answer,
                Err(err) => return self.fail(err),
            };
            // The answer pass continues an answer under way: it goes ahead of
            // answers that have not started.
            let (job, answer_updates, _started) = job(answer);
            self.engine.submit_continuation(job);
            updates = answer_updates;
        }
        let mut content = String::new();
        let Some(output) = self.forward(&mut next, &mut updates, false, &mut content).await else {
            return;
        };
        usage.prompt_tokens += output.prompt_tokens as u64;
        usage.completion_tokens += output.tokens.len() as u64;
        let speed = &crate::metrics::metrics().local_tokens_per_second;
        speed
            .with_label_values(&[self.name.as_str(), "prefill"])
            .set(output.prefill_tokens_per_s());
        if !output.tokens.is_empty() {
            speed
                .with_label_values(&[self.name.as_str(), "decode"])
                .set(output.decode_tokens_per_s());
        }
        let _ = &self.in_flight;
        let finished = Finished {
            finish_reason: output.finish_reason,
            usage,
            reasoning_tokens,
            client_limited: self.plan.client_limited && output.tokens.len() >= self.plan.generation.max_tokens,
        };
        let _ = self.sender.send(Piece::Finished(finished));
    }

    /// Relays one pass's tokens as pieces until it ends; `None` when it failed
    /// or the receiver went away.
    async fn forward(
        &self,
        next: &mut Option<Update>,
        updates: &mut mpsc::UnboundedReceiver<Update>,
        reasoning: bool,
        text: &mut String,
    ) -> Option<GenerationOutput> {
        loop {
            let update = match next.take() {
                Some(update) => Some(update),
                None => updates.recv().await,
            };
            match update {
                Some(Update::Token(event)) => {
                    text.push_str(&event.text);
                    let piece = if reasoning {
                        Piece::Reasoning {
                            text: event.text,
                            token: event.token,
                        }
                    } else {
                        Piece::Content {
                            text: event.text,
                            token: event.token,
                        }
                    };
                    // The client is gone: dropping `updates` stops the engine.
                    self.sender.send(piece).ok()?;
                }
                Some(Update::Done(Ok(output))) => return Some(output),
                Some(Update::Done(Err(err))) => {
                    self.fail(generation_error(&self.name, err, self.deadline_ms));
                    return None;
                }
                None => {
                    self.fail(engine_stopped(&self.name));
                    return None;
                }
            }
        }
    }

    fn fail(&self, err: ApiError) {
        let _ = self.sender.send(Piece::Failed(err));
    }
}

/// A local answer being generated.
pub struct Generation {
    pub pieces: mpsc::UnboundedReceiver<Piece>,
    /// How long the request waited in the queue for its turn (measured when the
    /// wait is bounded, by `max_queue_wait_ms` or a deadline; zero otherwise).
    pub queued: Duration,
    completion: Completion,
    tokenizer: Arc<Tokenizer>,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
    top_logprobs: usize,
}

impl Generation {
    /// The answer as the client asked for it: `held` (pieces already taken from
    /// `pieces`, e.g. during a pre-commit window) first, then the rest as it comes.
    pub async fn into_reply(self, held: Vec<Piece>) -> Result<ChatReply, ApiError> {
        if self.stream {
            Ok(self.into_stream(held))
        } else {
            self.into_whole(held).await
        }
    }

    /// Collects every piece and renders the whole `chat.completion`.
    pub async fn into_whole(mut self, held: Vec<Piece>) -> Result<ChatReply, ApiError> {
        let mut pieces = held;
        while !matches!(pieces.last(), Some(Piece::Finished(_) | Piece::Failed(_))) {
            match self.pieces.recv().await {
                Some(piece) => pieces.push(piece),
                None => return Err(engine_stopped(&self.completion.model)),
            }
        }
        let mut reasoning = String::new();
        let mut content = String::new();
        let mut tokens = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Reasoning { text, .. } => reasoning.push_str(&text),
                Piece::Content { text, token } => {
                    content.push_str(&text);
                    tokens.extend(token);
                }
                Piece::Failed(err) => return Err(err),
                Piece::Finished(finished) => {
                    let logprobs = self
                        .logprobs
                        .then(|| logprobs_json(&tokens, self.top_logprobs, token_bytes(&self.tokenizer)));
                    let reasoning = (finished.reasoning_tokens > 0).then(|| reasoning.trim());
                    let body = self.completion.whole(&content, reasoning, logprobs, finished.finish());
                    return Ok(ChatReply::Complete {
                        body: Bytes::from(body.to_string()),
                        usage: Some(finished.usage),
                        headers: HeaderMap::new(),
                        status: StatusCode::OK,
                    });
                }
            }
        }
        unreachable!("the loop above ends on Finished or Failed")
    }

    fn into_stream(self, held: Vec<Piece>) -> ChatReply {
        let Generation {
            pieces,
            completion,
            tokenizer,
            include_usage,
            logprobs,
            top_logprobs,
            ..
        } = self;
        let usage_cell = super::UsageCell::default();
        let filled = usage_cell.clone();
        let role = completion.role_event();
        let rest = futures_util::stream::unfold(pieces, |mut pieces| async move {
            pieces.recv().await.map(|piece| (piece, pieces))
        });
        let events = futures_util::stream::iter(held)
            .chain(rest)
            .scan(false, move |done, piece| {
                if *done {
                    return std::future::ready(None);
                }
                let bytes = match piece {
                    Piece::Reasoning { text, .. } if !text.is_empty() => completion.reasoning_event(&text),
                    Piece::Reasoning { .. } => Bytes::new(),
                    Piece::Content { text, token } => {
                        let lp = match (&token, logprobs) {
                            (Some(token), true) => Some(logprobs_json(
                                std::slice::from_ref(token),
                                top_logprobs,
                                token_bytes(&tokenizer),
                            )),
                            _ => None,
                        };
                        if text.is_empty() && lp.is_none() {
                            Bytes::new()
                        } else {
                            completion.content_event(&text, lp)
                        }
                    }
                    Piece::Finished(finished) => {
                        *done = true;
                        *filled.lock().expect("usage cell") = Some(finished.usage);
                        completion.finish_events(finished.finish(), include_usage)
                    }
                    Piece::Failed(err) => {
                        *done = true;
                        sse::encode_data(&err.to_json().to_string())
                    }
                };
                std::future::ready(Some(bytes))
            })
            .filter(|bytes| std::future::ready(!bytes.is_empty()));
        ChatReply::Stream {
            events: futures_util::stream::once(std::future::ready(role))
                .chain(events)
                .boxed(),
            headers: HeaderMap::new(),
            usage: usage_cell,
        }
    }
}

impl LocalBackend {
    /// Loads the model and starts its engine. A model that cannot be used is
    /// logged and leaves the backend unavailable; it does not stop the daemon.
    pub fn load(config: &LocalBackendConfig, policy_dir: &Path) -> LocalBackend {
        let path = policy_dir.join(&config.model_path.value);
        let started = Instant::now();
        let engine = LocalModel::load(&path, config.context_length.as_ref().map(|c| c.value as usize))
            .map_err(|err| format!("cannot load {}: {err}", path.display()))
            .and_then(|model| {
                Engine::start(model, config.threads.value, config.queue_capacity.value)
                    .map(Arc::new)
                    .map_err(|err| format!("cannot start the engine: {err}"))
            });
        match &engine {
            Ok(engine) => tracing::info!(
                backend = config.name.value,
                model = %path.display(),
                context_tokens = engine.context_length(),
                threads = config.threads.value,
                load_ms = started.elapsed().as_millis() as u64,
                "local model loaded"
            ),
            Err(reason) => tracing::error!(backend = config.name.value, reason, "local backend is unavailable"),
        }
        LocalBackend {
            name: config.name.value.clone(),
            engine,
            default_max_tokens: config.default_max_tokens.as_ref().map(|m| m.value),
            sampling: config.sampling,
            reasoning_max_tokens: config.reasoning_max_tokens.value,
            reasons: config.reasoning,
            max_queue_wait: config
                .max_queue_wait_ms
                .as_ref()
                .map(|ms| Duration::from_millis(ms.value)),
            in_flight: Arc::default(),
            model_bytes: std::fs::metadata(&path).map_or(0, |m| m.len()),
            identity: Self::identity_of(config, policy_dir),
            prompt_turns: Arc::new(Semaphore::new(PROMPTS_ENCODED_AT_ONCE)),
        }
    }

    /// See [`LocalBackend::identity`].
    pub fn identity_of(config: &LocalBackendConfig, policy_dir: &Path) -> String {
        format!(
            "{}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}|{}|{}",
            config.name.value,
            policy_dir.join(&config.model_path.value).display(),
            config.threads.value,
            config.context_length.as_ref().map(|c| c.value),
            config.queue_capacity.value,
            config.max_queue_wait_ms.as_ref().map(|m| m.value),
            config.default_max_tokens.as_ref().map(|m| m.value),
            config.sampling,
            config.reasoning_max_tokens.value,
            config.reasoning,
        )
    }

    /// Whether this model serves the `local-reasoning` tier.
    pub fn reasons(&self) -> bool {
        self.reasons
    }

    /// The engine's load and memory, for metrics; `None` when the model did not load.
    pub fn load_figures(&self) -> Option<LoadFigures> {
        let engine = self.engine.as_ref().ok()?;
        Some(LoadFigures {
            queued: engine.queue_depth(),
            in_flight: self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            model_bytes: self.model_bytes,
            kv_cache_bytes: engine.kv_cache_bytes() as u64,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.as_ref().map_err(|reason| ApiError::BackendUnavailable {
            backend: self.name.clone(),
            reason: reason.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn readiness(&self) -> Result<(), String> {
        self.engine.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Whether this model can answer a request, judged before any tokenization
    /// from the request's fields and an estimate of its prompt length.
    pub fn eligibility(&self, request: &ChatRequest, prompt_tokens_estimate: u64) -> Result<(), Ineligible> {
        let engine = self.engine.as_ref().map_err(|_| Ineligible::Unavailable)?;
        let body = &request.body;
        let asks = &request.asks;
        if asks.tools {
            return Err(Ineligible::Tools);
        }
        if asks.json_mode {
            return Err(Ineligible::JsonMode);
        }
        if UNSUPPORTED_FIELDS.iter().any(|f| request.uses(f)) || request.sampling.n.is_some_and(|n| n != 1) {
            return Err(Ineligible::Fields);
        }
        if asks.non_text {
            return Err(Ineligible::Images);
        }
        if asks.tool_turn.is_some() {
            return Err(Ineligible::Tools);
        }
        // The same sound floor that refuses a pinned request before tokenizing
        // (the estimate is usually higher; this makes sure of it).
        let fewest = fewest_prompt_tokens(engine.tokenizer(), &body["messages"]).map_or(0, |(_, fewest)| fewest as u64);
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
    ) -> Result<ChatReply, ApiError> {
        let wait = self.max_queue_wait.map(QueueWait::whole);
        self.generate_within(request, request_id, wait, Some(deadline))
            .await?
            .into_reply(Vec::new())
            .await
    }

    /// Starts generating an answer and returns its pieces as they come. The
    /// request is refused here (not in the pieces) when it is invalid, does not
    /// fit, or the queue is full. With `request.reasoning` the model first
    /// reasons (prompted step by step, within `reasoning_max_tokens`), then
    /// answers with its reasoning in view; the reasoning comes back as
    /// `reasoning_content`, never in `content`.
    pub async fn generate(&self, request: &ChatRequest, request_id: &str) -> Result<Generation, ApiError> {
        self.generate_within(request, request_id, self.max_queue_wait.map(QueueWait::whole), None)
            .await
    }

    /// The backend's `max_queue_wait_ms`, if it has one.
    pub fn max_queue_wait(&self) -> Option<Duration> {
        self.max_queue_wait
    }

    /// As [`LocalBackend::generate`], waiting for a turn at most `wait` (what is
    /// left of a budget several calls share) instead of the backend's own bound,
    /// and ending with [`ApiError::LocalTimeout`] at `deadline`.
    pub async fn generate_within(
        &self,
        request: &ChatRequest,
        request_id: &str,
        wait: Option<QueueWait>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Generation, ApiError> {
        // Rounded to the nearest ms: asked at once, this is the policy's own figure.
        let deadline_ms = deadline.map_or(0, |d| {
            (d.saturating_duration_since(tokio::time::Instant::now()).as_micros() as u64 + 500) / 1000
        });
        let engine = self.engine()?.clone();
        let encoder = self.encoder(&engine);
        let mut plan = self.prepare(&engine, &encoder, request).await?;
        // Every pass of the answer (reasoning, then answer) ends at the deadline.
        plan.generation.deadline = deadline.map(tokio::time::Instant::into_std);
        let (sender, pieces) = mpsc::unbounded_channel();
        let reasoning = request.reasoning && self.reasons;
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
        };
        tokio::spawn(driver.run(head, first, reasoning));
        Ok(Generation {
            pieces,
            queued,
            completion: Completion::new(&self.name),
            tokenizer: self.engine()?.tokenizer().clone(),
            stream: request.stream,
            include_usage: request.include_usage,
            logprobs: request.sampling.logprobs,
            top_logprobs: request.sampling.top_logprobs.unwrap_or(0) as usize,
        })
    }

    fn encoder(&self, engine: &Arc<Engine>) -> PromptEncoder {
        PromptEncoder {
            engine: engine.clone(),
            turns: self.prompt_turns.clone(),
            backend: self.name.clone(),
        }
    }

    /// Turns the request into the engine's terms: prompt tokens, sampling, limits.
    /// The cheap checks come first; the prompt is rendered and tokenized last.
    async fn prepare(&self, engine: &Engine, encoder: &PromptEncoder, request: &ChatRequest) -> Result<Plan, ApiError> {
        let body = &request.body;
        if let Some(field) = UNSUPPORTED_FIELDS.iter().find(|f| request.uses(f)) {
            return Err(ApiError::invalid(
                format!(
                    "Backend `{}` is a local model and does not support '{field}'.",
                    self.name
                ),
                field,
            ));
        }
        if let Some(param) = &request.asks.tool_turn {
            return Err(ApiError::invalid(
                format!(
                    "Backend `{}` is a local model without tool support; it cannot read the tool call or tool result in '{param}'.",
                    self.name
                ),
                param,
            ));
        }
        let context = engine.context_length();
        if let Some((text_bytes, fewest)) = fewest_prompt_tokens(engine.tokenizer(), &body["messages"])
            && fewest >= context
        {
            return Err(ApiError::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, your messages hold {text_bytes} bytes of text, which with their turn markers is at least {fewest} tokens."
                ),
            });
        }
        if request.sampling.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                format!("Backend `{}` generates one choice ('n' must be 1).", self.name),
                "n",
            ));
        }
        let messages = text_only_messages(&body["messages"], &self.name)?;
        let extra: Map<String, Value> = match body.get("chat_template_kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(kwargs)) => kwargs.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "'chat_template_kwargs' must be an object.",
                    "chat_template_kwargs",
                ));
            }
        };

        // OpenAI's fields come validated (`request.sampling`); the local
        // model's extras (`top_k`, `min_p`, `repetition_penalty`, as vLLM and
        // llama.cpp take them) are read here.
        let extra_number = |field: &str, default: f32| -> Result<f32, ApiError> {
            match body.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
                Some(_) => Err(ApiError::invalid(format!("'{field}' must be a number."), field)),
            }
        };
        let defaults = self.sampling;
        let top_k = match body.get("top_k") {
            None | Some(Value::Null) => defaults.top_k,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::invalid("'top_k' must be a non-negative integer.", "top_k"))?
                as usize,
        };
        let asked = &request.sampling;
        let sampling = SamplingParams {
            temperature: asked.temperature.unwrap_or(defaults.temperature),
            top_p: asked.top_p.unwrap_or(defaults.top_p),
            top_k,
            min_p: extra_number("min_p", defaults.min_p)?,
            presence_penalty: asked.presence_penalty.unwrap_or(0.0),
            frequency_penalty: asked.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: extra_number("repetition_penalty", defaults.repetition_penalty)?,
            seed: asked.seed,
        };
        sampling.validate().map_err(|why| {
            let field = why.split_whitespace().next().unwrap_or("temperature").to_string();
            ApiError::invalid(format!("Invalid sampling parameter: {why}."), &field)
        })?;
        let stop_strings = asked.stop.clone();
        let top_logprobs = asked.top_logprobs.unwrap_or(0) as usize;
        let messages = Arc::new(messages);
        let extra = Arc::new(extra);
        let prompt_tokens = encoder.encode(messages.clone(), extra.clone()).await?;
        let room = (context - prompt_tokens.len()) as u64;
        let max_tokens = request.max_tokens.or(self.default_max_tokens).unwrap_or(room).min(room) as usize;
        Ok(Plan {
            generation: GenerationRequest {
                prompt_tokens,
                max_tokens,
                sampling,
                stop_tokens: Vec::new(),
                stop_strings,
                // At least two alternatives: the ladder reads the top-1/top-2 margin.
                top_logprobs: top_logprobs.max(2),
                ignore_eos: false,
                deadline: None,
            },
            messages,
            extra,
            client_limited: request.max_tokens.is_some_and(|m| m as usize == max_tokens),
        })
    }
}

/// Renders and tokenizes prompts for one request, off the async workers and
/// within the backend's [`PROMPTS_ENCODED_AT_ONCE`].
#[derive(Clone)]
struct PromptEncoder {
    engine: Arc<Engine>,
    turns: Arc<Semaphore>,
    backend: String,
}

impl PromptEncoder {
    async fn encode(&self, messages: Arc<Value>, extra: Arc<Map<String, Value>>) -> Result<Vec<u32>, ApiError> {
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let engine = self.engine.clone();
        let backend = self.backend.clone();
        // The turn moves into the blocking task: a client that goes away stops
        // waiting, but the work already started keeps its turn until it ends.
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            encode(&engine, &messages, &extra, &backend)
        })
        .await
        .map_err(|err| ApiError::BackendUnavailable {
            backend: self.backend.clone(),
            reason: format!("preparing the prompt failed: {err}"),
        })?
    }
}

/// Renders messages with the model's chat template and tokenizes them,
/// refusing a prompt that leaves no room in the context window. Every string
/// the client supplied is escaped first, so that the only control tokens in the
/// prompt are the template's own.
fn encode(engine: &Engine, messages: &Value, extra: &Map<String, Value>, backend: &str) -> Result<Vec<u32>, ApiError> {
    let tokenizer = engine.tokenizer();
    let template = engine.template().ok_or_else(|| ApiError::BackendUnavailable {
        backend: backend.to_string(),
        reason: "the model has no chat template".into(),
    })?;
    let mut messages = messages.clone();
    tokenizer.escape_control_text_in(&mut messages);
    let mut extra = Value::Object(extra.clone());
    tokenizer.escape_control_text_in(&mut extra);
    let Value::Object(extra) = extra else {
        unreachable!("escaping keeps an object an object")
    };
    let token_text = |t: Option<(u32, String)>| t.map(|(_, text)| text).unwrap_or_default();
    let prompt = template
        .render(
            &messages,
            true,
            &token_text(tokenizer.bos_token()),
            &token_text(tokenizer.eos_token()),
            &extra,
        )
        .map_err(|err| ApiError::invalid(format!("The chat template refused the messages: {err}"), "messages"))?;
    drop(messages);
    let context = engine.context_length();
    let prompt_tokens = tokenizer.encode_chat(&prompt, context).map_err(|err| match err {
        ChatEncodeError::TooLong { at_least_tokens } => ApiError::ContextLengthExceeded {
            message: format!(
                "This model's maximum context length is {context} tokens. However, your messages resulted in at least {at_least_tokens} tokens."
            ),
        },
        ChatEncodeError::Tokenizer(err) => {
            ApiError::invalid(format!("Cannot tokenize the prompt: {err}"), "messages")
        }
    })?;
    if prompt_tokens.len() >= context {
        return Err(ApiError::ContextLengthExceeded {
            message: format!(
                "This model's maximum context length is {context} tokens. However, your messages resulted in {} tokens.",
                prompt_tokens.len()
            ),
        });
    }
    Ok(prompt_tokens)
}

/// Asks a model without native thinking to reason before it answers.
pub const REASONING_INSTRUCTION: &str =
    "Think through the problem step by step, checking each step. Do not give the final answer yet.";
/// Asks for the answer once the reasoning is in view.
pub const ANSWER_INSTRUCTION: &str = "Using the reasoning above, give your final answer.";

/// A request in the engine's terms, and what is needed to derive the passes of
/// a reasoning answer from it.
struct Plan {
    /// The answer pass (the only pass without reasoning).
    generation: GenerationRequest,
    messages: Arc<Value>,
    extra: Arc<Map<String, Value>>,
    /// Whether `max_tokens` is the client's own limit (an answer cut there is
    /// what the client asked for, not a weakness of the model).
    client_limited: bool,
}

impl Plan {
    /// The reasoning pass: the messages with the step-by-step instruction,
    /// within the reasoning budget, greedy-ish sampling as the answer's.
    async fn reasoning_pass(&self, encoder: &PromptEncoder, budget: u64) -> Result<GenerationRequest, ApiError> {
        let mut messages = self.messages.as_array().cloned().unwrap_or_default();
        match messages.first_mut() {
            Some(first) if first["role"] == "system" || first["role"] == "developer" => {
                let text = first["content"].as_str().unwrap_or("");
                first["content"] = Value::String(format!("{text}\n\n{REASONING_INSTRUCTION}"));
            }
            _ => messages.insert(0, json!({ "role": "system", "content": REASONING_INSTRUCTION })),
        }
        let prompt_tokens = encoder
            .encode(Arc::new(Value::Array(messages)), self.extra.clone())
            .await?;
        let room = (encoder.engine.context_length() - prompt_tokens.len()) as u64;
        Ok(GenerationRequest {
            prompt_tokens,
            max_tokens: budget.min(room) as usize,
            stop_strings: Vec::new(),
            ..self.generation.clone()
        })
    }

    /// The answer pass after reasoning: the conversation, the reasoning as the
    /// model's own turn, and the request for the final answer.
    async fn answer_pass(&self, encoder: &PromptEncoder, reasoning: &str) -> Result<GenerationRequest, ApiError> {
        let mut messages = self.messages.as_array().cloned().unwrap_or_default();
        messages.push(json!({ "role": "assistant", "content": reasoning }));
        messages.push(json!({ "role": "user", "content": ANSWER_INSTRUCTION }));
        let prompt_tokens = encoder
            .encode(Arc::new(Value::Array(messages)), self.extra.clone())
            .await?;
        let room = encoder.engine.context_length() - prompt_tokens.len();
        Ok(GenerationRequest {
            prompt_tokens,
            max_tokens: self.generation.max_tokens.min(room),
            ..self.generation.clone()
        })
    }
}

/// The bytes of text every chat template prints, and the fewest tokens the
/// prompt can be: that text's floor (see [`Tokenizer::fewest_tokens`]) plus one
/// control token a message, the role marker every chat template we know writes
/// for each turn (100,000 one-word messages are a 3.5 MB body whose text alone
/// says little, and whose rendering would cost hundreds of MB). An assistant
/// turn's string counts from its last `</think>` on, without the line breaks
/// after it: thinking models' templates (Qwen3, DeepSeek-R1) drop earlier
/// turns' reasoning and keep the rest (its parts, rare, count nothing: a
/// marker may straddle two). `None` when the tokenizer cannot bound the
/// text. Cheap: one pass over the messages, nothing copied, so it runs before
/// rendering and in eligibility.
fn fewest_prompt_tokens(tokenizer: &Tokenizer, messages: &Value) -> Option<(usize, usize)> {
    let messages = messages.as_array()?;
    let text_bytes: usize = messages
        .iter()
        .map(|message| match (message["role"] == "assistant", &message["content"]) {
            (false, Value::String(text)) => text.len(),
            (true, Value::String(text)) => {
                let answer = text.rsplit_once("</think>").map_or(text.as_str(), |(_, answer)| answer);
                answer.trim_start_matches('\n').len()
            }
            (false, Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            _ => 0,
        })
        .sum();
    Some((text_bytes, tokenizer.fewest_tokens(text_bytes)? + messages.len()))
}

/// The messages with any content-part arrays flattened to text; images and
/// audio are refused.
fn text_only_messages(messages: &Value, backend: &str) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for (i, message) in messages.as_array().into_iter().flatten().enumerate() {
        let mut message = message.clone();
        if let Some(Value::Array(parts)) = message.get("content") {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!(
                                "Backend `{backend}` is a text-only local model; content part type {:?} is not supported.",
                                kind.unwrap_or("?")
                            ),
                            &format!("messages[{i}].content[{j}]"),
                        ));
                    }
                }
            }
            message["content"] = Value::String(text);
        }
        out.push(message);
    }
    Ok(Value::Array(out))
}

/// A token id's bytes, for its log-probability entry.
fn token_bytes<'t>(tokenizer: &'t Tokenizer) -> impl Fn(u32) -> &'t [u8] {
    |id| tokenizer.token_bytes(id).unwrap_or_default()
}

/// `deadline_ms`: what was left of the request's deadline when the answer was asked for.
fn generation_error(backend: &str, err: GenerateError, deadline_ms: u64) -> ApiError {
    match err {
        GenerateError::DeadlinePassed { .. } => ApiError::LocalTimeout {
            backend: backend.to_string(),
            deadline_ms,
            detail: err.to_string(),
        },
        GenerateError::PromptTooLong { .. } => ApiError::ContextLengthExceeded {
            message: err.to_string(),
        },
        GenerateError::EmptyPrompt | GenerateError::InvalidRequest(_) => ApiError::InvalidRequest {
            message: format!("Backend `{backend}`: {err}"),
            param: None,
        },
    }
}

fn engine_stopped(backend: &str) -> ApiError {
    ApiError::BackendUnavailable {
        backend: backend.to_string(),
        reason: "the engine stopped".into(),
    }
}
