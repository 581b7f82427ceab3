//! Request bodies parsed into JSON values within a bound on how many values they
//! hold.
//!
//! A parsed value costs far more than its text: `0,` is two bytes of body and
//! a 72-byte `Value`; `{}` is two bytes and an empty map. A maximum-size body
//! of small values would parse into hundreds of megabytes. Counting the values
//! as they are parsed, and stopping at the bound, keeps a request's memory
//! within a small multiple of its bytes whatever its shape.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The most JSON values (objects, arrays, strings, numbers, booleans and nulls,
/// each counted once) a request body may hold. Real requests are far below it:
/// 2,048 messages with a few parts each, 128 tools with their JSON schemas, a
/// 300-entry `logit_bias` are each some tens of thousands. At the bound a body
/// costs at most ~15 MB of parsed values beyond its strings.
pub const MAX_JSON_VALUES: usize = 1 << 17;

/// Why a body was not parsed.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON; serde_json's message says where it broke.
    Syntax(serde_json::Error),
    /// Valid so far, but holding more than this many values.
    TooManyValues(usize),
}

/// Parses `bytes` as one JSON value holding at most `max_values` values.
pub fn parse_bounded(bytes: &[u8], max_values: usize) -> Result<Value, BodyError> {
    let left = Cell::new(max_values);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = Counted { left: &left }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        // The count stopped it: whatever serde_json made of that, say why.
        Err(_) if left.get() == EXHAUSTED => Err(BodyError::TooManyValues(max_values)),
        Err(err) => Err(BodyError::Syntax(err)),
    }
}

/// What `left` holds once a value past the bound was met.
const EXHAUSTED: usize = usize::MAX;

/// Builds one value, as `serde_json::Value`'s own deserializer does, taking one
/// from `left` for it and for each value inside it.
#[derive(Clone, Copy)]
struct Counted<'c> {
    left: &'c Cell<usize>,
}

impl Counted<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.left.get() {
            0 | EXHAUSTED => {
                self.left.set(EXHAUSTED);
                Err(E::custom("too many JSON values"))
            }
            n => {
                self.left.set(n - 1);
                Ok(())
            }
        }
    }

    fn one<E: serde::de::Error>(self, value: Value) -> Result<Value, E> {
        self.take()?;
        Ok(value)
    }
}

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.one(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.one(Value::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.one(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.one(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.one(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.one(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.one(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.one(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            // As serde_json's own: a repeated key keeps its first place and its last value.
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, max_values: usize) -> Result<Value, BodyError> {
        parse_bounded(text.as_bytes(), max_values)
    }

    #[test]
    fn parses_what_serde_json_parses_the_same_way() {
        let texts = [
            r#"{"model":"m","messages":[{"role":"user","content":"hé \u00e9 \ud83d\ude00"}],"n":1,"t":0.5,"big":18446744073709551615,"neg":-3,"e":1e300,"z":null,"b":[true,false,[],{}]}"#,
            r#"{"b":1,"a":2,"b":3}"#,
            "  [1, 2.5, -0.0, \"x\"]  ",
            "\"just a string\"",
        ];
        for text in texts {
            let ours = parse(text, MAX_JSON_VALUES).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&theirs).unwrap(),
                "key order of {text}"
            );
        }
    }

    #[test]
    fn counts_every_value_once() {
        // The object, "k"'s array, its three items, and "s".
        let text = r#"{"k":[1,{},[]],"s":"x"}"#;
        assert!(parse(text, 6).is_ok());
        assert!(matches!(parse(text, 5), Err(BodyError::TooManyValues(5))));
    }

    #[test]
    fn stops_at_the_bound_even_when_the_rest_is_broken() {
        let text = format!("[{}", "0,".repeat(100));
        assert!(matches!(parse(&text, 10), Err(BodyError::TooManyValues(10))));
        assert!(matches!(parse(&text, 1000), Err(BodyError::Syntax(_))));
    }

    #[test]
    fn reports_syntax_errors_as_serde_json_does() {
        for text in ["{\"a\":", "{\"a\":1} x", "[1,]", "", "{\"a\" 1}", "[\"\\ud800\"]"] {
            let ours = match parse(text, MAX_JSON_VALUES) {
                Err(BodyError::Syntax(err)) => err.to_string(),
                other => panic!("{text}: {other:?}"),
            };
            let theirs = serde_json::from_str::<Value>(text).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn keeps_serde_jsons_nesting_limit() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let Err(BodyError::Syntax(err)) = parse(&deep, MAX_JSON_VALUES) else {
            panic!("deep nesting parsed")
        };
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
