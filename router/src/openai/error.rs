//! The error a client is answered with, [`ApiError`], and how it is written
//! in OpenAI's wire format: `{"error": {"message", "type", "param", "code"}}`
//! with the matching HTTP status. It is made of the request's own faults
//! (found here, in `openai::request`, and by `auth`) and the domain errors of
//! the layers below ([`BackendError`], [`RouteError`] from `outcome`), which
//! are written out here and nowhere else. OpenAI SDKs map the status to a
//! typed exception (`BadRequestError`, `AuthenticationError`, `NotFoundError`,
//! `RateLimitError`, ...) and surface `message`, so both must be right.
//!
//! Messages never contain secrets: upstream keys are injected into the outgoing
//! request only and never formatted into any string here. What an upstream
//! says in its error bodies is another matter (providers echo the key they were
//! sent, whole or masked, and proxies dump request headers), so an upstream's
//! error reaches the client as an [`UpstreamError`]: its status, `type`, `code`
//! and `param`, with its message passed through [`redact_secrets`], and a body
//! that is not an OpenAI error object never at all. An upstream 401 or 403
//! means our own key for it is wrong, which the client can do nothing about:
//! that is a 502 ([`BackendError::UpstreamAuth`]), never the 401 the client would
//! read as "your Switchyard key is wrong".

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::outcome::{BackendError, RateRefusal, Reason, RouteError, UpstreamError};

/// When no backend can take a request, clients are told to come back after this
/// many seconds: long enough for a breaker to close or a model to load.
const NO_BACKEND_RETRY_AFTER_S: &str = "5";
/// A full local queue drains in seconds (a place in the batch frees whenever
/// one of its answers ends).
const LOCAL_BUSY_RETRY_AFTER_S: &str = "1";

#[derive(Debug, Clone)]
pub enum ApiError {
    /// The body is not JSON; the message says where it broke.
    InvalidJson(String),
    /// JSON, but not a valid chat request.
    InvalidRequest { message: String, param: Option<String> },
    /// Missing or unknown client key.
    Unauthorized(&'static str),
    /// The requested model is not served here.
    ModelNotFound(String),
    /// Body over the configured limit.
    BodyTooLarge { limit_bytes: usize },
    /// A body holding more JSON values than are parsed for one request.
    BodyTooComplex { limit_values: usize },
    /// Wrong method or path.
    NotFound(String),
    /// The backend asked could not answer.
    Backend(BackendError),
    /// The policy leaves no tier that can take the request.
    Route(RouteError),
    /// The daemon is stopping and its shutdown drain ran out before this
    /// request's answer ended.
    ShuttingDown,
    /// A rate limit of the policy (`rate_limits`) refuses the request.
    RateLimited(Box<RateRefusal>),
}

impl From<BackendError> for ApiError {
    fn from(err: BackendError) -> ApiError {
        ApiError::Backend(err)
    }
}

impl From<RouteError> for ApiError {
    fn from(err: RouteError) -> ApiError {
        ApiError::Route(err)
    }
}

impl UpstreamError {
    /// Reads an upstream's error body. `secret` is the key we sent it, to be
    /// redacted from anything quoted. A body that is not an OpenAI error
    /// object is described by its size only: it may be an HTML page or a dump
    /// of our request headers.
    pub fn from_body(
        backend: &str,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<HeaderValue>,
        secret: Option<&str>,
    ) -> UpstreamError {
        let redacted = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => {
                serde_json::Value::String(truncate_for_message(&redact_secrets(text, secret)))
            }
            serde_json::Value::Number(_) => value.clone(),
            _ => serde_json::Value::Null,
        };
        let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")).filter(|e| e.is_object()) {
            Some(error) => UpstreamError {
                backend: backend.to_string(),
                status,
                message: match &error["message"] {
                    serde_json::Value::String(text) => truncate_for_message(&redact_secrets(text, secret)),
                    _ => format!("Backend `{backend}` returned HTTP {status} without a message"),
                },
                error_type: match redacted(&error["type"]) {
                    serde_json::Value::String(kind) => kind,
                    _ => "upstream_error".to_string(),
                },
                code: redacted(&error["code"]),
                param: match redacted(&error["param"]) {
                    number @ serde_json::Value::Number(_) => serde_json::Value::String(number.to_string()),
                    other => other,
                },
                retry_after,
            },
            None => UpstreamError {
                backend: backend.to_string(),
                status,
                message: format!(
                    "Backend `{backend}` returned HTTP {status} with a body that is not an OpenAI error ({} bytes, not shown)",
                    body.len()
                ),
                error_type: "upstream_error".to_string(),
                code: serde_json::Value::String("upstream_error".to_string()),
                param: serde_json::Value::Null,
                retry_after,
            },
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge { .. } | ApiError::BodyTooComplex { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Backend(e) => backend_status(e),
            ApiError::Route(e) => route_status(e),
        }
    }

    /// Stable, low-cardinality code: the `code` field and a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized(_) => "invalid_api_key",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::BodyTooComplex { .. } => "request_too_complex",
            ApiError::NotFound(_) => "not_found",
            ApiError::Backend(e) => e.code(),
            ApiError::Route(e) => route_code(e),
            ApiError::ShuttingDown => "server_shutting_down",
            ApiError::RateLimited(_) => "rate_limit_exceeded",
        }
    }

    fn error_type(&self) -> &str {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::BodyTooComplex { .. }
            | ApiError::NotFound(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::Backend(e) => backend_error_type(e),
            ApiError::Route(e) => route_error_type(e),
            // OpenAI's type for failures on the server's side, which SDKs and
            // retry logic treat as retryable; the request was sound.
            ApiError::ShuttingDown => "server_error",
            // As OpenAI's own: the limit's kind.
            ApiError::RateLimited(refused) => refused.kind.as_str(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::InvalidJson(detail) => {
                format!("We could not parse the JSON body of your request: {detail}")
            }
            ApiError::InvalidRequest { message, .. } => message.clone(),
            ApiError::Unauthorized(why) => (*why).to_string(),
            ApiError::ModelNotFound(model) => format!(
                "The model `{}` does not exist or you do not have access to it. GET /v1/models lists the models served here.",
                truncate_for_message(model)
            ),
            ApiError::BodyTooLarge { limit_bytes } => {
                format!("Request body is larger than the limit of {limit_bytes} bytes.")
            }
            ApiError::BodyTooComplex { limit_values } => format!(
                "Request body holds more than {limit_values} JSON values (objects, arrays, strings, numbers, booleans and nulls); send fewer, larger ones."
            ),
            ApiError::NotFound(what) => format!("Unknown endpoint: {what}"),
            ApiError::Backend(e) => backend_message(e),
            ApiError::Route(e) => route_message(e),
            ApiError::ShuttingDown => {
                "The server is shutting down and this request did not finish in time. Retry it.".to_string()
            }
            ApiError::RateLimited(refused) => {
                let scope = match refused.scope {
                    "key" => "your client key",
                    _ => "all callers together",
                };
                let when = match refused.retry_ms {
                    Some(ms) => format!("Please try again in {:.1}s.", ms as f64 / 1000.0),
                    None => {
                        "This request alone is over the limit: it can never be admitted; make it smaller.".to_string()
                    }
                };
                format!(
                    "Rate limit reached for {scope} on {} per min: Limit {}, Requested {}. {when}",
                    refused.kind.as_str(),
                    refused.per_minute,
                    refused.requested
                )
            }
        }
    }

    fn param(&self) -> serde_json::Value {
        let param = match self {
            ApiError::InvalidRequest { param, .. } | ApiError::Backend(BackendError::Rejected { param, .. }) => {
                param.as_deref()
            }
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::Backend(BackendError::ContextLengthExceeded { .. }) => Some("messages"),
            ApiError::Backend(BackendError::Upstream(e)) => return e.param.clone(),
            _ => None,
        };
        param.into()
    }

    /// The JSON error object, also used for the error event of a broken stream.
    /// An upstream's error keeps its own `code` (the metric label, [`Self::code`],
    /// stays low-cardinality).
    pub fn to_json(&self) -> serde_json::Value {
        let code = match self {
            ApiError::Backend(BackendError::Upstream(e)) => e.code.clone(),
            _ => self.code().into(),
        };
        json!({
            "error": {
                "message": self.message(),
                "type": self.error_type(),
                "param": self.param(),
                "code": code,
            }
        })
    }

    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }
}

fn backend_status(e: &BackendError) -> StatusCode {
    match e {
        BackendError::Rejected { .. } | BackendError::ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
        BackendError::LocalBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
        BackendError::Unavailable { .. } | BackendError::BreakerOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
        BackendError::Upstream(e) => e.status,
        BackendError::UpstreamAuth { .. }
        | BackendError::UpstreamUnreachable { .. }
        | BackendError::UpstreamStreamCut { .. }
        | BackendError::UpstreamInvalid { .. } => StatusCode::BAD_GATEWAY,
        BackendError::UpstreamTimeout { .. }
        | BackendError::UpstreamStalled { .. }
        | BackendError::LocalTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
    }
}

fn backend_error_type(e: &BackendError) -> &str {
    match e {
        BackendError::Rejected { .. } | BackendError::ContextLengthExceeded { .. } => "invalid_request_error",
        BackendError::LocalBusy { .. } => "rate_limit_error",
        // OpenAI's type for a failure on the serving side.
        BackendError::LocalTimeout { .. } => "server_error",
        BackendError::Upstream(e) => &e.error_type,
        BackendError::Unavailable { .. }
        | BackendError::BreakerOpen { .. }
        | BackendError::UpstreamAuth { .. }
        | BackendError::UpstreamUnreachable { .. }
        | BackendError::UpstreamTimeout { .. }
        | BackendError::UpstreamStalled { .. }
        | BackendError::UpstreamStreamCut { .. }
        | BackendError::UpstreamInvalid { .. } => "upstream_error",
    }
}

fn backend_message(e: &BackendError) -> String {
    match e {
        BackendError::Unavailable { backend, reason } => format!("Backend `{backend}` is unavailable: {reason}"),
        BackendError::BreakerOpen { backend, retry_after_s } => format!(
            "Backend `{backend}` is unavailable: its circuit breaker is open after repeated failures; a probe may go in {retry_after_s} s"
        ),
        BackendError::Upstream(e) => e.message.clone(),
        BackendError::UpstreamAuth {
            backend,
            status,
            key_env,
        } => {
            let setting = match key_env {
                Some(env) => format!("the key in its `api_key_env` ({env})"),
                None => "its `api_key_env` (it sends no key)".to_string(),
            };
            format!(
                "Backend `{backend}` refused this gateway's credentials (HTTP {}): check {setting}. This is not about your own key.",
                status.as_u16()
            )
        }
        BackendError::UpstreamUnreachable { backend, detail } => {
            format!("Could not reach backend `{backend}`: {detail}")
        }
        BackendError::UpstreamTimeout { backend, timeout_ms } => {
            format!("Backend `{backend}` did not answer within {timeout_ms} ms")
        }
        BackendError::UpstreamStalled { backend, idle_ms } => {
            format!("Backend `{backend}` sent nothing for {idle_ms} ms after its answer began")
        }
        BackendError::UpstreamStreamCut { backend, detail } => format!("Backend `{backend}`: {detail}"),
        BackendError::UpstreamInvalid { backend, detail } => {
            format!("Backend `{backend}` sent an invalid response: {detail}")
        }
        BackendError::ContextLengthExceeded { message } | BackendError::Rejected { message, .. } => message.clone(),
        BackendError::LocalBusy { backend, detail } => format!("Backend `{backend}` is busy: {detail}. Retry shortly."),
        BackendError::LocalTimeout {
            backend,
            deadline_ms,
            detail,
        } => format!("Backend `{backend}` did not finish within the request deadline ({deadline_ms} ms): {detail}."),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = axum::Json(self.to_json()).into_response();
        *response.status_mut() = self.status();
        let retry_after = match &self {
            ApiError::Backend(BackendError::Upstream(upstream)) => upstream.retry_after.clone(),
            ApiError::Route(
                RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. } | RouteError::StateStoreDown { .. },
            ) => Some(HeaderValue::from_static(NO_BACKEND_RETRY_AFTER_S)),
            ApiError::Backend(BackendError::LocalBusy { .. }) => {
                Some(HeaderValue::from_static(LOCAL_BUSY_RETRY_AFTER_S))
            }
            ApiError::Backend(BackendError::BreakerOpen { retry_after_s, .. }) => {
                Some(HeaderValue::from(*retry_after_s))
            }
            ApiError::RateLimited(refused) => refused.retry_ms.map(|ms| {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("retry-after-ms"), HeaderValue::from(ms));
                HeaderValue::from(ms.div_ceil(1000))
            }),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

/// Upstream key fragments this long or longer are redacted: OpenAI's own
/// masked form of a key shows its last 4 characters.
const MIN_SECRET_FRAGMENT_CHARS: usize = 4;
/// What a redacted word is replaced with.
const REDACTED: &str = "[redacted]";

/// `text` with every word that may be a credential replaced by `[redacted]`:
/// one holding `secret` (our key for the upstream) or a fragment of it of
/// `MIN_SECRET_FRAGMENT_CHARS` or more (masked forms such as `sk-...3a9c`),
/// the word after `Bearer`, and `sk-` tokens (any provider's key shape).
/// Words are split at whitespace, quotes and brackets, so a key quoted in a
/// JSON string or a header dump is one word. Over-redacting an innocent word
/// that shares four characters with the key is the price of never showing it.
pub fn redact_secrets(text: &str, secret: Option<&str>) -> String {
    let secret = secret.filter(|s| s.len() >= MIN_SECRET_FRAGMENT_CHARS);
    let is_separator = |c: char| c.is_whitespace() || "\"'`,;()[]{}<>=".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut after_bearer = false;
    let mut rest = text;
    while !rest.is_empty() {
        let word_end = rest.find(is_separator).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        if !word.is_empty() {
            let credential =
                after_bearer || has_key_shape(word) || secret.is_some_and(|secret| shares_fragment(word, secret));
            out.push_str(if credential { REDACTED } else { word });
            after_bearer = word.eq_ignore_ascii_case("bearer");
        }
        let separators_end = tail.find(|c: char| !is_separator(c)).unwrap_or(tail.len());
        out.push_str(&tail[..separators_end]);
        rest = &tail[separators_end..];
    }
    out
}

/// Whether `word` holds an `sk-` key (OpenAI's and many providers' shape), not
/// merely the letters (`task-based`, `disk-full`).
fn has_key_shape(word: &str) -> bool {
    word.match_indices("sk-").any(|(at, _)| {
        let starts_word = word[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
        starts_word && word.len() - at - 3 >= MIN_SECRET_FRAGMENT_CHARS
    })
}

/// Whether `word` contains any run of [`MIN_SECRET_FRAGMENT_CHARS`] bytes of `secret`.
fn shares_fragment(word: &str, secret: &str) -> bool {
    word.len() >= MIN_SECRET_FRAGMENT_CHARS
        && secret
            .as_bytes()
            .windows(MIN_SECRET_FRAGMENT_CHARS)
            .any(|fragment| word.as_bytes().windows(fragment.len()).any(|w| w == fragment))
}

/// Client-supplied or upstream text quoted in a message is bounded, so an error
/// can never echo back a megabyte.
fn truncate_for_message(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// How a [`RouteError`] is written on the wire: status, code, type, message.
fn route_status(e: &RouteError) -> StatusCode {
    match e {
        RouteError::PrivacyUnservable { .. } => StatusCode::BAD_REQUEST,
        RouteError::BudgetExhausted { .. } | RouteError::MaxCostExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
        RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. } | RouteError::StateStoreDown { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

fn route_code(e: &RouteError) -> &'static str {
    match e {
        RouteError::PrivacyUnservable { .. } => "privacy_local_only",
        RouteError::BudgetExhausted { .. } => "budget_exhausted",
        RouteError::MaxCostExceeded { .. } => "max_cost_exceeded",
        RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. } => "no_backend_available",
        RouteError::StateStoreDown { .. } => "state_store_unavailable",
    }
}

fn route_error_type(e: &RouteError) -> &'static str {
    match e {
        RouteError::PrivacyUnservable { .. } => "invalid_request_error",
        RouteError::BudgetExhausted { .. } | RouteError::MaxCostExceeded { .. } => "insufficient_quota",
        RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. } => "upstream_error",
        RouteError::StateStoreDown { .. } => "server_error",
    }
}

fn route_message(e: &RouteError) -> String {
    let local_cannot = |why: &Reason| match why {
        Reason::ModelPinned => "the request names a remote model".to_string(),
        // Found spent when the call was about to go out (calls in flight
        // took the rest), with no local answer to fall back on.
        Reason::BudgetExhausted => "this request cannot be answered locally".to_string(),
        Reason::RemoteOnlyEndpoint => "this endpoint has no local counterpart".to_string(),
        _ => format!("the local model cannot serve it ({})", why.as_str()),
    };
    match e {
        RouteError::PrivacyUnservable { rule, why } => format!(
            "Privacy rule `{rule}` keeps this request on the local model, but {}.",
            local_cannot(why)
        ),
        RouteError::BudgetExhausted { why } => format!(
            "The remote budget is spent (counting remote calls in flight) and {}. Retry when the budget resets or calls in flight finish.",
            local_cannot(why)
        ),
        RouteError::MaxCostExceeded { estimate_usd, why } => format!(
            "A remote answer may cost up to ${estimate_usd:.6}, over x-switchyard-max-cost-usd, and {}.",
            local_cannot(why)
        ),
        RouteError::NoBackend { why } => format!("No remote backend is available and {}.", local_cannot(why)),
        RouteError::RemoteFailed { last } => format!(
            "Every remote backend failed (last error: {last}) and the local model cannot serve this request. Retry shortly."
        ),
        RouteError::StateStoreDown {
            allowance_usd,
            reason,
            why,
        } => format!(
            "The shared state store that keeps the budgets is {reason}; this replica's fail-safe allowance for remote calls (${allowance_usd:.2}) is used up, and {}. Retry shortly.",
            local_cannot(why)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-double-SECRET-7f3a9c";

    fn upstream(status: StatusCode, body: &str) -> UpstreamError {
        UpstreamError::from_body("cloud", status, body.as_bytes(), None, Some(KEY))
    }

    #[test]
    fn an_upstream_openai_error_keeps_its_status_type_code_and_param() {
        let body = r#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let err = ApiError::Backend(BackendError::Upstream(Box::new(UpstreamError {
            retry_after: Some(HeaderValue::from_static("7")),
            ..upstream(StatusCode::TOO_MANY_REQUESTS, body)
        })));
        assert_eq!(err.to_json(), serde_json::from_str::<serde_json::Value>(body).unwrap());
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn an_upstream_non_json_error_is_described_not_relayed() {
        let dump = format!("400 Bad Request\nauthorization: Bearer {KEY}\nhost: cloud");
        let json = ApiError::Backend(BackendError::Upstream(Box::new(upstream(
            StatusCode::BAD_REQUEST,
            &dump,
        ))))
        .to_json();
        let message = json["error"]["message"].as_str().unwrap();
        assert!(!message.contains("SECRET") && !message.contains("host"), "{message}");
        assert!(message.contains(&format!("{} bytes", dump.len())), "{message}");
        assert_eq!(json["error"]["code"], "upstream_error");
    }

    #[test]
    fn an_upstream_message_loses_every_form_of_our_key() {
        for quoted in [
            format!("Incorrect API key provided: {KEY}."),
            "Incorrect API key provided: sk-doubl***********3a9c. You can find your key at ...".to_string(),
            "Key ending in '3a9c' is revoked".to_string(),
            format!("Invalid header: Authorization: Bearer {KEY}"),
            "Bearer abc.def.ghi was rejected".to_string(),
            "key sk-proj-AbCdEf0123456789 is not ours but still a key".to_string(),
        ] {
            let body = json!({ "error": { "message": quoted, "type": "invalid_request_error", "param": null, "code": "invalid_api_key" } });
            let err = upstream(StatusCode::BAD_REQUEST, &body.to_string());
            for leak in ["SECRET", "3a9c", "abc.def", "AbCdEf", "sk-"] {
                assert!(!err.message.contains(leak), "{leak} in {:?}", err.message);
            }
            assert!(err.message.contains("[redacted]"), "{}", err.message);
        }
    }

    #[test]
    fn words_that_merely_spell_sk_are_kept() {
        assert_eq!(
            redact_secrets("a task-based disk-full risk-free answer", None),
            "a task-based disk-full risk-free answer"
        );
    }

    #[test]
    fn redaction_keeps_the_rest_of_the_message() {
        assert_eq!(
            redact_secrets("The model `gpt-x` does not exist, key: \"sk-abc123\".", Some(KEY)),
            "The model `gpt-x` does not exist, key: \"[redacted]\"."
        );
    }

    #[test]
    fn an_upstream_auth_failure_blames_the_backends_key_setting() {
        let err = ApiError::Backend(BackendError::UpstreamAuth {
            backend: "cloud".into(),
            status: StatusCode::UNAUTHORIZED,
            key_env: Some("CLOUD_KEY".into()),
        });
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        let json = err.to_json();
        assert_eq!(json["error"]["code"], "upstream_auth_failed");
        assert_eq!(json["error"]["type"], "upstream_error");
        assert!(
            json["error"]["message"].as_str().unwrap().contains("CLOUD_KEY"),
            "{json}"
        );
    }

    #[test]
    fn a_breaker_refusal_says_when_to_come_back() {
        let response = ApiError::Backend(BackendError::BreakerOpen {
            backend: "cloud".into(),
            retry_after_s: 12,
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "12");
    }
}
