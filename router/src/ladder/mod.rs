//! The data path after the decision: who actually answers, and what happens
//! when they can't.
//!
//! - A remote call is retried by its backend ([`RemoteBackend::chat`]); when it
//!   still fails (or its breaker is open), the next remote backend in the
//!   policy's order is tried; when all fail, the local model answers, reasoning
//!   unless its backend has `reasoning: false`, marked `x-switchyard-degraded: remote-unavailable`; when the local model
//!   cannot serve the request either, the client gets one clean 503 with
//!   `Retry-After`.
//! - A full local queue sends the request remote when the policy lets it leave
//!   the machine (`x-switchyard-degraded: local-busy`), else a 429 with
//!   `Retry-After`.
//!
//! - The ladder: a local answer that looks weak (see [`confidence`]) climbs one
//!   rung, local -> local-reasoning -> remote (remote only when the policy lets
//!   the request leave the machine; no reasoning rung for a backend with
//!   `reasoning: false`). Non-streamed answers are judged whole;
//!   streamed ones are held back for the pre-commit window (`ladder.precommit_*`)
//!   and judged on what came so far; after the window the choice is final.
//!
//! Nothing here runs after response bytes reached the client: every switch
//! happens before the answer starts.
//!
//! [`answer`] returns the whole [`Outcome`]: the reply or the error, who
//! answered at which tier, the final reason (a served weak answer's weakness),
//! and the degradation (also the decision's own, when it had no remote to
//! choose), so that the HTTP handler only renders it.
//!
//! [`RemoteBackend::chat`]: crate::backends::remote::RemoteBackend::chat

pub mod confidence;
pub mod eval;

use std::sync::Arc;

use tokio::time::Instant;

use confidence::{Signals, Weakness};

use crate::backends::Backend;
use crate::backends::local::{Generation, LocalBackend, QueueWait};
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::outcome::{BackendError, Degraded, Reason, RouteError, Tier};
use crate::policy::LadderConfig;
use crate::reply::{ChatReply, Event};
use crate::routing::budget::Reservation;
use crate::routing::{self, BudgetClaim, Decision};

/// One rung's answer, as the climb passes it on.
struct Answer {
    pub reply: ChatReply,
    pub backend: Arc<Backend>,
    pub tier: Tier,
    pub degraded: Option<Degraded>,
    /// The tier the request started at, when the ladder moved it up.
    pub escalated_from: Option<Tier>,
    /// Why the ladder last judged a local answer weak: the answer's reason,
    /// also when it could not climb away from it (every remote failed).
    pub weakness: Option<Weakness>,
    /// The remote call's hold on the budgets, kept until its cost is recorded.
    pub reservation: Option<Reservation>,
}

impl Weakness {
    pub fn reason(self) -> Reason {
        match self {
            Weakness::Empty => Reason::WeakEmpty,
            Weakness::Truncated => Reason::WeakTruncated,
            Weakness::Repetition => Reason::WeakRepetition,
            Weakness::Refusal => Reason::WeakRefusal,
            Weakness::LowConfidence => Reason::WeakConfidence,
        }
    }
}

/// What the ladder made of a decided request, whole: who answered, at which
/// tier and why, what went otherwise than decided, and the reply or the
/// error. The HTTP handler renders it as it is.
pub struct Outcome {
    pub answer: Result<Answered, ApiError>,
    pub backend: Arc<Backend>,
    pub tier: Tier,
    /// The decision's reason, or the weakness of the local answer served or
    /// climbed away from.
    pub reason: Reason,
    /// Set also when the decision itself had no remote to choose.
    pub degraded: Option<Degraded>,
    /// The tier the request started at, when the ladder moved it up.
    pub escalated_from: Option<Tier>,
}

/// A reply, and the remote call's hold on the budgets, kept until its cost is recorded.
pub struct Answered {
    pub reply: ChatReply,
    pub reservation: Option<Reservation>,
}

impl Outcome {
    /// The outcome of `decision` given what its ladder came to.
    fn of(decision: &Decision, climbed: Result<Answer, ApiError>) -> Outcome {
        match climbed {
            Ok(answer) => Outcome {
                reason: answer.weakness.map_or(decision.reason, Weakness::reason),
                degraded: answer.degraded.or(Outcome::decided_degraded(decision)),
                backend: answer.backend,
                tier: answer.tier,
                escalated_from: answer.escalated_from,
                answer: Ok(Answered {
                    reply: answer.reply,
                    reservation: answer.reservation,
                }),
            },
            Err(err) => Outcome::failed(decision, err),
        }
    }

    /// A decided request that got no answer: the decision's backend, tier and
    /// reason, and the error.
    pub fn failed(decision: &Decision, err: ApiError) -> Outcome {
        Outcome {
            answer: Err(err),
            backend: decision.backend.clone(),
            tier: decision.tier,
            reason: decision.reason,
            degraded: Outcome::decided_degraded(decision),
            escalated_from: None,
        }
    }

    /// The decision's own degradation: it had no remote to choose.
    fn decided_degraded(decision: &Decision) -> Option<Degraded> {
        (decision.reason == Reason::RemoteUnavailable).then_some(Degraded::RemoteUnavailable)
    }
}

/// Answers a decided request, falling back as described above.
pub async fn answer(
    decision: &Decision,
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
    ladder: &LadderConfig,
) -> Outcome {
    Outcome::of(
        decision,
        answer_decided(decision, request, request_id, deadline, ladder).await,
    )
}

async fn answer_decided(
    decision: &Decision,
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
    ladder: &LadderConfig,
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
            let failure = match remote_chain(&candidates, decision.budget.as_ref(), request, request_id, deadline).await
            {
                Ok(answer) => return Ok(answer),
                Err(err) => err,
            };
            match (&decision.fallbacks.local, pinned) {
                (Some(local), false) => {
                    let tier = Tier::LocalReasoning.served(routing::local_reasons(local));
                    tracing::warn!(
                        error = failure.code(),
                        tier = tier.as_str(),
                        "every remote backend failed; answering locally"
                    );
                    fallback(Degraded::RemoteUnavailable.as_str());
                    let reply = local_call(local, request, request_id, tier, pinned, deadline).await?;
                    Ok(Answer {
                        reply,
                        backend: local.clone(),
                        tier,
                        degraded: Some(Degraded::RemoteUnavailable),
                        escalated_from: None,
                        weakness: None,
                        reservation: None,
                    })
                }
                _ if pinned || !is_unavailable(&failure) => Err(failure),
                _ => Err(ApiError::Route(RouteError::RemoteFailed { last: failure.code() })),
            }
        }
        tier @ (Tier::Local | Tier::LocalReasoning) => match decision.backend.as_local() {
            Some(local) if !pinned && ladder.enabled => {
                climb(decision, local, request, request_id, deadline, ladder, tier).await
            }
            _ => match local_call(&decision.backend, request, request_id, tier, pinned, deadline).await {
                Err(busy @ BackendError::LocalBusy { .. }) if !decision.fallbacks.remotes.is_empty() => {
                    spill(decision, request, request_id, deadline, busy).await
                }
                result => Ok(Answer {
                    reply: result?,
                    backend: decision.backend.clone(),
                    tier,
                    degraded: None,
                    escalated_from: None,
                    weakness: None,
                    reservation: None,
                }),
            },
        },
    }
}

/// The local engine is full (`busy`): the answer comes from the remote
/// backends. When none can take it (the budget refuses the call, or every
/// remote is unavailable) the truth the client can act on is still `busy`: a
/// 429 that says when to come back, not a 402 or 502 for a request that was
/// never meant to leave the machine.
async fn spill(
    decision: &Decision,
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
    busy: BackendError,
) -> Result<Answer, ApiError> {
    tracing::info!("local engine is full; answering remotely");
    fallback(Degraded::LocalBusy.as_str());
    match remote_chain(
        &decision.fallbacks.remotes,
        decision.budget.as_ref(),
        request,
        request_id,
        deadline,
    )
    .await
    {
        Ok(mut answer) => {
            answer.degraded = Some(Degraded::LocalBusy);
            Ok(answer)
        }
        Err(err) if is_unavailable(&err) || matches!(err, ApiError::Route(RouteError::BudgetExhausted { .. })) => {
            tracing::info!(
                error = err.code(),
                "the remote spill failed too; the local engine is busy"
            );
            Err(busy.into())
        }
        Err(err) => Err(err),
    }
}

/// Runs the ladder from `start`: each local rung's answer is judged, and a weak
/// one is dropped (which stops its generation) for the next rung.
async fn climb(
    decision: &Decision,
    local: &LocalBackend,
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
    ladder: &LadderConfig,
    start: Tier,
) -> Result<Answer, ApiError> {
    let can_go_remote = !decision.fallbacks.remotes.is_empty();
    let mut tier = start;
    let mut escalated_from = None;
    let mut weakness_seen = None;
    // One wait for a turn for the whole climb: each rung queues again, and
    // a request must not wait `max_queue_wait_ms` once per rung.
    let mut wait = local.max_queue_wait().map(QueueWait::whole);
    loop {
        let mut shaped = request.clone();
        routing::prepare_for_tier(&mut shaped, tier);
        let mut generation = match local.generate_within(&shaped, request_id, wait, Some(deadline)).await {
            Ok(generation) => {
                wait = wait.map(|w| w.spend(generation.queued));
                generation
            }
            Err(busy @ BackendError::LocalBusy { .. }) if can_go_remote => {
                let mut answer = spill(decision, request, request_id, deadline, busy).await?;
                answer.escalated_from = escalated_from;
                answer.weakness = weakness_seen;
                return Ok(answer);
            }
            Err(err) => return Err(err.into()),
        };
        let (held, weakness) = hold(&mut generation, request.stream, ladder).await;
        let next = match tier {
            Tier::Local if local.reasons() => Some(Tier::LocalReasoning),
            Tier::Local | Tier::LocalReasoning if can_go_remote => Some(Tier::Remote),
            _ => None,
        };
        match (weakness, next) {
            (Some(weakness), Some(Tier::Remote)) => {
                tracing::info!(from = tier.as_str(), to = "remote", weakness = ?weakness, "escalating a weak local answer");
                // The weak answer is kept (and, streamed, goes on being
                // generated) until a remote answer is in hand: when every
                // remote backend fails, a weak answer beats an error.
                match remote_chain(
                    &decision.fallbacks.remotes,
                    decision.budget.as_ref(),
                    request,
                    request_id,
                    deadline,
                )
                .await
                {
                    Ok(mut answer) => {
                        drop(generation);
                        answer.escalated_from = Some(escalated_from.unwrap_or(start));
                        answer.weakness = Some(weakness);
                        return Ok(answer);
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = err.code(),
                            "every remote backend failed; serving the weak local answer"
                        );
                        fallback(Degraded::RemoteUnavailable.as_str());
                        return Ok(Answer {
                            reply: generation.into_reply(held).await?,
                            backend: decision.backend.clone(),
                            tier,
                            degraded: Some(Degraded::RemoteUnavailable),
                            escalated_from,
                            weakness: Some(weakness),
                            reservation: None,
                        });
                    }
                }
            }
            (Some(weakness), Some(next)) => {
                tracing::info!(from = tier.as_str(), to = next.as_str(), weakness = ?weakness, "escalating a weak local answer");
                escalated_from.get_or_insert(start);
                weakness_seen = Some(weakness);
                drop(generation);
                tier = next;
            }
            _ => {
                return Ok(Answer {
                    reply: generation.into_reply(held).await?,
                    backend: decision.backend.clone(),
                    tier,
                    degraded: None,
                    escalated_from,
                    weakness: weakness_seen,
                    reservation: None,
                });
            }
        }
    }
}

/// Takes events of a local answer until it can be judged: all of it when not
/// streamed, else the pre-commit window (tokens or time, whichever first).
pub(crate) async fn hold(
    generation: &mut Generation,
    stream: bool,
    ladder: &LadderConfig,
) -> (Vec<Event>, Option<Weakness>) {
    let mut signals = Signals::default();
    let mut held = Vec::new();
    let window_end = Instant::now() + ladder.precommit();
    loop {
        let next = if stream {
            match tokio::time::timeout_at(window_end, generation.events.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        } else {
            generation.events.recv().await
        };
        let Some(event) = next else { break };
        signals.observe(&event);
        let failed = matches!(event, Event::Failed(_));
        held.push(event);
        if failed || signals.is_finished() || (stream && signals.tokens >= ladder.precommit_tokens()) {
            break;
        }
    }
    let weakness = signals.judge(ladder);
    (held, weakness)
}

/// Tries each remote backend in turn while the failures are the backend's.
/// Each call holds what it may cost against the budgets from before it is sent.
async fn remote_chain(
    candidates: &[Arc<Backend>],
    budget: Option<&BudgetClaim>,
    request: &ChatRequest,
    request_id: &str,
    deadline: Instant,
) -> Result<Answer, ApiError> {
    let mut last = None;
    for backend in candidates {
        // Admitted by the budget (counting calls in flight) before it is sent.
        let reservation = match budget {
            Some(claim) => claim.admit(backend).await?,
            None => None,
        };
        match backend
            .chat(request, request_id, deadline)
            .await
            .map_err(ApiError::from)
        {
            Ok(reply) => {
                return Ok(Answer {
                    reply,
                    backend: backend.clone(),
                    tier: Tier::Remote,
                    degraded: None,
                    escalated_from: None,
                    weakness: None,
                    reservation,
                });
            }
            Err(err) => {
                // Refused or failed before an answer: nothing was billed.
                if let Some(reservation) = reservation {
                    reservation.release();
                }
                if is_unavailable(&err) && Instant::now() < deadline {
                    tracing::warn!(
                        backend = backend.name(),
                        error = err.code(),
                        "remote backend failed; trying the next"
                    );
                    last = Some(err);
                    continue;
                }
                return Err(err);
            }
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
    deadline: Instant,
) -> Result<ChatReply, BackendError> {
    if pinned {
        return backend.chat(request, request_id, deadline).await;
    }
    let mut shaped = request.clone();
    routing::prepare_for_tier(&mut shaped, tier);
    backend.chat(&shaped, request_id, deadline).await
}

fn fallback(kind: &str) {
    crate::metrics::metrics().fallbacks.with_label_values(&[kind]).inc();
}

/// Failures that another backend may not have (see [`BackendError::is_unavailable`]).
fn is_unavailable(err: &ApiError) -> bool {
    matches!(err, ApiError::Backend(err) if err.is_unavailable())
}
