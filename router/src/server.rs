//! Runs the daemon: bind, serve until SIGTERM/SIGINT, then drain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::http::{self, AppState};
use crate::live::{Live, LivePolicy};
use crate::policy::Policy;
use crate::routing::sessions::Sessions;

/// How often the budget ledger is written to disk when spend changed.
const LEDGER_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

pub async fn serve(policy: Policy, policy_path: &Path, listen_override: Option<SocketAddr>) -> Result<(), String> {
    let listen = match listen_override {
        Some(addr) => addr,
        None => policy
            .server
            .listen_addr()
            .map_err(|e| format!("listen address: {e}"))?,
    };
    let live = Live::build(&policy, None).map_err(|err| err.in_file(policy_path))?;
    if !live.keys.is_enabled() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "no client keys are configured: anyone who can reach this address can spend your upstream budget");
    }
    for backend in live.backends.all() {
        if let Err(reason) = backend.readiness() {
            tracing::warn!(backend = backend.name(), reason, "backend is not ready");
        }
    }
    let sessions = &policy.routing.sessions;
    let state = Arc::new(AppState {
        policy: Arc::new(LivePolicy::new(policy_path, live)),
        sessions: Sessions::new(Duration::from_secs(sessions.ttl_s.value), sessions.max_entries.value),
    });
    tokio::spawn(state.policy.clone().watch(|outcome| {
        crate::metrics::metrics()
            .policy_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
    }));
    tokio::spawn(flush_ledger_periodically(state.clone()));
    let drain = Duration::from_millis(policy.server.shutdown_drain_ms);

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %bound, "switchyard is serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, http::router(state.clone())).with_graceful_shutdown(async move {
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
    let result = match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::warn!("drain timeout reached; cutting remaining requests");
            Ok(())
        }
    };
    flush_ledger(&state);
    result
}

fn flush_ledger(state: &AppState) {
    if let Some(ledger) = &state.policy.current().ledger
        && let Err(err) = ledger.flush()
    {
        tracing::error!(path = %ledger.path().display(), "cannot write budget state: {err}");
    }
}

async fn flush_ledger_periodically(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(LEDGER_FLUSH_INTERVAL);
    loop {
        tick.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || flush_ledger(&state)).await;
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
