//! `GET /v1/models`: every name a client may send as `model`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{AppState, SELF_BACKEND};
use crate::openai::error::ApiError;

fn model_object(id: &str, backend: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": "switchyard", "backend": backend })
}

/// Routing profiles (`auto` and its aliases) are listed with backend `switchyard`:
/// the router picks the backend per request.
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let live = state.policy.current();
    let mut models: Vec<(&str, &str)> = live.backends.models().iter().map(|m| (m.id, m.backend)).collect();
    models.extend(live.routing.profile_names().map(|name| (name, SELF_BACKEND)));
    models.sort();
    let data: Vec<Value> = models.iter().map(|(id, backend)| model_object(id, backend)).collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn retrieve(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    let live = state.policy.current();
    if live.routing.is_profile(&model) {
        return Ok(Json(model_object(&model, SELF_BACKEND)));
    }
    match live.backends.resolve(&model) {
        Some(backend) => Ok(Json(model_object(&model, backend.name()))),
        None => Err(ApiError::ModelNotFound(model)),
    }
}
