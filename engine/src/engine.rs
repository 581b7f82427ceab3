//! The engine as a service: one model on its own threads, fed by a bounded queue.
//!
//! A generation is CPU-bound for seconds, so it must never run on an async
//! runtime's threads. [`Engine::start`] moves the model onto a worker thread that
//! runs one job at a time on a dedicated rayon pool of `threads` threads (the
//! kernels split rows across it). [`Engine::submit`] never blocks: when the
//! queue is full it says so at once ([`EngineBusy`]), and the router decides what
//! to do (send the request to the cloud, or answer 429).
//!
//! Results go back through the job's own callback, which may stop the job
//! (the client went away) by returning `Break`; the engine does not care what
//! runtime, if any, sits on the other side.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use burn::prelude::*;

use crate::chat_template::ChatTemplate;
use crate::generate::{GenerateError, GenerationOutput, GenerationRequest, TokenEvent, generate};
use crate::gguf::GgufFile;
use crate::model::{Model, ModelError};
use crate::tokenizer::Tokenizer;

/// A model with everything needed to talk to it.
pub struct LocalModel {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<Arc<ChatTemplate>>,
    pub context_length: usize,
    pub device: Device,
}

#[derive(Debug)]
pub enum LoadError {
    Model(ModelError),
    Tokenizer(String),
    Template(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Model(err) => err.fmt(f),
            LoadError::Tokenizer(why) => write!(f, "cannot build the tokenizer: {why}"),
            LoadError::Template(why) => write!(f, "cannot parse the chat template: {why}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl LocalModel {
    /// Loads a GGUF model. `context_length` caps the model's own context window
    /// (a smaller window bounds the KV cache a request can ask for).
    pub fn load(path: &Path, context_length: Option<usize>) -> Result<LocalModel, LoadError> {
        let file = GgufFile::open(path).map_err(|e| LoadError::Model(e.into()))?;
        let device = Device::flex();
        let model = Model::from_gguf(&file, &device).map_err(LoadError::Model)?;
        let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        let template = match tokenizer.chat_template() {
            Some(source) => Some(Arc::new(
                ChatTemplate::new(source).map_err(|e| LoadError::Template(e.to_string()))?,
            )),
            None => None,
        };
        let context_length = context_length.map_or(model.context_length(), |cap| cap.min(model.context_length()));
        // The weights were copied into tensors; the mapping goes with `file` here.
        Ok(LocalModel {
            model,
            tokenizer: Arc::new(tokenizer),
            template,
            context_length,
            device,
        })
    }

    /// Runs one generation on the calling thread.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationOutput, GenerateError> {
        generate(
            &self.model,
            &self.tokenizer,
            request,
            self.context_length,
            &self.device,
            on_token,
        )
    }
}

/// What a job reports, in order: tokens as they come, then one `Done`.
pub enum JobEvent<'a> {
    Token(&'a TokenEvent),
    Done(Result<GenerationOutput, GenerateError>),
}

/// A job's callback. Returning `Break` on a `Token` stops the job; a job whose
/// callback answers `Break` to `Started` is dropped before it runs.
pub type JobSink = Box<dyn FnMut(JobEvent<'_>) -> ControlFlow<()> + Send>;

pub struct Job {
    pub request: GenerationRequest,
    pub sink: JobSink,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineBusy;

pub struct Engine {
    queue: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    context_length: usize,
    queue_capacity: usize,
}

impl Engine {
    /// Starts the worker. `queue_capacity` jobs may wait behind the running one.
    pub fn start(model: LocalModel, threads: usize, queue_capacity: usize) -> std::io::Result<Engine> {
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(queue_capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("engine-compute-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let engine = Engine {
            queue,
            queued: queued.clone(),
            tokenizer: model.tokenizer.clone(),
            template: model.template.clone(),
            context_length: model.context_length,
            queue_capacity,
        };
        std::thread::Builder::new().name("engine".into()).spawn(move || {
            for mut job in jobs {
                queued.fetch_sub(1, Ordering::SeqCst);
                let result = pool.install(|| model.generate(&job.request, |event| (job.sink)(JobEvent::Token(event))));
                let _ = (job.sink)(JobEvent::Done(result));
            }
        })?;
        Ok(engine)
    }

    pub fn submit(&self, job: Job) -> Result<(), EngineBusy> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(EngineBusy)
            }
        }
    }

    /// Jobs waiting (not counting the one running).
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn template(&self) -> Option<&Arc<ChatTemplate>> {
        self.template.as_ref()
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }
}
