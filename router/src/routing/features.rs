//! Cheap signals about a request, computed once, in one pass over its text:
//! size, structure (turns, code, math, multiple-choice options), question type,
//! script, and what it asks of the backend (tools, images, JSON mode).
//!
//! The prompt-size estimate needs no tokenizer: about 4 bytes a token for
//! Latin-script text (BPE tokenizers of the Llama/Qwen families average 3.5 to
//! 4.5 on English prose and code) and one token a character for CJK scripts.
//! It errs high on purpose on text full of digits and symbols (each counts a
//! token), so an eligibility check against a context window stays on the safe side.

use serde::Serialize;
use serde_json::Value;

use crate::openai::request::ChatRequest;
use crate::openai::structured::{OutputFormat, ToolChoice};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Features {
    /// The whole context a backend must hold: every message, system prompts too.
    pub prompt_tokens_estimate: u64,
    /// The text the difficulty model reads (the user's turns): the size it
    /// learned from, the same for a served request as for its training row.
    pub text_tokens_estimate: u64,
    pub chars: u64,
    pub turns: u32,
    pub has_tools: bool,
    /// Function tools offered (when `tool_choice` is not `none`).
    pub tools: u32,
    /// Whether a call is required (`tool_choice` `required` or a named function).
    pub tool_call_required: bool,
    pub has_images: bool,
    pub json_mode: bool,
    /// The size of the tools' and the response schema's JSON, in bytes: the
    /// model reads the tools in its prompt, and a larger schema is a longer answer.
    pub schema_bytes: u64,
    /// Fenced code blocks (```).
    pub code_blocks: u32,
    /// Lines that look like code (braces, semicolons, `def`/`fn`/`function`, indentation).
    pub code_like: u32,
    /// Math notation: LaTeX commands, operators between numbers, `x^2`, ...
    pub math_like: u32,
    pub numbers: u32,
    /// Multiple-choice options (`A.`, `(b)`, ... at line starts).
    pub options: u32,
    pub question_type: &'static str,
    pub language: &'static str,
}

/// The most of a prompt's text whose words and n-grams are read for the
/// score. Training prompts are under 4 KiB (the longest labelled one is 3,699
/// bytes), so the cut never touches a prompt like those the model learned
/// from; without it, a 4 MiB body's n-grams took ~47 MiB and tens of
/// milliseconds to score, for a prompt whose size alone decides where it can go.
pub const SCORED_TEXT_MAX_BYTES: usize = 64 * 1024;

/// The text the difficulty model reads: the user's turns, the last one last,
/// up to [`SCORED_TEXT_MAX_BYTES`] (cut at a character boundary; the model
/// reads no further, and a maximum-size body is not copied whole for it).
pub fn text_for_scoring(request: &ChatRequest) -> String {
    let mut text = String::new();
    for message in user_messages(request) {
        push_content(&mut text, &message["content"]);
        if text.len() >= SCORED_TEXT_MAX_BYTES {
            let mut cut = SCORED_TEXT_MAX_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            break;
        }
    }
    text
}

fn user_messages(request: &ChatRequest) -> impl Iterator<Item = &Value> {
    let messages = request.messages().as_array().map_or(&[][..], Vec::as_slice);
    messages.iter().filter(|message| message["role"] == "user")
}

/// Appends a message's text (a string, or the text of its content parts),
/// each piece on a line of its own after what `text` already holds: a single
/// user turn reads exactly as the prompt of a training row.
pub(crate) fn push_content(text: &mut String, content: &Value) {
    for piece in content_texts(content) {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(piece);
    }
}

/// A message's text pieces: its string content, or the text of its parts.
pub(crate) fn content_texts(content: &Value) -> impl Iterator<Item = &str> {
    let (whole, parts) = match content {
        Value::String(s) => (Some(s.as_str()), &[][..]),
        Value::Array(parts) => (None, parts.as_slice()),
        _ => (None, &[][..]),
    };
    whole
        .into_iter()
        .chain(parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)))
}

/// A request's prompt in tokens, estimated without a tokenizer: every
/// message's text and a few tokens a message for the chat template, and the
/// tools it offers (rendered into the prompt as JSON, about 3 bytes a
/// token); with the tools' size in bytes.
fn prompt_estimate(request: &ChatRequest) -> (u64, u64) {
    let messages = request.messages().as_array().map_or(&[][..], Vec::as_slice);
    let all_text = TokenEstimate::joined(messages.iter().flat_map(|m| content_texts(&m["content"])));
    let mut tokens = all_text.tokens() + 4 * messages.len() as u64;
    let mut tools_bytes = 0;
    if request.tools.as_ref().is_some_and(|t| t.choice != ToolChoice::None) {
        tools_bytes = request.body["tools"].to_string().len() as u64;
        tokens += tools_bytes.div_ceil(3);
    }
    (tokens, tools_bytes)
}

/// A request's prompt in tokens, as the routing estimates it.
pub fn prompt_tokens_estimate(request: &ChatRequest) -> u64 {
    prompt_estimate(request).0
}

impl Features {
    /// The features of a chat request (its scored text plus what it asks of the backend).
    pub fn extract(request: &ChatRequest, scored_text: &str) -> Features {
        let messages = request.messages().as_array().map_or(&[][..], Vec::as_slice);
        let mut features = Features::from_text(scored_text);
        // The size of the user's text is that of all of it, also past what is
        // scored; the context the backend must hold is every message, not
        // just the user's. Each is estimated as for its pieces joined a line
        // apart, without joining them.
        let user_text = TokenEstimate::joined(user_messages(request).flat_map(|m| content_texts(&m["content"])));
        features.text_tokens_estimate = user_text.tokens();
        features.chars = user_text.chars;
        let (prompt_tokens, tools_bytes) = prompt_estimate(request);
        features.prompt_tokens_estimate = prompt_tokens;
        if let Some(tools) = request.tools.as_ref().filter(|t| t.choice != ToolChoice::None) {
            features.tools = tools.functions.len() as u32;
            features.tool_call_required = matches!(tools.choice, ToolChoice::Required | ToolChoice::Named(_));
            features.schema_bytes += tools_bytes;
        }
        if let OutputFormat::JsonSchema { schema, .. } = &request.format {
            features.schema_bytes += schema.to_string().len() as u64;
        }
        features.turns = messages.iter().filter(|m| m["role"] == "user").count() as u32;
        features.has_tools = request.asks.tools;
        features.json_mode = request.asks.json_mode;
        features.has_images = request.asks.non_text;
        features
    }

    /// The features of plain prompt text.
    pub fn from_text(text: &str) -> Features {
        let estimate = TokenEstimate::joined(std::iter::once(text));
        let mut f = Features {
            prompt_tokens_estimate: estimate.tokens(),
            text_tokens_estimate: estimate.tokens(),
            chars: estimate.chars,
            turns: 1,
            ..Features::default()
        };
        let mut in_fence = false;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("```") {
                if !in_fence {
                    f.code_blocks += 1;
                }
                in_fence = !in_fence;
                continue;
            }
            if in_fence || looks_like_code(line) {
                f.code_like += 1;
            }
            if is_option(trimmed) {
                f.options += 1;
            }
        }
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                f.numbers += 1;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
        f.math_like = count_math(text);
        f.question_type = question_type(text, f.options);
        f.language = script(text);
        f
    }

    /// Numeric features for the difficulty model, each squashed to a small
    /// range, for multiple-choice questions; all zero for any other prompt.
    ///
    /// The labels that say where the remote model gains are nearly all on
    /// multiple-choice exams, and what structure says there does not carry over:
    /// on MMLU, more numbers and math mean a *smaller* gain from GPT-4 (both
    /// models miss them), while on open math (GSM8K, MT-Bench) they mean the
    /// largest gain. Used on open requests, these weights ranked MT-Bench's
    /// chat worse than random (APGR 0.38 on its train quarter, 0.72 scoped,
    /// measured with the training recipe of the time).
    /// Open prompts are scored on their text alone.
    pub fn vector(&self) -> [f32; STRUCTURAL_FEATURES] {
        let log = |x: f64| (1.0 + x).ln() as f32;
        let qt = |name: &str| f32::from(u8::from(self.question_type == name));
        let lang = |name: &str| f32::from(u8::from(self.language == name));
        let scope = qt("multiple-choice");
        [
            log(self.text_tokens_estimate as f64) / 8.0,
            log(f64::from(self.turns)),
            log(f64::from(self.code_blocks)),
            log(f64::from(self.code_like)) / 3.0,
            log(f64::from(self.math_like)) / 3.0,
            log(f64::from(self.numbers)) / 3.0,
            log(f64::from(self.options)) / 2.0,
            qt("multiple-choice"),
            qt("code"),
            qt("math"),
            qt("explain"),
            qt("write"),
            qt("factual"),
            lang("cjk"),
            lang("cyrillic"),
            lang("other"),
        ]
        .map(|x| x * scope)
    }
}

pub const STRUCTURAL_FEATURES: usize = 16;

/// See the module comment.
pub fn estimate_tokens(text: &str) -> u64 {
    let mut estimate = TokenEstimate::default();
    estimate.add(text);
    estimate.tokens()
}

/// [`estimate_tokens`] of text added piece by piece (the estimate of the
/// pieces joined), and the text's characters.
#[derive(Default)]
struct TokenEstimate {
    bytes: u64,
    wide: u64,
    symbols: u64,
    chars: u64,
}

impl TokenEstimate {
    /// The estimate of `pieces` joined by line breaks, as [`push_content`]
    /// joins them, without joining them.
    fn joined<'t>(pieces: impl Iterator<Item = &'t str>) -> TokenEstimate {
        let mut estimate = TokenEstimate::default();
        for piece in pieces {
            if estimate.chars > 0 {
                estimate.add("\n");
            }
            estimate.add(piece);
        }
        estimate
    }

    fn add(&mut self, text: &str) {
        for c in text.chars() {
            self.chars += 1;
            if is_cjk_char(c) {
                self.wide += 1;
            } else if c.is_ascii_punctuation() || c.is_ascii_digit() {
                self.symbols += 1;
            } else {
                self.bytes += c.len_utf8() as u64;
            }
        }
    }

    fn tokens(&self) -> u64 {
        self.bytes.div_ceil(4) + self.wide + self.symbols
    }
}

/// Han, kana and Hangul characters.
pub fn is_cjk_char(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

fn looks_like_code(line: &str) -> bool {
    let t = line.trim();
    t.ends_with('{')
        || t.ends_with(';')
        || t == "}"
        || t.starts_with("def ")
        || t.starts_with("fn ")
        || t.starts_with("function ")
        || t.starts_with("import ")
        || t.starts_with("#include")
        || t.starts_with("return ")
        || t.starts_with(">>>")
        || (line.starts_with("    ") && t.contains(['(', '=']))
}

fn is_option(line: &str) -> bool {
    let mut chars = line.chars();
    let first = chars.next();
    let (letter, rest) = match first {
        Some('(') => (chars.next(), chars.next()),
        other => (other, chars.next()),
    };
    matches!(letter, Some('A'..='H' | 'a'..='h')) && matches!(rest, Some('.' | ')' | ':'))
}

fn count_math(text: &str) -> u32 {
    let latex = text.matches('\\').count() + text.matches('$').count();
    let bytes = text.as_bytes();
    let operators = bytes
        .windows(3)
        .filter(|w| {
            (w[0].is_ascii_digit() || w[0] == b' ')
                && matches!(w[1], b'+' | b'*' | b'/' | b'^' | b'=' | b'<' | b'>')
                && (w[2].is_ascii_alphanumeric() || w[2] == b' ')
        })
        .count();
    (latex + operators) as u32
}

fn question_type(text: &str, options: u32) -> &'static str {
    if options >= 2 {
        return "multiple-choice";
    }
    let lower: String = text.chars().take(400).collect::<String>().to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if has(&["write a function", "implement", "code", "program", "def ", "function "]) {
        "code"
    } else if has(&[
        "solve",
        "calculate",
        "compute",
        "prove",
        "equation",
        "how many",
        "integral",
    ]) {
        "math"
    } else if has(&["explain", "why ", "how does", "describe", "compare"]) {
        "explain"
    } else if has(&["write ", "draft", "compose", "story", "poem", "essay", "summar"]) {
        "write"
    } else if has(&["what ", "who ", "when ", "where ", "which "]) {
        "factual"
    } else {
        "other"
    }
}

fn script(text: &str) -> &'static str {
    let (mut latin, mut cjk, mut cyrillic, mut other) = (0, 0, 0, 0);
    for c in text.chars().filter(|c| c.is_alphabetic()).take(2000) {
        match c as u32 {
            _ if c.is_ascii_alphabetic() => latin += 1,
            0x00c0..=0x024f => latin += 1,
            0x0400..=0x04ff => cyrillic += 1,
            _ if is_cjk_char(c) => cjk += 1,
            _ => other += 1,
        }
    }
    let max = latin.max(cjk).max(cyrillic).max(other);
    if max == 0 || max == latin {
        "latin"
    } else if max == cjk {
        "cjk"
    } else if max == cyrillic {
        "cyrillic"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structural_vector_speaks_for_multiple_choice_questions_only() {
        let mc = Features::from_text("What is 12 * 7?\nA. 74\nB. 84\nC. 94\nD. 104\nAnswer:");
        let v = mc.vector();
        assert_eq!(v[7], 1.0, "the multiple-choice flag");
        assert!(v[0] > 0.0 && v[5] > 0.0 && v[6] > 0.0, "{v:?}");
        let open = Features::from_text(
            "A train leaves at 3 pm at 60 km/h; another at 4 pm at 80 km/h. When does it catch up?",
        );
        assert!(open.numbers >= 4, "{open:?}");
        assert_eq!(open.vector(), [0.0; STRUCTURAL_FEATURES]);
    }

    #[test]
    fn structure_is_recognised() {
        let mc = Features::from_text("Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:");
        assert_eq!(
            (mc.options, mc.question_type, mc.language),
            (4, "multiple-choice", "latin")
        );
        let code = Features::from_text("Write a function:\n```python\ndef f(x):\n    return x + 1\n```\n");
        assert_eq!((code.code_blocks, code.question_type), (1, "code"));
        assert!(code.code_like >= 2, "{code:?}");
        let zh = Features::from_text("请解释一下光合作用的原理。");
        assert_eq!(zh.language, "cjk");
        assert!(zh.prompt_tokens_estimate >= 12);
        let math = Features::from_text("Solve $x^2 + 3x = 4$ for x.");
        assert!(math.math_like >= 3 && math.question_type == "math", "{math:?}");
    }

    #[test]
    fn a_long_request_is_scored_on_its_head_and_sized_on_all_of_it() {
        let long = "Est-ce déjà l'été? 1+1 ".repeat(SCORED_TEXT_MAX_BYTES / 10);
        let body = serde_json::json!({"model": "auto", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Read this:"}, {"type": "text", "text": long}]},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Summarise it."},
        ]});
        let request = ChatRequest::parse(body.to_string().as_bytes()).unwrap();
        let text = text_for_scoring(&request);
        assert!(text.len() <= SCORED_TEXT_MAX_BYTES && text.len() > SCORED_TEXT_MAX_BYTES - 4);
        assert!(text.starts_with("Read this:\nEst-ce"));
        let features = Features::extract(&request, &text);
        let user_text = format!("Read this:\n{long}\nSummarise it.");
        assert_eq!(features.text_tokens_estimate, estimate_tokens(&user_text));
        assert_eq!(features.chars, user_text.chars().count() as u64);
        let all_text = format!("Be brief.\nRead this:\n{long}\nDone.\nSummarise it.");
        assert_eq!(features.prompt_tokens_estimate, estimate_tokens(&all_text) + 4 * 4);
        assert_eq!(features.turns, 2);
    }

    #[test]
    fn the_estimate_is_about_four_bytes_a_token_for_prose() {
        let prose = "The quick brown fox jumps over the lazy dog and keeps running far away.";
        let estimate = estimate_tokens(prose);
        assert!((15..=22).contains(&estimate), "{estimate}");
    }
}
