//! What a request asks of an answer's form: the `tools` it offers with
//! `tool_choice` and `parallel_tool_calls`, and its `response_format`,
//! checked as OpenAI checks them (its wording, its params) and carried typed.
//!
//! Kinds this gateway does not know (a tool `type` other than `function`, a
//! `tool_choice` of another type, such as `allowed_tools`) pass to a remote
//! backend as sent; only a local model needs to understand them
//! ([`ToolsAsked::other_kinds`]).

use serde_json::{Map, Value};

use super::error::ApiError;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    /// The JSON Schema of its arguments (an object schema; `{"type": "object",
    /// "properties": {}}` when the client gave none).
    pub parameters: Value,
    pub strict: bool,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    /// This function, by name (one of the offered ones).
    Named(String),
}

/// The tools offered and how they may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolsAsked {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (true unless the client says false).
    pub parallel: bool,
    /// Tools or a `tool_choice` of a kind other than `function` (passed on as sent).
    pub other_kinds: bool,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    Text,
    JsonObject,
    JsonSchema { name: String, schema: Value, strict: bool },
}

/// OpenAI's pattern for function and schema names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_name(name: &Value, param: &str) -> Result<String, ApiError> {
    let Value::String(name) = name else {
        return Err(match name {
            Value::Null => missing(param),
            other => super::request::wrong_type(param, "a string", other),
        });
    };
    if name.len() > 64 {
        return Err(ApiError::invalid(
            format!(
                "Invalid '{param}': string too long. Expected a string with maximum length 64, but got a string with length {} instead.",
                name.len()
            ),
            param,
        ));
    }
    if !valid_name(name) {
        return Err(ApiError::invalid(
            format!(
                "Invalid '{param}': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
            ),
            param,
        ));
    }
    Ok(name.clone())
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."), param)
}

fn field<'a>(object: &'a Map<String, Value>, key: &str) -> &'a Value {
    object.get(key).unwrap_or(&Value::Null)
}

/// `strict` as a boolean (absent: false).
fn strict_flag(object: &Map<String, Value>, param: &str) -> Result<bool, ApiError> {
    Ok(super::request::optional_bool(object, "strict", &format!("{param}.strict"))?.unwrap_or(false))
}

/// A schema where one must be an object.
fn schema_object(value: &Value, param: &str) -> Result<Option<Value>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(value.clone())),
        other => Err(super::request::wrong_type(param, "an object", other)),
    }
}

impl ToolsAsked {
    /// `tools`, `tool_choice` and `parallel_tool_calls` of a request body;
    /// `None` when it offers no tools (and sets no `tool_choice`).
    pub fn of(body: &Map<String, Value>) -> Result<Option<ToolsAsked>, ApiError> {
        let tools = match field(body, "tools") {
            Value::Null => &[][..],
            Value::Array(tools) => tools.as_slice(),
            other => return Err(super::request::wrong_type("tools", "an array of objects", other)),
        };
        let mut functions = Vec::new();
        let mut other_kinds = false;
        for (i, tool) in tools.iter().enumerate() {
            let param = format!("tools[{i}]");
            let Value::Object(tool) = tool else {
                return Err(super::request::wrong_type(&param, "an object", tool));
            };
            match field(tool, "type") {
                Value::String(kind) if kind == "function" => {}
                Value::String(_) => {
                    other_kinds = true;
                    continue;
                }
                Value::Null => return Err(missing(&format!("{param}.type"))),
                other => return Err(super::request::wrong_type(&format!("{param}.type"), "a string", other)),
            }
            let param = format!("{param}.function");
            let function = match field(tool, "function") {
                Value::Object(function) => function,
                Value::Null => return Err(missing(&param)),
                other => return Err(super::request::wrong_type(&param, "an object", other)),
            };
            let name = check_name(field(function, "name"), &format!("{param}.name"))?;
            if functions.iter().any(|f: &Function| f.name == name) {
                return Err(ApiError::invalid(
                    format!("Invalid 'tools': the function name '{name}' is offered more than once."),
                    "tools",
                ));
            }
            let parameters = schema_object(field(function, "parameters"), &format!("{param}.parameters"))?
                .unwrap_or_else(|| serde_json::json!({ "type": "object", "properties": {} }));
            functions.push(Function {
                name,
                parameters,
                strict: strict_flag(function, &param)?,
            });
        }
        let offered = !functions.is_empty() || other_kinds;
        let choice = match field(body, "tool_choice") {
            Value::Null => {
                if offered {
                    ToolChoice::Auto
                } else {
                    ToolChoice::None
                }
            }
            _ if !offered => {
                return Err(ApiError::invalid(
                    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                    "tool_choice",
                ));
            }
            Value::String(choice) => match choice.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "Invalid value: '{}'. Supported values are: 'none', 'auto', and 'required'.",
                            super::request::truncate(other)
                        ),
                        "tool_choice",
                    ));
                }
            },
            Value::Object(choice) => match field(choice, "type") {
                Value::String(kind) if kind == "function" => {
                    let function = match field(choice, "function") {
                        Value::Object(function) => function,
                        Value::Null => return Err(missing("tool_choice.function")),
                        other => return Err(super::request::wrong_type("tool_choice.function", "an object", other)),
                    };
                    let name = check_name(field(function, "name"), "tool_choice.function.name")?;
                    if !functions.iter().any(|f| f.name == name) {
                        let offered: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
                        return Err(ApiError::invalid(
                            format!(
                                "Invalid value for 'tool_choice': the function '{name}' is not among the 'tools' (offered: {}).",
                                if offered.is_empty() {
                                    "none".into()
                                } else {
                                    offered.join(", ")
                                }
                            ),
                            "tool_choice",
                        ));
                    }
                    ToolChoice::Named(name)
                }
                Value::String(_) => {
                    other_kinds = true;
                    ToolChoice::Auto
                }
                Value::Null => return Err(missing("tool_choice.type")),
                other => return Err(super::request::wrong_type("tool_choice.type", "a string", other)),
            },
            other => {
                return Err(super::request::wrong_type(
                    "tool_choice",
                    "a string or an object",
                    other,
                ));
            }
        };
        let parallel =
            super::request::optional_bool(body, "parallel_tool_calls", "parallel_tool_calls")?.unwrap_or(true);
        Ok(offered.then_some(ToolsAsked {
            functions,
            choice,
            parallel,
            other_kinds,
        }))
    }
}

impl OutputFormat {
    /// `response_format` of a request body.
    pub fn of(body: &Map<String, Value>) -> Result<OutputFormat, ApiError> {
        let format = match field(body, "response_format") {
            Value::Null => return Ok(OutputFormat::Text),
            Value::Object(format) => format,
            other => return Err(super::request::wrong_type("response_format", "an object", other)),
        };
        match field(format, "type") {
            Value::String(kind) => match kind.as_str() {
                "text" => Ok(OutputFormat::Text),
                "json_object" => Ok(OutputFormat::JsonObject),
                "json_schema" => {
                    let param = "response_format.json_schema";
                    let spec = match field(format, "json_schema") {
                        Value::Object(spec) => spec,
                        Value::Null => return Err(missing(param)),
                        other => return Err(super::request::wrong_type(param, "an object", other)),
                    };
                    let name = check_name(field(spec, "name"), &format!("{param}.name"))?;
                    let schema = schema_object(field(spec, "schema"), &format!("{param}.schema"))?
                        .unwrap_or_else(|| serde_json::json!({ "type": "object" }));
                    Ok(OutputFormat::JsonSchema {
                        name,
                        schema,
                        strict: strict_flag(spec, param)?,
                    })
                }
                other => Err(ApiError::invalid(
                    format!(
                        "Invalid value: '{}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                        super::request::truncate(other)
                    ),
                    "response_format.type",
                )),
            },
            Value::Null => Err(missing("response_format.type")),
            other => Err(super::request::wrong_type("response_format.type", "a string", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tools(body: Value) -> Result<Option<ToolsAsked>, (String, Option<String>)> {
        ToolsAsked::of(body.as_object().unwrap()).map_err(|err| {
            let json = err.to_json();
            (
                json["error"]["message"].as_str().unwrap().to_string(),
                json["error"]["param"].as_str().map(str::to_string),
            )
        })
    }

    fn weather() -> Value {
        json!([{ "type": "function", "function": { "name": "get_weather",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } } } } }])
    }

    #[test]
    fn tools_and_choices_are_read_typed() {
        let asked = tools(json!({ "tools": weather() })).unwrap().unwrap();
        assert_eq!(asked.choice, ToolChoice::Auto);
        assert!(asked.parallel && !asked.other_kinds);
        assert_eq!(asked.functions[0].name, "get_weather");
        let asked = tools(json!({ "tools": weather(), "parallel_tool_calls": false,
            "tool_choice": { "type": "function", "function": { "name": "get_weather" } } }))
        .unwrap()
        .unwrap();
        assert_eq!(
            (asked.choice, asked.parallel),
            (ToolChoice::Named("get_weather".into()), false)
        );
        assert_eq!(tools(json!({ "tools": [] })).unwrap(), None);
        let asked = tools(json!({ "tools": [{ "type": "custom", "custom": { "name": "x" } }] }))
            .unwrap()
            .unwrap();
        assert!(asked.other_kinds && asked.functions.is_empty());
    }

    #[test]
    fn bad_tools_and_choices_are_refused_naming_the_param() {
        let cases = [
            (
                json!({ "tool_choice": "auto" }),
                "tool_choice",
                "only allowed when 'tools'",
            ),
            (
                json!({ "tools": weather(), "tool_choice": "maybe" }),
                "tool_choice",
                "Supported values",
            ),
            (
                json!({ "tools": weather(), "tool_choice": 3 }),
                "tool_choice",
                "Invalid type",
            ),
            (
                json!({ "tools": weather(), "tool_choice": { "type": "function", "function": { "name": "nope" } } }),
                "tool_choice",
                "'nope' is not among",
            ),
            (
                json!({ "tools": weather(), "tool_choice": { "type": "function" } }),
                "tool_choice.function",
                "Missing",
            ),
            (json!({ "tools": "x" }), "tools", "Invalid type"),
            (json!({ "tools": [{ "function": {} }] }), "tools[0].type", "Missing"),
            (
                json!({ "tools": [{ "type": "function" }] }),
                "tools[0].function",
                "Missing",
            ),
            (
                json!({ "tools": [{ "type": "function", "function": { "name": "a b" } }] }),
                "tools[0].function.name",
                "pattern",
            ),
            (
                json!({ "tools": [{ "type": "function", "function": { "name": "f", "parameters": [] } }] }),
                "tools[0].function.parameters",
                "Invalid type",
            ),
            (
                json!({ "tools": weather(), "parallel_tool_calls": "yes" }),
                "parallel_tool_calls",
                "Invalid type",
            ),
        ];
        for (body, param, says) in cases {
            let (message, got) = tools(body.clone()).unwrap_err();
            assert_eq!(got.as_deref(), Some(param), "{body}: {message}");
            assert!(message.contains(says), "{body}: {message}");
        }
    }

    #[test]
    fn response_formats_are_read_and_checked() {
        let of = |format: Value| OutputFormat::of(json!({ "response_format": format }).as_object().unwrap());
        assert_eq!(of(json!({ "type": "text" })).unwrap(), OutputFormat::Text);
        assert_eq!(of(json!({ "type": "json_object" })).unwrap(), OutputFormat::JsonObject);
        let schema = json!({ "type": "object", "properties": { "a": { "type": "integer" } } });
        assert_eq!(
            of(json!({ "type": "json_schema", "json_schema": { "name": "a", "schema": schema, "strict": true } }))
                .unwrap(),
            OutputFormat::JsonSchema {
                name: "a".into(),
                schema,
                strict: true
            }
        );
        for (format, param) in [
            (json!({ "type": "xml" }), "response_format.type"),
            (json!({}), "response_format.type"),
            (json!({ "type": "json_schema" }), "response_format.json_schema"),
            (
                json!({ "type": "json_schema", "json_schema": { "schema": {} } }),
                "response_format.json_schema.name",
            ),
            (
                json!({ "type": "json_schema", "json_schema": { "name": "a", "schema": 1 } }),
                "response_format.json_schema.schema",
            ),
            (json!("json"), "response_format"),
        ] {
            let err = of(format.clone()).unwrap_err().to_json();
            assert_eq!(err["error"]["param"], param, "{format}: {err}");
        }
    }
}
