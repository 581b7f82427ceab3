//! `GET /metrics` (Prometheus text format), `GET /` (the status page) and
//! `GET /status.json` (what the status page draws).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::accounting::board;
use crate::backends::Backend;
use crate::metrics::metrics;
use crate::openai::error::ApiError;

const STATUS_PAGE: &str = include_str!("../../assets/status.html");

pub async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    let live = state.policy.current();
    if !live.metrics_enabled {
        return ApiError::NotFound("GET /metrics (metrics are off in this policy)".into()).into_response();
    }
    let m = metrics();
    // Gauges that describe the present are read now, at scrape time.
    for backend in live.backends.all() {
        match backend.as_ref() {
            Backend::Remote(remote) => {
                let state = match remote.breaker().state() {
                    crate::backends::breaker::BreakerState::Closed => 0,
                    crate::backends::breaker::BreakerState::HalfOpen => 1,
                    crate::backends::breaker::BreakerState::Open => 2,
                };
                m.breaker_state.with_label_values(&[remote.name()]).set(state);
            }
            Backend::Local(local) => {
                if let Some(figures) = local.load_figures() {
                    for (gauge, value) in [
                        (&m.local_queue_depth, figures.queued as i64),
                        (&m.local_queue_capacity, figures.queue_capacity as i64),
                        (&m.local_in_flight, figures.in_flight),
                        (&m.local_model_bytes, figures.model_bytes as i64),
                        (&m.local_kv_cache_bytes, figures.kv_cache_bytes as i64),
                        (&m.local_batch_sequences, figures.running as i64),
                        (&m.local_batch_max_sequences, figures.max_sequences as i64),
                    ] {
                        gauge.with_label_values(&[local.name()]).set(value);
                    }
                }
            }
        }
    }
    if let (Some(ledger), Some(limits)) = (&live.ledger, live.routing.budgets()) {
        m.pacing_level.set(ledger.pacing(limits, None).level);
        m.budget_reserved.set(ledger.reserved_usd());
        for status in ledger.status(limits) {
            let labels = [status.scope, status.period];
            m.budget_spent.with_label_values(&labels).set(status.spent_usd);
            m.budget_limit.with_label_values(&labels).set(status.limit_usd);
            m.budget_remaining
                .with_label_values(&labels)
                .set((status.limit_usd - status.spent_usd).max(0.0));
        }
    }
    let mut response = m.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn status_json(State(state): State<Arc<AppState>>) -> Json<Value> {
    let live = state.policy.current();
    let board = board().lock().expect("status board");
    let latency: serde_json::Map<String, Value> = board
        .latencies_ms
        .iter()
        .map(|(route, window)| {
            let mut sorted: Vec<f64> = window.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let p = |q| percentile(&sorted, q);
            (
                route.to_string(),
                json!({ "p50": p(0.5), "p95": p(0.95), "p99": p(0.99) }),
            )
        })
        .collect();
    let speed = &metrics().local_tokens_per_second;
    let local: Vec<Value> = live
        .backends
        .all()
        .iter()
        .filter_map(|b| match b.as_ref() {
            Backend::Local(local) => {
                let figures = local.load_figures();
                Some(json!({
                    "backend": local.name(),
                    "decode_tokens_per_s": speed.with_label_values(&[local.name(), "decode"]).get(),
                    "prefill_tokens_per_s": speed.with_label_values(&[local.name(), "prefill"]).get(),
                    "queue_depth": figures.map_or(0, |f| f.queued),
                    "running": figures.map_or(0, |f| f.running),
                    "max_sequences": figures.map_or(0, |f| f.max_sequences),
                }))
            }
            Backend::Remote(_) => None,
        })
        .collect();
    Json(json!({
        "routes": board.by_route,
        "endpoints": board.by_endpoint,
        "cost_usd": board.cost_usd,
        "baseline_usd": board.baseline_usd,
        "savings_usd": board.baseline_usd - board.cost_usd,
        "baseline_backend": live.baseline.as_ref().map(|(name, _)| name),
        "latency_ms": latency,
        "local": local,
        "recent": board.recent.iter().rev().collect::<Vec<_>>(),
        "state_store": live.store.as_deref().map(super::health::state_store_json),
    }))
}
