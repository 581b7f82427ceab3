//! What a backend answers with, before anything is written for the client:
//! the local model's answer as typed [`Event`]s (reasoning pieces, content
//! pieces with their tokens, the finish with its usage, or the failure that
//! broke it off), or a remote answer [`Relayed`] as its upstream wrote it.
//! Plain types, below every layer that makes or reads them: backends yield
//! them, the ladder judges local events, and `openai::completion` writes
//! both kinds out as JSON or SSE, in one place.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::Deserialize;
use switchyard_engine::generate::FinishReason;
use switchyard_engine::sampling::SampledToken;
use switchyard_engine::tokenizer::Tokenizer;

use crate::outcome::BackendError;

/// Token counts as OpenAI reports them in `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Seconds of audio billed (a transcription's `usage.seconds`).
    #[serde(default)]
    pub seconds: u64,
}

impl Usage {
    /// The `usage` object of a completion or chunk, if it has a non-null one.
    pub fn from_value(value: &serde_json::Value) -> Option<Usage> {
        let usage = value.get("usage")?;
        if usage.is_null() {
            return None;
        }
        serde_json::from_value(usage.clone()).ok()
    }

    /// A `usage` object of any of the API's forms: chat and embeddings
    /// (`prompt_tokens`, `completion_tokens`), Responses, images and
    /// transcriptions by tokens (`input_tokens`, `output_tokens`), or
    /// transcriptions by duration (`seconds`, rounded up).
    pub fn from_object(usage: &serde_json::Value) -> Option<Usage> {
        let usage = usage.as_object()?;
        let count = |names: [&str; 2]| names.iter().find_map(|name| usage.get(*name)?.as_u64());
        let seconds = usage.get("seconds").and_then(serde_json::Value::as_f64);
        let found = Usage {
            prompt_tokens: count(["prompt_tokens", "input_tokens"]).unwrap_or(0),
            completion_tokens: count(["completion_tokens", "output_tokens"]).unwrap_or(0),
            seconds: seconds
                .filter(|s| s.is_finite() && *s > 0.0)
                .map_or(0, |s| s.ceil() as u64),
        };
        (found != Usage::default() || usage.contains_key("total_tokens")).then_some(found)
    }

    /// The `usage` of a Responses API object (`input_tokens`, `output_tokens`).
    pub fn from_response(value: &serde_json::Value) -> Option<Usage> {
        let usage = value.get("usage").filter(|u| !u.is_null())?;
        Some(Usage {
            prompt_tokens: usage["input_tokens"].as_u64()?,
            completion_tokens: usage["output_tokens"].as_u64()?,
            seconds: 0,
        })
    }
}

/// Where a streamed answer's usage is left for the request's record, filled
/// when it is known (by the stream's end), whether or not the client asked
/// to see it.
pub type UsageCell = Arc<Mutex<Option<Usage>>>;

/// A successful answer, as its backend gives it.
pub enum ChatReply {
    /// The local model's answer, as events.
    Local(LocalAnswer),
    /// An upstream's answer, passed on as it came.
    Relayed(Relayed),
}

/// One piece of a local answer, in order: reasoning (if any), content and
/// tool calls, then one `Finished` or `Failed`. A token goes with the piece its
/// text completes (a piece may have none).
#[derive(Debug, Clone)]
pub enum Event {
    Reasoning {
        text: String,
        token: Option<SampledToken>,
    },
    Content {
        text: String,
        token: Option<SampledToken>,
    },
    /// Tool call number `index` (from 0) opens.
    ToolCall {
        index: usize,
        id: String,
        name: String,
        token: Option<SampledToken>,
    },
    /// More of call `index`'s arguments (a JSON object's text, in order).
    ToolArguments {
        index: usize,
        text: String,
        token: Option<SampledToken>,
    },
    Finished(Finished),
    Failed(BackendError),
}

/// How a local answer ended, and what it used.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Of `usage.completion_tokens`, those spent reasoning.
    pub reasoning_tokens: u64,
    /// Of `usage.prompt_tokens`, those whose state an earlier request left
    /// (a conversation's earlier turns), not run again.
    pub cached_tokens: u64,
    /// The answer stopped at the client's own `max_tokens`.
    pub client_limited: bool,
    /// Tool calls the answer made.
    pub tool_calls: usize,
}

/// The local model's answer.
pub struct LocalAnswer {
    /// The answering backend's name: the answer's `model`.
    pub model: String,
    /// The model's vocabulary, for the tokens' log-probabilities.
    pub vocabulary: Arc<dyn TokenBytes>,
    pub events: LocalEvents,
}

/// A vocabulary: what bytes a token id stands for.
pub trait TokenBytes: Send + Sync {
    /// The token's bytes; empty for an id the vocabulary does not have.
    fn token_bytes(&self, id: u32) -> &[u8];
}

impl TokenBytes for Tokenizer {
    fn token_bytes(&self, id: u32) -> &[u8] {
        Tokenizer::token_bytes(self, id).unwrap_or_default()
    }
}

pub enum LocalEvents {
    /// A non-streamed answer, all in hand: its reasoning and content events,
    /// and how it finished (one that failed is an error, not a reply).
    Whole { events: Vec<Event>, finished: Finished },
    /// A streamed answer's events as the engine yields them, ending with
    /// `Finished` or `Failed`.
    Stream(BoxStream<'static, Event>),
}

/// An upstream's answer, relayed as it came (see `backends::remote`).
pub enum Relayed {
    /// A whole `chat.completion` body.
    Complete {
        body: Bytes,
        usage: Option<Usage>,
        headers: HeaderMap,
        status: StatusCode,
    },
    /// SSE bytes, already framed as the upstream framed them, ending with
    /// `data: [DONE]`, or with the failure that broke the stream off.
    Stream {
        events: BoxStream<'static, Result<Bytes, BackendError>>,
        headers: HeaderMap,
        usage: UsageCell,
    },
}
