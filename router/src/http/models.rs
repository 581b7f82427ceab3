//! `GET /v1/models`: every name a client may send as `model`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use crate::openai::error::ApiError;

fn model_object(id: &str, backend: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": "switchyard", "backend": backend })
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .backends
        .models()
        .iter()
        .map(|m| model_object(m.id, m.backend))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn retrieve(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    match state.backends.resolve(&model) {
        Some(backend) => Ok(Json(model_object(&model, backend.name()))),
        None => Err(ApiError::ModelNotFound(model)),
    }
}
