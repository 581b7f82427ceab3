//! Switchyard: an OpenAI-compatible proxy that decides, request by request,
//! where each LLM call is answered.
//!
//! Where to find things, from the top layer down (a module imports only from
//! the ones below it):
//! - [`server`]: bind, serve, graceful shutdown.
//! - [`http`]: the HTTP front: routes, request ids, the auth middleware, the
//!   chat handler, health, models, metrics and the status page.
//! - [`live`]: the policy in force and its hot reload.
//! - [`ladder`]: the data path after the decision: who answers, retries,
//!   fallbacks, escalation of weak local answers.
//! - [`accounting`]: the one record per request that feeds metrics, the
//!   budget ledger, the status page and the log.
//! - [`routing`]: the decision: difficulty score, rules, privacy, budgets,
//!   sticky sessions.
//! - [`backends`]: where requests are answered: remote endpoints (with retries
//!   and a circuit breaker) and the local engine.
//! - [`auth`]: client keys.
//! - [`openai`]: OpenAI's wire format: request validation, errors, SSE
//!   framing, and the one writer of replies (`openai::completion::write`).
//! - [`reply`]: what backends answer with, before it is written: the local
//!   model's typed events, or a remote answer relayed as it came.
//! - [`outcome`]: tiers, reasons, eligibility, routing and backend errors,
//!   the vocabulary every layer shares.
//! - [`policy`]: the YAML policy file, typed and checked with line:column errors.
//! - [`metrics`], [`telemetry`], [`memory`]: Prometheus metrics, logs and
//!   traces, the process heap.
//!
//! The command line (`main.rs`, `cli/`) sits on top of the library.

pub mod accounting;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod http;
pub mod ladder;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod outcome;
pub mod policy;
pub mod reply;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod state;
pub mod telemetry;
