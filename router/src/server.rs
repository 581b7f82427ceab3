//! Runs the daemon: bind, serve until SIGTERM/SIGINT, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::ClientKeys;
use crate::backends::Backends;
use crate::http::{self, AppState};
use crate::policy::Policy;

pub async fn serve(policy: Policy, listen_override: Option<SocketAddr>) -> Result<(), String> {
    let listen = match listen_override {
        Some(addr) => addr,
        None => policy
            .server
            .listen_addr()
            .map_err(|e| format!("listen address: {e}"))?,
    };
    let keys = ClientKeys::from_config(&policy.auth)?;
    if !keys.is_enabled() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "no client keys are configured: anyone who can reach this address can spend your upstream budget");
    }
    let backends = Backends::from_policy(&policy);
    for backend in backends.all() {
        if let Err(reason) = backend.readiness() {
            tracing::warn!(backend = backend.name(), reason, "backend is not ready");
        }
    }
    let state = Arc::new(AppState {
        backends,
        keys,
        max_body_bytes: policy.server.max_body_bytes.value,
    });
    let drain = Duration::from_millis(policy.server.shutdown_drain_ms);

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %bound, "switchyard is serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut server = std::pin::pin!(server.into_future());
    let mut stop_rx = stop_rx;
    tokio::select! {
        result = &mut server => return result.map_err(|e| e.to_string()),
        _ = stop_rx.wait_for(|stopped| *stopped) => {}
    }
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: no new connections, finishing in-flight requests"
    );
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::warn!("drain timeout reached; cutting remaining requests");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
