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

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::headers::{REASON, ROUTE};
use super::{AppState, BACKEND, RequestId};
use crate::accounting::status_class;
use crate::openai::error::ApiError;
use crate::outcome::{Reason, RouteError, Tier};

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
    request: Request,
) -> Response {
    let live = state.policy.current();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let endpoint = endpoint_label(path);
    let Some(backend) = live.routing.passthrough_backend().cloned() else {
        return ApiError::NotFound(format!(
            "{} {path} (no remote backend in the policy's routing to pass it to)",
            parts.method
        ))
        .into_response();
    };
    let Some(remote) = backend.as_remote() else {
        return ApiError::NotFound(format!("{} {path}", parts.method)).into_response();
    };
    let counted = |outcome: &str| {
        if live.metrics_enabled {
            crate::metrics::metrics()
                .passthrough
                .with_label_values(&[endpoint, remote.name(), outcome])
                .inc();
        }
    };
    let bytes_metric = |direction: &str| {
        crate::metrics::metrics()
            .passthrough_bytes
            .with_label_values(&[endpoint, direction])
    };

    // A body of text is checked against the privacy rules; others stream.
    let body = if holds_text(&parts.headers) && live.routing.has_privacy_rules() {
        let bytes = match super::chat::read_body(&parts.headers, body, live.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(err) => return err.into_response(),
        };
        if let Some(rule) = live.routing.privacy_match(&text_of(&bytes)) {
            tracing::info!(
                privacy_rule = rule,
                endpoint,
                "a privacy rule keeps this request on the machine"
            );
            counted("4xx");
            let mut response = ApiError::Route(RouteError::PrivacyUnservable {
                rule: rule.to_string(),
                why: Reason::RemoteOnlyEndpoint,
            })
            .into_response();
            response
                .headers_mut()
                .insert(REASON, HeaderValue::from_static(Reason::PrivacyRule.as_str()));
            return response;
        }
        if live.metrics_enabled {
            bytes_metric("upload").inc_by(bytes.len() as u64);
        }
        reqwest::Body::from(bytes)
    } else {
        let metrics = live.metrics_enabled.then(|| bytes_metric("upload"));
        reqwest::Body::wrap_stream(body.into_data_stream().inspect(move |chunk| {
            if let (Some(counter), Ok(chunk)) = (&metrics, chunk) {
                counter.inc_by(chunk.len() as u64);
            }
        }))
    };
    let upstream_path = format!(
        "{}{}",
        path.strip_prefix("/v1").unwrap_or(path),
        parts.uri.query().map_or(String::new(), |q| format!("?{q}"))
    );
    let answer = remote
        .forward(parts.method.clone(), &upstream_path, &parts.headers, body, &request_id)
        .await;
    let mut response = match answer {
        Ok(upstream) => {
            let status = upstream.status();
            let headers = relayed(upstream.headers());
            let metrics = live.metrics_enabled.then(|| bytes_metric("download"));
            let stream = upstream.bytes_stream().inspect(move |chunk| {
                if let (Some(counter), Ok(chunk)) = (&metrics, chunk) {
                    counter.inc_by(chunk.len() as u64);
                }
            });
            let mut response = Response::new(Body::from_stream(stream));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(err) => {
            tracing::warn!(endpoint, backend = remote.name(), error = ?err, "pass-through call failed");
            ApiError::Backend(err).into_response()
        }
    };
    counted(status_class(response.status().as_u16()));
    let headers = response.headers_mut();
    if let Ok(name) = HeaderValue::from_str(remote.name()) {
        headers.insert(BACKEND, name);
    }
    headers.insert(ROUTE, HeaderValue::from_static(Tier::Remote.as_str()));
    headers.insert(REASON, HeaderValue::from_static(Reason::RemoteOnlyEndpoint.as_str()));
    response
}

/// The endpoint as a metric label: the path's first segment after `/v1`
/// (`files`, `audio`, `images`, ...), never an id.
fn endpoint_label(path: &str) -> &str {
    let segment = path
        .strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    if (1..=32).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        segment
    } else {
        "other"
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
fn text_of(bytes: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(body)) => crate::routing::privacy::egress_text(&body),
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

    #[test]
    fn endpoints_are_labelled_by_their_first_segment_never_an_id() {
        assert_eq!(endpoint_label("/v1/files/file-abc123/content"), "files");
        assert_eq!(endpoint_label("/v1/audio/transcriptions"), "audio");
        assert_eq!(endpoint_label("/v1/vector_stores"), "vector_stores");
        assert_eq!(endpoint_label("/v1/file-ABC"), "other");
        assert_eq!(endpoint_label("/v1/"), "other");
    }
}
