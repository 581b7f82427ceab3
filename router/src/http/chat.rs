//! `POST /v1/chat/completions`, and the endpoints answered as chat is
//! (`/v1/completions`, `/v1/responses`: see [`Api`]): read the body within its
//! limit, validate it, decide where it goes (`routing`), have it answered
//! (`ladder`), and send the outcome as `openai` writes it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::headers::{self, COST, DEGRADED, ESCALATED_FROM, REASON, ROUTE, SCORE};
use super::{AppState, BACKEND, RequestId, SELF_BACKEND, rate_headers, rate_limited, refused};
use crate::accounting::{Recorded, RequestRecord};
use crate::auth::Caller;
use crate::ladder::{self, Outcome};
use crate::live::Live;
use crate::openai::completion::{self, Written};
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::outcome::{Reason, Tier};
use crate::policy::{Mode, Price};
use crate::routing::sessions::SessionKeys;
use crate::routing::{self, Decision, Hints};
use crate::shadow::Shadowed;

/// An endpoint answered as chat is: how its body becomes a [`ChatRequest`].
/// Written for its client by `openai::completion`, by the request's API.
pub trait Api {
    /// The endpoint's label in metrics, the status page and logs.
    const ENDPOINT: &'static str;
    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError>;
}

/// `POST /v1/chat/completions`.
pub struct Chat;

/// `POST /v1/completions` (legacy text completions): the prompt read as one
/// user turn; a local model continues it as written (no chat template), a
/// remote one gets the request at its own `/completions`.
pub struct Legacy;

/// `POST /v1/responses` (the Responses API): the chat request it amounts
/// to; a local answer is written as a Responses object or event stream, a
/// remote backend gets the request at its own `/responses`.
pub struct Responses;

impl Api for Chat {
    const ENDPOINT: &'static str = "chat";
    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(bytes)
    }
}

impl Api for Legacy {
    const ENDPOINT: &'static str = "completions";
    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse_completion(bytes)
    }
}

impl Api for Responses {
    const ENDPOINT: &'static str = "responses";
    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse_responses(bytes)
    }
}

pub async fn handle<A: Api>(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(state, request_id, caller, headers, body, A::ENDPOINT, A::parse).await
}

/// How a request's body becomes a [`ChatRequest`].
type Parse = fn(&[u8]) -> Result<ChatRequest, ApiError>;

async fn answer(
    state: Arc<AppState>,
    request_id: Arc<str>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
    endpoint: &'static str,
    parse: Parse,
) -> Response {
    let started = Instant::now();
    let caller = caller.map_or(Caller::Anonymous, |Extension(caller)| caller);
    // The policy in force when the request arrived serves it to the end.
    let live = state.policy.current();
    // Dropped unfinished (the client went away), the record writes itself.
    let mut record = RequestRecord::new(
        request_id.clone(),
        endpoint,
        started,
        SELF_BACKEND,
        live.baseline.clone(),
        routing::caller_name(&caller).map(str::to_string),
        live.ledger.clone(),
        live.metrics_enabled,
    );
    let bytes = match read_body(&headers, body, live.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(err) => return refused(record, err),
    };
    // Declared before the parsed request, so dropped after it. (Not
    // `then_some`: that builds the guard either way, and dropping the unused
    // one would trim the heap after every request.)
    let _release = if bytes.len() > INLINE_PREPARE_MAX_BYTES {
        Some(ReleaseFreeMemory)
    } else {
        None
    };
    let large = bytes.len() > INLINE_PREPARE_MAX_BYTES;
    // A large body takes milliseconds of CPU to parse and score: off the
    // async workers (which also answer `/healthz` and every stream), and a
    // few at a time, so a burst of maximum-size bodies neither stalls the
    // daemon nor holds that much work's memory at once.
    let turn = large_body_turn(large).await;
    let parsed = {
        let headers = headers.clone();
        let count_tokens = !live.limiter.is_empty();
        off_workers(large, move || parse_request(&headers, &bytes, parse, count_tokens)).await
    };
    let (request, hints, tokens) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return refused(record, err),
    };
    // A caller over its rate limits a moment ago is asked about first: then
    // a flood past a limit costs no routing decision and no budget hold.
    let caller_name = routing::caller_name(&caller);
    let checked = if live.limiter.likely_refused(caller_name, tokens) {
        let verdict = live.limiter.check(caller_name, tokens).await;
        if let Some(refusal) = verdict.refused.clone() {
            return rate_limited(record, &verdict, refusal);
        }
        Some(verdict)
    } else {
        None
    };
    // Decided first, then the shared store (when there is one) asked all it
    // must be asked in one round trip: the rate limits; the budget hold of
    // a remote call, whose backend no session floor can change; and the
    // conversation's tier so far, only when it could raise the decision.
    let Prepared {
        request,
        hints,
        session,
        decided,
    } = {
        let (live, caller) = (live.clone(), caller.clone());
        off_workers(large, move || prepare(&live, &caller, hints, request)).await
    };
    // No large body's turn is held while the store is asked.
    drop(turn);
    let own_tier = decided.as_ref().ok().map(Decided::own_tier);
    let lookup = session.filter(|_| own_tier.is_some_and(|tier| tier < Tier::Remote));
    let floor = async {
        match lookup {
            Some(keys) => state.sessions.floor(keys).await,
            None => None,
        }
    };
    let ahead = async {
        if let Ok(Decided { decision, .. }) = &decided
            && decision.tier == Tier::Remote
            && let Some(claim) = &decision.budget
        {
            claim.admit_ahead(&decision.backend).await;
        }
    };
    let verdict = async {
        match checked {
            Some(verdict) => verdict,
            None => live.limiter.check(caller_name, tokens).await,
        }
    };
    let (floor, verdict, ()) = tokio::join!(floor, verdict, ahead);
    if let Some(refusal) = verdict.refused.clone() {
        // A hold taken ahead is released as the decision goes (a first
        // refusal: the next ones are checked before deciding, above).
        return rate_limited(record, &verdict, refusal);
    }
    // As the routing applies it: a floor of a reasoning tier the local
    // model no longer serves (a reload) is plain local.
    let floor = floor.map(|floor| live.routing.served(floor));
    let decided = match (decided, floor) {
        (Ok(decided), Some(floor)) if Some(floor) > own_tier => {
            // The conversation has been higher: decided again from its floor.
            let _turn = large_body_turn(large).await;
            let (live, caller) = (live.clone(), caller.clone());
            let (request, redecided) = off_workers(large, move || {
                let redecided = redecide(&live, &caller, &hints, &request, decided, floor);
                (request, redecided)
            })
            .await;
            redecided.map(|decided| (request, decided))
        }
        (decided, _) => decided.map(|decided| (request, decided)),
    };
    let (request, decided) = match decided {
        Ok(decided) => decided,
        Err(err) => {
            let mut response = refused(record, err);
            rate_headers(&mut response, &verdict);
            return response;
        }
    };
    if let Some(keys) = session {
        state.sessions.remember(keys, decided.own_tier());
    }
    let Decided {
        decision,
        decision_seconds,
        shadowed,
    } = decided;
    let shadowed = shadowed.map(|would| {
        let routing = &live.routing;
        Shadowed::new(
            &would,
            &request,
            &request_id,
            &decision,
            routing.shadow(),
            routing.shadow_file().to_path_buf(),
        )
    });
    record.decision_seconds = Some(decision_seconds);
    record.score = decision.score;
    // What the record says if the client leaves before the answer: the decision.
    record.route = decision.tier.as_str();
    record.backend = decision.backend.name().to_string();
    record.reason = decision.reason.as_str();
    record.price = routing::price_of(&decision.backend);
    record.backend_started = Some(Instant::now());
    let deadline = tokio::time::Instant::now() + live.request_deadline;
    let answering =
        ladder::answer(&decision, &request, &request_id, deadline, &live.ladder).instrument(tracing::info_span!(
            "answer",
            route = decision.tier.as_str(),
            backend = decision.backend.name()
        ));
    // Past the shutdown drain, a request still waiting for its answer gets a
    // 503 instead of a connection closed under it.
    let outcome = tokio::select! {
        outcome = answering => outcome,
        () = state.past_drain.cancelled() => ladder::Outcome::failed(&decision, ApiError::ShuttingDown),
    };
    let Outcome {
        answer,
        backend,
        tier,
        reason,
        degraded,
        escalated_from,
    } = outcome;
    record.route = tier.as_str();
    record.backend = backend.name().to_string();
    record.reason = reason.as_str();
    record.escalated_from = escalated_from.map(Tier::as_str);
    record.price = routing::price_of(&backend);
    let mut response = match answer {
        Ok(answered) => {
            record.reservation = answered.reservation;
            let written = completion::write(answered.reply, &request);
            let written = match shadowed {
                Some(shadowed) if tier == Tier::Remote => shadowed.watch(written),
                _ => written,
            };
            respond(written, record, &state.past_drain)
        }
        // A Responses client reads the Responses API's names.
        Err(err) if request.responses.is_some() => refused(record, crate::openai::responses::in_responses_terms(err)),
        Err(err) => refused(record, err),
    };
    let out = response.headers_mut();
    out.insert(BACKEND, header_value(backend.name()));
    out.insert(ROUTE, HeaderValue::from_static(tier.as_str()));
    out.insert(REASON, HeaderValue::from_static(reason.as_str()));
    if let Some(score) = decision.score {
        out.insert(SCORE, header_value(&format!("{score:.4}")));
    }
    if let Some(degraded) = degraded {
        out.insert(DEGRADED, HeaderValue::from_static(degraded.as_str()));
    }
    if let Some(from) = escalated_from {
        out.insert(ESCALATED_FROM, HeaderValue::from_static(from.as_str()));
    }
    rate_headers(&mut response, &verdict);
    response
}

/// Runs `work` where it belongs: here for a small body, on a blocking
/// thread for a large one.
async fn off_workers<T: Send + 'static>(large: bool, work: impl FnOnce() -> T + Send + 'static) -> T {
    if !large {
        return work();
    }
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .expect("preparing a request does not panic")
}

/// Bodies up to this size are parsed and scored where they arrive: that takes
/// tens of microseconds, less than a hand-off to a blocking thread costs.
const INLINE_PREPARE_MAX_BYTES: usize = 64 * 1024;
/// Large bodies prepared at once. Each holds its parsed body (several times
/// its bytes) while it is prepared; a burst of maximum-size bodies waits its
/// turn (asynchronously, costing no thread) instead of holding all of that at
/// once. One at a time, measured with bench/bad_inputs.sh 4: peak RSS 372 MiB
/// against 435 MiB with two, and /healthz under 16 clients' 4 MiB bodies no
/// slower (p99 9.7 ms against 12.6-16.6 ms); a 4 MiB body takes tens of
/// milliseconds, so even a burst of them moves at dozens a second.
const LARGE_BODY_CONCURRENCY: usize = 1;
static LARGE_BODY_TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LARGE_BODY_CONCURRENCY);

/// Once a large request's memory is freed, hands it back to the system (see
/// [`crate::memory`]).
struct ReleaseFreeMemory;

impl Drop for ReleaseFreeMemory {
    fn drop(&mut self) {
        crate::memory::release_free_memory();
    }
}

/// Parses the body and reads the routing hints of the headers; with, when
/// `count_tokens` (rate limits are set), the tokens the request may use as
/// they count them (OpenAI's way: its prompt and what it may generate).
fn parse_request(
    headers: &HeaderMap,
    bytes: &[u8],
    parse: Parse,
    count_tokens: bool,
) -> Result<(ChatRequest, Hints, u64), ApiError> {
    let request = tracing::debug_span!("parse").in_scope(|| parse(bytes))?;
    let hints = headers::hints(headers)?;
    let tokens = if count_tokens {
        routing::features::prompt_tokens_estimate(&request).saturating_add(routing::output_tokens_bound(&request))
    } else {
        0
    };
    Ok((request, hints, tokens))
}

/// One of the few turns to parse and decide a large body (see
/// [`LARGE_BODY_TURNS`]); none for a small one.
async fn large_body_turn(large: bool) -> Option<tokio::sync::SemaphorePermit<'static>> {
    if large {
        Some(LARGE_BODY_TURNS.acquire().await.expect("the semaphore is never closed"))
    } else {
        None
    }
}

/// Where a parsed request's conversation is kept (a digest of its turns,
/// hashed here: a large body's takes a while), and where the request goes
/// before its conversation's floor is known.
fn prepare(live: &Live, caller: &Caller, hints: Hints, request: ChatRequest) -> Prepared {
    let session = live.routing.session_keys(&request, caller, &hints);
    let decided = decide(live, caller, &hints, &request, None);
    Prepared {
        request,
        hints,
        session,
        decided,
    }
}

/// Decides where a parsed request goes; the decision's own time is
/// returned for the record.
fn decide(
    live: &Live,
    caller: &Caller,
    hints: &Hints,
    request: &ChatRequest,
    session_floor: Option<Tier>,
) -> Result<Decided, ApiError> {
    let deciding = Instant::now();
    let mut decision = own_decision(live, caller, hints, request, session_floor)?;
    // Shadow mode: answered remotely as before, the decision kept aside. A
    // rule that keeps the request off the remote (privacy) still holds: it
    // is then routed as decided. The remote decision does not touch the
    // conversation's sticky tier, which follows the routing's own decisions.
    let mut shadowed = None;
    if live.routing.mode_of(&request.model) == Mode::Shadow {
        let remote = Hints {
            tier: Some(Tier::Remote),
            ..hints.clone()
        };
        if let Ok(mut primary) =
            live.routing
                .decide(request, caller, &remote, &live.backends, live.ledger.as_ref(), None)
            && primary.tier == Tier::Remote
        {
            primary.reason = Reason::Shadow;
            primary.score = decision.score;
            shadowed = Some(std::mem::replace(&mut decision, primary));
        }
    }
    Ok(Decided {
        decision,
        decision_seconds: deciding.elapsed().as_secs_f64(),
        shadowed,
    })
}

/// The routing's own decision, from the conversation's floor when known.
fn own_decision(
    live: &Live,
    caller: &Caller,
    hints: &Hints,
    request: &ChatRequest,
    session_floor: Option<Tier>,
) -> Result<Decision, ApiError> {
    tracing::debug_span!("decide").in_scope(|| {
        live.routing.decide(
            request,
            caller,
            hints,
            &live.backends,
            live.ledger.as_ref(),
            session_floor,
        )
    })
}

/// The routing's own decision made again with the conversation's floor. In
/// shadow mode only the decision kept aside changes: the remote that
/// answers was decided without a floor (as the shadow's remote always is),
/// and keeps what it was admitted.
fn redecide(
    live: &Live,
    caller: &Caller,
    hints: &Hints,
    request: &ChatRequest,
    first: Decided,
    floor: Tier,
) -> Result<Decided, ApiError> {
    let deciding = Instant::now();
    let own = own_decision(live, caller, hints, request, Some(floor))?;
    let decision_seconds = first.decision_seconds + deciding.elapsed().as_secs_f64();
    Ok(match first.shadowed {
        Some(_) => Decided {
            decision: first.decision,
            decision_seconds,
            shadowed: Some(own),
        },
        None => Decided {
            decision: own,
            decision_seconds,
            shadowed: None,
        },
    })
}

/// A parsed request, its conversation, and where it goes.
struct Prepared {
    request: ChatRequest,
    hints: Hints,
    session: Option<SessionKeys>,
    decided: Result<Decided, ApiError>,
}

/// Where a request goes; in shadow mode, where the routing would have sent
/// it.
struct Decided {
    decision: Decision,
    decision_seconds: f64,
    shadowed: Option<Decision>,
}

impl Decided {
    /// The tier the routing chose (in shadow mode, the one kept aside): the
    /// conversation's.
    fn own_tier(&self) -> Tier {
        self.shadowed.as_ref().map_or(self.decision.tier, |would| would.tier)
    }
}

/// The HTTP response for a written reply, with its cost when known; the
/// request is recorded now (whole answers) or when its stream ends.
fn respond(reply: Written, mut record: RequestRecord, past_drain: &CancellationToken) -> Response {
    let price = record.price;
    match reply {
        Written::Whole {
            body,
            headers,
            status,
            usage,
        } => {
            let mut response = (status, body).into_response();
            response.headers_mut().extend(headers);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(usage) = usage {
                response.headers_mut().insert(COST, cost_header(price.cost_of(&usage)));
            }
            record.status = status.as_u16();
            record.finish(usage, None);
            response
        }
        Written::Stream { events, headers, usage } => {
            record.status = 200;
            let body = Body::from_stream(Recorded::new(events, record, usage, past_drain));
            let mut response = (StatusCode::OK, body).into_response();
            let out = response.headers_mut();
            out.extend(headers);
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // Tell reverse proxies (nginx) in front of us not to buffer the stream.
            out.insert("x-accel-buffering", HeaderValue::from_static("no"));
            // A local answer's price is known before it starts; a remote one's
            // only at its end (it is in the usage chunk, logs and metrics).
            if price == Price::FREE {
                out.insert(COST, cost_header(0.0));
            }
            response
        }
    }
}

fn cost_header(cost_usd: f64) -> HeaderValue {
    header_value(&format!("{cost_usd:.8}"))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("backend names and numbers are header-safe")
}

/// Reads the body, refusing a declared length over the limit before reading
/// and a streamed body as soon as it crosses the limit.
///
/// A refused body is still read to its end (and thrown away), up to
/// [`DRAIN_MAX_BYTES`] and [`DRAIN_TIMEOUT`]: HTTP clients that are still
/// writing when the server closes the connection report a broken pipe instead
/// of the 413, and the client deserves to see why it was refused.
pub(super) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    let too_large = ApiError::BodyTooLarge { limit_bytes: limit };
    if declared.is_some_and(|len| len > limit as u64) {
        if declared.is_some_and(|len| len <= DRAIN_MAX_BYTES as u64) {
            drain(&mut stream, DRAIN_MAX_BYTES).await;
        }
        return Err(too_large);
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| ApiError::InvalidRequest {
            message: format!("Could not read the request body: {err}"),
            param: None,
        })?;
        if bytes.len() + chunk.len() > limit {
            drain(&mut stream, DRAIN_MAX_BYTES - limit.min(DRAIN_MAX_BYTES)).await;
            return Err(too_large);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// How much of a refused body we read and discard so the client sees the 413.
const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn drain(stream: &mut axum::body::BodyDataStream, max_bytes: usize) {
    let mut drained = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len();
            if drained > max_bytes {
                break;
            }
        }
    })
    .await;
}
