//! Tool calls in the words a model was trained to write them, and back.
//!
//! A chat template that offers tools shows the model one format for its
//! calls; the format is read off the template's text ([`ToolFormat::of_template`]):
//! - [`ToolFormat::Hermes`] (Qwen2.5, Qwen3): `<tool_call>\n{"name": "f",
//!   "arguments": {...}}\n</tool_call>`, calls one after another on new lines;
//! - [`ToolFormat::QwenXml`] (Qwen3.5, Qwen3-Coder): `<tool_call>\n<function=f>\n
//!   <parameter=p>\nvalue\n</parameter>\n</function>\n</tool_call>`, a string
//!   value as its raw text, any other as JSON;
//! - [`ToolFormat::Llama3Json`] (Llama 3.1-3.3): the answer is one JSON object
//!   `{"name": "f", "parameters": {...}}`.
//!
//! [`call_grammar`] writes the grammar (llguidance's Lark syntax) that holds
//! an answer to that format: free text or calls (`auto`), calls from the
//! first token (`required`, or one named tool), one call or several, each
//! call's arguments valid against its tool's schema. [`CallParser`] reads the
//! answer back as it is generated: text, then each call's name as soon as it
//! is known and its arguments (as a JSON object's text) piece by piece.

use serde_json::{Map, Value, json};

use crate::constraint::laid_out;
use crate::generate::partial_suffix;

/// How a model writes its tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    QwenXml,
    Llama3Json,
}

/// A tool the model may call: its name and the JSON Schema of its arguments
/// (an object schema).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: Value,
}

/// What the answer may or must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallMode {
    /// Text, or calls (the model decides; once it opens a call, the call is
    /// held to the tools' schemas).
    Auto,
    /// Calls only, from the first token.
    Required,
    /// Calls of this one tool only, from the first token.
    Named(String),
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const PARAMETER_END: &str = "\n</parameter>";

impl ToolFormat {
    /// The format a chat template shows its model, if it offers tools at all.
    pub fn of_template(source: &str) -> Option<ToolFormat> {
        if source.contains("<function=") && source.contains("<parameter=") {
            Some(ToolFormat::QwenXml)
        } else if source.contains(OPEN) {
            Some(ToolFormat::Hermes)
        } else if source.contains("\"parameters\": ") && source.contains("tools") {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::QwenXml => "qwen-xml",
            ToolFormat::Llama3Json => "llama3-json",
        }
    }

    /// Whether the format has room for several calls in one answer.
    pub fn parallel(self) -> bool {
        !matches!(self, ToolFormat::Llama3Json)
    }
}

/// A Lark string literal for `text`.
fn literal(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// A `%json` body: the schema, with the JSON's layout fixed (see [`laid_out`]).
fn json_rule(schema: &Value) -> String {
    format!("%json {}", laid_out(schema.clone()))
}

/// The object schema of a call as Hermes and Llama 3 write it: the name,
/// then its arguments under `arguments_key`.
fn call_schema(tool: &ToolSpec, arguments_key: &str) -> Value {
    json!({
        "type": "object",
        "properties": { "name": { "const": tool.name }, arguments_key: tool.parameters },
        "required": ["name", arguments_key],
        "additionalProperties": false,
    })
}

/// The grammar that holds an answer to `format` with `tools` under `mode`;
/// `parallel`: several calls may follow one another. The tools are those the
/// client offered; a `Named` tool must be among them. An error names a
/// schema keyword the format cannot hold a value to (the JSON inside the
/// grammar is checked when it is compiled).
pub fn call_grammar(format: ToolFormat, tools: &[ToolSpec], mode: &CallMode, parallel: bool) -> Result<String, String> {
    let offered: Vec<&ToolSpec> = match mode {
        CallMode::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        _ => tools.iter().collect(),
    };
    let parallel = parallel && format.parallel();
    let mut lark = String::from("%llguidance {}\n");
    match format {
        ToolFormat::Llama3Json => {
            let schemas: Vec<Value> = offered.iter().map(|t| call_schema(t, "parameters")).collect();
            lark.push_str(match mode {
                CallMode::Auto => "start: TEXT | call\nTEXT: /[^{](.|\\n)*/\n",
                _ => "start: call\n",
            });
            lark.push_str(&format!("call: {}\n", json_rule(&json!({ "anyOf": schemas }))));
        }
        ToolFormat::Hermes | ToolFormat::QwenXml => {
            lark.push_str(match mode {
                CallMode::Auto => {
                    "start: TEXT | head call more\nhead[lazy]: /(.|\\n)*<tool_call>/\nTEXT: /(.|\\n)+/ & ~/(.|\\n)*<tool_call>(.|\\n)*/\n"
                }
                _ => "start: \"<tool_call>\" call more\n",
            });
            lark.push_str(if parallel {
                "more: (\"\\n<tool_call>\" call)*\n"
            } else {
                "more: \"\"\n"
            });
            if format == ToolFormat::Hermes {
                let schemas: Vec<Value> = offered.iter().map(|t| call_schema(t, "arguments")).collect();
                lark.push_str("call: \"\\n\" body \"\\n</tool_call>\"\n");
                lark.push_str(&format!("body: {}\n", json_rule(&json!({ "anyOf": schemas }))));
            } else {
                let functions: Vec<String> = (0..offered.len()).map(|i| format!("f{i}")).collect();
                lark.push_str(&format!(
                    "call: \"\\n<function=\" ({}) \"</function>\\n</tool_call>\"\n",
                    functions.join(" | ")
                ));
                for (i, tool) in offered.iter().enumerate() {
                    xml_function(&mut lark, i, tool)?;
                }
            }
        }
    }
    Ok(lark)
}

/// One tool's rules in the XML format: its name, then its parameters in
/// the schema's order (the required ones present, the others optional).
fn xml_function(lark: &mut String, i: usize, tool: &ToolSpec) -> Result<(), String> {
    let empty = Map::new();
    let properties = tool.parameters["properties"].as_object().unwrap_or(&empty);
    let required: Vec<&str> = tool.parameters["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut body = vec![literal(&format!("{}>\n", tool.name))];
    for (j, (name, schema)) in properties.iter().enumerate() {
        let rule = format!("p{i}_{j}");
        body.push(if required.contains(&name.as_str()) {
            rule.clone()
        } else {
            format!("{rule}?")
        });
        let open = literal(&format!("<parameter={name}>\n"));
        match string_values(schema) {
            StringValue::Free => {
                if let Some(keyword) = ["pattern", "format"].into_iter().find(|k| schema.get(*k).is_some()) {
                    return Err(format!(
                        "the '{keyword}' keyword of parameter '{name}' of function '{}' is not supported: the model writes a string parameter as raw text",
                        tool.name
                    ));
                }
                // Raw text up to the first `\n</parameter>`, within the
                // schema's length bounds (in characters, as JSON Schema counts).
                let bound = |key: &str| schema[key].as_u64();
                let count = match (bound("minLength"), bound("maxLength")) {
                    (None, None) => "*".to_string(),
                    (min, max) => format!(
                        "{{{},{}}}",
                        min.unwrap_or(0),
                        max.map_or(String::new(), |m| m.to_string())
                    ),
                };
                lark.push_str(&format!("{rule}: {open} v{i}_{j} \"\\n\"\n"));
                lark.push_str(&format!("v{i}_{j}[lazy]: /(.|\\n){count}\\n<\\/parameter>/\n"));
            }
            StringValue::OneOf(values) => {
                let values: Vec<String> = values.iter().map(|v| literal(v)).collect();
                lark.push_str(&format!(
                    "{rule}: {open} ({}) \"\\n</parameter>\\n\"\n",
                    values.join(" | ")
                ));
            }
            StringValue::NotString => {
                lark.push_str(&format!("{rule}: {open} v{i}_{j} \"\\n</parameter>\\n\"\n"));
                lark.push_str(&format!("v{i}_{j}: {}\n", json_rule(schema)));
            }
        }
    }
    lark.push_str(&format!("f{i}: {}\n", body.join(" ")));
    Ok(())
}

enum StringValue {
    /// Any text.
    Free,
    /// One of these strings.
    OneOf(Vec<String>),
    /// Not a string: JSON text.
    NotString,
}

/// How a parameter's value is written in the XML format: a string schema's
/// value as raw text (one of its `enum`/`const` values when it has them; its
/// `minLength`/`maxLength` hold, its `pattern` and `format` do not), anything
/// else as JSON.
fn string_values(schema: &Value) -> StringValue {
    let strings = |values: &[Value]| {
        values
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
    };
    if let Some(Some(values)) = schema["enum"].as_array().map(|v| strings(v)) {
        return StringValue::OneOf(values);
    }
    if let Value::String(value) = &schema["const"] {
        return StringValue::OneOf(vec![value.clone()]);
    }
    if schema["type"] == "string" {
        StringValue::Free
    } else {
        StringValue::NotString
    }
}

/// A piece of an answer read by [`CallParser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Plain text of the answer.
    Text(String),
    /// Call number `index` (from 0) opens: its tool's name.
    Call { index: usize, name: String },
    /// More of call `index`'s arguments (a JSON object's text, in order).
    Arguments { index: usize, text: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Plain text, watching for a call to open.
    Text,
    /// Inside a call, before its name is known.
    Head,
    /// Hermes and Llama 3: the arguments object, up to the call's end.
    Arguments { sent: usize },
    /// XML: between parameters.
    Parameters { first: bool },
    /// XML: a parameter's value.
    Value { string: bool, sent: usize },
    /// XML: after `</function>`, before the call's end tag.
    Closing,
    /// After a call ends.
    After,
}

/// Reads an answer in a [`ToolFormat`] as it comes: feed it text with
/// [`CallParser::push`], then [`CallParser::finish`].
#[derive(Debug, Clone)]
pub struct CallParser {
    format: ToolFormat,
    /// Parameters of each tool whose values are strings (XML format).
    string_parameters: Vec<(String, Vec<String>)>,
    state: State,
    /// Text not yet accounted for.
    held: String,
    /// Calls opened so far.
    calls: usize,
    /// The current call's tool.
    tool: String,
}

impl CallParser {
    pub fn new(format: ToolFormat, tools: &[ToolSpec]) -> CallParser {
        let string_parameters = tools
            .iter()
            .map(|tool| {
                let names = tool.parameters["properties"]
                    .as_object()
                    .map(|properties| {
                        properties
                            .iter()
                            .filter(|(_, schema)| !matches!(string_values(schema), StringValue::NotString))
                            .map(|(name, _)| name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                (tool.name.clone(), names)
            })
            .collect();
        CallParser {
            format,
            string_parameters,
            state: State::Text,
            held: String::new(),
            calls: 0,
            tool: String::new(),
        }
    }

    /// Calls opened so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads `text`, returning what it completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out, false) {}
        out
    }

    /// The end of the answer: whatever is held is final. A call cut off before
    /// its name is known comes back as the text it was.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        while self.step(&mut out, true) {}
        let held = std::mem::take(&mut self.held);
        match std::mem::replace(&mut self.state, State::After) {
            State::Head if self.format == ToolFormat::Llama3Json => out.push(Piece::Text(held)),
            State::Head => out.push(Piece::Text(format!("{OPEN}{held}"))),
            State::Arguments { sent } => {
                let index = self.calls - 1;
                let rest = held.get(sent..).unwrap_or("").trim_end();
                // A Llama 3 call ends with the answer: its object's `}` is
                // last. A call cut off may end in part of its end tag, after
                // its object's `}`.
                let rest = match self.format {
                    ToolFormat::Llama3Json => rest.strip_suffix('}').unwrap_or(rest).trim_end(),
                    _ => match partial_suffix(rest, CLOSE) {
                        0 => rest,
                        n => {
                            let rest = rest[..rest.len() - n].trim_end();
                            rest.strip_suffix('}').unwrap_or(rest)
                        }
                    },
                };
                if !rest.is_empty() {
                    out.push(Piece::Arguments {
                        index,
                        text: rest.to_string(),
                    });
                }
            }
            State::Value { string, sent } => {
                let index = self.calls - 1;
                let rest = held.get(sent..).unwrap_or("");
                // Cut off inside its end tag: the tag is not the value's.
                let rest = &rest[..rest.len() - partial_suffix(rest, PARAMETER_END)];
                out.push(Piece::Arguments {
                    index,
                    text: format!("{}{}}}", value_text(rest, string), if string { "\"" } else { "" }),
                });
            }
            State::Parameters { first } => out.push(Piece::Arguments {
                index: self.calls - 1,
                text: if first { "{}" } else { "}" }.into(),
            }),
            State::Text | State::After | State::Closing if !held.is_empty() => out.push(Piece::Text(held)),
            State::Text | State::After | State::Closing => {}
        }
        out
    }

    fn open_call(&mut self, name: String, out: &mut Vec<Piece>) {
        self.tool = name.clone();
        out.push(Piece::Call {
            index: self.calls,
            name,
        });
        self.calls += 1;
    }

    /// One move of the reader; `false` when it needs more text.
    fn step(&mut self, out: &mut Vec<Piece>, end: bool) -> bool {
        match self.state.clone() {
            State::Text if self.format == ToolFormat::Llama3Json => {
                let start = self.held.trim_start();
                if start.starts_with('{') {
                    self.held = start.to_string();
                    self.state = State::Head;
                    return true;
                }
                if start.is_empty() {
                    return false;
                }
                out.push(Piece::Text(std::mem::take(&mut self.held)));
                // Text first: the answer is text.
                self.state = State::After;
                false
            }
            State::Text => {
                if let Some(at) = self.held.find(OPEN) {
                    let text: String = self.held.drain(..at + OPEN.len()).collect();
                    let text = &text[..at];
                    if !text.is_empty() {
                        out.push(Piece::Text(text.to_string()));
                    }
                    self.state = State::Head;
                    return true;
                }
                let keep = if end { 0 } else { partial_suffix(&self.held, OPEN) };
                let cut = self.held.len() - keep;
                if cut > 0 {
                    out.push(Piece::Text(self.held.drain(..cut).collect()));
                }
                false
            }
            State::Head => self.head(out),
            State::Arguments { sent: 0 } if self.held.starts_with(char::is_whitespace) => {
                self.held = self.held.trim_start().to_string();
                true
            }
            State::Arguments { sent } => {
                let index = self.calls - 1;
                let close = match self.format {
                    ToolFormat::Llama3Json => None,
                    _ => self.held.find(CLOSE),
                };
                if let Some(at) = close {
                    // The call's object closes just before its end tag.
                    let body = self.held[..at].trim_end();
                    let body = body.strip_suffix('}').unwrap_or(body).trim_end();
                    if body.len() > sent {
                        out.push(Piece::Arguments {
                            index,
                            text: body[sent..].to_string(),
                        });
                    }
                    self.held.drain(..at + CLOSE.len());
                    self.state = State::After;
                    return true;
                }
                // Hold back from the last `}` while what follows it may be the
                // call's end (the object's own `}` comes just before it).
                let safe = match self.held.rfind('}') {
                    Some(brace) if self.held[brace + 1..].trim_start().len() < CLOSE.len() => {
                        let after = self.held[brace + 1..].trim_start();
                        if CLOSE.starts_with(after) {
                            brace
                        } else {
                            self.held.len()
                        }
                    }
                    _ => self.held.len(),
                };
                let safe = floor_char_boundary(&self.held, safe);
                if safe > sent {
                    out.push(Piece::Arguments {
                        index,
                        text: self.held[sent..safe].to_string(),
                    });
                    self.state = State::Arguments { sent: safe };
                }
                false
            }
            State::Parameters { first } => {
                let index = self.calls - 1;
                let start = self.held.trim_start();
                if let Some(rest) = start.strip_prefix("<parameter=") {
                    let Some(close) = rest.find('>') else { return false };
                    let name = rest[..close].to_string();
                    let rest = &rest[close + 1..];
                    if rest.is_empty() && !end {
                        // The line break that opens the value is still to come.
                        return false;
                    }
                    let rest = rest.strip_prefix('\n').unwrap_or(rest).to_string();
                    let string = self
                        .string_parameters
                        .iter()
                        .find(|(tool, _)| tool == &self.tool)
                        .is_none_or(|(_, strings)| strings.contains(&name));
                    out.push(Piece::Arguments {
                        index,
                        text: format!(
                            "{}{}: {}",
                            if first { "{" } else { ", " },
                            literal(&name),
                            if string { "\"" } else { "" }
                        ),
                    });
                    self.held = rest;
                    self.state = State::Value { string, sent: 0 };
                    return true;
                }
                if let Some(rest) = start.strip_prefix("</function>") {
                    out.push(Piece::Arguments {
                        index,
                        text: if first { "{}" } else { "}" }.into(),
                    });
                    self.held = rest.to_string();
                    self.state = State::Closing;
                    return true;
                }
                false
            }
            State::Closing => {
                let start = self.held.trim_start();
                if let Some(rest) = start.strip_prefix(CLOSE) {
                    self.held = rest.to_string();
                } else if !end && CLOSE.starts_with(start) {
                    return false;
                }
                self.state = State::After;
                true
            }
            State::Value { string, sent } => {
                let index = self.calls - 1;
                if let Some(at) = self.held.find(PARAMETER_END) {
                    out.push(Piece::Arguments {
                        index,
                        text: format!(
                            "{}{}",
                            value_text(&self.held[sent..at], string),
                            if string { "\"" } else { "" }
                        ),
                    });
                    self.held.drain(..at + PARAMETER_END.len());
                    self.state = State::Parameters { first: false };
                    return true;
                }
                let safe = self.held.len() - partial_suffix(&self.held, PARAMETER_END);
                if safe > sent {
                    out.push(Piece::Arguments {
                        index,
                        text: value_text(&self.held[sent..safe], string),
                    });
                    self.state = State::Value { string, sent: safe };
                }
                false
            }
            State::After => {
                let start = self.held.trim_start();
                if start.is_empty() {
                    return false;
                }
                if self.format != ToolFormat::Llama3Json && start.starts_with(OPEN) {
                    self.held = start[OPEN.len()..].to_string();
                    self.state = State::Head;
                    return true;
                }
                if !end && self.format != ToolFormat::Llama3Json && OPEN.starts_with(start) {
                    return false;
                }
                out.push(Piece::Text(std::mem::take(&mut self.held)));
                false
            }
        }
    }

    /// Inside a call: its name, once it is known.
    fn head(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.format {
            ToolFormat::QwenXml => {
                let start = self.held.trim_start();
                let Some(rest) = start.strip_prefix("<function=") else {
                    return false;
                };
                let Some(close) = rest.find('>') else { return false };
                let name = rest[..close].to_string();
                let rest = rest[close + 1..].to_string();
                self.held = rest;
                self.open_call(name, out);
                self.state = State::Parameters { first: true };
                true
            }
            ToolFormat::Hermes | ToolFormat::Llama3Json => {
                let key = match self.format {
                    ToolFormat::Hermes => "\"arguments\":",
                    _ => "\"parameters\":",
                };
                let Some(at) = self.held.find(key) else { return false };
                // `{"name": "f", ` closed into an object of its own.
                let head = self.held[..at].trim().trim_end_matches(',');
                let Some(name) = serde_json::from_str::<Value>(&format!("{head}}}"))
                    .ok()
                    .and_then(|head| head["name"].as_str().map(str::to_string))
                else {
                    return false;
                };
                let rest = self.held[at + key.len()..].trim_start().to_string();
                self.held = rest;
                self.open_call(name, out);
                self.state = State::Arguments { sent: 0 };
                true
            }
        }
    }
}

/// A value's text as it goes into the arguments object: a string's escaped
/// (without its quotes), anything else as written.
fn value_text(text: &str, string: bool) -> String {
    if string {
        let quoted = serde_json::to_string(text).expect("a string serializes");
        quoted[1..quoted.len() - 1].to_string()
    } else {
        text.to_string()
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "get_weather".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                    },
                    "required": ["city"],
                }),
            },
            ToolSpec {
                name: "now".into(),
                parameters: json!({"type": "object", "properties": {}}),
            },
        ]
    }

    /// Feeds `text` in pieces of `n` bytes (on character boundaries) and
    /// gathers what the parser reads: text, and each call's name and arguments.
    fn read(format: ToolFormat, text: &str, n: usize) -> (String, Vec<(String, String)>) {
        let mut parser = CallParser::new(format, &weather());
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let cut = floor_char_boundary(rest, n.min(rest.len())).max(rest.chars().next().unwrap().len_utf8());
            pieces.extend(parser.push(&rest[..cut]));
            rest = &rest[cut..];
        }
        pieces.extend(parser.finish());
        let mut text = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => text.push_str(&t),
                Piece::Call { index, name } => {
                    assert_eq!(index, calls.len());
                    calls.push((name, String::new()));
                }
                Piece::Arguments { index, text } => calls[index].1.push_str(&text),
            }
        }
        (text, calls)
    }

    #[test]
    fn hermes_calls_read_the_same_whatever_the_pieces() {
        let answer = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris {x}\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        for n in [1, 2, 3, 7, 1000] {
            let (text, calls) = read(ToolFormat::Hermes, answer, n);
            assert_eq!(text, "Let me look.\n", "pieces of {n}");
            assert_eq!(
                calls,
                [
                    ("get_weather".into(), "{\"city\": \"Paris {x}\", \"days\": 2}".into()),
                    ("now".into(), "{}".into())
                ],
                "pieces of {n}"
            );
        }
    }

    #[test]
    fn xml_calls_become_json_arguments() {
        let answer = "<tool_call>\n<function=get_weather>\n<parameter=city>\nSão \"Paulo\"\nnorth\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=now>\n</function>\n</tool_call>";
        for n in [1, 2, 5, 1000] {
            let (text, calls) = read(ToolFormat::QwenXml, answer, n);
            assert_eq!(text, "", "pieces of {n}");
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[0].0, "get_weather");
            let arguments: Value = serde_json::from_str(&calls[0].1).unwrap();
            assert_eq!(
                arguments,
                json!({"city": "São \"Paulo\"\nnorth", "days": 3}),
                "pieces of {n}"
            );
            assert_eq!(calls[1], ("now".into(), "{}".into()));
        }
    }

    #[test]
    fn llama3_answers_are_a_call_or_text() {
        let (text, calls) = read(
            ToolFormat::Llama3Json,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
            3,
        );
        assert_eq!(
            (text.as_str(), calls),
            ("", vec![("get_weather".into(), "{\"city\": \"Oslo\"}".into())])
        );
        let (text, calls) = read(ToolFormat::Llama3Json, "It is {sunny}.", 3);
        assert_eq!((text.as_str(), calls.len()), ("It is {sunny}.", 0));
    }

    #[test]
    fn text_that_only_looks_like_a_call_stays_text() {
        let (text, calls) = read(ToolFormat::Hermes, "a <tool_ca b", 1);
        assert_eq!((text.as_str(), calls.len()), ("a <tool_ca b", 0));
        // Cut off before the name: the text it was.
        let (text, calls) = read(ToolFormat::Hermes, "<tool_call>\n{\"na", 2);
        assert_eq!((text.as_str(), calls.len()), ("<tool_call>\n{\"na", 0));
    }

    #[test]
    fn formats_are_read_off_the_templates() {
        assert_eq!(
            ToolFormat::of_template("{{- '<tool_call>\\n{\"name\": ' }}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::of_template("<tool_call>\\n<function=x>\\n<parameter=y>"),
            Some(ToolFormat::QwenXml)
        );
        assert_eq!(
            ToolFormat::of_template("{% if tools %}{\"name\": function name, \"parameters\": dictionary"),
            Some(ToolFormat::Llama3Json)
        );
        assert_eq!(ToolFormat::of_template("{{ messages }}"), None);
    }
}
