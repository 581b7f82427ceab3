//! A chat request as it arrives, validated before any backend sees it.
//!
//! We validate the fields Switchyard acts on (`model`, `messages` with their
//! roles, content and text parts, `stream`,
//! `stream_options`, `max_tokens`/`max_completion_tokens`) and the types and
//! ranges of OpenAI's sampling fields (`temperature`, `top_p`, penalties, `n`,
//! `seed`, `stop`, `logprobs`, `top_logprobs`), with OpenAI's own wording where
//! it has one: a request is refused the same way whichever tier the router
//! picks, and a bad one never costs a paid round trip. Everything stays in
//! [`ChatRequest::body`] exactly as the client sent it, in the client's key
//! order, and passes through to a remote backend (vendor extras unchecked;
//! `tools`, `tool_choice` and `response_format` checked in `structured`).

use serde_json::{Map, Value};

use super::error::ApiError;
use super::json;
use super::responses::ResponsesRequest;
use super::structured::{OutputFormat, ToolsAsked};

/// No model anywhere accepts more output tokens than this; a larger `max_tokens`
/// is a client bug, answered here rather than by a paid round trip.
pub const MAX_TOKENS_CEILING: u64 = 1 << 24;

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The whole request object, unknown fields included.
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` as the client set it.
    pub include_usage: bool,
    /// `max_completion_tokens`, or the older `max_tokens`.
    pub max_tokens: Option<u64>,
    /// OpenAI's sampling fields, validated.
    pub sampling: Sampling,
    /// What it asks of a backend beyond text in and text out.
    pub asks: Asks,
    /// The tools it offers, with `tool_choice` and `parallel_tool_calls`.
    pub tools: Option<ToolsAsked>,
    /// `response_format`.
    pub format: OutputFormat,
    /// A legacy completion's prompt (`/v1/completions`); `None` for chat.
    pub legacy: Option<LegacyPrompt>,
    /// A Responses request as sent (`/v1/responses`); `None` for chat.
    pub responses: Option<ResponsesRequest>,
    /// Whether a local model should reason before answering: asked by the
    /// client with `reasoning_effort` (anything but `none`/`minimal`), or set by
    /// the router for the `local-reasoning` tier; ignored by a local backend
    /// with `reasoning: false`. Remote backends get the client's
    /// `reasoning_effort` as sent.
    pub reasoning: bool,
}

/// A legacy text completion (`/v1/completions`): its prompt, which routing
/// and the local model read as the one user turn of a conversation.
#[derive(Debug, Clone)]
pub struct LegacyPrompt {
    /// The prompt's text (several prompts joined by blank lines, for routing).
    pub text: String,
    /// What a local model cannot take as a prompt, as the param to name: a
    /// list of several prompts, token ids, `suffix`, `best_of` over 1, `echo`
    /// with `logprobs`.
    pub unservable_locally: Option<&'static str>,
    /// `echo`: the answer's text starts with the prompt.
    pub echo: bool,
    /// `logprobs`: how many alternatives each token's entry lists (0 to 5).
    pub logprobs: Option<u32>,
    /// `[{"role": "user", "content": text}]`.
    messages: Value,
}

impl ChatRequest {
    /// The conversation: the body's `messages`, or a legacy prompt as one user turn.
    pub fn messages(&self) -> &Value {
        match &self.legacy {
            Some(legacy) => &legacy.messages,
            None => &self.body["messages"],
        }
    }

    /// A legacy completion request (`/v1/completions`): `prompt` (a string, a
    /// list of strings, or token ids), `echo`, `logprobs` (an integer up to 5),
    /// `suffix`, `best_of`, `max_tokens` (16 when absent, as OpenAI's), and
    /// the sampling fields chat has.
    pub fn parse_completion(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        let body = json_object(bytes)?;
        let (text, mut unservable) = match body.get("prompt") {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid("Missing required parameter: 'prompt'.", "prompt"));
            }
            Some(Value::String(text)) => (text.clone(), None),
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(ApiError::invalid(
                    "Invalid 'prompt': empty array. Expected an array with minimum length 1.",
                    "prompt",
                ));
            }
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                (texts.join("\n\n"), (texts.len() > 1).then_some("prompt"))
            }
            Some(Value::Array(items)) if items.iter().all(|i| i.is_u64() || i.is_array()) => {
                (String::new(), Some("prompt"))
            }
            Some(other) => {
                return Err(wrong_type(
                    "prompt",
                    "a string, an array of strings, or an array of token ids",
                    other,
                ));
            }
        };
        let echo = optional_bool(&body, "echo", "echo")?.unwrap_or(false);
        let logprobs = match body.get("logprobs") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 5) => n.as_u64().map(|n| n as u32),
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("Invalid 'logprobs': expected an integer from 0 to 5, but got {other}."),
                    "logprobs",
                ));
            }
        };
        if body.get("suffix").is_some_and(|s| !s.is_null()) {
            unservable = unservable.or(Some("suffix"));
        }
        if body.get("best_of").and_then(Value::as_u64).is_some_and(|b| b > 1) {
            unservable = unservable.or(Some("best_of"));
        }
        if echo && logprobs.is_some() {
            unservable = unservable.or(Some("echo"));
        }
        // Chat's checks for the fields the two share (`logprobs` is an
        // integer here, checked above).
        let messages = serde_json::json!([{ "role": "user", "content": text }]);
        let mut shared = body.clone();
        shared.remove("logprobs");
        shared.insert("messages".into(), messages.clone());
        let mut request = ChatRequest::from_object(shared)?;
        request.body = body;
        request.max_tokens = request.max_tokens.or(Some(LEGACY_DEFAULT_MAX_TOKENS));
        request.legacy = Some(LegacyPrompt {
            messages,
            text,
            unservable_locally: unservable,
            echo,
            logprobs,
        });
        Ok(request)
    }

    pub fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        ChatRequest::from_object(json_object(bytes)?)
    }

    /// A Responses API request (`/v1/responses`), read as the chat request it
    /// amounts to (see [`super::responses`]); the original is kept for a
    /// remote backend.
    pub fn parse_responses(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        let original = json_object(bytes)?;
        let (chat, unservable_locally) = super::responses::to_chat(&original)?;
        let mut request = ChatRequest::from_object(chat).map_err(super::responses::in_responses_terms)?;
        request.responses = Some(ResponsesRequest {
            original,
            unservable_locally,
        });
        Ok(request)
    }

    /// What a local model cannot serve of this request's own API (legacy
    /// completions, Responses), as the param to name.
    pub fn unservable_locally(&self) -> Option<&'static str> {
        self.legacy
            .as_ref()
            .and_then(|l| l.unservable_locally)
            .or(self.responses.as_ref().and_then(|r| r.unservable_locally))
    }

    fn from_object(body: Map<String, Value>) -> Result<ChatRequest, ApiError> {
        let model = match body.get("model") {
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid("You must provide a model parameter.", "model"));
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid type for 'model': expected a non-empty string, but got {}.",
                        kind_of(other)
                    ),
                    "model",
                ));
            }
        };

        validate_messages(body.get("messages"))?;

        let stream = optional_bool(&body, "stream", "stream")?.unwrap_or(false);

        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => {
                if !stream {
                    return Err(ApiError::invalid(
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                        "stream_options",
                    ));
                }
                optional_bool(options, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
            }
            Some(other) => return Err(wrong_type("stream_options", "an object", other)),
        };

        let mut max_tokens = None;
        for field in ["max_tokens", "max_completion_tokens"] {
            match body.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(0) | None => {
                        return Err(ApiError::invalid(
                            format!("Invalid '{field}': expected an integer of at least 1, but got {n}."),
                            field,
                        ));
                    }
                    Some(value) if value > MAX_TOKENS_CEILING => {
                        return Err(ApiError::invalid(
                            format!(
                                "'{field}' is too large: {value}. No model served here accepts more than {MAX_TOKENS_CEILING}."
                            ),
                            field,
                        ));
                    }
                    Some(value) => {
                        max_tokens = Some(max_tokens.map_or(value, |prev: u64| prev.min(value)));
                    }
                },
                Some(other) => return Err(wrong_type(field, "an integer", other)),
            }
        }

        let sampling = Sampling::parse(&body)?;
        let asks = Asks::of(&body);
        let tools = ToolsAsked::of(&body)?;
        let format = OutputFormat::of(&body)?;

        let reasoning = match body.get("reasoning_effort") {
            None | Some(Value::Null) => false,
            Some(Value::String(effort)) => !matches!(effort.as_str(), "none" | "minimal"),
            Some(other) => return Err(wrong_type("reasoning_effort", "a string", other)),
        };

        Ok(ChatRequest {
            body,
            model,
            stream,
            include_usage,
            max_tokens,
            sampling,
            asks,
            tools,
            format,
            reasoning,
            legacy: None,
            responses: None,
        })
    }

    /// Whether the request asks for what a field offers: it is set, and not to a
    /// value that asks for nothing (`null`, an empty list of `tools`, or a
    /// `response_format` of plain text, which is every model's default).
    pub fn uses(&self, field: &str) -> bool {
        uses(&self.body, field)
    }

    /// The `max_tokens` field name the client used, for error messages.
    pub fn max_tokens_param(&self) -> &'static str {
        if self.body.get("max_completion_tokens").is_some_and(|v| !v.is_null()) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        }
    }
}

/// A boolean field of `object`, named `param` in the error when it is not one.
pub(super) fn optional_bool(object: &Map<String, Value>, key: &str, param: &str) -> Result<Option<bool>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(wrong_type(param, "a boolean", other)),
    }
}

/// `max_tokens` of a legacy completion that sets none, as OpenAI's.
pub const LEGACY_DEFAULT_MAX_TOKENS: u64 = 16;

/// The body as a JSON object, within the parser's bounds.
fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson(
            "the body is empty; expected a JSON object".into(),
        ));
    }
    let value = json::parse_bounded(bytes, json::MAX_JSON_VALUES).map_err(|err| match err {
        json::BodyError::Syntax(err) => ApiError::InvalidJson(err.to_string()),
        json::BodyError::TooManyValues(limit) => ApiError::BodyTooComplex { limit_values: limit },
    })?;
    match value {
        Value::Object(body) => Ok(body),
        other => Err(ApiError::InvalidRequest {
            message: format!("The request body must be a JSON object, not {}.", kind_of(&other)),
            param: None,
        }),
    }
}

fn validate_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let messages = match messages {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("Missing required parameter: 'messages'.", "messages"));
        }
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(wrong_type(&param, "an object", message));
        };
        match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid value for '{param}.role': {:?}. Supported values are: {}.",
                        truncate(role),
                        ROLES.join(", ")
                    ),
                    &format!("{param}.role"),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: '{param}.role'."),
                    &format!("{param}.role"),
                ));
            }
            Some(other) => return Err(wrong_type(&format!("{param}.role"), "a string", other)),
        }
        let role = message["role"].as_str().unwrap_or_default();
        match message.get("content") {
            // Only an assistant's turn may have no content (it called tools instead).
            None | Some(Value::Null) if role != "assistant" => {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: '{param}.content'."),
                    &format!("{param}.content"),
                ));
            }
            None | Some(Value::Null | Value::String(_)) => {}
            Some(Value::Array(parts)) => validate_content_parts(&param, parts)?,
            Some(other) => {
                return Err(wrong_type(
                    &format!("{param}.content"),
                    "a string or an array of content parts",
                    other,
                ));
            }
        }
    }
    Ok(())
}

/// A content part list: each part an object with a string `type`, and a text
/// part's `text` a string. Other part types (images, audio, files) are checked
/// by whichever backend takes them; a text part is what every backend reads, so
/// a malformed one is refused here, the same way on every path.
fn validate_content_parts(message_param: &str, parts: &[Value]) -> Result<(), ApiError> {
    for (j, part) in parts.iter().enumerate() {
        let param = format!("{message_param}.content[{j}]");
        let Value::Object(part) = part else {
            return Err(wrong_type(&param, "an object", part));
        };
        match part.get("type") {
            Some(Value::String(kind)) if kind == "text" => match part.get("text") {
                Some(Value::String(_)) => {}
                None => {
                    return Err(ApiError::invalid(
                        format!("Missing required parameter: '{param}.text'."),
                        &format!("{param}.text"),
                    ));
                }
                Some(other) => return Err(wrong_type(&format!("{param}.text"), "a string", other)),
            },
            Some(Value::String(_)) => {}
            None => {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: '{param}.type'."),
                    &format!("{param}.type"),
                ));
            }
            Some(other) => return Err(wrong_type(&format!("{param}.type"), "a string", other)),
        }
    }
    Ok(())
}

/// OpenAI's sampling fields: a number within its range (inclusive).
const RANGES: &[(&str, f64, f64)] = &[
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
];

/// What a request asks of a backend beyond text in and text out, read once
/// from the body: routing's features and a local model's eligibility read
/// the same view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Asks {
    /// Tools (or the older functions) offered to the model.
    pub tools: bool,
    /// The first turn that carries a tool call or a tool's result (the param
    /// to name): an assistant turn's `tool_calls` or `function_call`, a `tool`
    /// or `function` turn.
    pub tool_turn: Option<String>,
    /// Content parts other than text (images, audio, files).
    pub non_text: bool,
    /// A `response_format` other than plain text.
    pub json_mode: bool,
}

impl Asks {
    fn of(body: &Map<String, Value>) -> Asks {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        Asks {
            tools: uses(body, "tools") || uses(body, "functions"),
            tool_turn: messages.iter().enumerate().find_map(|(i, message)| {
                let set = |field: &str| match message.get(field) {
                    None | Some(Value::Null) => false,
                    Some(Value::Array(items)) => !items.is_empty(),
                    Some(_) => true,
                };
                if set("tool_calls") {
                    Some(format!("messages[{i}].tool_calls"))
                } else if set("function_call") {
                    Some(format!("messages[{i}].function_call"))
                } else if matches!(message["role"].as_str(), Some("tool" | "function")) {
                    Some(format!("messages[{i}].role"))
                } else {
                    None
                }
            }),
            non_text: messages.iter().any(|message| {
                message["content"].as_array().is_some_and(|parts| {
                    parts
                        .iter()
                        .any(|p| p.get("type").and_then(Value::as_str) != Some("text"))
                })
            }),
            json_mode: uses(body, "response_format"),
        }
    }
}

/// Whether the request asks for what a field offers: it is set, and not to a
/// value that asks for nothing (`null`, an empty list of `tools`, or a
/// `response_format` of plain text, which is every model's default).
fn uses(body: &Map<String, Value>, field: &str) -> bool {
    match body.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(format)) if field == "response_format" => {
            format.get("type").and_then(Value::as_str) != Some("text")
        }
        Some(_) => true,
    }
}

/// OpenAI's sampling fields, checked against OpenAI's types and ranges and
/// carried typed: a backend reads these, never the body again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub n: Option<u32>,
    /// An integer; a negative one is kept as its two's-complement bits.
    pub seed: Option<u64>,
    /// Up to 4 strings.
    pub stop: Vec<String>,
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
}

impl Sampling {
    fn parse(body: &Map<String, Value>) -> Result<Sampling, ApiError> {
        let set = |field: &str| body.get(field).filter(|v| !v.is_null());
        let ranged = |field: &str, low: f64, high: f64| -> Result<Option<f32>, ApiError> {
            match set(field) {
                None => Ok(None),
                Some(Value::Number(n)) => {
                    let value = n.as_f64().unwrap_or(f64::NAN);
                    if (low..=high).contains(&value) {
                        Ok(Some(value as f32))
                    } else {
                        Err(ApiError::invalid(
                            format!("Invalid '{field}': expected a number from {low} to {high}, but got {n}."),
                            field,
                        ))
                    }
                }
                Some(other) => Err(wrong_type(field, "a number", other)),
            }
        };
        let mut numbers = [None; 4];
        for (slot, &(field, low, high)) in numbers.iter_mut().zip(RANGES) {
            *slot = ranged(field, low, high)?;
        }
        let [temperature, top_p, presence_penalty, frequency_penalty] = numbers;
        let integer = |field: &str, low: i64, high: i64| -> Result<Option<u32>, ApiError> {
            match set(field) {
                None => Ok(None),
                Some(Value::Number(n)) if n.as_i64().is_some_and(|v| (low..=high).contains(&v)) => {
                    Ok(n.as_i64().map(|v| v as u32))
                }
                Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Err(ApiError::invalid(
                    format!("Invalid '{field}': expected an integer from {low} to {high}, but got {n}."),
                    field,
                )),
                Some(other) => Err(wrong_type(field, "an integer", other)),
            }
        };
        let n = integer("n", 1, 128)?;
        let top_logprobs = integer("top_logprobs", 0, 20)?;
        let seed = match set("seed") {
            None => None,
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.as_u64().or_else(|| n.as_i64().map(|s| s as u64)),
            Some(other) => return Err(wrong_type("seed", "an integer", other)),
        };
        let logprobs = match set("logprobs") {
            None => false,
            Some(Value::Bool(logprobs)) => *logprobs,
            Some(other) => return Err(wrong_type("logprobs", "a boolean", other)),
        };
        let stop = match set("stop") {
            None => Vec::new(),
            Some(Value::String(stop)) => vec![stop.clone()],
            Some(Value::Array(items)) if items.len() <= 4 && items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).map(str::to_string).collect()
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid(
                    "Invalid 'stop': expected a string or an array of up to 4 strings.",
                    "stop",
                ));
            }
            Some(other) => return Err(wrong_type("stop", "a string or an array of strings", other)),
        };
        Ok(Sampling {
            temperature,
            top_p,
            presence_penalty,
            frequency_penalty,
            n,
            seed,
            stop,
            logprobs,
            top_logprobs,
        })
    }
}

pub(super) fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {}.",
            kind_of(got)
        ),
        param,
    )
}

/// A JSON value's kind, for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(json.as_bytes())
    }

    fn param_of(err: ApiError) -> Option<String> {
        match err {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn what_a_request_asks_beyond_text_is_read_once() {
        let plain = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"response_format":{"type":"text"}}"#,
        );
        assert_eq!(
            plain.unwrap().asks,
            Asks::default(),
            "empty tools and a text format ask for nothing"
        );
        let asks = parse(
            r#"{"model":"m","functions":[{"name":"f"}],"response_format":{"type":"json_object"},"messages":[
                {"role":"user","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c","content":"ok"}]}"#,
        )
        .unwrap()
        .asks;
        assert_eq!(
            asks,
            Asks {
                tools: true,
                tool_turn: Some("messages[1].tool_calls".into()),
                non_text: true,
                json_mode: true,
            }
        );
        let result_only = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"function","name":"f","content":"1"}]}"#,
        );
        assert_eq!(result_only.unwrap().asks.tool_turn.as_deref(), Some("messages[1].role"));
    }

    #[test]
    fn sampling_fields_are_carried_typed_once_checked() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"top_p":1,
                "presence_penalty":-2,"n":1,"seed":-1,"stop":["a","b"],"logprobs":true,"top_logprobs":3}"#,
        )
        .unwrap();
        assert_eq!(
            request.sampling,
            Sampling {
                temperature: Some(0.5),
                top_p: Some(1.0),
                presence_penalty: Some(-2.0),
                frequency_penalty: None,
                n: Some(1),
                seed: Some(u64::MAX),
                stop: vec!["a".into(), "b".into()],
                logprobs: true,
                top_logprobs: Some(3),
            }
        );
        let plain = parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"x","temperature":null}"#);
        let plain = plain.unwrap().sampling;
        assert_eq!(
            (plain.stop, plain.temperature, plain.logprobs),
            (vec!["x".to_string()], None, false)
        );
    }

    #[test]
    fn unknown_fields_are_kept_in_client_order() {
        let req =
            parse(r#"{"zeta":1,"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"alpha":{"x":2}}"#)
                .unwrap();
        let keys: Vec<&str> = req.body.keys().map(String::as_str).collect();
        assert_eq!(keys, ["zeta", "model", "messages", "tools", "alpha"]);
    }

    #[test]
    fn malformed_json_says_where_it_broke() {
        let err = parse("{\"model\": \"m\",\n \"messages\": [}").unwrap_err();
        assert!(err.message().contains("line 2 column"), "{}", err.message());
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn missing_messages_names_the_parameter() {
        assert_eq!(
            param_of(parse(r#"{"model":"m"}"#).unwrap_err()).as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn fields_that_ask_for_nothing_are_not_in_use() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[]}],
                "tools":[],"response_format":{"type":"text"},"functions":null}"#,
        )
        .unwrap();
        assert!(!request.uses("tools") && !request.uses("response_format") && !request.uses("functions"));
        let request = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],
                "response_format":{"type":"json_object"}}"#,
        )
        .unwrap();
        assert!(request.uses("tools") && request.uses("response_format"));
    }

    #[test]
    fn wrong_types_are_rejected_with_their_path() {
        let cases = [
            (r#"{"model":1,"messages":[]}"#, "model"),
            (r#"{"model":"m","messages":"hi"}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
            ),
            (r#"{"model":"m","messages":[{"role":"user"}]}"#, "messages[0].content"),
            (
                r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":null}]}"#,
                "messages[1].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
                "stream",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}"#,
                "max_tokens",
            ),
        ];
        let hi = |extra: &str| format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#);
        let sampling = [
            (hi(r#""temperature":"hot""#), "temperature"),
            (hi(r#""temperature":2.5"#), "temperature"),
            (hi(r#""top_p":-0.1"#), "top_p"),
            (hi(r#""presence_penalty":3"#), "presence_penalty"),
            (hi(r#""frequency_penalty":true"#), "frequency_penalty"),
            (hi(r#""n":0"#), "n"),
            (hi(r#""n":1.5"#), "n"),
            (hi(r#""seed":"42""#), "seed"),
            (hi(r#""logprobs":"yes""#), "logprobs"),
            (hi(r#""logprobs":true,"top_logprobs":21"#), "top_logprobs"),
            (hi(r#""stop":["a","b","c","d","e"]"#), "stop"),
            (hi(r#""stop":7"#), "stop"),
        ];
        for (json, param) in &sampling {
            assert_eq!(param_of(parse(json).unwrap_err()).as_deref(), Some(*param), "{json}");
        }
        for ok in [
            hi(r#""temperature":0,"top_p":1,"presence_penalty":-2,"frequency_penalty":2.0"#),
            hi(r#""n":2,"seed":-7,"logprobs":true,"top_logprobs":0,"stop":["\n"]"#),
            hi(r#""temperature":null,"stop":null,"logprobs":false,"seed":18446744073709551615"#),
        ] {
            assert!(parse(&ok).is_ok(), "{ok}");
        }
        for (json, param) in cases {
            assert_eq!(param_of(parse(json).unwrap_err()).as_deref(), Some(param), "{json}");
        }
    }

    #[test]
    fn a_malformed_text_part_is_refused_with_its_path_on_every_route() {
        // Checked at parse time, before any routing: a local model would
        // otherwise call `"text": 5` an unsupported part type, and a remote
        // one would be paid to say it is wrong.
        let cases = [
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":5}]}]}"#,
                "messages[0].content[1].text",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                "messages[0].content[0].text",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":["hi"]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
                "messages[0].content[0].type",
            ),
        ];
        for (json, param) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.status(), 400);
            assert_eq!(param_of(err).as_deref(), Some(param), "{json}");
        }
        let text_5 =
            parse(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#).unwrap_err();
        assert!(text_5.message().contains("expected a string"), "{}", text_5.message());
        for ok in [
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[]}]}"#,
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn huge_max_tokens_is_refused() {
        let err =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100000000000000000000000}"#)
                .unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("max_tokens"));
        let err =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":99999999999}"#)
                .unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("max_completion_tokens"));
    }

    #[test]
    fn stream_options_need_stream() {
        let err = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
        )
        .unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("stream_options"));
        let ok = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(ok.stream && ok.include_usage);
    }

    #[test]
    fn invalid_utf8_and_empty_bodies_are_json_errors() {
        let err = ChatRequest::parse(b"{\"model\":\"m\xff\xfe\"}").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        assert_eq!(ChatRequest::parse(b"  ").unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn legacy_completions_read_their_prompt_as_one_user_turn() {
        let read = |body: &str| ChatRequest::parse_completion(body.as_bytes());
        let request = read(r#"{"model":"m","prompt":"Once upon","echo":true,"logprobs":2,"temperature":0.5}"#).unwrap();
        let legacy = request.legacy.as_ref().unwrap();
        assert_eq!(
            (legacy.text.as_str(), legacy.echo, legacy.logprobs),
            ("Once upon", true, Some(2))
        );
        assert_eq!(request.messages()[0]["content"], "Once upon");
        assert_eq!(
            request.max_tokens,
            Some(LEGACY_DEFAULT_MAX_TOKENS),
            "16 when absent, as OpenAI's"
        );
        assert_eq!(request.sampling.temperature, Some(0.5));
        assert!(!request.body.contains_key("messages"), "the body goes upstream as sent");
        assert_eq!(
            legacy.unservable_locally,
            Some("echo"),
            "echo with logprobs needs the prompt's"
        );
        for (body, local) in [
            (r#"{"model":"m","prompt":["a","b"]}"#, Some("prompt")),
            (r#"{"model":"m","prompt":[1,2,3]}"#, Some("prompt")),
            (r#"{"model":"m","prompt":"a","suffix":"b"}"#, Some("suffix")),
            (r#"{"model":"m","prompt":"a","best_of":3}"#, Some("best_of")),
            (r#"{"model":"m","prompt":["a"],"max_tokens":5}"#, None),
        ] {
            assert_eq!(read(body).unwrap().legacy.unwrap().unservable_locally, local, "{body}");
        }
        for (body, param) in [
            (r#"{"model":"m"}"#, "prompt"),
            (r#"{"model":"m","prompt":[]}"#, "prompt"),
            (r#"{"model":"m","prompt":{"a":1}}"#, "prompt"),
            (r#"{"model":"m","prompt":"a","logprobs":6}"#, "logprobs"),
            (r#"{"model":"m","prompt":"a","echo":"yes"}"#, "echo"),
            (r#"{"model":"m","prompt":"a","temperature":3}"#, "temperature"),
        ] {
            let err = read(body).unwrap_err().to_json();
            assert_eq!(err["error"]["param"], param, "{body}: {err}");
        }
    }
}
