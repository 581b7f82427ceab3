//! Constrained decoding on a tiny random Qwen3 (`fixtures/qwen/qwen3_thinking`):
//! a random model is the hardest case, since only the constraint makes its
//! output valid. Every answer, sampled at temperature 1 with different seeds,
//! must parse and validate against its schema; a schema keyword the compiler
//! does not support is an error that names it.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};
use switchyard_engine::constraint::{Grammar, Grammars};
use switchyard_engine::engine::{LoadOptions, LocalModel};
use switchyard_engine::generate::{FinishReason, GenerationRequest};
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::SamplingParams;
use switchyard_engine::tool_calls::{CallMode, CallParser, Piece, ToolFormat, ToolSpec, call_grammar};

fn model() -> &'static (LocalModel, Grammars) {
    static MODEL: OnceLock<(LocalModel, Grammars)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen/qwen3_thinking");
        let options = LoadOptions {
            quant: Quantization::Keep,
            ..LoadOptions::default()
        };
        let model = LocalModel::load_with(&path, &options).expect("the fixture loads");
        let end = model.tokenizer.end_of_turn_ids()[0];
        let grammars =
            Grammars::new(model.tokenizer.clone(), model.model.vocab_size(), end).expect("the vocabulary builds");
        (model, grammars)
    })
}

/// The answer to a short prompt under `grammar`, sampled with `seed`.
fn answer(grammar: &Grammar, seed: u64) -> (String, FinishReason) {
    answer_with_stops(grammar, seed, Vec::new())
}

fn answer_with_stops(grammar: &Grammar, seed: u64, stop_strings: Vec<String>) -> (String, FinishReason) {
    let (model, grammars) = model();
    let constraint = grammars.constraint(grammar).expect("the grammar compiles");
    let prompt = model
        .tokenizer
        .encode("<|im_start|>user\nJSON please<|im_end|>\n<|im_start|>assistant\n", true)
        .unwrap();
    let request = GenerationRequest {
        prompt_tokens: prompt,
        max_tokens: 400,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        stop_tokens: Vec::new(),
        stop_strings,
        top_logprobs: 0,
        ignore_eos: false,
        deadline: None,
        thinking: None,
        constraint: Some(constraint),
    };
    let output = model
        .generate(&request, |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    (output.text, output.finish_reason)
}

/// A validator for the keywords the schemas below use (a test needs no more,
/// and checking them by hand keeps it independent of the compiler under test).
fn validate(value: &Value, schema: &Value, root: &Value) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{value} against {schema}: {why}"));
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/$defs/");
        return validate(value, &root["$defs"][name], root);
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        return if options.iter().any(|option| validate(value, option, root).is_ok()) {
            Ok(())
        } else {
            fail("no anyOf option")
        };
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return fail("not in enum");
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        return fail("not the const");
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(object) = value.as_object() else {
                return fail("not an object");
            };
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !object.contains_key(required.as_str().unwrap()) {
                    return fail("a required property is missing");
                }
            }
            for (key, item) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => validate(item, property, root)?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return fail("an additional property");
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fail("not an array");
            };
            if number("minItems").is_some_and(|n| (items.len() as f64) < n)
                || number("maxItems").is_some_and(|n| (items.len() as f64) > n)
            {
                return fail("item count out of bounds");
            }
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    validate(item, item_schema, root)?;
                }
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                return fail("not a string");
            };
            let chars = text.chars().count() as f64;
            if number("minLength").is_some_and(|n| chars < n) || number("maxLength").is_some_and(|n| chars > n) {
                return fail("length out of bounds");
            }
            if let Some(format) = schema.get("format").and_then(Value::as_str) {
                let ok = match format {
                    "date" => {
                        let parts: Vec<&str> = text.split('-').collect();
                        parts.len() == 3
                            && parts[0].len() == 4
                            && parts[1].len() == 2
                            && parts[2].len() == 2
                            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit()))
                    }
                    "email" => text.split('@').count() == 2 && !text.starts_with('@') && !text.ends_with('@'),
                    _ => true,
                };
                if !ok {
                    return fail("format");
                }
            }
        }
        Some("integer") | Some("number") => {
            let Some(n) = value.as_f64() else {
                return fail("not a number");
            };
            // JSON Schema's integers are numbers with no fractional part (`-0` and `1.0` are ones).
            if schema["type"] == "integer" && n.fract() != 0.0 {
                return fail("not an integer");
            }
            if number("minimum").is_some_and(|m| n < m)
                || number("maximum").is_some_and(|m| n > m)
                || number("exclusiveMinimum").is_some_and(|m| n <= m)
                || number("exclusiveMaximum").is_some_and(|m| n >= m)
            {
                return fail("out of bounds");
            }
        }
        Some("boolean") if !value.is_boolean() => return fail("not a boolean"),
        Some("null") if !value.is_null() => return fail("not null"),
        _ => {}
    }
    Ok(())
}

fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": "null"}}, "required": ["ok", "note"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3}}, "required": ["tags"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": -1, "exclusiveMaximum": 1}}, "required": ["x"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"mail": {"type": "string", "format": "email", "maxLength": 30}}, "required": ["mail"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 8}}, "required": ["a"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5}, "y": {"type": "integer", "minimum": -5, "maximum": 5}}, "required": ["x", "y"], "additionalProperties": false}}, "required": ["point"], "additionalProperties": false}),
        json!({"anyOf": [{"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["kind", "lives"], "additionalProperties": false}, {"type": "object", "properties": {"kind": {"const": "dog"}, "good": {"type": "boolean"}}, "required": ["kind", "good"], "additionalProperties": false}]}),
        json!({"$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["id", "qty"], "additionalProperties": false}}, "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3}}, "required": ["items"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4}),
        json!({"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 5}}, "required": ["s"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2, 3]}}, "required": ["level"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false}}, "required": ["name", "arguments"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"flag": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}}, "required": ["flag"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"v": {"type": "number", "minimum": 10, "maximum": 20}}, "required": ["v"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}, "maxItems": 2}, "maxItems": 2}}, "required": ["matrix"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"id": {"type": "string", "maxLength": 4}, "opt": {"type": "integer", "minimum": 0, "maximum": 5}}, "required": ["id"], "additionalProperties": false}),
    ]
}

#[test]
fn two_hundred_sampled_answers_over_twenty_schemas_all_parse_and_validate() {
    let schemas = schemas();
    assert_eq!(schemas.len(), 20);
    let mut lengths = Vec::new();
    for (s, schema) in schemas.iter().enumerate() {
        for seed in 0..10 {
            let (text, finish) = answer(&Grammar::JsonSchema(schema.clone()), 1000 * s as u64 + seed);
            assert_eq!(
                finish,
                FinishReason::Stop,
                "schema {s}, seed {seed}: {text:?} did not finish"
            );
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("schema {s}, seed {seed}: {text:?} does not parse: {err}"));
            validate(&value, schema, schema).unwrap_or_else(|why| panic!("schema {s}, seed {seed}: {why}"));
            lengths.push(text.len());
        }
    }
    eprintln!(
        "200 answers, {} to {} bytes",
        lengths.iter().min().unwrap(),
        lengths.iter().max().unwrap()
    );
}

#[test]
fn any_json_object_and_regexes_hold_too() {
    // Any object may hold strings of any length: a random model's can run
    // past max_tokens (cut off, as OpenAI's are with finish_reason "length");
    // every one that finishes must parse, and most must finish.
    let mut finished = 0;
    for seed in 0..10 {
        let (text, finish) = answer(&Grammar::JsonObject, seed);
        if finish == FinishReason::Stop {
            finished += 1;
            // Valid JSON, read without converting its numbers (a random
            // model's can be far past f64's range, as JSON allows).
            serde_json::from_str::<serde::de::IgnoredAny>(&text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
            assert!(text.starts_with('{'), "{text:?}");
        }
        let (text, _) = answer(&Grammar::Regex("[0-9]{3}-[0-9]{4}".into()), seed);
        assert!(
            text.len() == 8
                && text
                    .chars()
                    .enumerate()
                    .all(|(i, c)| if i == 3 { c == '-' } else { c.is_ascii_digit() }),
            "{text:?}"
        );
    }
    assert!(finished >= 5, "{finished} of 10 objects finished");
}

/// Stop strings would only cut a constrained answer short of valid: the
/// grammar decides where it ends.
#[test]
fn stop_strings_do_not_cut_a_constrained_answer() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false});
    for seed in 0..3 {
        let (text, finish) = answer_with_stops(
            &Grammar::JsonSchema(schema.clone()),
            seed,
            vec!["\"".into(), ":".into()],
        );
        assert_eq!(finish, FinishReason::Stop);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
        assert!(
            value["a"].is_i64() || value["a"].is_u64() || value["a"].is_f64(),
            "{text:?}"
        );
    }
}

#[test]
fn an_unsupported_keyword_is_an_error_that_names_it() {
    let (_, grammars) = model();
    let err = grammars
        .constraint(&Grammar::JsonSchema(json!({"type": "array", "uniqueItems": true})))
        .unwrap_err();
    assert!(err.contains("uniqueItems"), "{err}");
}

/// The tools of the tool-call tests: every kind of parameter the formats
/// write differently (free and enumerated strings, numbers, objects, none).
fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            }, "required": ["city", "unit"], "additionalProperties": false}),
        },
        ToolSpec {
            name: "add_event".into(),
            parameters: json!({"type": "object", "properties": {
                "at": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}},
                       "required": ["hour"], "additionalProperties": false},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
            }, "required": ["at"], "additionalProperties": false}),
        },
        ToolSpec {
            name: "now".into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        },
    ]
}

/// Reads an answer's tool calls back: its text, and each call's name and
/// arguments (parsed).
fn read_calls(format: ToolFormat, text: &str) -> (String, Vec<(String, Value)>) {
    let mut parser = CallParser::new(format, &tools());
    let mut pieces = parser.push(text);
    pieces.extend(parser.finish());
    let mut plain = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => plain.push_str(&t),
            Piece::Call { name, .. } => calls.push((name, String::new())),
            Piece::Arguments { index, text } => calls[index].1.push_str(&text),
        }
    }
    let calls = calls
        .into_iter()
        .map(|(name, arguments)| {
            let value =
                serde_json::from_str(&arguments).unwrap_or_else(|err| panic!("{arguments:?}: {err} in {text:?}"));
            (name, value)
        })
        .collect();
    (plain, calls)
}

/// Sampled calls in each format, from a random model: a required or named
/// call is made from the first token, every call names an offered tool (the
/// named one when one is named) and its arguments validate against that
/// tool's schema; one call only when parallel calls are off.
#[test]
fn sampled_tool_calls_in_every_format_name_a_tool_and_validate() {
    let (_, grammars) = model();
    let tools = tools();
    for format in [ToolFormat::Hermes, ToolFormat::QwenXml, ToolFormat::Llama3Json] {
        for (mode, parallel) in [
            (CallMode::Required, true),
            (CallMode::Named("add_event".into()), false),
            (CallMode::Auto, true),
        ] {
            let lark = call_grammar(format, &tools, &mode, parallel).unwrap();
            let grammar = Grammar::Lark(lark.clone());
            grammars
                .constraint(&grammar)
                .unwrap_or_else(|err| panic!("{format:?} {mode:?}: {err}\n{lark}"));
            for seed in 0..6 {
                let (text, finish) = answer(&grammar, seed);
                let what = format!("{format:?} {mode:?} seed {seed}: {text:?}");
                // Free text under `auto` may run past max_tokens.
                if mode == CallMode::Auto && finish != FinishReason::Stop {
                    continue;
                }
                // A random model may call on and on when it may call several
                // times: the calls it finished must hold.
                let text = match (finish, parallel, text.rfind("</tool_call>")) {
                    (FinishReason::Length, true, Some(end)) => &text[..end + "</tool_call>".len()],
                    _ => {
                        assert_eq!(finish, FinishReason::Stop, "{what}");
                        &text
                    }
                };
                let (plain, calls) = read_calls(format, text);
                if mode != CallMode::Auto {
                    assert!(!calls.is_empty() && plain.trim().is_empty(), "{what}");
                }
                if !parallel || format == ToolFormat::Llama3Json {
                    assert!(calls.len() <= 1, "{what}");
                }
                for (name, arguments) in &calls {
                    if let CallMode::Named(named) = &mode {
                        assert_eq!(name, named, "{what}");
                    }
                    let tool = tools
                        .iter()
                        .find(|t| &t.name == name)
                        .unwrap_or_else(|| panic!("{what}"));
                    validate(arguments, &tool.parameters, &tool.parameters)
                        .unwrap_or_else(|why| panic!("{what}: {why}"));
                }
            }
        }
    }
}

/// The XML format writes a string as raw text: a pattern or format on it
/// cannot be held, and is refused by name rather than dropped.
#[test]
fn an_xml_string_parameter_with_a_pattern_is_refused_naming_it() {
    let tools = vec![ToolSpec {
        name: "f".into(),
        parameters: json!({"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}}),
    }];
    let err = call_grammar(ToolFormat::QwenXml, &tools, &CallMode::Auto, true).unwrap_err();
    assert!(err.contains("'pattern'") && err.contains("'code'"), "{err}");
    // The JSON formats hold a pattern.
    let lark = call_grammar(ToolFormat::Hermes, &tools, &CallMode::Auto, true).unwrap();
    model().1.constraint(&Grammar::Lark(lark)).unwrap();
}
