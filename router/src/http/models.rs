//! `GET /v1/models`: every name a client may send as `model`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use switchyard_engine::model::ModelInfo;

use super::{AppState, SELF_BACKEND};
use crate::openai::error::ApiError;

fn model_object(id: &str, backend: &str, local: Option<&ModelInfo>) -> Value {
    let mut object = json!({ "id": id, "object": "model", "created": 0, "owned_by": "switchyard", "backend": backend });
    if let Some(info) = local {
        object["local"] = local_json(info);
    }
    object
}

/// What a local model is: its architecture, the format of its weights, its
/// size. Also in `/readyz`.
pub fn local_json(info: &ModelInfo) -> Value {
    json!({
        "architecture": info.architecture,
        "quant": info.quant,
        "parameters": info.parameters,
        "weight_bytes": info.weight_bytes,
    })
}

/// Routing profiles (`auto` and its aliases) are listed with backend `switchyard`:
/// the router picks the backend per request.
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let live = state.policy.current();
    let mut models: Vec<(&str, &str, Option<&ModelInfo>)> = live
        .backends
        .models()
        .iter()
        .map(|m| (m.id, m.backend, m.local))
        .collect();
    models.extend(live.routing.profile_names().map(|name| (name, SELF_BACKEND, None)));
    models.sort_by_key(|&(id, backend, _)| (id, backend));
    let data: Vec<Value> = models
        .iter()
        .map(|&(id, backend, local)| model_object(id, backend, local))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn retrieve(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    let live = state.policy.current();
    if live.routing.is_profile(&model) {
        return Ok(Json(model_object(&model, SELF_BACKEND, None)));
    }
    match live.backends.resolve(&model) {
        Some(backend) => Ok(Json(model_object(
            &model,
            backend.name(),
            backend.as_local().and_then(|local| local.info()),
        ))),
        None => Err(ApiError::ModelNotFound(model)),
    }
}
