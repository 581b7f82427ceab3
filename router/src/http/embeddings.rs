//! `POST /v1/embeddings`: answered by a local embedding model (a local
//! backend with `embeddings: true`) or passed through to the remote.
//!
//! Where it goes: a local embedding backend's name, or a routing profile
//! (`auto`, an alias) when the policy has one, is answered locally; any other
//! model (an upstream's embedding model, `text-embedding-3-small`) goes to the
//! remote backend as the client sent it, unless the input matches a privacy
//! rule: then it is answered by the local embedding model if there is one,
//! else refused (`privacy_local_only`), never sent.
//!
//! A local answer is OpenAI's `list` of `embedding` objects: `float` or
//! `base64` (little-endian f32, what the openai SDKs ask for by default),
//! `dimensions` keeping the first ones and normalising again (Matryoshka
//! truncation, as Qwen3-Embedding is trained for), every input of a list
//! computed in one job on the engine.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::headers::{REASON, ROUTE};
use super::{AppState, BACKEND, RequestId, SELF_BACKEND, rate_headers, rate_limited, refused};
use crate::accounting::RequestRecord;
use crate::auth::Caller;
use crate::backends::Backend;
use crate::backends::local::EmbeddingInput;
use crate::live::Live;
use crate::openai::error::ApiError;
use crate::outcome::{Reason, RouteError, Tier};
use crate::reply::Usage;
use crate::routing::caller_name;

/// The endpoint's label in metrics, the status page and logs.
const ENDPOINT: &str = "embeddings";

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    caller: Option<Extension<Caller>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let live = state.policy.current();
    let record = || {
        let caller = caller
            .as_ref()
            .and_then(|Extension(c)| caller_name(c))
            .map(str::to_string);
        RequestRecord::new(
            request_id.0.clone(),
            ENDPOINT,
            started,
            SELF_BACKEND,
            baseline(&live),
            caller,
            live.ledger.clone(),
            live.metrics_enabled,
        )
    };
    let (parts, body) = request.into_parts();
    let bytes = match super::chat::read_body(&parts.headers, body, live.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(err) => return refused(record(), err),
    };
    let asked = match Asked::parse(&bytes) {
        Ok(asked) => asked,
        Err(err) => return refused(record(), err),
    };
    let local_embedder = || {
        live.backends
            .all()
            .iter()
            .find(|b| b.as_local().is_some_and(|l| l.embeds()))
            .cloned()
    };
    // Rate limits: an embedding's tokens are its input's (about one per
    // four bytes of text, as the routing estimates prompts).
    let verdict = live
        .limiter
        .check(
            caller.as_ref().and_then(|Extension(c)| caller_name(c)),
            (asked.text().len() as u64).div_ceil(4).max(1),
        )
        .await;
    if let Some(refusal) = verdict.refused.clone() {
        return rate_limited(record(), &verdict, refusal);
    }
    let named = live.backends.all().iter().find(|b| b.name() == asked.model).cloned();
    let private = live.routing.privacy_match(&asked.text()).map(str::to_string);
    let (backend, reason) = match named {
        Some(backend) if backend.as_local().is_some() => (Some(backend), Reason::ModelPinned),
        _ if live.routing.is_profile(&asked.model) => match (local_embedder(), &private) {
            (Some(local), None) => (Some(local), Reason::ScoreLow),
            (Some(local), Some(_)) => (Some(local), Reason::PrivacyRule),
            (None, _) => {
                let err = ApiError::invalid(
                    format!(
                        "The policy has no local embedding model for '{}'; name the remote provider's embedding model (e.g. text-embedding-3-small).",
                        asked.model
                    ),
                    "model",
                );
                return refused(record(), err);
            }
        },
        _ => match (&private, local_embedder()) {
            (Some(_), Some(local)) => (Some(local), Reason::PrivacyRule),
            (Some(rule), None) => {
                let err = ApiError::Route(RouteError::PrivacyUnservable {
                    rule: rule.clone(),
                    why: Reason::RemoteOnlyEndpoint,
                });
                return refused(record(), err);
            }
            (None, _) => (None, Reason::RemoteOnlyEndpoint),
        },
    };
    let Some(backend) = backend else {
        // Not for a local model: to the remote as it came.
        let request = Request::from_parts(parts, Body::from(bytes));
        let mut response =
            super::passthrough::forward(State(state.clone()), Extension(request_id.clone()), caller, request).await;
        rate_headers(&mut response, &verdict);
        return response;
    };
    let mut record = record();
    record.route = Tier::Local.as_str();
    record.backend = backend.name().to_string();
    record.reason = reason.as_str();
    record.backend_started = Some(Instant::now());
    let (mut response, tokens) = answer_locally(&backend, asked).await;
    record.status = response.status().as_u16();
    let usage = tokens.map(|prompt_tokens| Usage {
        prompt_tokens,
        ..Usage::default()
    });
    record.finish(usage, None);
    let headers = response.headers_mut();
    if let Ok(name) = HeaderValue::from_str(backend.name()) {
        headers.insert(BACKEND, name);
    }
    headers.insert(ROUTE, HeaderValue::from_static(Tier::Local.as_str()));
    headers.insert(REASON, HeaderValue::from_static(reason.as_str()));
    rate_headers(&mut response, &verdict);
    response
}

/// What a remote embeddings call would have cost instead of a local one: the
/// pass-through backend's first price for `embeddings`.
fn baseline(live: &Live) -> Option<(String, crate::policy::Price)> {
    let remote = live.routing.passthrough_backend()?.as_remote()?;
    let price = remote.endpoint_prices().first_for(ENDPOINT)?;
    Some((remote.name().to_string(), price))
}

/// The local answer, and the tokens it read when it was answered.
async fn answer_locally(backend: &Backend, asked: Asked) -> (Response, Option<u64>) {
    match embed_locally(backend, asked).await {
        Ok((response, tokens)) => (response, Some(tokens)),
        Err(err) => (err.into_response(), None),
    }
}

async fn embed_locally(backend: &Backend, asked: Asked) -> Result<(Response, u64), ApiError> {
    let Some(local) = backend.as_local().filter(|l| l.embeds()) else {
        return Err(ApiError::invalid(
            format!(
                "Backend `{}` is not an embedding model (a local backend serves embeddings with `embeddings: true`).",
                backend.name()
            ),
            "model",
        ));
    };
    let (embeddings, tokens) = local.embed(asked.inputs).await.map_err(ApiError::Backend)?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (index, mut embedding) in embeddings.into_iter().enumerate() {
        if let Some(dimensions) = asked.dimensions {
            if dimensions > embedding.len() {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid 'dimensions': this model's embeddings have {} dimensions; {dimensions} is more.",
                        embedding.len()
                    ),
                    "dimensions",
                ));
            }
            embedding.truncate(dimensions);
            let norm = embedding.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if norm > 0.0 {
                embedding.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
            }
        }
        let encoded = if asked.base64 {
            let bytes: Vec<u8> = embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(embedding)
        };
        data.push(json!({ "object": "embedding", "index": index, "embedding": encoded }));
    }
    let body = json!({
        "object": "list", "data": data, "model": local.name(),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    });
    Ok((axum::Json(body).into_response(), tokens))
}

/// An embeddings request, checked as OpenAI checks it.
struct Asked {
    model: String,
    inputs: Vec<EmbeddingInput>,
    base64: bool,
    dimensions: Option<usize>,
}

impl Asked {
    fn parse(bytes: &[u8]) -> Result<Asked, ApiError> {
        let body: Map<String, Value> = match serde_json::from_slice(bytes) {
            Ok(Value::Object(body)) => body,
            Ok(_) => return Err(ApiError::invalid("The request body must be a JSON object.", "body")),
            Err(err) => return Err(ApiError::InvalidJson(err.to_string())),
        };
        let field = |key: &str| body.get(key).unwrap_or(&Value::Null);
        let model = match field("model") {
            Value::String(model) if !model.is_empty() => model.clone(),
            Value::Null => return Err(ApiError::invalid("You must provide a model parameter.", "model")),
            _ => {
                return Err(ApiError::invalid(
                    "Invalid type for 'model': expected a string.",
                    "model",
                ));
            }
        };
        let bad_input = || {
            ApiError::invalid(
                "Invalid 'input': expected a string, an array of strings, an array of token ids, or an array of arrays of token ids, none empty.",
                "input",
            )
        };
        let tokens = |items: &[Value]| -> Option<Vec<u32>> {
            items
                .iter()
                .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect()
        };
        let inputs = match field("input") {
            Value::Null => return Err(ApiError::invalid("Missing required parameter: 'input'.", "input")),
            Value::String(text) if !text.is_empty() => vec![EmbeddingInput::Text(text.clone())],
            Value::Array(items) if !items.is_empty() => {
                if items.iter().all(Value::is_string) {
                    items
                        .iter()
                        .map(|i| match i.as_str() {
                            Some(text) if !text.is_empty() => Ok(EmbeddingInput::Text(text.to_string())),
                            _ => Err(bad_input()),
                        })
                        .collect::<Result<_, _>>()?
                } else if let Some(ids) = tokens(items) {
                    vec![EmbeddingInput::Tokens(ids)]
                } else {
                    items
                        .iter()
                        .map(|i| match i.as_array().and_then(|ids| tokens(ids)) {
                            Some(ids) if !ids.is_empty() => Ok(EmbeddingInput::Tokens(ids)),
                            _ => Err(bad_input()),
                        })
                        .collect::<Result<_, _>>()?
                }
            }
            _ => return Err(bad_input()),
        };
        let base64 = match field("encoding_format") {
            Value::Null => false,
            Value::String(format) if format == "float" => false,
            Value::String(format) if format == "base64" => true,
            _ => {
                return Err(ApiError::invalid(
                    "Invalid value for 'encoding_format': supported values are 'float' and 'base64'.",
                    "encoding_format",
                ));
            }
        };
        let dimensions = match field("dimensions") {
            Value::Null => None,
            Value::Number(n) if n.as_u64().is_some_and(|d| d >= 1) => n.as_u64().map(|d| d as usize),
            _ => {
                return Err(ApiError::invalid(
                    "Invalid 'dimensions': expected an integer of at least 1.",
                    "dimensions",
                ));
            }
        };
        Ok(Asked {
            model,
            inputs,
            base64,
            dimensions,
        })
    }

    /// The inputs' text, for the privacy rules.
    fn text(&self) -> String {
        self.inputs
            .iter()
            .filter_map(|input| match input {
                EmbeddingInput::Text(text) => Some(text.as_str()),
                EmbeddingInput::Tokens(_) => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
