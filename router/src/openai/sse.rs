//! Server-sent events, as OpenAI-compatible servers stream chat completions.
//!
//! [`SseDecoder`] cuts an upstream byte stream into events as bytes arrive; each
//! event is handed on as soon as its terminating blank line is seen, so nothing
//! is buffered beyond one event. Events we re-emit are written the way OpenAI
//! writes them: `data: <json>\n\n`, and the stream ends with `data: [DONE]\n\n`.

use bytes::{Buf, Bytes, BytesMut};

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

pub fn encode_data(data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out.freeze()
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
    fn encoding_matches_openai_framing() {
        assert_eq!(&SseEvent::Data("{}".into()).encode()[..], b"data: {}\n\n");
    }
}
