//! The `server` and `auth` sections: where the daemon listens, its limits and
//! deadlines, and the client keys.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub(super) listen: Spanned<String>,
    pub(super) max_body_bytes: Spanned<usize>,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    pub shutdown_drain_ms: u64,
    /// One request's deadline across all its upstream attempts and fallbacks
    /// (until a remote answer starts), and for the whole of a local answer,
    /// streamed or not (the engine stops it there).
    pub(super) request_deadline_ms: Spanned<u64>,
    /// Serve `/metrics` and keep the Prometheus counters (off only to measure
    /// what they cost).
    pub metrics: bool,
    /// Listen on an address other than loopback with no client keys. Off,
    /// that is refused: anyone who can reach the address could spend the
    /// upstream budget (LiteLLM likewise refuses to start without a master
    /// key). On, for a network that is itself the boundary; a warning stays.
    pub allow_unauthenticated: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: unspanned("127.0.0.1:8080".to_string()),
            max_body_bytes: unspanned(DEFAULT_MAX_BODY_BYTES),
            shutdown_drain_ms: 30_000,
            request_deadline_ms: unspanned(180_000),
            metrics: true,
            allow_unauthenticated: false,
        }
    }
}

impl ServerConfig {
    /// The listen address; [`Policy::problems`] has already checked it parses.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.value.parse()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes.value
    }

    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.request_deadline_ms.value)
    }
}

/// Client authentication. With no keys listed, auth is off: fine on loopback;
/// elsewhere refused unless `server.allow_unauthenticated` says so (then
/// `switchyard serve` warns).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub keys: Vec<ClientKeyConfig>,
}

/// One client key. `name` identifies the caller in logs (and later in budgets);
/// the key itself comes from the environment or is given only as its digest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    pub(super) name: Spanned<String>,
    /// Environment variable holding the key.
    pub(super) key_env: Option<Spanned<String>>,
    /// Lower-case hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub(super) key_sha256: Option<Spanned<String>>,
}

impl ClientKeyConfig {
    pub fn name(&self) -> &str {
        &self.name.value
    }

    pub fn key_env(&self) -> Option<&str> {
        self.key_env.as_ref().map(|env| env.value.as_str())
    }

    pub fn key_sha256(&self) -> Option<&str> {
        self.key_sha256.as_ref().map(|sha| sha.value.as_str())
    }

    /// A problem with resolving this key, located at its source: `key_env`,
    /// which wins when both are given, else `key_sha256`, else (with neither)
    /// its `name`. Start-up reports a key it cannot resolve this way, so the
    /// operator is pointed at the line to fix like any problem of the file.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        match (&self.key_env, &self.key_sha256) {
            (Some(env), _) => Problem::at(env, message),
            (None, Some(sha)) => Problem::at(sha, message),
            (None, None) => Problem::at(&self.name, message),
        }
    }
}

impl Policy {
    /// Problems of the `server` section.
    pub(super) fn server_problems(&self, problems: &mut Vec<Problem>) {
        let server = &self.server;
        if server.listen_addr().is_err() {
            problems.push(Problem::at(
                &server.listen,
                format!(
                    "listen address {:?} is not IP:PORT (for example 127.0.0.1:8080)",
                    server.listen.value
                ),
            ));
        }
        if let Ok(listen) = server.listen_addr()
            && let Some(problem) = self.unauthenticated_exposure(listen, "server.listen")
        {
            problems.push(problem);
        }
        if server.max_body_bytes.value == 0 {
            problems.push(Problem::at(&server.max_body_bytes, "max_body_bytes must be positive"));
        }
        if server.request_deadline_ms.value == 0 {
            problems.push(Problem::at(
                &server.request_deadline_ms,
                "request_deadline_ms must be positive",
            ));
        }
    }
}

impl AuthConfig {
    /// Problems of the `auth` section.
    pub(super) fn problems(&self, problems: &mut Vec<Problem>) {
        let mut key_names = HashSet::new();
        for key in &self.keys {
            if !key_names.insert(key.name.value.as_str()) {
                problems.push(Problem::at(
                    &key.name,
                    format!("duplicate client key name {:?}", key.name.value),
                ));
            }
            match (&key.key_env, &key.key_sha256) {
                (Some(_), Some(sha)) => problems.push(Problem::at(sha, "give key_env or key_sha256, not both")),
                (None, None) => problems.push(Problem::at(&key.name, "client key needs key_env or key_sha256")),
                (Some(env), None) => check_env_name(env, problems),
                (None, Some(sha)) => {
                    let valid = sha.value.len() == 64
                        && sha
                            .value
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    if !valid {
                        problems.push(Problem::at(sha, "key_sha256 must be 64 lower-case hex digits"));
                    }
                }
            }
        }
    }
}
