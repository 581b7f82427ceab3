//! Runs the daemon: bind, serve until SIGTERM/SIGINT, then drain.
//!
//! Shutdown has two deadlines. On the signal the listener closes and requests
//! in flight get `server.shutdown_drain_ms` to finish. Past that, each one
//! still running is ended by us rather than by a closed socket: a stream gets
//! a `server_shutting_down` error event, then its end; a request still
//! waiting for its answer gets a 503 with the same error. They then get
//! `CUT_DELIVERY_TIMEOUT` to reach their clients, and every one of them is
//! recorded (log line, metrics, budget) like any other request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::live::{ListenAddress, Live, LivePolicy};
use crate::policy::Policy;
use crate::policy::{PolicyError, StateBackend};
use crate::routing::budget::SpendBook;
use crate::routing::sessions::SessionStore;
use crate::state::Store;

/// How often the budget ledger is written to disk when spend changed.
const LEDGER_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long the requests ended at the drain deadline get to deliver their
/// error to their clients. It is one small write into a socket buffer, done
/// in milliseconds unless a client has stopped reading; such a client is not
/// worth holding up the exit for (a supervisor's kill may be close behind).
const CUT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(policy: Policy, policy_path: &Path, listen_override: Option<SocketAddr>) -> Result<(), String> {
    let listen = match listen_override {
        Some(addr) => ListenAddress {
            addr,
            origin: "--listen",
        },
        None => ListenAddress {
            addr: policy
                .server
                .listen_addr()
                .map_err(|e| format!("listen address: {e}"))?,
            origin: "server.listen",
        },
    };
    let store = match policy.state.backend() {
        StateBackend::Memory => None,
        StateBackend::Redis => {
            let invalid = |problem| PolicyError::Invalid(vec![problem]).in_file(policy_path);
            let url = policy.state.url().map_err(invalid)?;
            let store = Store::connect(&policy.state, &url).map_err(|err| invalid(policy.state.problem(err)))?;
            store.first_probe().await;
            Some(store)
        }
    };
    let live = listen
        .admits(&policy)
        .and_then(|()| Live::build(&policy, None, store.as_ref()))
        .map_err(|err| err.in_file(policy_path))?;
    if !live.keys.is_enabled() && !listen.addr.ip().is_loopback() {
        tracing::warn!(
            listen = %listen.addr,
            "no client keys are configured (server.allow_unauthenticated): anyone who can reach this address can spend your upstream budget"
        );
    }
    for backend in live.backends.all() {
        if let Err(reason) = backend.readiness() {
            tracing::warn!(backend = backend.name(), reason, "backend is not ready");
        }
    }
    let sessions = &policy.routing.sessions;
    let state = Arc::new(AppState {
        policy: Arc::new(LivePolicy::new(policy_path, live, listen)),
        sessions: SessionStore::new(sessions.ttl(), sessions.max_entries(), store.clone()),
        past_drain: CancellationToken::new(),
    });
    tokio::spawn(state.policy.clone().watch(|outcome| {
        crate::metrics::metrics()
            .policy_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
    }));
    tokio::spawn(flush_ledger_periodically(state.clone()));
    let drain = Duration::from_millis(policy.server.shutdown_drain_ms);

    let listener = TcpListener::bind(listen.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", listen.addr))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    // A streamed answer is many small writes, one event a token. Without
    // TCP_NODELAY, Nagle's algorithm holds each back until the client has
    // acknowledged the one before, which a client may delay by up to 40 ms:
    // the first token, and every token after, would reach it late.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {err}");
        }
    });
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
    let result = match tokio::time::timeout(drain, server.as_mut()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::warn!("drain timeout reached; ending the requests still running, each with an error");
            state.past_drain.cancel();
            match tokio::time::timeout(CUT_DELIVERY_TIMEOUT, server).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = CUT_DELIVERY_TIMEOUT.as_millis() as u64,
                        "some clients did not take their error in time; closing their connections"
                    );
                    Ok(())
                }
            }
        }
    };
    flush_ledger(&state);
    if let Some(store) = &store {
        store.drain(STORE_DRAIN).await;
    }
    result
}

/// How long a stopping replica waits to write its last settlements to the
/// shared state store.
const STORE_DRAIN: Duration = Duration::from_secs(2);

fn flush_ledger(state: &AppState) {
    if let Some(ledger) = state.policy.current().ledger.as_ref().and_then(SpendBook::file)
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
