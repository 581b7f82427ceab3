//! The decision itself, as a pure function of what is known about a request:
//! its score, what the policy allows, and which backends can take it. Keeping
//! it free of I/O makes every rule testable on its own and the whole of it
//! cheap (a few comparisons).
//!
//! The order of the rules is the order of their authority:
//! 1. a privacy rule keeps the request local, whatever else holds;
//! 2. the tier comes from the client's override header, else from the score
//!    and the profile's thresholds, and never falls below the conversation's;
//! 3. budget pacing raises the score needed to go remote;
//! 4. what the local model cannot serve (tools, images, JSON mode, context,
//!    an unloaded model) goes remote;
//! 5. remote must be reachable, within budget and within the client's cost cap,
//!    or the request comes back local when it can, and is refused when it can't.

use crate::outcome::{Ineligible, Reason, RouteError, Tier};
use crate::policy::{AmbiguousChoice, Thresholds};

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Situation {
    pub score: f32,
    pub thresholds: Thresholds,
    /// `Ok` when the local backend can serve the request (`Unavailable` when
    /// there is none).
    pub local: Result<(), Ineligible>,
    /// Whether the local backend serves the `local-reasoning` tier; when it
    /// does not, that tier is answered as `local`.
    pub local_reasons: bool,
    pub remote_available: bool,
    /// The privacy rule the request matched.
    pub privacy_rule: Option<String>,
    /// From `x-switchyard-tier`.
    pub tier_override: Option<Tier>,
    /// The highest tier the conversation has reached.
    pub session_floor: Option<Tier>,
    /// Budget pacing level, 0..=1 (1 = spent).
    pub pacing: f64,
    /// What the remote call would cost at most, in USD.
    pub remote_cost_estimate_usd: f64,
    /// From `x-switchyard-max-cost-usd`.
    pub max_cost_usd: Option<f64>,
}

/// Where the request goes and the one reason that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub tier: Tier,
    pub reason: Reason,
}

impl Situation {
    /// The score a request needs to go remote under the current pacing: the
    /// profile's remote cut (`remote_above`, or `local_below` when ambiguous
    /// requests go remote), moved towards 1 in proportion to the pacing level.
    pub fn remote_cut(&self) -> f32 {
        let t = &self.thresholds;
        let cut = match t.ambiguous {
            AmbiguousChoice::Remote => t.local_below,
            AmbiguousChoice::LocalReasoning => t.remote_above,
        };
        cut + (1.0 - cut) * self.pacing.clamp(0.0, 1.0) as f32
    }

    fn by_score(&self) -> Verdict {
        let t = &self.thresholds;
        let (tier, reason) = if self.score < t.local_below {
            (Tier::Local, Reason::ScoreLow)
        } else if self.score <= t.remote_above {
            let tier = match t.ambiguous {
                AmbiguousChoice::LocalReasoning => Tier::LocalReasoning,
                AmbiguousChoice::Remote => Tier::Remote,
            };
            (tier, Reason::ScoreAmbiguous)
        } else {
            (Tier::Remote, Reason::ScoreHigh)
        };
        if tier == Tier::Remote && self.pacing > 0.0 && self.score < self.remote_cut() {
            let tier = if self.score < t.local_below {
                Tier::Local
            } else {
                Tier::LocalReasoning
            };
            return Verdict {
                tier,
                reason: if self.pacing >= 1.0 {
                    Reason::BudgetExhausted
                } else {
                    Reason::BudgetPaced
                },
            };
        }
        Verdict { tier, reason }
    }
}

pub fn decide(s: &Situation) -> Result<Verdict, RouteError> {
    let verdict = wanted(s)?;
    Ok(Verdict {
        tier: verdict.tier.served(s.local_reasons),
        ..verdict
    })
}

fn wanted(s: &Situation) -> Result<Verdict, RouteError> {
    // 1. Privacy: local or nothing.
    if let Some(rule) = &s.privacy_rule {
        return match s.local {
            Ok(()) => {
                let wanted = s.tier_override.unwrap_or(if s.score < s.thresholds.local_below {
                    Tier::Local
                } else {
                    Tier::LocalReasoning
                });
                Ok(Verdict {
                    tier: wanted.min(Tier::LocalReasoning),
                    reason: Reason::PrivacyRule,
                })
            }
            Err(why) => Err(RouteError::PrivacyUnservable {
                rule: rule.clone(),
                why: why.reason(),
            }),
        };
    }

    // 2. The wanted tier.
    let mut verdict = match s.tier_override {
        Some(tier) => Verdict {
            tier,
            reason: Reason::TierOverride,
        },
        None => s.by_score(),
    };
    // A floor reached when the backend still reasoned (before a reload) is
    // `local` now: it must not claim to raise a plain local answer.
    if let Some(floor) = s.session_floor.map(|floor| floor.served(s.local_reasons))
        && floor > verdict.tier
    {
        verdict = Verdict {
            tier: floor,
            reason: Reason::StickySession,
        };
    }

    // 4. The local model must be able to serve it.
    if let Err(why) = s.local
        && verdict.tier != Tier::Remote
    {
        verdict = Verdict {
            tier: Tier::Remote,
            reason: why.reason(),
        };
    }

    // 5. Remote must be possible.
    if verdict.tier == Tier::Remote {
        let blocked = if !s.remote_available {
            Some(Reason::RemoteUnavailable)
        } else if s.pacing >= 1.0 {
            Some(Reason::BudgetExhausted)
        } else if s.max_cost_usd.is_some_and(|max| s.remote_cost_estimate_usd > max) {
            Some(Reason::MaxCost)
        } else {
            None
        };
        if let Some(reason) = blocked {
            return match s.local {
                Ok(()) => Ok(Verdict {
                    tier: Tier::LocalReasoning,
                    reason,
                }),
                Err(why) => Err(match reason {
                    Reason::RemoteUnavailable => RouteError::NoBackend { why: why.reason() },
                    Reason::BudgetExhausted => RouteError::BudgetExhausted { why: why.reason() },
                    _ => RouteError::MaxCostExceeded {
                        estimate_usd: s.remote_cost_estimate_usd,
                        why: why.reason(),
                    },
                }),
            };
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(score: f32) -> Situation {
        Situation {
            score,
            thresholds: Thresholds {
                local_below: 0.3,
                remote_above: 0.7,
                ambiguous: AmbiguousChoice::LocalReasoning,
                mode: None,
            },
            local: Ok(()),
            local_reasons: true,
            remote_available: true,
            privacy_rule: None,
            tier_override: None,
            session_floor: None,
            pacing: 0.0,
            remote_cost_estimate_usd: 0.01,
            max_cost_usd: None,
        }
    }

    fn verdict(s: &Situation) -> (Tier, Reason) {
        let v = decide(s).unwrap();
        (v.tier, v.reason)
    }

    #[test]
    fn thresholds_split_the_score_into_three_tiers() {
        assert_eq!(verdict(&situation(0.1)), (Tier::Local, Reason::ScoreLow));
        assert_eq!(verdict(&situation(0.5)), (Tier::LocalReasoning, Reason::ScoreAmbiguous));
        assert_eq!(verdict(&situation(0.9)), (Tier::Remote, Reason::ScoreHigh));
        let mut remote_when_unsure = situation(0.5);
        remote_when_unsure.thresholds.ambiguous = AmbiguousChoice::Remote;
        assert_eq!(verdict(&remote_when_unsure), (Tier::Remote, Reason::ScoreAmbiguous));
    }

    #[test]
    fn a_local_model_that_does_not_reason_answers_that_tier_plainly() {
        let mut s = situation(0.5);
        s.local_reasons = false;
        assert_eq!(verdict(&s), (Tier::Local, Reason::ScoreAmbiguous));
        s.score = 0.9;
        s.remote_available = false;
        assert_eq!(verdict(&s), (Tier::Local, Reason::RemoteUnavailable));
        s.tier_override = Some(Tier::LocalReasoning);
        assert_eq!(verdict(&s), (Tier::Local, Reason::TierOverride));
        s.tier_override = Some(Tier::Remote);
        s.remote_available = true;
        assert_eq!(verdict(&s), (Tier::Remote, Reason::TierOverride));
        // A conversation that reached local-reasoning before the backend
        // stopped reasoning does not claim to raise a plain answer.
        let mut s = situation(0.1);
        s.local_reasons = false;
        s.session_floor = Some(Tier::LocalReasoning);
        assert_eq!(verdict(&s), (Tier::Local, Reason::ScoreLow));
    }

    #[test]
    fn privacy_keeps_even_a_hard_request_local() {
        let mut s = situation(0.99);
        s.privacy_rule = Some("card".into());
        s.tier_override = Some(Tier::Remote);
        assert_eq!(verdict(&s), (Tier::LocalReasoning, Reason::PrivacyRule));
        s.local = Err(Ineligible::Tools);
        assert!(matches!(decide(&s), Err(RouteError::PrivacyUnservable { .. })));
    }

    #[test]
    fn pacing_raises_the_remote_cut_smoothly() {
        let mut s = situation(0.8);
        s.pacing = 0.5; // cut = 0.7 + 0.3 * 0.5 = 0.85
        assert!((s.remote_cut() - 0.85).abs() < 1e-6);
        assert_eq!(verdict(&s), (Tier::LocalReasoning, Reason::BudgetPaced));
        s.score = 0.9;
        assert_eq!(verdict(&s), (Tier::Remote, Reason::ScoreHigh));
        s.pacing = 1.0;
        assert_eq!(verdict(&s), (Tier::LocalReasoning, Reason::BudgetExhausted));
    }

    #[test]
    fn a_spent_budget_refuses_what_only_remote_can_serve() {
        let mut s = situation(0.1);
        s.pacing = 1.0;
        s.local = Err(Ineligible::Images);
        assert!(matches!(decide(&s), Err(RouteError::BudgetExhausted { .. })));
    }

    #[test]
    fn what_the_local_model_cannot_serve_goes_remote() {
        let mut s = situation(0.1);
        s.local = Err(Ineligible::Context);
        assert_eq!(verdict(&s), (Tier::Remote, Reason::IneligibleContext));
        s.local = Err(Ineligible::JsonMode);
        assert_eq!(verdict(&s), (Tier::Remote, Reason::IneligibleJson));
    }

    #[test]
    fn overrides_and_sessions_set_the_tier_and_sessions_only_raise_it() {
        let mut s = situation(0.9);
        s.tier_override = Some(Tier::Local);
        assert_eq!(verdict(&s), (Tier::Local, Reason::TierOverride));
        let mut s = situation(0.1);
        s.session_floor = Some(Tier::Remote);
        assert_eq!(verdict(&s), (Tier::Remote, Reason::StickySession));
        let mut s = situation(0.9);
        s.session_floor = Some(Tier::Local);
        assert_eq!(verdict(&s), (Tier::Remote, Reason::ScoreHigh));
    }

    #[test]
    fn a_cost_cap_below_the_estimate_keeps_the_request_local_or_refuses_it() {
        let mut s = situation(0.9);
        s.max_cost_usd = Some(0.001);
        assert_eq!(verdict(&s), (Tier::LocalReasoning, Reason::MaxCost));
        s.local = Err(Ineligible::Tools);
        assert!(matches!(decide(&s), Err(RouteError::MaxCostExceeded { .. })));
        s.max_cost_usd = Some(1.0);
        assert_eq!(verdict(&s), (Tier::Remote, Reason::ScoreHigh));
    }

    #[test]
    fn no_remote_backend_means_local_or_a_clear_refusal() {
        let mut s = situation(0.9);
        s.remote_available = false;
        assert_eq!(verdict(&s), (Tier::LocalReasoning, Reason::RemoteUnavailable));
        s.local = Err(Ineligible::Unavailable);
        assert!(matches!(decide(&s), Err(RouteError::NoBackend { .. })));
    }
}
