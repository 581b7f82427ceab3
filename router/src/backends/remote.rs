//! A remote OpenAI-compatible endpoint.
//!
//! The request goes upstream as the client sent it, with two changes: `model` is
//! replaced by the upstream model name, and streamed requests always ask for the
//! usage chunk (`stream_options.include_usage`) so every call can be priced. When
//! the client did not ask for usage itself, that chunk and the `"usage": null`
//! fields OpenAI adds to every chunk are removed again before the client sees
//! them, so its stream looks exactly as if it had called the provider directly.
//!
//! A call is answered when the upstream's answer is known to be good: a whole
//! completion that is a JSON object with a `choices` array, or a stream whose
//! first data event has arrived and is a valid chunk. Until then nothing has
//! reached the client, so any failure (an error status, a stall, a cut, a
//! malformed body or event, an in-band error event) fails the attempt: it is
//! retried, counted by the circuit breaker, and then the router tries the next
//! backend. The breaker counts the call a success only once it is answered; a
//! stream that fails after that counts as a failure too, and ends the
//! client's stream with an OpenAI error event.
//!
//! Streams are relayed event by event as they arrive, each event's data as the
//! upstream wrote it (the first one too, after it was held for the check). If
//! the client goes away, hyper drops the response body, which drops
//! `RelayState` and with it the upstream response: the upstream connection
//! is closed and generation stops.
//!
//! Nothing the upstream says about a failure reaches the client or the log
//! unfiltered: see [`crate::openai::error`] for what is kept of error bodies,
//! and `describe` for connection errors (their text names the URL).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;
use tokio::time::Instant;

use axum::http::StatusCode;

use super::breaker::{Breaker, BreakerState, Refused};
use crate::openai::request::ChatRequest;
use crate::openai::sse::{self, Chunk, SseDecoder, SseEvent};
use crate::outcome::{BackendError, UpstreamError};
use crate::policy::{EndpointPrices, Price, RemoteBackendConfig, RetryConfig, Timeouts};
use crate::reply::{ChatReply, Relayed, Usage, UsageCell};

/// Largest non-streamed completion we accept from upstream. A chat completion of
/// 1M tokens is ~4 MiB of JSON; 64 MiB leaves room for logprobs and many choices.
const MAX_COMPLETION_BYTES: usize = 64 * 1024 * 1024;
/// Error bodies are short; more than this is not worth relaying.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

pub struct RemoteBackend {
    name: String,
    /// The chat endpoint.
    url: String,
    /// What the API's paths follow, e.g. `https://api.openai.com/v1`.
    base_url: String,
    model: String,
    api_key: Result<Option<HeaderValue>, String>,
    /// The environment variable holding the key, for messages that point at it.
    key_env: Option<String>,
    /// The key itself, only to redact it from what upstreams say.
    secret: Option<Arc<str>>,
    /// `scheme://host:port` of `url`, to keep it out of error messages.
    origin: String,
    price: Price,
    endpoint_prices: EndpointPrices,
    timeouts: Timeouts,
    max_output_tokens: Option<u64>,
    retry: RetryConfig,
    /// Shared with the backend of the same name in the next policy generation,
    /// so a reload neither forgets nor resets a failing upstream.
    breaker: Arc<Breaker>,
    http: reqwest::Client,
}

impl RemoteBackend {
    pub fn new(config: &RemoteBackendConfig, breaker: Option<Arc<Breaker>>) -> RemoteBackend {
        let api_key = match config.api_key_env() {
            None => Ok(None),
            Some(env) => match std::env::var(env) {
                Ok(key) if !key.is_empty() => HeaderValue::from_str(&format!("Bearer {key}"))
                    .map(|mut value| {
                        value.set_sensitive(true);
                        Some(value)
                    })
                    .map_err(|_| format!("environment variable {env} holds characters not allowed in a header")),
                _ => Err(format!("environment variable {env} is not set")),
            },
        };
        // reqwest is built without a default TLS provider (aws-lc needs a C
        // toolchain and cmake); ring is installed once, here, before first use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("TLS backend initialises");
        let secret = config
            .api_key_env()
            .and_then(|env| std::env::var(env).ok())
            .filter(|key| !key.is_empty())
            .map(Arc::from);
        let url = format!("{}/chat/completions", config.base_url().trim_end_matches('/'));
        let origin = reqwest::Url::parse(&url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        RemoteBackend {
            name: config.name().to_string(),
            url,
            base_url: config.base_url().trim_end_matches('/').to_string(),
            model: config.model().to_string(),
            api_key,
            key_env: config.api_key_env().map(str::to_string),
            secret,
            origin,
            price: config.price,
            endpoint_prices: config.endpoint_prices.clone(),
            timeouts: config.timeouts.clone(),
            max_output_tokens: config.max_output_tokens(),
            retry: config.retry.clone(),
            breaker: breaker.unwrap_or_else(|| Arc::new(Breaker::new(&config.breaker))),
            http,
        }
    }

    /// The largest `max_tokens` the upstream model accepts, when the
    /// policy says.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_output_tokens
    }

    pub fn price(&self) -> Price {
        self.price
    }

    /// What it charges for calls other than chat (embeddings, audio, ...).
    pub fn endpoint_prices(&self) -> &EndpointPrices {
        &self.endpoint_prices
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether calls can go out: its key is set and its circuit breaker is not
    /// open (half-open counts as ready: the next call is the probe).
    pub fn readiness(&self) -> Result<(), String> {
        self.api_key.as_ref().map_err(Clone::clone)?;
        if self.breaker.state() == BreakerState::Open {
            return Err(
                "its circuit breaker is open after repeated failures; a probe goes out after the cooldown".into(),
            );
        }
        Ok(())
    }

    /// One call, retried on failures that a later attempt may not meet
    /// (connect errors, timeouts, stalls, cut streams, 429, 500, 502, 503,
    /// 504, invalid answers), with exponential backoff and full jitter,
    /// waiting at least what a 429's `Retry-After` asks, within `deadline` and
    /// behind the circuit breaker. Nothing has reached the client before this
    /// returns, so every retry is safe.
    ///
    /// Each attempt holds a breaker [`Permit`](super::breaker::Permit): when
    /// this future is dropped mid-call (the client left), the permit goes
    /// unrecorded, and a probe's slot is freed for the next call.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        request_id: &str,
        deadline: Instant,
    ) -> Result<ChatReply, BackendError> {
        let mut attempt = 1;
        let mut last_failure = None;
        loop {
            let permit = match self.breaker.admit() {
                Ok(permit) => permit,
                // Our own failed attempts opened it: their error says more.
                Err(refused) => return Err(last_failure.unwrap_or_else(|| self.breaker_open(refused))),
            };
            let result = match tokio::time::timeout_at(deadline, self.call(request, request_id)).await {
                Ok(result) => result,
                Err(_) => Err(self.timeout(self.timeouts.total())),
            };
            let failed = result.as_ref().err().is_some_and(BackendError::is_transient);
            // A key the upstream refuses fails every call until an operator
            // fixes it: no retry can help, but the breaker counts it, so routed
            // requests skip this backend without a round trip each and
            // `/readyz` says it is not ready.
            let refused_key = matches!(result, Err(BackendError::UpstreamAuth { .. }));
            log_breaker_change(&self.name, permit.record(!(failed || refused_key)));
            let err = match result {
                Err(err) if failed && attempt < self.retry.max_attempts() => err,
                other => return other,
            };
            let backoff = self.backoff(attempt);
            let delay = match retry_after(&err) {
                Some(asked) if asked > self.retry.max_delay() => return Err(err),
                Some(asked) => asked.max(backoff),
                None => backoff,
            };
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            crate::metrics::metrics()
                .retries
                .with_label_values(&[self.name.as_str(), err.code()])
                .inc();
            tracing::info!(
                backend = self.name,
                attempt,
                error = err.code(),
                delay_ms = delay.as_millis() as u64,
                "retrying upstream call"
            );
            tokio::time::sleep(delay).await;
            last_failure = Some(err);
            attempt += 1;
        }
    }

    fn breaker_open(&self, refused: Refused) -> BackendError {
        BackendError::BreakerOpen {
            backend: self.name.clone(),
            // Whole seconds, rounded up: coming back a moment early only meets another refusal.
            retry_after_s: refused.retry_after.as_millis().div_ceil(1000).max(1) as u64,
        }
    }

    /// Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(n-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let ceiling = self
            .retry
            .base_delay()
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(self.retry.max_delay());
        let random = std::hash::RandomState::new().build_hasher().finish();
        Duration::from_millis(random % (ceiling.as_millis() as u64 + 1))
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn breaker_handle(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    async fn call(&self, request: &ChatRequest, request_id: &str) -> Result<ChatReply, BackendError> {
        let api_key = self.api_key.as_ref().map_err(|reason| BackendError::Unavailable {
            backend: self.name.clone(),
            reason: reason.clone(),
        })?;
        if let (Some(limit), Some(asked)) = (self.max_output_tokens, request.max_tokens)
            && asked > limit
        {
            let param = request.max_tokens_param();
            return Err(BackendError::rejected(
                format!("'{param}' is too large: {asked}. This model supports at most {limit} completion tokens."),
                param,
            ));
        }

        // A Responses request goes to `/responses` as the client sent it (its
        // stream's last event carries the usage); a legacy completion to
        // `/completions`; chat asks for the usage chunk.
        let responses = request.responses.as_ref().map(|r| &r.original);
        let strip_usage = request.stream && !request.include_usage && responses.is_none();
        let mut body = responses.unwrap_or(&request.body).clone();
        body.insert("model".into(), Value::String(self.model.clone()));
        if strip_usage {
            body.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
        }
        let payload = serde_json::to_vec(&body).expect("a JSON map serialises");

        let started = Instant::now();
        let deadline = started + self.timeouts.total();
        let other_url;
        let url = if responses.is_some() {
            other_url = format!("{}/responses", self.base_url);
            &other_url
        } else if request.legacy.is_some() {
            other_url = format!("{}/completions", self.base_url);
            &other_url
        } else {
            &self.url
        };
        let mut upstream = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .body(payload);
        if let Some(key) = api_key {
            upstream = upstream.header(header::AUTHORIZATION, key.clone());
        }
        let response = match tokio::time::timeout(self.timeouts.first_byte(), upstream.send()).await {
            Err(_) => return Err(self.timeout(self.timeouts.first_byte())),
            Ok(Err(err)) if err.is_timeout() => {
                return Err(self.timeout(self.timeouts.connect()));
            }
            Ok(Err(err)) => return Err(self.unreachable(&err)),
            Ok(Ok(response)) => response,
        };

        let response = self.successful(response, deadline).await?;
        let status = response.status();
        let headers = relayed_headers(response.headers());

        if !request.stream {
            let body = self.read_body(response, deadline, MAX_COMPLETION_BYTES).await?;
            let parsed: Value = serde_json::from_slice(&body)
                .map_err(|err| self.invalid(format!("the completion is not JSON ({err})")))?;
            let (items, usage) = match responses {
                Some(_) => ("output", Usage::from_response(&parsed)),
                None => ("choices", Usage::from_value(&parsed)),
            };
            if !parsed.get(items).is_some_and(Value::is_array) {
                return Err(self.invalid(format!("the answer has no `{items}` array")));
            }
            self.log_usage(request_id, "complete", usage, started);
            return Ok(ChatReply::Relayed(Relayed::Complete {
                body,
                usage,
                headers,
                status,
            }));
        }

        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.is_empty() && !content_type.starts_with("text/event-stream") {
            return Err(self.invalid(format!("expected an event stream, got content-type {content_type:?}")));
        }
        let usage_cell = UsageCell::default();
        let mut relay = RelayState {
            upstream: Box::pin(response.bytes_stream()),
            decoder: SseDecoder::default(),
            pending: VecDeque::new(),
            finished: false,
            answered: false,
            failure: None,
            strip_usage,
            responses: responses.is_some(),
            usage: None,
            usage_cell: usage_cell.clone(),
            idle: self.timeouts.idle(),
            deadline,
            total: self.timeouts.total(),
            backend: self.name.clone(),
            request_id: request_id.to_string(),
            price: self.price,
            started,
            breaker: self.breaker.clone(),
            secret: self.secret.clone(),
            origin: self.origin.clone(),
            outcome: "client_disconnected",
        };
        relay.until_answered().await?;
        let events = futures_util::stream::unfold(relay, RelayState::next_event).boxed();
        Ok(ChatReply::Relayed(Relayed::Stream {
            events,
            headers,
            usage: usage_cell,
        }))
    }

    /// Passes a request for another endpoint of the API through: `path`
    /// (with its query) after the base URL, the client's `headers` that
    /// describe the body and what it accepts, the body streamed as it comes,
    /// our key and `x-request-id` added. The answer comes back unread once
    /// its head has arrived (within `total_ms`), for its body to be
    /// streamed to the client; dropping it closes the upstream call. An error
    /// status is an error here, its body kept as for chat (credentials
    /// redacted, a non-OpenAI body described by its size). Not retried: the
    /// body may be a stream that cannot be sent twice.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &HeaderMap,
        body: reqwest::Body,
        request_id: &str,
    ) -> Result<reqwest::Response, BackendError> {
        let api_key = self.api_key.as_ref().map_err(|reason| BackendError::Unavailable {
            backend: self.name.clone(),
            reason: reason.clone(),
        })?;
        let mut upstream = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .header("x-request-id", request_id)
            .body(body);
        for (name, value) in headers {
            if FORWARDED_REQUEST_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("openai-") {
                upstream = upstream.header(name, value);
            }
        }
        if let Some(key) = api_key {
            upstream = upstream.header(header::AUTHORIZATION, key.clone());
        }
        let started = Instant::now();
        // The answer's head comes after the whole upload: bounded by the
        // call's total time, not by the first byte of a model's answer.
        let response = match tokio::time::timeout(self.timeouts.total(), upstream.send()).await {
            Err(_) => return Err(self.timeout(self.timeouts.total())),
            Ok(Err(err)) if err.is_timeout() => return Err(self.timeout(self.timeouts.connect())),
            Ok(Err(err)) => return Err(self.unreachable(&err)),
            Ok(Ok(response)) => response,
        };
        self.successful(response, started + self.timeouts.total()).await
    }

    /// The upstream's answer if it is a success; else the error it is: our
    /// key refused (401/403: its body is not read, it may quote the key and
    /// tells the client nothing it could act on), or the upstream's error,
    /// what is safe of its body kept (read within `deadline`).
    async fn successful(
        &self,
        response: reqwest::Response,
        deadline: Instant,
    ) -> Result<reqwest::Response, BackendError> {
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(BackendError::UpstreamAuth {
                backend: self.name.clone(),
                status,
                key_env: self.key_env.clone(),
            });
        }
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = self
            .read_body(response, deadline, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        Err(BackendError::Upstream(Box::new(UpstreamError::from_body(
            &self.name,
            status,
            &body,
            retry_after,
            self.secret.as_deref(),
        ))))
    }

    /// Reads a whole body within the request deadline, the idle bound
    /// between its pieces, and a size bound.
    async fn read_body(
        &self,
        response: reqwest::Response,
        deadline: Instant,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        loop {
            let wait_until = (Instant::now() + self.timeouts.idle()).min(deadline);
            match tokio::time::timeout_at(wait_until, chunks.next()).await {
                Err(_) if wait_until == deadline => return Err(self.timeout(self.timeouts.total())),
                Err(_) => {
                    return Err(BackendError::UpstreamStalled {
                        backend: self.name.clone(),
                        idle_ms: self.timeouts.idle().as_millis() as u64,
                    });
                }
                Ok(None) => return Ok(Bytes::from(body)),
                Ok(Some(Err(err))) => return Err(self.unreachable(&err)),
                Ok(Some(Ok(chunk))) => {
                    if body.len() + chunk.len() > limit {
                        return Err(self.invalid(format!("the response is larger than {limit} bytes")));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    fn timeout(&self, after: Duration) -> BackendError {
        BackendError::UpstreamTimeout {
            backend: self.name.clone(),
            timeout_ms: after.as_millis() as u64,
        }
    }

    fn unreachable(&self, err: &reqwest::Error) -> BackendError {
        BackendError::UpstreamUnreachable {
            backend: self.name.clone(),
            detail: describe(err, &self.origin),
        }
    }

    fn invalid(&self, detail: String) -> BackendError {
        BackendError::UpstreamInvalid {
            backend: self.name.clone(),
            detail,
        }
    }

    fn log_usage(&self, request_id: &str, outcome: &str, usage: Option<Usage>, started: Instant) {
        log_completion(&self.name, request_id, outcome, usage, self.price, started);
    }
}

fn log_completion(
    backend: &str,
    request_id: &str,
    outcome: &str,
    usage: Option<Usage>,
    price: Price,
    started: Instant,
) {
    let usage = usage.unwrap_or_default();
    tracing::debug!(
        request_id,
        backend,
        outcome,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        cost_usd = price.cost_usd(usage.prompt_tokens, usage.completion_tokens),
        upstream_ms = started.elapsed().as_millis() as u64,
        "upstream call finished"
    );
}

fn log_breaker_change(backend: &str, changed: Option<BreakerState>) {
    if let Some(state) = changed {
        tracing::warn!(backend, breaker = state.as_str(), "circuit breaker changed state");
    }
}

/// A 429's or 503's `Retry-After` in seconds (HTTP dates are not worth the
/// parsing: backoff covers them).
fn retry_after(err: &BackendError) -> Option<Duration> {
    let BackendError::Upstream(upstream) = err else {
        return None;
    };
    let value = upstream.retry_after.as_ref()?;
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// Upstream headers a client of the provider would act on.
/// A client's headers a passed-through request keeps (with any `openai-*`,
/// such as `openai-beta`): those that say what the body is and what the
/// client accepts. Its `authorization` never goes: ours replaces it.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "accept",
    "accept-encoding",
    "idempotency-key",
];

fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut relayed = HeaderMap::new();
    for (name, value) in upstream {
        if name.as_str().starts_with("x-ratelimit-") {
            relayed.insert(name.clone(), value.clone());
        }
    }
    relayed
}

/// What went wrong with a connection or a body, without the URL that
/// `reqwest::Error`'s own text carries ("error sending request for url
/// (...)"): what kind of failure, then the causes ("connection refused").
/// The upstream's origin is blanked from the causes too, in case one quotes it.
fn describe(err: &reqwest::Error, origin: &str) -> String {
    let mut text = String::from(if err.is_connect() {
        "could not connect"
    } else if err.is_timeout() {
        "timed out"
    } else if err.is_body() || err.is_decode() {
        "the response broke off"
    } else {
        "the call failed"
    });
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    if origin.is_empty() {
        text
    } else {
        text.replace(origin, "the upstream")
    }
}

/// The state of one relayed stream. Dropping it (the client left) closes the upstream.
struct RelayState {
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: SseDecoder,
    /// Events to relay, and the failure that ends the stream after them.
    pending: VecDeque<Result<Bytes, BackendError>>,
    finished: bool,
    /// A valid first data event has arrived. Until then a failure is the
    /// attempt's (`failure`, retried or falling back); after, the stream's
    /// (an error event to the client and a failure for the breaker).
    answered: bool,
    failure: Option<BackendError>,
    strip_usage: bool,
    /// A Responses stream: events named by their `type`, ending with the
    /// response's last event (no `[DONE]`).
    responses: bool,
    usage: Option<Usage>,
    usage_cell: UsageCell,
    idle: Duration,
    deadline: Instant,
    total: Duration,
    backend: String,
    request_id: String,
    price: Price,
    started: Instant,
    breaker: Arc<Breaker>,
    secret: Option<Arc<str>>,
    origin: String,
    /// How the stream ended, for the log line written on drop.
    outcome: &'static str,
}

impl RelayState {
    /// Reads until the first data event is in and valid (it stays in
    /// `pending`, with any comments before it, to be relayed as it came), or
    /// the attempt failed.
    async fn until_answered(&mut self) -> Result<(), BackendError> {
        while !self.answered {
            if self.finished {
                return Err(self.failure.take().unwrap_or_else(|| BackendError::UpstreamInvalid {
                    backend: self.backend.clone(),
                    detail: "the stream ended before its first chunk".into(),
                }));
            }
            self.read_upstream().await;
        }
        Ok(())
    }

    async fn next_event(mut self) -> Option<(Result<Bytes, BackendError>, RelayState)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if self.finished {
                return None;
            }
            // Events may wait in the decoder: `until_answered` stops at the first.
            self.drain_events();
            if self.pending.is_empty() && !self.finished {
                self.read_upstream().await;
            }
        }
    }

    /// Waits for the next piece of the upstream's stream and decodes what it completes.
    async fn read_upstream(&mut self) {
        let wait_until = (Instant::now() + self.idle).min(self.deadline);
        match tokio::time::timeout_at(wait_until, self.upstream.next()).await {
            Err(_) if wait_until == self.deadline => self.fail(BackendError::UpstreamTimeout {
                backend: self.backend.clone(),
                timeout_ms: self.total.as_millis() as u64,
            }),
            Err(_) => self.fail(BackendError::UpstreamStalled {
                backend: self.backend.clone(),
                idle_ms: self.idle.as_millis() as u64,
            }),
            Ok(None) => self.fail(BackendError::UpstreamStreamCut {
                backend: self.backend.clone(),
                detail: "the upstream closed the stream before it was complete".into(),
            }),
            Ok(Some(Err(err))) => self.fail(BackendError::UpstreamStreamCut {
                backend: self.backend.clone(),
                detail: format!("the upstream stream broke: {}", describe(&err, &self.origin)),
            }),
            Ok(Some(Ok(chunk))) => {
                self.decoder.push(&chunk);
                self.drain_events();
            }
        }
    }

    /// Decodes the complete events in the decoder, stopping after the one that
    /// answers the call (so the answer is recorded before any later failure).
    fn drain_events(&mut self) {
        while !self.finished {
            let was_answered = self.answered;
            match self.decoder.next_event() {
                Ok(None) => return,
                Ok(Some(SseEvent::Data(data))) => self.relay_data(data),
                Ok(Some(comment @ SseEvent::Comment(_))) => self.pending.push_back(Ok(comment.encode())),
                Err(err) => self.fail(BackendError::UpstreamInvalid {
                    backend: self.backend.clone(),
                    detail: format!("the upstream event stream is malformed ({err:?})"),
                }),
            }
            if self.answered && !was_answered {
                return;
            }
        }
    }

    /// One event of a Responses stream, relayed with its `event:` name; its
    /// terminal event carries the usage and ends the stream.
    fn relay_response_event(&mut self, data: String) {
        let event: Value = match serde_json::from_str(&data) {
            Ok(event @ Value::Object(_)) => event,
            _ => {
                return self.fail(BackendError::UpstreamInvalid {
                    backend: self.backend.clone(),
                    detail: "an event is not a JSON object".into(),
                });
            }
        };
        let Some(kind) = event["type"].as_str() else {
            return self.fail(BackendError::UpstreamInvalid {
                backend: self.backend.clone(),
                detail: "an event has no `type`".into(),
            });
        };
        if kind == "error" {
            let error = UpstreamError::from_body(
                &self.backend,
                StatusCode::BAD_GATEWAY,
                serde_json::json!({ "error": event }).to_string().as_bytes(),
                None,
                self.secret.as_deref(),
            );
            return self.fail(BackendError::Upstream(Box::new(error)));
        }
        self.answered = true;
        let terminal = matches!(kind, "response.completed" | "response.incomplete" | "response.failed");
        if let Some(usage) = Usage::from_response(&event["response"]) {
            self.usage = Some(usage);
            *self.usage_cell.lock().expect("usage cell") = Some(usage);
        }
        self.pending
            .push_back(Ok(Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))));
        if terminal {
            self.finish("complete");
        }
    }

    fn relay_data(&mut self, data: String) {
        if self.responses {
            return self.relay_response_event(data);
        }
        if data == sse::DONE {
            if !self.answered {
                return self.fail(BackendError::UpstreamInvalid {
                    backend: self.backend.clone(),
                    detail: "the stream ended before its first chunk".into(),
                });
            }
            self.pending.push_back(Ok(sse::encode_data(sse::DONE)));
            self.finish("complete");
            return;
        }
        let usage = match sse::read_chunk(&data) {
            Ok(Chunk::Choices { usage }) => usage,
            Ok(Chunk::Error) => {
                // The provider failed in-band; what it says is passed on as
                // from an error response: redacted, never as it came.
                let error = UpstreamError::from_body(
                    &self.backend,
                    StatusCode::BAD_GATEWAY,
                    data.as_bytes(),
                    None,
                    self.secret.as_deref(),
                );
                return self.fail(BackendError::Upstream(Box::new(error)));
            }
            Err(why) => {
                return self.fail(BackendError::UpstreamInvalid {
                    backend: self.backend.clone(),
                    detail: why.to_string(),
                });
            }
        };
        self.answered = true;
        if let Some(usage) = usage {
            self.usage = Some(usage);
            *self.usage_cell.lock().expect("usage cell") = Some(usage);
        }
        // Only chunks that mention usage are rewritten; the rest pass as they came.
        if !self.strip_usage || !data.contains("\"usage\"") {
            self.pending.push_back(Ok(sse::encode_data(&data)));
            return;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
            // read_chunk parsed it already; should a tree still fail, the event passes as it came.
            self.pending.push_back(Ok(sse::encode_data(&data)));
            return;
        };
        if let Some(object) = chunk.as_object_mut() {
            object.remove("usage");
        }
        let usage_only = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        if !usage_only {
            self.pending.push_back(Ok(sse::encode_data(&chunk.to_string())));
        }
    }

    /// Before the answer, the attempt fails with `err`; after, the stream
    /// ends with it (written as an OpenAI error event, which SDKs raise as an
    /// APIError), and the breaker counts the broken answer.
    fn fail(&mut self, err: BackendError) {
        self.finish(err.code());
        if self.answered {
            log_breaker_change(&self.backend, self.breaker.record_broken_answer());
            self.pending.push_back(Err(err));
        } else {
            self.failure = Some(err);
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        self.finished = true;
        self.outcome = outcome;
    }
}

impl Drop for RelayState {
    fn drop(&mut self) {
        log_completion(
            &self.backend,
            &self.request_id,
            self.outcome,
            self.usage,
            self.price,
            self.started,
        );
    }
}
