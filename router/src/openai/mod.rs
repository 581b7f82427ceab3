//! OpenAI's wire format: what clients send and what they expect back.

pub mod completion;
pub mod error;
pub mod json;
pub mod request;
pub mod sse;

use serde::Deserialize;

/// Token counts as OpenAI reports them in `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
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
}
