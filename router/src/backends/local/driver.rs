//! One answer on the engine: its jobs queued (within the wait a request may
//! spend for a turn), and their token events turned into the answer's typed
//! [`Event`]s (written for the client by `openai::completion`).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prometheus::Histogram;
use switchyard_engine::engine::{Engine, EngineBusy, Job, JobEvent};
use switchyard_engine::generate::{GenerateError, GenerationOutput, GenerationRequest, TokenEvent};
use switchyard_engine::sampling::SampledToken;
use switchyard_engine::tokenizer::Tokenizer;
use switchyard_engine::tool_calls::{CallParser, Piece};
use tokio::sync::{mpsc, oneshot};

use super::prepare::{Plan, PromptEncoder};
use crate::outcome::BackendError;
use crate::reply::{ChatReply, Event, Finished, LocalAnswer, LocalEvents, Usage};

/// What the engine thread sends back to the request's task.
pub(super) enum Update {
    Token {
        event: TokenEvent,
        /// Time since the job's previous token, for a token after its first
        /// (not for an event that only releases held-back text). A reasoning
        /// answer's two passes are two jobs: the answer pass reads a prompt
        /// before its first token, which is no gap between decode steps.
        gap: Option<Duration>,
    },
    Done(Result<GenerationOutput, GenerateError>),
}

/// A job for one generation; its events arrive on the returned channel, and
/// the oneshot fires when the engine takes the job up. When the receiver is
/// dropped the engine stops the generation at its next token, or skips it if
/// it has not started.
pub(super) fn job(generation: GenerationRequest) -> (Job, mpsc::UnboundedReceiver<Update>, oneshot::Receiver<()>) {
    let (sender, updates) = mpsc::unbounded_channel();
    let (started_tx, started) = oneshot::channel();
    let mut started_tx = Some(started_tx);
    // Tokens are timed here, on the engine's thread as each is made: the
    // request's task may take them from the channel later, several at once.
    let mut last_token: Option<Instant> = None;
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
                JobEvent::Token(event) => {
                    let gap = event.token.as_ref().and_then(|_| {
                        let now = Instant::now();
                        last_token.replace(now).map(|last| now - last)
                    });
                    Update::Token {
                        event: event.clone(),
                        gap,
                    }
                }
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

    pub(super) fn describe(self) -> String {
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

pub(super) fn busy(backend: &str, detail: String) -> BackendError {
    BackendError::LocalBusy {
        backend: backend.to_string(),
        detail,
    }
}

/// Queues one generation, or says the engine is busy.
pub(super) fn submit(
    engine: &Engine,
    generation: GenerationRequest,
    backend: &str,
) -> Result<(mpsc::UnboundedReceiver<Update>, oneshot::Receiver<()>), BackendError> {
    let (job, updates, started) = job(generation);
    engine.submit(job).map_err(|EngineBusy| {
        busy(
            backend,
            format!("{} requests are already waiting", engine.queue_capacity()),
        )
    })?;
    Ok((updates, started))
}

/// Runs the passes of one answer on the engine and turns their token events
/// into the answer's events.
pub(super) struct Driver {
    pub(super) engine: Arc<Engine>,
    pub(super) encoder: PromptEncoder,
    pub(super) in_flight: InFlight,
    pub(super) name: String,
    pub(super) sender: mpsc::UnboundedSender<Event>,
    pub(super) plan: Plan,
    /// What was left of the request's deadline when the answer was asked for.
    pub(super) deadline_ms: u64,
    /// The backend's `switchyard_local_inter_token_latency_seconds`.
    pub(super) inter_token: Histogram,
}

/// Counts an answer as in flight while it lives.
pub(super) struct InFlight(Arc<std::sync::atomic::AtomicI64>);

impl InFlight {
    pub(super) fn enter(counter: &Arc<std::sync::atomic::AtomicI64>) -> InFlight {
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
    pub(super) async fn run(self, head: Update, mut updates: mpsc::UnboundedReceiver<Update>, reasoning: bool) {
        let mut usage = Usage::default();
        let mut reasoning_tokens = 0;
        let mut next = Some(head);
        let mut reasoning_text = String::new();
        if reasoning {
            let Some(output) = self
                .forward(&mut next, &mut updates, true, &mut reasoning_text, None)
                .await
            else {
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
        let mut calls = self.plan.calls.as_ref().map(|reading| Calls {
            parser: reading.parser(),
            // One id stem per answer; each call adds its index.
            stem: format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]),
        });
        let Some(output) = self
            .forward(&mut next, &mut updates, false, &mut content, calls.as_mut())
            .await
        else {
            return;
        };
        let tool_calls = match calls.as_mut() {
            Some(calls) => {
                let rest = calls.parser.finish();
                for event in calls.events(rest, None) {
                    if self.sender.send(event).is_err() {
                        return;
                    }
                }
                calls.parser.calls()
            }
            None => 0,
        };
        usage.prompt_tokens += output.prompt_tokens as u64;
        usage.completion_tokens += output.tokens.len() as u64;
        // A model that thinks natively counts its thinking in the answer pass.
        reasoning_tokens += output.reasoning_tokens as u64;
        let cached_tokens = output.cached_tokens as u64;
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
            cached_tokens,
            client_limited: self.plan.client_limited && output.tokens.len() >= self.plan.generation.max_tokens,
            tool_calls,
        };
        let _ = self.sender.send(Event::Finished(finished));
    }

    /// Relays one pass's tokens as events until it ends (all of them as
    /// reasoning for a `reasoning` pass; else as the engine tells them apart,
    /// the answer's text read for tool `calls` when it may make them);
    /// `None` when it failed or the receiver went away.
    async fn forward(
        &self,
        next: &mut Option<Update>,
        updates: &mut mpsc::UnboundedReceiver<Update>,
        reasoning: bool,
        text: &mut String,
        mut calls: Option<&mut Calls>,
    ) -> Option<GenerationOutput> {
        loop {
            let update = match next.take() {
                Some(update) => Some(update),
                None => updates.recv().await,
            };
            match update {
                Some(Update::Token { event, gap }) => {
                    if let Some(gap) = gap {
                        self.inter_token.observe(gap.as_secs_f64());
                    }
                    text.push_str(&event.text);
                    let events = match calls.as_deref_mut() {
                        _ if reasoning || event.reasoning => vec![Event::Reasoning {
                            text: event.text,
                            token: event.token,
                        }],
                        Some(calls) => {
                            let pieces = calls.parser.push(&event.text);
                            calls.events(pieces, event.token)
                        }
                        None => vec![Event::Content {
                            text: event.text,
                            token: event.token,
                        }],
                    };
                    for event in events {
                        // The client is gone: dropping `updates` stops the engine.
                        self.sender.send(event).ok()?;
                    }
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

    fn fail(&self, err: BackendError) {
        let _ = self.sender.send(Event::Failed(err));
    }
}

/// An answer's tool calls as they are read.
struct Calls {
    parser: CallParser,
    stem: String,
}

impl Calls {
    /// The events of what one token's text completed; the token goes with the
    /// first (or alone, with no text, when the text is still held).
    fn events(&self, pieces: Vec<Piece>, token: Option<SampledToken>) -> Vec<Event> {
        let mut token = token;
        let mut events: Vec<Event> = pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => Event::Content {
                    text,
                    token: token.take(),
                },
                Piece::Call { index, name } => Event::ToolCall {
                    index,
                    id: format!("{}{index}", self.stem),
                    name,
                    token: token.take(),
                },
                Piece::Arguments { index, text } => Event::ToolArguments {
                    index,
                    text,
                    token: token.take(),
                },
            })
            .collect();
        if token.is_some() {
            events.push(Event::Content {
                text: String::new(),
                token,
            });
        }
        events
    }
}

/// A local answer being generated.
pub struct Generation {
    pub events: mpsc::UnboundedReceiver<Event>,
    /// How long the request waited in the queue for its turn (measured when the
    /// wait is bounded, by `max_queue_wait_ms` or a deadline; zero otherwise).
    pub queued: Duration,
    pub(super) model: String,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) stream: bool,
}

impl Generation {
    /// The answer as the client asked for it: `held` (events already taken
    /// from `events`, e.g. during a pre-commit window) first, then the rest:
    /// as they come when streamed, else all of them, or the error that broke
    /// the answer off.
    pub async fn into_reply(mut self, held: Vec<Event>) -> Result<ChatReply, BackendError> {
        let events = if self.stream {
            let rest = futures_util::stream::unfold(self.events, |mut events| async move {
                events.recv().await.map(|event| (event, events))
            });
            LocalEvents::Stream(futures_util::stream::iter(held).chain(rest).boxed())
        } else {
            let mut events = held;
            let finished = loop {
                match events.pop() {
                    Some(Event::Finished(finished)) => break finished,
                    Some(Event::Failed(err)) => return Err(err),
                    Some(event) => events.push(event),
                    None => {}
                }
                match self.events.recv().await {
                    Some(event) => events.push(event),
                    None => return Err(engine_stopped(&self.model)),
                }
            };
            LocalEvents::Whole { events, finished }
        };
        Ok(ChatReply::Local(LocalAnswer {
            model: self.model,
            vocabulary: self.tokenizer,
            events,
        }))
    }
}

/// `deadline_ms`: what was left of the request's deadline when the answer was asked for.
pub(super) fn generation_error(backend: &str, err: GenerateError, deadline_ms: u64) -> BackendError {
    match err {
        GenerateError::DeadlinePassed { .. } => BackendError::LocalTimeout {
            backend: backend.to_string(),
            deadline_ms,
            detail: err.to_string(),
        },
        GenerateError::PromptTooLong { .. } => BackendError::ContextLengthExceeded {
            message: err.to_string(),
        },
        GenerateError::EmptyPrompt | GenerateError::InvalidRequest(_) => BackendError::Rejected {
            message: format!("Backend `{backend}`: {err}"),
            param: None,
        },
    }
}

pub(super) fn engine_stopped(backend: &str) -> BackendError {
    BackendError::Unavailable {
        backend: backend.to_string(),
        reason: "the engine stopped".into(),
    }
}
