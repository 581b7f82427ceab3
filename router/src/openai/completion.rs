//! Replies written for the client, in one place: [`write()`] turns what a
//! backend gave (`reply`) into the HTTP body the request asked for. The local
//! model's events become OpenAI's chat completion objects (the whole
//! `chat.completion` of a non-streamed answer, or the `chat.completion.chunk`
//! events of a streamed one: reasoning text, content text with its tokens'
//! log probabilities, the finish with its usage, or an error event where the
//! answer broke off). A remote answer keeps its upstream's bytes as they came;
//! only the error that breaks a relayed stream off is written here.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
use switchyard_engine::sampling::SampledToken;

use super::error::ApiError;
use super::request::{ChatRequest, LegacyPrompt};
use super::responses::{self, ResponseWriter};
use super::sse;
use crate::reply::{ChatReply, Event, Finished, LocalAnswer, LocalEvents, Relayed, Usage, UsageCell};

/// A reply as the client receives it.
pub enum Written {
    /// A whole JSON body.
    Whole {
        body: Bytes,
        usage: Option<Usage>,
        headers: HeaderMap,
        status: StatusCode,
    },
    /// SSE bytes, ending with `data: [DONE]` or an error event.
    Stream {
        events: BoxStream<'static, Bytes>,
        headers: HeaderMap,
        /// The answer's usage, once known (by the stream's end).
        usage: UsageCell,
    },
}

impl Written {
    /// A whole local answer's body, with its usage.
    fn local_whole(body: &Value, finished: &Finished) -> Written {
        Written::Whole {
            body: Bytes::from(body.to_string()),
            usage: Some(finished.usage),
            headers: HeaderMap::new(),
            status: StatusCode::OK,
        }
    }
}

/// Writes `reply` as `request` asked for it: streamed or whole, with the
/// usage chunk and log-probabilities when asked for.
pub fn write(reply: ChatReply, request: &ChatRequest) -> Written {
    match reply {
        ChatReply::Relayed(Relayed::Complete {
            body,
            usage,
            headers,
            status,
        }) => Written::Whole {
            body,
            usage,
            headers,
            status,
        },
        ChatReply::Relayed(Relayed::Stream { events, headers, usage }) => Written::Stream {
            events: events
                .map(|event| event.unwrap_or_else(|err| sse::error_event(&ApiError::from(err))))
                .boxed(),
            headers,
            usage,
        },
        ChatReply::Local(answer) => match (&request.legacy, &request.responses) {
            (Some(legacy), _) => write_legacy(answer, legacy, request.include_usage),
            (None, Some(responses)) => write_responses(answer, &responses.original),
            (None, None) => write_local(answer, Asked::of(request)),
        },
    }
}

/// A local answer to a Responses request, as the Responses API writes it
/// (see [`ResponseWriter`]).
fn write_responses(answer: LocalAnswer, original: &serde_json::Map<String, Value>) -> Written {
    let mut writer = ResponseWriter::new(&answer.model, original);
    let usage_of = |finished: &Finished| {
        responses::usage(
            finished.usage.prompt_tokens,
            finished.usage.completion_tokens,
            finished.cached_tokens,
            finished.reasoning_tokens,
        )
    };
    let incomplete = |finished: &Finished| Finish::of(finished).reason == "length";
    match answer.events {
        LocalEvents::Whole { events, finished } => {
            for event in events {
                match event {
                    Event::Reasoning { text, .. } => drop(writer.reasoning(&text)),
                    Event::Content { text, .. } => drop(writer.text(&text)),
                    Event::ToolCall { id, name, .. } => drop(writer.call(&id, &name)),
                    Event::ToolArguments { index, text, .. } => drop(writer.arguments(index, &text)),
                    Event::Finished(_) | Event::Failed(_) => {}
                }
            }
            let body = writer.whole(usage_of(&finished), incomplete(&finished));
            Written::local_whole(&body, &finished)
        }
        LocalEvents::Stream(events) => {
            let start = Bytes::from(writer.start());
            local_stream(Some(start), events, move |event| {
                Bytes::from(match event {
                    Event::Reasoning { text, .. } => writer.reasoning(&text),
                    Event::Content { text, .. } => writer.text(&text),
                    Event::ToolCall { id, name, .. } => writer.call(&id, &name),
                    Event::ToolArguments { index, text, .. } => writer.arguments(index, &text),
                    Event::Finished(finished) => writer.finish(usage_of(&finished), incomplete(&finished)),
                    Event::Failed(err) => writer.error(&ApiError::from(err).to_json()["error"]),
                })
            })
        }
    }
}

/// A streamed local answer as SSE bytes: `head` first, then each event as
/// `write` turns it into bytes (empty pieces left out), up to the event that
/// ends the answer (`Finished`, whose usage fills the stream's cell, or
/// `Failed`).
fn local_stream(
    head: Option<Bytes>,
    events: BoxStream<'static, Event>,
    mut write: impl FnMut(Event) -> Bytes + Send + 'static,
) -> Written {
    let usage = UsageCell::default();
    let filled = usage.clone();
    let chunks = events
        .scan(false, move |done, event| {
            if *done {
                return std::future::ready(None);
            }
            match &event {
                Event::Finished(finished) => {
                    *done = true;
                    *filled.lock().expect("usage cell") = Some(finished.usage);
                }
                Event::Failed(_) => *done = true,
                _ => {}
            }
            std::future::ready(Some(write(event)))
        })
        .filter(|bytes| std::future::ready(!bytes.is_empty()));
    Written::Stream {
        events: futures_util::stream::iter(head).chain(chunks).boxed(),
        headers: HeaderMap::new(),
        usage,
    }
}

/// A local answer to a legacy completion, as `text_completion` objects: the
/// text (after the prompt, with `echo`), legacy `logprobs` (tokens,
/// token_logprobs, top_logprobs, text_offset), the finish and the usage.
fn write_legacy(answer: LocalAnswer, legacy: &LegacyPrompt, include_usage: bool) -> Written {
    let LocalAnswer {
        model,
        vocabulary,
        events,
    } = answer;
    let completion = Completion::new(&model);
    let id = completion.id.replacen("chatcmpl-", "cmpl-", 1);
    let object = move |choice: Value, usage: Option<Value>| {
        let mut object = json!({
            "id": id, "object": "text_completion", "created": completion.created,
            "model": completion.model, "choices": [choice],
        });
        if let Some(usage) = usage {
            object["usage"] = usage;
        }
        object
    };
    let echoed = if legacy.echo {
        legacy.text.clone()
    } else {
        String::new()
    };
    let top = legacy.logprobs;
    // Legacy log-probabilities of `tokens`, their text starting at `offset` of the answer's.
    let logprobs = move |tokens: &[SampledToken], mut offset: usize| {
        top.map(|top| {
            let text = |id: u32| String::from_utf8_lossy(vocabulary.token_bytes(id)).into_owned();
            let mut entry = json!({ "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [] });
            for token in tokens {
                let piece = text(token.id);
                entry["tokens"].as_array_mut().expect("array").push(json!(piece));
                entry["token_logprobs"]
                    .as_array_mut()
                    .expect("array")
                    .push(json!(token.logprob));
                let alternatives: serde_json::Map<String, Value> = token
                    .top
                    .iter()
                    .take(top as usize)
                    .map(|&(id, lp)| (text(id), json!(lp)))
                    .collect();
                entry["top_logprobs"]
                    .as_array_mut()
                    .expect("array")
                    .push(Value::Object(alternatives));
                entry["text_offset"].as_array_mut().expect("array").push(json!(offset));
                offset += piece.len();
            }
            entry
        })
    };
    match events {
        LocalEvents::Whole { events, finished } => {
            let mut text = echoed.clone();
            let mut tokens = Vec::new();
            for event in events {
                if let Event::Content { text: piece, token } = event {
                    text.push_str(&piece);
                    tokens.extend(token);
                }
            }
            let finish = Finish::of(&finished);
            let choice = json!({ "text": text, "index": 0, "logprobs": logprobs(&tokens, echoed.len()),
                                 "finish_reason": finish.reason });
            Written::local_whole(&object(choice, Some(usage_json(&finish))), &finished)
        }
        LocalEvents::Stream(events) => {
            let chunk = move |object: Value| sse::encode_data(&object.to_string());
            let first = (!echoed.is_empty()).then(|| {
                chunk(object(
                    json!({ "text": echoed, "index": 0, "logprobs": null, "finish_reason": null }),
                    None,
                ))
            });
            let mut offset = echoed.len();
            local_stream(first, events, move |event| match event {
                Event::Content { text, token } if !text.is_empty() || token.is_some() => {
                    let logprobs = logprobs(token.as_slice(), offset);
                    offset += text.len();
                    chunk(object(
                        json!({ "text": text, "index": 0, "logprobs": logprobs, "finish_reason": null }),
                        None,
                    ))
                }
                Event::Finished(finished) => {
                    let finish = Finish::of(&finished);
                    let mut out = chunk(object(
                        json!({ "text": "", "index": 0, "logprobs": null, "finish_reason": finish.reason }),
                        None,
                    ))
                    .to_vec();
                    if include_usage {
                        let mut usage = object(json!(null), Some(usage_json(&finish)));
                        usage["choices"] = json!([]);
                        out.extend_from_slice(&chunk(usage));
                    }
                    out.extend_from_slice(&sse::encode_data(sse::DONE));
                    Bytes::from(out)
                }
                Event::Failed(err) => sse::error_event(&ApiError::from(err)),
                _ => Bytes::new(),
            })
        }
    }
}

/// What the client asked of the answer's form.
#[derive(Debug, Clone, Copy)]
struct Asked {
    include_usage: bool,
    logprobs: bool,
    top_logprobs: usize,
}

impl Asked {
    fn of(request: &ChatRequest) -> Asked {
        Asked {
            include_usage: request.include_usage,
            logprobs: request.sampling.logprobs,
            top_logprobs: request.sampling.top_logprobs.unwrap_or(0) as usize,
        }
    }
}

fn write_local(answer: LocalAnswer, asked: Asked) -> Written {
    let LocalAnswer {
        model,
        vocabulary,
        events,
    } = answer;
    let completion = Completion::new(&model);
    match events {
        LocalEvents::Whole { events, finished } => {
            let mut reasoning = String::new();
            let mut content = String::new();
            let mut tokens = Vec::new();
            let mut calls: Vec<ToolCall> = Vec::new();
            for event in events {
                match event {
                    Event::Reasoning { text, .. } => reasoning.push_str(&text),
                    Event::Content { text, token } => {
                        content.push_str(&text);
                        tokens.extend(token);
                    }
                    Event::ToolCall { id, name, .. } => calls.push(ToolCall {
                        id,
                        name,
                        arguments: String::new(),
                    }),
                    Event::ToolArguments { index, text, .. } => {
                        if let Some(call) = calls.get_mut(index) {
                            call.arguments.push_str(&text);
                        }
                    }
                    Event::Finished(_) | Event::Failed(_) => {}
                }
            }
            let logprobs = asked
                .logprobs
                .then(|| logprobs_json(&tokens, asked.top_logprobs, |id| vocabulary.token_bytes(id)));
            let reasoning = (finished.reasoning_tokens > 0).then(|| reasoning.trim());
            let body = completion.whole(&content, reasoning, &calls, logprobs, Finish::of(&finished));
            Written::local_whole(&body, &finished)
        }
        LocalEvents::Stream(events) => {
            let role = completion.role_event();
            local_stream(Some(role), events, move |event| match event {
                Event::Reasoning { text, .. } if !text.is_empty() => completion.reasoning_event(&text),
                Event::Reasoning { .. } => Bytes::new(),
                Event::Content { text, token } => {
                    let logprobs = match (&token, asked.logprobs) {
                        (Some(token), true) => {
                            Some(logprobs_json(std::slice::from_ref(token), asked.top_logprobs, |id| {
                                vocabulary.token_bytes(id)
                            }))
                        }
                        _ => None,
                    };
                    if text.is_empty() && logprobs.is_none() {
                        Bytes::new()
                    } else {
                        completion.content_event(&text, logprobs)
                    }
                }
                Event::ToolCall { index, id, name, .. } => completion.tool_call_event(index, &id, &name),
                Event::ToolArguments { index, text, .. } if !text.is_empty() => {
                    completion.tool_arguments_event(index, &text)
                }
                Event::ToolArguments { .. } => Bytes::new(),
                Event::Finished(finished) => completion.finish_events(Finish::of(&finished), asked.include_usage),
                Event::Failed(err) => sse::error_event(&ApiError::from(err)),
            })
        }
    }
}

/// One answer's identity, the same in every object written for it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A tool call of a whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments object's text.
    pub arguments: String,
}

/// How a finished answer ended and what it used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finish {
    /// OpenAI's `finish_reason`: `stop`, `length` or `tool_calls`.
    pub reason: &'static str,
    pub usage: Usage,
    /// Of `usage.completion_tokens`, those spent reasoning.
    pub reasoning_tokens: u64,
    /// Of `usage.prompt_tokens`, those served from cached state.
    pub cached_tokens: u64,
}

impl Finish {
    /// How a local answer's finish is written.
    fn of(finished: &Finished) -> Finish {
        let reason = match finished.finish_reason.as_openai() {
            "stop" if finished.tool_calls > 0 => "tool_calls",
            reason => reason,
        };
        Finish {
            reason,
            usage: finished.usage,
            reasoning_tokens: finished.reasoning_tokens,
            cached_tokens: finished.cached_tokens,
        }
    }
}

impl Completion {
    /// A new answer from `model`, with a fresh id, created now.
    pub fn new(model: &str) -> Completion {
        Completion {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: model.to_string(),
        }
    }

    /// The whole `chat.completion`: one choice, its message (with
    /// `reasoning_content` when the answer reasoned, and its tool calls, when
    /// it made some: then its content is null unless it wrote text too),
    /// log-probabilities when asked for, and the usage.
    pub fn whole(
        &self,
        content: &str,
        reasoning: Option<&str>,
        calls: &[ToolCall],
        logprobs: Option<Value>,
        finish: Finish,
    ) -> Value {
        let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
        if let Some(reasoning) = reasoning {
            message["reasoning_content"] = Value::String(reasoning.to_string());
        }
        if !calls.is_empty() {
            let trimmed = content.trim();
            message["content"] = if trimmed.is_empty() {
                Value::Null
            } else {
                Value::String(trimmed.to_string())
            };
            message["tool_calls"] = calls
                .iter()
                .map(|call| {
                    json!({ "id": call.id, "type": "function",
                            "function": { "name": call.name, "arguments": call.arguments } })
                })
                .collect();
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish.reason,
            }],
            "usage": usage_json(&finish),
        })
    }

    /// The first event of a stream: the assistant's role.
    pub fn role_event(&self) -> Bytes {
        self.chunk(json!({ "role": "assistant", "content": "" }), None, None)
    }

    /// A piece of reasoning.
    pub fn reasoning_event(&self, text: &str) -> Bytes {
        self.chunk(json!({ "reasoning_content": text }), None, None)
    }

    /// A piece of content, with its tokens' log-probabilities when asked for.
    pub fn content_event(&self, text: &str, logprobs: Option<Value>) -> Bytes {
        self.chunk(json!({ "content": text }), logprobs, None)
    }

    /// A tool call opens: its index, id and function name (arguments follow).
    pub fn tool_call_event(&self, index: usize, id: &str, name: &str) -> Bytes {
        let call = json!({ "index": index, "id": id, "type": "function",
                           "function": { "name": name, "arguments": "" } });
        self.chunk(json!({ "tool_calls": [call] }), None, None)
    }

    /// More of a tool call's arguments.
    pub fn tool_arguments_event(&self, index: usize, text: &str) -> Bytes {
        let call = json!({ "index": index, "function": { "arguments": text } });
        self.chunk(json!({ "tool_calls": [call] }), None, None)
    }

    /// The end of a stream: the chunk with the finish reason, the usage chunk
    /// when the client asked for it (`stream_options.include_usage`), and
    /// `[DONE]`.
    pub fn finish_events(&self, finish: Finish, include_usage: bool) -> Bytes {
        let mut out = self.chunk(json!({}), None, Some(finish.reason)).to_vec();
        if include_usage {
            let usage = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(&finish),
            });
            out.extend_from_slice(&sse::encode_data(&usage.to_string()));
        }
        out.extend_from_slice(&sse::encode_data(sse::DONE));
        Bytes::from(out)
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
}

fn usage_json(finish: &Finish) -> Value {
    let usage = finish.usage;
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": finish.cached_tokens },
        "completion_tokens_details": { "reasoning_tokens": finish.reasoning_tokens },
    })
}

/// OpenAI's `logprobs` object for some tokens, each with up to `top_logprobs`
/// alternatives; `token_bytes` gives a token id's bytes. A token may hold part
/// of a UTF-8 character: `bytes` carries it exactly, `token` shows it as text
/// (with U+FFFD where it is partial), as OpenAI does.
pub fn logprobs_json<'t>(tokens: &[SampledToken], top_logprobs: usize, token_bytes: impl Fn(u32) -> &'t [u8]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let bytes = token_bytes(id);
        json!({ "token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = Value::Array(t.top.iter().take(top_logprobs).map(|&(id, lp)| entry(id, lp)).collect());
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_engine::generate::FinishReason;

    use super::*;
    use crate::outcome::BackendError;
    use crate::reply::TokenBytes;

    fn completion() -> Completion {
        Completion {
            id: "chatcmpl-1".into(),
            created: 1_700_000_000,
            model: "smollm2".into(),
        }
    }

    fn finish(reason: &'static str) -> Finish {
        Finish {
            reason,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 7,
                seconds: 0,
            },
            reasoning_tokens: 3,
            cached_tokens: 5,
        }
    }

    /// The JSON of each `data:` event in `bytes`, `[DONE]` as a string.
    fn sse_events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}"));
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string()))
            })
            .collect()
    }

    #[test]
    fn a_whole_answer_is_a_chat_completion_with_its_usage() {
        let body = completion().whole("Paris.", Some("The capital..."), &[], None, finish("stop"));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(
            (&body["id"], &body["created"], &body["model"]),
            (&json!("chatcmpl-1"), &json!(1_700_000_000), &json!("smollm2"))
        );
        let choice = &body["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(choice["logprobs"], Value::Null);
        assert_eq!(
            choice["message"],
            json!({ "role": "assistant", "content": "Paris.", "refusal": null, "reasoning_content": "The capital..." })
        );
        assert_eq!(
            body["usage"],
            json!({ "prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                    "prompt_tokens_details": { "cached_tokens": 5 },
                    "completion_tokens_details": { "reasoning_tokens": 3 } })
        );
        // No reasoning, no `reasoning_content`; a cut answer says `length`.
        let body = completion().whole("Par", None, &[], None, finish("length"));
        assert!(body["choices"][0]["message"].get("reasoning_content").is_none());
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn a_stream_is_role_pieces_finish_usage_and_done() {
        let c = completion();
        let mut stream = Vec::new();
        for bytes in [
            c.role_event(),
            c.reasoning_event("Think."),
            c.content_event("Par", None),
            c.content_event("is.", None),
            c.finish_events(finish("stop"), true),
        ] {
            stream.extend_from_slice(&bytes);
        }
        let events = sse_events(&stream);
        assert_eq!(events.len(), 7, "{events:?}");
        for chunk in &events[..6] {
            assert_eq!(
                (&chunk["object"], &chunk["id"]),
                (&json!("chat.completion.chunk"), &json!("chatcmpl-1"))
            );
        }
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({ "role": "assistant", "content": "" })
        );
        assert_eq!(
            events[1]["choices"][0]["delta"],
            json!({ "reasoning_content": "Think." })
        );
        let text: String = events[2..4]
            .iter()
            .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Paris.");
        assert!(events[..4].iter().all(|e| e["choices"][0]["finish_reason"].is_null()));
        assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[4]["choices"][0]["delta"], json!({}));
        assert_eq!(events[5]["choices"], json!([]));
        assert_eq!(events[5]["usage"]["total_tokens"], 19);
        assert_eq!(events[6], "[DONE]");
        // Without include_usage: the finish chunk, then [DONE].
        let end = sse_events(&c.finish_events(finish("length"), false));
        assert_eq!(end.len(), 2);
        assert_eq!(end[0]["choices"][0]["finish_reason"], "length");
        assert!(end[0].get("usage").is_none());
        assert_eq!(end[1], "[DONE]");
    }

    #[test]
    fn log_probabilities_show_each_token_and_its_alternatives() {
        let vocabulary: [&[u8]; 3] = [b"Par", b"is", &[0xE2, 0x82]];
        let tokens = [
            SampledToken {
                id: 0,
                logprob: -0.1,
                top: vec![(0, -0.1), (1, -2.5), (2, -3.0)],
            },
            SampledToken {
                id: 2,
                logprob: -1.5,
                top: vec![(2, -1.5)],
            },
        ];
        let json = logprobs_json(&tokens, 2, |id| vocabulary[id as usize]);
        assert_eq!(json["refusal"], Value::Null);
        let content = json["content"].as_array().unwrap();
        assert_eq!(content[0]["token"], "Par");
        assert_eq!(content[0]["bytes"], json!([80, 97, 114]));
        assert_eq!(
            content[0]["top_logprobs"].as_array().unwrap().len(),
            2,
            "at most top_logprobs"
        );
        assert_eq!(content[0]["top_logprobs"][1]["token"], "is");
        // Part of a character: the bytes exactly, the text with U+FFFD.
        assert_eq!(content[1]["bytes"], json!([0xE2, 0x82]));
        assert_eq!(content[1]["token"], "\u{FFFD}");
        assert!((content[1]["logprob"].as_f64().unwrap() + 1.5).abs() < 1e-6);
    }

    /// A vocabulary of three tokens: "Par", "is", and half of a character.
    struct Vocabulary;

    impl TokenBytes for Vocabulary {
        fn token_bytes(&self, id: u32) -> &[u8] {
            [b"Par".as_slice(), b"is.", &[0xE2, 0x82]]
                .get(id as usize)
                .copied()
                .unwrap_or_default()
        }
    }

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    fn token(id: u32, logprob: f32) -> Option<SampledToken> {
        Some(SampledToken {
            id,
            logprob,
            top: vec![(id, logprob), (2, -4.0)],
        })
    }

    fn finished(finish_reason: FinishReason) -> Finished {
        Finished {
            finish_reason,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 7,
                seconds: 0,
            },
            reasoning_tokens: 3,
            cached_tokens: 0,
            client_limited: false,
            tool_calls: 0,
        }
    }

    /// A reasoned answer, "Paris.", in events; `end` ends it.
    fn events(end: Event) -> Vec<Event> {
        vec![
            Event::Reasoning {
                text: " Capital of France. ".into(),
                token: token(2, -0.5),
            },
            Event::Content {
                text: "Par".into(),
                token: token(0, -0.1),
            },
            Event::Content {
                text: "is.".into(),
                token: token(1, -0.2),
            },
            end,
        ]
    }

    fn local(events: LocalEvents) -> ChatReply {
        ChatReply::Local(LocalAnswer {
            model: "smollm2".into(),
            vocabulary: Arc::new(Vocabulary),
            events,
        })
    }

    async fn streamed(written: Written) -> (Vec<Value>, UsageCell) {
        let Written::Stream { events, usage, .. } = written else {
            panic!("not a stream")
        };
        let bytes: Vec<u8> = events.collect::<Vec<Bytes>>().await.concat();
        (sse_events(&bytes), usage)
    }

    #[test]
    fn a_whole_local_answer_is_written_with_reasoning_logprobs_usage_and_finish() {
        let mut answer = events(Event::Finished(finished(FinishReason::Length)));
        let Some(Event::Finished(end)) = answer.pop() else {
            unreachable!()
        };
        let asked = request(
            json!({ "model": "local", "messages": [{ "role": "user", "content": "Capital?" }],
                                    "logprobs": true, "top_logprobs": 1 }),
        );
        let written = write(
            local(LocalEvents::Whole {
                events: answer,
                finished: end,
            }),
            &asked,
        );
        let Written::Whole {
            body, usage, status, ..
        } = written
        else {
            panic!("not whole")
        };
        assert_eq!(status, StatusCode::OK);
        assert_eq!(usage, Some(end.usage));
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "smollm2");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(choice["message"]["content"], "Paris.");
        assert_eq!(choice["message"]["reasoning_content"], "Capital of France.");
        // Log-probabilities of the content's tokens only, with the one alternative asked for.
        let logprobs = choice["logprobs"]["content"].as_array().unwrap();
        assert_eq!(logprobs.len(), 2);
        assert_eq!(
            (&logprobs[0]["token"], &logprobs[1]["token"]),
            (&json!("Par"), &json!("is."))
        );
        assert_eq!(logprobs[1]["top_logprobs"].as_array().unwrap().len(), 1);
        assert_eq!(body["usage"]["total_tokens"], 19);
        assert_eq!(body["usage"]["completion_tokens_details"]["reasoning_tokens"], 3);
    }

    #[test]
    fn an_answer_that_did_not_reason_has_no_reasoning_content_nor_logprobs_unasked() {
        let end = Finished {
            reasoning_tokens: 0,
            ..finished(FinishReason::Stop)
        };
        let content = vec![Event::Content {
            text: "Paris.".into(),
            token: token(0, -0.1),
        }];
        let asked = request(json!({ "model": "local", "messages": [{ "role": "user", "content": "Capital?" }] }));
        let Written::Whole { body, .. } = write(
            local(LocalEvents::Whole {
                events: content,
                finished: end,
            }),
            &asked,
        ) else {
            panic!("not whole")
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body["choices"][0]["message"].get("reasoning_content").is_none(),
            "{body}"
        );
        assert_eq!(body["choices"][0]["logprobs"], Value::Null);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }

    #[tokio::test]
    async fn a_streamed_local_answer_is_role_reasoning_content_finish_usage_and_done() {
        let asked = request(
            json!({ "model": "local", "messages": [{ "role": "user", "content": "Capital?" }],
                                    "stream": true, "stream_options": { "include_usage": true }, "logprobs": true }),
        );
        let stream = futures_util::stream::iter(events(Event::Finished(finished(FinishReason::Stop)))).boxed();
        let (events, usage) = streamed(write(local(LocalEvents::Stream(stream)), &asked)).await;
        assert_eq!(events.len(), 7, "{events:?}");
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({ "role": "assistant", "content": "" })
        );
        assert_eq!(
            events[1]["choices"][0]["delta"],
            json!({ "reasoning_content": " Capital of France. " })
        );
        assert_eq!(events[2]["choices"][0]["delta"], json!({ "content": "Par" }));
        assert_eq!(events[2]["choices"][0]["logprobs"]["content"][0]["token"], "Par");
        assert_eq!(events[3]["choices"][0]["delta"], json!({ "content": "is." }));
        assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[5]["usage"]["prompt_tokens"], 12);
        assert_eq!(events[6], "[DONE]");
        // One identity for the whole stream.
        assert!(
            events[..6]
                .iter()
                .all(|e| e["id"] == events[0]["id"] && e["model"] == "smollm2")
        );
        assert_eq!(*usage.lock().unwrap(), Some(finished(FinishReason::Stop).usage));
    }

    #[tokio::test]
    async fn a_streamed_local_answer_without_include_usage_ends_with_finish_and_done() {
        let asked = request(
            json!({ "model": "local", "messages": [{ "role": "user", "content": "Capital?" }],
                                    "stream": true }),
        );
        let stream = futures_util::stream::iter(events(Event::Finished(finished(FinishReason::Length)))).boxed();
        let (events, usage) = streamed(write(local(LocalEvents::Stream(stream)), &asked)).await;
        assert_eq!(events.len(), 6, "{events:?}");
        assert!(events[2]["choices"][0]["logprobs"].is_null(), "not asked for");
        assert_eq!(events[4]["choices"][0]["finish_reason"], "length");
        assert!(events[4].get("usage").is_none());
        assert_eq!(events[5], "[DONE]");
        // The record still learns the usage the client did not ask to see.
        assert_eq!(usage.lock().unwrap().map(|u| u.completion_tokens), Some(7));
    }

    #[tokio::test]
    async fn a_local_stream_that_breaks_off_ends_with_the_error_and_nothing_after() {
        let asked = request(
            json!({ "model": "local", "messages": [{ "role": "user", "content": "Capital?" }],
                                    "stream": true }),
        );
        let broken = BackendError::LocalTimeout {
            backend: "smollm2".into(),
            deadline_ms: 500,
            detail: "generated 2 tokens".into(),
        };
        let mut answer = events(Event::Failed(broken));
        answer.push(Event::Finished(finished(FinishReason::Stop)));
        let stream = futures_util::stream::iter(answer).boxed();
        let (events, usage) = streamed(write(local(LocalEvents::Stream(stream)), &asked)).await;
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events[4]["error"]["code"], "local_timeout");
        assert_eq!(events[4]["error"]["type"], "server_error");
        assert_eq!(*usage.lock().unwrap(), None);
    }

    #[tokio::test]
    async fn a_relayed_answer_keeps_its_bytes_and_a_broken_relay_ends_with_the_error() {
        let asked = request(json!({ "model": "cloud", "messages": [{ "role": "user", "content": "Hi" }] }));
        let upstream = Bytes::from_static(b"{\"choices\":[],  \"id\":\"x\"}");
        let Written::Whole { body, .. } = write(
            ChatReply::Relayed(Relayed::Complete {
                body: upstream.clone(),
                usage: None,
                headers: HeaderMap::new(),
                status: StatusCode::OK,
            }),
            &asked,
        ) else {
            panic!("not whole")
        };
        assert_eq!(body, upstream);
        let chunk = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        let relayed = futures_util::stream::iter([
            Ok(chunk.clone()),
            Err(BackendError::UpstreamStalled {
                backend: "cloud".into(),
                idle_ms: 1000,
            }),
        ])
        .boxed();
        let Written::Stream { events, .. } = write(
            ChatReply::Relayed(Relayed::Stream {
                events: relayed,
                headers: HeaderMap::new(),
                usage: UsageCell::default(),
            }),
            &asked,
        ) else {
            panic!("not a stream")
        };
        let out: Vec<Bytes> = events.collect().await;
        assert_eq!(out[0], chunk, "relayed byte for byte");
        let error = sse_events(&out[1]);
        assert_eq!(error[0]["error"]["code"], "upstream_timeout");
    }
}
