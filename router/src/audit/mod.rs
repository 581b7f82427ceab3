//! The audit: a team's logged requests replayed through a policy, offline.
//! For each logged request, where the policy would have sent it and why, its
//! tokens, what it cost as logged against what it would cost under the
//! policy, and whether a privacy rule would have kept it on the machine;
//! optionally, the local model's own answer compared with the logged one.
//! [`summary`] turns the rows into the figures a team decides on, and
//! [`report`] into a self-contained page.
//!
//! A log line is one of:
//! - a plain OpenAI request body (chat `messages`, Responses `input`, or a
//!   legacy completion's `prompt`);
//! - a line of an OpenAI batch file (`custom_id`, `method`, `url`, `body`);
//! - a logged call: `request` with any of `response`, `usage`, `latency_ms`,
//!   `cost_usd` and `timestamp` (Unix seconds or RFC 3339), and `url` or
//!   `endpoint` when the request alone does not say which API it is.
//!
//! Labelled routing rows (`labels` with `strong` and `weak`, the format of
//! the routing data) carry their quality, so the audit can trace quality
//! against cost; `category` (or the request's `metadata.category`) groups
//! rows in the report.

pub mod report;
pub mod summary;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::backends::Backend;
use crate::live::Live;
use crate::openai::request::ChatRequest;
use crate::policy::Price;
use crate::reply::Usage;
use crate::routing::difficulty::data;
use crate::routing::features::{Features, content_texts, text_for_scoring};
use crate::routing::sessions::Sessions;
use crate::routing::{Hints, price_of};

/// Fields of a log line that are not the API's: kept out of a plain request
/// body before it is read as one.
const LOG_FIELDS: &[&str] = &[
    "id",
    "custom_id",
    "category",
    "labels",
    "strong",
    "weak",
    "source",
    "label_kind",
    "timestamp",
    "created",
    "latency_ms",
    "cost_usd",
    "usage",
    "response",
];

/// The API a logged request was made to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Responses,
    Completions,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Responses => "responses",
            Endpoint::Completions => "completions",
        }
    }

    /// The endpoint a URL or path names (`/v1/chat/completions`, `responses`, ...).
    fn of_path(path: &str) -> Option<Endpoint> {
        let path = path.trim_start_matches("/v1").trim_matches('/');
        match path {
            "chat/completions" | "chat" => Some(Endpoint::Chat),
            "responses" => Some(Endpoint::Responses),
            "completions" => Some(Endpoint::Completions),
            _ => None,
        }
    }

    /// The endpoint a request body's own fields imply.
    fn of_body(body: &Value) -> Option<Endpoint> {
        if body.get("messages").is_some() {
            Some(Endpoint::Chat)
        } else if let Some(input) = body.get("input") {
            // Embeddings and moderations take `input` too: a body is read as
            // a Responses request when something says so (a field only the
            // Responses API has, input items, or a model that is not an
            // embedding or moderation model).
            let responses_only = [
                "instructions",
                "max_output_tokens",
                "text",
                "reasoning",
                "tools",
                "previous_response_id",
            ]
            .iter()
            .any(|key| body.get(*key).is_some());
            let items = input.as_array().is_some_and(|items| items.iter().any(Value::is_object));
            let model = body["model"].as_str().unwrap_or("").to_ascii_lowercase();
            let other_api = model.contains("embed") || model.contains("moderation");
            (responses_only || items || !other_api).then_some(Endpoint::Responses)
        } else if body.get("prompt").is_some() {
            Some(Endpoint::Completions)
        } else {
            None
        }
    }
}

/// One logged request, read from its line.
pub struct Logged {
    pub id: String,
    pub endpoint: Endpoint,
    pub request: ChatRequest,
    /// The text the logged answer gave, if the line has one.
    pub answer: Option<String>,
    pub usage: Option<Usage>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub at_unix_s: Option<f64>,
    pub category: Option<String>,
    /// The strong and the weak model's quality on it (labelled rows).
    pub quality: Option<(f64, f64)>,
}

impl Logged {
    /// Reads one line's JSON. `as_model` replaces the request's model: the
    /// question is where the policy would send it, not where it went.
    pub fn parse(row: &Value, line: usize, as_model: &str) -> Result<Logged, String> {
        let Value::Object(object) = row else {
            return Err("not a JSON object".into());
        };
        let field = |key: &str| object.get(key).filter(|v| !v.is_null());
        let (body, url, response) = if let (Some(body), Some(url)) = (field("body"), field("url")) {
            (
                body.clone(),
                url.as_str().map(str::to_string),
                field("response").cloned(),
            )
        } else if let Some(request) = field("request") {
            let url = field("url")
                .or(field("endpoint"))
                .and_then(Value::as_str)
                .map(str::to_string);
            (request.clone(), url, field("response").cloned())
        } else {
            // A plain body may carry the log's own fields beside the API's.
            let mut body = row.clone();
            if let Value::Object(fields) = &mut body {
                for key in LOG_FIELDS {
                    fields.remove(*key);
                }
            }
            (body, None, None)
        };
        if !body.is_object() {
            return Err("the request is not a JSON object".into());
        }
        let endpoint = match url.as_deref() {
            Some(url) => {
                let path = url.split("://").last().unwrap_or(url);
                let path = path.find('/').map_or(path, |at| &path[at..]);
                Endpoint::of_path(path)
                    .ok_or_else(|| format!("`{url}` is not a chat, Responses or completions endpoint"))?
            }
            None => Endpoint::of_body(&body)
                .ok_or("not a chat, Responses or completions request (no `messages`, Responses `input` or `prompt`)")?,
        };
        let mut body = body;
        // A labelled row's prompt, or a legacy completion's, is one user turn.
        if endpoint == Endpoint::Completions && body.get("messages").is_none() && body["prompt"].is_string() {
            body = json!({ "messages": [{ "role": "user", "content": body["prompt"] }] });
        }
        body["model"] = Value::String(as_model.to_string());
        let bytes = body.to_string();
        let request = match endpoint {
            Endpoint::Chat | Endpoint::Completions if body.get("messages").is_some() => {
                ChatRequest::parse(bytes.as_bytes())
            }
            Endpoint::Chat | Endpoint::Completions => ChatRequest::parse_completion(bytes.as_bytes()),
            Endpoint::Responses => ChatRequest::parse_responses(bytes.as_bytes()),
        }
        .map_err(|err| format!("the request is not valid: {}", err.message()))?;

        let usage = field("usage")
            .or_else(|| response.as_ref()?.get("usage"))
            .and_then(Usage::from_object);
        let number = |key: &str| {
            field(key)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        let at_unix_s = field("timestamp")
            .or(field("created"))
            .or_else(|| response.as_ref()?.get("created"))
            .and_then(unix_seconds);
        let category = field("category")
            .or_else(|| body.get("metadata")?.get("category"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = field("custom_id")
            .or(field("id"))
            .map(|id| id.as_str().map_or_else(|| id.to_string(), str::to_string))
            .unwrap_or_else(|| format!("line {line}"));
        let quality = field("labels").and_then(|_| {
            let mut probe = row.clone();
            probe["prompt"] = Value::String(text_for_scoring(&request));
            let example = data::example(&probe)?;
            Some((example.strong, example.weak))
        });
        Ok(Logged {
            id,
            endpoint,
            answer: response.as_ref().and_then(answer_text),
            usage,
            latency_ms: number("latency_ms"),
            cost_usd: number("cost_usd"),
            at_unix_s,
            category,
            quality,
            request,
        })
    }
}

/// A time as Unix seconds: a number, or an RFC 3339 string.
fn unix_seconds(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64().filter(|s| s.is_finite() && *s > 0.0),
        Value::String(text) => {
            let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
            Some(at.unix_timestamp_nanos() as f64 / 1e9)
        }
        _ => None,
    }
}

/// The answer text of a logged response: chat's message, a Responses
/// object's output text, or a legacy completion's text.
pub fn answer_text(response: &Value) -> Option<String> {
    let choice = &response["choices"][0];
    if let Some(content) = choice["message"]["content"].as_str() {
        return Some(content.to_string());
    }
    if let Some(text) = choice["text"].as_str() {
        return Some(text.to_string());
    }
    if let Some(text) = response["output_text"].as_str() {
        return Some(text.to_string());
    }
    let texts: Vec<&str> = response["output"]
        .as_array()?
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().into_iter().flatten())
        .filter_map(|part| part["text"].as_str())
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

/// One logged request replayed: what the audit keeps of it (a line of
/// `rows.jsonl`; no prompt text beyond a short preview).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replayed {
    /// The line of the input it came from.
    pub line: usize,
    pub id: String,
    pub endpoint: String,
    pub category: String,
    /// `local`, `local-reasoning`, `remote`, or `refused`.
    pub route: String,
    pub backend: String,
    pub reason: String,
    pub score: Option<f32>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Whether the token counts are the upstream's (logged usage) or counted
    /// here with the local model's tokenizer.
    pub tokens_from: String,
    pub logged_cost_usd: f64,
    pub policy_cost_usd: f64,
    /// What a remote answer would cost under the policy (for the cost curve).
    pub remote_cost_usd: f64,
    /// Whether the route follows from the score (so moving the thresholds
    /// moves it), rather than from a rule (privacy, eligibility, a pin).
    pub scored_route: bool,
    pub privacy_rule: Option<String>,
    pub latency_ms: Option<f64>,
    pub at_unix_s: Option<f64>,
    pub quality: Option<(f64, f64)>,
    /// The first characters of the user's text, for the report's table of
    /// the requests that drive the cloud spend.
    pub preview: String,
    /// The local model's answer compared with the logged one, when sampled.
    pub local: Option<LocalCheck>,
}

/// The local model's answer to a sampled request, against the logged answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalCheck {
    /// 1 or 0 for an exact-answer task, else the similarity in [0, 1].
    pub agreement: f64,
    /// `exact` or `similarity`.
    pub method: String,
    pub latency_ms: f64,
    pub completion_tokens: u64,
    /// What the judge's verdict cost (`--judge`), when a judge gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_cost_usd: Option<f64>,
}

/// What the judge model is told (`--judge`): one word back, no reasons.
const JUDGE_INSTRUCTION: &str = "You compare two answers to the same request. The reference answer was accepted. \
Decide whether the candidate answer would serve the person who made the request as well as the reference \
answer does: the same facts, result or decision, even if worded differently. Reply with exactly one word: \
yes or no.";

/// Characters of the request and of each answer a judge is shown.
const JUDGE_TEXT_CHARS: usize = 16_000;

fn clipped(text: &str) -> &str {
    match text.char_indices().nth(JUDGE_TEXT_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// The verdict in a judge's reply: its first word, `yes` or `no`.
pub fn verdict(reply: &str) -> Result<bool, String> {
    let first = reply
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_lowercase();
    match first.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!(
            "the judge answered {:?}, not yes or no",
            reply.chars().take(80).collect::<String>()
        )),
    }
}

/// What a judge said, and what asking it cost (paid even when its answer
/// was not a verdict).
pub struct Judgement {
    pub verdict: Result<bool, String>,
    pub cost_usd: f64,
}

/// A judge model's verdict on whether `candidate` answers `request` as well
/// as `reference` does, and what the call cost under the backend's price.
/// One call, temperature 0, at most 16 tokens: a chat model, not a
/// reasoning one (which refuses both settings). `Err` when the call failed.
pub async fn judge(
    remote: &crate::backends::remote::RemoteBackend,
    request: &str,
    reference: &str,
    candidate: &str,
    request_id: &str,
) -> Result<Judgement, String> {
    let body = json!({
        "model": remote.name(),
        "messages": [
            { "role": "system", "content": JUDGE_INSTRUCTION },
            { "role": "user", "content": format!(
                "Request:\n{}\n\nReference answer:\n{}\n\nCandidate answer:\n{}",
                clipped(request), clipped(reference), clipped(candidate)
            ) },
        ],
        "temperature": 0,
        "max_tokens": 16,
    });
    let request = ChatRequest::parse(body.to_string().as_bytes()).map_err(|e| e.message())?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let reply = remote
        .chat(&request, request_id, deadline)
        .await
        .map_err(|e| format!("the judge failed: {}", e.code()))?;
    let crate::reply::ChatReply::Relayed(crate::reply::Relayed::Complete { body, usage, .. }) = reply else {
        return Err("the judge's reply is not one chat completion".into());
    };
    let parsed: Value = serde_json::from_slice(&body).map_err(|e| format!("the judge's reply is not JSON: {e}"))?;
    let text = parsed["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    let usage = usage
        .or_else(|| Usage::from_object(&parsed["usage"]))
        .unwrap_or_default();
    Ok(Judgement {
        verdict: verdict(text),
        cost_usd: remote.price().cost_of(&usage),
    })
}

/// Characters of the user's text kept in a row.
const PREVIEW_CHARS: usize = 120;

/// What replaying needs: the policy built, and the conversations it has seen
/// (an audit replays each request on its own, as a fresh conversation).
pub struct Replayer<'a> {
    live: &'a Live,
    sessions: Sessions,
}

impl<'a> Replayer<'a> {
    pub fn new(live: &'a Live) -> Replayer<'a> {
        Replayer {
            live,
            sessions: Sessions::new(std::time::Duration::from_secs(1), 1),
        }
    }

    /// The local backend the policy routes to, if it has one.
    fn local(&self) -> Option<&crate::backends::local::LocalBackend> {
        self.live
            .backends
            .all()
            .iter()
            .find_map(|b| b.as_local().filter(|l| !l.embeds()))
    }

    pub fn replay(&self, line: usize, logged: &Logged) -> Replayed {
        let request = &logged.request;
        let text = text_for_scoring(request);
        let features = Features::extract(request, &text);
        let decision = self.live.routing.decide_remembering(
            request,
            &Caller::Anonymous,
            &Hints::default(),
            &self.live.backends,
            None,
            &self.sessions,
        );
        let all_text = all_message_text(request);
        let local_tokens = self.local().and_then(|local| local.count_tokens(&all_text));
        let (prompt_tokens, completion_tokens, tokens_from) = match (logged.usage, local_tokens) {
            (Some(usage), _) => (usage.prompt_tokens, usage.completion_tokens, "logged"),
            (None, Some(tokens)) => {
                let answer = logged.answer.as_deref().unwrap_or("");
                let completion = self.local().and_then(|l| l.count_tokens(answer)).unwrap_or(0);
                (
                    tokens,
                    if answer.is_empty() { 0 } else { completion },
                    "local-tokenizer",
                )
            }
            (None, None) => (features.prompt_tokens_estimate, 0, "estimate"),
        };
        let baseline = self.live.baseline.as_ref().map(|(_, price)| *price);
        let cost_at = |price: &Price| price.cost_usd(prompt_tokens, completion_tokens);
        let logged_cost_usd = logged
            .cost_usd
            .unwrap_or_else(|| baseline.as_ref().map_or(0.0, cost_at));
        // What the daemon's privacy rules read: everything sent upstream.
        let privacy_rule = self
            .live
            .routing
            .privacy_match(&crate::routing::privacy::egress_text(&request.body))
            .map(str::to_string);
        let category = logged
            .category
            .clone()
            .unwrap_or_else(|| category_of(&features, request));
        let preview: String = text.chars().take(PREVIEW_CHARS).collect();
        let (route, backend, reason, score, policy_cost_usd, remote_price, scored_route) = match &decision {
            Ok(decision) => {
                let remote_price = match decision.backend.as_ref() {
                    Backend::Remote(remote) => Some(remote.price()),
                    Backend::Local(_) => decision.fallbacks.remotes.first().map(|b| price_of(b)),
                };
                let scored = matches!(decision.reason.as_str(), "score-low" | "score-ambiguous" | "score-high");
                (
                    decision.tier.as_str().to_string(),
                    decision.backend.name().to_string(),
                    decision.reason.as_str().to_string(),
                    decision.score,
                    cost_at(&price_of(&decision.backend)),
                    remote_price.or(baseline),
                    scored,
                )
            }
            Err(err) => (
                "refused".to_string(),
                String::new(),
                err.code().to_string(),
                None,
                0.0,
                baseline,
                false,
            ),
        };
        // The score the curve sorts by: the request's own, also for a request
        // a rule routed (it stays where the rule put it).
        let score = score.or_else(|| Some(self.live.routing.difficulty_model().score(&features, &text)));
        Replayed {
            line,
            id: logged.id.clone(),
            endpoint: logged.endpoint.as_str().to_string(),
            category,
            route,
            backend,
            reason,
            score,
            prompt_tokens,
            completion_tokens,
            tokens_from: tokens_from.to_string(),
            logged_cost_usd,
            policy_cost_usd,
            remote_cost_usd: remote_price.as_ref().map_or(0.0, cost_at),
            scored_route,
            privacy_rule,
            latency_ms: logged.latency_ms,
            at_unix_s: logged.at_unix_s,
            quality: logged.quality,
            preview,
            local: None,
        }
    }
}

/// Every message's text, a line apart: what the upstream reads of the
/// conversation, for its token count.
fn all_message_text(request: &ChatRequest) -> String {
    let messages = request.messages().as_array().map_or(&[][..], Vec::as_slice);
    let pieces: Vec<&str> = messages.iter().flat_map(|m| content_texts(&m["content"])).collect();
    pieces.join("\n")
}

/// A request's category when the log gives none: what it asks of the model.
fn category_of(features: &Features, request: &ChatRequest) -> String {
    if request.tools.is_some() {
        "tools".into()
    } else if features.json_mode {
        "structured output".into()
    } else if features.code_blocks > 0 || features.code_like >= 3 {
        "code".into()
    } else if features.math_like > 0 {
        "math".into()
    } else if features.options >= 2 {
        "multiple choice".into()
    } else if features.turns > 1 {
        "conversation".into()
    } else {
        "chat".into()
    }
}

/// Words of a text, lower-cased, punctuation dropped.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// How far `ours` agrees with `logged`: a short logged answer (a letter, a
/// number, a few words: a task with one answer) must be matched exactly,
/// word for word, by ours or by the start of ours; a longer one is compared
/// by word-overlap F1 (as SQuAD scores open answers).
pub fn agreement(ours: &str, logged: &str) -> (f64, &'static str) {
    let (ours, logged) = (words(ours), words(logged));
    if logged.len() <= 3 {
        let matches = !logged.is_empty() && ours.len() >= logged.len() && ours[..logged.len()] == logged[..];
        return (f64::from(u8::from(matches)), "exact");
    }
    let mut counts = std::collections::HashMap::new();
    for w in &logged {
        *counts.entry(w.as_str()).or_insert(0i64) += 1;
    }
    let mut common = 0i64;
    for w in &ours {
        if let Some(n) = counts.get_mut(w.as_str())
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return (0.0, "similarity");
    }
    let precision = common as f64 / ours.len() as f64;
    let recall = common as f64 / logged.len() as f64;
    (2.0 * precision * recall / (precision + recall), "similarity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judges_verdict_is_its_first_word() {
        assert_eq!(verdict("Yes."), Ok(true));
        assert_eq!(verdict("  no, the candidate misses the date"), Ok(false));
        assert_eq!(verdict("**YES**"), Ok(true));
        assert!(verdict("Maybe").unwrap_err().contains("Maybe"));
        assert!(verdict("").is_err());
    }

    #[test]
    fn short_answers_match_exactly_and_long_ones_by_overlap() {
        assert_eq!(agreement("B. Paris", "B"), (1.0, "exact"));
        assert_eq!(agreement("The answer is B", "B"), (0.0, "exact"));
        assert_eq!(agreement("42", "42."), (1.0, "exact"));
        let (f1, method) = agreement("the cat sat on the mat today", "a cat sat on the mat");
        assert_eq!(method, "similarity");
        let (precision, recall) = (5.0 / 7.0, 5.0 / 6.0);
        assert!(
            (f1 - 2.0 * precision * recall / (precision + recall)).abs() < 1e-12,
            "{f1}"
        );
        assert_eq!(
            agreement("nothing alike here", "completely different words entirely").0,
            0.0
        );
    }

    #[test]
    fn each_log_form_is_read() {
        let plain = json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "Hi" }] });
        let read = Logged::parse(&plain, 1, "auto").unwrap();
        assert_eq!((read.endpoint, read.id.as_str()), (Endpoint::Chat, "line 1"));
        assert_eq!(read.request.model, "auto");

        let batch = json!({ "custom_id": "r-7", "method": "POST", "url": "/v1/responses",
                            "body": { "model": "gpt-4o", "input": "Hi" } });
        let read = Logged::parse(&batch, 2, "auto").unwrap();
        assert_eq!((read.endpoint, read.id.as_str()), (Endpoint::Responses, "r-7"));

        let logged = json!({
            "request": { "model": "gpt-4o", "messages": [{ "role": "user", "content": "2+2?" }] },
            "response": { "created": 1_700_000_000, "choices": [{ "message": { "role": "assistant", "content": "4" } }],
                          "usage": { "prompt_tokens": 12, "completion_tokens": 1 } },
            "latency_ms": 840.5, "cost_usd": 0.0001,
        });
        let read = Logged::parse(&logged, 3, "auto").unwrap();
        assert_eq!(read.answer.as_deref(), Some("4"));
        assert_eq!(
            read.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((12, 1))
        );
        assert_eq!(
            (read.latency_ms, read.cost_usd, read.at_unix_s),
            (Some(840.5), Some(0.0001), Some(1.7e9))
        );

        let legacy = json!({ "request": { "model": "x", "prompt": "Once upon" }, "url": "https://api.openai.com/v1/completions",
                             "timestamp": "2026-12-01T10:00:00Z" });
        let read = Logged::parse(&legacy, 4, "auto").unwrap();
        assert_eq!(read.endpoint, Endpoint::Completions);
        assert_eq!(read.at_unix_s, Some(1_796_119_200.0));

        let labelled = json!({ "id": "mmlu/1", "category": "mmlu:math", "prompt": "What is 2+2?",
                               "labels": { "big": 1.0, "small": 0.0 }, "strong": "big", "weak": "small" });
        let read = Logged::parse(&labelled, 5, "auto").unwrap();
        assert_eq!(
            (read.quality, read.category.as_deref()),
            (Some((1.0, 0.0)), Some("mmlu:math"))
        );

        for bad in [
            json!([1]),
            json!({ "url": "/v1/embeddings", "body": { "input": "x" } }),
            json!({ "model": "text-embedding-3-small", "input": ["a", "b"] }),
            json!({ "model": "omni-moderation-latest", "input": "text" }),
            json!({ "hello": 1 }),
        ] {
            assert!(Logged::parse(&bad, 6, "auto").is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_read_from_each_apis_response() {
        let responses = json!({ "output": [{ "type": "reasoning" },
            { "type": "message", "content": [{ "type": "output_text", "text": "a" }, { "type": "output_text", "text": "b" }] }] });
        assert_eq!(answer_text(&responses).as_deref(), Some("ab"));
        assert_eq!(
            answer_text(&json!({ "choices": [{ "text": "legacy" }] })).as_deref(),
            Some("legacy")
        );
        assert_eq!(answer_text(&json!({ "id": "x" })), None);
    }
}
