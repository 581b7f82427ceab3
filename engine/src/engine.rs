//! The engine as a service: one model on its own threads, fed by a bounded queue.
//!
//! A generation is CPU-bound for seconds, so it must never run on an async
//! runtime's threads. [`Engine::start_with`] moves the model onto a worker
//! thread that decodes up to `max_sequences` requests together (continuous
//! batching, see `Worker`) on a dedicated rayon pool of `threads` threads
//! (the kernels split rows across it). Decoding on a CPU is bound by reading
//! the weights, so several sequences decoded together cost little more than
//! one. [`Engine::submit`] never blocks: when the queue of jobs waiting for a
//! place in the batch is full it says so at once ([`EngineBusy`]), and the
//! router decides what to do (send the request to the cloud, or answer 429).
//!
//! Results go back through the job's own callback, which may stop the job
//! (the client went away) by returning `Break`, between prefill pieces or on a
//! token; the engine does not care what runtime, if any, sits on the other side.
//! A job is also bounded by its request's deadline (see [`crate::generate`]):
//! one whose deadline passed while it waited is dropped when its turn comes,
//! and one still running at its deadline stops within a step, so no prompt
//! holds the engine longer than the deadline its client set.
//!
//! A job that continues an answer already under way (the answer pass after a
//! reasoning pass) is submitted with [`Engine::submit_continuation`]: it joins
//! the batch ahead of the queue and is never refused, so an answer that has
//! started is never starved by answers that have not.
//!
//! A sequence's answer does not depend on the others in the batch: every row
//! is computed on its own, bit for bit as it would be alone.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use burn::prelude::*;

use crate::chat_template::ChatTemplate;
use crate::constraint::{Constraint, Grammar, Grammars};
use crate::generate::{
    GenerateError, Generation, GenerationOutput, GenerationRequest, Input, Progress, Step, TokenEvent, check_prompt,
    generate,
};
use crate::model::source::WeightSource;
use crate::model::weights::Quantization;
use crate::model::{KvSlot, Model, ModelError, Segment};
use crate::sampling::{ModeHints, SamplingHints};
use crate::thinking::ThinkingMarkers;
use crate::tokenizer::{ChatEncodeError, Tokenizer};

/// A model with everything needed to talk to it.
pub struct LocalModel {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<Arc<ChatTemplate>>,
    /// The sampling its publisher recommends, per mode (a checkpoint's
    /// `generation_config.json`, and its card's values per mode).
    pub sampling_hints: ModeHints,
    /// Its thinking markers, when it thinks natively.
    pub thinking: Option<ThinkingMarkers>,
    pub context_length: usize,
    pub device: Device,
}

/// The Burn backend a model computes on. Both run the same ops
/// ([`crate::ops`]); Flex is the default, NdArray (deprecated upstream) is there
/// to compare against and needs the `ndarray` feature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ComputeBackend {
    #[default]
    Flex,
    NdArray,
}

impl ComputeBackend {
    pub fn name(self) -> &'static str {
        match self {
            ComputeBackend::Flex => "flex",
            ComputeBackend::NdArray => "ndarray",
        }
    }

    fn device(self) -> Result<Device, LoadError> {
        match self {
            ComputeBackend::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // kept for comparison only, see the type's comment
            ComputeBackend::NdArray => Ok(Device::ndarray()),
            #[cfg(not(feature = "ndarray"))]
            ComputeBackend::NdArray => Err(LoadError::BackendMissing(self)),
        }
    }
}

impl std::str::FromStr for ComputeBackend {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "flex" => Ok(ComputeBackend::Flex),
            "ndarray" => Ok(ComputeBackend::NdArray),
            other => Err(format!("unknown compute backend {other:?} (flex or ndarray)")),
        }
    }
}

impl std::fmt::Display for ComputeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a model is loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Caps the model's own context window (a smaller window bounds the KV
    /// cache a request can ask for).
    pub context_length: Option<usize>,
    pub backend: ComputeBackend,
    /// What a Hugging Face checkpoint's float weights become (default Q6_K).
    pub quant: Quantization,
}

#[derive(Debug)]
pub enum LoadError {
    Model(ModelError),
    Tokenizer(String),
    Template(String),
    /// The backend was not compiled into this build.
    BackendMissing(ComputeBackend),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Model(err) => err.fmt(f),
            LoadError::Tokenizer(why) => write!(f, "cannot build the tokenizer: {why}"),
            LoadError::Template(why) => write!(f, "cannot parse the chat template: {why}"),
            LoadError::BackendMissing(backend) => write!(
                f,
                "this build has no {backend} backend (build with the `ndarray` feature)"
            ),
        }
    }
}

impl std::error::Error for LoadError {}

impl LocalModel {
    /// Loads a GGUF model onto the default backend. `context_length` caps the
    /// model's own context window (a smaller window bounds the KV cache a
    /// request can ask for).
    pub fn load(path: &Path, context_length: Option<usize>) -> Result<LocalModel, LoadError> {
        LocalModel::load_on(path, context_length, ComputeBackend::default())
    }

    /// Loads a GGUF model onto `backend`.
    pub fn load_on(
        path: &Path,
        context_length: Option<usize>,
        backend: ComputeBackend,
    ) -> Result<LocalModel, LoadError> {
        LocalModel::load_with(
            path,
            &LoadOptions {
                context_length,
                backend,
                ..LoadOptions::default()
            },
        )
    }

    /// Loads a model, a GGUF file or a Hugging Face directory (with its
    /// `tokenizer.json`), as `options` say.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<LocalModel, LoadError> {
        let LoadOptions {
            context_length,
            backend,
            quant,
        } = *options;
        let device = backend.device()?;
        let source = WeightSource::open(path).map_err(LoadError::Model)?;
        let tokenizer = match &source {
            WeightSource::Gguf(file) => Tokenizer::from_gguf(file),
            WeightSource::HuggingFace(checkpoint) => {
                Tokenizer::from_tokenizer_json(&checkpoint.dir.join("tokenizer.json"))
            }
        }
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        let model = Model::load(&source, quant, &device).map_err(LoadError::Model)?;
        let generation_config = match &source {
            WeightSource::HuggingFace(checkpoint) => checkpoint
                .generation_config
                .as_ref()
                .map(SamplingHints::from_generation_config)
                .unwrap_or_default(),
            WeightSource::Gguf(_) => SamplingHints::default(),
        };
        let thinking = ThinkingMarkers::detect(&tokenizer);
        let sampling_hints = ModeHints::recommended(model.info().architecture, thinking.is_some(), generation_config);
        let template = match tokenizer.chat_template() {
            Some(source) => Some(Arc::new(
                ChatTemplate::new(source).map_err(|e| LoadError::Template(e.to_string()))?,
            )),
            None => None,
        };
        let context_length = context_length.map_or(model.context_length(), |cap| cap.min(model.context_length()));
        // The weights were copied into tensors; the mappings go with `source` here.
        Ok(LocalModel {
            model,
            tokenizer: Arc::new(tokenizer),
            template,
            sampling_hints,
            thinking,
            context_length,
            device,
        })
    }

    /// Runs one generation on the calling thread, with a KV cache of its own.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationOutput, GenerateError> {
        self.generate_in(&mut KvSlot::exact(), request, |progress| match progress {
            Progress::Token(event) => on_token(event),
            Progress::Prefilled { .. } => ControlFlow::Continue(()),
        })
    }

    /// Runs one generation on the calling thread, reusing `slot`'s KV cache
    /// (see [`generate`]); `on_progress` also sees the prefill between its chunks.
    pub fn generate_in(
        &self,
        slot: &mut KvSlot,
        request: &GenerationRequest,
        on_progress: impl FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationOutput, GenerateError> {
        generate(
            &self.model,
            &self.tokenizer,
            request,
            self.context_length,
            &self.device,
            slot,
            on_progress,
        )
    }

    /// Runs the prompt through the model without generating: how surprising
    /// each of its tokens was, and what the model would say next.
    pub fn read_prompt(&self, tokens: &[u32]) -> Result<PromptReading, GenerateError> {
        check_prompt(tokens, &self.model, self.context_length, 0)?;
        let mut slot = KvSlot::exact();
        let cache = slot.prepare(&self.model, tokens.len(), self.context_length, &self.device);
        let (token_logprobs, next_logprobs) = self.model.read(tokens, cache);
        Ok(PromptReading {
            token_logprobs,
            next_logprobs,
        })
    }

    /// The log-probabilities of the token after the prompt, one per
    /// vocabulary entry: [`LocalModel::read_prompt`]'s `next_logprobs`, at the
    /// cost of a prefill (the output head runs on the last position only).
    pub fn next_logprobs(&self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        check_prompt(tokens, &self.model, self.context_length, 0)?;
        let mut slot = KvSlot::exact();
        let cache = slot.prepare(&self.model, tokens.len(), self.context_length, &self.device);
        let mut logits = self.model.forward(tokens, cache);
        let norm = crate::sampling::log_sum_exp(&logits);
        logits.iter_mut().for_each(|l| *l -= norm);
        Ok(logits)
    }
}

/// Why a conversation has no prompt ([`encode_conversation`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptError {
    /// The model ships no chat template.
    NoTemplate,
    /// The chat template refused the messages (its own words).
    Template(String),
    /// The prompt leaves no room in the context: `tokens` long, or at least
    /// that (`at_least`) when encoding stopped at the limit.
    TooLong {
        tokens: usize,
        at_least: bool,
    },
    Tokenizer(String),
}

impl std::fmt::Display for PromptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptError::NoTemplate => write!(f, "the model has no chat template"),
            PromptError::Template(err) => write!(f, "the chat template refused the messages: {err}"),
            PromptError::TooLong { tokens, at_least } => write!(
                f,
                "the prompt is {}{tokens} tokens, no room left in the context",
                if *at_least { "at least " } else { "" }
            ),
            PromptError::Tokenizer(err) => write!(f, "cannot tokenize the prompt: {err}"),
        }
    }
}

impl std::error::Error for PromptError {}

/// The prompt ids of a conversation: every string in `messages` and `extra`
/// escaped so that only the template's own markers are control tokens (see
/// [`Tokenizer::escape_control_text`]), rendered with the chat template (with
/// the assistant's turn opened), and encoded up to `context_length`, which the
/// prompt must stay under.
pub fn encode_conversation(
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    context_length: usize,
    messages: &serde_json::Value,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<u32>, PromptError> {
    let template = template.ok_or(PromptError::NoTemplate)?;
    let mut messages = messages.clone();
    tokenizer.escape_control_text_in(&mut messages);
    let mut extra = serde_json::Value::Object(extra.clone());
    tokenizer.escape_control_text_in(&mut extra);
    let serde_json::Value::Object(extra) = extra else {
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
        .map_err(|err| PromptError::Template(err.to_string()))?;
    drop(messages);
    let ids = tokenizer
        .encode_chat(&prompt, context_length)
        .map_err(|err| match err {
            ChatEncodeError::TooLong { at_least_tokens } => PromptError::TooLong {
                tokens: at_least_tokens,
                at_least: true,
            },
            ChatEncodeError::Tokenizer(err) => PromptError::Tokenizer(err.to_string()),
        })?;
    if ids.len() >= context_length {
        return Err(PromptError::TooLong {
            tokens: ids.len(),
            at_least: false,
        });
    }
    Ok(ids)
}

/// How many compute threads to use when none is configured: the machine's
/// cores, at most eight (past that a model this size gains little).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).min(8)
}

/// How a model reads a prompt ([`LocalModel::read_prompt`]).
#[derive(Debug, Clone)]
pub struct PromptReading {
    /// The log-probability of each prompt token after the first, given those before it.
    pub token_logprobs: Vec<f32>,
    /// The log-probabilities of the token after the prompt, one per vocabulary entry.
    pub next_logprobs: Vec<f32>,
}

/// What a job reports, in order: `Started` when the worker takes it up, the
/// prefill's progress between its chunks (a long prompt only), tokens as they
/// come, then one `Done`.
pub enum JobEvent<'a> {
    /// The job leaves the queue. The time it waited ends here.
    Started,
    /// `positions` of the prompt's `prompt_tokens` have run; more are to come.
    Prefilled {
        positions: usize,
        prompt_tokens: usize,
    },
    Token(&'a TokenEvent),
    Done(Result<GenerationOutput, GenerateError>),
}

/// A job's callback. Returning `Break` on `Prefilled` or a `Token` stops the
/// job; a job whose callback answers `Break` to `Started` is dropped before it runs.
pub type JobSink = Box<dyn FnMut(JobEvent<'_>) -> ControlFlow<()> + Send>;

pub struct Job {
    pub request: GenerationRequest,
    pub sink: JobSink,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineBusy;

/// How an engine runs ([`Engine::start_with`]).
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Compute threads (the kernels split rows across them).
    pub threads: usize,
    /// Jobs that may wait for a place in the batch; more are refused at once ([`EngineBusy`]).
    pub queue_capacity: usize,
    /// Memory the states of finished requests may keep for their
    /// conversations' next turns (KV caches, recurrent states and their
    /// snapshots): a request that starts with what one of them ran runs only
    /// the rest. The least recently used go first; one is always kept,
    /// whatever its size.
    pub state_cache_bytes: usize,
    /// Sequences decoded together at most (continuous batching); 1 runs one
    /// request at a time.
    pub max_sequences: usize,
    /// Memory the running sequences' states may take together, each counted
    /// at its largest (its prompt and its longest answer); a job that does
    /// not fit waits for running ones to finish. One sequence always runs,
    /// whatever its size.
    pub max_state_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: default_threads(),
            queue_capacity: 8,
            state_cache_bytes: Engine::DEFAULT_STATE_CACHE_BYTES,
            max_sequences: 8,
            max_state_bytes: 512 << 20,
        }
    }
}

pub struct Engine {
    queue: Arc<Queue>,
    kv_cache_bytes: Arc<AtomicUsize>,
    /// Sequences in the running batch.
    running: Arc<AtomicUsize>,
    max_sequences: usize,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    thinking: Option<ThinkingMarkers>,
    context_length: usize,
    queue_capacity: usize,
    /// The model's grammar compiler, built at first use.
    grammars: Arc<OnceLock<Result<Grammars, String>>>,
    vocab_size: usize,
}

impl Engine {
    /// Memory the states of finished requests may keep by default, for the
    /// next turns of their conversations (see [`EngineOptions::state_cache_bytes`]).
    pub const DEFAULT_STATE_CACHE_BYTES: usize = 128 << 20;

    /// Starts the worker with one sequence at a time. `queue_capacity` jobs
    /// may wait behind the running one.
    pub fn start(model: LocalModel, threads: usize, queue_capacity: usize) -> std::io::Result<Engine> {
        Self::start_with(
            model,
            EngineOptions {
                threads,
                queue_capacity,
                max_sequences: 1,
                ..EngineOptions::default()
            },
        )
    }

    /// Starts the worker as `options` say.
    pub fn start_with(model: LocalModel, options: EngineOptions) -> std::io::Result<Engine> {
        let EngineOptions {
            threads,
            queue_capacity,
            max_sequences,
            ..
        } = options;
        let queue = Arc::new(Queue::default());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("engine-compute-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let kv_cache_bytes = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let engine = Engine {
            queue: queue.clone(),
            kv_cache_bytes: kv_cache_bytes.clone(),
            running: running.clone(),
            tokenizer: model.tokenizer.clone(),
            template: model.template.clone(),
            thinking: model.thinking.clone(),
            context_length: model.context_length,
            queue_capacity,
            max_sequences: max_sequences.max(1),
            grammars: Arc::default(),
            vocab_size: model.model.vocab_size(),
        };
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || Worker::new(model, pool, queue, kv_cache_bytes, running, &options).run())?;
        Ok(engine)
    }

    /// Queues a job, or refuses it at once when `queue_capacity` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), EngineBusy> {
        self.enqueue(Queued::Generate(job))
    }

    /// Queues a batch of embeddings behind the waiting jobs, or refuses it
    /// at once when `queue_capacity` jobs already wait. Inputs must be
    /// non-empty and fit the context window.
    pub fn submit_embeddings(&self, job: EmbedJob) -> Result<(), EngineBusy> {
        self.enqueue(Queued::Embed(job))
    }

    fn enqueue(&self, item: Queued) -> Result<(), EngineBusy> {
        let mut state = self.queue.state.lock().expect("engine queue");
        if state.waiting.len() >= self.queue_capacity {
            return Err(EngineBusy);
        }
        state.waiting.push_back(item);
        self.queue.ready.notify_one();
        Ok(())
    }

    /// Queues a job that continues an answer already under way: it runs before
    /// every waiting job and is never refused (there is at most one per answer
    /// in flight, and those were admitted by [`Engine::submit`]).
    pub fn submit_continuation(&self, job: Job) {
        let mut state = self.queue.state.lock().expect("engine queue");
        state.continuations.push_back(job);
        self.queue.ready.notify_one();
    }

    /// Jobs waiting (not counting the one running).
    pub fn queue_depth(&self) -> usize {
        let state = self.queue.state.lock().expect("engine queue");
        state.waiting.len() + state.continuations.len()
    }

    /// Memory held by the worker's KV cache (it grows to the largest request
    /// served, see [`KvSlot`]).
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv_cache_bytes.load(Ordering::Relaxed)
    }

    /// The most jobs that may wait; more are refused at once.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Sequences in the running batch now (prefilling or decoding).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The most sequences the batch holds.
    pub fn max_sequences(&self) -> usize {
        self.max_sequences
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn template(&self) -> Option<&Arc<ChatTemplate>> {
        self.template.as_ref()
    }

    /// A constraint for one answer, compiled against the model's vocabulary
    /// (the vocabulary's token trie is built at the first, then kept, as are
    /// the compiled grammars; see [`Grammars::cached`]).
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, String> {
        self.grammars
            .get_or_init(|| Grammars::of(self.tokenizer.clone(), self.vocab_size))
            .as_ref()
            .map_err(Clone::clone)?
            .cached(grammar)
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The model's thinking markers, when it thinks natively.
    pub fn thinking(&self) -> Option<&ThinkingMarkers> {
        self.thinking.as_ref()
    }
}

impl Drop for Engine {
    /// The worker finishes what is queued, then exits.
    fn drop(&mut self) {
        self.queue.state.lock().expect("engine queue").closed = true;
        self.queue.ready.notify_all();
    }
}

/// The engine's worker: continuous batching. Sequences join the running
/// batch as they come (while it holds fewer than `max_sequences` and their
/// state fits in `max_state_bytes`) and leave it as they finish; every step
/// runs one token of each decoding sequence and a piece of the prompts still
/// being read (at most [`Model::PREFILL_CHUNK`] positions in all, the
/// prefilling sequences taking turns to go first), every row through each
/// weight matrix together ([`Model::forward_batch`]). A long prompt thus never
/// stalls the others' next tokens for more than a piece, and a short one
/// beside it starts answering after its own pieces, not the whole long one.
///
/// Each sequence runs in a [`KvSlot`]: the one a finished sequence of its
/// conversation left, or a new one starting from a copy of the longest
/// prefix a kept slot shares with its prompt (see `Worker::take_slot`); it
/// leaves the slot for the next.
struct Worker {
    model: LocalModel,
    pool: Arc<rayon::ThreadPool>,
    queue: Arc<Queue>,
    kv_cache_bytes: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    /// Slots of finished sequences, least recently used first.
    slots: Vec<KvSlot>,
    /// What `slots` may hold together (the most recent is kept whatever its size).
    state_cache_bytes: usize,
    max_sequences: usize,
    max_state_bytes: usize,
    /// The state memory of one sequence: this much per position, plus a
    /// fixed part (recurrent states and their snapshot).
    state_per_position: usize,
    state_fixed: usize,
}

/// A sequence in the running batch.
struct Running<'t> {
    job: Job,
    slot: KvSlot,
    generation: Generation<'t>,
    /// The state memory counted for it at admission (its worst case).
    reserved: usize,
}

impl Worker {
    /// The shortest shared prefix worth copying into a new conversation's
    /// state: a few template tokens are run faster than the copy is made,
    /// and would keep an unrelated state from being dropped.
    const MIN_COPIED: usize = 16;

    fn new(
        model: LocalModel,
        pool: rayon::ThreadPool,
        queue: Arc<Queue>,
        kv_cache_bytes: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
        options: &EngineOptions,
    ) -> Worker {
        // What one position of state takes, measured on caches of one and two.
        let one = model.model.new_cache(1, &model.device).bytes();
        let two = model.model.new_cache(2, &model.device).bytes();
        Worker {
            pool: Arc::new(pool),
            queue,
            kv_cache_bytes,
            running,
            slots: Vec::new(),
            state_cache_bytes: options.state_cache_bytes,
            max_sequences: options.max_sequences.max(1),
            max_state_bytes: options.max_state_bytes,
            state_per_position: two - one,
            state_fixed: one - (two - one),
            model,
        }
    }

    fn run(mut self) {
        let tokenizer = self.model.tokenizer.clone();
        let pool = self.pool.clone();
        let mut batch: Vec<Running<'_>> = Vec::new();
        let mut turn = 0;
        // Joins what fits; with nothing running, waits for work.
        while self.admit(&mut batch, &tokenizer) {
            pool.install(|| self.step(&mut batch, &mut turn));
            self.publish(&batch);
        }
    }

    /// The state memory a request may take at most: its prompt and its
    /// longest answer, in the slot's allocation steps, a recurrent state and
    /// its snapshot.
    fn reservation(&self, request: &GenerationRequest) -> usize {
        let context = self.model.context_length;
        2 * self.state_fixed
            + KvSlot::capacity_for(KvSlot::STEP, self.positions(request), context) * self.state_per_position
    }

    /// The positions a request runs at most: its prompt and its longest
    /// answer, within the context window (as [`Generation::start`] sizes its
    /// cache).
    fn positions(&self, request: &GenerationRequest) -> usize {
        request
            .prompt_tokens
            .len()
            .saturating_add(request.max_tokens)
            .min(self.model.context_length)
    }

    /// Takes the jobs that may join the batch now, while it has room for
    /// them: continuations first, then waiting jobs in order (a job that does
    /// not fit holds those behind it back, so a large one is not starved by
    /// small ones). Embeddings run here, between steps. Waits
    /// while the batch is empty; `false` once the engine is dropped and
    /// nothing is left.
    fn admit<'t>(&mut self, batch: &mut Vec<Running<'t>>, tokenizer: &'t Tokenizer) -> bool {
        loop {
            let reserved: usize = batch.iter().map(|running| running.reserved).sum();
            let next = {
                let mut state = self.queue.queue_lock();
                loop {
                    let fits = |request: &GenerationRequest| {
                        batch.is_empty()
                            || (batch.len() < self.max_sequences
                                && reserved + self.reservation(request) <= self.max_state_bytes)
                    };
                    if state.continuations.front().is_some_and(|job| fits(&job.request)) {
                        break state.continuations.pop_front().map(Queued::Generate);
                    }
                    let next_fits = state.continuations.is_empty()
                        && match state.waiting.front() {
                            Some(Queued::Embed(_)) => true,
                            Some(Queued::Generate(job)) => fits(&job.request),
                            None => false,
                        };
                    if next_fits {
                        break state.waiting.pop_front();
                    }
                    if !batch.is_empty() {
                        break None;
                    }
                    if state.closed {
                        return false;
                    }
                    state = self.queue.ready.wait(state).expect("engine queue");
                }
            };
            match next {
                None => return true,
                Some(Queued::Embed(job)) => self.embed(job),
                Some(Queued::Generate(job)) => self.join(batch, job, tokenizer),
            }
        }
    }

    /// Starts `job` in the batch, on the slot that serves its prompt best.
    fn join<'t>(&mut self, batch: &mut Vec<Running<'t>>, mut job: Job, tokenizer: &'t Tokenizer) {
        // Nobody waits for it any more (the client left, or stopped waiting
        // for a turn): its prefill would be wasted.
        if (job.sink)(JobEvent::Started).is_break() {
            return;
        }
        let (mut slot, copied) = self.take_slot(&job.request);
        let model = &self.model;
        match Generation::start(
            &model.model,
            tokenizer,
            &job.request,
            model.context_length,
            &model.device,
            &mut slot,
        ) {
            Ok(generation) => {
                let reserved = self.reservation(&job.request).max(slot.bytes());
                batch.push(Running {
                    job,
                    slot,
                    generation,
                    reserved,
                });
            }
            Err(err) => {
                // A kept state goes back as it was; a copy made for this job
                // serves no conversation.
                if !copied {
                    self.give_back(slot);
                }
                // Published before the job hears of it: what the engine holds
                // once a job is done is already what it says.
                self.publish(batch);
                let _ = (job.sink)(JobEvent::Done(Err(err)));
                return;
            }
        }
        self.publish(batch);
    }

    /// One step of the batch: runs its inputs, hands each sequence its
    /// logits, and lets the finished ones go.
    fn step(&mut self, batch: &mut Vec<Running<'_>>, turn: &mut usize) {
        let mut inputs: Vec<Option<Input>> = batch
            .iter()
            .map(|running| running.generation.is_decoding().then(|| running.generation.input(1)))
            .collect();
        let prefilling: Vec<usize> = (0..batch.len()).filter(|&i| inputs[i].is_none()).collect();
        if !prefilling.is_empty() {
            let first = *turn % prefilling.len();
            *turn = turn.wrapping_add(1);
            let mut budget = Model::PREFILL_CHUNK;
            for &i in prefilling[first..].iter().chain(&prefilling[..first]) {
                if budget == 0 {
                    break;
                }
                let input = batch[i].generation.input(budget);
                if let Input::Prompt(range) = &input {
                    budget -= range.len();
                }
                inputs[i] = Some(input);
            }
        }
        let mut segments: Vec<Segment<'_>> = batch
            .iter_mut()
            .zip(&inputs)
            .filter_map(|(running, input)| {
                let input = input.as_ref()?;
                let Running { slot, generation, .. } = running;
                Some(Segment {
                    tokens: generation.tokens_of(input),
                    cache: slot.cache().expect("a running sequence holds a cache"),
                    logits: generation.needs_logits(input),
                })
            })
            .collect();
        let mut logits = self.model.model.forward_batch(&mut segments).into_iter();
        drop(segments);
        let mut outcomes = Vec::with_capacity(batch.len());
        for (running, input) in batch.iter_mut().zip(&inputs) {
            let Running {
                job, slot, generation, ..
            } = running;
            let step = match input {
                Some(input) => {
                    let logits = logits.next().expect("one result per segment");
                    generation.advance(slot, input, logits.as_deref(), |progress| {
                        to_sink(&mut job.sink, progress)
                    })
                }
                // A prompt waiting for its turn still keeps its deadline.
                None if generation.past_deadline() => Step::Failed(generation.deadline_passed()),
                None => Step::Continue,
            };
            outcomes.push(step);
        }
        for (i, step) in outcomes.into_iter().enumerate().rev() {
            let result = match step {
                Step::Continue => continue,
                Step::Finished(reason) => Ok(reason),
                Step::Failed(err) => Err(err),
            };
            let Running {
                mut job,
                slot,
                generation,
                ..
            } = batch.remove(i);
            let result = result.map(|reason| generation.finish(reason, |progress| to_sink(&mut job.sink, progress)));
            self.give_back(slot);
            let _ = (job.sink)(JobEvent::Done(result));
        }
    }

    /// Computes a batch of embeddings, each input on a cache of its own
    /// (the kept conversations' states are not touched).
    fn embed(&mut self, job: EmbedJob) {
        let model = &self.model;
        let embeddings = self.pool.install(|| {
            job.inputs
                .iter()
                .map(|tokens| model.model.embed(tokens, &model.device))
                .collect()
        });
        (job.reply)(embeddings);
    }

    /// The slot for a job: the one whose conversation its prompt continues;
    /// else a new one while the kept slots leave room in the budget (their
    /// conversations may come back), holding a copy of the longest prefix the
    /// prompt shares with one of them (a system prompt) if it is at least
    /// [`Worker::MIN_COPIED`] tokens long; else the one sharing the longest
    /// prefix with it, or the least recently used one. Whether the slot is
    /// such a copy.
    fn take_slot(&mut self, request: &GenerationRequest) -> (KvSlot, bool) {
        let prompt = &request.prompt_tokens;
        let reuse: Vec<usize> = self.slots.iter().map(|slot| slot.reusable(prompt)).collect();
        let best = (0..self.slots.len()).max_by_key(|&i| (reuse[i], i));
        if let Some(i) = best.filter(|&i| self.slots[i].continued_by(prompt)) {
            return (self.slots.remove(i), false);
        }
        if self.held_bytes() < self.state_cache_bytes || self.slots.is_empty() {
            let mut slot = KvSlot::growing();
            // A new conversation that shares a prefix with a kept one (most
            // often the system prompt) starts from a copy of it, and the kept
            // one, now used again, moves last in line to be dropped. (A prompt
            // longer than the context is refused by `Generation::start`.)
            let context = self.model.context_length;
            if let Some(i) = best.filter(|&i| reuse[i] >= Self::MIN_COPIED && prompt.len() < context) {
                let positions = self.positions(request);
                let model = &self.model;
                if slot.seed_from(&self.slots[i], prompt, positions, context, &model.model, &model.device) > 0 {
                    let source = self.slots.remove(i);
                    self.slots.push(source);
                    return (slot, true);
                }
            }
            return (slot, false);
        }
        let slot = match best.filter(|&i| reuse[i] > 0) {
            Some(i) => self.slots.remove(i),
            None => self.slots.remove(0),
        };
        (slot, false)
    }

    /// Keeps a finished sequence's slot, most recently used, dropping the
    /// least recently used ones past the budget.
    fn give_back(&mut self, slot: KvSlot) {
        if slot.bytes() > 0 {
            self.slots.push(slot);
        }
        while self.slots.len() > 1 && self.held_bytes() > self.state_cache_bytes {
            self.slots.remove(0);
        }
    }

    fn held_bytes(&self) -> usize {
        self.slots.iter().map(KvSlot::bytes).sum()
    }

    /// Publishes the batch's size and the state memory held: the kept
    /// slots' and the running sequences'.
    fn publish(&self, batch: &[Running<'_>]) {
        let running: usize = batch.iter().map(|running| running.slot.bytes()).sum();
        self.kv_cache_bytes
            .store(self.held_bytes() + running, Ordering::Relaxed);
        self.running.store(batch.len(), Ordering::Relaxed);
    }
}

/// Hands a generation's progress to its job's sink.
fn to_sink(sink: &mut JobSink, progress: Progress<'_>) -> ControlFlow<()> {
    match progress {
        Progress::Prefilled {
            positions,
            prompt_tokens,
        } => sink(JobEvent::Prefilled {
            positions,
            prompt_tokens,
        }),
        Progress::Token(event) => sink(JobEvent::Token(event)),
    }
}

/// Jobs waiting for the worker: continuations first, then the rest in order.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    continuations: VecDeque<Job>,
    waiting: VecDeque<Queued>,
    closed: bool,
}

/// What waits for the worker: a generation, or embeddings to compute.
// A handful wait at a time (the queue's capacity): boxing would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Queued {
    Generate(Job),
    Embed(EmbedJob),
}

/// Inputs to embed, and where their embeddings go (one per input, in order).
pub struct EmbedJob {
    pub inputs: Vec<Vec<u32>>,
    pub reply: Box<dyn FnOnce(Vec<Vec<f32>>) + Send>,
}

impl Queue {
    fn queue_lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().expect("engine queue")
    }
}
