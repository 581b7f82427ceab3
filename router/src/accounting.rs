//! One record per chat request, made when its answer is complete: it feeds
//! the Prometheus metrics, the budget ledger, the status page and one log
//! line, so the four always agree.
//!
//! For streamed answers the record is finished by [`Recorded`], a wrapper
//! around the response body: when the stream ends, or when the client goes
//! away and the body is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::backends::UsageCell;
use crate::metrics::{metrics, seconds};
use crate::openai::Usage;
use crate::policy::Price;
use crate::routing::budget::{Ledger, Reservation};

/// What a request came to.
pub struct RequestRecord {
    pub request_id: Arc<str>,
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
    pub ledger: Option<Arc<Ledger>>,
    /// What the remote call answering the request holds against the budgets;
    /// released when the record is finished, after its cost is recorded.
    pub reservation: Option<Reservation>,
    /// `server.metrics`; off, the request still reaches the ledger, the status
    /// page and the log.
    pub metrics: bool,
}

/// One finished request, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub at_unix_ms: u64,
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
    pub cost_usd: f64,
    pub baseline_usd: f64,
    /// Recent latencies per route, for percentiles.
    pub latencies_ms: std::collections::BTreeMap<&'static str, VecDeque<f64>>,
}

/// The status recorded for a stream whose client went away before its end
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Decisions and latencies kept for the status page.
const RECENT: usize = 50;
const LATENCY_WINDOW: usize = 1000;

pub fn board() -> &'static Mutex<Board> {
    static BOARD: OnceLock<Mutex<Board>> = OnceLock::new();
    BOARD.get_or_init(Mutex::default)
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl RequestRecord {
    /// Records the request with what it used. `first_byte` is when the first
    /// byte of the answer left (streams); `None` means with the whole answer.
    pub fn finish(mut self, usage: Option<Usage>, first_byte: Option<Instant>) {
        let total = self.started.elapsed();
        let route = self.route;
        let usage_known = usage.is_some();
        let usage = usage.unwrap_or_default();
        let cost = self.price.cost_usd(usage.prompt_tokens, usage.completion_tokens);
        let baseline = self
            .baseline
            .as_ref()
            .map(|(name, price)| (name, price.cost_usd(usage.prompt_tokens, usage.completion_tokens)));
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
            m.count_request(route, &self.backend, status_class(self.status), self.reason);
            m.for_route(route, |children| {
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
            if usage.prompt_tokens + usage.completion_tokens > 0 {
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
            board.cost_usd += cost;
            board.baseline_usd += cost + saved;
            let window = board.latencies_ms.entry(route).or_default();
            if window.len() == LATENCY_WINDOW {
                window.pop_front();
            }
            window.push_back(latency_ms);
        }
        tracing::info!(
            request_id = %self.request_id,
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

/// A streamed body that finishes its request's record when it ends or is dropped.
pub struct Recorded {
    inner: BoxStream<'static, Bytes>,
    record: Option<RequestRecord>,
    usage: UsageCell,
    first_byte: Option<Instant>,
    /// The streaming stage, a child of the request's span (so its log lines
    /// carry the request id); it closes when the body is dropped.
    span: tracing::Span,
}

impl Recorded {
    /// Call within the request's span.
    pub fn new(inner: BoxStream<'static, Bytes>, record: RequestRecord, usage: UsageCell) -> Recorded {
        let span = tracing::info_span!("stream", route = record.route, backend = %record.backend);
        Recorded {
            inner,
            record: Some(record),
            usage,
            first_byte: None,
            span,
        }
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
