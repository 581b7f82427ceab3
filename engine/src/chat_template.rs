//! Rendering a model's Hugging Face chat template (Jinja) into its prompt text.
//!
//! Models ship their prompt format as a Jinja2 template (`tokenizer.chat_template` in a
//! GGUF, `chat_template` in tokenizer_config.json). HF transformers renders it with
//! Jinja2; we render it with minijinja, set up to give the same bytes:
//!
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the source
//!   dropped, `{% break %}`/`{% continue %}` available: transformers' Jinja2 settings.
//! - The variables transformers passes: `messages`, `tools` and `documents` (none when
//!   absent), `add_generation_prompt`, `bos_token`, `eos_token`, then any extra kwargs
//!   (`enable_thinking`, ...), which may override the token variables but not the first four.
//! - `raise_exception(msg)`, which templates call to refuse a conversation; it surfaces
//!   as [`TemplateError::Raised`] so the caller can answer 400 rather than 500.
//! - `tojson` as transformers defines it: `json.dumps` with `ensure_ascii=False` and
//!   Python's separators (`", "`, `": "`), keys in the order given, no HTML escaping
//!   (Jinja2's and minijinja's own `tojson` escape `<`, `>`, `&`, `'`).
//! - Python's method names on strings and dicts (`.strip()`, `.startswith()`,
//!   `.split()`, `.items()`, ...) from minijinja-contrib's pycompat, and Python's
//!   spelling of values when printed or passed to `|string` (`True`, `None`,
//!   `{'a': 1}`), where minijinja would write `true`, `none`, `{"a": 1}`.
//! - Jinja2's `is sequence`, true for strings and dicts as well as lists.
//! - `strftime_now(format)` (Llama 3.x templates print today's date), in UTC.
//! - `{% generation %}` blocks (transformers' assistant-mask extension) render their body.
//!
//! One deliberate difference: OpenAI clients may send `content` as a list of
//! `{"type": "text", "text": ...}` parts. Templates that iterate over content handle
//! that themselves; for a template that never loops over content (SmolLM2's, Qwen3's:
//! they concatenate it as a string, which would fail), text-only part lists are joined
//! with "\n" into one string first, as vLLM does.

use std::fmt::{self, Write as _};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::tool_calls::ToolFormat;

const TEMPLATE_NAME: &str = "chat_template";

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// The template source is not valid Jinja (a problem with the model file).
    Syntax { line: Option<usize>, message: String },
    /// The template called `raise_exception`: it refuses this conversation (a problem
    /// with the request, e.g. roles that do not alternate).
    Raised { message: String },
    /// Rendering failed otherwise (a template feature we lack, or a value of a type the
    /// template does not expect).
    Render { line: Option<usize>, message: String },
    /// The arguments are not what a chat template takes (e.g. `messages` not a list).
    InvalidInput(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |line: &Option<usize>| line.map(|l| format!(" at line {l}")).unwrap_or_default();
        match self {
            TemplateError::Syntax { line, message } => write!(f, "chat template syntax error{}: {message}", at(line)),
            TemplateError::Raised { message } => write!(f, "chat template rejected the conversation: {message}"),
            TemplateError::Render { line, message } => write!(f, "chat template failed{}: {message}", at(line)),
            TemplateError::InvalidInput(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Marks an error as thrown by the template's own `raise_exception`.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template loops over message content, i.e. understands content part lists.
    iterates_content: bool,
    /// How the template shows its model to write tool calls, if it offers tools.
    tool_format: Option<ToolFormat>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("iterates_content", &self.iterates_content)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a template. Syntax errors are reported with their line.
    pub fn new(source: &str) -> Result<ChatTemplate, TemplateError> {
        let source = strip_generation_tags(source);
        let iterates_content = loops_over_content(&source);
        let tool_format = ToolFormat::of_template(&source);

        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .expect("default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, state, value| match python_spelling(value) {
            Some(text) => out.write_str(&text).map_err(Error::from),
            None => minijinja::escape_formatter(out, state, value),
        });
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("string", |value: &Value| python_str(value));
        // Jinja2's `sequence` is "has a length and an index": strings and dicts too.
        env.add_test("sequence", |value: &Value| {
            value.is_undefined() || matches!(value.kind(), ValueKind::Seq | ValueKind::Map | ValueKind::String)
        });
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| TemplateError::Syntax {
                line: e.line(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            iterates_content,
            tool_format,
        })
    }

    /// How the model writes tool calls; `None` when the template offers no tools.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// Renders the prompt for `messages` (a JSON list of `{role, content, ...}` objects,
    /// passed to the template as given apart from the content-parts rule in the module
    /// docs). `extra` holds further template variables: `tools`, `enable_thinking`, ...
    pub fn render(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        let messages = messages
            .as_array()
            .ok_or_else(|| TemplateError::InvalidInput("messages must be a list".to_string()))?;
        let messages: Vec<serde_json::Value> = if self.iterates_content {
            messages.clone()
        } else {
            messages.iter().map(join_text_parts).collect()
        };

        let mut context = serde_json::Map::new();
        context.insert("tools".into(), serde_json::Value::Null);
        context.insert("documents".into(), serde_json::Value::Null);
        context.insert("bos_token".into(), bos_token.into());
        context.insert("eos_token".into(), eos_token.into());
        for (key, value) in extra {
            context.insert(key.clone(), value.clone());
        }
        context.insert("messages".into(), messages.into());
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());

        let template = self.env.get_template(TEMPLATE_NAME).expect("added in new()");
        template
            .render(Value::from(Serde(&context)))
            .map_err(|e| match raised_message(&e) {
                Some(message) => TemplateError::Raised { message },
                None => TemplateError::Render {
                    line: e.line(),
                    message: describe(&e),
                },
            })
    }
}

fn describe(error: &Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

fn raised_message(error: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(err) = source {
        if let Some(raised) = err.downcast_ref::<RaisedByTemplate>() {
            return Some(raised.0.clone());
        }
        source = err.source();
    }
    None
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedByTemplate(message)))
}

/// `{% generation %}` … `{% endgeneration %}` mark the assistant's tokens for training
/// masks in transformers; for a prompt they are transparent. minijinja has no custom
/// tags, so they become `{% if true %}` … `{% endif %}`, whitespace control kept.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else { break };
        let tag = &rest[start..start + len + 2];
        out.push_str(&rest[..start]);
        let inner = &tag[2..tag.len() - 2];
        let open_ws = if inner.starts_with(['-', '+']) { &inner[..1] } else { "" };
        let close_ws = if inner.ends_with(['-', '+']) && inner.len() > open_ws.len() {
            &inner[inner.len() - 1..]
        } else {
            ""
        };
        let word = inner[open_ws.len()..inner.len() - close_ws.len()].trim();
        match word {
            "generation" => write!(out, "{{%{open_ws} if true {close_ws}%}}").expect("String"),
            "endgeneration" => write!(out, "{{%{open_ws} endif {close_ws}%}}").expect("String"),
            _ => out.push_str(tag),
        }
        rest = &rest[start + tag.len()..];
    }
    out.push_str(rest);
    out
}

/// Whether some `{% for … in … %}` iterates over an expression naming `content`: the
/// sign that the template handles content as a list of parts.
fn loops_over_content(source: &str) -> bool {
    source
        .split("{%")
        .skip(1)
        .filter_map(|block| block.split("%}").next())
        .any(|tag| {
            let tag = tag.trim_matches(['-', '+']).trim();
            tag.strip_prefix("for ")
                .and_then(|rest| rest.split_once(" in "))
                .is_some_and(|(_, iterable)| iterable.contains("content"))
        })
}

/// A message whose content is a list of text parts, with the texts joined into one string.
/// Lists holding anything else (images) are left alone for the template to accept or refuse.
fn join_text_parts(message: &serde_json::Value) -> serde_json::Value {
    let Some(parts) = message.get("content").and_then(|c| c.as_array()) else {
        return message.clone();
    };
    let texts: Option<Vec<&str>> = parts
        .iter()
        .map(|part| {
            match (
                part.get("type").and_then(|t| t.as_str()),
                part.get("text").and_then(|t| t.as_str()),
            ) {
                (Some("text"), Some(text)) => Some(text),
                _ => None,
            }
        })
        .collect();
    match texts {
        Some(texts) => {
            let mut message = message.clone();
            message["content"] = texts.join("\n").into();
            message
        }
        None => message.clone(),
    }
}

// ---- Python's spelling of values ----

/// How Jinja2 prints a value where Python's `str()` differs from minijinja's; `None`
/// for values both print alike (strings, integers, undefined).
fn python_spelling(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => Some(python_repr(value)),
        ValueKind::Number if !value.is_integer() => Some(python_repr(value)),
        _ => None,
    }
}

/// Python's `str(value)`: strings as they are, everything else as `repr`.
fn python_str(value: &Value) -> Value {
    match value.kind() {
        ValueKind::String => value.clone(),
        ValueKind::Undefined => Value::from(""),
        _ => Value::from(python_spelling(value).unwrap_or_else(|| value.to_string())),
    }
}

/// Python's `repr(value)` for the values JSON and templates produce.
fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => "None".to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => python_float(f64::try_from(value.clone()).unwrap_or(f64::NAN), false),
        ValueKind::String => python_string_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| it.map(|v| python_repr(&v)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .map(|keys| {
                    keys.map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_repr(&k), python_repr(&v))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

fn python_string_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => write!(out, "\\x{:02x}", c as u32).expect("String"),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's float repr: shortest round-trip digits, positional for decimal exponents
/// -4..16 (always with a fractional part, "1.0"), else scientific ("1e-05", "1e+16").
/// In JSON, non-finite values are spelled as `json.dumps` does ("NaN", "Infinity").
fn python_float(x: f64, json: bool) -> String {
    if x.is_nan() {
        return if json { "NaN" } else { "nan" }.to_string();
    }
    if x.is_infinite() {
        let sign = if x < 0.0 { "-" } else { "" };
        return format!("{sign}{}", if json { "Infinity" } else { "inf" });
    }
    let sci = format!("{x:e}"); // shortest round-trip digits: "-1.25e-7"
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{sign}{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{first}{rest}e{exp_sign}{:02}", exponent.abs())
    }
}

// ---- tojson ----

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, arguments by keyword or (the first two) by position.
fn tojson(value: &Value, ensure_ascii: Option<Value>, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii = match ensure_ascii {
        Some(v) => v.is_true(),
        None => kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => {
            Some(" ".repeat(usize::try_from(v).map_err(|_| bad_argument("indent must be a count or a string"))?))
        }
    };
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let items: Vec<Value> = v.try_iter()?.collect();
            match items.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
                    Some((item.as_str().unwrap().to_string(), key.as_str().unwrap().to_string()))
                }
                _ => return Err(bad_argument("separators must be two strings")),
            }
        }
        _ => None,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;

    // Python's defaults: compact on one line without indent, "," at line ends with it.
    let (item_separator, key_separator) =
        separators.unwrap_or_else(|| (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()));
    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_separator,
        key_separator,
        sort_keys,
    };
    let mut out = String::new();
    style.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

fn bad_argument(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {message}"))
}

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => out.push_str(&python_float(f64::try_from(value.clone())?, true)),
            ValueKind::String => self.write_string(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, ('[', ']'), &items, depth, |out, item| {
                    self.write(out, item, depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, ('{', '}'), &entries, depth, |out, (key, item)| {
                    self.write_string(out, key);
                    out.push_str(&self.key_separator);
                    self.write(out, item, depth + 1)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    fn write_container<T>(
        &self,
        out: &mut String,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |depth: usize| self.indent.as_ref().map(|unit| format!("\n{}", unit.repeat(depth)));
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_separator);
            }
            if let Some(line) = newline(depth + 1) {
                out.push_str(&line);
            }
            write_item(out, item)?;
        }
        if let Some(line) = newline(depth) {
            out.push_str(&line);
        }
        out.push(close);
        Ok(())
    }

    fn write_string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).expect("String"),
                c if self.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        write!(out, "\\u{unit:04x}").expect("String");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// JSON object keys as Python writes them: strings as they are, numbers and
/// constants in their JSON spelling.
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
        ValueKind::None => "null".to_string(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => python_float(f64::try_from(key.clone())?, true),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be strings, not {kind}"),
            ));
        }
    })
}

// ---- strftime_now ----

/// Python's `datetime.now().strftime(format)` for the directives templates use, in UTC.
/// Unknown directives are kept as written.
fn strftime_now(format: String) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, seconds)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn strftime(format: &str, unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[month as usize - 1];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match directive {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'j' => write!(out, "{day_of_year:03}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", (hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'B' => write!(out, "{month_name}"),
            'b' => write!(out, "{}", &month_name[..3]),
            'A' => write!(out, "{}", WEEKDAYS[weekday]),
            'a' => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian
/// (H. Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, messages: serde_json::Value) -> Result<String, TemplateError> {
        ChatTemplate::new(source)?.render(&messages, false, "<s>", "</s>", &serde_json::Map::new())
    }

    fn render_value(source: &str, value: serde_json::Value) -> String {
        let mut extra = serde_json::Map::new();
        extra.insert("x".into(), value);
        ChatTemplate::new(source)
            .unwrap()
            .render(&json!([]), false, "", "", &extra)
            .unwrap()
    }

    #[test]
    fn a_template_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ChatTemplate>();
    }

    #[test]
    fn tojson_writes_python_json_dumps() {
        let value = json!({"b": [1, 2.5, true, null], "a": "é\"<>&'\n"});
        assert_eq!(
            render_value("{{ x | tojson }}", value.clone()),
            r#"{"b": [1, 2.5, true, null], "a": "é\"<>&'\n"}"#
        );
        assert_eq!(
            render_value("{{ x | tojson(sort_keys=true) }}", value.clone()),
            r#"{"a": "é\"<>&'\n", "b": [1, 2.5, true, null]}"#
        );
        assert_eq!(
            render_value("{{ x | tojson(ensure_ascii=true) }}", json!("é😀")),
            r#""\u00e9\ud83d\ude00""#
        );
        assert_eq!(
            render_value("{{ x | tojson(indent=2) }}", json!({"a": [1], "b": {}})),
            "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}"
        );
        assert_eq!(
            render_value("{{ x | tojson(separators=(',', ':')) }}", json!({"a": [1, 2]})),
            r#"{"a":[1,2]}"#
        );
    }

    #[test]
    fn floats_are_spelled_as_python_spells_them() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (-0.0001, "-0.0001"),
            (2.5e-7, "2.5e-07"),
        ];
        for (x, python) in cases {
            assert_eq!(python_float(x, false), python, "{x}");
        }
    }

    #[test]
    fn printed_values_use_python_spelling() {
        assert_eq!(render_value("{{ x }}", json!(true)), "True");
        assert_eq!(render_value("{{ x }}", json!(null)), "None");
        assert_eq!(
            render_value("{{ x }}", json!({"a": ["b", 1, false]})),
            "{'a': ['b', 1, False]}"
        );
        assert_eq!(render_value("{{ x | string }}", json!(false)), "False");
        assert_eq!(render_value("{{ x }}", json!("it's")), "it's");
        assert_eq!(render_value("{{ x | string }}", json!(["it's"])), "[\"it's\"]");
    }

    #[test]
    fn sequence_test_follows_jinja2() {
        let source = "{{ x is sequence }}";
        assert_eq!(render_value(source, json!("abc")), "True");
        assert_eq!(render_value(source, json!({"a": 1})), "True");
        assert_eq!(render_value(source, json!([1])), "True");
        assert_eq!(render_value(source, json!(1)), "False");
    }

    #[test]
    fn python_string_methods_work() {
        assert_eq!(
            render_value("{{ x.strip().split(',')[1].upper() }}", json!("  a,b  ")),
            "B"
        );
        assert_eq!(render_value("{{ x.startswith('<a>') }}", json!("<a>x")), "True");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let err = ChatTemplate::new("line one\n{% if x %}\n{{ y }\n").unwrap_err();
        assert!(matches!(err, TemplateError::Syntax { line: Some(3), .. }), "{err:?}");
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn raise_exception_surfaces_its_message() {
        let err = render("{{ raise_exception('roles must alternate') }}", json!([])).unwrap_err();
        assert_eq!(
            err,
            TemplateError::Raised {
                message: "roles must alternate".into()
            }
        );
    }

    #[test]
    fn raise_exception_inside_a_macro_surfaces_too() {
        let source = "{% macro check(m) %}{% if m.role == 'x' %}{{ raise_exception('bad role ' ~ m.role) }}{% endif %}{% endmacro %}{% for m in messages %}{{ check(m) }}{% endfor %}";
        let err = render(source, json!([{"role": "x", "content": ""}])).unwrap_err();
        assert_eq!(
            err,
            TemplateError::Raised {
                message: "bad role x".into()
            }
        );
    }

    #[test]
    fn blocks_trim_and_lstrip_like_transformers() {
        let source = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(
            render(
                source,
                json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
            )
            .unwrap(),
            "[a]\n[b]\n"
        );
    }

    #[test]
    fn loop_controls_are_available() {
        let source = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
        assert_eq!(
            render(source, json!([{"content": "a"}, {"content": "b"}])).unwrap(),
            "a"
        );
    }

    #[test]
    fn extra_variables_reach_the_template_and_tools_default_to_none() {
        let template =
            ChatTemplate::new("{{ tools is none }} {{ enable_thinking }} {{ bos_token }}{{ eos_token }}").unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), json!(false));
        assert_eq!(
            template.render(&json!([]), false, "<s>", "</s>", &extra).unwrap(),
            "True False <s></s>"
        );
    }

    #[test]
    fn text_parts_are_joined_for_templates_that_do_not_loop_over_content() {
        let messages =
            json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]);
        let concat = "{% for m in messages %}{{ m.role + ': ' + m.content }}{% endfor %}";
        assert_eq!(render(concat, messages.clone()).unwrap(), "user: a\nb");
        let loops = "{% for m in messages %}{% for part in m.content %}({{ part.text }}){% endfor %}{% endfor %}";
        assert_eq!(render(loops, messages).unwrap(), "(a)(b)");
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let source = "{% for m in messages %}{%- generation -%} {{ m.content }} {%- endgeneration %}{% endfor %}";
        assert_eq!(render(source, json!([{"content": "hi"}])).unwrap(), "hi");
    }

    #[test]
    fn messages_must_be_a_list() {
        assert!(matches!(
            render("x", json!({"role": "user"})),
            Err(TemplateError::InvalidInput(_))
        ));
    }

    #[test]
    fn strftime_formats_a_known_instant() {
        // 2024-07-23 14:05:09 UTC, a Tuesday, day 205 of a leap year.
        assert_eq!(
            strftime("%d %b %Y, %A %H:%M:%S %j %I%p %%", 1_721_743_509),
            "23 Jul 2024, Tuesday 14:05:09 205 02PM %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    }
}
