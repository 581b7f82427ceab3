//! `POST /v1/chat/completions`: read the body within its limit, validate it,
//! pick the backend, relay the answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

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
        Ok(ChatReply::Complete { body, headers, status, .. }) => {
            let mut response = (status, body).into_response();
            response.headers_mut().extend(headers);
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Ok(ChatReply::Stream { events, headers }) => {
            let body = Body::from_stream(futures_util::StreamExt::map(events, Ok::<Bytes, std::convert::Infallible>));
            let mut response = (StatusCode::OK, body).into_response();
            let out = response.headers_mut();
            out.extend(headers);
            out.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
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

/// Reads the body, refusing early on a declared length over the limit and
/// stopping as soon as a streamed body crosses it.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit_bytes: limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(cause) = source {
            if cause.is::<http_body_util::LengthLimitError>() {
                return ApiError::BodyTooLarge { limit_bytes: limit };
            }
            source = cause.source();
        }
        ApiError::InvalidRequest { message: format!("Could not read the request body: {err}"), param: None }
    })
}
