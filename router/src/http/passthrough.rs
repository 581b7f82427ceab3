//! Every other endpoint of the API (`/v1/files`, `/v1/audio/...`,
//! `/v1/images/...`, batches, moderations, vector stores, fine-tuning, and
//! whatever comes next under `/v1/`): passed through to the policy's
//! `routing.passthrough_backend` (default: the first of `remote_backends`),
//! with the client's key checked (the `/v1` routes' middleware)
//! and ours put in its place.
//!
//! Bodies stream both ways as they come, multipart and binary included: an
//! upload of any size holds a few chunks in memory, not the file. Only a body
//! that holds text (JSON, `text/*`, a URL-encoded form) is read whole (within
//! `server.max_body_bytes`) when the policy has privacy rules, and checked
//! against them: a private one is refused with `privacy_local_only`, since no
//! local model answers these endpoints. A client that goes away drops the
//! upstream call with it.
//!
//! The answer keeps the upstream's status, body and the headers that
//! describe them (content type, length and disposition, rate limits,
//! `openai-*`); an error answer is written as a chat call's is (its type,
//! code and param kept, credentials redacted).
//!
//! Money: a call the backend's `endpoint_prices` price is admitted by the
//! budgets first (holding its per-call price and its input tokens' bound, the
//! body's bytes, while it runs) and refused with `budget_exhausted` when they
//! are spent; its cost is read from the answer's `usage` as it streams by and
//! recorded like a chat call's: ledger, metrics, status page and log line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::headers::{REASON, ROUTE};
use super::{AppState, BACKEND, RequestId, SELF_BACKEND, refused};
use crate::accounting::{CLIENT_CLOSED, RequestRecord};
use crate::auth::Caller;
use crate::openai::error::ApiError;
use crate::outcome::{Reason, RouteError, Tier};
use crate::reply::Usage;
use crate::routing::caller_name;

/// The upstream's response headers a client sees.
const RELAYED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-disposition",
    "content-encoding",
    "retry-after",
];

pub(super) async fn forward(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    caller: Option<Extension<Caller>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let caller = caller.map_or(Caller::Anonymous, |Extension(caller)| caller);
    let live = state.policy.current();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let endpoint = crate::metrics::endpoint_label(path);
    let mut record = RequestRecord::new(
        request_id.clone(),
        endpoint,
        started,
        SELF_BACKEND,
        None,
        caller_name(&caller).map(str::to_string),
        live.ledger.clone(),
        live.metrics_enabled,
    );
    let Some(remote) = live.routing.passthrough_backend().and_then(|b| b.as_remote()) else {
        let err = ApiError::NotFound(format!(
            "{} {path} (no remote backend in the policy's routing to pass it to)",
            parts.method
        ));
        return refused(record, err);
    };
    let bytes_metric = |direction: &str| {
        crate::metrics::metrics()
            .passthrough_bytes
            .with_label_values(&[endpoint, direction])
    };
    let prices = remote.endpoint_prices();
    let endpoint_path = path.strip_prefix("/v1/").unwrap_or("");

    // A body of text is read whole when a privacy rule or a price must read
    // it; any other streams.
    let text = holds_text(&parts.headers);
    let (body, model, body_bytes) =
        if text && (live.routing.has_privacy_rules() || prices.first_for(endpoint_path).is_some()) {
            let bytes = match super::chat::read_body(&parts.headers, body, live.max_body_bytes).await {
                Ok(bytes) => bytes,
                Err(err) => return refused(record, err),
            };
            let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
            if let Some(rule) = live.routing.privacy_match(&text_of(&bytes, json.as_ref())) {
                tracing::info!(
                    privacy_rule = rule,
                    endpoint,
                    "a privacy rule keeps this request on the machine"
                );
                let err = ApiError::Route(RouteError::PrivacyUnservable {
                    rule: rule.to_string(),
                    why: Reason::RemoteOnlyEndpoint,
                });
                return refused(record, err);
            }
            if live.metrics_enabled {
                bytes_metric("upload").inc_by(bytes.len() as u64);
            }
            let model = json.as_ref().and_then(|b| b.get("model")?.as_str().map(str::to_string));
            let length = bytes.len() as u64;
            (reqwest::Body::from(bytes), model, Some(length))
        } else {
            let metrics = live.metrics_enabled.then(|| bytes_metric("upload"));
            let length = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let body = reqwest::Body::wrap_stream(body.into_data_stream().inspect(move |chunk| {
                if let (Some(counter), Ok(chunk)) = (&metrics, chunk) {
                    counter.inc_by(chunk.len() as u64);
                }
            }));
            (body, None, length)
        };

    // A priced call (prices apply to POSTs: creating, not polling or
    // downloading) holds what it may cost before it goes: its per-call price
    // and its input at most one token a byte (no tokenizer makes more).
    // Output tokens are not bounded in advance; they are charged when known,
    // from an answer asked for uncompressed so its usage can be read.
    let mut headers = parts.headers;
    let priced = (parts.method == axum::http::Method::POST)
        .then(|| prices.of(endpoint_path, model.as_deref()))
        .flatten();
    if let Some(price) = priced {
        let bound = price.cost_usd(body_bytes.unwrap_or(0), 0);
        match live.routing.admit_call(live.ledger.as_ref(), &caller, bound).await {
            Ok(reservation) => record.reservation = reservation,
            Err(err) => return refused(record, err),
        }
        record.price = price;
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    record.route = Tier::Remote.as_str();
    record.backend = remote.name().to_string();
    record.reason = Reason::RemoteOnlyEndpoint.as_str();
    record.backend_started = Some(Instant::now());
    let upstream_path = format!(
        "{}{}",
        path.strip_prefix("/v1").unwrap_or(path),
        parts.uri.query().map_or(String::new(), |q| format!("?{q}"))
    );
    let answer = remote
        .forward(parts.method.clone(), &upstream_path, &headers, body, &request_id)
        .await;
    let mut response = match answer {
        Ok(upstream) => {
            let status = upstream.status();
            let headers = relayed(upstream.headers());
            record.status = status.as_u16();
            if !status.is_success()
                && let Some(reservation) = record.reservation.take()
            {
                // The upstream refused the call: nothing was billed.
                reservation.release();
            }
            let metrics = live.metrics_enabled.then(|| bytes_metric("download"));
            let upstream_length = upstream.content_length();
            let tail = (status.is_success() && reports_usage(&headers)).then(UsageTail::default);
            let stream = upstream
                .bytes_stream()
                .inspect(move |chunk| {
                    if let (Some(counter), Ok(chunk)) = (&metrics, chunk) {
                        counter.inc_by(chunk.len() as u64);
                    }
                })
                .boxed();
            let relay = Relay {
                expected: upstream_length,
                sent: 0,
                inner: stream,
                record: Some(record),
                tail,
                past_drain: Box::pin(state.past_drain.clone().cancelled_owned()),
                first_byte: None,
            };
            let mut response = Response::new(Body::from_stream(relay));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(err) => {
            tracing::warn!(endpoint, backend = remote.name(), error = ?err, "pass-through call failed");
            if let Some(reservation) = record.reservation.take() {
                // Failed before an answer: nothing was billed.
                reservation.release();
            }
            // Still the pass-through's answer: it says so, as a relayed one does.
            let mut response = refused(record, ApiError::Backend(err));
            response
                .headers_mut()
                .insert(REASON, HeaderValue::from_static(Reason::RemoteOnlyEndpoint.as_str()));
            return response;
        }
    };
    let headers = response.headers_mut();
    if let Ok(name) = HeaderValue::from_str(remote.name()) {
        headers.insert(BACKEND, name);
    }
    headers.insert(ROUTE, HeaderValue::from_static(Tier::Remote.as_str()));
    headers.insert(REASON, HeaderValue::from_static(Reason::RemoteOnlyEndpoint.as_str()));
    response
}

/// The upstream's answer on its way to the client: it finishes the request's
/// record when it ends (with the usage read from its tail), when it breaks,
/// or when the client goes away; past the shutdown drain it is cut.
struct Relay {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    record: Option<RequestRecord>,
    tail: Option<UsageTail>,
    past_drain: Pin<Box<WaitForCancellationFutureOwned>>,
    first_byte: Option<Instant>,
    /// The upstream's `content-length`: once that much is handed over the
    /// answer is whole (the server may drop the body without asking for more).
    expected: Option<u64>,
    sent: u64,
}

impl Relay {
    fn finish(&mut self, status: Option<u16>) {
        if let Some(mut record) = self.record.take() {
            if let Some(status) = status {
                record.status = status;
            }
            let usage = status.is_none().then(|| self.tail.as_ref()?.usage()).flatten();
            record.finish(usage, self.first_byte);
        }
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.record.is_some() && self.past_drain.as_mut().poll(cx).is_ready() {
            tracing::warn!("the shutdown drain ran out: the pass-through body is cut");
            self.finish(Some(ApiError::ShuttingDown.status().as_u16()));
            return Poll::Ready(Some(Err(std::io::Error::other("server shutting down"))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.first_byte.get_or_insert_with(Instant::now);
                if let Some(tail) = &mut self.tail {
                    tail.push(&chunk);
                }
                self.sent += chunk.len() as u64;
                if self.expected == Some(self.sent) {
                    self.finish(None);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::warn!(error = %err, "the upstream's pass-through body broke");
                self.finish(Some(502));
                Poll::Ready(Some(Err(std::io::Error::other("upstream body broke"))))
            }
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let whole = self.expected == Some(self.sent);
        self.finish((!whole).then_some(CLIENT_CLOSED));
    }
}

/// Whether an answer of this type may carry a `usage` (JSON or events).
fn reports_usage(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    content_type.starts_with("application/json") || content_type.starts_with("text/event-stream")
}

/// The last bytes of an answer, where its `usage` is: at the end of a JSON
/// object (after an embeddings list, a transcription's text) or in the last
/// events of a stream. Holding the tail, not the body, keeps a large answer's
/// memory flat.
#[derive(Default)]
struct UsageTail {
    bytes: Vec<u8>,
}

/// Bytes of an answer kept to find its usage.
const USAGE_TAIL_BYTES: usize = 64 * 1024;

impl UsageTail {
    fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= USAGE_TAIL_BYTES {
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[chunk.len() - USAGE_TAIL_BYTES..]);
            return;
        }
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(USAGE_TAIL_BYTES);
        self.bytes.drain(..overflow);
        self.bytes.extend_from_slice(chunk);
    }

    /// The last `"usage": {...}` object of the tail. Inside a JSON string a
    /// quote is escaped, so `"usage"` followed by a colon is always a key.
    fn usage(&self) -> Option<Usage> {
        let key = b"\"usage\"";
        let mut end = self.bytes.len();
        while let Some(at) = self.bytes[..end].windows(key.len()).rposition(|w| w == key) {
            end = at;
            let rest = &self.bytes[at + key.len()..];
            let value = rest.trim_ascii_start().strip_prefix(b":").map(<[u8]>::trim_ascii_start);
            if let Some(value) = value.filter(|v| v.starts_with(b"{"))
                && let Some(Ok(object)) = serde_json::Deserializer::from_slice(value)
                    .into_iter::<serde_json::Value>()
                    .next()
            {
                return Usage::from_object(&object);
            }
        }
        None
    }
}

/// Whether the body is text a privacy rule can read.
fn holds_text(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    content_type.starts_with("application/json")
        || content_type.starts_with("text/")
        || content_type.starts_with("application/x-www-form-urlencoded")
}

/// A body's text as the privacy rules read it: a JSON body's strings and
/// numbers (as for chat), else the text itself.
fn text_of(bytes: &[u8], json: Option<&serde_json::Value>) -> String {
    match json {
        Some(serde_json::Value::Object(body)) => crate::routing::privacy::egress_text(body),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn relayed(upstream: &HeaderMap) -> HeaderMap {
    let mut relayed = HeaderMap::new();
    for (name, value) in upstream {
        let name_text = name.as_str();
        if RELAYED_RESPONSE_HEADERS.contains(&name_text)
            || name_text.starts_with("x-ratelimit-")
            || name_text.starts_with("openai-")
        {
            relayed.append(name.clone(), value.clone());
        }
    }
    relayed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(body: &str, chunk: usize) -> UsageTail {
        let mut tail = UsageTail::default();
        for piece in body.as_bytes().chunks(chunk) {
            tail.push(piece);
        }
        tail
    }

    #[test]
    fn usage_is_read_from_the_answers_tail_in_any_of_its_forms() {
        let embeddings = format!(
            r#"{{"object":"list","data":[{{"embedding":"{}"}}],"model":"m","usage":{{"prompt_tokens":7,"total_tokens":7}}}}"#,
            "A".repeat(200_000)
        );
        let read = tail_of(&embeddings, 8192).usage().unwrap();
        assert_eq!((read.prompt_tokens, read.completion_tokens), (7, 0));
        let audio =
            r#"{"text":"the word \"usage\": {\"seconds\": 99} said","usage":{"type":"duration","seconds":61.2}}"#;
        assert_eq!(tail_of(audio, 5).usage().unwrap().seconds, 62);
        let events = "event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\nevent: response.completed\ndata: {\"response\":{\"usage\": {\"input_tokens\":3,\"output_tokens\":4},\"x\":1}}\n\n";
        let read = tail_of(events, 3).usage().unwrap();
        assert_eq!((read.prompt_tokens, read.completion_tokens), (3, 4));
        assert_eq!(tail_of(r#"{"text":"no usage here"}"#, 4).usage(), None);
        assert_eq!(tail_of(r#"{"usage":null}"#, 4).usage(), None);
    }
}
