//! The HTTP front: routes, the middleware every response passes through, and
//! the state handlers share.
//!
//! Every response, success or error, carries `x-request-id` (the client's, if it
//! sent a sane one, else a fresh UUID) and `x-switchyard-backend` (the backend
//! that answered, or `switchyard` when the proxy answered by itself).

mod chat;
mod embeddings;
pub mod headers;
mod health;
mod models;
mod observe;
mod passthrough;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

use crate::accounting::RequestRecord;
use crate::auth::Caller;
use crate::live::LivePolicy;
use crate::openai::error::ApiError;
use crate::outcome::RateRefusal;
use crate::routing::sessions::SessionStore;
use crate::state::ratelimit::Verdict;

/// The answer to a request refused or failed with `err`, its record finished
/// with the error's status; a refusal the routing made before any backend was
/// called gives its reason to the record and to `x-switchyard-reason`.
fn refused(mut record: RequestRecord, err: ApiError) -> Response {
    let reason = match &err {
        ApiError::Route(route) if record.backend_started.is_none() => Some(route.reason()),
        ApiError::RateLimited(_) => Some(crate::outcome::Reason::RateLimited),
        _ => None,
    };
    let mut response = err.into_response();
    if let Some(reason) = reason {
        response
            .headers_mut()
            .insert(headers::REASON, HeaderValue::from_static(reason.as_str()));
        record.reason = reason.as_str();
    }
    record.status = response.status().as_u16();
    record.finish(None, None);
    response
}

/// The answer to a request a rate limit refused: the refusal, with the
/// limits' `x-ratelimit-*` headers.
fn rate_limited(record: RequestRecord, verdict: &Verdict, refusal: RateRefusal) -> Response {
    let mut response = refused(record, ApiError::RateLimited(Box::new(refusal)));
    rate_headers(&mut response, verdict);
    response
}

/// Adds a verdict's `x-ratelimit-*` headers to a response.
fn rate_headers(response: &mut Response, verdict: &Verdict) {
    for (name, value) in verdict.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");
/// Named in `x-switchyard-backend` when no backend was involved.
pub const SELF_BACKEND: &str = "switchyard";

pub struct AppState {
    /// The policy in force (swapped on reload).
    pub policy: Arc<LivePolicy>,
    /// Sticky conversations, kept across reloads (in the shared store too,
    /// when there is one).
    pub sessions: SessionStore,
    /// Cancelled when the shutdown drain runs out: requests still running end
    /// then, each with an error its client can read (see `server::serve`).
    pub past_drain: CancellationToken,
}

/// The request id, available to handlers as an extension.
#[derive(Clone)]
pub struct RequestId(pub Arc<str>);

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::handle::<chat::Chat>))
        .route("/v1/completions", post(chat::handle::<chat::Legacy>))
        .route("/v1/responses", post(chat::handle::<chat::Responses>))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*model}", get(models::retrieve))
        // Every other endpoint of the API goes to a remote backend as it is.
        .route("/v1/{*endpoint}", any(passthrough::forward))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(observe::prometheus))
        .route("/", get(observe::status_page))
        .route("/status.json", get(observe::status_json))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(unknown_endpoint)
        .layer(middleware::from_fn(tag_response))
        .with_state(state)
}

async fn unknown_endpoint(request: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

async fn authenticate(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match state.policy.current().keys.authenticate(authorization) {
        Ok(caller) => {
            request.extensions_mut().insert::<Caller>(caller);
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

/// Assigns the request id and makes sure both identifying headers are on the response.
async fn tag_response(mut request: Request, next: Next) -> Response {
    let request_id: Arc<str> = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_sane_request_id(id))
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!("request", request_id = %request_id);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let headers = response.headers_mut();
    headers.insert(
        REQUEST_ID,
        HeaderValue::from_str(&request_id).expect("checked by is_sane_request_id or a UUID"),
    );
    headers.entry(BACKEND).or_insert(HeaderValue::from_static(SELF_BACKEND));
    tracing::info!(
        parent: &span,
        %method,
        path,
        status = response.status().as_u16(),
        backend = response.headers().get(BACKEND).and_then(|v| v.to_str().ok()).unwrap_or(SELF_BACKEND),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "request answered"
    );
    response
}

/// Client ids are echoed into headers and logs: keep them short and printable.
fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}
