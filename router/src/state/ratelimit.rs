//! Requests and tokens per minute, per client key and for all callers
//! together (`rate_limits`), by the generic cell rate algorithm: each limit
//! keeps one time, its theoretical arrival time (TAT); a request of cost `c`
//! under a limit of `L` per period `P` moves it `c·P/L` on, and is admitted
//! while it stays within `P` of now. That allows bursts up to the limit and
//! gives exact "remaining" and "reset" figures for the `x-ratelimit-*`
//! headers OpenAI's clients read.
//!
//! With a shared store the times live there (one script admits a request
//! under all its limits or none), so the limits hold across replicas; in
//! the process otherwise, and while the store is unreachable.
//!
//! A request costs 1 request and its prompt estimate plus its `max_tokens`
//! (times `n`) in tokens, as OpenAI counts it: the tokens it may use, known
//! before it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redis::Script;

use super::Store;
use crate::metrics::metrics;
pub use crate::outcome::{RateKind as Kind, RateRefusal as Refused};
use crate::policy::RateLimitsConfig;

const PERIOD_MS: u64 = 60_000;
/// The key name of callers without one.
const ANONYMOUS: &str = "anonymous";

/// One limit that applies to a request.
#[derive(Debug, Clone)]
struct Limit {
    /// `key` or `global`.
    scope: &'static str,
    kind: Kind,
    per_minute: u64,
    /// Its key in the store (and in the process map).
    key: String,
    cost: u64,
}

/// Where a limit stands after a request, for the headers.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset_ms: u64,
}

/// What a request was told.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The tightest limit of each kind (fewest remaining), when one applies.
    pub requests: Option<Standing>,
    pub tokens: Option<Standing>,
    /// Set when refused.
    pub refused: Option<Refused>,
}

pub struct RateLimiter {
    per_key: [Option<u64>; 2],
    global: [Option<u64>; 2],
    store: Option<Arc<Store>>,
    /// The process's own times (ms since `epoch`): the limits without a
    /// store, and while it is unreachable.
    local: Arc<Mutex<HashMap<String, f64>>>,
    epoch: Instant,
    prefix: String,
    /// Until when the last refusals said requests would be refused, as this
    /// process last heard: see [`RateLimiter::likely_refused`].
    refused_until: Mutex<Refusals>,
}

/// Until when refusals last said requests would be refused.
#[derive(Default)]
struct Refusals {
    /// By a caller's own limits.
    callers: HashMap<String, Instant>,
    /// By the global limits, for every caller.
    global: Option<Instant>,
}

fn script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/gcra.lua")))
}

impl RateLimiter {
    /// The policy's limits; `previous` (the limiter a reload replaces) lends
    /// its in-process times, so a reload does not reset them.
    pub fn new(config: &RateLimitsConfig, store: Option<Arc<Store>>, previous: Option<&RateLimiter>) -> RateLimiter {
        let pair = |l: &crate::policy::RateLimit| [l.requests_per_minute(), l.tokens_per_minute()];
        RateLimiter {
            per_key: pair(&config.per_key),
            global: pair(&config.global),
            prefix: store.as_ref().map(|s| s.key("rl:")).unwrap_or_default(),
            store,
            local: previous.map_or_else(Default::default, |p| p.local.clone()),
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
            refused_until: Mutex::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_key.iter().chain(&self.global).all(Option::is_none)
    }

    fn limits(&self, caller: Option<&str>, tokens: u64) -> Vec<Limit> {
        let caller = caller.unwrap_or(ANONYMOUS);
        let mut limits = Vec::new();
        for (scope, config, name) in [
            ("key", &self.per_key, format!("key:{caller}")),
            ("global", &self.global, "global".to_string()),
        ] {
            for (kind, per_minute, cost) in [(Kind::Requests, config[0], 1), (Kind::Tokens, config[1], tokens)] {
                if let Some(per_minute) = per_minute {
                    limits.push(Limit {
                        scope,
                        kind,
                        per_minute,
                        key: format!("{}{}:{name}", self.prefix, kind.as_str()),
                        cost,
                    });
                }
            }
        }
        limits
    }

    /// Whether a request of `tokens` tokens from `caller` is likely to be
    /// refused: it exceeds a limit outright, or the caller (or every caller)
    /// was refused a moment ago until a time not yet come. Such a request is
    /// checked before anything else is done for it, so that a flood past a
    /// limit costs neither routing decisions nor budget holds.
    pub fn likely_refused(&self, caller: Option<&str>, tokens: u64) -> bool {
        // As `limits` would cost the request, without building their keys.
        let over = |[requests, tokens_per_minute]: [Option<u64>; 2]| {
            requests.is_some_and(|limit| 1 > limit) || tokens_per_minute.is_some_and(|limit| tokens > limit)
        };
        if over(self.per_key) || over(self.global) {
            return true;
        }
        if self.is_empty() {
            return false;
        }
        let now = Instant::now();
        let refusals = self.refused_until.lock().expect("refusals lock");
        refusals
            .callers
            .get(caller.unwrap_or(ANONYMOUS))
            .into_iter()
            .chain(&refusals.global)
            .any(|until| *until > now)
    }

    /// Admits a request of `tokens` tokens from `caller` under every limit,
    /// or refuses it.
    pub async fn check(&self, caller: Option<&str>, tokens: u64) -> Verdict {
        let limits = self.limits(caller, tokens);
        if limits.is_empty() {
            return Verdict::default();
        }
        if let Some(limit) = limits.iter().find(|l| l.cost > l.per_minute) {
            // Never admitted, however long it waits.
            let verdict = Verdict {
                refused: Some(Refused {
                    scope: limit.scope,
                    kind: limit.kind,
                    per_minute: limit.per_minute,
                    requested: limit.cost,
                    retry_ms: None,
                }),
                ..Verdict::default()
            };
            return self.counted(verdict);
        }
        let answer = match &self.store {
            Some(store) => self.in_store(store, &limits).await.ok(),
            None => None,
        };
        let (allowed, retry_ms, standings) = answer.unwrap_or_else(|| self.in_process(&limits));
        let verdict = verdict_of(&limits, allowed, retry_ms, &standings);
        if let Some(refused) = &verdict.refused {
            let now = Instant::now();
            let until = now + std::time::Duration::from_millis(retry_ms);
            let mut refusals = self.refused_until.lock().expect("refusals lock");
            if refused.scope == "global" {
                refusals.global = Some(until);
            } else {
                if refusals.callers.len() > 10_000 {
                    refusals.callers.retain(|_, until| *until > now);
                }
                refusals.callers.insert(caller.unwrap_or(ANONYMOUS).to_string(), until);
            }
        }
        self.counted(verdict)
    }

    fn counted(&self, verdict: Verdict) -> Verdict {
        if let Some(refused) = &verdict.refused {
            metrics()
                .rate_limited
                .with_label_values(&[refused.scope, refused.kind.as_str()])
                .inc();
        }
        verdict
    }

    async fn in_store(&self, store: &Store, limits: &[Limit]) -> Result<(bool, u64, Vec<Standing>), super::StoreError> {
        let values: Vec<i64> = store
            .run("ratelimit", |mut con| {
                let mut call = script().prepare_invoke();
                for limit in limits {
                    call.key(&limit.key);
                }
                for limit in limits {
                    call.arg(limit.per_minute).arg(PERIOD_MS).arg(limit.cost);
                }
                async move { call.invoke_async(&mut con).await }
            })
            .await?;
        let standings = limits
            .iter()
            .enumerate()
            .map(|(i, limit)| Standing {
                limit: limit.per_minute,
                remaining: values.get(2 + 2 * i).copied().unwrap_or(0).max(0) as u64,
                reset_ms: values.get(3 + 2 * i).copied().unwrap_or(0).max(0) as u64,
            })
            .collect();
        Ok((
            values.first() == Some(&1),
            values.get(1).copied().unwrap_or(0).max(0) as u64,
            standings,
        ))
    }

    /// The same algorithm on the process's own times.
    fn in_process(&self, limits: &[Limit]) -> (bool, u64, Vec<Standing>) {
        let now = self.epoch.elapsed().as_secs_f64() * 1000.0;
        let period = PERIOD_MS as f64;
        let mut times = self.local.lock().expect("rate limit lock");
        let mut allowed = true;
        let mut retry: f64 = 0.0;
        let moved: Vec<(f64, f64, f64)> = limits
            .iter()
            .map(|limit| {
                let interval = period / limit.per_minute as f64;
                let tat = times.get(&limit.key).copied().unwrap_or(now).max(now);
                let new = tat + limit.cost as f64 * interval;
                if new - now > period {
                    allowed = false;
                    retry = retry.max(new - now - period);
                }
                (tat, new, interval)
            })
            .collect();
        let standings = limits
            .iter()
            .zip(&moved)
            .map(|(limit, &(tat, new, interval))| {
                let until = if allowed {
                    times.insert(limit.key.clone(), new);
                    new
                } else {
                    tat
                };
                Standing {
                    limit: limit.per_minute,
                    remaining: ((period - (until - now)) / interval + 1e-9).floor().max(0.0) as u64,
                    reset_ms: (until - now).ceil().max(0.0) as u64,
                }
            })
            .collect();
        // Times in the past are as good as none: forget them now and then.
        if times.len() > 10_000 {
            times.retain(|_, tat| *tat > now);
        }
        (allowed, retry.ceil() as u64, standings)
    }
}

fn verdict_of(limits: &[Limit], allowed: bool, retry_ms: u64, standings: &[Standing]) -> Verdict {
    let tightest = |kind: Kind| {
        limits
            .iter()
            .zip(standings)
            .filter(|(l, _)| l.kind == kind)
            .min_by_key(|(_, s)| s.remaining)
            .map(|(_, s)| *s)
    };
    let refused = (!allowed).then(|| {
        // The limit that refused: the one with the least room for its cost.
        let (limit, _) = limits
            .iter()
            .zip(standings)
            .min_by_key(|(l, s)| s.remaining as i64 - l.cost as i64)
            .expect("a refusal has a limit");
        Refused {
            scope: limit.scope,
            kind: limit.kind,
            per_minute: limit.per_minute,
            requested: limit.cost,
            retry_ms: Some(retry_ms.max(1)),
        }
    });
    Verdict {
        requests: tightest(Kind::Requests),
        tokens: tightest(Kind::Tokens),
        refused,
    }
}

/// A duration as OpenAI's reset headers write it (Go's format): `0s`,
/// `120ms`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
    let seconds = format!("{:.3}", (ms % 60_000) as f64 / 1000.0);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

impl Verdict {
    /// The `x-ratelimit-*` headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (standing, names) in [
            (
                self.requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                self.tokens,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            if let Some(s) = standing {
                out.push((names[0], s.limit.to_string()));
                out.push((names[1], s.remaining.to_string()));
                out.push((names[2], go_duration(s.reset_ms)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(yaml: &str) -> RateLimiter {
        let config: RateLimitsConfig = serde_saphyr::from_str(yaml).unwrap();
        RateLimiter::new(&config, None, None)
    }

    #[test]
    fn go_durations_read_like_openais() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(120), "120ms");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
    }

    #[tokio::test]
    async fn a_burst_up_to_the_limit_passes_then_one_waits_its_interval() {
        let limiter = limiter("per_key: { requests_per_minute: 3 }\n");
        for left in [2, 1, 0] {
            let verdict = limiter.check(Some("a"), 10).await;
            assert!(verdict.refused.is_none());
            assert_eq!(verdict.requests.unwrap().remaining, left);
        }
        let refused = limiter.check(Some("a"), 10).await;
        let why = refused.refused.expect("the fourth is refused");
        assert_eq!((why.scope, why.kind), ("key", Kind::Requests));
        let retry = why.retry_ms.unwrap();
        assert!((19_000..=20_001).contains(&retry), "one interval of 20 s: {retry}");
        assert!(
            limiter.check(Some("b"), 10).await.refused.is_none(),
            "each key has its own"
        );
    }

    #[tokio::test]
    async fn a_refused_caller_is_known_likely_refused_until_its_retry_time() {
        let limiter = limiter("per_key: { requests_per_minute: 2 }\nglobal: { tokens_per_minute: 1000 }\n");
        assert!(!limiter.likely_refused(Some("a"), 10), "nothing heard yet");
        assert!(limiter.likely_refused(Some("a"), 1001), "over the whole limit: always");
        for _ in 0..2 {
            assert!(limiter.check(Some("a"), 10).await.refused.is_none());
        }
        assert!(!limiter.likely_refused(Some("a"), 10), "admitted, so far");
        assert!(limiter.check(Some("a"), 10).await.refused.is_some());
        assert!(limiter.likely_refused(Some("a"), 10), "refused for its 30 s interval");
        assert!(!limiter.likely_refused(Some("b"), 10), "another key is not");
        // The global limits refuse everyone.
        assert!(limiter.check(Some("b"), 900).await.refused.is_none());
        assert!(limiter.check(Some("c"), 200).await.refused.is_some());
        assert!(limiter.likely_refused(Some("d"), 10));
    }

    #[tokio::test]
    async fn tokens_are_counted_and_a_request_over_the_whole_limit_never_passes() {
        let limiter = limiter("global: { tokens_per_minute: 1000 }\n");
        assert_eq!(limiter.check(None, 600).await.tokens.unwrap().remaining, 400);
        let refused = limiter.check(None, 600).await.refused.unwrap();
        assert_eq!(refused.kind, Kind::Tokens);
        assert!(refused.retry_ms.is_some());
        let never = limiter.check(None, 1001).await.refused.unwrap();
        assert_eq!(never.retry_ms, None);
    }

    #[tokio::test]
    async fn a_refusal_charges_nothing() {
        let limiter = limiter("per_key: { requests_per_minute: 1, tokens_per_minute: 100 }\n");
        assert!(limiter.check(Some("a"), 100).await.refused.is_none());
        let refused = limiter.check(Some("a"), 1).await;
        assert!(refused.refused.is_some());
        assert_eq!(refused.tokens.unwrap().remaining, 0);
    }
}
