//! One record per request (chat, completions, Responses, embeddings and the
//! calls passed through), made when its answer is complete: it feeds
//! the Prometheus metrics, the budget ledger, the status page and one log
//! line, so the four always agree.
//!
//! A [`RequestRecord`] that is dropped without being finished records itself,
//! as a request whose client went away ([`CLIENT_CLOSED`]): the handler's
//! future is dropped when a client disconnects before a whole answer is sent,
//! and no path through the handler can forget its request that way.
//!
//! For streamed answers the record is finished by [`Recorded`], a wrapper
//! around the response body: when the stream ends, when the client goes away
//! and the body is dropped, or when the shutdown drain runs out and the stream
//! is ended with an error event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::{metrics, seconds};
use crate::openai::error::ApiError;
use crate::policy::Price;
use crate::reply::{Usage, UsageCell};
use crate::routing::budget::{Reservation, SpendBook};

/// What a request came to.
pub struct RequestRecord {
    pub request_id: Arc<str>,
    /// The API endpoint (see [`crate::metrics::endpoint_label`]).
    pub endpoint: &'static str,
    pub started: Instant,
    /// When the backend was called (parse and decision done).
    pub backend_started: Option<Instant>,
    pub decision_seconds: Option<f64>,
    /// `local`, `local-reasoning`, `remote`, or `none` when refused before routing.
    pub route: &'static str,
    pub backend: String,
    pub reason: &'static str,
    pub score: Option<f32>,
    pub escalated_from: Option<&'static str>,
    pub status: u16,
    pub price: Price,
    pub baseline: Option<(String, Price)>,
    pub caller: Option<String>,
    pub ledger: Option<SpendBook>,
    /// What the remote call answering the request holds against the budgets;
    /// released when the record is finished, after its cost is recorded.
    pub reservation: Option<Reservation>,
    /// `server.metrics`; off, the request still reaches the ledger, the status
    /// page and the log.
    pub metrics: bool,
    /// Set once the record is written; a record dropped before that writes
    /// itself (see [`Drop`]).
    written: bool,
}

/// One finished request, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub at_unix_ms: u64,
    pub endpoint: &'static str,
    pub route: &'static str,
    pub backend: String,
    pub reason: &'static str,
    pub score: Option<f32>,
    pub status: u16,
    pub latency_ms: f64,
    pub cost_usd: f64,
    pub saved_usd: f64,
    pub completion_tokens: u64,
}

/// The status page's memory: the last decisions and running totals.
#[derive(Default)]
pub struct Board {
    pub recent: VecDeque<Recent>,
    pub by_route: std::collections::BTreeMap<&'static str, u64>,
    pub by_endpoint: std::collections::BTreeMap<&'static str, EndpointTotals>,
    pub cost_usd: f64,
    pub baseline_usd: f64,
    /// Recent latencies per route, for percentiles.
    pub latencies_ms: std::collections::BTreeMap<&'static str, VecDeque<f64>>,
}

/// One endpoint's running totals, for the status page.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct EndpointTotals {
    pub requests: u64,
    pub errors: u64,
    pub cost_usd: f64,
    pub saved_usd: f64,
}

/// The status recorded for a request whose client went away before its
/// answer ended (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// The route and reason of a request that ended before it was routed.
const UNDECIDED: &str = "none";

/// Decisions and latencies kept for the status page.
const RECENT: usize = 50;
const LATENCY_WINDOW: usize = 1000;

pub fn board() -> &'static Mutex<Board> {
    static BOARD: OnceLock<Mutex<Board>> = OnceLock::new();
    BOARD.get_or_init(Mutex::default)
}

/// Whether requests to `endpoint` are answers of a model, timed per route.
fn is_answer(endpoint: &str) -> bool {
    matches!(endpoint, "chat" | "completions" | "responses")
}

pub(crate) fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl RequestRecord {
    /// A record of a request not yet routed (route `none`, reason `refused`
    /// until a decision says otherwise), answered by `backend` so far.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        request_id: Arc<str>,
        endpoint: &'static str,
        started: Instant,
        backend: &str,
        baseline: Option<(String, Price)>,
        caller: Option<String>,
        ledger: Option<SpendBook>,
        metrics: bool,
    ) -> RequestRecord {
        RequestRecord {
            request_id,
            endpoint,
            started,
            backend_started: None,
            decision_seconds: None,
            route: UNDECIDED,
            backend: backend.to_string(),
            reason: "refused",
            score: None,
            escalated_from: None,
            status: 0,
            price: Price::FREE,
            baseline,
            caller,
            ledger,
            reservation: None,
            metrics,
            written: false,
        }
    }

    /// Records the request with what it used. `first_byte` is when the first
    /// byte of the answer left (streams); `None` means with the whole answer.
    pub fn finish(mut self, usage: Option<Usage>, first_byte: Option<Instant>) {
        self.write(usage, first_byte);
    }

    fn write(&mut self, usage: Option<Usage>, first_byte: Option<Instant>) {
        self.written = true;
        let total = self.started.elapsed();
        let route = self.route;
        let usage_known = usage.is_some();
        let usage = usage.unwrap_or_default();
        // A call is billed when it was answered (a per-call price included);
        // a refused or failed one costs nothing.
        let billed = usage_known || self.status < 400;
        let cost_at = |price: &Price| if billed { price.cost_of(&usage) } else { 0.0 };
        let cost = cost_at(&self.price);
        let baseline = self.baseline.as_ref().map(|(name, price)| (name, cost_at(price)));
        let saved = baseline.map_or(0.0, |(_, b)| b - cost);
        // The real cost replaces the call's hold on the budgets in one step.
        // Without usage (the client left before the usage chunk) the hold is
        // dropped unsettled, and its worst case is charged.
        match (self.reservation.take(), usage_known) {
            (Some(reservation), true) => reservation.settle(cost),
            (Some(reservation), false) => drop(reservation),
            (None, _) => {
                if cost > 0.0
                    && let Some(ledger) = &self.ledger
                {
                    ledger.record(self.caller.as_deref(), cost);
                }
            }
        }
        if self.metrics {
            let m = metrics();
            m.count_request(
                self.endpoint,
                route,
                &self.backend,
                status_class(self.status),
                self.reason,
            );
            // The latency histograms are the answers' (chat, completions,
            // Responses): an upload's or an embedding's time says nothing of
            // how fast a route answers.
            let answers = is_answer(self.endpoint);
            m.for_route(route, |children| {
                if !answers {
                    return;
                }
                children.duration.observe(seconds(total));
                if self.status < 400 {
                    let ttft = first_byte.map_or(total, |t| t.duration_since(self.started));
                    children.ttft.observe(seconds(ttft));
                }
                if let Some(backend_started) = self.backend_started {
                    children
                        .overhead
                        .observe(seconds(backend_started.duration_since(self.started)));
                    if usage.completion_tokens > 0 {
                        children
                            .time_per_output_token
                            .observe(seconds(backend_started.elapsed()) / usage.completion_tokens as f64);
                    }
                }
                if let Some(decision) = self.decision_seconds {
                    children.decision.observe(decision);
                }
            });
            if cost > 0.0 || usage.prompt_tokens + usage.completion_tokens > 0 {
                m.for_backend(&self.backend, |children| {
                    children.tokens_in.inc_by(usage.prompt_tokens);
                    children.tokens_out.inc_by(usage.completion_tokens);
                    children.cost.inc_by(cost);
                });
                if let Some((name, baseline)) = baseline {
                    m.baseline_cost.with_label_values(&[name]).inc_by(baseline);
                    m.savings.add(saved);
                }
            }
            if let Some(from) = self.escalated_from {
                m.escalations.with_label_values(&[from, route, self.reason]).inc();
            }
        }
        let latency_ms = total.as_secs_f64() * 1e3;
        {
            let mut board = board().lock().expect("status board");
            if board.recent.len() == RECENT {
                board.recent.pop_front();
            }
            board.recent.push_back(Recent {
                at_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                endpoint: self.endpoint,
                route,
                backend: self.backend.clone(),
                reason: self.reason,
                score: self.score,
                status: self.status,
                latency_ms,
                cost_usd: cost,
                saved_usd: saved,
                completion_tokens: usage.completion_tokens,
            });
            *board.by_route.entry(route).or_default() += 1;
            let totals = board.by_endpoint.entry(self.endpoint).or_default();
            totals.requests += 1;
            totals.errors += u64::from(self.status >= 400);
            totals.cost_usd += cost;
            totals.saved_usd += saved;
            board.cost_usd += cost;
            board.baseline_usd += cost + saved;
            if is_answer(self.endpoint) {
                let window = board.latencies_ms.entry(route).or_default();
                if window.len() == LATENCY_WINDOW {
                    window.pop_front();
                }
                window.push_back(latency_ms);
            }
        }
        tracing::info!(
            request_id = %self.request_id,
            endpoint = self.endpoint,
            route,
            backend = self.backend,
            reason = self.reason,
            status = self.status,
            outcome = match self.status {
                CLIENT_CLOSED => "client_disconnected",
                status if status >= 400 => "error",
                _ => "answered",
            },
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            cost_usd = cost,
            saved_usd = saved,
            latency_ms,
            "request finished"
        );
    }
}

/// A record dropped unwritten belongs to a request whose handler was dropped:
/// its client went away. It is recorded with what is known: the decision, if
/// one was made, and no usage. A remote call it had in flight was charged its
/// worst case to the budgets when that call's reservation was dropped.
impl Drop for RequestRecord {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        self.status = CLIENT_CLOSED;
        if self.backend_started.is_none() {
            self.reason = UNDECIDED;
        }
        self.write(None, None);
    }
}

/// A streamed body that finishes its request's record when it ends or is
/// dropped, and ends with an error event when the shutdown drain runs out.
pub struct Recorded {
    inner: BoxStream<'static, Bytes>,
    record: Option<RequestRecord>,
    usage: UsageCell,
    first_byte: Option<Instant>,
    /// Ready once the shutdown drain has run out (see `server::serve`);
    /// `None` once the stream was cut.
    past_drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The streaming stage, a child of the request's span (so its log lines
    /// carry the request id); it closes when the body is dropped.
    span: tracing::Span,
}

impl Recorded {
    /// Call within the request's span. `past_drain` is cancelled when the
    /// shutdown drain runs out.
    pub fn new(
        inner: BoxStream<'static, Bytes>,
        record: RequestRecord,
        usage: UsageCell,
        past_drain: &CancellationToken,
    ) -> Recorded {
        let span = tracing::info_span!("stream", route = record.route, backend = %record.backend);
        Recorded {
            inner,
            record: Some(record),
            usage,
            first_byte: None,
            past_drain: Some(Box::pin(past_drain.clone().cancelled_owned())),
            span,
        }
    }

    /// Ends the stream now: its client gets the error event returned, then
    /// the end of the stream, and the request is recorded with the error's
    /// status. What the upstream was still producing is dropped (and a remote
    /// call's worst case charged, its usage being unknown).
    fn cut_at_shutdown(&mut self) -> Bytes {
        let error = ApiError::ShuttingDown;
        self.inner = futures_util::stream::empty().boxed();
        if let Some(record) = &mut self.record {
            record.status = error.status().as_u16();
        }
        tracing::warn!("the shutdown drain ran out: the stream ends with a server_shutting_down error");
        crate::openai::sse::error_event(&error)
    }

    fn finish(&mut self, ended: bool) {
        if let Some(mut record) = self.record.take() {
            if !ended {
                record.status = CLIENT_CLOSED;
            }
            let usage = *self.usage.lock().expect("usage cell");
            record.finish(usage, self.first_byte);
        }
    }
}

impl Stream for Recorded {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let span = self.span.clone();
        let _stage = span.enter();
        if let Some(past_drain) = self.past_drain.as_mut()
            && past_drain.as_mut().poll(cx).is_ready()
        {
            self.past_drain = None;
            return std::task::Poll::Ready(Some(Ok(self.cut_at_shutdown())));
        }
        match self.inner.as_mut().poll_next(cx) {
            std::task::Poll::Ready(Some(bytes)) => {
                self.first_byte.get_or_insert_with(Instant::now);
                std::task::Poll::Ready(Some(Ok(bytes)))
            }
            std::task::Poll::Ready(None) => {
                self.finish(true);
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let span = self.span.clone();
        let _stage = span.enter();
        self.finish(false);
    }
}
