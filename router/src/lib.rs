//! Switchyard: an OpenAI-compatible proxy that decides, request by request,
//! where each LLM call is answered.
//!
//! Where to find things:
//! - [`policy`]: the YAML policy file, typed and checked with line:column errors.
//! - [`http`]: the HTTP front (routes, request ids, auth middleware).
//! - [`openai`]: OpenAI's wire format: request validation, errors, SSE framing.
//! - [`backends`]: where requests are answered (remote endpoints; the local engine later).
//! - [`auth`]: client keys.
//! - [`server`]: bind, serve, graceful shutdown.

pub mod accounting;
pub mod auth;
pub mod backends;
pub mod http;
pub mod ladder;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod policy;
pub mod routing;
pub mod server;
pub mod telemetry;
