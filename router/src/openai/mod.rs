//! OpenAI's wire format: what clients send and what they expect back.

pub mod completion;
pub mod error;
pub mod json;
pub mod request;
pub mod responses;
pub mod sse;
pub mod structured;
