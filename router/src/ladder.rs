//! The data path after the decision: who actually answers, and what happens
//! when they can't.
//!
//! - A remote call is retried by its backend ([`RemoteBackend::chat`]); when it
//!   still fails (or its breaker is open), the next remote backend in the
//!   policy's order is tried; when all fail, the local model answers, reasoning,
//!   marked `x-switchyard-degraded: remote-unavailable`; when the local model
//!   cannot serve the request either, the client gets one clean 503 with
//!   `Retry-After`.
//! - A full local queue sends the request remote when the policy lets it leave
//!   the machine (`x-switchyard-degraded: local-busy`), else a 429 with
//!   `Retry-After`.
//!
//! Nothing here runs after response bytes reached the client: every switch
//! happens before the answer starts.
//!
//! [`RemoteBackend::chat`]: crate::backends::remote::RemoteBackend::chat

use std::sync::Arc;

use tokio::time::Instant;

use crate::backends::remote::is_transient;
use crate::backends::{Backend, ChatReply};
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::routing::{self, Decision, Reason, RouteError, Tier};

/// Why an answer did not come from where the decision sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    RemoteUnavailable,
    LocalBusy,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::RemoteUnavailable => "remote-unavailable",
            Degraded::LocalBusy => "local-busy",
        }
    }
}

pub struct Answer {
    pub reply: ChatReply,
    pub backend: Arc<Backend>,
    pub tier: Tier,
    pub degraded: Option<Degraded>,
}

/// Answers a decided request, falling back as described above.
pub async fn answer(
    decision: &Decision,
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
) -> Result<Answer, ApiError> {
    let pinned = decision.reason == Reason::ModelPinned;
    match decision.tier {
        Tier::Remote => {
            let mut candidates = vec![decision.backend.clone()];
            candidates.extend(
                decision
                    .fallbacks
                    .remotes
                    .iter()
                    .filter(|b| b.name() != decision.backend.name())
                    .cloned(),
            );
            let failure = match remote_chain(&candidates, request, request_id, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(err) => err,
            };
            match (&decision.fallbacks.local, pinned) {
                (Some(local), false) => {
                    tracing::warn!(
                        error = failure.code(),
                        "every remote backend failed; answering locally, reasoning"
                    );
                    let reply = local_call(local, request, request_id, Tier::LocalReasoning, pinned).await?;
                    Ok(Answer {
                        reply,
                        backend: local.clone(),
                        tier: Tier::LocalReasoning,
                        degraded: Some(Degraded::RemoteUnavailable),
                    })
                }
                _ if pinned || !is_unavailable(&failure) => Err(failure),
                _ => Err(ApiError::Route(RouteError::RemoteFailed { last: failure.code() })),
            }
        }
        tier @ (Tier::Local | Tier::LocalReasoning) => {
            match local_call(&decision.backend, request, request_id, tier, pinned).await {
                Err(ApiError::LocalBusy { .. }) if !decision.fallbacks.remotes.is_empty() => {
                    tracing::info!("local engine is full; answering remotely");
                    let mut answer = remote_chain(&decision.fallbacks.remotes, request, request_id, deadline).await?;
                    answer.degraded = Some(Degraded::LocalBusy);
                    Ok(answer)
                }
                result => Ok(Answer {
                    reply: result?,
                    backend: decision.backend.clone(),
                    tier,
                    degraded: None,
                }),
            }
        }
    }
}

/// Tries each remote backend in turn while the failures are the backend's.
async fn remote_chain(
    candidates: &[Arc<Backend>],
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
) -> Result<Answer, ApiError> {
    let mut last = None;
    for backend in candidates {
        match backend.chat(request, request_id, deadline).await {
            Ok(reply) => {
                return Ok(Answer {
                    reply,
                    backend: backend.clone(),
                    tier: Tier::Remote,
                    degraded: None,
                });
            }
            Err(err) if is_unavailable(&err) && Instant::now() < deadline => {
                tracing::warn!(
                    backend = backend.name(),
                    error = err.code(),
                    "remote backend failed; trying the next"
                );
                last = Some(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or(ApiError::Route(RouteError::RemoteFailed {
        last: "no_remote_backend",
    })))
}

/// A local call, with the request shaped for its tier (routed requests only:
/// a pinned request goes as the client sent it).
async fn local_call(
    backend: &Backend,
    request: &ChatRequest,
    request_id: &str,
    tier: Tier,
    pinned: bool,
) -> Result<ChatReply, ApiError> {
    if pinned {
        return backend.chat(request, request_id, Instant::now()).await;
    }
    let mut shaped = request.clone();
    routing::prepare_for_tier(&mut shaped, tier);
    backend.chat(&shaped, request_id, Instant::now()).await
}

/// Failures that another backend may not have: the upstream's, or a backend
/// that cannot take calls now (no key, breaker open).
fn is_unavailable(err: &ApiError) -> bool {
    is_transient(err) || matches!(err, ApiError::BackendUnavailable { .. })
}
