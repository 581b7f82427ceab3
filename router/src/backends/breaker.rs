//! A circuit breaker per remote backend.
//!
//! Closed: calls go through; `failure_threshold` failures in a row open it.
//! Open: calls are refused at once (the router falls back) until the cooldown
//! has passed. Half-open: one probe call goes through; its success closes the
//! breaker, its failure opens it for another cooldown. Other calls are refused
//! while the probe is out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::BreakerConfig;

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The breaker's state, as logs and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            threshold: config.failure_threshold.value.max(1),
            cooldown: Duration::from_millis(config.cooldown_ms.value),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go out now. In half-open state the first caller
    /// becomes the probe.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => false,
        }
    }

    /// Whether calls would be admitted, without becoming the probe.
    pub fn is_open(&self) -> bool {
        match *self.state.lock().expect("breaker lock") {
            State::Closed { .. } | State::HalfOpen { probing: false } => false,
            State::Open { until } => Instant::now() < until,
            State::HalfOpen { probing: true } => true,
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.lock().expect("breaker lock") {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Records a call's outcome; returns the new state when it changed.
    pub fn record(&self, success: bool) -> Option<BreakerState> {
        let mut state = self.state.lock().expect("breaker lock");
        let before = *state;
        *state = match (before, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open {
                until: Instant::now() + self.cooldown,
            },
        };
        let changed = std::mem::discriminant(&before) != std::mem::discriminant(&*state);
        drop(state);
        changed.then(|| self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(
            &serde_saphyr::from_str(&format!("failure_threshold: {threshold}\ncooldown_ms: {cooldown_ms}\n")).unwrap(),
        )
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 60_000);
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(true), None, "a success resets the count");
        b.record(false);
        b.record(false);
        assert!(b.admit());
        assert_eq!(b.record(false), Some(BreakerState::Open));
        assert!(!b.admit() && b.is_open());
    }

    #[test]
    fn one_probe_after_the_cooldown_decides() {
        let b = breaker(1, 0);
        assert_eq!(
            b.record(false),
            Some(BreakerState::HalfOpen),
            "cooldown 0: half-open at once"
        );
        assert!(b.admit(), "the probe goes out");
        assert!(!b.admit(), "only one probe at a time");
        assert_eq!(b.record(false), Some(BreakerState::HalfOpen));
        assert!(b.admit());
        assert_eq!(b.record(true), Some(BreakerState::Closed));
        assert!(b.admit() && b.admit());
    }
}
