//! A circuit breaker per remote backend.
//!
//! Closed: calls go through; `failure_threshold` failures in a row open it.
//! Open: calls are refused at once (the router falls back) until the cooldown
//! has passed. Half-open: one probe call goes through; its success closes the
//! breaker, its failure opens it for another cooldown. Other calls are refused
//! while the probe is out.
//!
//! [`Breaker::admit`] hands out a [`Permit`], and only a permit records an
//! outcome. A permit dropped without an outcome belongs to a call that was
//! cancelled (its client went away): that says nothing about the upstream, so
//! nothing is counted, and a probe's permit gives the probe slot back so the
//! next call probes. The breaker cannot be left waiting for a probe that will
//! never report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::policy::BreakerConfig;

/// While a probe is out, the next one may follow as soon as it reports; its
/// outcome is not known in advance, so callers are told to come back in this long.
const PROBE_OUT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Numbers the probes, so a late permit never frees a newer probe's slot.
    probes_sent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probe`: the number of the probe out now; `None`: the next call probes.
    HalfOpen {
        probe: Option<u64>,
    },
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

/// A call refused by the breaker, and how long until one may be let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// Leave for one call to go out. Its outcome is recorded with
/// [`Permit::record`]; dropped unrecorded, it counts for nothing (see the
/// module header).
#[must_use = "a call's outcome is recorded through its permit"]
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    /// The probe's number when this call is the half-open probe.
    probe: Option<u64>,
}

impl Permit {
    /// Records the call's outcome; returns the breaker's new state when it changed.
    pub fn record(mut self, success: bool) -> Option<BreakerState> {
        // The outcome settles the probe: the drop must not free its slot too.
        self.probe = None;
        self.breaker.record(success)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(number) = self.probe {
            self.breaker.forget_probe(number);
        }
    }
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            threshold: config.failure_threshold().max(1),
            cooldown: config.cooldown(),
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                probes_sent: 0,
            }),
        }
    }

    /// Leave for a call to go out now, or how long until one may. In
    /// half-open state the first caller becomes the probe.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refused> {
        let mut inner = self.inner.lock().expect("breaker lock");
        let now = Instant::now();
        match inner.state {
            State::Closed { .. } => Ok(Permit {
                breaker: self.clone(),
                probe: None,
            }),
            State::Open { until } if now < until => Err(Refused {
                retry_after: until - now,
            }),
            State::HalfOpen { probe: Some(_) } => Err(Refused {
                retry_after: PROBE_OUT_RETRY_AFTER,
            }),
            State::Open { .. } | State::HalfOpen { probe: None } => {
                inner.probes_sent += 1;
                let number = inner.probes_sent;
                inner.state = State::HalfOpen { probe: Some(number) };
                Ok(Permit {
                    breaker: self.clone(),
                    probe: Some(number),
                })
            }
        }
    }

    /// Whether calls would be refused now, without becoming the probe.
    pub fn is_open(&self) -> bool {
        match self.inner.lock().expect("breaker lock").state {
            State::Closed { .. } | State::HalfOpen { probe: None } => false,
            State::Open { until } => Instant::now() < until,
            State::HalfOpen { probe: Some(_) } => true,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.inner.lock().expect("breaker lock").state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Records the failure of a call that had already been answered (its
    /// success recorded through its permit): a stream that stalled, broke or
    /// turned to garbage after its first event. Returns the new state when it changed.
    pub fn record_broken_answer(&self) -> Option<BreakerState> {
        self.record(false)
    }

    fn record(&self, success: bool) -> Option<BreakerState> {
        let mut inner = self.inner.lock().expect("breaker lock");
        let before = inner.state;
        inner.state = match (before, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open {
                until: Instant::now() + self.cooldown,
            },
        };
        let changed = std::mem::discriminant(&before) != std::mem::discriminant(&inner.state);
        drop(inner);
        changed.then(|| self.state())
    }

    /// Probe `number` was cancelled before it had an outcome: the next call probes.
    fn forget_probe(&self, number: u64) {
        let mut inner = self.inner.lock().expect("breaker lock");
        if inner.state == (State::HalfOpen { probe: Some(number) }) {
            inner.state = State::HalfOpen { probe: None };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            &serde_saphyr::from_str(&format!("failure_threshold: {threshold}\ncooldown_ms: {cooldown_ms}\n")).unwrap(),
        ))
    }

    fn fail(b: &Arc<Breaker>) -> Option<BreakerState> {
        b.admit().expect("admitted").record(false)
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 60_000);
        assert_eq!(fail(&b), None);
        assert_eq!(b.admit().unwrap().record(true), None, "a success resets the count");
        fail(&b);
        fail(&b);
        let permit = b.admit().expect("still closed");
        assert_eq!(permit.record(false), Some(BreakerState::Open));
        assert!(b.admit().is_err() && b.is_open());
    }

    #[test]
    fn one_probe_after_the_cooldown_decides() {
        let b = breaker(1, 0);
        assert_eq!(fail(&b), Some(BreakerState::HalfOpen), "cooldown 0: half-open at once");
        let probe = b.admit().expect("the probe goes out");
        assert!(b.admit().is_err(), "only one probe at a time");
        assert_eq!(probe.record(false), Some(BreakerState::HalfOpen));
        let probe = b.admit().expect("the next probe");
        assert_eq!(probe.record(true), Some(BreakerState::Closed));
        let (first, second) = (b.admit(), b.admit());
        assert!(first.is_ok() && second.is_ok());
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot_for_the_next_call() {
        let b = breaker(1, 0);
        fail(&b);
        let probe = b.admit().expect("the probe goes out");
        assert!(b.is_open(), "refusing others while the probe is out");
        drop(probe);
        assert!(!b.is_open());
        assert_eq!(b.state(), BreakerState::HalfOpen, "a cancelled call proves nothing");
        let next = b.admit().expect("the next call probes");
        assert_eq!(next.record(true), Some(BreakerState::Closed));
    }

    #[test]
    fn a_cancelled_call_counts_for_nothing() {
        let b = breaker(2, 60_000);
        fail(&b);
        drop(b.admit().unwrap());
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Closed, "one failure, two cancellations");
        assert_eq!(fail(&b), Some(BreakerState::Open), "the second failure opens it");
    }

    #[test]
    fn a_late_cancelled_probe_does_not_free_a_newer_probes_slot() {
        let b = breaker(1, 0);
        fail(&b);
        let old = b.admit().expect("probe 1");
        // A call admitted before the breaker opened fails late and reopens it.
        b.record_broken_answer();
        let _new = b.admit().expect("probe 2 goes out: probe 1 is overtaken");
        drop(old);
        assert!(b.admit().is_err(), "probe 2 is still the only probe");
    }

    #[test]
    fn a_refusal_says_how_long_until_the_probe() {
        let b = breaker(1, 60_000);
        fail(&b);
        let refused = b.admit().unwrap_err();
        assert!(
            refused.retry_after > Duration::from_secs(59) && refused.retry_after <= Duration::from_secs(60),
            "{refused:?}"
        );
    }
}
