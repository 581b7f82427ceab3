//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::Store;

use super::AppState;

/// Alive: the process answers HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: at least one backend can take requests. The body says which can't, and why.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let live = state.policy.current();
    let backends: Vec<Value> = live
        .backends
        .all()
        .iter()
        .map(|backend| {
            let mut entry = match backend.readiness() {
                Ok(()) => json!({ "name": backend.name(), "ready": true }),
                Err(reason) => json!({ "name": backend.name(), "ready": false, "reason": reason }),
            };
            if let Some(info) = backend.as_local().and_then(|local| local.info()) {
                entry["local"] = super::models::local_json(info);
            }
            entry
        })
        .collect();
    let any_ready = backends.iter().any(|b| b["ready"] == true);
    let status = if any_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "status": if any_ready { "ready" } else { "unavailable" }, "backends": backends });
    // The shared state store does not decide readiness: with it down a
    // replica still serves, fail-safe (if every replica went unready,
    // nothing would be left to serve); it says why.
    if let Some(store) = &live.store {
        body["state_store"] = state_store_json(store);
    }
    (status, Json(body))
}

/// The shared state store's health, as `/readyz` and `/status.json` give it:
/// up, or down with why and what the replica does meanwhile.
pub(super) fn state_store_json(store: &Store) -> Value {
    let health = store.health();
    let reason = health.reason.filter(|_| !health.up).map(|reason| {
        format!(
            "{reason}; fail-safe: routed requests stay local, remote calls within this replica's allowance of ${:.2}",
            store.config().failsafe.remote_allowance_usd()
        )
    });
    json!({ "backend": "redis", "up": health.up, "reason": reason })
}
