//! A loopback stand-in for a paid cloud LLM provider, speaking OpenAI's wire
//! format: chat completions, SSE streams with `include_usage` semantics, and the
//! provider's failures (429 with Retry-After, 500, a non-JSON 502, a slow first
//! byte, a stream cut mid-way).
//!
//! Behaviour is chosen by the upstream `model` name, the way a real provider
//! serves several models; a policy maps a Switchyard backend to each:
//!
//! | model             | behaviour                                                      |
//! |-------------------|----------------------------------------------------------------|
//! | `echo` (any other)| answers "Echo: \<last user text\>", streamed word by word      |
//! | `rate-limited`    | 429, `Retry-After: 7`, OpenAI error body                       |
//! | `server-error`    | 500, OpenAI error body                                         |
//! | `html-error`      | 502 with an HTML body, as a load balancer sends                |
//! | `slow-first-byte` | waits 3 s before answering                                     |
//! | `cut-stream`      | two content chunks, then the connection is dropped             |
//! | `slow-stream`     | one chunk every 100 ms for a minute (for cancellation tests)   |
//! | `fail-N-then-echo`| 500 for its first N calls, then as `echo`                      |
//! | `busy-N-then-echo`| 429 with `Retry-After: 1` for its first N calls, then `echo`   |
//! | `flaky-P`         | every (100/P)th call 503s (P% of calls), the others as `echo`  |
//! | `switchable`      | 503 while [`CloudDouble::set_outage`] is on; while [`CloudDouble::set_stall`] is on, holds its answer until it is off; else as `echo` |
//! | `auth-echo-key`   | 401 whose OpenAI error message quotes the key it was sent, whole |
//! | `auth-masked-key` | 401 as OpenAI sends it: the key masked but for its first 8 and last 4 characters |
//! | `key-quoting-400` | 400 whose OpenAI error message quotes the key it was sent      |
//! | `headers-dump-400`| 400 with a plain-text body dumping the request's headers, as some proxies do |
//! | `hello-world`     | 200 `{"hello":"world"}`; streamed, one such event, then `[DONE]` |
//! | `stall-after-headers` | 200 headers and half a completion (streamed: nothing), then silence for a minute |
//! | `cut-before-first-event` | streamed: 200 headers, then the connection is dropped   |
//! | `broken-first-event` | streamed: `data: {broken json` first, then as `echo`        |
//! | `error-first-event` | streamed: an in-band OpenAI error event first, then as `echo` |
//! | `broken-mid-stream` | streamed: the role chunk and one content chunk, then `data: {broken json`, then the rest |
//!
//! Other endpoints, for the pass-through: `POST /v1/files` (multipart, as
//! OpenAI takes it: the file's bytes are counted, and kept when under 1 MiB)
//! and `GET /v1/files/{id}/content`, `POST /v1/audio/transcriptions`
//! (multipart: "heard N bytes of NAME with MODEL"), `POST /v1/moderations`
//! (JSON), and `GET /v1/slow-download` (a chunk every 50 ms for a minute).
//! Each records its path, key and request id ([`CloudDouble::passed`]).
//!
//! Every request is recorded (headers of interest and JSON body), and streams
//! that end because the other side went away are counted, as are answers
//! held by a stall whose caller went away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::{Multipart, Path};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// What the double saw of one request.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub authorization: Option<String>,
    pub request_id: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct DoubleState {
    pub requests: Mutex<Vec<RecordedRequest>>,
    /// Streams whose consumer went away before the stream ended.
    pub streams_abandoned: AtomicUsize,
    /// Calls per upstream model name.
    pub calls: Mutex<std::collections::HashMap<String, usize>>,
    /// `switchable` fails while this is on.
    pub outage: std::sync::atomic::AtomicBool,
    /// `switchable` holds its answer while this is on.
    pub stall: std::sync::atomic::AtomicBool,
    /// Answers held by `stall` whose caller went away before they were sent.
    pub stalls_abandoned: AtomicUsize,
    /// Calls to other endpoints.
    pub passed: Mutex<Vec<Passed>>,
    /// Files uploaded.
    pub files: Mutex<Vec<StoredFile>>,
}

/// A call to an endpoint other than chat.
#[derive(Debug, Clone)]
pub struct Passed {
    pub path: String,
    pub authorization: Option<String>,
    pub request_id: Option<String>,
}

/// An uploaded file: its size, and its bytes when under 1 MiB.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub id: String,
    pub name: String,
    pub purpose: String,
    pub size: usize,
    pub bytes: Option<Bytes>,
}

pub fn router(state: Arc<DoubleState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(legacy_completion))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/files", post(upload_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/audio/transcriptions", post(transcribe))
        .route("/v1/moderations", post(moderate))
        .route("/v1/slow-download", get(slow_download))
        // OpenAI takes files up to 512 MB; axum's default limit is 2 MB.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves the double on a tokio runtime the caller provides.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<DoubleState>) {
    axum::serve(listener, router(state)).await.expect("cloud double serves");
}

async fn chat(State(state): State<Arc<DoubleState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    state.requests.lock().unwrap().push(RecordedRequest {
        authorization: text("authorization"),
        request_id: text("x-request-id"),
        body: body.clone(),
    });
    let model = body["model"].as_str().unwrap_or("echo").to_string();
    let call = {
        let mut calls = state.calls.lock().unwrap();
        let count = calls.entry(model.clone()).or_default();
        *count += 1;
        *count
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
    let numbered = |prefix: &str, suffix: &str| {
        model
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .and_then(|n| n.parse::<usize>().ok())
    };
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
        )
    };
    if numbered("fail-", "-then-echo").is_some_and(|n| call <= n) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        );
    }
    if numbered("busy-", "-then-echo").is_some_and(|n| call <= n) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests. Please try again in 1s.",
            "requests",
            Some("rate_limit_exceeded"),
        );
        response.headers_mut().insert(header::RETRY_AFTER, "1".parse().unwrap());
        return response;
    }
    if numbered("flaky-", "").is_some_and(|p| p > 0 && call % (100 / p).max(1) == 0) {
        return unavailable();
    }
    if model == "switchable" && state.outage.load(Ordering::SeqCst) {
        return unavailable();
    }
    if model == "switchable" && state.stall.load(Ordering::SeqCst) {
        // Dropped with this handler when the caller goes away mid-stall.
        let mut guard = StallGuard {
            state: state.clone(),
            released: false,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while state.stall.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        guard.released = true;
    }
    let sent_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_string())
        .unwrap_or_default();
    let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);

    match model.as_str() {
        "rate-limited" => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests. Please try again in 7s.",
                "requests",
                Some("rate_limit_exceeded"),
            );
            response.headers_mut().insert(header::RETRY_AFTER, "7".parse().unwrap());
            response
                .headers_mut()
                .insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
            return response;
        }
        "server-error" => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            );
        }
        "html-error" => {
            return (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response();
        }
        "slow-first-byte" => tokio::time::sleep(Duration::from_secs(3)).await,
        "auth-echo-key" => {
            return error(
                StatusCode::UNAUTHORIZED,
                &format!("Incorrect API key provided: {sent_key}."),
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
        "auth-masked-key" => {
            // OpenAI's own wording and masking.
            let chars: Vec<char> = sent_key.chars().collect();
            let masked = if chars.len() > 12 {
                let head: String = chars[..8].iter().collect();
                let tail: String = chars[chars.len() - 4..].iter().collect();
                format!("{head}{}{tail}", "*".repeat(chars.len() - 12))
            } else {
                "*".repeat(chars.len())
            };
            return error(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
                ),
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
        "key-quoting-400" => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": {
                    "message": format!("Invalid 'api_key': '{sent_key}' cannot be used with organization 'org-double'."),
                    "type": "invalid_request_error",
                    "param": "api_key",
                    "code": "invalid_value",
                } })),
            )
                .into_response();
        }
        "headers-dump-400" => {
            let mut dump = String::from("400 Bad Request\nThe request headers were:\n");
            for (name, value) in &headers {
                dump.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], dump).into_response();
        }
        "hello-world" if !stream => {
            return (StatusCode::OK, axum::Json(json!({ "hello": "world" }))).into_response();
        }
        "hello-world" => {
            let events: [&'static [u8]; 2] = [b"data: {\"hello\":\"world\"}\n\n", b"data: [DONE]\n\n"];
            return event_stream(futures_util::stream::iter(events.map(|e| Ok(Bytes::from_static(e)))));
        }
        "stall-after-headers" => {
            let first = if stream {
                Bytes::new()
            } else {
                Bytes::from_static(b"{\"id\":\"chatcmpl-double-1\",\"object\":\"chat.completion\",")
            };
            let body = futures_util::stream::once(async { Ok(first) }).chain(futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err(std::io::Error::other("stalled for a minute"))
            }));
            let content_type = if stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type)],
                Body::from_stream(body),
            )
                .into_response();
        }
        "cut-before-first-event" => {
            return event_stream(futures_util::stream::once(async {
                // Let the headers reach the other side, then hang up.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset"))
            }));
        }
        _ => {}
    }

    let prompt_tokens = count_words(&body["messages"]);
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let reply = if model == "judge" {
        judged(&last_user).to_string()
    } else {
        format!("Echo: {last_user}")
    };
    let completion_tokens = reply.split_whitespace().count() as u64;
    let usage = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens });

    if !stream {
        let completion = json!({
            "id": "chatcmpl-double-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "system_fingerprint": "fp_double",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": reply, "refusal": null },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": usage,
        });
        if model == "cut-stream" {
            // Promise more bytes than are sent, then hang up.
            let text = completion.to_string();
            let half = Bytes::from(text[..text.len() / 2].to_string());
            let body =
                futures_util::stream::iter([Ok::<Bytes, std::io::Error>(half), Err(std::io::Error::other("cut"))]);
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(body),
            )
                .into_response();
        }
        return (StatusCode::OK, axum::Json(completion)).into_response();
    }

    let chunk = |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": "chatcmpl-double-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "system_fingerprint": "fp_double",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    let mut events = vec![chunk(
        json!({ "role": "assistant", "content": "", "refusal": null }),
        Value::Null,
    )];
    let words: Vec<String> = reply.split_inclusive(' ').map(str::to_string).collect();
    for word in &words {
        events.push(chunk(json!({ "content": word }), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let last = json!({
            "id": "chatcmpl-double-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "system_fingerprint": "fp_double", "choices": [], "usage": usage,
        });
        events.push(Bytes::from(format!("data: {last}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let broken = || Bytes::from_static(b"data: {broken json\n\n");
    match model.as_str() {
        "broken-first-event" => events.insert(0, broken()),
        "error-first-event" => events.insert(
            0,
            Bytes::from(format!(
                "data: {}\n\n",
                json!({ "error": { "message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null } })
            )),
        ),
        "broken-mid-stream" => events.insert(2, broken()),
        _ => {}
    }

    let guard = AbandonGuard {
        state: state.clone(),
        finished: false,
    };
    let body: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match model.as_str() {
        "cut-stream" => futures_util::stream::iter(events.into_iter().take(3).map(Ok))
            .chain(futures_util::stream::once(async {
                // Let the first chunks reach the other side, then hang up.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset"))
            }))
            .boxed(),
        "slow-stream" => {
            let ticks = futures_util::stream::unfold((0u32, guard), |(i, mut guard)| async move {
                if i >= 600 {
                    guard.mark_finished();
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let event = format!(
                    "data: {}\n\n",
                    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tick "}, "finish_reason": null}]})
                );
                Some((Ok(Bytes::from(event)), (i + 1, guard)))
            });
            ticks.boxed()
        }
        _ => {
            let mut guard = guard;
            guard.mark_finished();
            futures_util::stream::iter(events.into_iter().map(Ok)).boxed()
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

fn event_stream(events: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

/// Counts a `stall` whose caller went away before the answer was released.
struct StallGuard {
    state: Arc<DoubleState>,
    released: bool,
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        if !self.released {
            self.state.stalls_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct AbandonGuard {
    state: Arc<DoubleState>,
    finished: bool,
}

impl AbandonGuard {
    fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.streams_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The `judge` model's verdict on an audit's comparison ("Request: ...
/// Reference answer: ... Candidate answer: ..."): `Yes.` when the candidate
/// holds every word of the reference, else `No.`.
fn judged(prompt: &str) -> &'static str {
    let words = |text: &str| -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (Some((_, rest)), true) = (
        prompt.split_once("Reference answer:\n"),
        prompt.starts_with("Request:\n"),
    ) else {
        return "I cannot tell.";
    };
    let Some((reference, candidate)) = rest.split_once("\n\nCandidate answer:\n") else {
        return "I cannot tell.";
    };
    let candidate = words(candidate);
    if words(reference).iter().all(|w| candidate.contains(w)) {
        "Yes."
    } else {
        "No."
    }
}

fn count_words(messages: &Value) -> u64 {
    messages
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.split_whitespace().count() as u64)
                .sum()
        })
        .unwrap_or(0)
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })),
    )
        .into_response()
}

/// A legacy text completion: "Echo: <prompt>", whole or streamed word by
/// word (with the usage chunk when `stream_options.include_usage` asks).
async fn legacy_completion(State(state): State<Arc<DoubleState>>, headers: HeaderMap, body: Bytes) -> Response {
    record_passed(&state, "/v1/completions", &headers);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    let Some(prompt) = body["prompt"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'prompt'.",
            "invalid_request_error",
            None,
        );
    };
    let text = format!(" Echo: {prompt}");
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    let usage = json!({ "prompt_tokens": prompt.split_whitespace().count(), "completion_tokens": words.len(),
                        "total_tokens": prompt.split_whitespace().count() + words.len() });
    let object = |choices: Value| {
        json!({ "id": "cmpl-double", "object": "text_completion", "created": 1_700_000_000,
                                          "model": body["model"], "choices": choices })
    };
    if !body["stream"].as_bool().unwrap_or(false) {
        let mut whole = object(json!([{ "text": text, "index": 0, "logprobs": null, "finish_reason": "stop" }]));
        whole["usage"] = usage;
        return axum::Json(whole).into_response();
    }
    let mut events: Vec<String> = words
        .iter()
        .map(|w| object(json!([{ "text": w, "index": 0, "logprobs": null, "finish_reason": null }])).to_string())
        .collect();
    events.push(object(json!([{ "text": "", "index": 0, "logprobs": null, "finish_reason": "stop" }])).to_string());
    if body["stream_options"]["include_usage"].as_bool().unwrap_or(false) {
        let mut last = object(json!([]));
        last["usage"] = usage;
        events.push(last.to_string());
    }
    events.push("[DONE]".into());
    let sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
}

/// The Responses API: "Echo: <input>" (the input's last user text) as one
/// message, whole or as the event stream (created, the item's events, the
/// text in word deltas, completed with the usage).
async fn responses(State(state): State<Arc<DoubleState>>, headers: HeaderMap, body: Bytes) -> Response {
    record_passed(&state, "/v1/responses", &headers);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    let input = match &body["input"] {
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|i| match &i["content"] {
                Value::String(text) => text.clone(),
                parts => parts[0]["text"].as_str().unwrap_or("").to_string(),
            })
            .unwrap_or_default(),
        _ => return missing("input"),
    };
    let text = format!("Echo: {input}");
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    let message = |text: &str, status: &str| {
        json!({ "type": "message", "id": "msg_double", "status": status, "role": "assistant",
                                                 "content": [{ "type": "output_text", "text": text, "annotations": [] }] })
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": "resp_double", "object": "response", "created_at": 1_700_000_000, "status": status,
            "model": body["model"], "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "error": null, "incomplete_details": null, "usage": usage,
        })
    };
    let usage = json!({ "input_tokens": input.split_whitespace().count(), "output_tokens": words.len(),
                        "total_tokens": input.split_whitespace().count() + words.len(),
                        "input_tokens_details": { "cached_tokens": 0 }, "output_tokens_details": { "reasoning_tokens": 0 } });
    if !body["stream"].as_bool().unwrap_or(false) {
        return axum::Json(response("completed", json!([message(&text, "completed")]), usage)).into_response();
    }
    let mut events = vec![
        json!({ "type": "response.created", "response": response("in_progress", json!([]), Value::Null) }),
        json!({ "type": "response.output_item.added", "output_index": 0, "item": message("", "in_progress") }),
        json!({ "type": "response.content_part.added", "item_id": "msg_double", "output_index": 0, "content_index": 0,
                "part": { "type": "output_text", "text": "", "annotations": [] } }),
    ];
    events.extend(words.iter().map(|w| {
        json!({ "type": "response.output_text.delta", "item_id": "msg_double",
        "output_index": 0, "content_index": 0, "delta": w, "logprobs": [] })
    }));
    events.push(
        json!({ "type": "response.output_text.done", "item_id": "msg_double", "output_index": 0,
                        "content_index": 0, "text": text, "logprobs": [] }),
    );
    events.push(json!({ "type": "response.output_item.done", "output_index": 0, "item": message(&text, "completed") }));
    events.push(json!({ "type": "response.completed", "response": response("completed", json!([message(&text, "completed")]), usage) }));
    let sse: String = events
        .iter_mut()
        .enumerate()
        .map(|(i, event)| {
            event["sequence_number"] = json!(i);
            format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap())
        })
        .collect();
    ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
}

/// Embeddings: for each input, 4 numbers from its length (a string's
/// characters), float or base64 as asked.
async fn embeddings(State(state): State<Arc<DoubleState>>, headers: HeaderMap, body: Bytes) -> Response {
    record_passed(&state, "/v1/embeddings", &headers);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    let inputs: Vec<usize> = match &body["input"] {
        Value::String(text) => vec![text.chars().count()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or(1, |t| t.chars().count()))
            .collect(),
        _ => return missing("input"),
    };
    let base64 = body["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, &n)| {
            let vector = [n as f32, 1.0, 0.5, -0.25];
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens: usize = inputs.iter().sum();
    axum::Json(json!({ "object": "list", "data": data, "model": body["model"],
                       "usage": { "prompt_tokens": tokens, "total_tokens": tokens } }))
    .into_response()
}

/// OpenAI's 400 for a missing parameter.
fn missing(param: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{param}'."),
        "invalid_request_error",
        None,
    )
}

/// OpenAI's 400 for a body that is not JSON.
fn not_json() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "We could not parse the JSON body of your request.",
        "invalid_request_error",
        None,
    )
}

fn record_passed(state: &DoubleState, path: &str, headers: &HeaderMap) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    state.passed.lock().unwrap().push(Passed {
        path: path.to_string(),
        authorization: text("authorization"),
        request_id: text("x-request-id"),
    });
}

/// The multipart fields of an upload: text fields whole, the `file` field
/// counted chunk by chunk (kept when under 1 MiB) with its file name.
async fn read_upload(
    mut form: Multipart,
) -> Result<(std::collections::HashMap<String, String>, String, usize, Option<Bytes>), Response> {
    let bad = |message: String| error(StatusCode::BAD_REQUEST, &message, "invalid_request_error", None);
    let mut fields = std::collections::HashMap::new();
    let mut file = None;
    while let Some(mut field) = form.next_field().await.map_err(|e| bad(e.to_string()))? {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            let filename = field.file_name().unwrap_or("upload").to_string();
            let (mut size, mut kept) = (0usize, Vec::new());
            while let Some(chunk) = field.chunk().await.map_err(|e| bad(e.to_string()))? {
                size += chunk.len();
                if size <= 1 << 20 {
                    kept.extend_from_slice(&chunk);
                }
            }
            file = Some((filename, size, (size <= 1 << 20).then(|| Bytes::from(kept))));
        } else {
            fields.insert(name, field.text().await.map_err(|e| bad(e.to_string()))?);
        }
    }
    let (filename, size, bytes) = file.ok_or_else(|| bad("Missing required parameter: 'file'.".into()))?;
    Ok((fields, filename, size, bytes))
}

async fn upload_file(State(state): State<Arc<DoubleState>>, headers: HeaderMap, form: Multipart) -> Response {
    record_passed(&state, "/v1/files", &headers);
    let (fields, filename, size, bytes) = match read_upload(form).await {
        Ok(upload) => upload,
        Err(response) => return response,
    };
    let purpose = fields.get("purpose").cloned().unwrap_or_default();
    let mut files = state.files.lock().unwrap();
    let id = format!("file-double{}", files.len() + 1);
    files.push(StoredFile {
        id: id.clone(),
        name: filename.clone(),
        purpose: purpose.clone(),
        size,
        bytes,
    });
    let mut response = axum::Json(json!({
        "id": id, "object": "file", "bytes": size, "created_at": 1_700_000_000,
        "filename": filename, "purpose": purpose, "status": "processed",
    }))
    .into_response();
    response
        .headers_mut()
        .insert("x-ratelimit-remaining-requests", "4999".parse().unwrap());
    response
}

async fn file_content(State(state): State<Arc<DoubleState>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    record_passed(&state, &format!("/v1/files/{id}/content"), &headers);
    let files = state.files.lock().unwrap();
    match files.iter().find(|f| f.id == id).and_then(|f| f.bytes.as_ref()) {
        Some(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes.clone()).into_response(),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("No such File object: {id}"),
            "invalid_request_error",
            None,
        ),
    }
}

async fn transcribe(State(state): State<Arc<DoubleState>>, headers: HeaderMap, form: Multipart) -> Response {
    record_passed(&state, "/v1/audio/transcriptions", &headers);
    match read_upload(form).await {
        Ok((fields, filename, size, _)) => {
            let model = fields.get("model").cloned().unwrap_or_default();
            let text = format!("heard {size} bytes of {filename} with {model}");
            // As OpenAI reports it: whisper by the audio's duration (here as
            // if it were 16 kHz 16-bit mono), the gpt-4o models by tokens.
            let usage = if model.starts_with("whisper") {
                json!({ "type": "duration", "seconds": (size as f64 / 32_000.0).ceil() })
            } else {
                let (audio, words) = (size / 1000, text.split_whitespace().count());
                json!({ "type": "tokens", "input_tokens": audio, "input_token_details": { "text_tokens": 0, "audio_tokens": audio },
                        "output_tokens": words, "total_tokens": audio + words })
            };
            axum::Json(json!({ "text": text, "usage": usage })).into_response()
        }
        Err(response) => response,
    }
}

async fn moderate(State(state): State<Arc<DoubleState>>, headers: HeaderMap, body: Bytes) -> Response {
    record_passed(&state, "/v1/moderations", &headers);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    axum::Json(json!({
        "id": "modr-double", "model": body["model"].as_str().unwrap_or("omni-moderation-latest"),
        "results": [{ "flagged": false, "categories": {}, "category_scores": {} }],
    }))
    .into_response()
}

async fn slow_download(State(state): State<Arc<DoubleState>>, headers: HeaderMap) -> Response {
    record_passed(&state, "/v1/slow-download", &headers);
    let mut guard = AbandonGuard {
        state: state.clone(),
        finished: false,
    };
    let chunks = futures_util::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (n < 1200).then(|| (Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024])), n + 1))
    })
    .chain(futures_util::stream::once(async move {
        guard.mark_finished();
        Ok(Bytes::new())
    }));
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// A running double on its own thread and runtime, for synchronous test code.
pub struct CloudDouble {
    pub addr: SocketAddr,
    pub state: Arc<DoubleState>,
}

impl CloudDouble {
    pub fn start() -> CloudDouble {
        CloudDouble::start_on("127.0.0.1")
    }

    /// Listening on `ip` (an address of this machine) instead of loopback.
    pub fn start_on(ip: &str) -> CloudDouble {
        let state = Arc::new(DoubleState::default());
        let std_listener = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|err| panic!("bind {ip}: {err}"));
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let served = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                serve(listener, served).await;
            });
        });
        CloudDouble { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn streams_abandoned(&self) -> usize {
        self.state.streams_abandoned.load(Ordering::SeqCst)
    }

    /// How many calls an upstream model name has had.
    pub fn calls(&self, model: &str) -> usize {
        self.state.calls.lock().unwrap().get(model).copied().unwrap_or(0)
    }

    /// Turns the `switchable` model's outage on or off.
    pub fn set_outage(&self, on: bool) {
        self.state.outage.store(on, Ordering::SeqCst);
    }

    /// Makes the `switchable` model hold its answers (on) or release them (off).
    pub fn set_stall(&self, on: bool) {
        self.state.stall.store(on, Ordering::SeqCst);
    }

    /// Calls to other endpoints.
    pub fn passed(&self) -> Vec<Passed> {
        self.state.passed.lock().unwrap().clone()
    }

    /// Answers held by a stall whose caller went away.
    pub fn stalls_abandoned(&self) -> usize {
        self.state.stalls_abandoned.load(Ordering::SeqCst)
    }
}
