//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

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
        let health = store.health();
        let mut entry = json!({ "backend": "redis", "up": health.up });
        if let Some(reason) = health.reason.filter(|_| !health.up) {
            entry["reason"] = json!(format!(
                "{reason}; fail-safe: routed requests stay local, remote calls within this replica's allowance of ${:.2}",
                store.config().failsafe.remote_allowance_usd()
            ));
        }
        body["state_store"] = entry;
    }
    (status, Json(body))
}
