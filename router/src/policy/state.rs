//! The `state` and `rate_limits` sections: where budgets, sticky sessions
//! and rate limits are kept (in the process, or in a Redis shared by
//! replicas), and the per-minute limits on requests and tokens.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::*;

/// Where shared state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process (budgets kept in `budgets.state_file`): one replica.
    #[default]
    Memory,
    /// In a Redis 7 (or Valkey) server shared by every replica.
    Redis,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub(super) backend: Spanned<StateBackend>,
    /// The store's address, when it holds no password.
    pub(super) url: Option<Spanned<String>>,
    /// The environment variable holding the store's address (it may hold a
    /// password, so the file names the variable rather than the address).
    pub(super) url_env: Option<Spanned<String>>,
    /// Every key starts with `<key_prefix>:{<key_prefix>}:`, so several
    /// deployments can share one server and a cluster keeps them in one slot.
    pub(super) key_prefix: Spanned<String>,
    /// One store operation's deadline; past it the store counts as down.
    pub(super) timeout_ms: Spanned<u64>,
    /// How long a remote call's hold outlives the replica that stopped
    /// renewing it (it died mid-call): then it is charged its worst case.
    pub(super) hold_ttl_s: Spanned<u64>,
    pub failsafe: FailsafeConfig,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: unspanned(StateBackend::Memory),
            url: None,
            url_env: None,
            key_prefix: unspanned("switchyard".to_string()),
            timeout_ms: unspanned(250),
            hold_ttl_s: unspanned(120),
            failsafe: FailsafeConfig::default(),
        }
    }
}

/// What a replica does while the store cannot be reached.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailsafeConfig {
    /// Remote spend this replica may admit during one outage, counted
    /// locally and written to the store when it is back; 0 refuses every
    /// remote call while the store is down.
    pub(super) remote_allowance_usd: Spanned<f64>,
}

impl Default for FailsafeConfig {
    fn default() -> Self {
        Self {
            remote_allowance_usd: unspanned(0.10),
        }
    }
}

impl FailsafeConfig {
    pub fn remote_allowance_usd(&self) -> f64 {
        self.remote_allowance_usd.value
    }
}

impl StateConfig {
    pub fn backend(&self) -> StateBackend {
        self.backend.value
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix.value
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.value)
    }

    pub fn hold_ttl(&self) -> Duration {
        Duration::from_secs(self.hold_ttl_s.value)
    }

    /// The store's address: inline, or read from its variable. The error
    /// names the variable, never a value.
    pub fn url(&self) -> Result<String, Problem> {
        match (&self.url, &self.url_env) {
            (Some(url), _) => Ok(url.value.clone()),
            (None, Some(var)) => match std::env::var(&var.value) {
                Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_string()),
                _ => Err(Problem::at(
                    var,
                    format!(
                        "environment variable {} is not set: it must hold the state store's address (redis://host:port/db)",
                        var.value
                    ),
                )),
            },
            (None, None) => Err(Problem::at(
                &self.backend,
                "state.backend redis needs the store's address: url_env (a variable holding redis://...) or url",
            )),
        }
    }

    /// A problem found when the store is set up (the address does not
    /// parse, say), located at the line that gave the address.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        match (&self.url, &self.url_env) {
            (Some(url), _) => Problem::at(url, message),
            (None, Some(var)) => Problem::at(var, message),
            (None, None) => Problem::at(&self.backend, message),
        }
    }
}

/// `rate_limits`: requests and tokens per minute, per client key and for
/// all callers together.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub per_key: RateLimit,
    pub global: RateLimit,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub(super) requests_per_minute: Option<Spanned<u64>>,
    pub(super) tokens_per_minute: Option<Spanned<u64>>,
}

impl RateLimit {
    pub fn requests_per_minute(&self) -> Option<u64> {
        self.requests_per_minute.as_ref().map(|v| v.value)
    }

    pub fn tokens_per_minute(&self) -> Option<u64> {
        self.tokens_per_minute.as_ref().map(|v| v.value)
    }
}

impl RateLimitsConfig {
    pub fn is_empty(&self) -> bool {
        [&self.per_key, &self.global]
            .iter()
            .all(|l| l.requests_per_minute.is_none() && l.tokens_per_minute.is_none())
    }
}

impl Policy {
    pub(super) fn state_problems(&self, problems: &mut Vec<Problem>) {
        let state = &self.state;
        if let (Some(url), Some(_)) = (&state.url, &state.url_env) {
            problems.push(Problem::at(
                url,
                "give the state store's address once: url or url_env, not both",
            ));
        }
        if let Some(url) = &state.url {
            if !(url.value.starts_with("redis://")
                || url.value.starts_with("rediss://")
                || url.value.starts_with("unix://")
                || url.value.starts_with("redis+unix://"))
            {
                problems.push(Problem::at(
                    url,
                    "state.url must be a redis://, rediss:// or unix:// address".to_string(),
                ));
            } else if url_has_password(&url.value) {
                problems.push(Problem::at(
                    url,
                    "state.url holds a password: the policy file never holds secrets; put the address in an environment variable and name it with url_env",
                ));
            }
        }
        if let Some(var) = &state.url_env
            && var.value.trim().is_empty()
        {
            problems.push(Problem::at(var, "url_env must name an environment variable"));
        }
        if state.backend.value == StateBackend::Redis && state.url.is_none() && state.url_env.is_none() {
            problems.push(Problem::at(
                &state.backend,
                "state.backend redis needs the store's address: url_env (a variable holding redis://...) or url",
            ));
        }
        let prefix = &state.key_prefix;
        if prefix.value.is_empty()
            || prefix.value.len() > 64
            || !prefix
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            problems.push(Problem::at(
                prefix,
                "key_prefix must be 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if !(10..=10_000).contains(&state.timeout_ms.value) {
            problems.push(Problem::at(
                &state.timeout_ms,
                "timeout_ms must be between 10 and 10000",
            ));
        }
        if !(2..=86_400).contains(&state.hold_ttl_s.value) {
            problems.push(Problem::at(
                &state.hold_ttl_s,
                "hold_ttl_s must be between 2 and 86400 seconds",
            ));
        }
        let allowance = &state.failsafe.remote_allowance_usd;
        if !(allowance.value.is_finite() && allowance.value >= 0.0) {
            problems.push(Problem::at(
                allowance,
                "remote_allowance_usd must be a non-negative amount (0 refuses remote calls while the store is down)",
            ));
        }
        if state.backend.value == StateBackend::Memory && (state.url.is_some() || state.url_env.is_some()) {
            problems.push(Problem::at(
                &state.backend,
                "a state store address is given but state.backend is memory: set backend: redis to use it",
            ));
        }
        for limit in [&self.rate_limits.per_key, &self.rate_limits.global] {
            for value in [&limit.requests_per_minute, &limit.tokens_per_minute]
                .into_iter()
                .flatten()
            {
                if value.value == 0 || value.value > 1_000_000_000 {
                    problems.push(Problem::at(
                        value,
                        "a per-minute limit must be between 1 and 1000000000 (leave it out for no limit)",
                    ));
                }
            }
        }
    }
}

/// Whether a store address carries a password (`redis://user:pw@host`,
/// `redis://:pw@host`, or a socket's `?pass=`).
fn url_has_password(url: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    if query
        .split('&')
        .any(|pair| pair.starts_with("pass=") || pair.starts_with("password="))
    {
        return true;
    }
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, pw)| !pw.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn passwords_in_addresses_are_found() {
        assert!(url_has_password("redis://:secret@host:6379/0"));
        assert!(url_has_password("redis://user:secret@host"));
        assert!(!url_has_password("redis://user@host"));
        assert!(!url_has_password("redis://127.0.0.1:6379/0"));
        assert!(!url_has_password("unix:///run/redis.sock"));
        assert!(url_has_password("unix:///run/redis.sock?db=1&pass=secret"));
    }
}
