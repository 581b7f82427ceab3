//! A request in the engine's terms: checked, its prompt rendered with the
//! model's chat template and tokenized (off the async workers), its sampling
//! and limits set, and the passes of a reasoning answer derived from it.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use switchyard_engine::constraint::{Constraint, Grammar};
use switchyard_engine::engine::{Engine, PromptError, encode_conversation};
use switchyard_engine::generate::GenerationRequest;
use switchyard_engine::sampling::SamplingParams;
use switchyard_engine::thinking::Thinking;
use switchyard_engine::tokenizer::Tokenizer;
use switchyard_engine::tool_calls::{CallMode, CallParser, ToolFormat, ToolSpec, call_grammar};
use tokio::sync::Semaphore;

use super::{LocalBackend, UNSUPPORTED_FIELDS};
use crate::openai::request::ChatRequest;
use crate::openai::structured::{OutputFormat, ToolChoice};
use crate::outcome::{BackendError, Ineligible};

impl LocalBackend {
    pub(super) fn encoder(&self, engine: &Arc<Engine>) -> PromptEncoder {
        PromptEncoder {
            engine: engine.clone(),
            turns: self.prompt_turns.clone(),
            backend: self.name.clone(),
        }
    }

    /// Turns the request into the engine's terms: prompt tokens, sampling, limits.
    /// The cheap checks come first; the prompt is rendered and tokenized last.
    pub(super) async fn prepare(
        &self,
        engine: &Engine,
        encoder: &PromptEncoder,
        request: &ChatRequest,
    ) -> Result<Plan, BackendError> {
        let body = &request.body;
        if let Some(field) = UNSUPPORTED_FIELDS.iter().find(|f| request.uses(f)) {
            return Err(BackendError::rejected(
                format!(
                    "Backend `{}` is a local model and does not support '{field}'.",
                    self.name
                ),
                field,
            ));
        }
        let tool_format = engine.template().and_then(|template| template.tool_format());
        if let Some(param) = &request.asks.tool_turn
            && tool_format.is_none()
        {
            return Err(BackendError::rejected(
                format!(
                    "Backend `{}` is a local model without tool support (its chat template offers no tools); it cannot read the tool call or tool result in '{param}'.",
                    self.name
                ),
                param,
            ));
        }
        let calls = answer_form(engine, request, tool_format, &self.name).map_err(|refused| refused.error)?;
        let context = engine.context_length();
        if let Some((text_bytes, fewest)) = fewest_prompt_tokens(engine.tokenizer(), request.messages())
            && fewest >= context
        {
            return Err(BackendError::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, your messages hold {text_bytes} bytes of text, which with their turn markers is at least {fewest} tokens."
                ),
            });
        }
        if let Some(param) = request.unservable_locally() {
            let what = if request.legacy.is_some() {
                "it completes one text prompt, without a list of several prompts, token ids, 'suffix', 'best_of' over 1, or 'echo' with 'logprobs'"
            } else {
                "it keeps no responses or conversations ('previous_response_id', 'conversation', 'background', 'prompt'), and calls function tools only"
            };
            return Err(BackendError::rejected(
                format!(
                    "Backend `{}` is a local model: {what}; it cannot serve '{param}'.",
                    self.name
                ),
                param,
            ));
        }
        if request.sampling.n.is_some_and(|n| n != 1) {
            return Err(BackendError::rejected(
                format!("Backend `{}` generates one choice ('n' must be 1).", self.name),
                "n",
            ));
        }
        let messages = text_only_messages(request.messages(), &self.name)?;
        let mut extra: Map<String, Value> = match body.get("chat_template_kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(kwargs)) => kwargs.clone(),
            Some(_) => {
                return Err(BackendError::rejected(
                    "'chat_template_kwargs' must be an object.",
                    "chat_template_kwargs",
                ));
            }
        };

        // OpenAI's fields come validated (`request.sampling`); the local
        // model's extras (`top_k`, `min_p`, `repetition_penalty`, as vLLM and
        // llama.cpp take them) are read here.
        let extra_number = |field: &str, default: f32| -> Result<f32, BackendError> {
            match body.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
                Some(_) => Err(BackendError::rejected(format!("'{field}' must be a number."), field)),
            }
        };
        // A model that thinks natively is told explicitly whether to, and
        // its thinking is bounded (to nothing when off: a block it opens
        // anyway is closed at once).
        let thinks = self.thinks(request);
        let thinking = engine
            .thinking()
            .filter(|_| request.legacy.is_none())
            .map(|markers| Thinking {
                markers: markers.clone(),
                budget: Some(if thinks { self.reasoning_max_tokens as usize } else { 0 }),
            });
        // The tools are shown whenever they are offered to a model that takes
        // them, `tool_choice: none` too (it may not call them, but may know of
        // them, and the conversation's prompt stays the same turn to turn).
        if tool_format.is_some() && request.tools.is_some() {
            extra.insert("tools".into(), offered_functions(&body["tools"]));
        }
        if thinking.is_some() {
            extra.insert("enable_thinking".into(), Value::Bool(thinks));
        }
        let defaults = if thinking.is_some() && thinks {
            self.thinking_sampling
        } else {
            self.sampling
        };
        let top_k = match body.get("top_k") {
            None | Some(Value::Null) => defaults.top_k,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| BackendError::rejected("'top_k' must be a non-negative integer.", "top_k"))?
                as usize,
        };
        let asked = &request.sampling;
        let sampling = SamplingParams {
            temperature: asked.temperature.unwrap_or(defaults.temperature),
            top_p: asked.top_p.unwrap_or(defaults.top_p),
            top_k,
            min_p: extra_number("min_p", defaults.min_p)?,
            presence_penalty: asked.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: asked.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: extra_number("repetition_penalty", defaults.repetition_penalty)?,
            seed: asked.seed,
        };
        sampling.validate().map_err(|why| {
            let field = why.split_whitespace().next().unwrap_or("temperature").to_string();
            BackendError::rejected(format!("Invalid sampling parameter: {why}."), &field)
        })?;
        let stop_strings = asked.stop.clone();
        let top_logprobs = asked.top_logprobs.unwrap_or(0) as usize;
        let messages = Arc::new(messages);
        let extra = Arc::new(extra);
        let prompt_tokens = match &request.legacy {
            // A legacy prompt is the model's input as written (special tokens
            // spelled in it are those tokens, as llama.cpp's server reads them).
            Some(legacy) => encoder.encode_text(legacy.text.clone()).await?,
            None => encoder.encode(messages.clone(), extra.clone()).await?,
        };
        let room = (context - prompt_tokens.len()) as u64;
        // The client's limit covers thinking and answer (as OpenAI's
        // `max_completion_tokens` covers reasoning); the backend's default is
        // the answer's, with the thinking budget on top.
        let thinking_budget = match &thinking {
            Some(Thinking {
                budget: Some(budget), ..
            }) => *budget as u64,
            _ => 0,
        };
        let max_tokens = request
            .max_tokens
            .or(self.default_max_tokens.map(|answer| answer + thinking_budget))
            .unwrap_or(room)
            .min(room) as usize;
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
                thinking,
                constraint: calls.constraint,
            },
            calls: calls.reading,
            messages,
            extra,
            client_limited: request.max_tokens.is_some_and(|m| m as usize == max_tokens),
        })
    }
}
/// Renders and tokenizes prompts for one request, off the async workers and
/// within the backend's [`PROMPTS_ENCODED_AT_ONCE`].
#[derive(Clone)]
pub(super) struct PromptEncoder {
    engine: Arc<Engine>,
    turns: Arc<Semaphore>,
    backend: String,
}

impl PromptEncoder {
    async fn encode(&self, messages: Arc<Value>, extra: Arc<Map<String, Value>>) -> Result<Vec<u32>, BackendError> {
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
        .map_err(|err| BackendError::Unavailable {
            backend: self.backend.clone(),
            reason: format!("preparing the prompt failed: {err}"),
        })?
    }
}

impl PromptEncoder {
    /// Tokenizes a raw prompt, refusing one that leaves no room in the context window.
    async fn encode_text(&self, text: String) -> Result<Vec<u32>, BackendError> {
        let _turn = self.turns.acquire().await.expect("the semaphore is never closed");
        let engine = self.engine.clone();
        let tokens = tokio::task::spawn_blocking(move || engine.tokenizer().encode(&text, true))
            .await
            .map_err(|err| BackendError::Unavailable {
                backend: self.backend.clone(),
                reason: format!("preparing the prompt failed: {err}"),
            })?
            .map_err(|err| BackendError::rejected(format!("Cannot tokenize the prompt: {err}"), "prompt"))?;
        let context = self.engine.context_length();
        if tokens.len() >= context {
            return Err(BackendError::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, your prompt resulted in {} tokens.",
                    tokens.len()
                ),
            });
        }
        if tokens.is_empty() {
            return Err(BackendError::rejected("The prompt is empty.", "prompt"));
        }
        Ok(tokens)
    }
}

/// Renders messages with the model's chat template and tokenizes them,
/// refusing a prompt that leaves no room in the context window. Every string
/// the client supplied is escaped first, so that the only control tokens in the
/// prompt are the template's own.
fn encode(
    engine: &Engine,
    messages: &Value,
    extra: &Map<String, Value>,
    backend: &str,
) -> Result<Vec<u32>, BackendError> {
    let context = engine.context_length();
    encode_conversation(engine.tokenizer(), engine.template().map(|t| t.as_ref()), context, messages, extra).map_err(
        |err| match err {
            PromptError::NoTemplate => BackendError::Unavailable {
                backend: backend.to_string(),
                reason: "the model has no chat template".into(),
            },
            PromptError::Template(err) => {
                BackendError::rejected(format!("The chat template refused the messages: {err}"), "messages")
            }
            PromptError::TooLong { tokens, at_least } => BackendError::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, your messages resulted in {}{tokens} tokens.",
                    if at_least { "at least " } else { "" }
                ),
            },
            PromptError::Tokenizer(err) => BackendError::rejected(format!("Cannot tokenize the prompt: {err}"), "messages"),
        },
    )
}

/// Asks a model without native thinking to reason before it answers.
pub const REASONING_INSTRUCTION: &str =
    "Think through the problem step by step, checking each step. Do not give the final answer yet.";
/// Asks for the answer once the reasoning is in view.
pub const ANSWER_INSTRUCTION: &str = "Using the reasoning above, give your final answer.";

/// A request in the engine's terms, and what is needed to derive the passes of
/// a reasoning answer from it.
pub(super) struct Plan {
    /// The answer pass (the only pass without reasoning).
    pub(super) generation: GenerationRequest,
    pub(super) messages: Arc<Value>,
    pub(super) extra: Arc<Map<String, Value>>,
    /// Whether `max_tokens` is the client's own limit (an answer cut there is
    /// what the client asked for, not a weakness of the model).
    pub(super) client_limited: bool,
    /// How to read tool calls out of the answer, when it may make them.
    pub(super) calls: Option<CallReading>,
}

/// How an answer's tool calls are written, and the tools they may call.
#[derive(Debug, Clone)]
pub(super) struct CallReading {
    pub(super) format: ToolFormat,
    pub(super) tools: Vec<ToolSpec>,
}

impl CallReading {
    pub(super) fn parser(&self) -> CallParser {
        CallParser::new(self.format, &self.tools)
    }
}

/// What holds the answer's form: its grammar, and how to read its calls.
pub(super) struct AnswerForm {
    constraint: Option<Constraint>,
    reading: Option<CallReading>,
}

/// The grammar that holds the answer to the request's tools (unless
/// `tool_choice` is `none`) or `response_format`, compiled (and cached) for
/// the model; a schema the compiler cannot hold to is refused naming what it
/// does not support.
pub(super) fn answer_form(
    engine: &Engine,
    request: &ChatRequest,
    tool_format: Option<ToolFormat>,
    backend: &str,
) -> Result<AnswerForm, FormRefused> {
    let refuse = |why: Ineligible, message: String, param: &str| FormRefused {
        why,
        error: BackendError::rejected(message, param),
    };
    let compile = |grammar: &Grammar, why: Ineligible, param: &str| {
        engine.constraint(grammar).map_err(|err| {
            refuse(
                why,
                format!("Backend `{backend}` cannot hold its answer to '{param}': {err}"),
                param,
            )
        })
    };
    let tools = request.tools.as_ref().filter(|tools| tools.choice != ToolChoice::None);
    if let Some(tools) = tools {
        if tools.other_kinds {
            return Err(refuse(
                Ineligible::Tools,
                format!("Backend `{backend}` is a local model; it calls tools of type 'function' only."),
                "tools",
            ));
        }
        let Some(format) = tool_format else {
            return Err(refuse(
                Ineligible::Tools,
                format!(
                    "Backend `{backend}` is a local model without tool support (its chat template offers no tools)."
                ),
                "tools",
            ));
        };
        if request.format != OutputFormat::Text {
            return Err(refuse(
                Ineligible::Fields,
                format!("Backend `{backend}` does not combine tools with a JSON 'response_format'."),
                "response_format",
            ));
        }
        let specs: Vec<ToolSpec> = tools
            .functions
            .iter()
            .map(|function| ToolSpec {
                name: function.name.clone(),
                parameters: function.parameters.clone(),
            })
            .collect();
        let mode = match &tools.choice {
            ToolChoice::Named(name) => CallMode::Named(name.clone()),
            ToolChoice::Required => CallMode::Required,
            _ => CallMode::Auto,
        };
        let grammar = call_grammar(format, &specs, &mode, tools.parallel).map_err(|err| {
            refuse(
                Ineligible::Tools,
                format!("Backend `{backend}` cannot hold its answer to 'tools': {err}"),
                "tools",
            )
        })?;
        let grammar = Grammar::Lark(grammar);
        return Ok(AnswerForm {
            constraint: Some(compile(&grammar, Ineligible::Tools, "tools")?),
            reading: Some(CallReading { format, tools: specs }),
        });
    }
    let constraint = match &request.format {
        OutputFormat::Text => None,
        OutputFormat::JsonObject => Some(compile(&Grammar::JsonObject, Ineligible::JsonMode, "response_format")?),
        OutputFormat::JsonSchema { schema, .. } => Some(compile(
            &Grammar::JsonSchema(schema.clone()),
            Ineligible::JsonMode,
            "response_format.json_schema.schema",
        )?),
    };
    Ok(AnswerForm {
        constraint,
        reading: None,
    })
}

/// Why a local model cannot hold an answer to the form asked: what the
/// router reads (`why`), and what a client that named the model is told.
pub(super) struct FormRefused {
    pub(super) why: Ineligible,
    pub(super) error: BackendError,
}

/// The client's function tools as the chat template takes them (OpenAI's
/// objects, as transformers passes them).
fn offered_functions(tools: &Value) -> Value {
    Value::Array(
        tools
            .as_array()
            .into_iter()
            .flatten()
            .filter(|tool| tool["type"] == "function")
            .cloned()
            .collect(),
    )
}

impl Plan {
    /// The reasoning pass: the messages with the step-by-step instruction,
    /// within the reasoning budget, greedy-ish sampling as the answer's.
    pub(super) async fn reasoning_pass(
        &self,
        encoder: &PromptEncoder,
        budget: u64,
    ) -> Result<GenerationRequest, BackendError> {
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
            // The reasoning is free text; only the answer is held to a form.
            constraint: None,
            ..self.generation.clone()
        })
    }

    /// The answer pass after reasoning: the conversation, the reasoning as the
    /// model's own turn, and the request for the final answer.
    pub(super) async fn answer_pass(
        &self,
        encoder: &PromptEncoder,
        reasoning: &str,
    ) -> Result<GenerationRequest, BackendError> {
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
pub(super) fn fewest_prompt_tokens(tokenizer: &Tokenizer, messages: &Value) -> Option<(usize, usize)> {
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

/// The messages with any content-part arrays flattened to text (images and
/// audio are refused), no content as empty text, and tool calls' arguments
/// as objects.
fn text_only_messages(messages: &Value, backend: &str) -> Result<Value, BackendError> {
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
                        return Err(BackendError::rejected(
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
        // An assistant turn that only called tools has no content; templates
        // test it as a string (Qwen3's `'</think>' in message.content`), so it
        // is the empty string, as vLLM and llama.cpp's server pass it.
        if message.get("content").is_none_or(Value::is_null) {
            message["content"] = Value::String(String::new());
        }
        // Templates read a call's arguments as a mapping (Qwen3.5's iterates
        // over them, Llama 3's writes them with `tojson`); OpenAI sends them as
        // a JSON string.
        if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
            for call in calls {
                let arguments = &mut call["function"]["arguments"];
                if let Some(Ok(object @ Value::Object(_))) = arguments.as_str().map(serde_json::from_str::<Value>) {
                    *arguments = object;
                }
            }
        }
        out.push(message);
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    /// The embedded default model behind a local backend with known defaults.
    fn backend() -> LocalBackend {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let policy = Policy::parse(&format!(
            "backends:
  local:
    - name: smollm2
      model_path: {model}
      threads: 1
      context_length: 2048
      default_max_tokens: 64
      reasoning_max_tokens: 16
      sampling: {{ temperature: 0.2, top_p: 0.9, top_k: 40, min_p: 0.05, repetition_penalty: 1.1 }}
routing:
  local_backend: smollm2
"
        ))
        .unwrap_or_else(|err| panic!("{err:?}"));
        LocalBackend::load(&policy.backends.local[0], std::path::Path::new("/"))
    }

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    async fn plan(backend: &LocalBackend, body: Value) -> Result<Plan, BackendError> {
        let engine = backend.engine().unwrap().clone();
        backend
            .prepare(&engine, &backend.encoder(&engine), &request(body))
            .await
    }

    /// The refusal's message and the field it blames, as the client reads them.
    fn refusal(result: Result<Plan, BackendError>) -> (String, Option<String>) {
        match result {
            Err(err) => {
                let json = crate::openai::error::ApiError::from(err).to_json();
                (
                    json["error"]["message"].as_str().unwrap().to_string(),
                    json["error"]["param"].as_str().map(str::to_string),
                )
            }
            Ok(_) => panic!("prepared"),
        }
    }

    fn user(text: &str) -> Value {
        json!([{ "role": "user", "content": text }])
    }

    #[tokio::test]
    async fn the_clients_sampling_and_limits_reach_the_engine_over_the_defaults() {
        let backend = backend();
        let plan = plan(
            &backend,
            json!({ "model": "smollm2", "messages": user("Hi"), "temperature": 0.7, "top_p": 0.5,
                    "presence_penalty": 0.5, "seed": 7, "stop": ["\n\n", "END"], "logprobs": true,
                    "top_logprobs": 5, "max_tokens": 12, "top_k": 3 }),
        )
        .await
        .unwrap();
        let g = &plan.generation;
        let s = &g.sampling;
        assert_eq!((s.temperature, s.top_p, s.top_k, s.min_p), (0.7, 0.5, 3, 0.05));
        assert_eq!(
            (s.presence_penalty, s.frequency_penalty, s.repetition_penalty),
            (0.5, 0.0, 1.1)
        );
        assert_eq!(s.seed, Some(7));
        assert_eq!(g.stop_strings, ["\n\n", "END"]);
        assert_eq!((g.max_tokens, g.top_logprobs), (12, 5));
        assert!(plan.client_limited, "12 is the client's own limit");
        // The prompt is the chat template's rendering: the user's text in its turn.
        let tokenizer = backend.engine().unwrap().tokenizer().clone();
        let prompt = tokenizer.decode(&g.prompt_tokens, false);
        assert!(prompt.contains("<|im_start|>user\nHi<|im_end|>"), "{prompt:?}");
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");

        let plain = plan_plain(&backend).await;
        let s = &plain.generation.sampling;
        assert_eq!((s.temperature, s.top_p, s.top_k, s.seed), (0.2, 0.9, 40, None));
        assert_eq!(plain.generation.max_tokens, 64, "the backend's default_max_tokens");
        assert_eq!(
            plain.generation.top_logprobs, 2,
            "two alternatives, for the ladder's margin"
        );
        assert!(!plain.client_limited);
    }

    async fn plan_plain(backend: &LocalBackend) -> Plan {
        plan(backend, json!({ "model": "smollm2", "messages": user("Hi") }))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn what_the_model_cannot_honour_is_refused_naming_the_field() {
        let backend = backend();
        let cases = [
            (
                json!({ "model": "smollm2", "messages": user("Hi"), "logit_bias": { "1": 5 } }),
                "logit_bias",
            ),
            (json!({ "model": "smollm2", "messages": user("Hi"), "n": 2 }), "n"),
            (
                json!({ "model": "smollm2", "messages": [
                    { "role": "user", "content": "Hi" },
                    { "role": "assistant", "content": null, "tool_calls": [{ "id": "c", "type": "function",
                      "function": { "name": "f", "arguments": "{}" } }] },
                    { "role": "tool", "tool_call_id": "c", "content": "ok" }] }),
                "messages[1].tool_calls",
            ),
            (
                json!({ "model": "smollm2", "messages": [{ "role": "user", "content": [
                    { "type": "text", "text": "What is this?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } }] }] }),
                "messages[0].content[1]",
            ),
            (
                json!({ "model": "smollm2", "messages": user("Hi"), "top_k": -1 }),
                "top_k",
            ),
            (
                json!({ "model": "smollm2", "messages": user("Hi"), "chat_template_kwargs": 3 }),
                "chat_template_kwargs",
            ),
        ];
        for (body, field) in cases {
            let (message, param) = refusal(plan(&backend, body).await);
            assert_eq!(param.as_deref(), Some(field), "{message}");
        }
    }

    #[tokio::test]
    async fn a_prompt_that_cannot_fit_is_refused_from_its_size_before_rendering() {
        let backend = backend();
        // Over 2048 tokens even at the longest token's bytes each.
        let huge = "word ".repeat(2048 * 81 / 5 + 100);
        let (message, _) = refusal(plan(&backend, json!({ "model": "smollm2", "messages": user(&huge) })).await);
        assert!(message.contains("bytes of text"), "{message}");
        // Under that floor but over the context once tokenized: refused after encoding.
        let long = "word ".repeat(2_100);
        let (message, _) = refusal(plan(&backend, json!({ "model": "smollm2", "messages": user(&long) })).await);
        assert!(message.contains("maximum context length is 2048 tokens"), "{message}");
        assert!(!message.contains("bytes of text"), "{message}");
    }

    #[tokio::test]
    async fn a_reasoning_answer_is_a_bounded_reasoning_pass_then_an_answer_pass() {
        let backend = backend();
        let engine = backend.engine().unwrap().clone();
        let encoder = backend.encoder(&engine);
        let plan = plan_plain(&backend).await;
        let tokenizer = engine.tokenizer().clone();
        let reasoning = plan.reasoning_pass(&encoder, 16).await.unwrap();
        assert_eq!(reasoning.max_tokens, 16);
        let text = tokenizer.decode(&reasoning.prompt_tokens, false);
        assert!(text.contains(REASONING_INSTRUCTION), "{text:?}");
        let answer = plan.answer_pass(&encoder, "First, greet.").await.unwrap();
        let text = tokenizer.decode(&answer.prompt_tokens, false);
        assert!(
            text.contains("First, greet.") && text.contains(ANSWER_INSTRUCTION),
            "{text:?}"
        );
        assert_eq!(
            answer.max_tokens, plan.generation.max_tokens,
            "the answer keeps its own limit"
        );
    }
}
