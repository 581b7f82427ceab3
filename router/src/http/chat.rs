//! `POST /v1/chat/completions`: read the body within its limit, validate it,
//! pick the backend, relay the answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{AppState, BACKEND, RequestId};
use crate::backends::ChatReply;
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(err) => return err.into_response(),
    };
    let request = match ChatRequest::parse(&bytes) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let Some(backend) = state.backends.resolve(&request.model) else {
        return ApiError::ModelNotFound(request.model).into_response();
    };
    let backend_header = HeaderValue::from_str(backend.name()).expect("policy check keeps backend names header-safe");
    let mut response = match backend.chat(request, &request_id).await {
        Ok(ChatReply::Complete {
            body, headers, status, ..
        }) => {
            let mut response = (status, body).into_response();
            response.headers_mut().extend(headers);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Ok(ChatReply::Stream { events, headers }) => {
            let body = Body::from_stream(events.map(Ok::<Bytes, std::convert::Infallible>));
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
            response
        }
        Err(err) => err.into_response(),
    };
    response.headers_mut().insert(BACKEND, backend_header);
    response
}

/// Reads the body, refusing a declared length over the limit before reading
/// and a streamed body as soon as it crosses the limit.
///
/// A refused body is still read to its end (and thrown away), up to
/// [`DRAIN_MAX_BYTES`] and [`DRAIN_TIMEOUT`]: HTTP clients that are still
/// writing when the server closes the connection report a broken pipe instead
/// of the 413, and the client deserves to see why it was refused.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
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
