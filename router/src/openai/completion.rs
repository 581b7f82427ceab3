//! OpenAI's chat completion objects, written for an answer Switchyard makes
//! itself (the local model's): the whole `chat.completion` of a non-streamed
//! answer, and the `chat.completion.chunk` events of a streamed one, from the
//! answer's typed pieces (reasoning text, content text with its tokens' log
//! probabilities, and the finish with its usage). Remote answers are relayed
//! as their upstream wrote them and never pass through here.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use switchyard_engine::sampling::SampledToken;

use super::Usage;
use super::sse;

/// One answer's identity, the same in every object written for it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// How a finished answer ended and what it used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finish {
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub reason: &'static str,
    pub usage: Usage,
    /// Of `usage.completion_tokens`, those spent reasoning.
    pub reasoning_tokens: u64,
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
    /// `reasoning_content` when the answer reasoned), log-probabilities when
    /// asked for, and the usage.
    pub fn whole(&self, content: &str, reasoning: Option<&str>, logprobs: Option<Value>, finish: Finish) -> Value {
        let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
        if let Some(reasoning) = reasoning {
            message["reasoning_content"] = Value::String(reasoning.to_string());
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
            "usage": usage_json(finish.usage, finish.reasoning_tokens),
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
                "usage": usage_json(finish.usage, finish.reasoning_tokens),
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

fn usage_json(usage: Usage, reasoning_tokens: u64) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "completion_tokens_details": { "reasoning_tokens": reasoning_tokens },
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
    use super::*;

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
            },
            reasoning_tokens: 3,
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
        let body = completion().whole("Paris.", Some("The capital..."), None, finish("stop"));
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
                    "completion_tokens_details": { "reasoning_tokens": 3 } })
        );
        // No reasoning, no `reasoning_content`; a cut answer says `length`.
        let body = completion().whole("Par", None, None, finish("length"));
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
}
