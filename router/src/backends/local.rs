//! The in-process model, served through the OpenAI chat API.
//!
//! A request is turned into a prompt with the model's own chat template,
//! tokenized, and queued on the [`Engine`]. Tokens come back through a channel
//! as the engine produces them; streamed requests relay each as an OpenAI chunk.
//! When the client goes away the channel closes, and the engine stops the
//! generation at its next token.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use switchyard_engine::engine::{Engine, EngineBusy, Job, JobEvent, LocalModel};
use switchyard_engine::generate::{GenerateError, GenerationOutput, GenerationRequest, TokenEvent};
use switchyard_engine::sampling::{SampledToken, SamplingParams};
use switchyard_engine::tokenizer::Tokenizer;
use tokio::sync::mpsc;

use super::ChatReply;
use crate::openai::Usage;
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::openai::sse;
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

/// Why a local model cannot take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// Tools or function calling.
    Tools,
    /// Images, audio or other non-text content.
    Images,
    /// `response_format` (JSON mode or a schema).
    JsonMode,
    /// Other fields a local model cannot honour (`logit_bias`, `n` > 1, ...).
    Fields,
    /// The prompt (estimated) and `max_tokens` do not fit the context window.
    Context,
    /// The model is not loaded.
    Unavailable,
}

pub struct LocalBackend {
    name: String,
    /// A model that failed to load leaves its backend unavailable, with the
    /// reason, while the rest of the daemon serves on.
    engine: Result<Engine, String>,
    default_max_tokens: Option<u64>,
    sampling: SamplingDefaults,
    /// Everything of the configuration that the loaded engine depends on: a
    /// reloaded policy with the same identity keeps this backend (and its model).
    identity: String,
}

/// What the engine thread sends back to the request's task.
enum Update {
    Token(TokenEvent),
    Done(Result<GenerationOutput, GenerateError>),
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
            identity: Self::identity_of(config, policy_dir),
        }
    }

    /// See [`LocalBackend::identity`].
    pub fn identity_of(config: &LocalBackendConfig, policy_dir: &Path) -> String {
        format!(
            "{}|{}|{}|{:?}|{}|{:?}|{:?}",
            config.name.value,
            policy_dir.join(&config.model_path.value).display(),
            config.threads.value,
            config.context_length.as_ref().map(|c| c.value),
            config.queue_capacity.value,
            config.default_max_tokens.as_ref().map(|m| m.value),
            config.sampling,
        )
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn engine(&self) -> Result<&Engine, ApiError> {
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
        let present = |field: &str| body.get(field).is_some_and(|v| !v.is_null());
        if present("tools") || present("functions") {
            return Err(Ineligible::Tools);
        }
        if present("response_format") {
            return Err(Ineligible::JsonMode);
        }
        if UNSUPPORTED_FIELDS.iter().any(|f| present(f))
            || body.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1)
        {
            return Err(Ineligible::Fields);
        }
        let has_non_text_part = body["messages"].as_array().into_iter().flatten().any(|message| {
            message["content"].as_array().is_some_and(|parts| {
                parts
                    .iter()
                    .any(|p| p.get("type").and_then(Value::as_str) != Some("text"))
            })
        });
        if has_non_text_part {
            return Err(Ineligible::Images);
        }
        let needed = prompt_tokens_estimate + request.max_tokens.unwrap_or(0);
        if needed >= engine.context_length() as u64 {
            return Err(Ineligible::Context);
        }
        Ok(())
    }

    pub async fn chat(&self, request: &ChatRequest, request_id: &str) -> Result<ChatReply, ApiError> {
        let engine = self.engine()?;
        let generation = self.prepare(engine, request)?;
        let prompt_tokens = generation.prompt_tokens.len();
        let logprobs = request.body.get("logprobs").and_then(Value::as_bool).unwrap_or(false);
        let (sender, mut updates) = mpsc::unbounded_channel();
        let job = Job {
            request: generation,
            sink: Box::new(move |event| {
                let update = match event {
                    JobEvent::Token(token) => Update::Token(token.clone()),
                    JobEvent::Done(result) => Update::Done(result),
                };
                // The receiver is gone when the client disconnected: stop generating.
                match sender.send(update) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            }),
        };
        engine.submit(job).map_err(|EngineBusy| ApiError::LocalBusy {
            backend: self.name.clone(),
            queue_capacity: engine.queue_capacity(),
        })?;

        let completion = Completion {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: self.name.clone(),
        };
        let tokenizer = engine.tokenizer().clone();
        if !request.stream {
            let output = loop {
                match updates.recv().await {
                    Some(Update::Token(_)) => {}
                    Some(Update::Done(result)) => break result.map_err(|err| generation_error(&self.name, err))?,
                    None => return Err(engine_stopped(&self.name)),
                }
            };
            let usage = Usage {
                prompt_tokens: prompt_tokens as u64,
                completion_tokens: output.tokens.len() as u64,
            };
            let logprobs = logprobs.then(|| logprobs_json(&tokenizer, &output.tokens));
            let body = completion.whole(&output, logprobs, usage);
            log_finished(request_id, &self.name, output.finish_reason.as_openai(), usage);
            return Ok(ChatReply::Complete {
                body: Bytes::from(body.to_string()),
                usage: Some(usage),
                headers: HeaderMap::new(),
                status: StatusCode::OK,
            });
        }

        // Wait for the first event before answering 200, so that a request the
        // engine refuses (too long, bad parameters) still gets a proper status.
        let first = match updates.recv().await {
            Some(Update::Done(Err(err))) => return Err(generation_error(&self.name, err)),
            Some(update) => update,
            None => return Err(engine_stopped(&self.name)),
        };
        let include_usage = request.include_usage;
        let name = self.name.clone();
        let request_id = request_id.to_string();
        let role = completion.chunk(json!({ "role": "assistant", "content": "" }), None, None);
        let stream = futures_util::stream::unfold(
            (Some(first), updates, false),
            move |(mut next, mut updates, mut done)| {
                let completion = completion.clone();
                let tokenizer = tokenizer.clone();
                let name = name.clone();
                let request_id = request_id.clone();
                async move {
                    if done {
                        return None;
                    }
                    let update = match next.take() {
                        Some(update) => Some(update),
                        None => updates.recv().await,
                    };
                    let bytes = match update {
                        Some(Update::Token(event)) => {
                            let lp = match (&event.token, logprobs) {
                                (Some(token), true) => Some(logprobs_json(&tokenizer, std::slice::from_ref(token))),
                                _ => None,
                            };
                            if event.text.is_empty() && lp.is_none() {
                                Bytes::new()
                            } else {
                                completion.chunk(json!({ "content": event.text }), lp, None)
                            }
                        }
                        Some(Update::Done(Ok(output))) => {
                            done = true;
                            let usage = Usage {
                                prompt_tokens: prompt_tokens as u64,
                                completion_tokens: output.tokens.len() as u64,
                            };
                            log_finished(&request_id, &name, output.finish_reason.as_openai(), usage);
                            let mut out = completion
                                .chunk(json!({}), None, Some(output.finish_reason.as_openai()))
                                .to_vec();
                            if include_usage {
                                out.extend_from_slice(&completion.usage_chunk(usage));
                            }
                            out.extend_from_slice(&sse::encode_data(sse::DONE));
                            Bytes::from(out)
                        }
                        Some(Update::Done(Err(err))) => {
                            done = true;
                            sse::encode_data(&generation_error(&name, err).to_json().to_string())
                        }
                        None => {
                            done = true;
                            sse::encode_data(&engine_stopped(&name).to_json().to_string())
                        }
                    };
                    Some((bytes, (None, updates, done)))
                }
            },
        )
        .filter(|bytes| std::future::ready(!bytes.is_empty()));
        let events = futures_util::stream::once(std::future::ready(role))
            .chain(stream)
            .boxed();
        Ok(ChatReply::Stream {
            events,
            headers: HeaderMap::new(),
        })
    }

    /// Turns the request into the engine's terms: prompt tokens, sampling, limits.
    fn prepare(&self, engine: &Engine, request: &ChatRequest) -> Result<GenerationRequest, ApiError> {
        let body = &request.body;
        if let Some(field) = UNSUPPORTED_FIELDS
            .iter()
            .find(|f| body.get(**f).is_some_and(|v| !v.is_null()))
        {
            return Err(ApiError::invalid(
                format!(
                    "Backend `{}` is a local model and does not support '{field}'.",
                    self.name
                ),
                field,
            ));
        }
        if body.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
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
        let tokenizer = engine.tokenizer();
        let template = engine.template().ok_or_else(|| ApiError::BackendUnavailable {
            backend: self.name.clone(),
            reason: "the model has no chat template".into(),
        })?;
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
        let prompt_tokens = tokenizer
            .encode(&prompt, true)
            .map_err(|err| ApiError::invalid(format!("Cannot tokenize the prompt: {err}"), "messages"))?;
        let context = engine.context_length();
        if prompt_tokens.len() >= context {
            return Err(ApiError::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, your messages resulted in {} tokens.",
                    prompt_tokens.len()
                ),
            });
        }
        let room = (context - prompt_tokens.len()) as u64;
        let max_tokens = request.max_tokens.or(self.default_max_tokens).unwrap_or(room).min(room) as usize;

        let number = |field: &str, default: f32| -> Result<f32, ApiError> {
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
        let seed = match body.get("seed") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_i64().map(|s| s as u64))
                    .ok_or_else(|| ApiError::invalid("'seed' must be an integer.", "seed"))?,
            ),
        };
        let sampling = SamplingParams {
            temperature: number("temperature", defaults.temperature)?,
            top_p: number("top_p", defaults.top_p)?,
            top_k,
            min_p: number("min_p", defaults.min_p)?,
            presence_penalty: number("presence_penalty", 0.0)?,
            frequency_penalty: number("frequency_penalty", 0.0)?,
            repetition_penalty: number("repetition_penalty", defaults.repetition_penalty)?,
            seed,
        };
        sampling.validate().map_err(|why| {
            let field = why.split_whitespace().next().unwrap_or("temperature").to_string();
            ApiError::invalid(format!("Invalid sampling parameter: {why}."), &field)
        })?;
        let stop_strings = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if items.len() <= 4 && items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).map(str::to_string).collect()
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "'stop' must be a string or an array of up to 4 strings.",
                    "stop",
                ));
            }
        };
        let top_logprobs = match body.get("top_logprobs") {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(n) if n <= 20 => n as usize,
                _ => {
                    return Err(ApiError::invalid(
                        "'top_logprobs' must be an integer from 0 to 20.",
                        "top_logprobs",
                    ));
                }
            },
        };
        Ok(GenerationRequest {
            prompt_tokens,
            max_tokens,
            sampling,
            stop_tokens: Vec::new(),
            stop_strings,
            top_logprobs,
            ignore_eos: false,
        })
    }
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

#[derive(Clone)]
struct Completion {
    id: String,
    created: u64,
    model: String,
}

impl Completion {
    fn whole(&self, output: &GenerationOutput, logprobs: Option<Value>, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": output.text, "refusal": null },
                "logprobs": logprobs,
                "finish_reason": output.finish_reason.as_openai(),
            }],
            "usage": usage_json(usage),
        })
    }

    fn chunk(&self, delta: Value, logprobs: Option<Value>, finish_reason: Option<&str>) -> Bytes {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason }],
        });
        sse::encode_data(&chunk.to_string())
    }

    fn usage_chunk(&self, usage: Usage) -> Bytes {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usage),
        });
        sse::encode_data(&chunk.to_string())
    }
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// OpenAI's `logprobs` object for some tokens.
fn logprobs_json(tokenizer: &Tokenizer, tokens: &[SampledToken]) -> Value {
    // A token may hold part of a UTF-8 character; `bytes` carries it exactly,
    // `token` shows it as text (with U+FFFD where it is partial), as OpenAI does.
    let entry = |id: u32, logprob: f32| {
        let bytes = tokenizer.token_bytes(id).unwrap_or_default();
        json!({ "token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = Value::Array(t.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

fn generation_error(backend: &str, err: GenerateError) -> ApiError {
    match err {
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

fn log_finished(request_id: &str, backend: &str, finish_reason: &str, usage: Usage) {
    tracing::info!(
        request_id,
        backend,
        finish_reason,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        cost_usd = 0.0,
        "local generation finished"
    );
}
