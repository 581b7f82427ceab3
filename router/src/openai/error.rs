//! The one error type every request path returns, rendered once, in OpenAI's wire
//! format: `{"error": {"message", "type", "param", "code"}}` with the matching
//! HTTP status. OpenAI SDKs map the status to a typed exception
//! (`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, ...)
//! and surface `message`, so both must be right.
//!
//! Messages never contain secrets: upstream keys are injected into the outgoing
//! request only and never formatted into any string here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::routing::RouteError;

/// When no backend can take a request, clients are told to come back after this
/// many seconds: long enough for a breaker to close or a model to load.
const NO_BACKEND_RETRY_AFTER_S: &str = "5";
/// A full local queue drains in seconds (one generation at a time).
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
    /// Wrong method or path.
    NotFound(String),
    /// The backend exists but cannot be used now (e.g. its key is not set).
    BackendUnavailable { backend: String, reason: String },
    /// The upstream answered with an error; we pass its status and body through.
    Upstream(UpstreamError),
    /// Could not connect to the upstream, or it broke the connection.
    UpstreamUnreachable { backend: String, detail: String },
    /// The upstream did not answer within its timeout.
    UpstreamTimeout { backend: String, timeout_ms: u64 },
    /// The upstream answered 2xx with a body that is not what OpenAI's format promises.
    UpstreamInvalid { backend: String, detail: String },
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded { message: String },
    /// The local engine cannot take the request now: its queue is full, or
    /// the request found no turn within the backend's `max_queue_wait_ms`.
    LocalBusy { backend: String, detail: String },
    /// The policy leaves no tier that can take the request.
    Route(RouteError),
    /// A local generation was stopped at the request's deadline
    /// (`server.request_deadline_ms`); `deadline_ms` is what was left of it
    /// when the local backend was asked, `detail` how far it got.
    LocalTimeout {
        backend: String,
        deadline_ms: u64,
        detail: String,
    },
}

/// An upstream's own error response, passed through as it came.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub status: StatusCode,
    /// The upstream body when it already is an OpenAI error object; otherwise we wrap it.
    pub body: Bytes,
    pub retry_after: Option<HeaderValue>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidRequest { .. } | ApiError::ContextLengthExceeded { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::LocalBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BackendUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(e) => e.status,
            ApiError::UpstreamUnreachable { .. } | ApiError::UpstreamInvalid { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } | ApiError::LocalTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Route(e) => e.status(),
        }
    }

    /// Stable, low-cardinality code: the `code` field and, later, a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized(_) => "invalid_api_key",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::BackendUnavailable { .. } => "backend_unavailable",
            ApiError::Upstream(_) => "upstream_error",
            ApiError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
            ApiError::UpstreamInvalid { .. } => "upstream_invalid_response",
            ApiError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ApiError::LocalBusy { .. } => "engine_busy",
            ApiError::LocalTimeout { .. } => "local_timeout",
            ApiError::Route(e) => e.code(),
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::ContextLengthExceeded { .. }
            | ApiError::NotFound(_) => "invalid_request_error",
            ApiError::LocalBusy { .. } => "rate_limit_error",
            // OpenAI's type for a failure on the serving side.
            ApiError::LocalTimeout { .. } => "server_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::BackendUnavailable { .. }
            | ApiError::Upstream(_)
            | ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::UpstreamInvalid { .. } => "upstream_error",
            ApiError::Route(e) => e.error_type(),
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
            ApiError::NotFound(what) => format!("Unknown endpoint: {what}"),
            ApiError::BackendUnavailable { backend, reason } => {
                format!("Backend `{backend}` is unavailable: {reason}")
            }
            ApiError::Upstream(e) => format!(
                "Upstream returned HTTP {}: {}",
                e.status.as_u16(),
                truncate_for_message(&String::from_utf8_lossy(&e.body))
            ),
            ApiError::UpstreamUnreachable { backend, detail } => {
                format!("Could not reach backend `{backend}`: {detail}")
            }
            ApiError::UpstreamTimeout { backend, timeout_ms } => {
                format!("Backend `{backend}` did not answer within {timeout_ms} ms")
            }
            ApiError::UpstreamInvalid { backend, detail } => {
                format!("Backend `{backend}` sent an invalid response: {detail}")
            }
            ApiError::ContextLengthExceeded { message } => message.clone(),
            ApiError::LocalBusy { backend, detail } => format!("Backend `{backend}` is busy: {detail}. Retry shortly."),
            ApiError::LocalTimeout {
                backend,
                deadline_ms,
                detail,
            } => {
                format!("Backend `{backend}` did not finish within the request deadline ({deadline_ms} ms): {detail}.")
            }
            ApiError::Route(e) => e.message(),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::ContextLengthExceeded { .. } => Some("messages"),
            _ => None,
        }
    }

    /// The JSON error object, also used for the error event of a broken stream.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = match &self {
            ApiError::Upstream(upstream) if is_openai_error_body(&upstream.body) => {
                ([(header::CONTENT_TYPE, "application/json")], upstream.body.clone()).into_response()
            }
            _ => axum::Json(self.to_json()).into_response(),
        };
        *response.status_mut() = self.status();
        if let ApiError::Upstream(UpstreamError {
            retry_after: Some(retry_after),
            ..
        }) = &self
        {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after.clone());
        }
        match &self {
            ApiError::Route(RouteError::NoBackend { .. } | RouteError::RemoteFailed { .. }) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(NO_BACKEND_RETRY_AFTER_S));
            }
            ApiError::LocalBusy { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(LOCAL_BUSY_RETRY_AFTER_S));
            }
            _ => {}
        }
        response
    }
}

/// Whether an upstream body is already `{"error": {...}}`, so it can pass as is.
fn is_openai_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(|e| e.is_object()))
        .unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_openai_error_passes_through_untouched() {
        let body = Bytes::from_static(
            br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        let err = ApiError::Upstream(UpstreamError {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: body.clone(),
            retry_after: Some(HeaderValue::from_static("7")),
        });
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn upstream_non_json_error_is_wrapped_and_bounded() {
        let err = ApiError::Upstream(UpstreamError {
            status: StatusCode::BAD_GATEWAY,
            body: Bytes::from(vec![b'x'; 10_000]),
            retry_after: None,
        });
        let json = err.to_json();
        assert_eq!(json["error"]["code"], "upstream_error");
        assert!(json["error"]["message"].as_str().unwrap().len() < 300);
    }
}
