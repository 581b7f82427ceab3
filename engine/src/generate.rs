//! Generation: prefill the prompt, then sample one token at a time until an
//! end-of-turn token, a stop string, `max_tokens`, cancellation, or the
//! request's deadline. [`Generation`] is one answer as a state machine, run a
//! step at a time by its caller (the engine's batch, where it runs beside
//! others); [`generate`] runs one alone.
//!
//! A generation is bounded in time by its request's deadline, checked before it
//! starts (a request that waited past it in a queue costs nothing), between
//! the prefill's chunks (at most [`Model::PREFILL_CHUNK`] positions each) and
//! between decode steps: one chunk or one step is the most it overruns. Between chunks
//! the caller is also asked whether to go on ([`Progress::Prefilled`]), so a
//! caller that left stops a long prefill too, not only a decode.
//!
//! Text is streamed as it becomes final. Two things hold text back: a token
//! that ends inside a multi-byte UTF-8 character (the [`StreamDecoder`] waits
//! for the rest), and text that could be the start of a stop string (we wait
//! until it either completes the stop string, which is then cut, or cannot).
//!
//! A model that thinks natively ([`Thinking`]) writes its reasoning and its
//! answer in two channels; each event says which ([`TokenEvent::reasoning`]),
//! stop strings apply to the answer only, and a thinking budget is kept by
//! feeding the tokens that close the block (see [`crate::thinking`]).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::prelude::*;

use crate::constraint::Constraint;
use crate::model::{KvSlot, Model, Segment};
use crate::sampling::{SampledToken, Sampler, SamplingParams};
use crate::thinking::{Channel, Thinking, ThinkingTracker};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// The most alternatives OpenAI lets a client ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_tokens: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation besides the model's own end-of-turn tokens.
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation; the answer is cut before them.
    pub stop_strings: Vec<String>,
    /// Alternatives reported per token (0 to [`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: usize,
    /// Keep generating through end-of-turn tokens (benchmarks: a fixed token count).
    pub ignore_eos: bool,
    /// When the answer is no use any more (the HTTP request's deadline): past
    /// it the generation stops with [`GenerateError::DeadlinePassed`]. `None`:
    /// no bound (the CLI, offline evaluation).
    pub deadline: Option<Instant>,
    /// The model's thinking markers and budget: its output is split into
    /// reasoning and answer. `None`: all of it is the answer.
    pub thinking: Option<Thinking>,
    /// A grammar the answer must follow (outside a thinking block); the
    /// answer ends when the grammar is complete.
    pub constraint: Option<Constraint>,
}

impl GenerationRequest {
    /// A prompt answered with `sampling` for at most `max_tokens`, and nothing
    /// else: no stop strings, log-probs, deadline, thinking or grammar.
    pub fn new(prompt_tokens: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> GenerationRequest {
        GenerationRequest {
            prompt_tokens,
            max_tokens,
            sampling,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            top_logprobs: 0,
            ignore_eos: false,
            deadline: None,
            thinking: None,
            constraint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context window ran out.
    Length,
    /// The caller stopped it.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::Cancelled => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the generation loop reports to its caller as it goes; the caller's
/// `Break` stops it.
#[derive(Debug)]
pub enum Progress<'a> {
    /// `positions` of the prompt's `prompt_tokens` have run (between prefill chunks).
    Prefilled {
        positions: usize,
        prompt_tokens: usize,
    },
    Token(&'a TokenEvent),
}

/// Progress handed to the streaming callback: a generated token, or (once, at
/// the end) text that was held back and is final now.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    /// `None` for the closing event that only releases held-back text.
    pub token: Option<SampledToken>,
    /// Text that became final with this event (may be empty, or span earlier tokens).
    pub text: String,
    /// Whether this is reasoning (the token is a thinking marker or inside a
    /// thinking block, and the text is reasoning text), not the answer.
    pub reasoning: bool,
}

#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub prompt_tokens: usize,
    /// Generated tokens, the end-of-turn token excluded (reasoning included).
    pub tokens: Vec<SampledToken>,
    /// The answer's text.
    pub text: String,
    /// The reasoning's text (empty without thinking).
    pub reasoning: String,
    /// Of `tokens`, those in thinking blocks, their markers included.
    pub reasoning_tokens: usize,
    /// Of the prompt's tokens, those whose state came from the cache (an
    /// earlier request's), not run again.
    pub cached_tokens: usize,
    pub finish_reason: FinishReason,
    /// The [`MAX_TOP_LOGPROBS`] most likely tokens after the prompt, most likely
    /// first, with their log-probs (from prefill).
    pub first_step_top: Vec<(u32, f32)>,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl GenerationOutput {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (the first comes from prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerateError {
    EmptyPrompt,
    /// The prompt does not leave room for one generated token.
    PromptTooLong {
        prompt_tokens: usize,
        context_length: usize,
    },
    InvalidRequest(String),
    /// The request's deadline passed before the answer was complete; what was
    /// generated is dropped.
    DeadlinePassed {
        prompt_tokens: usize,
        /// Prompt positions run when it stopped (0: it never started).
        prefilled: usize,
        generated: usize,
    },
}

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenerateError::EmptyPrompt => write!(f, "the prompt is empty"),
            GenerateError::PromptTooLong {
                prompt_tokens,
                context_length,
            } => write!(
                f,
                "the prompt is {prompt_tokens} tokens, which leaves no room for an answer in this model's context of {context_length} tokens"
            ),
            GenerateError::InvalidRequest(why) => f.write_str(why),
            GenerateError::DeadlinePassed {
                prompt_tokens,
                prefilled,
                generated,
            } => match (prefilled, generated) {
                (0, _) => write!(f, "the deadline passed before the generation started"),
                (_, 0) => write!(
                    f,
                    "the deadline passed after {prefilled} of the prompt's {prompt_tokens} tokens were read"
                ),
                _ => write!(
                    f,
                    "the deadline passed after the prompt's {prompt_tokens} tokens were read and {generated} were generated"
                ),
            },
        }
    }
}

impl std::error::Error for GenerateError {}

/// What a generation needs the model to run next ([`Generation::input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// These positions of the prompt; the logits of the last are needed when
    /// it is the prompt's last.
    Prompt(std::ops::Range<usize>),
    /// The token just sampled: its logits give the next one.
    Token(u32),
}

/// Where a generation stands after a step ([`Generation::advance`]).
#[derive(Debug, PartialEq)]
pub enum Step {
    /// It needs another input.
    Continue,
    /// The answer is over; [`Generation::finish`] gives it.
    Finished(FinishReason),
    /// It failed (its deadline passed); what it generated is dropped.
    Failed(GenerateError),
}

/// One answer in the making, a step at a time: the caller runs what
/// [`Generation::input`] asks for on the slot's cache (alone, or in a batch
/// with other sequences: rows are computed independently, so the answer is
/// the same either way) and hands the outcome to [`Generation::advance`],
/// until it says the answer is over.
///
/// The prompt runs in pieces as large as the caller allows; between them the
/// caller is asked whether to go on ([`Progress::Prefilled`]), and the
/// request's deadline is checked. A model with a recurrent state has it
/// snapshotted at the prompt's last turn boundary (after its last end-of-turn
/// token) on the way, for the next turn to start from: a piece never spans it.
pub struct Generation<'t> {
    prompt: Vec<u32>,
    top_logprobs: usize,
    deadline: Option<Instant>,
    max_tokens: usize,
    /// Prompt positions whose state the cache holds.
    prefilled: usize,
    /// Where the recurrent state is snapshotted, when it is.
    boundary: Option<usize>,
    cached_tokens: usize,
    sampler: Sampler,
    stops: Vec<u32>,
    text: StopStringFilter,
    decoder: StreamDecoder<'t>,
    thinking: Option<ThinkingTracker>,
    /// After a thinking block closes, the answer's leading whitespace goes.
    trim_answer_start: bool,
    constraint: Option<Constraint>,
    /// Whether the answer (outside thinking) has begun.
    answering: bool,
    tokens: Vec<SampledToken>,
    first_step_top: Vec<(u32, f32)>,
    started: Instant,
    prefill_time: Duration,
    decode_started: Option<Instant>,
}

impl<'t> Generation<'t> {
    /// Checks `request` and readies `slot`'s cache for it: the prompt's first
    /// tokens whose state the slot holds (a conversation's earlier turns, see
    /// [`KvSlot::reusable`]) are not run again, and their count is reported
    /// ([`GenerationOutput::cached_tokens`]).
    pub fn start(
        model: &Model,
        tokenizer: &'t Tokenizer,
        request: &GenerationRequest,
        context_length: usize,
        device: &Device,
        slot: &mut KvSlot,
    ) -> Result<Generation<'t>, GenerateError> {
        let prompt = &request.prompt_tokens;
        check_prompt(prompt, model, context_length, 1)?;
        if request.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(GenerateError::InvalidRequest(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}"
            )));
        }
        request.sampling.validate().map_err(GenerateError::InvalidRequest)?;
        // Before the cache is sized: a request that waited past its deadline costs nothing.
        if request.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(GenerateError::DeadlinePassed {
                prompt_tokens: prompt.len(),
                prefilled: 0,
                generated: 0,
            });
        }
        let max_tokens = request.max_tokens.min(context_length - prompt.len());
        let reuse = slot.reusable(prompt);
        let (_, start) = slot.prepare_reusing(model, prompt, reuse, prompt.len() + max_tokens, context_length, device);
        // A recurrent state cannot be cut back to a shorter prefix: it is
        // snapshotted where the next turn's prompt will part from this one.
        let turn_ends = tokenizer.end_of_turn_ids();
        let turn_end = prompt
            .iter()
            .rposition(|id| turn_ends.contains(id))
            .map_or(0, |at| at + 1);
        slot.set_turn_end(turn_end);
        let boundary = Some(turn_end).filter(|&at| at > start && at < prompt.len() && slot.has_recurrent_state());
        let mut stops: Vec<u32> = if request.ignore_eos { Vec::new() } else { turn_ends };
        stops.extend(&request.stop_tokens);
        // A grammar decides where a constrained answer ends: a stop string could
        // only cut it short of valid.
        let stop_strings: &[String] = if request.constraint.is_some() {
            &[]
        } else {
            &request.stop_strings
        };
        Ok(Generation {
            prompt: prompt.clone(),
            top_logprobs: request.top_logprobs,
            deadline: request.deadline,
            max_tokens,
            prefilled: start,
            boundary,
            cached_tokens: start,
            sampler: Sampler::new(request.sampling.clone()),
            stops,
            text: StopStringFilter::new(stop_strings),
            decoder: StreamDecoder::new(tokenizer),
            thinking: request
                .thinking
                .clone()
                .map(|thinking| ThinkingTracker::new(thinking, prompt)),
            trim_answer_start: false,
            constraint: request.constraint.as_ref().map(Constraint::fresh),
            answering: false,
            tokens: Vec::new(),
            first_step_top: Vec::new(),
            started: Instant::now(),
            prefill_time: Duration::ZERO,
            decode_started: None,
        })
    }

    /// What to run next: at most `max_positions` (at least 1) of the prompt
    /// while it lasts, then the token last sampled.
    pub fn input(&self, max_positions: usize) -> Input {
        if self.prefilled < self.prompt.len() {
            let end = match self.boundary {
                Some(at) if self.prefilled < at => at,
                _ => self.prompt.len(),
            };
            return Input::Prompt(self.prefilled..end.min(self.prefilled + max_positions.max(1)));
        }
        Input::Token(self.tokens.last().expect("a sampled token follows the prompt").id)
    }

    /// The tokens `input` names.
    pub fn tokens_of<'a>(&'a self, input: &'a Input) -> &'a [u32] {
        match input {
            Input::Prompt(range) => &self.prompt[range.clone()],
            Input::Token(id) => std::slice::from_ref(id),
        }
    }

    /// Whether the logits of `input`'s last position are needed: it is a
    /// token, or it ends the prompt.
    pub fn needs_logits(&self, input: &Input) -> bool {
        !matches!(input, Input::Prompt(range) if range.end < self.prompt.len())
    }

    /// Whether the prompt has run through.
    pub fn is_decoding(&self) -> bool {
        self.prefilled == self.prompt.len()
    }

    /// The positions its state may reach: the prompt and the longest answer.
    pub fn positions(&self) -> usize {
        self.prompt.len() + self.max_tokens
    }

    /// Goes on after `input` ran on `slot`'s cache; `logits` are the last
    /// position's, when it was the prompt's last or a token. `on_progress`
    /// sees the prefill's progress between its pieces and every token as it
    /// is sampled, and may stop the generation by answering `Break`.
    pub fn advance(
        &mut self,
        slot: &mut KvSlot,
        input: &Input,
        logits: Option<&[f32]>,
        mut on_progress: impl FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> Step {
        match input {
            Input::Prompt(range) => {
                self.prefilled = range.end;
                if Some(self.prefilled) == self.boundary {
                    slot.mark();
                }
                if self.prefilled < self.prompt.len() {
                    if self.past_deadline() {
                        return Step::Failed(self.deadline_passed());
                    }
                    let progress = Progress::Prefilled {
                        positions: self.prefilled,
                        prompt_tokens: self.prompt.len(),
                    };
                    return match on_progress(progress) {
                        ControlFlow::Continue(()) => Step::Continue,
                        ControlFlow::Break(()) => Step::Finished(FinishReason::Cancelled),
                    };
                }
                self.prefill_time = self.started.elapsed();
                self.decode_started = Some(Instant::now());
                let logits = logits.expect("the prompt's last position has logits");
                let log_z = crate::sampling::log_sum_exp(logits);
                self.first_step_top = crate::sampling::top_k_indices(logits, MAX_TOP_LOGPROBS)
                    .into_iter()
                    .map(|i| (i as u32, logits[i] - log_z))
                    .collect();
                self.sample(logits, on_progress)
            }
            Input::Token(id) => {
                slot.record(*id);
                self.sample(logits.expect("a token's logits"), on_progress)
            }
        }
    }

    /// Whether the request's deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The error of a generation stopped by its deadline now.
    pub fn deadline_passed(&self) -> GenerateError {
        GenerateError::DeadlinePassed {
            prompt_tokens: self.prompt.len(),
            prefilled: self.prefilled,
            generated: self.tokens.len(),
        }
    }

    /// Samples the next token from `logits` and reports it.
    fn sample(&mut self, logits: &[f32], mut on_progress: impl FnMut(Progress<'_>) -> ControlFlow<()>) -> Step {
        let mut forced = self.thinking.as_mut().and_then(ThinkingTracker::forced_token);
        // Before its answer a thinking model may open a block, whatever the
        // grammar of the answer says (a call required from the first token
        // still lets Qwen3 think first).
        if forced.is_none()
            && self.constraint.is_some()
            && !self.answering
            && let Some(open) = self
                .thinking
                .as_ref()
                .filter(|t| t.may_open())
                .map(ThinkingTracker::open_marker)
            && self.sampler.propose(logits) == open
        {
            forced = Some(open);
        }
        // The grammar holds outside a thinking block (and not over the
        // whitespace forced after one).
        let in_block = self.thinking.as_ref().is_some_and(ThinkingTracker::inside);
        let grammar = self.constraint.as_mut().filter(|_| forced.is_none() && !in_block);
        let constrained = grammar.is_some();
        let token = match (forced, grammar) {
            (Some(id), _) => self.sampler.force(logits, id, self.top_logprobs),
            (None, Some(grammar)) => {
                if grammar.is_finished() {
                    return Step::Finished(FinishReason::Stop);
                }
                let id = match grammar.forced().first() {
                    Some(&id) => id,
                    None => {
                        // The sampler's own choice when the grammar allows it
                        // (a few µs to check), else the choice among what it allows.
                        let choice = self.sampler.propose(logits);
                        if grammar.allows(choice) {
                            choice
                        } else {
                            let mut masked = logits.to_vec();
                            if !grammar.mask(&mut masked) {
                                return Step::Finished(FinishReason::Stop);
                            }
                            self.sampler.propose(&masked)
                        }
                    }
                };
                if self.stops.contains(&id) && grammar.may_end() {
                    return Step::Finished(FinishReason::Stop);
                }
                if grammar.accept(id).is_err() {
                    return Step::Finished(FinishReason::Stop);
                }
                self.sampler.force(logits, id, self.top_logprobs)
            }
            (None, None) => self.sampler.sample(logits, self.top_logprobs),
        };
        if !constrained && forced.is_none() && self.stops.contains(&token.id) {
            return Step::Finished(FinishReason::Stop);
        }
        let channel = self.thinking.as_mut().map_or(Channel::Answer, |t| t.take(token.id));
        self.answering |= channel == Channel::Answer;
        let (final_text, hit_stop) = match (channel, self.thinking.as_mut()) {
            (Channel::Marker, Some(thinking)) => {
                // Bytes of a character cut off by the marker end the channel it ends.
                let rest = self.decoder.finish();
                let (tail, reasoning) = if thinking.inside() {
                    (self.text.push(&rest).0, false)
                } else {
                    let tail = thinking.reasoning(&rest);
                    thinking.end_block();
                    self.trim_answer_start = true;
                    (tail, true)
                };
                release(&mut on_progress, tail, reasoning);
                (String::new(), false)
            }
            (Channel::Reasoning, Some(thinking)) => (thinking.reasoning(&self.decoder.push(token.id)), false),
            _ => {
                let piece = self.decoder.push(token.id);
                let piece = if self.trim_answer_start {
                    piece.trim_start()
                } else {
                    &piece
                };
                self.trim_answer_start &= piece.is_empty();
                self.text.push(piece)
            }
        };
        let event = TokenEvent {
            token: Some(token.clone()),
            text: final_text,
            reasoning: channel != Channel::Answer,
        };
        self.tokens.push(token);
        let control = on_progress(Progress::Token(&event));
        if hit_stop {
            return Step::Finished(FinishReason::Stop);
        }
        if control.is_break() {
            return Step::Finished(FinishReason::Cancelled);
        }
        if self.tokens.len() >= self.max_tokens {
            return Step::Finished(FinishReason::Length);
        }
        if self.past_deadline() {
            return Step::Failed(self.deadline_passed());
        }
        Step::Continue
    }

    /// The answer, ended for `finish_reason`: what the decoder and the stop
    /// filter held back is released through `on_progress` first.
    pub fn finish(
        mut self,
        finish_reason: FinishReason,
        mut on_progress: impl FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> GenerationOutput {
        let decode_time = self.decode_started.map_or(Duration::ZERO, |at| at.elapsed());
        if self.decode_started.is_none() {
            self.prefill_time = self.started.elapsed();
        }
        let rest = self.decoder.finish();
        match self.thinking.as_mut() {
            Some(thinking) if thinking.inside() => {
                // It ended inside a block: the rest is reasoning.
                let tail = thinking.reasoning(&rest);
                thinking.end_block();
                release(&mut on_progress, tail, true);
            }
            _ if finish_reason != FinishReason::Stop || !self.text.stopped() => {
                // Whatever the decoder and the stop filter still hold is final now.
                let rest = if self.trim_answer_start {
                    rest.trim_start()
                } else {
                    &rest
                };
                let (mut tail, _) = self.text.push(rest);
                tail.push_str(&self.text.flush());
                release(&mut on_progress, tail, false);
            }
            _ => {}
        }
        let reasoning_tokens = self.thinking.as_ref().map_or(0, ThinkingTracker::spent);
        if let Some(loops) = self
            .thinking
            .as_ref()
            .map(ThinkingTracker::loops_closed)
            .filter(|&n| n > 0)
        {
            tracing::info!(loops, reasoning_tokens, "thinking went round in a loop and was closed");
        }
        GenerationOutput {
            prompt_tokens: self.prompt.len(),
            text: self.text.into_text(),
            reasoning: self.thinking.map(ThinkingTracker::into_reasoning).unwrap_or_default(),
            reasoning_tokens,
            cached_tokens: self.cached_tokens,
            tokens: self.tokens,
            finish_reason,
            first_step_top: self.first_step_top,
            prefill_time: self.prefill_time,
            decode_time,
        }
    }
}

/// Generates an answer on the calling thread, one sequence alone (see
/// [`Generation`]); `on_progress` sees the prefill's progress between its
/// chunks ([`Model::PREFILL_CHUNK`] positions each) and every token as it is
/// sampled, and may stop generation by returning `Break`. The KV cache comes
/// from `slot`, and is reused as [`Generation::start`] says.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    request: &GenerationRequest,
    context_length: usize,
    device: &Device,
    slot: &mut KvSlot,
    mut on_progress: impl FnMut(Progress<'_>) -> ControlFlow<()>,
) -> Result<GenerationOutput, GenerateError> {
    let mut generation = Generation::start(model, tokenizer, request, context_length, device, slot)?;
    loop {
        let input = generation.input(Model::PREFILL_CHUNK);
        let mut segment = [Segment {
            tokens: generation.tokens_of(&input),
            cache: slot.cache().expect("prepared by Generation::start"),
            logits: generation.needs_logits(&input),
        }];
        let logits = model.forward_batch(&mut segment).pop().flatten();
        match generation.advance(slot, &input, logits.as_deref(), &mut on_progress) {
            Step::Continue => {}
            Step::Finished(reason) => return Ok(generation.finish(reason, &mut on_progress)),
            Step::Failed(err) => return Err(err),
        }
    }
}

/// Reports `text` that became final without a token of its own (held back
/// until a marker, or until the end), if there is any.
fn release(on_progress: &mut impl FnMut(Progress<'_>) -> ControlFlow<()>, text: String, reasoning: bool) {
    if !text.is_empty() {
        let event = TokenEvent {
            token: None,
            text,
            reasoning,
        };
        let _ = on_progress(Progress::Token(&event));
    }
}

/// A prompt the model can run: not empty, every id in its vocabulary, and
/// short enough to leave `room` positions of `context_length` after it.
pub(crate) fn check_prompt(
    prompt: &[u32],
    model: &Model,
    context_length: usize,
    room: usize,
) -> Result<(), GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() + room > context_length {
        return Err(GenerateError::PromptTooLong {
            prompt_tokens: prompt.len(),
            context_length,
        });
    }
    match prompt.iter().find(|&&id| id as usize >= model.vocab_size()) {
        Some(&bad) => Err(GenerateError::InvalidRequest(format!(
            "token id {bad} is outside the vocabulary"
        ))),
        None => Ok(()),
    }
}

/// Cuts the text at the first stop string, holding back any tail that may
/// still grow into one.
struct StopStringFilter {
    stops: Vec<String>,
    /// All final text so far.
    emitted: String,
    /// Text not yet known to be final.
    pending: String,
    stopped: bool,
}

impl StopStringFilter {
    fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            emitted: String::new(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Adds text; returns what became final and whether a stop string was hit.
    fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.emitted.push_str(&out);
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|stop| partial_suffix(&self.pending, stop))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out: String = self.pending.drain(..cut).collect();
        self.emitted.push_str(&out);
        (out, false)
    }

    fn flush(&mut self) -> String {
        let out = std::mem::take(&mut self.pending);
        self.emitted.push_str(&out);
        out
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    fn into_text(self) -> String {
        self.emitted
    }
}

/// The length of the longest end of `text` that is a proper beginning of
/// `marker`: text that may turn out to be the marker once more comes (a stop
/// string, a tool call's tag), and so is held back.
pub(crate) fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::StopStringFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut filter = StopStringFilter::new(&stops);
        let mut out = Vec::new();
        let mut hit = false;
        for piece in pieces {
            let (text, stop) = filter.push(piece);
            out.push(text);
            if stop {
                hit = true;
                break;
            }
        }
        if !hit {
            out.push(filter.flush());
        }
        (out, hit, filter.into_text())
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_cut_and_never_emitted() {
        let (out, hit, text) = run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]);
        assert!(hit);
        assert_eq!(text, "Hello");
        assert!(out.iter().all(|piece| !piece.contains('\n')), "{out:?}");
    }

    #[test]
    fn a_false_start_is_released() {
        let (_, hit, text) = run(&["STOP"], &["ST", "ART", "!"]);
        assert!(!hit);
        assert_eq!(text, "START!");
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let (out, hit, text) = run(&[], &["a", "b"]);
        assert!(!hit);
        assert_eq!(out, ["a", "b", ""]);
        assert_eq!(text, "ab");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (_, hit, text) = run(&["cd", "b"], &["abcd"]);
        assert!(hit);
        assert_eq!(text, "a");
    }
}
