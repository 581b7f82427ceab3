//! Prometheus metrics: their definitions and the registry `/metrics` serves.
//!
//! Every request (chat, completions, Responses, embeddings, and the calls
//! passed through to other endpoints) ends in exactly one record
//! (`accounting::RequestRecord`),
//! made when its answer is complete (for streams: when the stream ends or the
//! client goes away); the record writes the request metrics defined here, and
//! the local backend and the budget ledger set their gauges. Labels are low-cardinality by
//! construction: tiers, backend names from the policy, status classes, the
//! API's known endpoints ([`endpoint_label`]) and the fixed reason codes; never
//! prompts, keys, ids or caller names.
//!
//! Names follow Prometheus conventions: `_total` counters, `_seconds`
//! histograms, `_usd` money.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from sub-millisecond decisions to minutes-long generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const FAST_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
];
/// One round trip to the shared state store: tens of microseconds on
/// loopback, up to its timeout.
const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const PER_TOKEN_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];
/// One decode step of a local model, 1 ms (a small model, a fast CPU) to 2 s
/// (a large one, or a long prompt read into the batch between two tokens);
/// finest where steps usually fall, so that p50 and p99 interpolate well.
const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub passthrough_bytes: IntCounterVec,
    pub shadow: IntCounterVec,
    pub shadow_agreement: Histogram,
    pub shadow_would_save: Counter,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub time_per_output_token: HistogramVec,
    pub overhead: HistogramVec,
    pub decision: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub baseline_cost: CounterVec,
    pub savings: Gauge,
    pub escalations: IntCounterVec,
    pub retries: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub budget_spent: GaugeVec,
    pub budget_limit: GaugeVec,
    pub budget_remaining: GaugeVec,
    pub pacing_level: Gauge,
    pub budget_reserved: Gauge,
    pub state_store_up: IntGaugeVec,
    pub state_store_errors: IntCounterVec,
    pub state_store_seconds: HistogramVec,
    pub failsafe_spent: Gauge,
    pub failsafe_unreconciled: IntGauge,
    pub rate_limited: IntCounterVec,
    pub local_tokens_per_second: GaugeVec,
    pub local_queue_depth: IntGaugeVec,
    pub local_queue_capacity: IntGaugeVec,
    pub local_in_flight: IntGaugeVec,
    pub local_model_bytes: IntGaugeVec,
    pub local_kv_cache_bytes: IntGaugeVec,
    pub local_batch_sequences: IntGaugeVec,
    pub local_batch_max_sequences: IntGaugeVec,
    pub local_inter_token_latency: HistogramVec,
    pub policy_reloads: IntCounterVec,
    pub heap_trims: IntCounter,
    pub build_info: IntGaugeVec,
    pub up_since: IntGauge,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter(
                "switchyard_requests_total",
                "Requests answered, by API endpoint (chat, completions, responses, embeddings, files, audio, ...), route, backend, outcome (status class) and reason code.",
                &["endpoint", "route", "backend", "outcome", "reason"],
            ),
            passthrough_bytes: counter(
                "switchyard_passthrough_bytes_total",
                "Body bytes passed through, by endpoint and direction (upload: to the upstream; download: to the client).",
                &["endpoint", "direction"],
            ),
            shadow: counter(
                "switchyard_shadow_requests_total",
                "Requests answered remotely in shadow mode, by the route the routing would have chosen and what became of their local comparison (compared, unsampled, busy, preempted, failed, no-local-model).",
                &["would_route", "outcome"],
            ),
            shadow_agreement: Histogram::with_opts(
                HistogramOpts::new(
                    "switchyard_shadow_agreement",
                    "Agreement of the local model's shadow answers with the remote ones (1 = the same).",
                )
                .buckets(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
            )
            .expect("valid histogram"),
            shadow_would_save: Counter::new(
                "switchyard_shadow_would_save_usd_total",
                "What shadowed requests the routing would have kept local cost remotely, in USD: the saving routing would bring.",
            )
            .expect("valid counter"),
            duration: histogram(
                "switchyard_request_duration_seconds",
                "End-to-end request latency, to the last byte of the answer.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            ttft: histogram(
                "switchyard_time_to_first_token_seconds",
                "Time to the first byte of the answer (streams) or to the whole answer.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            time_per_output_token: histogram(
                "switchyard_time_per_output_token_seconds",
                "Generation time divided by output tokens.",
                &["route"],
                PER_TOKEN_BUCKETS,
            ),
            overhead: histogram(
                "switchyard_router_overhead_seconds",
                "Time spent in Switchyard itself before the backend was called (parse, decide).",
                &["route"],
                FAST_BUCKETS,
            ),
            decision: histogram(
                "switchyard_decision_duration_seconds",
                "Routing decision time: features, difficulty model and policy.",
                &["route"],
                FAST_BUCKETS,
            ),
            tokens: counter(
                "switchyard_tokens_total",
                "Tokens by backend and direction (in = prompt, out = completion).",
                &["backend", "direction"],
            ),
            cost: CounterVec::new(
                Opts::new(
                    "switchyard_cost_usd_total",
                    "What the answers cost, in USD, by backend.",
                ),
                &["backend"],
            )
            .expect("valid counter"),
            baseline_cost: CounterVec::new(
                Opts::new(
                    "switchyard_baseline_cost_usd_total",
                    "What the same tokens would have cost on the policy's baseline remote model, in USD.",
                ),
                &["baseline"],
            )
            .expect("valid counter"),
            savings: Gauge::new(
                "switchyard_savings_usd",
                "Baseline cost minus actual cost since start, in USD.",
            )
            .expect("valid gauge"),
            escalations: counter(
                "switchyard_escalations_total",
                "Answers moved up the ladder, by the tier they left, the tier that answered and why.",
                &["from", "to", "reason"],
            ),
            retries: counter(
                "switchyard_upstream_retries_total",
                "Upstream calls retried, by backend and the error that caused it.",
                &["backend", "error"],
            ),
            fallbacks: counter(
                "switchyard_fallbacks_total",
                "Requests answered elsewhere than their decision said, by kind.",
                &["kind"],
            ),
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "switchyard_breaker_state",
                    "Circuit breaker state per remote backend: 0 closed, 1 half-open, 2 open.",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            budget_spent: GaugeVec::new(
                Opts::new("switchyard_budget_spent_usd", "Remote spend in the current period."),
                &["scope", "period"],
            )
            .expect("valid gauge"),
            budget_limit: GaugeVec::new(
                Opts::new("switchyard_budget_limit_usd", "The budget of the period."),
                &["scope", "period"],
            )
            .expect("valid gauge"),
            budget_remaining: GaugeVec::new(
                Opts::new("switchyard_budget_remaining_usd", "Budget left in the current period."),
                &["scope", "period"],
            )
            .expect("valid gauge"),
            pacing_level: Gauge::new(
                "switchyard_budget_pacing_level",
                "Global budget pacing level, spend and calls in flight counted (0 = none, 1 = budget spent).",
            )
            .expect("valid gauge"),
            budget_reserved: Gauge::new(
                "switchyard_budget_reserved_usd",
                "What remote calls in flight may still cost, held against the global budgets.",
            )
            .expect("valid gauge"),
            state_store_up: IntGaugeVec::new(
                Opts::new(
                    "switchyard_state_store_up",
                    "Whether the shared state store answers (1) or not (0: budgets, sessions and rate limits run fail-safe on this replica). Absent with the in-process state.",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            state_store_errors: counter(
                "switchyard_state_store_errors_total",
                "Shared state store operations that failed or timed out, by operation.",
                &["op"],
            ),
            state_store_seconds: histogram(
                "switchyard_state_store_seconds",
                "Round trip of one shared state store operation, by operation.",
                &["op"],
                STORE_BUCKETS,
            ),
            failsafe_spent: Gauge::new(
                "switchyard_failsafe_spent_usd",
                "Remote spend this replica admitted from its fail-safe allowance during the current (or last) state store outage.",
            )
            .expect("valid gauge"),
            failsafe_unreconciled: IntGauge::new(
                "switchyard_failsafe_unreconciled_calls",
                "Remote calls whose cost this replica has not yet written to the shared state store (admitted or settled while it was unreachable).",
            )
            .expect("valid gauge"),
            rate_limited: counter(
                "switchyard_rate_limited_total",
                "Requests refused by a rate limit, by scope (key, global) and limit (requests, tokens).",
                &["scope", "limit"],
            ),
            local_tokens_per_second: GaugeVec::new(
                Opts::new(
                    "switchyard_local_tokens_per_second",
                    "Local engine speed of the last generation, by phase (prefill, decode).",
                ),
                &["backend", "phase"],
            )
            .expect("valid gauge"),
            local_queue_depth: IntGaugeVec::new(
                Opts::new("switchyard_local_queue_depth", "Requests waiting for the local engine."),
                &["backend"],
            )
            .expect("valid gauge"),
            local_queue_capacity: IntGaugeVec::new(
                Opts::new(
                    "switchyard_local_queue_capacity",
                    "The most requests that may wait for the local engine (the policy's queue_capacity); more go remote or get 429.",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            local_in_flight: IntGaugeVec::new(
                Opts::new("switchyard_local_in_flight", "Local generations running or queued."),
                &["backend"],
            )
            .expect("valid gauge"),
            local_model_bytes: IntGaugeVec::new(
                Opts::new(
                    "switchyard_local_model_bytes",
                    "Size of the local model file (weights kept as quantized blocks).",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            local_kv_cache_bytes: IntGaugeVec::new(
                Opts::new(
                    "switchyard_local_kv_cache_bytes",
                    "Memory held by the local engine's KV cache (kept between requests, grown to the largest served).",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            local_batch_sequences: IntGaugeVec::new(
                Opts::new(
                    "switchyard_local_batch_sequences",
                    "Sequences in the local engine's running batch (prefilling or decoding), read at scrape time.",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            local_batch_max_sequences: IntGaugeVec::new(
                Opts::new(
                    "switchyard_local_batch_max_sequences",
                    "The most sequences the local engine decodes together (the policy's max_sequences).",
                ),
                &["backend"],
            )
            .expect("valid gauge"),
            local_inter_token_latency: histogram(
                "switchyard_local_inter_token_latency_seconds",
                "Time between two consecutive tokens of one local generation, as the engine produced them (one observation per gap).",
                &["backend"],
                INTER_TOKEN_BUCKETS,
            ),
            policy_reloads: counter(
                "switchyard_policy_reloads_total",
                "Policy reloads, by result (applied, rejected).",
                &["result"],
            ),
            heap_trims: IntCounter::new(
                "switchyard_heap_trims_total",
                "Passes returning the heap's free pages to the system, run after requests with bodies over 64 KiB.",
            )
            .expect("valid counter"),
            build_info: IntGaugeVec::new(
                Opts::new("switchyard_build_info", "Always 1; the version is a label."),
                &["version"],
            )
            .expect("valid gauge"),
            up_since: IntGauge::new(
                "switchyard_start_time_seconds",
                "Start time of the process, in seconds since the epoch.",
            )
            .expect("valid gauge"),
        };
        let r = &m.registry;
        let register = |c: Box<dyn prometheus::core::Collector>| r.register(c).expect("unique metric names");
        register(Box::new(m.requests.clone()));
        register(Box::new(m.passthrough_bytes.clone()));
        register(Box::new(m.shadow.clone()));
        register(Box::new(m.shadow_agreement.clone()));
        register(Box::new(m.shadow_would_save.clone()));
        register(Box::new(m.duration.clone()));
        register(Box::new(m.ttft.clone()));
        register(Box::new(m.time_per_output_token.clone()));
        register(Box::new(m.overhead.clone()));
        register(Box::new(m.decision.clone()));
        register(Box::new(m.tokens.clone()));
        register(Box::new(m.cost.clone()));
        register(Box::new(m.baseline_cost.clone()));
        register(Box::new(m.savings.clone()));
        register(Box::new(m.escalations.clone()));
        register(Box::new(m.retries.clone()));
        register(Box::new(m.fallbacks.clone()));
        register(Box::new(m.breaker_state.clone()));
        register(Box::new(m.state_store_up.clone()));
        register(Box::new(m.state_store_errors.clone()));
        register(Box::new(m.state_store_seconds.clone()));
        register(Box::new(m.failsafe_spent.clone()));
        register(Box::new(m.failsafe_unreconciled.clone()));
        register(Box::new(m.rate_limited.clone()));
        register(Box::new(m.budget_spent.clone()));
        register(Box::new(m.budget_limit.clone()));
        register(Box::new(m.budget_remaining.clone()));
        register(Box::new(m.pacing_level.clone()));
        register(Box::new(m.budget_reserved.clone()));
        register(Box::new(m.local_tokens_per_second.clone()));
        register(Box::new(m.local_queue_depth.clone()));
        register(Box::new(m.local_queue_capacity.clone()));
        register(Box::new(m.local_in_flight.clone()));
        register(Box::new(m.local_model_bytes.clone()));
        register(Box::new(m.local_kv_cache_bytes.clone()));
        register(Box::new(m.local_batch_sequences.clone()));
        register(Box::new(m.local_batch_max_sequences.clone()));
        register(Box::new(m.local_inter_token_latency.clone()));
        register(Box::new(m.policy_reloads.clone()));
        register(Box::new(m.heap_trims.clone()));
        register(Box::new(m.build_info.clone()));
        register(Box::new(m.up_since.clone()));
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.up_since.set(now as i64);
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The children of the per-route histograms every request observes.
pub struct RouteChildren {
    pub duration: Histogram,
    pub ttft: Histogram,
    pub overhead: Histogram,
    pub time_per_output_token: Histogram,
    pub decision: Histogram,
}

/// The children of the per-backend counters every answered request adds to.
pub struct BackendChildren {
    pub tokens_in: IntCounter,
    pub tokens_out: IntCounter,
    pub cost: Counter,
}

/// Children resolved once per thread and label set, for the record every
/// request makes. `with_label_values` hashes its labels, takes the family's
/// lock and clones an `Arc` on every call: about ten times a request, atomics
/// the cores would contend for. Label sets are few (routes, backends, status
/// classes, reason codes) and never removed, so the caches stay small and
/// valid.
struct Cache<K, V>(RefCell<Vec<(K, V)>>);

impl<K, V> Cache<K, V> {
    const fn new() -> Self {
        Cache(RefCell::new(Vec::new()))
    }

    fn with<R>(&self, matches: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, V), f: impl FnOnce(&V) -> R) -> R {
        let mut entries = self.0.borrow_mut();
        let at = match entries.iter().position(|(key, _)| matches(key)) {
            Some(at) => at,
            None => {
                entries.push(make());
                entries.len() - 1
            }
        };
        f(&entries[at].1)
    }
}

thread_local! {
    static ROUTES: Cache<&'static str, RouteChildren> = const { Cache::new() };
    static BACKENDS: Cache<String, BackendChildren> = const { Cache::new() };
    static REQUESTS: Cache<(&'static str, &'static str, String, &'static str, &'static str), IntCounter> = const { Cache::new() };
}

impl Metrics {
    /// Calls `f` with the per-route histograms of `route`.
    pub fn for_route<R>(&self, route: &'static str, f: impl FnOnce(&RouteChildren) -> R) -> R {
        ROUTES.with(|cache| {
            cache.with(
                |key| *key == route,
                || {
                    let labels = [route];
                    let children = RouteChildren {
                        duration: self.duration.with_label_values(&labels),
                        ttft: self.ttft.with_label_values(&labels),
                        overhead: self.overhead.with_label_values(&labels),
                        time_per_output_token: self.time_per_output_token.with_label_values(&labels),
                        decision: self.decision.with_label_values(&labels),
                    };
                    (route, children)
                },
                f,
            )
        })
    }

    /// Calls `f` with the per-backend token and cost counters of `backend`.
    pub fn for_backend<R>(&self, backend: &str, f: impl FnOnce(&BackendChildren) -> R) -> R {
        BACKENDS.with(|cache| {
            cache.with(
                |key| key == backend,
                || {
                    let children = BackendChildren {
                        tokens_in: self.tokens.with_label_values(&[backend, "in"]),
                        tokens_out: self.tokens.with_label_values(&[backend, "out"]),
                        cost: self.cost.with_label_values(&[backend]),
                    };
                    (backend.to_string(), children)
                },
                f,
            )
        })
    }

    /// Counts one request by endpoint, route, backend, status class and reason.
    pub fn count_request(
        &self,
        endpoint: &'static str,
        route: &'static str,
        backend: &str,
        status_class: &'static str,
        reason: &'static str,
    ) {
        REQUESTS.with(|cache| {
            cache.with(
                |(e, r, b, s, why)| {
                    *e == endpoint && *r == route && b == backend && *s == status_class && *why == reason
                },
                || {
                    let counter = self
                        .requests
                        .with_label_values(&[endpoint, route, backend, status_class, reason]);
                    ((endpoint, route, backend.to_string(), status_class, reason), counter)
                },
                IntCounter::inc,
            )
        })
    }
}

/// The endpoints of OpenAI's API, by the first segment of their path after
/// `/v1/`: the values of the `endpoint` label.
const ENDPOINTS: &[&str] = &[
    "chat",
    "completions",
    "responses",
    "embeddings",
    "models",
    "files",
    "uploads",
    "batches",
    "audio",
    "images",
    "videos",
    "moderations",
    "fine_tuning",
    "vector_stores",
    "assistants",
    "threads",
    "conversations",
    "containers",
    "evals",
    "realtime",
    "chatkit",
    "organization",
];

/// A request path's `endpoint` label: its first segment after `/v1/` when it
/// is one of OpenAI's endpoints, else `other` (never an id, never a
/// client-chosen value).
pub fn endpoint_label(path: &str) -> &'static str {
    let segment = path
        .strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    ENDPOINTS
        .iter()
        .find(|known| **known == segment)
        .copied()
        .unwrap_or("other")
}

pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
