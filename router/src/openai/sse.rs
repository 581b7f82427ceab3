//! Server-sent events, as OpenAI-compatible servers stream chat completions.
//!
//! [`SseDecoder`] cuts an upstream byte stream into events as bytes arrive; each
//! event is handed on as soon as its terminating blank line is seen, so nothing
//! is buffered beyond one event. Events we re-emit are written the way OpenAI
//! writes them: `data: <json>\n\n`, and the stream ends with `data: [DONE]\n\n`.
//!
//! [`read_chunk`] checks that a data event is what OpenAI's format promises
//! (a chunk object with a `choices` array, or an error object) without building
//! a JSON tree: every chunk of every relayed stream goes through it.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use super::error::ApiError;
use crate::reply::Usage;

/// One event is one chunk object; a few KiB in practice. A larger one means the
/// upstream is not speaking SSE, and we stop rather than buffer without bound.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

pub const DONE: &str = "[DONE]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The joined `data:` lines of one event.
    Data(String),
    /// A comment-only event (`: keep-alive`), forwarded so idle clients stay connected.
    Comment(String),
}

impl SseEvent {
    pub fn encode(&self) -> Bytes {
        match self {
            SseEvent::Data(data) => encode_data(data),
            SseEvent::Comment(text) => Bytes::from(format!(":{text}\n\n")),
        }
    }
}

/// An error event: how a stream that broke off after it began tells the
/// client why (OpenAI's SDKs raise it as an `APIError`).
pub fn error_event(err: &ApiError) -> Bytes {
    encode_data(&err.to_json().to_string())
}

pub fn encode_data(data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// A streamed data event (other than `[DONE]`) that has the shape of OpenAI's format.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// A `chat.completion.chunk`, with its usage when it carries one.
    Choices { usage: Option<Usage> },
    /// `{"error": {...}}`: the provider failed in-band.
    Error,
}

/// What a data event must be. Fields other than these are skipped unread.
#[derive(Deserialize)]
struct ChunkShape {
    choices: Option<Vec<IgnoredAny>>,
    error: Option<JsonObject>,
    /// Kept as a value (null in all chunks but the last when usage is asked
    /// for) and read leniently: a malformed usage is not a malformed chunk.
    usage: Option<serde_json::Value>,
}

/// Any JSON object, skipped without being built.
struct JsonObject;

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Skip;
        impl<'de> Visitor<'de> for Skip {
            type Value = JsonObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        deserializer.deserialize_map(Skip)
    }
}

/// Reads a data event as an OpenAI chunk, or says why it is not one.
pub fn read_chunk(data: &str) -> Result<Chunk, &'static str> {
    // serde reads a struct from an array too; a chunk is an object.
    if !data.trim_start().starts_with('{') {
        return Err("an event is not a JSON object");
    }
    let shape: ChunkShape = serde_json::from_str(data).map_err(|_| "an event is not valid JSON of a chunk's shape")?;
    match shape {
        ChunkShape { error: Some(_), .. } => Ok(Chunk::Error),
        ChunkShape {
            choices: Some(_),
            usage,
            ..
        } => Ok(Chunk::Choices {
            usage: usage.and_then(|usage| serde_json::from_value(usage).ok()),
        }),
        ChunkShape { choices: None, .. } => Err("an event has no `choices` array"),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SseError {
    EventTooLarge,
    NotUtf8,
}

#[derive(Default)]
pub struct SseDecoder {
    buffer: BytesMut,
}

impl SseDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            let Some((end, separator_len)) = find_event_end(&self.buffer) else {
                if self.buffer.len() > MAX_EVENT_BYTES {
                    return Err(SseError::EventTooLarge);
                }
                return Ok(None);
            };
            let raw = self.buffer.split_to(end);
            self.buffer.advance(separator_len);
            let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
            if let Some(event) = parse_event(text) {
                return Ok(Some(event));
            }
        }
    }

    /// Bytes received after the last complete event: non-empty when a stream was cut.
    pub fn has_partial_event(&self) -> bool {
        self.buffer.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// Position of the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`) and its length.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &buffer[i..]) {
        let at = i + offset;
        let rest = &buffer[at..];
        if rest.starts_with(b"\r\n\r\n") {
            return Some((at, 4));
        }
        if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            return Some((at, 2));
        }
        if rest.starts_with(b"\n\r\n") {
            return Some((at, 3));
        }
        i = at + 1;
    }
    None
}

fn parse_event(text: &str) -> Option<SseEvent> {
    let mut data: Option<String> = None;
    let mut comment: Option<String> = None;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if let Some(text) = line.strip_prefix(':') {
            comment.get_or_insert_with(|| text.to_string());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(existing) => {
                    existing.push('\n');
                    existing.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
        // `event:`, `id:` and `retry:` carry nothing OpenAI clients use.
    }
    match (data, comment) {
        (Some(data), _) => Some(SseEvent::Data(data)),
        (None, Some(comment)) => Some(SseEvent::Comment(comment)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            while let Some(event) = decoder.next_event().unwrap() {
                events.push(event);
            }
        }
        events
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let events = decode_all(&[b"data: {\"a\"", b":1}\n", b"\ndata: [DONE]\n\n"]);
        assert_eq!(
            events,
            [SseEvent::Data("{\"a\":1}".into()), SseEvent::Data(DONE.into())]
        );
    }

    #[test]
    fn crlf_comments_and_multiline_data_are_understood() {
        let events = decode_all(&[b": ping\r\n\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\n"]);
        assert_eq!(
            events,
            [SseEvent::Comment(" ping".into()), SseEvent::Data("a\nb".into())]
        );
    }

    #[test]
    fn a_cut_event_is_seen_as_partial() {
        let mut decoder = SseDecoder::default();
        decoder.push(b"data: {\"choices\":[");
        assert_eq!(decoder.next_event().unwrap(), None);
        assert!(decoder.has_partial_event());
    }

    #[test]
    fn unbounded_events_are_refused() {
        let mut decoder = SseDecoder::default();
        decoder.push(&vec![b'x'; MAX_EVENT_BYTES + 1]);
        assert_eq!(decoder.next_event(), Err(SseError::EventTooLarge));
    }

    #[test]
    fn chunks_are_read_for_their_shape_and_usage() {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            seconds: 0,
        };
        for (data, expected) in [
            (
                r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#,
                Ok(Chunk::Choices { usage: None }),
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
                Ok(Chunk::Choices { usage: Some(usage) }),
            ),
            (r#"{"choices":[],"usage":"lots"}"#, Ok(Chunk::Choices { usage: None })),
            (r#"{"error":{"message":"overloaded"}}"#, Ok(Chunk::Error)),
            (r#"{"hello":"world"}"#, Err("an event has no `choices` array")),
            (r#"{"choices":null}"#, Err("an event has no `choices` array")),
            (
                r#"{"error":"text"}"#,
                Err("an event is not valid JSON of a chunk's shape"),
            ),
            ("{broken json", Err("an event is not valid JSON of a chunk's shape")),
            ("[[]]", Err("an event is not a JSON object")),
        ] {
            assert_eq!(read_chunk(data), expected, "{data}");
        }
    }

    #[test]
    fn encoding_matches_openai_framing() {
        assert_eq!(&SseEvent::Data("{}".into()).encode()[..], b"data: {}\n\n");
    }
}
