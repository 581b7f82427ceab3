//! The Responses API (`POST /v1/responses`), routed like chat.
//!
//! A request is read as the chat request it amounts to ([`to_chat`]):
//! `instructions` as the system turn, `input` (a string, or items: messages,
//! `function_call`s and their `function_call_output`s) as the conversation,
//! function `tools` and `tool_choice` in chat's shape, `text.format` as
//! `response_format`, `reasoning.effort` as `reasoning_effort`,
//! `max_output_tokens` as the token limit. Routing, the local model and the
//! ladder see that chat request; a local answer is written back as a
//! Responses object or event stream ([`ResponseWriter`]), and a remote
//! backend gets the request as the client sent it, at its own `/responses`.
//!
//! What needs server-side state (`previous_response_id`, `conversation`,
//! `background`) or tools other than functions (web search, file search, ...)
//! is not something a local model can answer: such a request goes remote,
//! and naming a local model for it is a 400 naming the field.

use serde_json::{Map, Value, json};

use super::error::ApiError;
use crate::outcome::BackendError;

/// What a Responses request carries beyond the chat request it amounts to.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    /// The request as the client sent it (for a remote backend).
    pub original: Map<String, Value>,
    /// The field a local model cannot serve, if any.
    pub unservable_locally: Option<&'static str>,
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."), param)
}

fn wrong(param: &str, expected: &str, got: &Value) -> ApiError {
    super::request::wrong_type(param, expected, got)
}

/// A message's content as chat takes it: a string, or text parts
/// (`input_text`/`output_text` become `text`; images keep their URL).
fn content(value: &Value, param: &str) -> Result<Value, ApiError> {
    match value {
        Value::String(_) => Ok(value.clone()),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let param = format!("{param}[{i}]");
                match part["type"].as_str() {
                    Some("input_text" | "output_text" | "text") => match &part["text"] {
                        Value::String(text) => Ok(json!({ "type": "text", "text": text })),
                        other => Err(wrong(&format!("{param}.text"), "a string", other)),
                    },
                    Some("input_image") => {
                        Ok(json!({ "type": "image_url", "image_url": { "url": part["image_url"] } }))
                    }
                    Some(kind) => Ok(json!({ "type": kind })),
                    None => Err(missing(&format!("{param}.type"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Err(wrong(param, "a string or an array of content parts", other)),
    }
}

/// Chat's names in an error about the chat request a Responses request
/// amounts to (found reading it, or by the local backend), put back in the
/// Responses API's terms (`text.format.name`,
/// not `response_format.json_schema.name`).
pub fn in_responses_terms(err: ApiError) -> ApiError {
    const NAMES: &[(&str, &str)] = &[
        ("response_format.json_schema.", "text.format."),
        ("response_format", "text.format"),
        ("max_completion_tokens", "max_output_tokens"),
        ("messages", "input"),
        ("reasoning_effort", "reasoning.effort"),
    ];
    let rename = |text: &str| {
        NAMES
            .iter()
            .find(|(chat, _)| text.contains(chat))
            .map_or(text.to_string(), |(chat, ours)| text.replace(chat, ours))
    };
    match err {
        ApiError::InvalidRequest { message, param } => ApiError::InvalidRequest {
            message: rename(&message),
            param: param.map(|p| rename(&p)),
        },
        ApiError::Backend(BackendError::Rejected { message, param }) => ApiError::Backend(BackendError::Rejected {
            message: rename(&message),
            param: param.map(|p| rename(&p)),
        }),
        other => other,
    }
}

/// The chat request a Responses request amounts to, and the field a local
/// model could not serve (if any).
pub fn to_chat(body: &Map<String, Value>) -> Result<(Map<String, Value>, Option<&'static str>), ApiError> {
    let field = |key: &str| body.get(key).unwrap_or(&Value::Null);
    let mut unservable = ["previous_response_id", "conversation", "background", "prompt"]
        .into_iter()
        .find(|key| !field(key).is_null() && field(key) != &Value::Bool(false));
    let mut chat = Map::new();
    chat.insert("model".into(), field("model").clone());
    let mut messages = Vec::new();
    match field("instructions") {
        Value::Null => {}
        Value::String(text) => messages.push(json!({ "role": "system", "content": text })),
        other => return Err(wrong("instructions", "a string", other)),
    }
    match field("input") {
        Value::Null => return Err(missing("input")),
        Value::String(text) => messages.push(json!({ "role": "user", "content": text })),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let param = format!("input[{i}]");
                let Value::Object(item) = item else {
                    return Err(wrong(&param, "an object", item));
                };
                let get = |key: &str| item.get(key).unwrap_or(&Value::Null);
                match get("type").as_str().unwrap_or("message") {
                    "message" => {
                        let role = match get("role") {
                            Value::String(role) => role.clone(),
                            Value::Null => return Err(missing(&format!("{param}.role"))),
                            other => return Err(wrong(&format!("{param}.role"), "a string", other)),
                        };
                        let content = content(get("content"), &format!("{param}.content"))?;
                        messages.push(json!({ "role": role, "content": content }));
                    }
                    "function_call" => {
                        let call = json!({ "id": get("call_id"), "type": "function",
                                           "function": { "name": get("name"), "arguments": get("arguments") } });
                        // Calls one after another are one assistant turn.
                        match messages.last_mut() {
                            Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                                last["tool_calls"].as_array_mut().expect("an array").push(call);
                            }
                            _ => messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] })),
                        }
                    }
                    "function_call_output" => {
                        let output = match get("output") {
                            Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        messages.push(json!({ "role": "tool", "tool_call_id": get("call_id"), "content": output }));
                    }
                    // Earlier reasoning is not shown to the model again.
                    "reasoning" => {}
                    _ => unservable = unservable.or(Some("input")),
                }
            }
        }
        other => return Err(wrong("input", "a string or an array of items", other)),
    }
    chat.insert("messages".into(), Value::Array(messages));
    match field("tools") {
        Value::Null => {}
        Value::Array(tools) => {
            let mut functions = Vec::new();
            for tool in tools {
                if tool["type"] == "function" {
                    let mut function = tool.clone();
                    if let Some(object) = function.as_object_mut() {
                        object.remove("type");
                    }
                    functions.push(json!({ "type": "function", "function": function }));
                } else {
                    unservable = unservable.or(Some("tools"));
                }
            }
            if !functions.is_empty() {
                chat.insert("tools".into(), Value::Array(functions));
            }
        }
        other => return Err(wrong("tools", "an array", other)),
    }
    match field("tool_choice") {
        Value::Null => {}
        Value::Object(choice) if choice.get("type") == Some(&json!("function")) => {
            chat.insert(
                "tool_choice".into(),
                json!({ "type": "function", "function": { "name": choice.get("name").unwrap_or(&Value::Null) } }),
            );
        }
        Value::Object(_) => unservable = unservable.or(Some("tool_choice")),
        choice => {
            chat.insert("tool_choice".into(), choice.clone());
        }
    }
    match &field("text")["format"] {
        Value::Null => {}
        Value::Object(format) => {
            let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
            let response_format = match kind {
                "json_schema" => json!({ "type": "json_schema", "json_schema": {
                    "name": format.get("name").unwrap_or(&Value::Null),
                    "schema": format.get("schema").unwrap_or(&Value::Null),
                    "strict": format.get("strict").unwrap_or(&Value::Null) } }),
                _ => json!({ "type": kind }),
            };
            chat.insert("response_format".into(), response_format);
        }
        other => return Err(wrong("text.format", "an object", other)),
    }
    if let Some(effort) = field("reasoning").get("effort") {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    for (from, to) in [
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("stream", "stream"),
        ("top_logprobs", "top_logprobs"),
        ("user", "user"),
        ("metadata", "metadata"),
    ] {
        if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), value.clone());
        }
    }
    Ok((chat, unservable))
}

/// Writes a local answer as the Responses API does: its output items
/// (reasoning, the message, function calls) built from the answer's events,
/// as one `response` object, or as the event stream (`response.created`,
/// each item's `added`, deltas and `done`, `response.completed` or
/// `response.incomplete` with the usage).
pub struct ResponseWriter {
    id: String,
    created_at: u64,
    model: String,
    /// What the response object echoes of the request.
    echo: Map<String, Value>,
    output: Vec<Value>,
    /// The open item's index in `output`.
    open: Option<usize>,
    sequence: u64,
    /// Chat's call index to the item's index in `output`.
    calls: Vec<usize>,
}

impl ResponseWriter {
    pub fn new(model: &str, original: &Map<String, Value>) -> ResponseWriter {
        let mut echo = Map::new();
        for key in [
            "instructions",
            "max_output_tokens",
            "temperature",
            "top_p",
            "metadata",
            "previous_response_id",
        ] {
            echo.insert(key.into(), original.get(key).cloned().unwrap_or(Value::Null));
        }
        echo.insert("tools".into(), original.get("tools").cloned().unwrap_or(json!([])));
        echo.insert(
            "tool_choice".into(),
            original.get("tool_choice").cloned().unwrap_or(json!("auto")),
        );
        echo.insert(
            "parallel_tool_calls".into(),
            original.get("parallel_tool_calls").cloned().unwrap_or(json!(true)),
        );
        echo.insert(
            "text".into(),
            json!({ "format": original.get("text").and_then(|t| t.get("format")).cloned().unwrap_or(json!({ "type": "text" })) }),
        );
        ResponseWriter {
            id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
            echo,
            output: Vec::new(),
            open: None,
            sequence: 0,
            calls: Vec::new(),
        }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    }

    /// The response object, with `status` and, once finished, its usage.
    pub fn response(&self, status: &str, usage: Option<Value>, incomplete: Option<&str>) -> Value {
        let mut response = json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": self.output, "error": null,
            "incomplete_details": incomplete.map(|reason| json!({ "reason": reason })),
            "usage": usage,
        });
        response.as_object_mut().expect("an object").extend(self.echo.clone());
        response
    }

    /// The stream's opening events.
    pub fn start(&mut self) -> String {
        let response = self.response("in_progress", None, None);
        let mut out = self.event("response.created", json!({ "response": response }));
        out += &self.event("response.in_progress", json!({ "response": response }));
        out
    }

    /// Opens an item of `kind` unless one is open; its index.
    fn item(&mut self, kind: &str, item: Value, out: &mut String) -> usize {
        if let Some(open) = self.open
            && self.output[open]["type"] == kind
            && kind != "function_call"
        {
            return open;
        }
        self.close(out);
        let index = self.output.len();
        self.output.push(item.clone());
        self.open = Some(index);
        *out += &self.event(
            "response.output_item.added",
            json!({ "output_index": index, "item": item }),
        );
        if kind == "message" {
            let part = json!({ "type": "output_text", "text": "", "annotations": [] });
            let id = self.output[index]["id"].clone();
            *out += &self.event(
                "response.content_part.added",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
            );
        }
        index
    }

    /// Closes the open item: its `done` events.
    fn close(&mut self, out: &mut String) {
        let Some(index) = self.open.take() else { return };
        let id = self.output[index]["id"].clone();
        match self.output[index]["type"].as_str() {
            Some("message") => {
                let text = self.output[index]["content"][0]["text"].clone();
                *out += &self.event(
                    "response.output_text.done",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": [] }),
                );
                let part = self.output[index]["content"][0].clone();
                *out += &self.event(
                    "response.content_part.done",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
                );
            }
            Some("reasoning") => {
                let text = self.output[index]["content"][0]["text"].clone();
                *out += &self.event(
                    "response.reasoning_text.done",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text }),
                );
            }
            _ => {
                let arguments = self.output[index]["arguments"].clone();
                let name = self.output[index]["name"].clone();
                *out += &self.event(
                    "response.function_call_arguments.done",
                    json!({ "item_id": id, "output_index": index, "arguments": arguments, "name": name }),
                );
            }
        }
        self.output[index]["status"] = json!("completed");
        let item = self.output[index].clone();
        *out += &self.event(
            "response.output_item.done",
            json!({ "output_index": index, "item": item }),
        );
    }

    /// Reasoning text: its events.
    pub fn reasoning(&mut self, text: &str) -> String {
        let mut out = String::new();
        if text.is_empty() {
            return out;
        }
        let item = json!({ "type": "reasoning", "id": format!("rs_{}", uuid::Uuid::new_v4().simple()),
                           "summary": [], "content": [{ "type": "reasoning_text", "text": "" }] });
        let index = self.item("reasoning", item, &mut out);
        append(&mut self.output[index]["content"][0]["text"], text);
        let id = self.output[index]["id"].clone();
        out += &self.event(
            "response.reasoning_text.delta",
            json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": text }),
        );
        out
    }

    /// Answer text: its events.
    pub fn text(&mut self, text: &str) -> String {
        let mut out = String::new();
        if text.is_empty() {
            return out;
        }
        let item = json!({ "type": "message", "id": format!("msg_{}", uuid::Uuid::new_v4().simple()),
                           "status": "in_progress", "role": "assistant",
                           "content": [{ "type": "output_text", "text": "", "annotations": [] }] });
        let index = self.item("message", item, &mut out);
        append(&mut self.output[index]["content"][0]["text"], text);
        let id = self.output[index]["id"].clone();
        out += &self.event(
            "response.output_text.delta",
            json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": [] }),
        );
        out
    }

    /// A function call opens (`call_id` is chat's call id).
    pub fn call(&mut self, call_id: &str, name: &str) -> String {
        let mut out = String::new();
        let item = json!({ "type": "function_call", "id": format!("fc_{}", uuid::Uuid::new_v4().simple()),
                           "call_id": call_id, "name": name, "arguments": "", "status": "in_progress" });
        let index = self.item("function_call", item, &mut out);
        self.calls.push(index);
        out
    }

    /// More of call `index`'s arguments.
    pub fn arguments(&mut self, index: usize, text: &str) -> String {
        let Some(&item) = self.calls.get(index) else {
            return String::new();
        };
        append(&mut self.output[item]["arguments"], text);
        let id = self.output[item]["id"].clone();
        self.event(
            "response.function_call_arguments.delta",
            json!({ "item_id": id, "output_index": item, "delta": text }),
        )
    }

    /// The end: the open item closed, then `response.completed` (or
    /// `response.incomplete` when cut at the token limit).
    pub fn finish(&mut self, usage: Value, incomplete: bool) -> String {
        let mut out = String::new();
        self.close(&mut out);
        let (kind, status) = if incomplete {
            ("response.incomplete", "incomplete")
        } else {
            ("response.completed", "completed")
        };
        let response = self.response(status, Some(usage), incomplete.then_some("max_output_tokens"));
        out += &self.event(kind, json!({ "response": response }));
        out
    }

    /// The whole response once finished.
    pub fn whole(&mut self, usage: Value, incomplete: bool) -> Value {
        let mut ignored = String::new();
        self.close(&mut ignored);
        let (status, reason) = if incomplete {
            ("incomplete", Some("max_output_tokens"))
        } else {
            ("completed", None)
        };
        self.response(status, Some(usage), reason)
    }

    /// A failure after the stream began.
    pub fn error(&mut self, error: &Value) -> String {
        self.event(
            "error",
            json!({ "code": error["code"], "message": error["message"], "param": error["param"] }),
        )
    }
}

fn append(value: &mut Value, text: &str) {
    if let Value::String(existing) = value {
        existing.push_str(text);
    }
}

/// The Responses API's `usage`, from chat's counts.
pub fn usage(prompt: u64, completion: u64, cached: u64, reasoning: u64) -> Value {
    json!({
        "input_tokens": prompt, "input_tokens_details": { "cached_tokens": cached },
        "output_tokens": completion, "output_tokens_details": { "reasoning_tokens": reasoning },
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_request_reads_as_its_chat_request() {
        let body = json!({
            "model": "m", "instructions": "Be brief.",
            "input": [
                { "role": "user", "content": [{ "type": "input_text", "text": "Weather?" }] },
                { "type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}" },
                { "type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"city\": \"Lima\"}" },
                { "type": "function_call_output", "call_id": "c1", "output": "5 C" },
            ],
            "tools": [{ "type": "function", "name": "get_weather", "parameters": { "type": "object" } }],
            "tool_choice": { "type": "function", "name": "get_weather" },
            "text": { "format": { "type": "json_schema", "name": "w", "schema": { "type": "object" }, "strict": true } },
            "reasoning": { "effort": "low" }, "max_output_tokens": 50, "stream": true,
        });
        let (chat, unservable) = to_chat(body.as_object().unwrap()).unwrap();
        assert_eq!(unservable, None);
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({ "role": "system", "content": "Be brief." }));
        assert_eq!(messages[1]["content"][0], json!({ "type": "text", "text": "Weather?" }));
        assert_eq!(
            messages[2]["tool_calls"].as_array().unwrap().len(),
            2,
            "one assistant turn"
        );
        assert_eq!(
            messages[3],
            json!({ "role": "tool", "tool_call_id": "c1", "content": "5 C" })
        );
        assert_eq!(chat["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(chat["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
        assert_eq!(
            (
                &chat["reasoning_effort"],
                &chat["max_completion_tokens"],
                &chat["stream"]
            ),
            (&json!("low"), &json!(50), &json!(true))
        );
    }

    #[test]
    fn what_needs_server_state_or_hosted_tools_is_not_for_a_local_model() {
        for (extra, field) in [
            (json!({ "previous_response_id": "resp_1" }), "previous_response_id"),
            (json!({ "tools": [{ "type": "web_search" }] }), "tools"),
            (json!({ "background": true }), "background"),
        ] {
            let mut body = json!({ "model": "m", "input": "hi" });
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            assert_eq!(to_chat(body.as_object().unwrap()).unwrap().1, Some(field));
        }
        let err = to_chat(json!({ "model": "m" }).as_object().unwrap())
            .unwrap_err()
            .to_json();
        assert_eq!(err["error"]["param"], "input");
        // Errors about the chat request it amounts to speak the Responses API's names.
        let body = json!({ "model": "m", "input": "x", "text": { "format": { "type": "json_schema", "name": "a b", "schema": {} } } });
        let err = crate::openai::request::ChatRequest::parse_responses(body.to_string().as_bytes())
            .unwrap_err()
            .to_json();
        assert_eq!(err["error"]["param"], "text.format.name", "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains("'text.format.name'"),
            "{err}"
        );
    }
}
